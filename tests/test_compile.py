"""train.compile: regional torch.compile must survive growth without a recompile per step, keep
the gradient penalties (double backward) working, and train like the eager model."""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch._dynamo.utils import counters

from gan_hr.config import from_dict, validate
from gan_hr.training.compile import compile_regions
from gan_hr.training.run_dir import RunDir
from gan_hr.training.trainer import Trainer
from train_helpers import train

TINY_MODEL = {"channel_base": 64, "channel_max": 8, "latent_dim": 8, "w_dim": 8, "mapping_layers": 2}


def _trainer(tmp_path, model: str, loss: str, backend: str | None) -> Trainer:
    cfg = from_dict({
        "model": {"name": model, **TINY_MODEL},
        "loss": {"name": loss},
        "schedule": {"start_res": 4, "max_res": 8, "batch_size": 4, "fade_kimg": 0.024, "stable_kimg": 0.012},
        "train": {"mixed_precision": "no", "compile": backend is not None, "compile_backend": backend or "inductor"},
        "data": {"num_workers": 0},
    })
    validate(cfg)
    AcceleratorState._reset_state(reset_partial_state=False)
    return Trainer(cfg, RunDir(tmp_path), Accelerator(cpu=True), data_root="")


def _run_through_growth(trainer: Trainer) -> list[tuple[str, float, int, float]]:
    """Steps through 4² (3 steps), the fade to 8² (6) and 8² stable (4) on random reals; per
    step: the stretch, alpha, graphs compiled so far, D loss."""
    images = torch.Generator().manual_seed(0)
    rows = []
    while trainer.state.images_seen < 12 + 24 + 16:
        phase = trainer.schedule.phase_at(trainer.state.images_seen)
        if phase.index != trainer.state.phase_index:
            trainer._enter_phase(phase)
        reals = torch.randint(0, 256, (4, 3, phase.resolution, phase.resolution), dtype=torch.uint8,
                              generator=images)
        trainer.train_step(phase, reals)
        stretch = f"{phase.resolution} {'fade' if trainer._alpha < 1 else 'stable'}"
        rows.append((stretch, trainer._alpha, counters["stats"]["unique_graphs"],
                     float(trainer._totals["loss_d"]) / trainer._window_steps))
    return rows


@pytest.mark.parametrize("model, loss", [("progan", "wgan_gp"), ("stylegan", "logistic")])
def test_compiled_training_grows_without_per_step_recompiles(tmp_path, model, loss):
    torch._dynamo.reset()
    counters.clear()
    # aot_eager: the same tracing, guards and compiled autograd as inductor, without code
    # generation (the inductor run below covers that).
    compiled = _run_through_growth(_trainer(tmp_path / "c", model, loss, "aot_eager"))
    eager = _run_through_growth(_trainer(tmp_path / "e", model, loss, None))

    stretches = list(dict.fromkeys(row[0] for row in compiled))
    assert stretches == ["4 stable", "8 fade", "8 stable"]
    fade_alphas = [row[1] for row in compiled if row[0] == "8 fade"]
    assert len(set(fade_alphas)) == len(fade_alphas) == 6  # alpha changed at every fade step
    for stretch in stretches:
        graphs = [row[2] for row in compiled if row[0] == stretch]
        # Compiles happen in a stretch's first steps (grad mode, alpha 0, style mixing on or
        # off), then never again.
        assert graphs[-2:] == [graphs[-1]] * 2, (stretch, graphs)
    assert counters["stats"]["unique_graphs"] > 0
    # Same seeds, same data: the compiled model trains as the eager one does.
    for (_, _, _, loss_c), (_, _, _, loss_e) in zip(compiled, eager):
        assert loss_c == pytest.approx(loss_e, rel=1e-3, abs=1e-4)


def test_compile_regions_keeps_the_state_dict(tmp_path):
    trainer = _trainer(tmp_path, "stylegan", "logistic", None)
    keys = list(trainer.G.state_dict())
    assert compile_regions(trainer.G, "eager") == 1 + 2  # mapping + blocks b4, b8
    assert list(trainer.G.state_dict()) == keys


def test_inductor_run_through_growth_and_resume(tmp_path, synthetic_data):
    """The real entry point with inductor: growth 4² -> 8², a checkpoint, and a resume."""
    run = tmp_path / "run"
    tiny = ["schedule.max_res=8", "train.compile=true", "train.max_steps=14"]
    train(run, synthetic_data, *tiny)
    train(run, synthetic_data, *tiny[:-1], "train.max_steps=18", resume="auto")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_d" in r]
    assert {r["resolution"] for r in steps} == {4, 8}
    assert steps[-1]["step"] == 18
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in steps)
