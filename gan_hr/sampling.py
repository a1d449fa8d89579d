"""Sample grids and other image outputs of a generator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] as a saved PNG holds them: float in [-1, 1] is mapped to [0, 255],
    rounded and clipped; uint8 passes through. The metrics quantise through this too, so they
    score exactly the pixel values `save_grid` and generate.py write."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [N, 3, H, W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0.0, 255.0).to(torch.uint8)


# Grids are for the eye: tiles narrower than this are enlarged by a whole factor, nearest
# neighbour, so 4² and 8² samples can be seen (4 px -> 32 px). Metrics never read grids (they
# take generated tensors, or generate.py's one PNG per sample, which keeps its resolution).
MIN_TILE = 32


def _tile(tiles: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """Tiles [N, C, H, W] as one image [C, rows * (H + p) + p, nrow * (W + p) + p] on black, row by
    row; one tile alone is returned as it is. The layout of torchvision's make_grid, whose import
    would load all of torchvision (see gan_hr/image_ops.py)."""
    if tiles.shape[0] == 1:
        return tiles[0]
    n, channels, h, w = tiles.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = tiles.new_zeros(channels, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for k, tile in enumerate(tiles):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = tile
    return grid


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int | None = None,
              min_tile: int = MIN_TILE) -> np.ndarray:
    """Write images [N, 3, H, W] (float in [-1, 1], or uint8) as one PNG grid (square-ish), each
    tile enlarged to at least `min_tile` pixels wide; returns the grid as an HWC uint8 array,
    for trackers."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    tiles = to_uint8(images.cpu())
    scale = max(1, math.ceil(min_tile / tiles.shape[-1]))
    if scale > 1:
        tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    array = _tile(tiles, nrow).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


# --------------------------------------------------------------------------- latents


def latents_from_seeds(seeds: Sequence[int], latent_dim: int) -> torch.Tensor:
    """One z per seed [len(seeds), latent_dim], each from its own generator: sample `seed` is the
    same image whatever else is drawn with it, and the global RNG is left alone."""
    return torch.stack([torch.randn(latent_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation along the last dim: the path Gaussian z actually lives near."""
    a_n = a / a.norm(dim=-1, keepdim=True)
    b_n = b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    so = torch.sin(omega)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    # Nearly parallel vectors: sin(omega) -> 0, where lerp is the limit.
    lerped = torch.lerp(a, b, t)
    safe = so.abs() > 1e-6
    so = torch.where(safe, so, torch.ones_like(so))
    slerped = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / so
    return torch.where(safe, slerped, lerped)


def interpolate_latents(z0: torch.Tensor, z1: torch.Tensor, steps: int, *, spherical: bool = True) -> torch.Tensor:
    """`steps` latents from z0 to z1 inclusive ([steps, dim]); slerp by default, else lerp."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype)[:, None]
    return slerp(z0[None], z1[None], t) if spherical else torch.lerp(z0[None], z1[None], t)


# --------------------------------------------------------------------------- StyleGAN grids
# These take a StyleGANGenerator and go through `mapping` / `synthesis` directly, so no
# training-mode behaviour (style mixing, w_avg updates) can leak into samples.


def _device(G: nn.Module) -> torch.device:
    return next(G.parameters()).device


@torch.no_grad()
def _synthesize(
    G: nn.Module, ws: torch.Tensor, resolution: int, alpha: float, noise_mode: str, batch_size: int
) -> torch.Tensor:
    """ws [N, L, w_dim] -> images [N, 3, R, R] on the CPU, in chunks to bound memory."""
    outs = [G.synthesis(chunk, resolution, alpha, noise_mode=noise_mode).float().cpu()
            for chunk in ws.split(batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def _ws(G: nn.Module, z: torch.Tensor, psi: float, cutoff: int | None,
        labels: torch.Tensor | None = None) -> torch.Tensor:
    """Broadcast ws of latents z (with label vectors [N, A] for a conditional G), truncated."""
    labels = labels.to(_device(G)) if labels is not None else None
    w = G.mapping(z.to(_device(G)), labels)
    ws = w[:, None].expand(-1, G.num_ws, -1)
    return G.truncate(ws, psi, cutoff, labels) if psi != 1.0 else ws


def style_mixing_grid(
    G: nn.Module,
    col_z: torch.Tensor,
    row_z: torch.Tensor,
    layers: Sequence[int],
    resolution: int,
    alpha: float = 1.0,
    *,
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    col_labels: torch.Tensor | None = None,
    row_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's figure 3: images [(R + 1) * (C + 1), 3, res, res], row-major, for
    `save_grid(images, path, nrow=C + 1)`.

    The top row shows the column sources A (`col_z`), the left column the row sources B
    (`row_z`), the corner is blank (black). Cell (i, j) takes the styles of A_j except on
    `layers` (indices into the ws, e.g. range(0, 4) for the coarse 4²-8² styles), which come
    from B_i.
    """
    ws_a = _ws(G, col_z, truncation_psi, truncation_cutoff, col_labels)
    ws_b = _ws(G, row_z, truncation_psi, truncation_cutoff, row_labels)
    mask = torch.zeros(G.num_ws, dtype=torch.bool, device=ws_a.device)
    mask[list(layers)] = True
    rows, cols = ws_b.shape[0], ws_a.shape[0]
    mixed = torch.where(mask[None, None, :, None], ws_b[:, None], ws_a[None]).reshape(rows * cols, G.num_ws, -1)
    images_a, images_b, cells = (
        _synthesize(G, ws, resolution, alpha, noise_mode, batch_size) for ws in (ws_a, ws_b, mixed)
    )
    corner = torch.full_like(images_a[:1], -1.0)
    grid_rows = [torch.cat([corner, images_a])]
    for i in range(rows):
        grid_rows.append(torch.cat([images_b[i : i + 1], cells[i * cols : (i + 1) * cols]]))
    return torch.cat(grid_rows)


def interpolate_w(
    G: nn.Module,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int,
    resolution: int,
    alpha: float = 1.0,
    *,
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images [steps, 3, res, res] along the straight line from w(z0) to w(z1) (W is where
    StyleGAN's interpolations are smooth: the paper's perceptual path length lerps in W); a
    conditional G takes the label vectors [2, A] of the two ends."""
    ws = _ws(G, torch.stack([z0, z1]), truncation_psi, truncation_cutoff, labels)
    t = torch.linspace(0.0, 1.0, steps, device=ws.device, dtype=ws.dtype)[:, None, None]
    return _synthesize(G, torch.lerp(ws[0:1], ws[1:2], t), resolution, alpha, noise_mode, batch_size)


@torch.no_grad()
def truncation_grid(
    G: nn.Module,
    z: torch.Tensor,
    psis: Sequence[float],
    resolution: int,
    alpha: float = 1.0,
    *,
    truncation_cutoff: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images [len(z) * len(psis), 3, res, res]: one row per z, one column per psi
    (for `save_grid(images, path, nrow=len(psis))`); a conditional G takes label vectors [N, A]."""
    labels = labels.to(_device(G)) if labels is not None else None
    w = G.mapping(z.to(_device(G)), labels)
    ws = w[:, None].expand(-1, G.num_ws, -1)
    rows = torch.stack([G.truncate(ws, float(psi), truncation_cutoff, labels) for psi in psis], dim=1)
    return _synthesize(G, rows.reshape(-1, G.num_ws, ws.shape[-1]), resolution, alpha, noise_mode, batch_size)
