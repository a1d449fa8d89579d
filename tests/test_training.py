"""End-to-end runs of pipelines/train_progressive.py on CPU: growth, files, exact resume, signals,
guards, mixed precision. Every run trains a tiny model for a handful of steps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from train_helpers import (
    ROOT,
    TINY,
    assert_same_state,
    checkpoints,
    cpu_env,
    load_state,
    meta,
    metrics,
    train,
    train_command,
)

pytestmark = pytest.mark.slow


def test_demo_grows_and_writes_the_run_directory(tmp_path, synthetic_data):
    run = tmp_path / "run"
    proc = train(run, synthetic_data, "train.max_steps=14")
    assert (run / "config.yaml").is_file()
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 15))
    for key in ("step", "kimg", "resolution", "alpha", "loss_d", "loss_g", "gp", "images_per_s", "sec_per_kimg",
                "data_wait_frac", "peak_mem_mb", "lr"):
        assert key in records[-1], key
    assert {r["resolution"] for r in records} == {4, 8}
    fading = [r["alpha"] for r in records if r["resolution"] == 8]
    assert fading == sorted(fading) and 0 <= fading[0] < fading[-1] < 1
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert "step-00000000-res4.png" in samples and "step-00000008-res4.png" in samples
    assert any(name.endswith("res8.png") for name in samples)
    kinds = {meta(c)["kind"] for c in checkpoints(run)}
    assert kinds == {"phase_end", "final"}
    assert "stopped (max_steps) at step 14" in proc.stdout + proc.stderr
    assert {p.name for p in (run / "plots").iterdir()} >= {"losses.png", "regularization.png", "throughput.png"}


@pytest.mark.parametrize("model", ["progan", "stylegan"])
@pytest.mark.parametrize("stop_at", [12, 16])
def test_resume_is_bit_exact(tmp_path, synthetic_data, model, stop_at):
    """28 steps straight == stop (mid-fade at 12, at the 8² fade's end at 16), resume, finish; the
    second half crosses the 16² boundary at step 24."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [f"model.name={model}", "data.num_workers=1"]
    train(straight, synthetic_data, "train.max_steps=28", *common)
    train(split, synthetic_data, f"train.max_steps={stop_at}", *common)
    proc = train(split, synthetic_data, "train.max_steps=28", *common, resume="auto")
    assert f"resuming from {split / 'checkpoints' / f'step-{stop_at:08d}'}" in proc.stdout
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
    assert [r["step"] for r in metrics(split)] == list(range(1, 29))
    assert metrics(split)[-1]["resolution"] == 16


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, synthetic_data):
    """SIGTERM to every process of the run, loader workers included, as SLURM sends it."""
    run = tmp_path / "run"
    cmd = train_command("train_progressive.py", run,
                        TINY + [f"data.path={synthetic_data}", "train.max_steps=100000", "data.num_workers=2"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    sent = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - sent < 60
    stop = re.search(r"stopped \(signal SIGTERM\) at step (\d+)", out)
    assert stop, out[-3000:]
    stopped_at = int(stop.group(1))
    final = checkpoints(run)[-1]
    # The checkpoint of the step it stopped at: "final", or "phase_end" when that step ends a phase.
    assert meta(final)["step"] == stopped_at
    assert meta(final)["kind"] in ("final", "phase_end")
    assert metrics(run)[-1]["step"] == stopped_at
    train(run, synthetic_data, f"train.max_steps={stopped_at + 2}", resume="auto")
    assert [r["step"] for r in metrics(run)] == list(range(1, stopped_at + 3))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, synthetic_data):
    run = tmp_path / "run"
    train(run, synthetic_data, "train.max_steps=10")  # phase end at 8, final at 10
    older, newest = checkpoints(run)[-2:]
    data = (newest / "models.pt").read_bytes()
    (newest / "models.pt").write_bytes(data[:100])
    proc = train(run, synthetic_data, "train.max_steps=12", resume="auto")
    assert "warning: checkpoint step-00000010 is damaged (models.pt does not match its checksum)" in proc.stderr
    assert f"resuming from {older}" in proc.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))


@pytest.mark.parametrize("override, message", [
    ("train.max_stepz=5", "error: train.max_stepz: unknown key (did you mean train.max_steps?)"),
    ("schedule.max_res=64", "error: schedule.max_res: 64 is above the data's largest resolution (32)"),
    ("train.mixed_precision=fp16", "error: train.mixed_precision: fp16 needs a CUDA device"),
    ("data.path=/no/such/dir", "error: data.path: no such directory: /no/such/dir"),
])
def test_bad_config_is_rejected_before_anything_is_written(tmp_path, synthetic_data, override, message):
    run = tmp_path / "run"
    proc = train(run, synthetic_data, override, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not run.exists()


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path, synthetic_data):
    run = tmp_path / "run"
    train(run, synthetic_data, "train.max_steps=2")
    proc = train(run, synthetic_data, "train.max_steps=4", check=False)
    assert proc.returncode == 2
    assert "already has checkpoints: pass --resume auto" in proc.stderr


def test_bf16_run(tmp_path, synthetic_data):
    run = tmp_path / "run"
    train(run, synthetic_data, "train.max_steps=10", "train.mixed_precision=bf16", "model.name=stylegan")
    records = metrics(run)
    assert len(records) == 10 and records[-1]["resolution"] == 8
    assert all(abs(r["loss_d"]) < 1e4 for r in records)
    assert records[-1]["nan_skipped"] == 0


def test_divergence_stops_with_a_checkpoint(tmp_path, synthetic_data):
    run = tmp_path / "run"
    proc = train(run, synthetic_data, "train.max_steps=50", "schedule.lr=1e30", "train.nan_tolerance=3",
                 check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    # The host learns of a skipped step one step late (no sync per step): 3 or 4 in a row.
    assert re.search(r"training diverged: [34] non-finite steps in a row", proc.stderr), proc.stderr[-2000:]
    last = checkpoints(run)[-1]
    assert meta(last)["state"]["nan_skipped"] >= 3
    # The skipped steps changed nothing: the checkpoint holds finite weights.
    state = load_state(last)
    assert all(t.isfinite().all() for k, t in state.items() if k.startswith("models.") and t.is_floating_point())


def test_wandb_offline_logs_and_resumes_the_same_run(tmp_path, synthetic_data):
    from wandb_reader import history, read_records, run_id

    run = tmp_path / "run"
    common = ["tracking.backend=wandb", "train.log_every_steps=2", "train.sample_every_kimg=0.032"]
    train(run, synthetic_data, "train.max_steps=6", *common)
    train(run, synthetic_data, "train.max_steps=10", *common, resume="auto")
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # offline, a resumed run gets a new folder with the same id
    saved_id = meta(checkpoints(run)[-1])["state"]["wandb_run_id"]
    assert {run_id(f) for f in files} == {saved_id}
    rows = [row for f in files for row in history(f)]
    logged = {row["_step"]: row for row in rows if "loss/loss_d" in row}
    assert sorted(logged) == [2, 4, 6, 8, 10]
    for step, row in logged.items():
        record = next(r for r in metrics(run) if r["step"] == step)
        assert row["loss/loss_d"] == pytest.approx(record["loss_d"])
        assert row["progress/kimg"] == pytest.approx(record["kimg"])
        assert row["progress/resolution"] == record["resolution"]
        assert {"perf/images_per_s", "reg/gp", "guard/nan_skipped"} <= set(row)
        assert not any("/" not in key for key in row if not key.startswith("_")), row  # grouped, none flat
    assert any(row.get("samples/grid/_type") == "images/separated" for row in rows)
    # Charts are over kimg, in every run file (each start defines it).
    for f in files:
        defined = {(r.metric.name, r.metric.glob_name, r.metric.step_metric)
                   for r in read_records(f) if r.WhichOneof("record_type") == "metric"}
        assert ("", "*", "progress/kimg") in defined, defined
    # The plots written after training are logged too, by the run that wrote them.
    plotted = {key.split("/")[1] for row in history(files[-1]) for key in row if key.startswith("plots/")}
    assert plotted >= {"losses", "regularization", "throughput"}, plotted


def test_metrics_during_training_are_logged_and_keep_resume_exact(tmp_path, synthetic_data):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # 16² from step 16 (SWD needs 16² or more); evaluate every 64 images and at the end.
    common = ["train.metrics=[swd]", "train.metrics_every_kimg=0.064", "train.metrics_num_images=32",
              "schedule.start_res=8", "schedule.stable_kimg=0.128"]
    train(straight, synthetic_data, "train.max_steps=28", *common)
    train(split, synthetic_data, "train.max_steps=20", *common)
    train(split, synthetic_data, "train.max_steps=28", *common, resume="auto")
    assert_same_state(checkpoints(straight)[-1], checkpoints(split)[-1])
    evaluations = [r for r in metrics(straight) if r.get("metric_source") == "training"]
    assert [r["step"] for r in evaluations] == [24, 28]
    assert all(r["resolution"] == 16 and r["swd_mean"] > 0 and "swd_16" in r for r in evaluations)
    assert [r["step"] for r in metrics(split) if "swd_mean" in r] == [20, 24, 28]


def test_fid_without_weights_is_refused_before_training(tmp_path, synthetic_data):
    run = tmp_path / "run"
    env = cpu_env()
    env.pop("GAN_HR_INCEPTION_WEIGHTS", None)
    proc = train(run, synthetic_data, "train.metrics=[fid]", check=False, env=env)
    assert proc.returncode == 2
    assert "error: train.inception_weights:" in proc.stderr and "weights-inception-2015-12-05" in proc.stderr
    assert not run.exists()
