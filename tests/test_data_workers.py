"""data.num_workers: a speed setting only. `auto`'s per-resolution policy, and resume that is
bit for bit the same whatever worker counts the run and its restarts use."""

from __future__ import annotations

import os

import pytest
from train_helpers import assert_same_state, checkpoints, train

from gan_hr.data import loader_workers

RESOLUTIONS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_a_number_is_used_as_given():
    assert loader_workers(0, 1024, cpus=64) == 0
    assert loader_workers(4, 4, cpus=1) == 4


def test_auto_keeps_a_core_for_the_trainer_grows_with_resolution_and_divides_the_slots():
    assert [loader_workers("auto", r, cpus=64) for r in RESOLUTIONS] == [2, 2, 2, 2, 2, 2, 4, 8, 16]
    # 7 CPUs for workers at 512² and 1024²: rounded down to 4, a divisor of the 16 slots.
    assert [loader_workers("auto", r, cpus=8) for r in RESOLUTIONS] == [2, 2, 2, 2, 2, 2, 4, 4, 4]
    # Never below one worker, however few CPUs.
    assert {loader_workers("auto", r, cpus=c) for r in RESOLUTIONS for c in (0, 1, 2)} == {1}


def test_auto_shares_the_affinity_among_the_node_s_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers("auto", 1024) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 4 CPUs per process: 3 for workers, rounded to 2
    assert loader_workers("auto", 1024) == 2
    assert loader_workers("auto", 64) == 2


@pytest.mark.slow
def test_resume_with_other_worker_counts_is_bit_exact(tmp_path, synthetic_data):
    """28 steps with no workers == 12 steps with 2 (mid-fade at 8²), then 12 more with 4, then
    the rest (across the 16² boundary at step 24) with 1, then auto."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, synthetic_data, "train.max_steps=28", "data.num_workers=0")
    train(split, synthetic_data, "train.max_steps=12", "data.num_workers=2")
    train(split, synthetic_data, "train.max_steps=20", "data.num_workers=4", resume="auto")
    train(split, synthetic_data, "train.max_steps=26", "data.num_workers=1", resume="auto")
    proc = train(split, synthetic_data, "train.max_steps=28", "data.num_workers=auto", resume="auto")
    assert "data order differs" not in proc.stderr and "warning" not in proc.stderr
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
