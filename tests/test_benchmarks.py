"""The benchmark scripts run end to end at the tiniest settings and write sane JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import ROOT, cpu_env

pytestmark = pytest.mark.slow


def test_ddp_overhead_runs_one_and_two_processes(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), "--model", "progan", "--res", "8",
           "--batch", "4", "--channel-max", "8", "--steps", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert "speed-up" in proc.stdout

    result = json.loads(out.read_text())
    assert result["backend"] == "gloo"
    [row] = result["results"]
    assert (row["model"], row["res"], row["batch"], row["channel_max"]) == ("progan", 8, 4, 8)
    one, two = row["one_process"], row["two_processes"]

    # Two real processes of one process group, each with its share of the cores.
    assert one["processes"] == 1 and two["processes"] == 2
    assert len(set(two["pids"])) == 2 and len(two["per_rank"]) == 2
    assert one["threads_per_process"] >= two["threads_per_process"] >= 1

    for value in (one["step_s"], two["step_s"], one["images_per_s"], two["images_per_s"], row["speedup"],
                  two["comm_s"], two["allreduce_only_s"], two["effective_gb_per_s"]):
        assert value > 0
    assert two["wait_s"] >= 0
    for share in ("comm_share", "wait_share", "allreduce_only_share"):
        assert 0 <= two[share] <= 1
    assert two["wait_share"] + two["comm_share"] <= 1

    # Both ranks all-reduce the same payload: the gradients of G and D (fp32) plus the flags.
    assert two["bytes_per_step"] > 0 and two["bytes_per_step"] % 4 == 0
    assert {r["bytes_per_step"] for r in two["per_rank"]} == {two["bytes_per_step"]}
    assert two["allreduces_per_step"] >= 2
