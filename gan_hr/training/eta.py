"""How long a run has left, phase by phase.

Later resolutions are slower, so one rate for the whole run (tqdm's own remaining time) is wrong
across phases, and after a resume it counts the images the run started with as if they were
trained in this process. Here each phase's remaining images are divided by the speed of its own
resolution:

* measured: the images/s of the latest logging windows at that resolution, in this process (a
  resumed run measures afresh), each window weighing `DECAY` times less than the next, so that
  one slow window (a checkpoint, a busy machine) moves the estimate without taking it over;
* not measured yet: the timing probe's step time at that resolution plus what a real step took
  beyond its probe at the most recently measured resolution. The probe times G and D with their
  optimizer and EMA updates; the rest of a step (guard, logging, Python, waiting for data) costs
  about the same at every resolution, and at 4² it is most of the step: scaling by the ratio of
  measured to probe instead predicted the demo's later phases 3-4x too slow from its 4²
  measurement;
* nothing measured yet: the probe's speed as it is (the header's estimate).

The probe (`probe_speeds`) trains nothing of the run: it times D and G steps, with their Adam and
EMA updates, on networks built afresh from the config, inside `fork_rng`, so the run's weights,
buffers (StyleGAN's w_avg) and random stream are untouched, and resume stays bit-exact.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

from gan_hr.config import Config
from gan_hr.labels import grid_labels
from gan_hr.losses import discriminator_loss, generator_loss, vae_loss
from gan_hr.models import build_discriminator, build_generator
from gan_hr.nn.spectral import update_spectral_norms
from gan_hr.schedule import Schedule
from gan_hr.training.ema import update_ema
from gan_hr.training.optim import build_adam

# Weight of the earlier windows' images and seconds against the newest window's.
DECAY = 0.5


def end_images(schedule: Schedule, *, step: int, images_seen: int, max_steps: int | None,
               total_images: int) -> int:
    """Images seen when the run stops: the first step boundary at or past `total_images`, or
    after `max_steps` steps, whichever comes first. Steps are walked phase by phase from
    (`step`, `images_seen`), each of its phase's global batch, as the trainer takes them."""
    limit_steps = max_steps if max_steps is not None else math.inf
    while step < limit_steps and images_seen < total_images:
        phase = schedule.phase_at(images_seen)
        batch = schedule.batch_size(phase.resolution)
        steps = math.ceil((min(phase.end_images, total_images) - images_seen) / batch)
        steps = int(min(steps, limit_steps - step))
        images_seen += steps * batch
        step += steps
    return images_seen


class Eta:
    """Seconds left from a number of images seen to the run's end, at per-resolution speeds."""

    def __init__(self, schedule: Schedule, probe: Mapping[int, float] | None = None) -> None:
        self.schedule = schedule
        self.probe = dict(probe or {})  # images/s per resolution, from `probe_speeds`
        self.windows: dict[int, tuple[float, float]] = {}  # resolution -> decayed (images, seconds)
        self.latest: int | None = None  # the resolution measured last

    def measure(self, resolution: int, images: float, seconds: float) -> None:
        """A logging window at `resolution`: `images` (all processes together) in `seconds`."""
        if images > 0 and seconds > 0 and math.isfinite(seconds):
            before_images, before_seconds = self.windows.get(resolution, (0.0, 0.0))
            self.windows[resolution] = (DECAY * before_images + images, DECAY * before_seconds + seconds)
            self.latest = resolution

    def measured(self, resolution: int) -> float | None:
        """Images/s measured at `resolution` in this process, or None."""
        if resolution not in self.windows:
            return None
        images, seconds = self.windows[resolution]
        return images / seconds

    def speed(self, resolution: int) -> float | None:
        """Images/s expected at `resolution`, or None when there is nothing to go on."""
        measured = self.measured(resolution)
        if measured is not None:
            return measured
        if resolution not in self.probe:
            return None
        latest = self.latest
        if latest is None or latest not in self.probe:
            return self.probe[resolution]
        batch, batch_latest = self.schedule.batch_size(resolution), self.schedule.batch_size(latest)
        # Seconds a real step took beyond its probe (negative when the probe ran on a busier machine).
        extra = batch_latest / self.measured(latest) - batch_latest / self.probe[latest]
        step = batch / self.probe[resolution] + extra
        if step <= 0:  # a probe far off: keep its relative cost instead
            return self.probe[resolution] * self.measured(latest) / self.probe[latest]
        return batch / step

    def remaining(self, images_seen: float, end: float) -> float | None:
        """Seconds from `images_seen` to `end`: each phase's share at its resolution's speed."""
        seconds = 0.0
        for phase in self.schedule.phases:
            start, stop = max(images_seen, phase.start_images), min(end, phase.end_images)
            if stop <= start:
                continue
            speed = self.speed(phase.resolution)
            if speed is None:
                return None
            seconds += (stop - start) / speed
        return seconds


def probe_speeds(cfg: Config, schedule: Schedule, resolutions: list[int], *, device: torch.device,
                 world_size: int, autocast: Callable[[], AbstractContextManager], repeats: int = 2,
                 ) -> dict[int, float]:
    """Images/s of the whole run (all processes together) at each of `resolutions`: a D step and
    a G step, forward and backward, then both Adam steps and the EMA update, on fresh networks
    at the per-process batch, timed `repeats` times after one warm-up (the fastest counts). With
    lazy R1 (`loss.r1_every` k > 1) a step with the penalty and one without are both timed and
    weighted 1 : k - 1, as training mixes them. No data, no collective: every process may call it
    alone."""
    cuda = [device] if device.type == "cuda" else []
    speeds: dict[int, float] = {}
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        G = build_generator(cfg.model, cfg.schedule.max_res).to(device).train()
        D = build_discriminator(cfg.model, cfg.schedule.max_res).to(device).train()
        G_ema = copy.deepcopy(G).eval()
        optimizers = [build_adam(cfg, G), build_adam(cfg, D)]
        step = _PROBE_STEPS.get(cfg.model.name, _probe_step)
        for res in resolutions:
            global_batch = schedule.batch_size(res)
            n = global_batch // world_size
            real = torch.rand(n, 3, res, res, device=device) * 2 - 1

            def fastest(regularize: bool) -> float:
                times = []
                for _ in range(1 + repeats):
                    start = time.perf_counter()
                    step(cfg, G, D, real, res, autocast, regularize=regularize)
                    for opt in optimizers:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    update_ema(G_ema, G, 0.99)
                    if cuda:
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - start)
                return min(times[1:])

            every = cfg.loss.r1_every
            seconds = fastest(True) if every == 1 else (fastest(True) + (every - 1) * fastest(False)) / every
            speeds[res] = global_batch / seconds
        del G, D, G_ema, optimizers
    if cuda:
        torch.cuda.empty_cache()
    return speeds


def _probe_step(cfg: Config, G: torch.nn.Module, D: torch.nn.Module, real: torch.Tensor, res: int,
                autocast: Callable[[], AbstractContextManager], *, regularize: bool) -> None:
    """The work of a training step's D and G halves (Trainer.train_step), up to the gradients."""
    n, latent = real.shape[0], cfg.model.latent_dim
    # Conditional: any labels of the right shape cost what the real ones do.
    cond = {"labels": grid_labels(n, cfg.model).to(real.device)} if cfg.model.conditional else {}

    def score(x: torch.Tensor) -> torch.Tensor:
        return D(x, res, 1.0, **cond)

    if cfg.model.d_spectral_norm:
        update_spectral_norms(D)
    D.requires_grad_(True)
    with torch.no_grad(), autocast():
        fake = G(torch.randn(n, latent, device=real.device), res, 1.0, **cond)
    with autocast():
        loss_d, _ = discriminator_loss(cfg.loss, score, real, fake.float(), regularize=regularize)
    loss_d.backward()
    D.requires_grad_(False)  # as in training: the G step computes no gradient for D's weights
    with autocast():
        loss_g, _ = generator_loss(cfg.loss, score(G(torch.randn(n, latent, device=real.device), res, 1.0, **cond)))
    loss_g.backward()


def _probe_vae_step(cfg: Config, G: torch.nn.Module, D: torch.nn.Module, real: torch.Tensor, res: int,
                    autocast: Callable[[], AbstractContextManager], *, regularize: bool) -> None:
    """The work of a VAE's step (gan_hr.training.vae): D encodes, G decodes, one backward; it has
    no penalty, so `regularize` changes nothing."""
    with autocast():
        loss, _ = vae_loss(cfg.model.vae_beta, lambda x: D(x, res, 1.0), lambda z: G(z, res, 1.0), real)
    loss.backward()


# Models whose step is not the GANs' D and G steps (gan_hr.training.launch.TRAINERS).
_PROBE_STEPS = {"vae": _probe_vae_step}
