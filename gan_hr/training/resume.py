"""What a run starts from, decided before training: its own newest intact checkpoint (`--resume
auto`), one it names (`--resume PATH`, which branches the run there), or another run's checkpoint
(`--init-from`, a warm start).

Every candidate is verified (checksums, meta.json, tensor shapes against the model) and its
saved config compared with the one asked for. Damaged checkpoints are moved aside and reported;
a resume never starts from zero over checkpoints it could not use, and never changes the
networks. All ranks read the same files and reach the same decision; only the main process
moves files.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from gan_hr.checkpoint import (
    Checkpoint,
    CheckpointDamaged,
    CheckpointError,
    check_shapes,
    checkpoint_step,
    complete_checkpoints,
    damaged_checkpoints,
    load_checkpoint,
    quarantine,
    resolve_checkpoint,
)
from gan_hr.config import Config, ConfigError, from_dict
from gan_hr.models import UNREAD_FIELDS, build_discriminator, build_generator
from gan_hr.training.grad_sync import max_over_ranks
from gan_hr.training.run_dir import MetricsLog, RunDir

# Keys that fix the networks' tensors (or what their weights mean): a run keeps them for life.
NETWORK_KEYS = (
    "model.name", "model.latent_dim", "model.channel_base", "model.channel_max", "model.mbstd_group_size",
    "model.w_dim", "model.mapping_layers", "model.mapping_lr_mul", "model.blur", "model.noise", "model.demodulate",
    "model.base_width", "model.d_spectral_norm", "model.conditional", "model.label_kind", "model.label_names",
    "schedule.max_res",
)
# Per model, the model keys it does not read (the registry's table, as dotted keys).
UNREAD_KEYS = {name: tuple(f"model.{field}" for field in fields) for name, fields in UNREAD_FIELDS.items()}
# Keys that change how a run is driven or watched, not what it learns: changed silently (still
# recorded in config-history/). Every other changed key is printed as a warning.
QUIET_KEYS = (
    "train.max_steps", "train.total_kimg", "data.num_workers", "train.log_every_steps", "train.sample_every_kimg",
    "train.sample_grid", "train.checkpoint_every_kimg", "train.keep_checkpoints", "train.metrics",
    "train.metrics_every_kimg", "train.metrics_num_images", "train.inception_weights", "train.compile",
    "train.compile_backend", "train.final_swd", "tracking.",
)


class LaunchError(RuntimeError):
    """A launch that cannot work (wrong process count, resume conflict, locked run directory),
    said in one line."""


@dataclass
class Resume:
    """The checkpoint a run continues from, and how the asked config differs from its own."""

    ckpt: Checkpoint
    changes: dict[str, tuple[Any, Any]]


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, keys in config.items() for key, value in keys.items()}


def config_changes(saved: Config, asked: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, asked value)} for every key that differs."""
    old, new = _flat(saved.to_dict()), _flat(asked.to_dict())
    return {key: (old.get(key), new.get(key)) for key in new if old.get(key) != new.get(key)}


def saved_config(ckpt: Checkpoint) -> Config:
    """The config a checkpoint was written with; one that no longer validates is damage."""
    try:
        return from_dict(ckpt.meta["config"])
    except ConfigError as exc:
        raise CheckpointDamaged(f"{ckpt.path}: meta.json config is invalid ({exc})") from exc


def refuse_network_changes(changes: dict[str, tuple[Any, Any]], *, model: str, what: str, hint: str,
                           allowed: tuple[str, ...] = ()) -> None:
    """LaunchError naming every changed key that fixes `model`'s networks (but `allowed`)."""
    fixed = [f"{key} {old} -> {new}" for key, (old, new) in changes.items()
             if key in NETWORK_KEYS and key not in allowed and key not in UNREAD_KEYS[model]]
    if fixed:
        raise LaunchError(f"{what} would change the networks ({', '.join(fixed)}): {hint}")


def model_shapes(cfg: Config) -> dict[str, dict[str, torch.Size]]:
    """The state-dict shapes of the networks `cfg` builds, without allocating them."""
    with torch.device("meta"):
        G = build_generator(cfg.model, cfg.schedule.max_res)
        D = build_discriminator(cfg.model, cfg.schedule.max_res)
    g = {k: v.shape for k, v in G.state_dict().items()}
    return {"G": g, "D": {k: v.shape for k, v in D.state_dict().items()}, "G_ema": g}


def _check_state(ckpt: Checkpoint) -> None:
    from gan_hr.training.trainer import RETIRED_STATE_KEYS, TrainState

    fields = {f.name for f in dataclasses.fields(TrainState)} | set(RETIRED_STATE_KEYS)
    state = ckpt.meta["state"]
    unknown = set(state) - fields
    if unknown or not all(isinstance(state.get(k), int) for k in ("step", "images_seen", "phase_index")):
        raise CheckpointDamaged(f"{ckpt.path}: meta.json has an invalid training state")


def _verified(path, rank: int, cfg: Config, shapes: dict[str, dict[str, torch.Size]]) -> Resume:
    """Load `path` and check it can continue this run; LaunchError if the asked config would
    change its networks, CheckpointDamaged if it is not what it claims."""
    ckpt = load_checkpoint(path, rank)
    _check_state(ckpt)
    changes = config_changes(saved_config(ckpt), cfg)
    refuse_network_changes(changes, model=cfg.model.name, what=f"resuming from {ckpt.path.name}",
                           hint="these keys are fixed for a run; drop the overrides, or start a new --run-dir "
                                "with --init-from")
    check_shapes(ckpt, shapes)
    return Resume(ckpt, changes)


# Outcomes of one candidate on one rank; the ranks act on the worst.
_OK, _DAMAGED, _REFUSED = 0, 1, 2


def _try(acc: Accelerator, path, cfg: Config,
         shapes: dict[str, dict[str, torch.Size]]) -> tuple[Resume | None, CheckpointDamaged | None]:
    """One candidate, agreed on by all ranks: (resume, None) if every rank can use it, (None,
    reason) if some rank finds it damaged; raises LaunchError on every rank if any refuses."""
    result, damage, refusal = None, None, None
    try:
        result = _verified(path, acc.process_index, cfg, shapes)
    except CheckpointDamaged as exc:
        damage = exc
    except (CheckpointError, LaunchError) as exc:
        refusal = exc
    worst = max_over_ranks(_REFUSED if refusal else _DAMAGED if damage else _OK, acc.device)
    if worst == _REFUSED:
        raise LaunchError(str(refusal) if refusal else f"{path}: refused on another rank (see its error)")
    if worst == _DAMAGED:
        return None, damage or CheckpointDamaged(f"{path}: another rank could not verify it")
    return result, None


def select_resume(acc: Accelerator, run: RunDir, resume: str, cfg: Config) -> Resume | None:
    """`none`: a fresh run (refused where the run has checkpoints, damaged ones included);
    `auto`: the newest intact checkpoint, moving damaged ones aside, refusing if none is intact;
    a path: that checkpoint of this run, with the newer ones moved aside (a branch)."""
    found = complete_checkpoints(run.checkpoints)
    damaged = damaged_checkpoints(run.checkpoints)
    if resume == "none":
        if found or damaged:
            raise LaunchError(f"{run.root} already has checkpoints: pass --resume auto to continue it, "
                              "or choose another --run-dir")
        return None
    shapes = model_shapes(cfg)  # what every candidate's tensors must match
    if resume == "auto":
        for path in reversed(found):
            chosen, damage = _try(acc, path, cfg, shapes)
            if chosen is not None:
                return chosen
            if acc.is_main_process:
                warn(f"checkpoint {path.name} is damaged ({str(damage).removeprefix(f'{path}: ')}); "
                     f"moved to {quarantine(path)}")
            acc.wait_for_everyone()
        damaged = damaged_checkpoints(run.checkpoints)
        if damaged:
            raise LaunchError(f"{run.root} has no intact checkpoint ({len(damaged)} damaged, in "
                              f"{run.checkpoints / 'damaged'}); nothing was resumed or changed: restore one, or "
                              "start a new --run-dir (--init-from can start it from a checkpoint)")
        return None
    try:
        path = resolve_checkpoint(resume)
    except CheckpointError as exc:
        raise LaunchError(f"--resume: {exc}") from exc
    if path.parent.resolve() != run.checkpoints.resolve():
        raise LaunchError(f"--resume {resume}: not a checkpoint of {run.root}; to start a new run from another "
                          "run's checkpoint, use --init-from")
    chosen, damage = _try(acc, path, cfg, shapes)
    if chosen is None:
        raise LaunchError(f"--resume: {damage}")
    if acc.is_main_process:
        _branch(run, chosen.ckpt)
    acc.wait_for_everyone()
    return chosen


def _branch(run: RunDir, ckpt: Checkpoint) -> None:
    """Going back to an older checkpoint: the newer ones and their metrics rows move to
    abandoned/, so that `--resume auto` and every requeue follow the new branch."""
    newer = [p for p in complete_checkpoints(run.checkpoints) if checkpoint_step(p) > ckpt.step]
    if not newer:
        return
    dest = run.abandoned / f"after-{ckpt.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True)
    for path in newer:
        os.replace(path, dest / path.name)
    rows = MetricsLog(run.metrics).truncate_after(ckpt.step, keep_dropped_in=dest / "metrics.jsonl")
    warn(f"branching at {ckpt.path.name}: {len(newer)} newer checkpoint(s) and {rows} metrics row(s) moved to {dest}")


def report_changes(changes: dict[str, tuple[Any, Any]], ckpt: Checkpoint, model: str) -> None:
    """One warning line per changed training key (run-control keys, and model keys `model`
    does not read, change silently)."""
    for key, (old, new) in changes.items():
        if not key.startswith(QUIET_KEYS) and key not in UNREAD_KEYS[model]:
            warn(f"resuming {ckpt.path.name} with {key} changed: {old} -> {new}")


def select_init(cfg: Config, source: str, *, with_optimizers: bool) -> Checkpoint:
    """The checkpoint a warm start loads its networks from (any run's), checked against `cfg`.

    Its blocks must match the new networks' (only `schedule.max_res` may grow). The caller
    starts the new run at the checkpoint's resolution."""
    try:
        ckpt = load_checkpoint(resolve_checkpoint(source), with_training_state=with_optimizers)
        saved = saved_config(ckpt)
    except CheckpointError as exc:
        raise LaunchError(f"--init-from: {exc}") from exc
    changes = config_changes(saved, cfg)
    refuse_network_changes(changes, model=cfg.model.name, what=f"--init-from {ckpt.path}", allowed=("schedule.max_res",),
                           hint="a warm start keeps the checkpoint's networks; only schedule.max_res may grow")
    res = int(ckpt.meta["resolution"])
    if res > cfg.schedule.max_res:
        raise LaunchError(f"--init-from: {ckpt.path} is at {res}x{res}, above schedule.max_res ({cfg.schedule.max_res})")
    if with_optimizers and cfg.schedule.max_res != saved.schedule.max_res:
        raise LaunchError("--init-optimizers: the optimizers carry over only when schedule.max_res is unchanged "
                          "(new blocks have no optimizer state)")
    try:
        check_shapes(ckpt, model_shapes(cfg), allow_missing=True)
    except CheckpointDamaged as exc:
        raise LaunchError(f"--init-from: {exc}") from exc
    return ckpt
