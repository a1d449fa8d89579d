"""Faults a cluster produces, injected into real runs of the entry point: damaged checkpoints,
changed configs, a second trainer, branching, warm starts, a full disk, an unreachable W&B.
Each test asserts on what is left on disk, the exit code and the line printed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import (
    ROOT,
    TINY,
    accelerate_launch,
    checkpoints,
    cpu_env,
    free_port,
    meta,
    metrics,
    train,
    train_command,
)

from gan_hr.config import ModelConfig, from_dict
from gan_hr.models import MODELS, UNREAD_FIELDS
from gan_hr.training.resume import LaunchError, config_changes, refuse_network_changes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, synthetic_data) -> Path:
    """A finished 10-step run: checkpoints at step 8 (end of 4²) and 10 (final), 10 metrics rows."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(run, synthetic_data, "train.max_steps=10")
    assert [c.name for c in checkpoints(run)] == ["step-00000008", "step-00000010"]
    return run


@pytest.fixture
def run(tmp_path, base_run) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(("error:", "warning:", "Traceback"))]


def _snapshot(run: Path) -> dict[str, str]:
    """Every file under the run directory with its hash (W&B and lock files aside)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def _rewrite_meta(ckpt: Path, change) -> None:
    data = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps(change(data)))


# --------------------------------------------------------------------------- integrity


def test_every_checkpoint_damaged_refuses_and_loses_nothing(run, synthetic_data):
    for ckpt in checkpoints(run):
        data = (ckpt / "models.pt").read_bytes()
        (ckpt / "models.pt").write_bytes(data[:100])
    lines_before = (run / "metrics.jsonl").read_text()
    config_before = (run / "config.yaml").read_text()
    proc = train(run, synthetic_data, "train.max_steps=12", resume="auto", check=False)
    assert proc.returncode == 2
    errors = _errors(proc)
    assert errors[-1].startswith(f"error: {run} has no intact checkpoint (2 damaged, in {run / 'checkpoints' / 'damaged'})")
    assert [e.split(" is damaged")[0] for e in errors[:-1]] == [
        "warning: checkpoint step-00000010", "warning: checkpoint step-00000008"]
    assert (run / "metrics.jsonl").read_text() == lines_before  # not truncated
    assert (run / "config.yaml").read_text() == config_before
    assert checkpoints(run) == []
    assert sorted(p.name for p in (run / "checkpoints" / "damaged").iterdir()) == ["step-00000008", "step-00000010"]
    # A second try, and a fresh start over the same directory, still refuse.
    again = train(run, synthetic_data, "train.max_steps=12", resume="auto", check=False)
    assert again.returncode == 2 and "has no intact checkpoint" in again.stderr
    fresh = train(run, synthetic_data, "train.max_steps=12", check=False)
    assert fresh.returncode == 2 and "already has checkpoints" in fresh.stderr
    assert (run / "metrics.jsonl").read_text() == lines_before


def _flip_a_bit(ckpt: Path) -> None:
    data = bytearray((ckpt / "models.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (ckpt / "models.pt").write_bytes(bytes(data))


def _wrong_shape_with_matching_checksum(ckpt: Path) -> None:
    models = torch.load(ckpt / "models.pt", weights_only=True)
    key = next(iter(models["D"]))
    models["D"][key] = torch.zeros(3, 3)
    torch.save(models, ckpt / "models.pt")
    digest = hashlib.sha256((ckpt / "models.pt").read_bytes()).hexdigest()
    _rewrite_meta(ckpt, lambda m: {**m, "files": {**m["files"], "models.pt": digest}})


@pytest.mark.parametrize("damage, reason", [
    (_flip_a_bit, "models.pt does not match its checksum"),
    (lambda c: (c / "meta.json").write_text("{}"), "meta.json has no valid 'kind'"),
    (lambda c: (c / "meta.json").write_text("null"), "meta.json holds NoneType"),
    (_wrong_shape_with_matching_checksum, "has shape (3, 3)"),
    (lambda c: (c / "optim.pt").unlink(), "optim.pt is missing"),
])
def test_damaged_newest_falls_back_and_new_checkpoints_stay(run, synthetic_data, damage, reason):
    newest = checkpoints(run)[-1]
    damage(newest)
    proc = train(run, synthetic_data, "train.max_steps=14", resume="auto")
    errors = _errors(proc)
    assert len(errors) == 1 and errors[0].startswith("warning: checkpoint step-00000010 is damaged (")
    assert reason in errors[0] and errors[0].endswith(f"moved to {run / 'checkpoints' / 'damaged' / 'step-00000010'}")
    assert f"resuming from {run / 'checkpoints' / 'step-00000008'}" in proc.stdout
    # The new checkpoint is kept, and the next resume continues from it.
    assert [c.name for c in checkpoints(run)] == ["step-00000008", "step-00000014"]
    assert [r["step"] for r in metrics(run)] == list(range(1, 15))
    nxt = train(run, synthetic_data, "train.max_steps=16", resume="auto")
    assert f"resuming from {run / 'checkpoints' / 'step-00000014'}" in nxt.stdout
    assert not _errors(nxt)


def test_two_damaged_checkpoints_under_two_processes(tmp_path, synthetic_data):
    """Both ranks agree on the fallback; the main process alone moves the damaged one."""
    run = tmp_path / "run"
    env = cpu_env()
    subprocess.run(accelerate_launch(run, synthetic_data, "train.max_steps=10", port=free_port()), cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=300)
    _flip_a_bit(checkpoints(run)[-1])
    proc = subprocess.run(accelerate_launch(run, synthetic_data, "train.max_steps=12", port=free_port())
                          + ["--resume", "auto"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("warning: checkpoint step-00000010 is damaged") == 1
    assert f"resuming from {run / 'checkpoints' / 'step-00000008'}" in proc.stdout
    assert [c.name for c in checkpoints(run)] == ["step-00000008", "step-00000012"]
    rows = meta(checkpoints(run)[-1])["rank_checksums"]
    assert rows[0] == rows[1]


# --------------------------------------------------------------------------- config changes


def test_resume_refuses_to_change_the_networks(run, synthetic_data):
    before = _snapshot(run)
    proc = train(run, synthetic_data, "train.max_steps=12", "model.channel_max=32", "model.latent_dim=8",
                 resume="auto", check=False)
    assert proc.returncode == 2
    assert _errors(proc) == [
        "error: resuming from step-00000010 would change the networks (model.latent_dim 16 -> 8, model.channel_max "
        "16 -> 32): these keys are fixed for a run; drop the overrides, or start a new --run-dir with --init-from"]
    assert _snapshot(run) == before


def test_a_key_the_model_does_not_read_changes_nothing(run, synthetic_data):
    """A ProGAN run resumed with StyleGAN's network keys set (as a newer demo config sets
    model.demodulate) and the VAE's KL weight goes on unwarned; a StyleGAN run would refuse the
    same change."""
    stylegan_keys = ["model.demodulate=false", "model.w_dim=8", "model.noise=false"]  # the run has true, 16, true
    proc = train(run, synthetic_data, "train.max_steps=12", *stylegan_keys, "model.vae_beta=0.5", resume="auto")
    assert _errors(proc) == []
    assert f"resuming from {run / 'checkpoints' / 'step-00000010'}" in proc.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    assert yaml.safe_load((run / "config-history" / "step-00000010.yaml").read_text())["model"]["w_dim"] == 8
    saved = from_dict({"model": {"name": "stylegan"}})
    asked = from_dict({"model": {"name": "stylegan", "demodulate": True}})
    with pytest.raises(LaunchError, match=r"model.demodulate False -> True"):
        refuse_network_changes(config_changes(saved, asked), model="stylegan", what="resuming", hint="keep it")


def test_every_model_has_a_row_of_keys_it_does_not_read():
    """Resume looks every model up in UNREAD_FIELDS: a model registered without a row there would
    crash every resume of it, and a row naming no ModelConfig field would hide nothing."""
    assert set(UNREAD_FIELDS) == set(MODELS)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, unread in UNREAD_FIELDS.items():
        assert set(unread) <= fields, name


def test_changed_training_keys_are_warned_and_recorded(run, synthetic_data):
    proc = train(run, synthetic_data, "train.max_steps=12", "schedule.batch_size=16", "loss.drift=0.01",
                 resume="auto")
    assert _errors(proc) == ["warning: resuming step-00000010 with loss.drift changed: 0.001 -> 0.01",
                             "warning: resuming step-00000010 with schedule.batch_size changed: 8 -> 16"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert json.loads(json.dumps(saved)) == meta(checkpoints(run)[-1])["config"]  # config.yaml == checkpoints
    history = sorted(p.name for p in (run / "config-history").iterdir())
    assert history == ["step-00000000.yaml", "step-00000010.yaml"]
    old = yaml.safe_load((run / "config-history" / "step-00000000.yaml").read_text())
    assert old["schedule"]["batch_size"] == 8 and old["loss"]["drift"] == 0.001


# --------------------------------------------------------------------------- branching and warm start


def test_resume_from_an_older_checkpoint_branches(run, synthetic_data):
    older = checkpoints(run)[0]
    proc = train(run, synthetic_data, "train.max_steps=12", resume=str(older))
    assert f"resuming from {older}" in proc.stdout
    branches = list((run / "abandoned").iterdir())
    assert len(branches) == 1 and branches[0].name.startswith("after-step-00000008-")
    assert sorted(p.name for p in branches[0].iterdir()) == ["metrics.jsonl", "step-00000010"]
    assert [json.loads(line)["step"] for line in (branches[0] / "metrics.jsonl").read_text().splitlines()] == [9, 10]
    assert [r["step"] for r in metrics(run)] == list(range(1, 13))
    assert [c.name for c in checkpoints(run)] == ["step-00000008", "step-00000012"]
    # A requeue follows the branch.
    nxt = train(run, synthetic_data, "train.max_steps=14", resume="auto")
    assert f"resuming from {run / 'checkpoints' / 'step-00000012'}" in nxt.stdout


def test_resume_path_outside_the_run_is_refused(run, tmp_path, synthetic_data):
    other = tmp_path / "other"
    proc = train(other, synthetic_data, "train.max_steps=2", resume=str(checkpoints(run)[0]), check=False)
    assert proc.returncode == 2
    assert _errors(proc) == [f"error: --resume {checkpoints(run)[0]}: not a checkpoint of {other}; to start a new run "
                             "from another run's checkpoint, use --init-from"]
    assert not other.exists()


def test_warm_start_grows_a_finished_model(run, tmp_path, synthetic_data):
    """From the 16² run's step-10 checkpoint (8², fading in 16²... saved at 8²) to max_res 32: the
    blocks it has load, the new ones start fresh, training starts stable at its resolution."""
    parent = checkpoints(run)[-1]
    assert meta(parent)["resolution"] == 8
    child = tmp_path / "child"
    proc = train(child, synthetic_data, "train.max_steps=9", "schedule.max_res=32", "--init-from", str(parent))
    assert _errors(proc) == ["warning: warm start at 8x8: schedule.start_res 4 -> 8"]
    records = metrics(child)
    assert [(r["resolution"], r["alpha"]) for r in records[:8]] == [(8, 1.0)] * 8
    assert records[8]["resolution"] == 16 and records[8]["alpha"] == 0
    record = json.loads((child / "run.json").read_text())
    assert record["parent"]["checkpoint"] == str(parent.resolve())
    assert record["parent"]["wandb_run_id"] == meta(parent)["state"]["wandb_run_id"] != record["wandb_run_id"]
    assert yaml.safe_load((child / "config.yaml").read_text())["schedule"]["start_res"] == 8
    # Loaded weights moved by 8 Adam steps of lr 1e-3 (a fresh N(0, 1) init would be ~1 away);
    # the new blocks exist only here.
    old = torch.load(parent / "models.pt", weights_only=True)["G"]
    new = torch.load(checkpoints(child)[0] / "models.pt", weights_only=True)["G"]
    assert set(old) < set(new) and any(k.startswith("blocks.b32.") for k in set(new) - set(old))
    drift = max((new[k] - old[k]).abs().mean().item() for k in old if old[k].is_floating_point())
    assert drift < 0.02


@pytest.mark.parametrize("args, message", [
    (["model.channel_max=32"], "would change the networks (model.channel_max 16 -> 32): a warm start keeps the "
                               "checkpoint's networks; only schedule.max_res may grow"),
    (["schedule.max_res=32", "--init-optimizers"], "--init-optimizers: the optimizers carry over only when "
                                                    "schedule.max_res is unchanged"),
    (["--resume", "auto"], "--init-from starts a new run: it cannot be combined with --resume"),
])
def test_warm_start_refusals(run, tmp_path, synthetic_data, args, message):
    child = tmp_path / "child"
    proc = train(child, synthetic_data, "train.max_steps=2", "--init-from", str(run), *args, check=False)
    assert proc.returncode == 2
    errors = _errors(proc)
    assert len(errors) == 1 and message in errors[0], errors
    assert not child.exists()


def test_warm_start_with_optimizers(run, tmp_path, synthetic_data):
    child = tmp_path / "child"
    train(child, synthetic_data, "train.max_steps=1", "--init-from", str(run), "--init-optimizers")
    parent = torch.load(checkpoints(run)[-1] / "optim.pt", weights_only=True)["G"]["state"]
    mine = torch.load(checkpoints(child)[-1] / "optim.pt", weights_only=True)["G"]["state"]
    assert mine[0]["step"].item() == parent[0]["step"].item() + 1


# --------------------------------------------------------------------------- one trainer per run directory


def _start(run: Path, data: Path, *overrides: str, resume: str = "none") -> subprocess.Popen:
    cmd = train_command("train_progressive.py", run, TINY + [f"data.path={data}", *overrides], resume=resume)
    return subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_a_second_trainer_is_refused_and_kill_9_frees_the_lock(tmp_path, synthetic_data):
    run = tmp_path / "run"
    first = _start(run, synthetic_data, "train.max_steps=100000", "train.checkpoint_every_kimg=0.064")
    try:
        _wait_for(lambda: (run / "checkpoints").is_dir() and len(checkpoints(run)) >= 1)
        record = json.loads((run / "run.json").read_text())
        for resume in ("auto", "none"):
            started = time.time()
            second = train(run, synthetic_data, "train.max_steps=2", resume=resume, check=False)
            assert second.returncode == 2 and time.time() - started < 60
            errors = _errors(second)
            assert len(errors) == 1 and errors[0].startswith(f"error: {run} is in use by another trainer (pid "), errors
        assert first.poll() is None  # the first one trains on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the lock: the run resumes from its newest checkpoint, same W&B run id.
    newest = checkpoints(run)[-1]
    proc = train(run, synthetic_data, f"train.max_steps={meta(newest)['step'] + 2}", resume="auto")
    assert f"resuming from {newest}" in proc.stdout
    assert json.loads((run / "run.json").read_text()) == record


def test_the_wandb_run_id_is_kept_from_before_the_first_checkpoint(tmp_path, synthetic_data):
    """A job killed before its first checkpoint restarts as the same W&B run."""
    run = tmp_path / "run"
    # One long first phase: no phase-end checkpoint can come before the kill, however fast the steps run.
    first = _start(run, synthetic_data, "train.max_steps=100000", "schedule.stable_kimg=1000", "tracking.backend=wandb")
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 2)
        assert checkpoints(run) == []
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    run_id = json.loads((run / "run.json").read_text())["wandb_run_id"]
    train(run, synthetic_data, "train.max_steps=2", "tracking.backend=wandb", resume="auto")
    # The killed run's file may hold no run record yet: its folder is named by the id.
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders)
    assert meta(checkpoints(run)[-1])["state"]["wandb_run_id"] == run_id


# --------------------------------------------------------------------------- storage and paths


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root can mount one on this machine kind and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_in_one_line_and_resumes_after_space_is_freed(small_disk, synthetic_data):
    run = small_disk / "run"
    train(run, synthetic_data, "train.max_steps=10")
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - 200_000))  # room for metrics and samples, not a checkpoint
    before = _snapshot(run / "checkpoints")
    proc = train(run, synthetic_data, "train.max_steps=14", resume="auto", check=False)
    assert proc.returncode == 3
    errors = _errors(proc)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: cannot write checkpoint {run / 'checkpoints' / '.tmp-step-00000014'}/")
    assert errors[0].endswith("No space left on device; the earlier checkpoints are intact")
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert _snapshot(run / "checkpoints") == before
    # What kill -9 during a write leaves holds space too: the next start removes it.
    filler.unlink()
    leftover = run / "checkpoints" / ".tmp-step-00000012"
    leftover.mkdir()
    (leftover / "models.pt").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 200_000))
    again = train(run, synthetic_data, "train.max_steps=14", resume="auto")
    assert not leftover.exists()
    assert f"resuming from {run / 'checkpoints' / 'step-00000010'}" in again.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, 15))


@pytest.mark.parametrize("flag, message", [
    ("--run-dir", "error: --run-dir: {file} exists and is not a directory"),
    ("--resume", "error: --resume: {file}: not a directory (expected a checkpoint, a checkpoints/ folder or a run "
                 "directory)"),
    ("--init-from", "error: --init-from: {file}: not a directory (expected a checkpoint, a checkpoints/ folder or a "
                    "run directory)"),
])
def test_path_arguments_of_the_wrong_kind(tmp_path, synthetic_data, flag, message):
    file = tmp_path / "file"
    file.write_text("x")
    run = tmp_path / "run"
    args = {"--run-dir": [], "--resume": [], "--init-from": ["--init-from", str(file)]}[flag]
    target = file if flag == "--run-dir" else run
    proc = train(target, synthetic_data, "train.max_steps=2", *args, resume=str(file) if flag == "--resume" else "none",
                 check=False)
    assert proc.returncode == 2
    assert _errors(proc) == [message.format(file=file)]
    assert not run.exists() and file.read_text() == "x"


# --------------------------------------------------------------------------- W&B


def _blackhole() -> socket.socket:
    """A port that accepts connections and never answers (a server behind a dead network)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


@pytest.mark.parametrize("server", ["no key", "unreachable"])
def test_wandb_that_cannot_start_online_falls_back_to_offline(tmp_path, synthetic_data, server):
    run = tmp_path / "run"
    env = cpu_env(WANDB_MODE="online", HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    env.pop("WANDB_API_KEY", None)
    hole = None
    if server == "unreachable":
        hole = _blackhole()
        env.update(WANDB_API_KEY="0" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{hole.getsockname()[1]}")
    try:
        started = time.time()
        proc = subprocess.run(train_command("train_progressive.py", run, TINY + [
            f"data.path={synthetic_data}", "train.max_steps=4", "tracking.backend=wandb",
            "tracking.init_timeout_s=5"]), cwd=ROOT, env=env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=180)
        elapsed = time.time() - started
    finally:
        if hole is not None:
            hole.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = _errors(proc)
    assert len(errors) == 1 and errors[0].startswith("warning: W&B could not start online ("), errors
    assert f"logging offline to {run / 'wandb'}: upload it later with `wandb sync" in errors[0]
    assert elapsed < 90
    from wandb_reader import run_id as file_run_id

    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and file_run_id(files[0]) == json.loads((run / "run.json").read_text())["wandb_run_id"]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]


def test_wandb_under_two_processes_logs_once(tmp_path, synthetic_data):
    """The W&B run lives on the main process alone; the other rank must not touch it."""
    from wandb_reader import run_id as file_run_id

    run = tmp_path / "run"
    proc = subprocess.run(accelerate_launch(run, synthetic_data, "train.max_steps=2", "tracking.backend=wandb",
                                            port=free_port()), cwd=ROOT, env=cpu_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [file] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    assert file_run_id(file) == json.loads((run / "run.json").read_text())["wandb_run_id"]


def test_a_diverged_run_is_finished_as_failed_in_wandb(tmp_path, synthetic_data):
    from wandb_reader import exit_codes

    ok, bad = tmp_path / "ok", tmp_path / "bad"
    train(ok, synthetic_data, "train.max_steps=2", "tracking.backend=wandb")
    proc = train(bad, synthetic_data, "train.max_steps=50", "schedule.lr=1e30", "train.nan_tolerance=3",
                 "tracking.backend=wandb", check=False)
    assert proc.returncode == 1
    [ok_file] = (ok / "wandb").glob("offline-run-*/run-*.wandb")
    [bad_file] = (bad / "wandb").glob("offline-run-*/run-*.wandb")
    assert exit_codes(ok_file) == [0] and exit_codes(bad_file) == [1]
