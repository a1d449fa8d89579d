"""Data faults on the real entry point: a shard missing when its phase starts or lost in the
middle of it ends every process within seconds with one line; a manifest without images where
the schedule trains is refused before anything is written. The demo at TINY trains 4² for steps
1-8, fades in and trains 8² for 9-24, and is at 16² from step 25."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_helpers import (
    ROOT,
    TINY,
    accelerate_launch,
    checkpoints,
    cpu_env,
    free_port,
    load_state,
    meta,
    metrics,
    train,
    train_command,
)

pytestmark = pytest.mark.slow


def lost(data: Path, shard: str = r"shard-00000\d\.tar") -> str:
    """The one line a run prints when a 16² shard is gone (a regular expression)."""
    return (rf"error: data: shard {re.escape(str(data))}/16/{shard} is missing or unreadable "
            r"\(FileNotFoundError: No such file or directory\)")


@pytest.fixture
def data(tmp_path, synthetic_data) -> Path:
    """A copy of the session's data set that a test may break."""
    return Path(shutil.copytree(synthetic_data, tmp_path / "data"))


def assert_one_line(stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert re.fullmatch(pattern, stderr.splitlines()[-1]), stderr[-3000:]


def assert_trained_to_16(run: Path) -> None:
    """4² and 8² trained, their checkpoints whole; none written for the failed 16² phase."""
    assert [c.name for c in checkpoints(run)] == ["step-00000008", "step-00000024"]
    assert [meta(c)["kind"] for c in checkpoints(run)] == ["phase_end", "phase_end"]
    assert meta(checkpoints(run)[-1])["resolution"] == 8
    assert load_state(checkpoints(run)[-1])


def start_then_lose_16(cmd: list[str], run: Path, data: Path, shards: list[str] | None = None
                       ) -> tuple[subprocess.CompletedProcess, float]:
    """Start `cmd`, delete 16² shards (all, or `shards`) once it trains at 16², and wait for it
    to end; returns the process and the seconds from the deletion to its end."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        log, deadline = run / "metrics.jsonl", time.monotonic() + 300
        while proc.poll() is None and not (log.is_file() and '"resolution": 16' in log.read_text()):
            assert time.monotonic() < deadline, "the run never reached 16x16"
            time.sleep(0.02)
        for shard in shards or [p.name for p in (data / "16").iterdir()]:
            (data / "16" / shard).unlink()
        lost = time.monotonic()
        out, err = proc.communicate(timeout=60)  # a hang fails here
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - lost
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_missing_when_its_phase_starts(tmp_path, data, workers):
    run = tmp_path / "run"
    (data / "16" / "shard-000001.tar").unlink()
    proc = train(run, data, "train.max_steps=40", f"data.num_workers={workers}", check=False, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert_one_line(proc.stderr, lost(data, r"shard-000001\.tar"))
    assert_trained_to_16(run)
    assert [r["resolution"] for r in metrics(run)] == [4] * 8 + [8] * 16


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_lost_in_the_middle_of_a_phase(tmp_path, data, workers):
    """The shards each reader has open stay readable; the next one it opens is gone (within an
    epoch at 16²: 32 steps)."""
    run = tmp_path / "run"
    cmd = train_command("train_progressive.py", run,
                        TINY + [f"data.path={data}", "train.max_steps=400", f"data.num_workers={workers}"])
    proc, seconds = start_then_lose_16(cmd, run, data)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert_one_line(proc.stderr, lost(data))
    assert_trained_to_16(run)
    assert 24 < metrics(run)[-1]["step"] < 24 + 2 * 32
    assert seconds < 30


def test_two_processes_end_when_one_loses_a_shard(tmp_path, data):
    """One rank's shard goes missing while the other waits for it in a collective: the first
    says so and exits 3, the other is torn down; the launch ends non-zero."""
    run = tmp_path / "run"
    cmd = accelerate_launch(run, data, "train.max_steps=400", "data.num_workers=1", port=free_port())
    proc, seconds = start_then_lose_16(cmd, run, data, shards=["shard-000000.tar"])
    assert proc.returncode != 0
    assert re.search(lost(data, r"shard-000000\.tar"), proc.stderr), proc.stderr[-3000:]
    assert_trained_to_16(run)
    assert seconds < 60


@pytest.mark.parametrize("fault", ["empty resolution", "no shards"])
def test_manifest_without_images_is_refused_before_anything_is_written(tmp_path, data, fault):
    manifest = json.loads((data / "manifest.json").read_text())
    for res in (["16"] if fault == "empty resolution" else manifest["shards"]):
        manifest["shards"][res] = []
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    proc = train(run, data, "train.max_steps=40", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expected = "lists no shards at 16x16" if fault == "empty resolution" else "lists no shards: the data set holds"
    assert_one_line(proc.stderr, rf"error: data\.path: {re.escape(str(data))}/manifest\.json {expected}.*")
    assert not run.exists()
