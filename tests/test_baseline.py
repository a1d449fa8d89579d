"""The DCGAN / LSGAN baselines through pipelines/train_baseline.py: training, exact resume, guards."""

from __future__ import annotations

import pytest
from train_helpers import assert_same_state, checkpoints, meta, metrics, train

pytestmark = pytest.mark.slow

BASELINE = ["schedule.start_res=32", "schedule.max_res=32", "model.base_width=8", "model.latent_dim=16",
            "schedule.batch_size=8", "data.num_workers=0", "train.log_every_steps=1", "train.sample_grid=4",
            "train.checkpoint_every_kimg=1000", "train.sample_every_kimg=1000", "train.final_swd=false"]


@pytest.mark.parametrize("config, loss", [("configs/dcgan_celebahq64.yaml", "logistic"),
                                          ("configs/lsgan_celebahq64.yaml", "lsgan")])
def test_baseline_trains_from_its_config(tmp_path, synthetic_data, config, loss):
    run = tmp_path / "run"
    train(run, synthetic_data, *BASELINE, "train.max_steps=6", script="train_baseline.py", config=config, tiny=False)
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert {r["resolution"] for r in records} == {32} and all(r["alpha"] == 1.0 for r in records)
    saved = meta(checkpoints(run)[-1])["config"]
    assert saved["model"]["name"] == "dcgan" and saved["loss"]["name"] == loss
    assert saved["train"]["adam_betas"] == [0.5, 0.999]
    assert any(p.name.endswith("res32.png") for p in (run / "samples").iterdir())


def test_baseline_resume_is_exact(tmp_path, synthetic_data):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [*BASELINE, "loss.name=lsgan"]
    kwargs = dict(script="train_baseline.py", config="configs/dcgan_celebahq64.yaml", tiny=False)
    train(straight, synthetic_data, *common, "train.max_steps=8", **kwargs)
    train(split, synthetic_data, *common, "train.max_steps=4", **kwargs)
    train(split, synthetic_data, *common, "train.max_steps=8", resume="auto", **kwargs)
    # Batch-norm running statistics are buffers in the models' state: they must match too.
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])


def test_baseline_refuses_a_growing_schedule(tmp_path, synthetic_data):
    proc = train(tmp_path / "run", synthetic_data, *BASELINE, "schedule.start_res=8", "model.name=progan",
                 script="train_baseline.py", config="configs/dcgan_celebahq64.yaml", tiny=False, check=False)
    assert proc.returncode == 2
    assert "error: schedule.start_res: train_baseline.py trains one resolution" in proc.stderr
