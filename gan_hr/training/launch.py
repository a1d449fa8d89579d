"""From a validated config to a running Trainer: every check first, then the run directory.

Anything that can be wrong (config values, launch mistakes, precision the device lacks, a
resume that does not fit) is reported before a single file is written.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from gan_hr.checkpoint import Checkpoint, CheckpointError, remove_partial, resolve_checkpoint
from gan_hr.config import Config, ConfigError, save_config
from gan_hr.data import load_manifest, loader_workers
from gan_hr.evaluation import SWD_MIN_RESOLUTION, Evaluator
from gan_hr.labels import data_labels
from gan_hr.metrics import MissingInceptionWeights
from gan_hr.schedule import Schedule
from gan_hr.training import report
from gan_hr.training.guard import FINISHED
from gan_hr.training.precision import accelerate_device, resolve_precision
from gan_hr.training.resume import LaunchError, Resume, report_changes, select_init, select_resume, warn
from gan_hr.training.run_dir import MetricsLog, RunDir, RunLock, RunLocked, new_run_id, read_metrics
from gan_hr.training.tracking import start_tracking
from gan_hr.training.trainer import Trainer
from gan_hr.training.vae import VAETrainer

__all__ = ["LaunchError", "make_accelerator", "run_training"]

# The final SWD takes evaluate.py's images (train.metrics_num_images, seed 0: the floor's two
# halves are the same) with 128 random projections instead of 512 x 4. Fewer projections estimate
# the same distance, and the distances were most of the time; fewer images would not do: the
# floor of 512 images is much higher and noisier than that of 2048, and so the ratio to it
# (measured on the demo: README, "Sampling and evaluation").
FINAL_SWD_DIRS, FINAL_SWD_REPEATS = 128, 1
# Models whose step is not the GANs' D and G steps: model.name -> its Trainer.
TRAINERS: dict[str, type[Trainer]] = {"vae": VAETrainer}


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


def choose_run_dir(acc: Accelerator, run_dir: str | None, name: str, resume: str) -> RunDir:
    """The given run directory; for `--resume PATH` without one, the run that holds PATH; else
    runs/<name>-<time>, chosen once on the main process. A path that is not a directory is refused."""
    if run_dir is None and resume not in ("auto", "none"):
        try:
            run_dir = str(resolve_checkpoint(resume).parent.parent)
        except CheckpointError as exc:
            raise LaunchError(f"--resume: {exc}") from exc
    if run_dir is None:
        choice = [f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}" if acc.is_main_process else None]
        if acc.num_processes > 1:
            broadcast_object_list(choice)
        run_dir = choice[0]
    run = RunDir(Path(run_dir))
    for path in (run.root, run.checkpoints, run.samples):
        if path.exists() and not path.is_dir():
            raise LaunchError(f"--run-dir: {path} exists and is not a directory")
    return run


def lock_run_dir(acc: Accelerator, run: RunDir) -> RunLock | None:
    """Create the run directory and hold its lock on the main process for the whole run; every
    rank raises LaunchError when another trainer holds it (or it cannot be created)."""
    lock, problem = None, None
    if acc.is_main_process:
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run.root)
            lock.acquire()
        except RunLocked as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"--run-dir: cannot create or lock {run.root}: {exc.strerror or exc}"
    outcome = [problem]
    if acc.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[0] is not None:
        raise LaunchError(outcome[0] if problem else f"{run.root}: {outcome[0]}")
    return lock


def prepare_data(cfg: Config, acc: Accelerator) -> str:
    """The data root: data.path, or the built-in synthetic set, prepared on first use (with the
    classes data.synthetic_labels names for a conditional model)."""
    out = cfg.data_root()
    if cfg.data.path is not None:
        return out
    from data_prep import prepare

    if acc.is_local_main_process:
        prepare(f"synthetic:{cfg.data.synthetic_images}", out, max_res=cfg.schedule.max_res, seed=0,
                shard_size=256, progress=True, labels=cfg.data.synthetic_labels if cfg.model.conditional else None)
    acc.wait_for_everyone()
    return out


def resolve_labels(cfg: Config, data_root: str) -> None:
    """A conditional run takes its label kind, names and frequencies from the data's manifest into
    the config (so the checkpoints know them); ConfigError, one line, when the data has none or
    the config's differ."""
    if not cfg.model.conditional:
        return
    try:
        labels = data_labels(load_manifest(data_root))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.conditional: cannot read the labels of {data_root}: {exc}".splitlines()[0]) from exc
    if labels is None:
        raise ConfigError(f"model.conditional: the data in {data_root} has no labels: prepare it with "
                          "python -m data_prep --labels folders|shapes|backgrounds|FILE")
    kind, names, frequencies = labels
    m = cfg.model
    for key, value in (("label_kind", kind), ("label_names", names)):
        if getattr(m, key) not in (None, [], value):
            raise ConfigError(f"model.{key}: {getattr(m, key)} differs from the data's {value} ({data_root})")
    m.label_kind, m.label_names, m.label_frequencies = kind, names, frequencies


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


def start_run_dir(run: RunDir, cfg: Config, resume: Resume | None, init: Checkpoint | None) -> dict[str, Any]:
    """Write what a starting run keeps (main process, under the lock); returns run.json.

    config.yaml is always the config the run now trains with, and config-history/ holds each
    config from the step it took effect, so that every resume that changed a key is on record.
    metrics.jsonl loses only rows logged after the checkpoint resumed from (they will be logged
    again)."""
    run.create()
    step = resume.ckpt.step if resume else 0
    record = run.read_record()
    if record is None:  # a new run, or one started before run.json existed
        saved_id = resume.ckpt.meta["state"].get("wandb_run_id") if resume else None
        parent = None
        if init is not None:
            parent = {"checkpoint": str(init.path.resolve()), "step": init.step,
                      "wandb_run_id": init.meta["state"].get("wandb_run_id")}
        record = {"wandb_run_id": saved_id if isinstance(saved_id, str) else new_run_id(), "parent": parent}
        run.write_record(record)
    if resume is None or resume.changes:
        run.config_history.mkdir(exist_ok=True)
        save_config(cfg, run.config_history / f"step-{step:08d}.yaml")
    save_config(cfg, run.config)
    MetricsLog(run.metrics).truncate_after(step)
    if resume:
        report_changes(resume.changes, resume.ckpt, cfg.model.name)
    return record


def run_training(cfg: Config, *, run_dir: str | None, resume: str, name: str, init_from: str | None = None,
                 init_optimizers: bool = False) -> RunDir:
    """Check everything, then train; the run directory is written only after all checks pass.
    Returns the run directory."""
    if init_from is not None and resume != "none":
        raise LaunchError("--init-from starts a new run: it cannot be combined with --resume")
    requested_precision = cfg.train.mixed_precision  # make_accelerator resolves `auto`
    acc = make_accelerator(cfg)
    run = choose_run_dir(acc, run_dir, name, resume)
    data_root = prepare_data(cfg, acc)
    resolve_labels(cfg, data_root)  # before any checkpoint's config is compared with this one
    init = None
    if init_from is not None:
        init = select_init(cfg, init_from, with_optimizers=init_optimizers)
        res = int(init.meta["resolution"])
        if cfg.schedule.start_res != res:
            if acc.is_main_process:
                warn(f"warm start at {res}x{res}: schedule.start_res {cfg.schedule.start_res} -> {res}")
            cfg.schedule.start_res = res
    evaluator = make_evaluator(cfg, acc, data_root)

    created = not run.root.exists()
    lock = lock_run_dir(acc, run)
    if acc.is_main_process:
        remove_partial(run.checkpoints)
    try:
        ckpt = select_resume(acc, run, resume, cfg)
    except LaunchError:
        if created and acc.is_main_process:
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    if ckpt and ckpt.ckpt.meta["world_size"] != acc.num_processes and acc.is_main_process:
        warn(f"{ckpt.ckpt.path.name} was written by {ckpt.ckpt.meta['world_size']} process(es), this run has "
             f"{acc.num_processes}: training continues, but the data order differs from an uninterrupted run")
    record = [start_run_dir(run, cfg, ckpt, init) if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(record)
    tracking = start_tracking(acc, cfg, run, record[0])
    trainer_class = TRAINERS.get(cfg.model.name, Trainer)
    trainer = trainer_class(cfg, run, acc, data_root, resume=ckpt.ckpt if ckpt else None, init=init,
                            init_optimizers=init_optimizers, wandb_run_id=record[0]["wandb_run_id"],
                            evaluator=evaluator)
    if acc.is_main_process:
        print("\n".join(_header(cfg, acc, run, trainer, data_root, requested_precision, _start(ckpt, init))),
              flush=True)
    exit_code = 1
    try:
        trainer.train()
        exit_code = 0
        swd = _final_swd(cfg, acc, trainer, data_root)
        if acc.is_main_process:
            plots = _write_plots(run.root)
            tracking.log_plots(plots)  # before the W&B run closes
            print("\n".join(_summary(run, trainer, swd, plots)), flush=True)
        return run
    finally:
        tracking.finish(exit_code)
        acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if lock is not None:
            lock.release()


def _write_plots(run_dir: Path) -> list[Path]:
    """Plots of the run's metrics; a plotting problem is reported, never a failed run."""
    from gan_hr.plots import plot_run

    try:
        return plot_run(run_dir)
    except (OSError, ValueError) as exc:
        warnings.warn(f"no plots written: {exc}", stacklevel=2)
        return []


def _start(resume: Resume | None, init: Checkpoint | None) -> str:
    if resume is not None:
        return f"resuming from {resume.ckpt.path} (step {resume.ckpt.step}, {resume.ckpt.meta['kimg']:.1f} kimg)"
    if init is not None:
        return f"warm start from {init.path} (step {init.step}, {init.meta['resolution']}x{init.meta['resolution']})"
    return "a new run"


def _header(cfg: Config, acc: Accelerator, run: RunDir, trainer: Trainer, data_root: str, requested_precision: str,
            start: str) -> list[str]:
    """The run's header (main process): the facts, and the estimate from a timing probe."""
    try:
        manifest = load_manifest(data_root)
        num_images, data_resolutions = manifest["num_images"], manifest["resolutions"]
    except (OSError, ValueError):  # remote data the stream will report on itself
        num_images, data_resolutions = None, []
    schedule, state = trainer.schedule, trainer.state
    trained = trainer.resolutions_ahead() or [trainer.resolution]
    device = str(acc.device)
    if acc.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(acc.device)})"
    t = cfg.train
    at_steps = t.max_steps is not None and trainer.end_images < trainer.guard.total_images
    return report.header_lines(
        run_dir=str(run.root), start=start, device=device, precision=t.mixed_precision,
        requested_precision=requested_precision, processes=acc.num_processes,
        workers={res: loader_workers(cfg.data.num_workers, res) for res in trained},
        data_root=data_root, num_images=num_images, data_resolutions=data_resolutions, model=cfg.model.name,
        parameters=(sum(p.numel() for p in trainer.G.parameters()), sum(p.numel() for p in trainer.D.parameters())),
        schedule=report.schedule_text(schedule, start_images=state.images_seen, end_images=trainer.end_images,
                                      stop=f"train.max_steps {t.max_steps}" if at_steps else "train.total_kimg"),
        estimate_s=trainer.estimate(), probe=trainer.eta.probe,
    )


def _final_swd(cfg: Config, acc: Accelerator, trainer: Trainer, data_root: str) -> str | None:
    """The summary's swd line, on every process (they evaluate together): the final EMA
    generator's SWD against the data's real-vs-real floor, logged as metric_source "final"; or why
    there is none. None when train.final_swd is off."""
    if not cfg.train.final_swd:
        return None
    if trainer.stop_reason not in FINISHED:
        return f"not computed: the run was interrupted ({trainer.stop_reason})"
    res = trainer.resolution
    if res < SWD_MIN_RESOLUTION:
        return f"not computed: SWD needs {SWD_MIN_RESOLUTION}² or more, the run ended at {res}²"
    if trainer.steps_trained == 0:  # resumed after it had finished: what was recorded then
        if acc.is_main_process:
            rows = [r for r in read_metrics(trainer.run_dir.metrics)
                    if r.get("metric_source") == "final" and r.get("step") == trainer.state.step and "swd_mean" in r]
            if rows:
                return report.swd_text(rows[-1], res, rows[-1].get("num_images", 0), None)
        return (f"not recorded for this checkpoint: python pipelines/evaluate.py --checkpoint "
                f"{trainer.last_checkpoint} --metric swd")
    num = min(cfg.train.metrics_num_images, load_manifest(data_root)["num_images"])
    if acc.is_main_process:
        print(f"final swd: {num} images at {res}² (train.final_swd)", flush=True)
    started = time.perf_counter()
    evaluator = Evaluator(data_root, ["swd"], num_images=num, device=acc.device, rank=acc.process_index,
                          world_size=acc.num_processes, gather=acc.gather, swd_floor=True,
                          swd_dirs=FINAL_SWD_DIRS, swd_repeats=FINAL_SWD_REPEATS)
    record = trainer.evaluate(evaluator, source="final")
    if record is None or "swd_mean" not in record:
        return f"failed: {record.get('metric_error') if record else 'no SWD at this resolution'}"
    return report.swd_text(record, res, num, time.perf_counter() - started)


def _summary(run: RunDir, trainer: Trainer, swd: str | None, plots: list[Path]) -> list[str]:
    ckpt = trainer.last_checkpoint
    if trainer.stop_reason in FINISHED and ckpt is not None:
        next_command = f"python pipelines/generate.py --checkpoint {ckpt} --out grid.png --num 16 --seed 0"
    else:
        next_command = f"continue it: the same command with --run-dir {run.root} --resume auto"
    return report.summary_lines(
        trained_s=trainer.trained_s, estimate_s=trainer.initial_estimate,
        checkpoint=str(ckpt) if ckpt is not None else None, swd=swd, samples=str(run.samples),
        plots=str(plots[0].parent) if plots else None, next_command=next_command,
    )
