"""data.num_workers: auto — the per-resolution policy, and exact resume with the count it chose."""

from __future__ import annotations

import os

import pytest
from train_helpers import assert_same_state, checkpoints, meta, train

from gan_hr.data import loader_workers

RESOLUTIONS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_a_number_is_used_as_given():
    assert loader_workers(0, 1024, cpus=64) == 0
    assert loader_workers(3, 4, cpus=1) == 3


def test_auto_keeps_a_core_for_the_trainer_and_grows_with_resolution():
    assert [loader_workers("auto", r, cpus=64) for r in RESOLUTIONS] == [2, 2, 2, 2, 2, 2, 4, 8, 16]
    assert [loader_workers("auto", r, cpus=8) for r in RESOLUTIONS] == [2, 2, 2, 2, 2, 2, 4, 7, 7]
    # Never below one worker, however few CPUs.
    assert {loader_workers("auto", r, cpus=c) for r in RESOLUTIONS for c in (0, 1, 2)} == {1}


def test_auto_shares_the_affinity_among_the_node_s_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers("auto", 1024) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 4 CPUs per process: 3 workers, 1 trainer
    assert loader_workers("auto", 1024) == 3
    assert loader_workers("auto", 64) == 2


@pytest.fixture
def one_cpu():
    """This process and the runs it starts may use one CPU: `auto` gives one worker."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.slow
def test_auto_resumes_bit_exactly_across_a_phase(tmp_path, synthetic_data):
    """Stopped mid-fade at 8² (step 12), resumed through the 16² boundary (step 24)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, synthetic_data, "train.max_steps=28", "data.num_workers=auto")
    train(split, synthetic_data, "train.max_steps=12", "data.num_workers=auto")
    train(split, synthetic_data, "train.max_steps=28", "data.num_workers=auto", resume="auto")
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
    assert meta(checkpoints(split)[-1])["state"]["loader_workers"] >= 1


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_resume_keeps_the_phase_s_worker_count_and_the_next_phase_resolves_afresh(
        tmp_path, synthetic_data, one_cpu):
    """The 8² phase starts with 2 workers; resumed in it where `auto` now gives 1, it keeps 2 and
    stays bit-exact; the 16² phase after it gets auto's 1."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, synthetic_data, "train.max_steps=24", "data.num_workers=2")  # ends at the 8² phase's end
    train(split, synthetic_data, "train.max_steps=12", "data.num_workers=2")
    proc = train(split, synthetic_data, "train.max_steps=26", "data.num_workers=auto", resume="auto")
    assert "data order differs" not in proc.stderr
    phase_end = split / "checkpoints" / "step-00000024"
    assert_same_state(checkpoints(straight)[-1], phase_end)
    assert meta(phase_end)["state"]["loader_workers"] == 2
    assert meta(checkpoints(split)[-1])["state"]["loader_workers"] == 1
    assert meta(checkpoints(split)[-1])["resolution"] == 16
