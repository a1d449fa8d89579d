"""The VAE baseline: its loss and encoder on their own, then pipelines/train_vae.py end to end
(training, files, exact resume, SIGUSR1, learning), generate.py and evaluate.py on its
checkpoint, and its config checks."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import ROOT, assert_same_state, checkpoints, cpu_env, meta, metrics, train, train_command

from gan_hr.checkpoint import load_checkpoint
from gan_hr.config import ConfigError, ModelConfig, from_dict, load_config
from gan_hr.data import ShardStream, load_manifest, resolution_shards, to_float
from gan_hr.losses import vae_loss
from gan_hr.models import build_discriminator, build_generator
from gan_hr.models.vae import VAEEncoder

sys.path.insert(0, str(ROOT / "pipelines"))
import evaluate  # noqa: E402
import generate  # noqa: E402

CONFIG = "configs/vae_shapes.yaml"
# The demo's VAE (0.5 M parameters, 32²), one row of metrics.jsonl per step, no final SWD: a
# narrower one learns too little in a few steps to tell learning from noise.
VAE_TINY = ["schedule.batch_size=32", "data.num_workers=0",
            "train.log_every_steps=1", "train.sample_grid=4", "train.checkpoint_every_kimg=1000",
            "train.sample_every_kimg=1000", "train.final_swd=false"]
STEPS = 40


def _train(run, data, *overrides, **kwargs):
    return train(run, data, *VAE_TINY, *overrides, script="train_vae.py", config=CONFIG, tiny=False, **kwargs)


# --------------------------------------------------------------------------- loss and networks


def test_vae_loss_is_the_negative_beta_elbo():
    real = torch.rand(2, 3, 4, 4) * 2 - 1
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    # The posterior equal to the prior: KL 0; a decoder that returns the reals: recon 0.
    loss, stats = vae_loss(1.0, lambda x: (mu, logvar), lambda z: real, real)
    assert stats["kl"] == 0 and stats["recon"] == 0 and loss == 0
    # Recon is the squared error summed over pixels, averaged over images; KL in closed form,
    # 0.5 * (mu² + sigma² - 1 - log sigma²) summed over dimensions; beta weighs KL only.
    mu = torch.ones(2, 5)
    loss, stats = vae_loss(0.5, lambda x: (mu, logvar), lambda z: real + 0.5, real)
    assert stats["recon"] == pytest.approx(48 * 0.25)
    assert stats["kl"] == pytest.approx(5 * 0.5)
    assert loss == pytest.approx(12 + 0.5 * 2.5)


def test_vae_loss_reparameterises_so_both_networks_get_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(name="vae", latent_dim=8, base_width=4)
    enc, dec = build_discriminator(cfg, 32), build_generator(cfg, 32)
    assert isinstance(enc, VAEEncoder)
    real = torch.rand(3, 3, 32, 32) * 2 - 1
    mu, logvar = enc(real, 32)
    assert mu.shape == logvar.shape == (3, 8)
    loss, _ = vae_loss(1.0, lambda x: enc(x, 32), lambda z: dec(z, 32), real)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*enc.parameters(), *dec.parameters()])


@pytest.mark.parametrize("override, message", [
    ("model.vae_beta=-1", "model.vae_beta: must be 0 or more (the KL weight), got -1.0"),
    ("model.vae_beta=abc", "model.vae_beta: expected a number, got 'abc'"),
    ("model.vae_beta=.nan", "model.vae_beta: expected a finite number"),
    ("model.d_spectral_norm=true", "model.d_spectral_norm: must be false for vae"),
    ("model.conditional=true", "model.conditional: must be false for vae"),
    ("schedule.start_res=16", "schedule.start_res: must equal schedule.max_res for vae"),
])
def test_vae_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_config(ROOT / CONFIG, [override])


# --------------------------------------------------------------------------- the entry point


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, synthetic_data):
    run = tmp_path_factory.mktemp("vae") / "run"
    proc = _train(run, synthetic_data, f"train.max_steps={STEPS}")
    return run, proc


@pytest.mark.slow
def test_vae_trains_through_train_vae_py(vae_run):
    run, proc = vae_run
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert {"loss_vae", "recon", "kl", "images_per_s"} <= records[-1].keys()
    assert "model      vae:" in proc.stdout and f"stopped (max_steps) at step {STEPS}" in proc.stdout + proc.stderr
    saved = meta(checkpoints(run)[-1])["config"]
    assert saved["model"]["name"] == "vae" and saved["model"]["vae_beta"] == 1.0
    samples = {p.name for p in (run / "samples").iterdir()}
    assert {"step-00000000-res32.png", f"step-{STEPS:08d}-res32.png", f"step-{STEPS:08d}-res32-recon.png",
            "reals-32.png"} <= samples
    # The reconstruction grid: 4 reals (2 columns) -> rows real, recon, real, recon of 32 px tiles.
    assert np.asarray(Image.open(run / "samples" / f"step-{STEPS:08d}-res32-recon.png")).shape == (4 * 34 + 2,
                                                                                                   2 * 34 + 2, 3)
    assert "vae.png" in {p.name for p in (run / "plots").iterdir()}


@pytest.mark.slow
def test_vae_learns(vae_run, synthetic_data):
    """The loss falls, and the trained encoder and decoder reconstruct reals far better than the
    same networks at their initialisation."""
    run, _ = vae_run
    losses = [r["loss_vae"] for r in metrics(run)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])  # measured: 0.37

    ckpt = load_checkpoint(checkpoints(run)[-1], with_training_state=False)
    cfg = from_dict(ckpt.meta["config"])
    torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
    fresh = build_generator(cfg.model, 32), build_discriminator(cfg.model, 32)
    trained = build_generator(cfg.model, 32), build_discriminator(cfg.model, 32)
    trained[0].load_state_dict(ckpt.models["G_ema"])
    trained[1].load_state_dict(ckpt.models["D"])
    shards = resolution_shards(load_manifest(str(synthetic_data)), str(synthetic_data), 32)
    real = to_float(next(iter(ShardStream(shards, batch_size=64, resolution=32, seed=1, slots=1)))["image"])

    def recon_error(G, D):
        G.eval(), D.eval()
        with torch.no_grad():
            return (G(D(real, 32)[0], 32) - real).square().mean().item()

    assert recon_error(*trained) < 0.6 * recon_error(*fresh)  # measured: 0.09 against 0.23


@pytest.mark.slow
def test_vae_resume_is_bit_exact(vae_run, tmp_path, synthetic_data):
    straight, _ = vae_run
    split = tmp_path / "split"
    _train(split, synthetic_data, f"train.max_steps={STEPS // 2}")
    proc = _train(split, synthetic_data, f"train.max_steps={STEPS}", resume="auto")
    assert f"resuming from {split / 'checkpoints' / f'step-{STEPS // 2:08d}'}" in proc.stdout
    # Encoder and decoder, their Adam states and batch-norm statistics, bit for bit.
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
    assert [r["step"] for r in metrics(split)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_vae_sigusr1_checkpoints_and_exits(tmp_path, synthetic_data):
    run = tmp_path / "run"
    cmd = train_command("train_vae.py", run, [*VAE_TINY, f"data.path={synthetic_data}", "train.max_steps=100000"],
                        config=CONFIG)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped (signal SIGUSR1)" in out
    final = checkpoints(run)[-1]
    assert meta(final)["kind"] == "final" and metrics(run)[-1]["step"] == meta(final)["step"]


@pytest.mark.parametrize("override, message", [
    ("model.vae_beta=-0.5", "error: model.vae_beta: must be 0 or more (the KL weight), got -0.5"),
    ("model.name=dcgan", "error: model.name: train_vae.py trains vae, got 'dcgan'"),
])
def test_train_vae_refuses_a_bad_config_in_one_line(tmp_path, synthetic_data, override, message, monkeypatch, capsys):
    """The entry point itself (in this process: the check comes before anything is set up)."""
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["train_vae.py", "--run-dir", str(run), f"data.path={synthetic_data}", override])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "pipelines" / "train_vae.py"), run_name="__main__")
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == message and captured.out == ""
    assert not run.exists()


# --------------------------------------------------------------------------- generate.py, evaluate.py


@pytest.mark.slow
def test_generate_decodes_prior_samples(vae_run, tmp_path):
    run, _ = vae_run
    out = tmp_path / "grid.png"
    assert generate.main(["--checkpoint", str(run), "--out", str(out), "--num", "4"]) == 0
    assert np.asarray(Image.open(out)).shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    per_sample = tmp_path / "one/"
    assert generate.main(["--checkpoint", str(run), "--out", f"{per_sample}/", "--num", "2", "--seed", "5"]) == 0
    assert sorted(p.name for p in per_sample.iterdir()) == ["seed0005.png", "seed0006.png"]


@pytest.mark.slow
def test_evaluate_swd_of_a_vae_checkpoint(vae_run, synthetic_data, capsys):
    run, _ = vae_run
    assert evaluate.main(["--checkpoint", str(run), "--metric", "swd", "--num", "64",
                          "--data", str(synthetic_data)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["step"] == STEPS and record["resolution"] == 32
    assert record["swd_mean"] > 0 and record["swd_floor_mean"] > 0
