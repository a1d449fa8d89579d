"""The progressive-growing schedule as pure functions of images seen.

Training starts stable at `start_res`; every later resolution first fades in for `fade_kimg`,
then trains stable for `stable_kimg`; the last resolution trains until the run ends. Because
resolution, alpha, batch size and learning rate depend only on the image count, resume and
tests can ask what should happen at any point without replaying the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gan_hr.config import ScheduleConfig
from gan_hr.resolutions import resolutions_between


@dataclass(frozen=True)
class Phase:
    """The stretch of training spent at one resolution (its fade-in, then stable training)."""

    index: int
    resolution: int
    start_images: int
    fade_images: int
    # math.inf for the last resolution, which trains until the run ends.
    length_images: float

    @property
    def end_images(self) -> float:
        return self.start_images + self.length_images

    def alpha(self, images_seen: int) -> float:
        """Fade-in weight of the newest block: 0 -> 1 over the fade, then 1."""
        if self.fade_images == 0:
            return 1.0
        return min(1.0, max(0.0, (images_seen - self.start_images) / self.fade_images))


class Schedule:
    """Resolution, alpha, batch size and learning rate as functions of images seen."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        fade = round(cfg.fade_kimg * 1000)
        stable = round(cfg.stable_kimg * 1000)
        self.phases: list[Phase] = []
        start = 0
        for res in resolutions_between(cfg.start_res, cfg.max_res):
            first, last = res == cfg.start_res, res == cfg.max_res
            phase_fade = 0 if first else fade
            length = math.inf if last else phase_fade + stable
            self.phases.append(Phase(len(self.phases), res, start, phase_fade, length))
            if not last:
                start += phase_fade + stable

    @property
    def resolutions(self) -> list[int]:
        return [p.resolution for p in self.phases]

    def phase_at(self, images_seen: int) -> Phase:
        for phase in self.phases:
            if images_seen < phase.end_images:
                return phase
        return self.phases[-1]

    def resolution(self, images_seen: int) -> int:
        return self.phase_at(images_seen).resolution

    def alpha(self, images_seen: int) -> float:
        return self.phase_at(images_seen).alpha(images_seen)

    def batch_size(self, resolution: int) -> int:
        """Global minibatch (all processes together) at a resolution."""
        return self.cfg.batch_by_res.get(resolution, self.cfg.batch_size)

    def lr(self, resolution: int) -> float:
        return self.cfg.lr_by_res.get(resolution, self.cfg.lr)
