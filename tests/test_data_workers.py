"""data.num_workers: a speed setting only. `auto`'s per-resolution policy, and resume that is
bit for bit the same whatever worker counts the run and its restarts use."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch.utils.data._utils.worker as torch_worker
from train_helpers import assert_same_state, checkpoints, train

from gan_hr.data import loader_workers, make_loader

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


def test_a_stop_signal_while_workers_start_spares_them(monkeypatch, synthetic_data):
    """SLURM's SIGTERM reaches every process of the job step, and may come while a loader's workers
    are still starting, before they ignore it: it must wait, not kill them (and the trainer with
    them). Each worker here starts a second late, and is sent SIGTERM and SIGUSR1 meanwhile."""
    worker_loop = torch_worker._worker_loop

    def slow_start(*args, **kwargs):
        time.sleep(1.0)
        return worker_loop(*args, **kwargs)

    monkeypatch.setattr(torch_worker, "_worker_loop", slow_start)
    batches = iter(make_loader(str(synthetic_data), 8, 4, seed=0, num_workers=2))
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGUSR1)
    images = [next(batches)["image"] for _ in range(4)]
    assert all(w.is_alive() for w in workers)
    assert [tuple(i.shape) for i in images] == [(4, 3, 8, 8)] * 4


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
