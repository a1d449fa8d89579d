"""`train.mixed_precision: auto` and the one-step-late flags that keep host syncs out of the step."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from gan_hr.training.guard import LaggedFlags
from gan_hr.training.precision import cpu_has_bf16, resolve_precision
from train_helpers import train

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_bf16_comes_from_the_cpu_flags():
    assert not cpu_has_bf16(AVX2_ONLY)
    assert cpu_has_bf16(SAPPHIRE_RAPIDS)
    assert not cpu_has_bf16("")


@pytest.mark.parametrize("requested", ["no", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(requested):
    assert resolve_precision(requested, torch.device("cpu")) == requested


def test_auto_on_this_cpu_follows_its_flags():
    expected = "bf16" if cpu_has_bf16() else "no"
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_a_run_saves_what_auto_became(tmp_path, synthetic_data):
    run = tmp_path / "run"
    train(run, synthetic_data, "train.max_steps=2", "train.mixed_precision=auto")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["mixed_precision"] == ("bf16" if cpu_has_bf16() else "no")
    meta = json.loads(next((run / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["config"]["train"]["mixed_precision"] == saved["train"]["mixed_precision"]


def test_lagged_flags_arrive_one_step_late_and_flush_now():
    flags = LaggedFlags(torch.device("cpu"))
    assert flags.push(torch.tensor([1.0, 0.0])) is None
    value = torch.tensor([2.0, 1.0])
    assert flags.push(value) == [1.0, 0.0]
    value += 5  # the queued copy is the value at push time
    assert flags.flush() == [2.0, 1.0]
    assert flags.flush() is None


@pytest.mark.parametrize("lagged", [True, False])
def test_stop_guard_hears_of_divergence_a_step_late_unless_it_reads_at_once(lagged):
    from gan_hr.training.guard import StopGuard

    guard = StopGuard(torch.device("cpu"), nan_tolerance=2, max_steps=None, total_images=10**9, lagged=lagged)
    try:
        bad, no_stop = torch.tensor(False), torch.zeros(1)
        guard.record(bad, no_stop)
        guard.record(bad, no_stop)
        # Lagged, the host has the first step's counters; read at once, the second's.
        assert guard.nan_streak == (1 if lagged else 2)
        assert guard.why_stop(step=2, images_seen=0) == (None if lagged else "diverged")
        guard.sync()
        assert guard.nan_streak == guard.nan_skipped == 2 and guard.why_stop(2, 0) == "diverged"
    finally:
        guard.close()


def _net_and_adam():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    return net, torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)


def test_fp16_overflow_while_the_scale_settles_is_not_divergence():
    """GradScaler's start: scaled gradients overflow, the step is skipped and the scale halves,
    but the loss is finite: a healthy step, never counted toward train.nan_tolerance. (The
    scaler's logic, run on the CPU; a start scale of 2^140 overflows fp32 as 2^16 does fp16.)"""
    from gan_hr.training.guard import apply_gradients

    net, opt = _net_and_adam()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    x = torch.randn(8, 4) * 10
    outcomes = []
    for _ in range(20):
        weight = net.weight.detach().clone()
        applied, healthy, flags = apply_gradients(net(x).square().mean(), net, opt, scaler)
        outcomes.append((bool(applied), bool(healthy)))
        assert torch.equal(net.weight, weight) != bool(applied)  # a skipped step changes nothing
        assert flags.numel() == 0
    skipped = [o for o in outcomes if not o[0]]
    assert 0 < len(skipped) < 20 and outcomes[-1] == (True, True)
    assert all(healthy for _, healthy in outcomes)
    assert scaler.get_scale() < 2.0**127


@pytest.mark.parametrize("fp16", [True, False])
def test_a_non_finite_loss_is_divergence_with_or_without_a_scaler(fp16):
    from gan_hr.training.guard import apply_gradients

    net, opt = _net_and_adam()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=fp16)
    loss = net(torch.randn(8, 4)).mean() * float("nan")
    applied, healthy, _ = apply_gradients(loss, net, opt, scaler, flags=torch.ones(1))
    assert not applied and not healthy


def test_overflow_at_scale_one_is_divergence():
    """With nothing left to halve, an overflow is no longer the scaler settling."""
    from gan_hr.training.guard import apply_gradients

    net, opt = _net_and_adam()
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    loss = torch.sqrt(net(torch.randn(8, 4)) * 0).mean()  # a finite loss (0) whose gradients are not
    assert torch.isfinite(loss)
    applied, healthy, _ = apply_gradients(loss, net, opt, scaler)
    assert not applied and not healthy
