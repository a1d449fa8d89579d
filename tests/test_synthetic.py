"""The built-in synthetic set: deterministic, varied, structured and clean at every resolution."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.synthetic import render_synthetic


def _arr(index: int, res: int, seed: int = 0) -> np.ndarray:
    return np.asarray(render_synthetic(index, res, seed), dtype=np.float64)


@pytest.mark.parametrize("res", [4, 8, 32, 128])
def test_rgb_at_requested_resolution(res):
    im = render_synthetic(3, res, 0)
    assert im.mode == "RGB"
    assert im.size == (res, res)


def test_deterministic_for_index_and_seed():
    a = render_synthetic(5, 32, 7).tobytes()
    assert render_synthetic(5, 32, 7).tobytes() == a
    assert render_synthetic(6, 32, 7).tobytes() != a
    assert render_synthetic(5, 32, 8).tobytes() != a


def test_images_are_all_different_and_varied():
    images = np.stack([_arr(i, 32) for i in range(64)])
    flat = images.reshape(64, -1)
    # Every pair differs clearly, not just by a few pixels of noise.
    dists = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert dists[~np.eye(64, dtype=bool)].min() > 3.0
    # Several background modes: the mean colours of the images spread widely.
    assert images.mean(axis=(1, 2)).std(axis=0).min() > 15.0


def test_has_shapes_on_a_smooth_background():
    img = _arr(0, 64)
    # Smooth background: most neighbouring pixels differ by little ...
    step = np.abs(np.diff(img, axis=1)).max(-1)
    assert np.median(step) < 4
    # ... and a shape gives a few sharp edges.
    assert (step > 40).sum() >= 8


def test_low_resolution_is_a_clean_downsample_of_high_resolution():
    # Antialiasing: the 32x32 render matches the 256x256 render box-averaged to 32x32, so
    # edges are partial-coverage blends rather than jagged steps.
    for index in range(8):
        hi = _arr(index, 256).reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))
        lo = _arr(index, 32)
        diff = np.abs(hi - lo)
        assert diff.mean() < 1.5
        assert (diff.max(-1) > 40).mean() < 0.01
