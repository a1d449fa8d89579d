"""Checkpoint files: atomic writes (kill -9 mid-write), retention, and fallback past damage."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gan_hr.checkpoint import (
    CheckpointDamaged,
    CheckpointError,
    CheckpointWriteError,
    check_shapes,
    complete_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    quarantine,
    resolve_checkpoint,
    write_checkpoint,
)


def _meta(step, kind="periodic"):
    return {"kind": kind, "step": step, "kimg": step / 100, "resolution": 4, "alpha": 1.0, "world_size": 1,
            "state": {"step": step}, "config": {}}


def _write(ckpt_dir, step, kind="periodic", value=0.0):
    models = {name: {"w": torch.full((3,), value)} for name in ("G", "D", "G_ema")}
    return write_checkpoint(
        ckpt_dir, step, rank=0, models=models,
        optim={"G": {}, "D": {}, "scaler_G": {}, "scaler_D": {}},
        rng={"torch": torch.get_rng_state()},
        meta=_meta(step, kind),
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
        from gan_hr.checkpoint import write_checkpoint
        calls = []
        def all_ok(ok):
            calls.append(1)
            if len(calls) == 2:  # the files are written, meta.json and the rename are not
                os.kill(os.getpid(), signal.SIGKILL)
            return ok
        write_checkpoint(__import__('pathlib').Path({str(tmp_path)!r}), 20, rank=0,
                         models={{k: {{"w": torch.ones(3)}} for k in ("G", "D", "G_ema")}},
                         optim={{}}, rng={{"torch": torch.get_rng_state()}}, meta={{"step": 20}}, all_ok=all_ok)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(repo_root)})
    assert proc.returncode == -9
    assert (tmp_path / ".tmp-step-00000020").is_dir()
    assert complete_checkpoints(tmp_path) == [good]
    assert (tmp_path / ".tmp-step-00000020" / "models.pt").is_file()
    # The next save of that step replaces the leftover.
    _write(tmp_path, 20)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]
    assert not (tmp_path / ".tmp-step-00000020").exists()


def test_truncated_file_is_damaged(tmp_path):
    path = _write(tmp_path, 2, value=2.0)
    data = (path / "models.pt").read_bytes()
    (path / "models.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointDamaged, match="step-00000002: models.pt does not match its checksum"):
        load_checkpoint(path)


def test_a_flipped_bit_is_caught_by_the_checksum(tmp_path):
    path = _write(tmp_path, 2, value=2.0)
    data = bytearray((path / "optim.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "optim.pt").write_bytes(bytes(data))
    load_checkpoint(path, with_training_state=False)  # inference reads models.pt alone
    with pytest.raises(CheckpointDamaged, match="optim.pt does not match its checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta, reason", [
    ("{}", "no valid 'kind'"),
    ("null", "holds NoneType, not an object"),
    ('{"kind": "final", "step": "7"}', "no valid 'step'"),
    ("{not json", "meta.json unreadable"),
])
def test_meta_that_parses_but_is_wrong_is_damaged(tmp_path, meta, reason):
    path = _write(tmp_path, 3)
    (path / "meta.json").write_text(meta)
    with pytest.raises(CheckpointDamaged, match=reason):
        load_checkpoint(path)


def test_legacy_checkpoint_is_checked_against_its_rank_checksums(tmp_path):
    """Checkpoints from before meta.json held file checksums are verified by their weight sums."""
    path = _write(tmp_path, 4, value=1.0)
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]
    meta["rank_checksums"] = [[3.0, 3.0, 3.0]]
    (path / "meta.json").write_text(json.dumps(meta))
    assert load_checkpoint(path).meta["step"] == 4
    meta["rank_checksums"] = [[3.0, 3.5, 3.0]]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointDamaged, match="D does not match its recorded checksum"):
        load_checkpoint(path)


def test_shapes_are_checked_against_the_model(tmp_path):
    ckpt = load_checkpoint(_write(tmp_path, 5))
    good = {name: {"w": torch.Size([3])} for name in ("G", "D", "G_ema")}
    check_shapes(ckpt, good)
    with pytest.raises(CheckpointDamaged, match=r"D.w has shape \(3,\), the model \(4,\)"):
        check_shapes(ckpt, {**good, "D": {"w": torch.Size([4])}})
    grown = {name: {"w": torch.Size([3]), "new": torch.Size([2])} for name in ("G", "D", "G_ema")}
    with pytest.raises(CheckpointDamaged, match="G lacks new"):
        check_shapes(ckpt, grown)
    check_shapes(ckpt, grown, allow_missing=True)  # a warm start's new blocks


def test_a_failed_write_leaves_nothing_and_names_the_file(tmp_path, monkeypatch):
    good = _write(tmp_path, 10, value=1.0)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if getattr(getattr(f, "f", None), "name", "").endswith("optim.pt"):
            f.write(b"x" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*step-00000020/optim.pt: No space left"):
        _write(tmp_path, 20)
    assert complete_checkpoints(tmp_path) == [good]
    assert not list(tmp_path.glob(".tmp-*"))
    assert load_checkpoint(good).models["G"]["w"][0] == 1.0


def test_every_rank_raises_when_one_cannot_write(tmp_path):
    """A rank whose own files were written still fails, and the partial directory goes."""
    with pytest.raises(CheckpointWriteError, match="another rank could not write it"):
        write_checkpoint(tmp_path, 3, rank=0, models={k: {"w": torch.ones(1)} for k in ("G", "D", "G_ema")},
                         optim={}, rng={"torch": torch.get_rng_state()}, meta=_meta(3),
                         all_ok=lambda ok: False)
    assert not list(tmp_path.iterdir())


def test_quarantine_moves_aside_without_overwriting(tmp_path):
    first = quarantine(_write(tmp_path, 6))
    second = quarantine(_write(tmp_path, 6))
    assert first == tmp_path / "damaged" / "step-00000006"
    assert second == tmp_path / "damaged" / "step-00000006.1"
    assert complete_checkpoints(tmp_path) == []


def test_missing_rank_state_is_a_clear_error(tmp_path):
    path = _write(tmp_path, 4)
    with pytest.raises(CheckpointError, match="no RNG state for rank 1") as raised:
        load_checkpoint(path, rank=1)
    assert not isinstance(raised.value, CheckpointDamaged)  # sound, just not for two processes


def test_pickled_code_is_refused(tmp_path):
    path = _write(tmp_path, 5)
    torch.save({"G": {}, "D": {}, "G_ema": {}, "evil": _Payload()}, path / "models.pt")
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["models.pt"] = hashlib.sha256((path / "models.pt").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))  # even with a matching checksum
    with pytest.raises(CheckpointDamaged, match="models.pt unreadable"):
        load_checkpoint(path)


class _Payload:
    pass


def test_prune_keeps_newest_and_phase_ends(tmp_path):
    kinds = {1: "periodic", 2: "phase_end", 3: "periodic", 4: "periodic", 5: "phase_end", 6: "periodic", 7: "final"}
    for step, kind in kinds.items():
        _write(tmp_path, step, kind)
    prune_checkpoints(tmp_path, keep=2, newest=tmp_path / "step-00000007")
    left = {int(p.name.split("-")[1]): json.loads((p / "meta.json").read_text())["kind"]
            for p in complete_checkpoints(tmp_path)}
    assert left == {2: "phase_end", 5: "phase_end", 6: "periodic", 7: "final"}


def test_prune_never_removes_the_only_checkpoint(tmp_path):
    only = _write(tmp_path, 1)
    prune_checkpoints(tmp_path, keep=1, newest=only)
    assert len(complete_checkpoints(tmp_path)) == 1


def test_prune_never_removes_what_is_newer_than_the_checkpoint_just_written(tmp_path):
    """Retention only removes the past: a higher-numbered leftover never makes a new checkpoint go."""
    for step in (1, 2, 9):
        _write(tmp_path, step)
    written = _write(tmp_path, 3)
    prune_checkpoints(tmp_path, keep=2, newest=written)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000009"]
