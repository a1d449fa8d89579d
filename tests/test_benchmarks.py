"""The benchmark scripts run end to end at the tiniest settings and write sane JSON."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

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


def _gpu_check(out_dir, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
            "--out-dir", str(out_dir), *args]


def _rows(result: dict, section: str) -> list[dict]:
    assert result["sections"][section]["status"] == "done", result["sections"][section]
    return result["sections"][section]["rows"]


def test_gpu_check_tiny_on_the_cpu_runs_every_section_and_writes_its_table(tmp_path):
    proc = subprocess.run(_gpu_check(tmp_path), cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["status"] == "complete" and result["plan"]["tiny"] and result["device"]["type"] == "cpu"
    assert list(result["sections"]) == ["train_step", "memory", "fp16_run", "host_sync", "two_process", "compile"]
    assert result["elapsed_s"] < result["budget_s"]

    ceiling = result["sections"]["train_step"]["info"]["ceiling_tflops"]
    assert ceiling["matmul_fp32"] > 0 and ceiling["conv_fp32"] > 0
    steps = _rows(result, "train_step")
    assert [(r["model"], r["res"], r["precision"]) for r in steps] == [("stylegan", 32, "fp32"), ("stylegan", 16, "fp32"),
                                                                         ("stylegan", 8, "fp32")]
    for r in steps:  # one GPU's share of the shipped config's batch (global 64 / 8 at 32²), mid-fade
        assert r["batch"] == r["global_batch"] // 8 and r["seconds"] > 0
        assert r["images_per_s"] > 0 and r["sec_per_kimg"] > 0 and r["flops_per_image"] > 0
        assert 0 < r["achieved_flops_fraction"] < 2
    assert steps[0]["batch"] == 8 and steps[0]["alpha"] == 0.5

    memory = _rows(result, "memory")
    assert [r["res"] for r in memory] == [8, 16, 32]  # the StyleGAN config starts at 8²
    for r in memory:  # on the CPU nothing runs out: the search ends at its cap, every probe a real step
        assert r["per_gpu_fits"] and r["largest_batch"] == r["searched_up_to"] == r["global_batch"]
        assert str(r["per_gpu_batch"]) in r["probes_mb"] and r["first_failing_batch"] is None

    [run] = _rows(result, "fp16_run")  # fp16 needs CUDA: on the CPU the same run in fp32
    assert (run["stop_reason"], run["diverged"], run["exit_code"], run["steps"]) == ("max_steps", False, 0, 6)
    assert run["unhealthy_steps"] == 0 and run["images_per_s"] > 0 and run["loss_scale_G"] is None

    sync = _rows(result, "host_sync")
    assert [r["flags"] for r in sync] == ["lagged", "read each step"]
    assert all(r["images_per_s"] > 0 and r["gpu_idle_share"] is None and "n/a" in r["note"] for r in sync)

    [ranks] = _rows(result, "two_process")
    assert ranks["ranks_equal"] and ranks["world"] == 2 and len(set(ranks["pids"])) == 2
    assert ranks["backend"] == "gloo" and len(ranks["devices"]) == 1 and ranks["devices"][0].startswith("cpu")

    eager, compiled = _rows(result, "compile")
    assert (eager["compile"], compiled["compile"], compiled["compile_backend"]) == (False, True, "eager")
    assert eager["images_per_s"] > 0 and compiled["images_per_s"] > 0 and compiled["warmup_s"] > 0

    table = (tmp_path / "gpu_check.md").read_text()
    assert table in proc.stdout and "Status: complete" in table
    for title in ("## Training step", "## Memory per resolution", "## fp16 training run", "## Host syncs",
                  "## Two processes", "## train.compile"):
        assert title in table
    assert "--- stylegan 32 fp32" in (tmp_path / "gpu_check.log").read_text()
    assert not list(tmp_path.glob("gpu_check-*"))  # the sections' own files are gone


def test_gpu_check_stops_at_its_budget_and_keeps_what_it_measured(tmp_path):
    budget_s = 20
    start = time.monotonic()
    proc = subprocess.run(_gpu_check(tmp_path, "--budget-min", str(budget_s / 60)), cwd=ROOT, env=cpu_env(),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert elapsed < budget_s + 5  # the interpreter's start and the final write

    result = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = result["sections"]
    assert result["status"] == "partial" and result["elapsed_s"] < budget_s
    assert sections["compile"] == {"status": "skipped: budget", "seconds": 0.0, "rows": []}
    first = sections["train_step"]
    assert first["status"] in ("done", "stopped: budget")
    # Each measurement it reached is kept: measured, cut short by the budget, or not started after
    # the deadline. (How many it finished depends on the machine; the SIGTERM test waits for one.)
    assert all(r.get("images_per_s", 0) > 0 or r.get("stopped") == "stopped: budget" or r.get("skipped") == "budget"
               for r in first["rows"])
    assert "skipped: budget" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_on_sigterm_stops_the_section_and_writes_what_it_has(tmp_path):
    proc = subprocess.Popen(_gpu_check(tmp_path), cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "gpu_check.log"
    deadline = time.monotonic() + 90
    while not (log.exists() and "--- stylegan" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output[-3000:]

    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["status"] == "interrupted (SIGTERM)"
    assert list(result["sections"]) == ["train_step"]
    section = result["sections"]["train_step"]
    assert section["status"] == "interrupted" and section["info"]["ceiling_tflops"]["matmul_fp32"] > 0
    # The row it was measuring says so (unless the signal fell between two rows).
    assert section["rows"] and (section["rows"][-1].get("stopped") == "interrupted" or
                                section["rows"][-1]["images_per_s"] > 0)
    assert "Status: interrupted (SIGTERM)" in (tmp_path / "gpu_check.md").read_text()


def test_learning_trains_scores_and_tabulates(tmp_path, synthetic_data):
    """benchmarks/learning.py: the real launch per model and seed, evaluate.py's SWD against the
    floor, speed per resolution from metrics.jsonl, one table row and one JSON record per run."""
    from train_helpers import TINY

    out = tmp_path / "learning.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--models", "progan", "--seeds", "3",
           "--threads", "1", "--label", "tiny", "--runs", str(tmp_path / "runs"), "--json", str(out),
           *TINY, f"data.path={synthetic_data}", "train.max_steps=28", "train.metrics_num_images=32"]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert "| progan | 3 |" in proc.stdout and "median of 1" in proc.stdout

    result = json.loads(out.read_text())
    assert result["threads"] == 1 and "cores" in result["cpu"]
    [row] = result["results"]
    assert (row["model"], row["seed"]) == ("progan", 3)
    assert row["swd_mean"] > 0 and row["swd_floor_mean"] > 0
    assert row["ratio"] == pytest.approx(row["swd_mean"] / row["swd_floor_mean"])
    assert set(row["images_per_s"]) == {"4", "8", "16"} and all(v > 0 for v in row["images_per_s"].values())
    assert row["wall_s"] > 0 and (tmp_path / "runs" / "tiny-progan-seed3" / "metrics.jsonl").is_file()


def test_equal_time_stops_each_run_at_its_budget_and_scores_its_checkpoint(tmp_path, synthetic_data):
    """benchmarks/equal_time.py: the real launches, two at once, each stopped by SIGUSR1 once it
    has trained the CPU seconds asked for; the checkpoint the signal wrote is the one scored."""
    out = tmp_path / "equal_time.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "equal_time.py"), "--models", "vae", "dcgan", "--seconds", "3",
           "--parallel", "2", "--runs", str(tmp_path / "runs"), "--json", str(out), f"data.path={synthetic_data}",
           "train.metrics_num_images=32", "train.checkpoint_every_kimg=1000"]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert "| vae |" in proc.stdout and "| dcgan |" in proc.stdout

    rows = json.loads(out.read_text())["results"]
    assert [r["model"] for r in rows] == ["vae", "dcgan"]
    for row in rows:
        assert row["cpu_s"] >= 3 and row["kimg"] > 0
        assert row["ratio"] == pytest.approx(row["swd_mean"] / row["swd_floor_mean"])
        run = tmp_path / "runs" / f"{row['model']}-seed0"
        assert "stopped (signal SIGUSR1)" in (tmp_path / "runs" / f"{run.name}.log").read_text()
        # checkpoint_every_kimg is never reached: the only checkpoint is the one the stop wrote.
        [ckpt] = (run / "checkpoints").iterdir()
        assert int(ckpt.name.split("-")[1]) * 32 == round(row["kimg"] * 1000)


def test_class_accuracy_scores_each_run_per_class(tmp_path, labelled_data):
    """benchmarks/class_accuracy.py: a CNN trained on the labelled reals, then each conditional
    run's fakes of each class scored by it; a table row and a JSON record per run."""
    from train_helpers import train

    run = tmp_path / "run"
    train(run, labelled_data, "model.conditional=true", "train.max_steps=2", "schedule.start_res=32",
          "schedule.max_res=32")
    out = tmp_path / "class_accuracy.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "class_accuracy.py"), "--data", str(labelled_data), str(run),
           "--num", "30", "--epochs", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    assert "| disc | square | triangle |" in proc.stdout and f"| {run} |" in proc.stdout

    result = json.loads(out.read_text())
    assert result["chance"] == pytest.approx(1 / 3) and result["held_out"] == 64
    assert 0 <= result["real_accuracy"] <= 1
    [row] = result["results"]
    assert list(row["per_class"]) == ["disc", "square", "triangle"]
    assert all(0 <= v <= 1 for v in row["per_class"].values())
    assert row["accuracy"] == pytest.approx(sum(row["per_class"].values()) / 3)
