"""The training loop on Accelerate: D and G steps, growth, EMA, checkpoints, samples, logging.

Accelerate provides the process group, the device and autocast; gradients are averaged by hand
(see grad_sync.py). Everything that decides what happens next (resolution, alpha, batch, lr,
when to checkpoint) is a function of images seen, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math
import resource
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from gan_hr.checkpoint import Checkpoint, prune_checkpoints, write_checkpoint
from gan_hr.config import Config
from gan_hr.data import ShardStream, load_manifest, loader_workers, make_loader, resolution_shards, to_float
from gan_hr.evaluation import Evaluator
from gan_hr.labels import grid_labels, label_vectors, num_labels
from gan_hr.losses import discriminator_loss, generator_loss
from gan_hr.models import build_discriminator, build_generator
from gan_hr.nn.spectral import update_spectral_norms
from gan_hr.sampling import save_grid
from gan_hr.schedule import Phase, Schedule
from gan_hr.training.compile import compile_regions, eager
from gan_hr.training.ema import ema_beta, update_ema
from gan_hr.training.eta import Eta, end_images, probe_speeds
from gan_hr.training.optim import build_adam
from gan_hr.training.grad_sync import average_buffers, max_over_ranks
from gan_hr.training.guard import FINISHED, StopGuard, apply_gradients
from gan_hr.training.report import rate
from gan_hr.training.run_dir import MetricsLog, RunDir
from gan_hr.training.sync_batchnorm import convert_sync_batchnorm
from gan_hr.training.tracking import wandb_keys


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good state was checkpointed."""


@dataclass
class TrainState:
    """Where the run is; JSON-able, saved in every checkpoint's meta.json."""

    step: int = 0
    images_seen: int = 0
    phase_index: int = 0
    # Batches this rank has taken from the current phase's data stream (its resume position).
    batches_in_phase: int = 0
    nan_streak: int = 0
    nan_skipped: int = 0
    wandb_run_id: str | None = None

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    @classmethod
    def from_saved(cls, state: dict[str, Any]) -> TrainState:
        """A checkpoint's state; keys that older versions wrote and that mean nothing now are dropped."""
        return cls(**{k: v for k, v in state.items() if k not in RETIRED_STATE_KEYS})


# The loader's worker count, stored until the data order stopped depending on it.
RETIRED_STATE_KEYS = ("loader_workers",)


def _crossed(before: int, after: int, interval_kimg: float) -> bool:
    interval = interval_kimg * 1000
    return math.floor(before / interval) != math.floor(after / interval)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: RunDir,
        accelerator: Accelerator,
        data_root: str,
        *,
        resume: Checkpoint | None = None,
        init: Checkpoint | None = None,
        init_optimizers: bool = False,
        wandb_run_id: str | None = None,
        evaluator: Evaluator | None = None,
        lagged_flags: bool = True,
    ) -> None:
        """`lagged_flags=False` makes the host read the step's stop and health flags at once, a
        sync per step (see guard.py); only benchmarks/gpu_check.py turns it off, to measure that."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.acc = accelerator
        self.data_root = data_root
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.schedule = Schedule(cfg.schedule)
        self.log = MetricsLog(run_dir.metrics)
        self.evaluator = evaluator

        max_res = cfg.schedule.max_res
        # Same init on every rank; per-rank randomness (latents, noise) comes after this.
        torch.manual_seed(cfg.train.seed)
        self.G = build_generator(cfg.model, max_res)
        self.D = build_discriminator(cfg.model, max_res)
        if self._sync_batchnorm():  # a no-op for models without batch norm
            self.G = convert_sync_batchnorm(self.G)
            self.D = convert_sync_batchnorm(self.D)
        self.G.to(self.device).train()
        self.D.to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if cfg.train.compile:  # after the EMA copy: samples and metrics run G_ema eagerly
            compile_regions(self.G, cfg.train.compile_backend)
            compile_regions(self.D, cfg.train.compile_backend)

        self.opt_G = build_adam(self.cfg, self.G)
        self.opt_D = build_adam(self.cfg, self.D)
        fp16 = cfg.train.mixed_precision == "fp16"
        # One scaler per network: their overflow histories differ (Accelerate shares one).
        self.scaler_G = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(self.device.type, enabled=fp16)

        # Fixed latents for sample grids, identical across runs and resumes.
        latents = torch.Generator().manual_seed(cfg.train.seed + 12345)
        self.sample_z = torch.randn(cfg.train.sample_grid, cfg.model.latent_dim, generator=latents)
        # Conditional: the grid's labels (every class in turn), fixed like its latents.
        self.sample_labels = grid_labels(cfg.train.sample_grid, cfg.model) if cfg.model.conditional else None

        self.state = TrainState(wandb_run_id=wandb_run_id)
        # What the last step trained: a phase-end checkpoint describes the phase just finished.
        self._res, self._alpha = cfg.schedule.start_res, 1.0
        if resume is not None:
            self._restore(resume)
        else:
            if init is not None:
                self._warm_start(init, init_optimizers)
            torch.manual_seed(cfg.train.seed * 1000 + self.rank + 1)
        t = cfg.train
        self.guard = StopGuard(self.device, nan_tolerance=t.nan_tolerance, max_steps=t.max_steps,
                               total_images=round(t.total_kimg * 1000), nan_streak=self.state.nan_streak,
                               nan_skipped=self.state.nan_skipped, lagged=lagged_flags)
        # Where the run will stop, in images, and the time left until then (see eta.py).
        self.end_images = end_images(self.schedule, step=self.state.step, images_seen=self.state.images_seen,
                                     max_steps=t.max_steps, total_images=self.guard.total_images)
        self.eta = Eta(self.schedule)
        self.initial_estimate: float | None = None
        # What train() did, for the run's summary.
        self.stop_reason: str | None = None
        self.steps_trained = 0
        self.trained_s = 0.0
        self.last_checkpoint: Path | None = resume.path if resume is not None else None
        self._images_per_s: float | None = None
        self._totals: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._window_images = 0
        self._window_start = time.perf_counter()
        self._data_wait = 0.0
        self._corrupt = 0

    @property
    def resolution(self) -> int:
        """The resolution the last step trained (or the checkpoint resumed from had reached)."""
        return self._res

    # ------------------------------------------------------------------ setup helpers

    def _sync_batchnorm(self) -> bool:
        mode = self.cfg.model.sync_batchnorm
        return mode == "on" or (mode == "auto" and self.world > 1)

    def _reset_optimizers(self) -> None:
        self.opt_G = build_adam(self.cfg, self.G)
        self.opt_D = build_adam(self.cfg, self.D)

    def _restore(self, ckpt: Checkpoint) -> None:
        self.G.load_state_dict(ckpt.models["G"])
        self.D.load_state_dict(ckpt.models["D"])
        self.G_ema.load_state_dict(ckpt.models["G_ema"])
        self.opt_G.load_state_dict(ckpt.optim["G"])
        self.opt_D.load_state_dict(ckpt.optim["D"])
        self.scaler_G.load_state_dict(ckpt.optim["scaler_G"])
        self.scaler_D.load_state_dict(ckpt.optim["scaler_D"])
        self.state = TrainState.from_saved(ckpt.meta["state"])
        self._res, self._alpha = int(ckpt.meta["resolution"]), float(ckpt.meta["alpha"])
        torch.set_rng_state(ckpt.rng["torch"])
        if self.device.type == "cuda" and "cuda" in ckpt.rng:
            torch.cuda.set_rng_state(ckpt.rng["cuda"], self.device)

    def _warm_start(self, ckpt: Checkpoint, with_optimizers: bool) -> None:
        """A new run from another run's checkpoint: the blocks it has load, new ones (a higher
        max_res) keep their fresh init; shapes were checked by `resume.select_init`."""
        for name, net in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            net.load_state_dict(ckpt.models[name], strict=False)
        if with_optimizers:  # only offered when the networks are the same (select_init)
            self.opt_G.load_state_dict(ckpt.optim["G"])
            self.opt_D.load_state_dict(ckpt.optim["D"])
            self.scaler_G.load_state_dict(ckpt.optim["scaler_G"])
            self.scaler_D.load_state_dict(ckpt.optim["scaler_D"])

    def resolutions_ahead(self) -> list[int]:
        """The resolutions still to train, from the current one to the one the run ends at."""
        if self.state.images_seen >= self.end_images:
            return []
        first = self.schedule.phase_at(self.state.images_seen).index
        last = self.schedule.phase_at(self.end_images - 1).index
        return [p.resolution for p in self.schedule.phases[first:last + 1]]

    def estimate(self) -> float | None:
        """Seconds the run has left, before any step: times the resolutions still to train
        (`eta.probe_speeds`, which leaves the run's state alone). None when nothing is left."""
        resolutions = self.resolutions_ahead()
        if not resolutions:
            return None
        self.eta = Eta(self.schedule, probe_speeds(self.cfg, self.schedule, resolutions, device=self.device,
                                                   world_size=self.world, autocast=self.acc.autocast))
        self.initial_estimate = self.eta.remaining(self.state.images_seen, self.end_images)
        return self.initial_estimate

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainState:
        """Train until max_steps, total_kimg, a stop signal or divergence, and checkpoint then; a data
        or storage fault (DataError, CheckpointWriteError) ends it with the earlier checkpoints.
        A run resumed after it had finished trains nothing."""
        t = self.cfg.train
        started = time.perf_counter()
        done = self.guard.why_stop(self.state.step, self.state.images_seen)
        if done in FINISHED:
            self.guard.close()
            self.stop_reason = done
            if self.acc.is_main_process:
                print(f"already finished ({done}) at step {self.state.step}, {self.state.kimg:.1f} kimg: "
                      "nothing to train", flush=True)
            return self.state
        bar = self._progress_bar()
        batches: Iterator[dict[str, Any]] | None = None
        loader = None
        reason = None
        if self.state.step == 0:
            self._write_samples(self.schedule.phase_at(0))
        try:
            while True:
                phase = self.schedule.phase_at(self.state.images_seen)
                if phase.index != self.state.phase_index:
                    self._enter_phase(phase)
                    batches = None
                if batches is None:
                    self._write_reals(phase.resolution)
                    # DataLoader draws its base seed from the global RNG: keep that draw out of
                    # the training stream, or a resumed run would be one draw off.
                    with torch.random.fork_rng(devices=[]):
                        loader = self._loader(phase)
                        batches = iter(loader)
                before = self.state.images_seen
                self.train_step(phase, *self._next_batch(batches))
                self.steps_trained += 1
                bar.set_postfix_str(self._bar_text(phase), refresh=False)
                bar.update(self.state.step - bar.n if t.max_steps else self.state.images_seen - before)

                reason = self.guard.why_stop(self.state.step, self.state.images_seen)
                phase_done = self.schedule.phase_at(self.state.images_seen).index != phase.index
                if self.state.step % t.log_every_steps == 0 or phase_done or reason:
                    self._log_window(phase, bar)
                if phase_done or _crossed(before, self.state.images_seen, t.sample_every_kimg) or reason:
                    self._write_samples(phase)
                if self.evaluator and (_crossed(before, self.state.images_seen, t.metrics_every_kimg) or reason):
                    self._evaluate()
                if phase_done:
                    self._checkpoint("phase_end")
                elif reason or _crossed(before, self.state.images_seen, t.checkpoint_every_kimg):
                    self._checkpoint("final" if reason else "periodic")
                if reason:
                    break
        finally:
            bar.close()
            self.guard.close()
            del batches, loader
            self.trained_s = time.perf_counter() - started
        self.stop_reason = reason
        if reason == "diverged":
            raise TrainingDiverged(
                f"{self.guard.nan_streak} non-finite steps in a row at step {self.state.step}; "
                f"the last good state is in {self.run_dir.checkpoints}")
        if self.acc.is_main_process:
            tqdm.write(f"stopped ({reason}) at step {self.state.step}, {self.state.kimg:.1f} kimg")
        return self.state

    def _enter_phase(self, phase: Phase) -> None:
        """A new resolution starts: the official ProGAN resets Adam's moments here."""
        if self.cfg.train.reset_optimizer_on_grow:
            self._reset_optimizers()
        self.state.phase_index = phase.index
        self.state.batches_in_phase = 0

    def _loader(self, phase: Phase):
        per_rank = self.schedule.batch_size(phase.resolution) // self.world
        return make_loader(
            self.data_root,
            phase.resolution,
            per_rank,
            seed=self.cfg.train.seed,
            rank=self.rank,
            world_size=self.world,
            num_workers=loader_workers(self.cfg.data.num_workers, phase.resolution),
            start_batch=self.state.batches_in_phase,
            mirror=self.cfg.data.mirror,
            pin_memory=self.device.type == "cuda",
            labels=self.cfg.model.conditional,
        )

    # ------------------------------------------------------------------ one step

    def _next_batch(self, batches: Iterator[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch's images, and its labels when the model is conditional."""
        wait_start = time.perf_counter()
        batch = next(batches)
        self._data_wait += time.perf_counter() - wait_start
        self._corrupt += int(batch.get("skipped", 0))
        return batch["image"], batch.get("label")

    def train_step(self, phase: Phase, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """One training step (`_update`: a D step and a G step for a GAN) on a uint8 batch
        [n, 3, R, R] of this rank's reals (with their labels [n] or [n, A] when the model is
        conditional), then EMA.

        Conditional: the fakes of both steps take the real batch's labels. They are the data's
        label distribution as it is, attribute correlations included (drawing from the manifest's
        counts would make attributes independent), D sees the same labels on both sides, and the
        labels come with the data's position: resume stays exact and every rank uses its own share,
        with no extra draw from the RNG that z comes from."""
        cfg = self.cfg
        res = self._res = phase.resolution
        alpha = self._alpha = phase.alpha(self.state.images_seen)
        global_batch = self.schedule.batch_size(res)
        lr = self.schedule.lr(res)
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = lr
        real = to_float(images.to(self.device, non_blocking=True))
        ok, healthy, stop_avg, stats = self._update(real, res, alpha, labels)
        average_buffers(self.G)
        average_buffers(self.D)

        # Everything below stays on the device: a skipped step leaves G_ema as it was (beta 1),
        # and the guard hears of it, and of a stop request, one step later.
        beta = ema_beta(global_batch, cfg.train.ema_halflife_kimg, self.state.images_seen, cfg.train.ema_rampup)
        update_ema(self.G_ema, self.G, torch.where(ok, beta, 1.0))
        self.guard.record(healthy, stop_avg)

        self.state.step += 1
        self.state.images_seen += global_batch
        self.state.batches_in_phase += 1
        self._accumulate(stats)
        self._window_steps += 1
        self._window_images += global_batch

    def _update(self, real: torch.Tensor, res: int, alpha: float, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One D step and one G step on float reals. Returns device tensors: whether both were
        applied, whether both were healthy, the averaged stop flag; and the named statistics."""
        cfg = self.cfg
        n = real.shape[0]
        y = None
        if labels is not None:
            y = label_vectors(labels, cfg.model.label_kind, num_labels(cfg.model)).to(self.device)
        cond = {"labels": y} if y is not None else {}

        def D(x: torch.Tensor) -> torch.Tensor:
            return self.D(x, res, alpha, **cond)

        def D_penalty(x: torch.Tensor) -> torch.Tensor:
            with eager():
                return self.D(x, res, alpha, **cond)

        # Discriminator step. Spectral norm (if on) advances one power iteration here, once per
        # step, so every D forward of the step (the penalty's and the G step's too) uses the same
        # estimate; it is a function of D's weights, the same on every rank (gan_hr/nn/spectral.py).
        if cfg.model.d_spectral_norm:
            update_spectral_norms(self.D)
        self.D.requires_grad_(True)
        z = torch.randn(n, cfg.model.latent_dim, device=self.device)
        with torch.no_grad(), self.acc.autocast():
            fake = self.G(z, res, alpha, **cond)
        regularize = self.state.step % cfg.loss.r1_every == 0
        # The scale as a device tensor: get_scale() would read it on the host, a sync per step.
        grad_scale = self.scaler_D._get_scale_async() if self.scaler_D.is_enabled() else 1.0
        with self.acc.autocast():
            loss_d, stats_d = discriminator_loss(cfg.loss, D, real, fake.float(), regularize=regularize,
                                                 grad_scale=grad_scale,
                                                 D_penalty=D_penalty if cfg.train.compile else None)
        d_ok, d_healthy, _ = apply_gradients(loss_d, self.D, self.opt_D, self.scaler_D)

        # Generator step.
        self.D.requires_grad_(False)
        z = torch.randn(n, cfg.model.latent_dim, device=self.device)
        with self.acc.autocast():
            loss_g, stats_g = generator_loss(cfg.loss, D(self.G(z, res, alpha, **cond)))
        g_ok, g_healthy, stop_avg = apply_gradients(loss_g, self.G, self.opt_G, self.scaler_G,
                                                    flags=self.guard.stop_flag())
        return d_ok & g_ok, d_healthy & g_healthy, stop_avg, {**stats_d, **stats_g}

    # ------------------------------------------------------------------ logging, samples, checkpoints

    def _accumulate(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            value = value.detach().float()
            self._totals[key] = self._totals[key] + value if key in self._totals else value

    def _log_window(self, phase: Phase, bar: tqdm) -> None:
        """Reduce the window's statistics across ranks once, then log on the main process."""
        self.guard.sync()  # logging waits for the device anyway
        keys = sorted(self._totals)
        local = torch.stack([self._totals[k] / self._window_steps for k in keys]
                            + [torch.tensor(float(self._corrupt), device=self.device)])
        reduced = self.acc.reduce(local.to(self.device), reduction="sum") if self.world > 1 else local
        values = reduced.tolist()
        elapsed = time.perf_counter() - self._window_start
        record: dict[str, Any] = {
            "step": self.state.step,
            "kimg": round(self.state.kimg, 4),
            "resolution": phase.resolution,
            "alpha": round(self._alpha, 6),
            "phase": phase.index,
            "batch_size": self.schedule.batch_size(phase.resolution),
            "lr": self.schedule.lr(phase.resolution),
        }
        record.update({k: v / self.world for k, v in zip(keys, values[:-1])})
        record.update({
            "images_per_s": self._window_images / elapsed,
            "sec_per_kimg": elapsed / (self._window_images / 1000),
            "data_wait_frac": self._data_wait / elapsed,
            "peak_mem_mb": self._peak_memory_mb(),
            "nan_skipped": self.guard.nan_skipped,
            "corrupt_skipped": int(values[-1]),
        })
        if self.acc.is_main_process:
            self.log.append(record)
            self.acc.log(wandb_keys(record), step=self.state.step)
        self._images_per_s = record["images_per_s"]
        self.eta.measure(phase.resolution, self._window_images, elapsed)
        self._totals.clear()
        self._window_steps = self._window_images = 0
        self._data_wait = 0.0
        self._window_start = time.perf_counter()

    def _evaluate(self) -> None:
        self.evaluate(self.evaluator)

    def evaluate(self, evaluator: Evaluator, source: str = "training") -> dict[str, Any] | None:
        """Metrics of the EMA generator at what it was last trained on, logged with their kimg
        (metrics.jsonl and W&B, as `source`); None when none applies at this resolution. A failing
        metric is reported in the log and never stops training."""
        names = evaluator.metrics_at(self._res)
        if not names:
            return None
        record: dict[str, Any] = {"step": self.state.step, "kimg": round(self.state.kimg, 4),
                                  "resolution": self._res, "alpha": round(self._alpha, 6), "metric_source": source}
        if source != "training":
            record["num_images"] = evaluator.num_images
        try:
            record.update(evaluator(self.G_ema, self._res, self._alpha, metrics=names))
        except Exception as exc:  # a metric must never kill a week-long run
            record["metric_error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"metrics at step {self.state.step} failed: {record['metric_error']}", stacklevel=2)
        if self.acc.is_main_process:
            self.log.append(record)
            self.acc.log(wandb_keys(record), step=self.state.step)
        return record

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _write_samples(self, phase: Phase) -> None:
        if not self.acc.is_main_process:
            return
        alpha = phase.alpha(self.state.images_seen)
        path = self.run_dir.samples / f"step-{self.state.step:08d}-res{phase.resolution}.png"
        G = self.G_ema
        kwargs = {"noise_mode": "const"} if getattr(G, "supports_style", False) else {}
        if self.sample_labels is not None:
            kwargs["labels"] = self.sample_labels.to(self.device)
        with torch.no_grad():
            images = G(self.sample_z.to(self.device), phase.resolution, alpha, **kwargs)
        grid = save_grid(images.float().cpu(), path)
        if self.cfg.tracking.backend == "wandb":
            self.acc.get_tracker("wandb").log_images({"samples/grid": [grid]}, step=self.state.step)

    def _write_reals(self, resolution: int) -> None:
        """samples/reals-<res>.png, once per resolution: the first train.sample_grid images of
        the data's seed-0 stream (the real set evaluations start with), beside the fakes."""
        path = self.run_dir.samples / f"reals-{resolution}.png"
        if not self.acc.is_main_process or path.exists():
            return
        save_grid(self._first_reals(resolution), path)

    def _first_reals(self, resolution: int) -> torch.Tensor:
        """The first train.sample_grid images (uint8) of the data's seed-0 stream at `resolution`."""
        shards = resolution_shards(load_manifest(self.data_root), self.data_root, resolution)
        stream = ShardStream(shards, batch_size=self.cfg.train.sample_grid, resolution=resolution, seed=0, slots=1)
        return next(iter(stream))["image"]

    def _checkpoint(self, kind: str) -> None:
        self.guard.sync()  # the saved counters are this step's
        self.state.nan_streak, self.state.nan_skipped = self.guard.nan_streak, self.guard.nan_skipped
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "kind": kind,
            "step": self.state.step,
            "kimg": self.state.kimg,
            "resolution": self._res,
            "alpha": self._alpha,
            "world_size": self.world,
            "rank_checksums": self._rank_checksums(),
            "state": asdict(self.state),
            "config": self.cfg.to_dict(),
            "torch_version": torch.__version__,
        }
        path = self.last_checkpoint = write_checkpoint(
            self.run_dir.checkpoints,
            self.state.step,
            rank=self.rank,
            models={"G": _cpu_state(self.G), "D": _cpu_state(self.D), "G_ema": _cpu_state(self.G_ema)},
            optim={"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict(),
                   "scaler_G": self.scaler_G.state_dict(), "scaler_D": self.scaler_D.state_dict()},
            rng=rng,
            meta=meta,
            all_ok=self._all_ok,
        )
        if self.acc.is_main_process:
            prune_checkpoints(self.run_dir.checkpoints, self.cfg.train.keep_checkpoints, newest=path)

    def _all_ok(self, ok: bool) -> bool:
        """True when every rank says ok (an all-reduce, so also a barrier)."""
        return max_over_ranks(int(not ok), self.device) == 0

    def _rank_checksums(self) -> list[list[float]]:
        """Sums of every rank's G, D and G_ema state, gathered: identical rows mean the ranks
        are in sync (kept in meta.json for users and tests to check)."""
        local = torch.stack([
            torch.stack([t.detach().double().sum() for t in net.state_dict().values() if t.is_floating_point()]).sum()
            for net in (self.G, self.D, self.G_ema)
        ]).to(self.device)
        gathered = self.acc.gather(local.unsqueeze(0)) if self.world > 1 else local.unsqueeze(0)
        return gathered.cpu().tolist()

    def _progress_bar(self) -> tqdm:
        """Steps (with train.max_steps) or images; its eta is the schedule's (`_bar_text`), not
        tqdm's single rate, which is wrong across phases and after a resume."""
        t = self.cfg.train
        steps = t.max_steps is not None
        total, done = (t.max_steps, self.state.step) if steps else (self.guard.total_images, self.state.images_seen)
        return tqdm(total=total, initial=min(done, total), unit="step" if steps else "img", unit_scale=not steps,
                    disable=not self.acc.is_main_process, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]")

    def _bar_text(self, phase: Phase) -> str:
        """'eta 01:48, 16² α 0.46, 95 img/s': α while fading in, the last logging window's speed."""
        left = self.eta.remaining(self.state.images_seen, self.end_images)
        text = f"eta {'?' if left is None else tqdm.format_interval(left)}, {phase.resolution}²"
        if self._alpha < 1:
            text += f" α {self._alpha:.2f}"
        if self._images_per_s is not None:
            text += f", {rate(self._images_per_s)} img/s"
        return text


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict, so saving never races the next step."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

