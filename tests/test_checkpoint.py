"""Checkpoint files: atomic writes (kill -9 mid-write), retention, and fallback past damage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gan_hr.training.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    load_checkpoint,
    load_newest,
    prune_checkpoints,
    resolve_checkpoint,
    write_checkpoint,
)


def _write(ckpt_dir, step, kind="periodic", value=0.0):
    models = {name: {"w": torch.full((3,), value)} for name in ("G", "D", "G_ema")}
    return write_checkpoint(
        ckpt_dir, step, rank=0, models=models,
        optim={"G": {}, "D": {}, "scaler_G": {}, "scaler_D": {}},
        rng={"torch": torch.get_rng_state()},
        meta={"kind": kind, "step": step, "state": {"step": step}},
        barrier=lambda: None,
    )


def test_roundtrip_is_plain_tensors(tmp_path):
    path = _write(tmp_path, 7, value=1.5)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 7
    assert torch.equal(ckpt.models["G_ema"]["w"], torch.full((3,), 1.5))
    assert torch.equal(ckpt.rng["torch"], torch.get_rng_state())
    assert resolve_checkpoint(tmp_path) == path
    assert not list(tmp_path.glob(".tmp-*"))


def test_kill_during_write_leaves_previous_checkpoint(tmp_path, repo_root):
    good = _write(tmp_path, 10, value=1.0)
    # A real SIGKILL between the shared files and the rename that completes a checkpoint.
    script = textwrap.dedent(f"""
        import os, signal, torch
        from gan_hr.training.checkpoint import write_checkpoint
        calls = []
        def barrier():
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        write_checkpoint(__import__('pathlib').Path({str(tmp_path)!r}), 20, rank=0,
                         models={{k: {{"w": torch.ones(3)}} for k in ("G", "D", "G_ema")}},
                         optim={{}}, rng={{"torch": torch.get_rng_state()}}, meta={{"step": 20}}, barrier=barrier)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(repo_root)})
    assert proc.returncode == -9
    assert (tmp_path / ".tmp-step-00000020").is_dir()
    assert complete_checkpoints(tmp_path) == [good]
    assert load_newest(tmp_path).path == good
    # The next save of that step replaces the leftover.
    _write(tmp_path, 20)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]
    assert not (tmp_path / ".tmp-step-00000020").exists()


def test_corrupt_newest_falls_back_with_a_warning(tmp_path):
    older = _write(tmp_path, 1, value=1.0)
    newest = _write(tmp_path, 2, value=2.0)
    data = (newest / "models.pt").read_bytes()
    (newest / "models.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="skipping checkpoint step-00000002.*falling back"):
        ckpt = load_newest(tmp_path)
    assert ckpt.path == older


def test_bad_meta_is_reported(tmp_path):
    path = _write(tmp_path, 3)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="step-00000003: unreadable"):
        load_checkpoint(path)


def test_missing_rank_state_is_a_clear_error(tmp_path):
    path = _write(tmp_path, 4)
    with pytest.raises(CheckpointError, match="no RNG state for rank 1"):
        load_checkpoint(path, rank=1)


def test_pickled_code_is_refused(tmp_path):
    path = _write(tmp_path, 5)
    torch.save({"G": {}, "D": {}, "G_ema": {}, "evil": _Payload()}, path / "models.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


class _Payload:
    pass


def test_prune_keeps_newest_and_phase_ends(tmp_path):
    kinds = {1: "periodic", 2: "phase_end", 3: "periodic", 4: "periodic", 5: "phase_end", 6: "periodic", 7: "final"}
    for step, kind in kinds.items():
        _write(tmp_path, step, kind)
    prune_checkpoints(tmp_path, keep=2)
    left = {int(p.name.split("-")[1]): json.loads((p / "meta.json").read_text())["kind"]
            for p in complete_checkpoints(tmp_path)}
    assert left == {2: "phase_end", 5: "phase_end", 6: "periodic", 7: "final"}


def test_prune_never_removes_the_only_checkpoint(tmp_path):
    _write(tmp_path, 1)
    prune_checkpoints(tmp_path, keep=1)
    assert len(complete_checkpoints(tmp_path)) == 1
