"""Checkpoints: one directory per checkpoint, written atomically, verified before use, loaded
without unpickling code. Shared by the trainer (write, resume) and inference (load G_ema).

Layout of `checkpoints/step-00001234/`:
  models.pt        {"G", "D", "G_ema"} state dicts
  optim.pt         {"G", "D", "scaler_G", "scaler_D"} optimizer and grad-scaler state dicts
  rng-rank{r}.pt   each rank's RNG states (tensors)
  meta.json        step, images seen, schedule and data position, W&B run id, the config, and
                   `files`: the SHA-256 of every other file

Everything is written into `.tmp-step-...` first and renamed into place once complete, so a
crash mid-write never leaves a directory that resume would pick; a write that fails (a full
disk) removes its `.tmp-` directory and says why. Files load with `weights_only=True`: plain
tensors and JSON, no pickled code. A checkpoint whose files do not match their checksums, or
whose meta.json lacks what a run needs, is `CheckpointDamaged`: resume moves it to
`checkpoints/damaged/` (see `quarantine`) rather than use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
MODELS_FILE, OPTIM_FILE, META_FILE = "models.pt", "optim.pt", "meta.json"
DAMAGED_DIR = "damaged"
NETWORKS = ("G", "D", "G_ema")
# What every reader of meta.json relies on, with the JSON types it must have.
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "step": int, "kimg": (int, float), "resolution": int, "alpha": (int, float),
    "world_size": int, "state": dict, "config": dict,
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here, with the reason."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose files are unreadable, incomplete or not what its meta.json recorded."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, read-only, ...); nothing was left behind."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    models: dict[str, dict[str, torch.Tensor]]
    optim: dict[str, Any]
    rng: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_RE.match(path.name).group(1))


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (half-written ones are .tmp-* and skipped,
    damaged ones live in damaged/)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=checkpoint_step)


def damaged_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints moved aside as damaged: still the run's history, so never overwritten from zero."""
    folder = Path(ckpt_dir) / DAMAGED_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- writing


class _HashingFile:
    """A binary file that hashes what is written to it and keeps the OSError of a failed write:
    torch.save turns that error into an opaque RuntimeError ("unexpected pos")."""

    def __init__(self, f) -> None:
        self.f, self.sha256, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            written = self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.sha256.update(data)
        return written

    def flush(self) -> None:
        self.f.flush()


def _save(obj: Any, path: Path) -> str:
    """torch.save `obj` to `path`, on disk (fsync) before returning its SHA-256; a failed write
    raises the OSError that caused it, naming `path`."""
    try:
        with path.open("wb") as f:
            out = _HashingFile(f)
            try:
                torch.save(obj, out)
            except RuntimeError:
                if out.error is None:
                    raise
                raise out.error from None
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return out.sha256.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    rank: int,
    models: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    rng: dict[str, Any],
    meta: dict[str, Any],
    all_ok: Callable[[bool], bool] = lambda ok: ok,
) -> Path:
    """Write one checkpoint from every rank; returns its final path.

    Called on all ranks: rank 0 writes the shared files and meta.json, each rank its RNG state.
    `all_ok` combines the ranks' success after each stage (an all-reduce, which is also the
    barrier): when any rank fails, every rank raises CheckpointWriteError and rank 0 removes the
    partial directory, so a full disk stays no fuller and the previous checkpoints stay intact.
    The run directory must be on a file system all ranks see (as on every SLURM cluster)."""
    final = ckpt_dir / checkpoint_name(step)
    tmp = ckpt_dir / f".tmp-{final.name}"

    def prepare() -> None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def save_files() -> None:
        _save(rng, tmp / f"rng-rank{rank}.pt")
        if rank == 0:
            _save(models, tmp / MODELS_FILE)
            _save(optim, tmp / OPTIM_FILE)

    def publish() -> None:
        if rank != 0:
            return
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        meta_path = tmp / META_FILE
        with meta_path.open("w") as f:
            f.write(json.dumps({**meta, "files": files}, indent=1))
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)

    for stage in (prepare, save_files, publish):
        error: OSError | None = None
        try:
            stage()
        except OSError as exc:
            error = exc
        if not all_ok(error is None):
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if error is None:
                raise CheckpointWriteError(f"checkpoint {final.name} not written: another rank could not write it")
            where = error.filename or tmp
            raise CheckpointWriteError(f"cannot write checkpoint {where}: {error.strerror or error}; "
                                       "the earlier checkpoints are intact") from error
    return final


# --------------------------------------------------------------------------- reading


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointDamaged(f"{META_FILE} unreadable ({type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise CheckpointDamaged(f"{META_FILE} holds {type(meta).__name__}, not an object")
    for key, kind in META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointDamaged(f"{META_FILE} has no valid {key!r}")
    files = meta.get("files")
    if files is not None and not (isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise CheckpointDamaged(f"{META_FILE} has an invalid 'files' table")
    return meta


def _load_file(path: Path, meta: dict[str, Any]) -> Any:
    """torch.load one file after checking it against the checksum meta.json recorded."""
    files = meta.get("files")
    if not path.is_file():
        raise CheckpointDamaged(f"{path.name} is missing")
    if files is not None:
        if path.name not in files:
            raise CheckpointDamaged(f"{path.name} is not listed in {META_FILE}")
        if _sha256(path) != files[path.name]:
            raise CheckpointDamaged(f"{path.name} does not match its checksum")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged or malicious file
        raise CheckpointDamaged(f"{path.name} unreadable ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


def _check_models(models: Any, meta: dict[str, Any]) -> None:
    if not isinstance(models, dict) or any(not isinstance(models.get(k), dict) for k in NETWORKS):
        raise CheckpointDamaged(f"{MODELS_FILE} lacks the G, D and G_ema state dicts")
    if meta.get("files") is not None:
        return
    # Written before meta.json held file checksums: check the weights against the sums recorded
    # for rank 0 instead, which catches flipped bits as well.
    recorded = meta.get("rank_checksums")
    if not (isinstance(recorded, list) and recorded and isinstance(recorded[0], list) and len(recorded[0]) == 3):
        raise CheckpointDamaged(f"{META_FILE} records no checksums")
    for name, expected in zip(NETWORKS, recorded[0]):
        total = sum(t.double().sum().item() for t in models[name].values() if t.is_floating_point())
        if not math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-9):
            raise CheckpointDamaged(f"{MODELS_FILE}: {name} does not match its recorded checksum")


def load_checkpoint(path: str | Path, rank: int = 0, *, with_training_state: bool = True) -> Checkpoint:
    """Load and verify one checkpoint directory.

    Raises CheckpointDamaged (prefixed with the path) when a file is missing, unreadable or
    differs from its checksum, or meta.json lacks a field; CheckpointError when it is sound but
    cannot serve this rank (written by fewer processes)."""
    path = Path(path)
    try:
        meta = _read_meta(path)
        models = _load_file(path / MODELS_FILE, meta)
        _check_models(models, meta)
        optim, rng = {}, {}
        if with_training_state:
            optim = _load_file(path / OPTIM_FILE, meta)
            if not isinstance(optim, dict) or any(k not in optim for k in ("G", "D", "scaler_G", "scaler_D")):
                raise CheckpointDamaged(f"{OPTIM_FILE} lacks an optimizer or scaler state")
            if rank >= meta["world_size"]:
                raise CheckpointError(f"written by {meta['world_size']} process(es), so it has no RNG state for "
                                      f"rank {rank}; resume with at most {meta['world_size']} processes")
            rng = _load_file(path / f"rng-rank{rank}.pt", meta)
            if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
                raise CheckpointDamaged(f"rng-rank{rank}.pt holds no RNG state")
    except CheckpointError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return Checkpoint(path, meta, models, optim, rng)


def check_shapes(ckpt: Checkpoint, expected: dict[str, dict[str, torch.Size]], *, allow_missing: bool = False) -> None:
    """Every tensor of the checkpoint's networks has the name and shape the model expects.

    `expected` maps G/D/G_ema to the model's state-dict shapes; with `allow_missing` the model may
    have tensors the checkpoint lacks (new blocks of a warm start), never the other way round."""
    for name, shapes in expected.items():
        saved = ckpt.models[name]
        for key, tensor in saved.items():
            if key not in shapes:
                raise CheckpointDamaged(f"{ckpt.path}: {MODELS_FILE}: {name} has {key}, which the model lacks")
            if tuple(tensor.shape) != tuple(shapes[key]):
                raise CheckpointDamaged(f"{ckpt.path}: {MODELS_FILE}: {name}.{key} has shape {tuple(tensor.shape)}, "
                                        f"the model {tuple(shapes[key])}")
        missing = [key for key in shapes if key not in saved]
        if missing and not allow_missing:
            raise CheckpointDamaged(f"{ckpt.path}: {MODELS_FILE}: {name} lacks {missing[0]}")


# --------------------------------------------------------------------------- managing


def quarantine(path: Path) -> Path:
    """Move a damaged checkpoint to checkpoints/damaged/ (kept for inspection, never resumed)."""
    folder = path.parent / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    n = 1
    while target.exists():
        target = folder / f"{path.name}.{n}"
        n += 1
    os.replace(path, target)
    return target


def prune_checkpoints(ckpt_dir: Path, keep: int, newest: Path) -> list[Path]:
    """Delete old checkpoints after writing `newest`: keep the newest `keep`, every phase end,
    and never touch `newest` or anything at or after its step (retention only removes the past)."""
    paths = [p for p in complete_checkpoints(ckpt_dir) if checkpoint_step(p) < checkpoint_step(newest)]
    regular = []
    for path in paths:
        try:
            kind = json.loads((path / META_FILE).read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != "phase_end":
            regular.append(path)
    doomed = regular[: max(len(regular) - (keep - 1), 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_partial(ckpt_dir: Path) -> list[Path]:
    """Delete the `.tmp-step-*` directories a killed writer left (they would hold the space a
    full disk needs back). Only for the holder of the run's lock: no one else is writing."""
    partial = sorted(ckpt_dir.glob(".tmp-step-*")) if ckpt_dir.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint path, a checkpoints/ folder or a run directory."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = complete_checkpoints(folder)
        if found:
            return found[-1]
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a checkpoint, a checkpoints/ folder or a run directory)")
    raise CheckpointError(f"{path}: no complete checkpoint found")
