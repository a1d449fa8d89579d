"""Checkpoints: one directory per checkpoint, written atomically, loaded without unpickling code.

Layout of `checkpoints/step-00001234/`:
  models.pt        {"G", "D", "G_ema"} state dicts
  optim.pt         {"G", "D", "scaler_G", "scaler_D"} optimizer and grad-scaler state dicts
  rng-rank{r}.pt   each rank's RNG states (tensors)
  meta.json        step, images seen, schedule and data position, W&B run id, the config

Everything is written into `.tmp-step-...` first and renamed into place once complete, so a
crash mid-write never leaves a directory that resume would pick. Files load with
`weights_only=True`: plain tensors and JSON, no pickled code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
MODELS_FILE, OPTIM_FILE, META_FILE = "models.pt", "optim.pt", "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    models: dict[str, dict[str, torch.Tensor]]
    optim: dict[str, Any]
    rng: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (half-written ones are .tmp-* and skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensor_file(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def write_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    rank: int,
    models: dict[str, dict[str, torch.Tensor]],
    optim: dict[str, Any],
    rng: dict[str, Any],
    meta: dict[str, Any],
    barrier: Callable[[], None],
) -> Path:
    """Write one checkpoint from every rank; returns its final path.

    Called on all ranks: rank 0 writes the shared files, each rank its RNG state. The run
    directory must be on a file system all ranks see (as on every SLURM cluster)."""
    final = ckpt_dir / checkpoint_name(step)
    tmp = ckpt_dir / f".tmp-{checkpoint_name(step)}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _save_tensor_file(rng, tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        _save_tensor_file(models, tmp / MODELS_FILE)
        _save_tensor_file(optim, tmp / OPTIM_FILE)
    barrier()
    if rank == 0:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _fsync(tmp / META_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(ckpt_dir)
    barrier()
    return final


def load_checkpoint(path: str | Path, rank: int = 0, *, with_training_state: bool = True) -> Checkpoint:
    """Load one checkpoint directory; raises CheckpointError saying what is wrong."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        models = torch.load(path / MODELS_FILE, map_location="cpu", weights_only=True)
        optim, rng = {}, {}
        if with_training_state:
            optim = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
            rng_file = path / f"rng-rank{rank}.pt"
            if not rng_file.exists():
                raise CheckpointError(
                    f"{path}: no RNG state for rank {rank} (saved with world size "
                    f"{meta.get('world_size')}); resume with the same number of processes")
            rng = torch.load(rng_file, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    for key in ("G", "D", "G_ema"):
        if key not in models:
            raise CheckpointError(f"{path}: {MODELS_FILE} has no {key!r} state")
    return Checkpoint(path, meta, models, optim, rng)


def load_newest(
    ckpt_dir: str | Path,
    rank: int = 0,
    *,
    all_agree: Callable[[bool], bool] = lambda ok: ok,
) -> Checkpoint | None:
    """The newest checkpoint every rank can load, warning about each one skipped.

    `all_agree` combines each rank's success (True only if all ranks succeeded), so that all
    ranks fall back to the same checkpoint."""
    for path in reversed(complete_checkpoints(ckpt_dir)):
        try:
            ckpt, error = load_checkpoint(path, rank), None
        except CheckpointError as exc:
            ckpt, error = None, exc
        if all_agree(ckpt is not None):
            return ckpt
        reason = error if error is not None else "another rank could not read it"
        warnings.warn(f"skipping checkpoint {path.name}: {reason}; falling back to the previous one",
                      stacklevel=2)
    return None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete old checkpoints: keep the newest `keep`, every phase end, and the newest one."""
    paths = complete_checkpoints(ckpt_dir)
    removable = []
    for path in paths[:-1]:
        try:
            kind = json.loads((path / META_FILE).read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
        if kind != "phase_end":
            removable.append(path)
    regular = [p for p in paths if p in removable or p == paths[-1]]
    doomed = [p for p in removable if p not in regular[-keep:]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint path, a checkpoints/ folder or a run directory."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = complete_checkpoints(folder)
        if found:
            return found[-1]
    raise CheckpointError(f"{path}: no complete checkpoint found")
