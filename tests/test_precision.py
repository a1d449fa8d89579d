"""`train.mixed_precision: auto` and the one-step-late flags that keep host syncs out of the step."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from gan_hr.training.lagged import LaggedFlags
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
