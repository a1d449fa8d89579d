"""The progressive schedule as pure functions of images seen."""

from __future__ import annotations

import math

import pytest

from gan_hr.config import ScheduleConfig
from gan_hr.schedule import Schedule


@pytest.fixture
def schedule() -> Schedule:
    return Schedule(ScheduleConfig(start_res=4, max_res=32, fade_kimg=2, stable_kimg=1, batch_size=16,
                                   batch_by_res={32: 8}, lr=0.001, lr_by_res={16: 0.002}))


def test_phases_layout(schedule):
    assert schedule.resolutions == [4, 8, 16, 32]
    starts = [p.start_images for p in schedule.phases]
    # 4² stable 1k; then each resolution fades 2k and trains stable 1k.
    assert starts == [0, 1000, 4000, 7000]
    assert schedule.phases[0].fade_images == 0
    assert math.isinf(schedule.phases[-1].length_images)


@pytest.mark.parametrize("images, res, alpha", [
    (0, 4, 1.0),
    (999, 4, 1.0),
    (1000, 8, 0.0),
    (1500, 8, 0.25),
    (2999, 8, 0.9995),
    (3000, 8, 1.0),
    (3999, 8, 1.0),
    (4000, 16, 0.0),
    (5000, 16, 0.5),
    (8000, 32, 0.5),
    (10**9, 32, 1.0),
])
def test_resolution_and_alpha(schedule, images, res, alpha):
    assert schedule.resolution(images) == res
    assert schedule.alpha(images) == pytest.approx(alpha)


def test_batch_and_lr_per_resolution(schedule):
    assert [schedule.batch_size(r) for r in schedule.resolutions] == [16, 16, 16, 8]
    assert [schedule.lr(r) for r in schedule.resolutions] == [0.001, 0.001, 0.002, 0.001]


def test_single_resolution_has_no_fade():
    s = Schedule(ScheduleConfig(start_res=64, max_res=64, fade_kimg=0, stable_kimg=0))
    assert s.resolutions == [64]
    assert s.alpha(0) == 1.0 and s.resolution(123456) == 64


def test_paper_schedule_for_celebahq():
    s = Schedule(ScheduleConfig(start_res=8, max_res=1024, fade_kimg=600, stable_kimg=600))
    # StyleGAN: 600 kimg at 8², then 1200 kimg per resolution; 1024² starts fading at 7800 kimg.
    assert s.phase_at(7_800_000).resolution == 1024
    assert s.alpha(8_100_000) == pytest.approx(0.5)
    assert s.resolution(7_799_999) == 512
