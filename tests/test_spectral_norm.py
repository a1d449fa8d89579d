"""Spectral normalization of the discriminator (`model.d_spectral_norm`): the layers, when u
moves, precision, checkpoints and resume, and training runs of the real entry points."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from train_helpers import (
    ROOT,
    accelerate_launch,
    assert_same_state,
    checkpoints,
    cpu_env,
    free_port,
    load_state,
    meta,
    metrics,
    train,
)

from gan_hr.config import Config, ConfigError, LossConfig, ModelConfig, from_dict, load_config
from gan_hr.losses import discriminator_loss
from gan_hr.models import build_discriminator
from gan_hr.nn.equalized import EqualConv2d, EqualLinear
from gan_hr.nn.spectral import SpectralNorm, SpectralNormConv2d, update_spectral_norms
from gan_hr.training.resume import LaunchError, config_changes, refuse_network_changes

TINY_PROGAN = ModelConfig(channel_base=128, channel_max=16, d_spectral_norm=True)
TINY_DCGAN = ModelConfig(name="dcgan", base_width=8, latent_dim=16, d_spectral_norm=True)
# The estimate u^T W v never exceeds the largest singular value, so a normalized weight's is
# >= 1 up to float32 rounding; one power iteration per step keeps it within 2% above (0.6% at
# most measured after 12 tiny steps at lr 0.002).
SIGMA_LOW, SIGMA_HIGH = 1 - 1e-5, 1.02


def _sn_layers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in net.named_modules() if isinstance(getattr(m, "sn", None), SpectralNorm)}


def _largest_singular_values(net: torch.nn.Module) -> dict[str, float]:
    """Each normalized layer's effective weight, reshaped to [out, in * k * k]: its exact norm."""
    return {name: torch.linalg.matrix_norm(m.effective_weight().detach().flatten(1), ord=2).item()
            for name, m in _sn_layers(net).items()}


def _assert_normalized(net: torch.nn.Module, layers: int) -> None:
    sigmas = _largest_singular_values(net)
    assert len(sigmas) == layers
    bad = {k: v for k, v in sigmas.items() if not SIGMA_LOW <= v <= SIGMA_HIGH}
    assert not bad, bad


def _saved_discriminator(ckpt: Path) -> torch.nn.Module:
    cfg = from_dict(meta(ckpt)["config"])
    D = build_discriminator(cfg.model, cfg.schedule.max_res)
    D.load_state_dict(torch.load(ckpt / "models.pt", weights_only=True)["D"])
    return D


# --------------------------------------------------------------------------- layers


def test_equalized_constants_cancel_and_plain_convs_normalize():
    torch.manual_seed(0)
    a = EqualConv2d(8, 16, 3, spectral_norm=True)
    b = EqualConv2d(8, 16, 3, spectral_norm=True, gain=1.0, lr_mul=0.1)
    with torch.no_grad():
        b.weight.copy_(a.weight / 0.1)  # the same direction, other gain and lr_mul
    b.sn.u.copy_(a.sn.u)
    torch.testing.assert_close(a.effective_weight(), b.effective_weight())
    linear = EqualLinear(32, 8, spectral_norm=True)
    conv = SpectralNormConv2d(3, 8, 4, 2, 1)
    for layer in (a, linear, conv):
        update_spectral_norms(layer, 200)
        sigma = torch.linalg.matrix_norm(layer.effective_weight().detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=1e-4)


def test_forwards_never_move_u_and_a_step_moves_it_once():
    """The penalties' double forwards (R1, WGAN-GP) and eval forwards leave u alone; the trainer's
    one call per D step moves it (after the weights moved), identically for identically built
    networks and identical weights, as every rank's are."""
    torch.manual_seed(0)
    D = build_discriminator(TINY_PROGAN, 8).train()
    torch.manual_seed(0)
    twin = build_discriminator(TINY_PROGAN, 8).train()
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in D.state_dict().items())  # u too: the same seed
    before = {k: v.clone() for k, v in D.state_dict().items() if k.endswith("sn.u")}
    assert len(before) == 7  # b4: from-RGB, conv, dense, out; b8: from-RGB, conv0, conv1
    real, fake = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    for loss in (LossConfig(name="wgan_gp"), LossConfig(name="logistic", r1_gamma=10.0)):
        value, _ = discriminator_loss(loss, lambda x: D(x, 8, 0.5), real, fake)
        value.backward()
        with torch.no_grad():
            D.eval()(real, 8)
        D.train()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)
    after = {k: v for k, v in D.state_dict().items() if k.endswith("sn.u")}
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.optim.SGD(D.parameters(), lr=0.1).step()
    twin.load_state_dict(D.state_dict())  # the weights after the step, as every rank has them
    assert update_spectral_norms(D) == update_spectral_norms(twin) == 7
    moved = [k for k in before if not torch.equal(before[k], D.state_dict()[k])]
    assert len(moved) == 6  # all but the output layer's: one row, u = [1] for good
    assert all(torch.equal(D.state_dict()[k], twin.state_dict()[k]) for k in before)


def test_sigma_is_float32_under_autocast():
    torch.manual_seed(0)
    layer = EqualConv2d(16, 16, 3, spectral_norm=True)
    weight = layer.weight * layer.weight_scale
    exact = layer.sn.sigma(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = layer.sn.sigma(weight)
        out = layer(torch.randn(2, 16, 4, 4))
    assert under.dtype == torch.float32 and torch.equal(under, exact)
    assert out.dtype == torch.bfloat16


def test_dcgan_discriminator_drops_batch_norm_under_spectral_norm():
    D = build_discriminator(TINY_DCGAN, 32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert len(_sn_layers(D)) == 4  # three stride-2 convs and the score conv
    _assert_normalized(D, 4)


# --------------------------------------------------------------------------- config and checkpoints


@pytest.mark.parametrize("value", ["1", "maybe", "[true]"])
def test_config_rejects_a_non_bool(value):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/demo.yaml", [f"model.d_spectral_norm={value}"])
    assert str(err.value).startswith("model.d_spectral_norm: expected true or false, got ")
    assert load_config(ROOT / "configs/demo.yaml", ["model.d_spectral_norm=true"]).model.d_spectral_norm is True


def test_checkpoints_from_before_the_option_load_with_it_off():
    """A checkpoint written before the key existed has no d_spectral_norm in its config and no
    u buffers: off is the default, nothing differs, and turning SN off adds no tensor."""
    raw = Config().to_dict()
    del raw["model"]["d_spectral_norm"]
    assert config_changes(from_dict(raw), Config()) == {}
    for cfg, res in ((TINY_PROGAN, 16), (TINY_DCGAN, 32)):
        off = build_discriminator(dataclasses.replace(cfg, d_spectral_norm=False), res).state_dict()
        assert not any(".sn." in k for k in off)
    on = build_discriminator(TINY_PROGAN, 16).state_dict()
    off = build_discriminator(ModelConfig(channel_base=128, channel_max=16), 16).state_dict()
    assert {k for k in on if not k.endswith(".sn.u")} == set(off)


def test_resume_refuses_to_toggle_spectral_norm():
    on = from_dict({"model": {"d_spectral_norm": True}})
    with pytest.raises(LaunchError, match=r"model.d_spectral_norm False -> True"):
        refuse_network_changes(config_changes(Config(), on), model="progan", what="resuming", hint="keep it")


# --------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_progressive_resume_with_spectral_norm_is_bit_exact(tmp_path, synthetic_data):
    """12 steps straight (WGAN-GP, 4² then into the 8² fade at step 8) against the same run
    resumed from its step-6 checkpoint: G, D (with every u), G_ema and optimizers bit-identical."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["model.d_spectral_norm=true", "train.checkpoint_every_kimg=0.048"]  # every 6 steps
    train(straight, synthetic_data, "train.max_steps=12", *common)
    assert [c.name for c in checkpoints(straight)] == ["step-00000006", "step-00000008", "step-00000012"]
    shutil.copytree(straight, split)
    proc = train(split, synthetic_data, "train.max_steps=12", *common,
                 resume=str(split / "checkpoints" / "step-00000006"))
    assert f"resuming from {split / 'checkpoints' / 'step-00000006'}" in proc.stdout
    end, resumed = checkpoints(straight)[-1], checkpoints(split)[-1]
    assert resumed.name == end.name and meta(resumed)["step"] == 12
    assert_same_state(end, resumed)
    # The u buffers are in the compared state, and they moved over the run.
    state, start = load_state(end), load_state(checkpoints(straight)[0])
    us = [k for k in state if k.startswith("models.D.") and k.endswith(".sn.u")]
    assert len(us) == 10
    # Every u moves (b16's too: its weights wait, its estimates still converge), but the output
    # layer's: one row, so u = [1] for good.
    assert [k for k in us if torch.equal(state[k], start[k])] == ["models.D.blocks.b4.out.sn.u"]
    _assert_normalized(_saved_discriminator(end), 10)


@pytest.mark.slow
def test_dcgan_baseline_with_spectral_norm_trains_in_sync_on_two_processes(tmp_path, synthetic_data):
    """pipelines/train_baseline.py, two processes over gloo: the ranks' states (u included) stay
    identical, and every D layer ends normalized."""
    run = tmp_path / "run"
    cmd = accelerate_launch(run, synthetic_data, "train.max_steps=4", "schedule.start_res=32", "schedule.max_res=32",
                            "model.base_width=8", "loss.name=lsgan", "model.d_spectral_norm=true",
                            "train.final_swd=false", port=free_port(), script="train_baseline.py",
                            config="configs/dcgan_celebahq64.yaml")
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 5))
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in records)
    last = checkpoints(run)[-1]
    rows = meta(last)["rank_checksums"]
    assert len(rows) == 2 and rows[0] == rows[1], rows
    saved = meta(last)["config"]
    assert saved["model"]["name"] == "dcgan" and saved["model"]["d_spectral_norm"] is True
    _assert_normalized(_saved_discriminator(last), 4)
