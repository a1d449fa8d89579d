"""From a validated config to a running Trainer: every check first, then the run directory.

Anything that can be wrong (config values, launch mistakes, precision the device lacks, a
resume that does not fit) is reported before a single file is written.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from gan_hr.config import Config, ConfigError, save_config
from gan_hr.evaluation import Evaluator
from gan_hr.metrics import MissingInceptionWeights
from gan_hr.schedule import Schedule
from gan_hr.training.checkpoint import Checkpoint, complete_checkpoints, load_checkpoint, load_newest, resolve_checkpoint
from gan_hr.training.precision import accelerate_device, resolve_precision
from gan_hr.training.run_dir import MetricsLog, RunDir
from gan_hr.training.trainer import Trainer


class LaunchError(RuntimeError):
    """A launch that cannot work (wrong process count, resume conflict), said in one line."""


def make_accelerator(cfg: Config) -> Accelerator:
    """The Accelerator for a run, after the checks that need to know the processes and device."""
    # Resolved before Accelerator exists (it takes the precision when built), with the device it
    # will choose; the saved config then says what the run computes in, not `auto`.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cfg.train.mixed_precision = resolve_precision(cfg.train.mixed_precision, accelerate_device(use_cpu))
    acc = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with="wandb" if cfg.tracking.backend == "wandb" else None,
    )
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if acc.num_processes != expected:
        raise LaunchError(
            f"Accelerate sees {acc.num_processes} process(es) but WORLD_SIZE is {expected}: the processes "
            "would train unsynchronised copies. On CPU launch with ACCELERATE_USE_CPU=true and --multi_gpu.")
    if cfg.train.mixed_precision == "fp16" and acc.device.type != "cuda":
        raise ConfigError(
            f"train.mixed_precision: fp16 needs a CUDA device (this run is on {acc.device.type}); use bf16 or no")
    check_batch_sizes(cfg, acc.num_processes)
    return acc


def check_batch_sizes(cfg: Config, world_size: int) -> None:
    schedule = Schedule(cfg.schedule)
    for res in schedule.resolutions:
        batch = schedule.batch_size(res)
        key = f"schedule.batch_by_res.{res}" if res in cfg.schedule.batch_by_res else "schedule.batch_size"
        if batch % world_size:
            raise ConfigError(f"{key}: global batch {batch} at {res}x{res} is not divisible by {world_size} processes")


def choose_run_dir(acc: Accelerator, run_dir: str | None, name: str) -> RunDir:
    """The given run directory, or runs/<name>-<time> chosen once on the main process."""
    if run_dir is None:
        choice = [f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}" if acc.is_main_process else None]
        if acc.num_processes > 1:
            broadcast_object_list(choice)
        run_dir = choice[0]
    return RunDir(Path(run_dir))


def select_resume(acc: Accelerator, run_dir: RunDir, resume: str) -> Checkpoint | None:
    """`none`: a fresh run (refused if the directory has checkpoints); `auto`: the newest
    checkpoint all ranks can read, if any; otherwise a checkpoint path."""
    rank = acc.process_index
    if resume == "none":
        if complete_checkpoints(run_dir.checkpoints):
            raise LaunchError(f"{run_dir.root} already has checkpoints: pass --resume auto to continue it, "
                              "or choose another --run-dir")
        return None
    if resume == "auto":
        def all_agree(ok: bool) -> bool:
            flag = torch.tensor([1.0 if ok else 0.0], device=acc.device)
            return bool(acc.reduce(flag, reduction="sum").item() == acc.num_processes)
        return load_newest(run_dir.checkpoints, rank, all_agree=all_agree)
    try:
        return load_checkpoint(resolve_checkpoint(resume), rank)
    except Exception as exc:
        raise LaunchError(str(exc)) from exc


def prepare_data(cfg: Config, acc: Accelerator) -> str:
    """The data root: data.path, or the built-in synthetic set, prepared on first use."""
    out = cfg.data_root()
    if cfg.data.path is not None:
        return out
    from data_prep import prepare

    if acc.is_local_main_process:
        prepare(f"synthetic:{cfg.data.synthetic_images}", out, max_res=cfg.schedule.max_res, seed=0,
                shard_size=256, progress=True)
    acc.wait_for_everyone()
    return out


def make_evaluator(cfg: Config, acc: Accelerator, data_root: str) -> Evaluator | None:
    """The metrics evaluator when train.metrics asks for one; a missing Inception file or a
    metric set larger than the data fails here, before training starts."""
    t = cfg.train
    if not t.metrics:
        return None
    try:
        return Evaluator(data_root, t.metrics, num_images=t.metrics_num_images, seed=t.seed, device=acc.device,
                         inception_weights=t.inception_weights, rank=acc.process_index,
                         world_size=acc.num_processes, gather=acc.gather)
    except MissingInceptionWeights as exc:
        raise ConfigError(f"train.inception_weights: {exc}".splitlines()[0]) from exc
    except ValueError as exc:
        raise ConfigError(f"train.metrics: {exc}") from exc


def run_training(cfg: Config, *, run_dir: str | None, resume: str, name: str) -> RunDir:
    """Check everything, then train; the run directory is written only after all checks pass.
    Returns the run directory."""
    acc = make_accelerator(cfg)
    run = choose_run_dir(acc, run_dir, name)
    ckpt = select_resume(acc, run, resume)
    data_root = prepare_data(cfg, acc)
    evaluator = make_evaluator(cfg, acc, data_root)

    run_id = (ckpt.meta["state"].get("wandb_run_id") if ckpt else None) or secrets.token_hex(4)
    if acc.is_main_process:
        run.create()
        save_config(cfg, run.config)
        MetricsLog(run.metrics).truncate_after(ckpt.meta["step"] if ckpt else 0)
        if ckpt:
            print(f"resuming from {ckpt.path} (step {ckpt.meta['step']}, {ckpt.meta['kimg']:.1f} kimg)")
    acc.wait_for_everyone()
    if cfg.tracking.backend == "wandb":
        acc.init_trackers(
            cfg.tracking.project,
            config=cfg.to_dict(),
            init_kwargs={"wandb": {"id": run_id, "resume": "allow", "dir": str(run.root),
                                   "name": cfg.tracking.run_name or run.root.name, "entity": cfg.tracking.entity}},
        )
    trainer = Trainer(cfg, run, acc, data_root, resume=ckpt, wandb_run_id=run_id, evaluator=evaluator)
    try:
        trainer.train()
        return run
    finally:
        acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
