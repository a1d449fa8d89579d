"""Sampling helpers: per-seed latents, slerp, and the StyleGAN grids (style mixing, W
interpolation, truncation) on a tiny generator."""

from __future__ import annotations

import pytest
import torch

from gan_hr.config import ModelConfig
from gan_hr.models.stylegan import StyleGANGenerator
from gan_hr.nn.style import NoiseInjection
from gan_hr.sampling import (
    interpolate_latents,
    interpolate_w,
    latents_from_seeds,
    slerp,
    style_mixing_grid,
    to_uint8,
    truncation_grid,
)

DIM = 16
RES = 8


@pytest.fixture(scope="module")
def G() -> StyleGANGenerator:
    torch.manual_seed(0)
    cfg = ModelConfig(name="stylegan", latent_dim=DIM, w_dim=DIM, channel_base=64, channel_max=16,
                      mapping_layers=2, style_mixing_prob=1.0)
    g = StyleGANGenerator(cfg, RES)
    with torch.no_grad():
        g.w_avg.normal_()
        for m in g.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(0.3)
    # Left in training mode on purpose: the helpers must not mix styles or move w_avg.
    return g.train()


def reference(G: StyleGANGenerator, z: torch.Tensor, **kwargs) -> torch.Tensor:
    G.eval()
    try:
        with torch.no_grad():
            return G(z, RES, noise_mode="const", **kwargs)
    finally:
        G.train()


def test_latents_from_seeds_are_per_seed_and_leave_the_global_rng():
    state = torch.get_rng_state()
    a = latents_from_seeds([3, 7, 11], DIM)
    b = latents_from_seeds([11, 3], DIM)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (3, DIM)
    torch.testing.assert_close(a[0], b[1], rtol=0, atol=0)
    torch.testing.assert_close(a[2], b[0], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])


def test_slerp_and_latent_paths():
    a, b = torch.randn(DIM), torch.randn(DIM)
    path = interpolate_latents(a, b, 5)
    assert path.shape == (5, DIM)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    # Between unit vectors slerp stays on the sphere (lerp would cut inside it).
    ua, ub = a / a.norm(), b / b.norm()
    mid = slerp(ua, ub, 0.5)
    torch.testing.assert_close(mid.norm(), torch.tensor(1.0))
    assert torch.lerp(ua, ub, 0.5).norm() < 0.99
    # Parallel vectors fall back to lerp instead of dividing by sin(0).
    torch.testing.assert_close(slerp(ua, 2 * ua, 0.5), 1.5 * ua)
    torch.testing.assert_close(interpolate_latents(a, b, 3, spherical=False)[1], (a + b) / 2)
    with pytest.raises(ValueError):
        interpolate_latents(a, b, 1)


def test_style_mixing_grid_layout_and_sources(G):
    w_avg = G.w_avg.clone()
    col_z, row_z = torch.randn(3, DIM), torch.randn(2, DIM)
    grid = style_mixing_grid(G, col_z, row_z, range(0, 2), RES)
    assert grid.shape == (3 * 4, 3, RES, RES)
    cols, rows = reference(G, col_z), reference(G, row_z)
    torch.testing.assert_close(grid[1:4], cols)
    torch.testing.assert_close(grid[[4, 8]], rows)
    assert torch.all(grid[0] == -1)
    cells = grid.reshape(3, 4, 3, RES, RES)[1:, 1:]
    for i in range(2):
        for j in range(3):
            assert not torch.allclose(cells[i, j], cols[j]) and not torch.allclose(cells[i, j], rows[i])
    # Every layer from B gives B; none gives A.
    all_b = style_mixing_grid(G, col_z, row_z, range(G.num_ws), RES).reshape(3, 4, 3, RES, RES)
    torch.testing.assert_close(all_b[1:, 1:], rows[:, None].expand(-1, 3, -1, -1, -1))
    none_b = style_mixing_grid(G, col_z, row_z, [], RES).reshape(3, 4, 3, RES, RES)
    torch.testing.assert_close(none_b[1:, 1:], cols[None].expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(G.w_avg, w_avg, rtol=0, atol=0)


def test_interpolate_w_hits_both_end_points(G):
    z = torch.randn(2, DIM)
    images = interpolate_w(G, z[0], z[1], 4, RES, truncation_psi=0.7, batch_size=3)
    assert images.shape == (4, 3, RES, RES)
    ends = reference(G, z, truncation_psi=0.7)
    torch.testing.assert_close(images[[0, -1]], ends)
    assert not torch.allclose(images[1], images[0])


def test_truncation_grid_rows_and_columns(G):
    z = torch.randn(2, DIM)
    images = truncation_grid(G, z, [1.0, 0.5, 0.0], RES, truncation_cutoff=0).reshape(2, 3, 3, RES, RES)
    torch.testing.assert_close(images[:, 0], reference(G, z))
    torch.testing.assert_close(images[:, 1], reference(G, z, truncation_psi=0.5, truncation_cutoff=0))
    torch.testing.assert_close(images[0, 2], images[1, 2])


def test_save_grid_enlarges_small_tiles_for_the_eye(tmp_path):
    import numpy as np
    from PIL import Image

    from gan_hr.sampling import save_grid

    images = torch.rand(4, 3, 4, 4) * 2 - 1
    grid = save_grid(images, tmp_path / "g.png")
    # 2x2 tiles of 4² shown 8x (nearest neighbour: every 8x8 block is one source pixel), 2-pixel padding.
    assert grid.shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
    tile = grid[2:34, 2:34]
    pixels = to_uint8(images[:1])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(tile, pixels.repeat(8, axis=0).repeat(8, axis=1))
    # 32² and larger are written as they are; min_tile=0 keeps any size.
    assert save_grid(torch.zeros(2, 3, 32, 32), tmp_path / "h.png").shape == (36, 70, 3)
    assert save_grid(images, tmp_path / "i.png", min_tile=0).shape == (2 * 6 + 2, 2 * 6 + 2, 3)


@pytest.mark.parametrize("count, nrow", [(1, 1), (2, 2), (5, 3), (7, 8), (16, 4)])
def test_save_grid_lays_tiles_out_as_torchvision_make_grid(tmp_path, count, nrow):
    from torchvision.utils import make_grid

    from gan_hr.sampling import save_grid

    images = torch.rand(count, 3, 32, 32) * 2 - 1
    expected = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=0).permute(1, 2, 0).numpy()
    assert (save_grid(images, tmp_path / "g.png", nrow=nrow) == expected).all()
