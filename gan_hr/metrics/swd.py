"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, sec. 5, app. D).

Weight-free, so it runs anywhere. What is computed, exactly:

1. Images become uint8 (float input in [-1, 1] is mapped to [0, 255], rounded and clipped, as
   generated images are when saved), then float32 pixel values.
2. Each image gets a Laplacian pyramid from full resolution down to 16x16: every level but the
   last is ``level - up(down(level))`` (a frequency band), the last is the 16x16 low-pass
   residual. ``down`` blurs with the separable 5-tap binomial [1, 4, 6, 4, 1] / 16 and keeps every
   other pixel; ``up`` inserts zeros and blurs with the same filter times 4. Borders are mirrored.
3. From each level of each image, ``num_patches`` random 7x7 neighbourhoods (fully inside the
   level) give descriptors of 7 * 7 * 3 = 147 values.
4. Per level, each set (real, fake) is normalised on its own: per colour channel, subtract the mean
   and divide by the (population) standard deviation taken over every descriptor of that set and
   all 49 positions. So a global per-channel gain or offset is invisible to SWD by design; changes
   in spatial structure or in how the channels co-vary are not.
5. The sliced Wasserstein distance projects both sets on random unit directions, sorts each
   projection and averages the absolute differences of the sorted values; this is repeated with
   fresh directions and averaged. ``compute_swd`` reports it x 1e3, the paper's unit.

Patch positions for the real and the fake stream come from generators seeded alike, so identical
inputs give exactly zero and the comparison uses common random numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gan_hr.resolutions import is_power_of_two, resolutions_between
from gan_hr.sampling import to_uint8

PATCH_SIZE = 7
MIN_RESOLUTION = 16

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor, gain: float) -> Tensor:
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(device=x.device, dtype=x.dtype) * gain
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


def _down(x: Tensor) -> Tensor:
    return _blur(x, 1.0)[:, :, ::2, ::2]


def _up(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    stuffed = x.new_zeros(n, c, 2 * h, 2 * w)
    stuffed[:, :, ::2, ::2] = x
    # Three of four samples are zeros, so the filter's gain must be 4 to keep brightness.
    return _blur(stuffed, 4.0)


def laplacian_pyramid(images: Tensor) -> list[Tensor]:
    """Band-pass levels from full resolution down to a 16x16 low-pass residual (finest first)."""
    levels = []
    current = images
    while current.shape[-1] > MIN_RESOLUTION:
        smaller = _down(current)
        levels.append(current - _up(smaller))
        current = smaller
    levels.append(current)
    return levels


def level_resolutions(resolution: int) -> list[int]:
    """Resolutions of the pyramid levels for square images of ``resolution`` (finest first)."""
    _check_resolution(resolution)
    return resolutions_between(MIN_RESOLUTION, resolution)[::-1]


def _check_resolution(resolution: int) -> None:
    if resolution < MIN_RESOLUTION or not is_power_of_two(resolution):
        raise ValueError(f"SWD needs square power-of-two images of at least {MIN_RESOLUTION}, got {resolution}")


def _patches(level: Tensor, corners: Tensor) -> Tensor:
    """Gather 7x7 neighbourhoods at ``corners`` (uniform in [0, 1), [N, P, 2]) as [N * P, C * 49]."""
    n, c, h, w = level.shape
    # float32 rounding can lift u * (h - 6) to h - 6 itself for u just below 1: clamp.
    top = (corners[..., 0] * (h - PATCH_SIZE + 1)).long().clamp_max(h - PATCH_SIZE)
    left = (corners[..., 1] * (w - PATCH_SIZE + 1)).long().clamp_max(w - PATCH_SIZE)
    offsets = torch.arange(PATCH_SIZE)
    rows = (top[:, :, None] + offsets).to(level.device)  # [N, P, 7]
    cols = (left[:, :, None] + offsets).to(level.device)
    batch = torch.arange(n, device=level.device)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[batch, rows[..., None], cols[:, :, None, :]]  # [N, P, 7, 7, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n * corners.shape[1], c * PATCH_SIZE * PATCH_SIZE)


def swd_descriptors(
    images: Tensor, *, num_patches: int = 128, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Raw descriptors [N * num_patches, 147] per pyramid level (finest first), laid out (C, 7, 7).

    Positions are drawn on the CPU, image by image, in one call per batch: a stream of batches
    gives the same descriptors whatever the batch size, and on any device.
    """
    images = to_uint8(images)
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"SWD needs square images, got {tuple(images.shape[-2:])}")
    _check_resolution(images.shape[-1])
    levels = laplacian_pyramid(images.float())
    corners = torch.rand(images.shape[0], len(levels), num_patches, 2, generator=generator)
    return [_patches(level, corners[:, i]) for i, level in enumerate(levels)]


def normalize_descriptors(descriptors: Tensor) -> Tensor:
    """Per colour channel zero mean and unit (population) std over the whole descriptor set."""
    n = descriptors.shape[0]
    per_channel = descriptors.reshape(n, 3, -1)
    mean = per_channel.mean(dim=(0, 2), keepdim=True)
    std = per_channel.std(dim=(0, 2), keepdim=True, correction=0)
    # A flat channel (std 0) stays at zero instead of becoming NaN.
    return ((per_channel - mean) / std.clamp_min(1e-8)).reshape(n, -1)


_SORT_THREAD: ThreadPoolExecutor | None = None


def _sort_rows_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of ``x`` and of ``y`` sorted, in place on the CPU. There numpy sorts: its SIMD
    sort is ~10x faster than torch.sort (and computes no indices), and it releases the GIL, so
    the second set sorts on a helper thread while this one sorts the first."""
    if x.device.type != "cpu":
        return torch.sort(x, dim=1).values, torch.sort(y, dim=1).values
    global _SORT_THREAD
    if _SORT_THREAD is None:
        _SORT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swd-sort")
    pending = _SORT_THREAD.submit(y.numpy().sort, axis=1)
    x.numpy().sort(axis=1)
    pending.result()
    return x, y


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    *,
    num_dirs: int = 512,
    repeats: int = 4,
    generator: torch.Generator | None = None,
    dirs_per_chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Approximate Wasserstein-1 distance between two equal-sized point sets [N, D] by 1-D slices.

    Directions are drawn on the CPU (reproducible across devices) and projected in chunks of
    ``dirs_per_chunk`` to bound memory at N x chunk per set. ``progress(1)`` is called after each
    chunk (``sliced_wasserstein_steps`` of them).
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"need two [N, D] sets of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    total = 0.0
    # Projections go to the same two buffers every chunk: fresh ones of this size (N x chunk)
    # cost the CPU more in page faults than the arithmetic.
    buffers = [a.new_empty(min(dirs_per_chunk, num_dirs), a.shape[0]) for _ in range(2)]
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], num_dirs, generator=generator)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(device=a.device, dtype=a.dtype)
        distance = a.new_zeros(())
        for chunk in dirs.split(dirs_per_chunk, dim=1):
            # [dirs, N] keeps each projection contiguous for the sort.
            proj_a = torch.mm(chunk.T, a.T, out=buffers[0][: chunk.shape[1]])
            proj_b = torch.mm(chunk.T, b.T, out=buffers[1][: chunk.shape[1]])
            proj_a, proj_b = _sort_rows_pair(proj_a, proj_b)
            distance += proj_a.sub_(proj_b).abs_().sum()
            if progress is not None:
                progress(1)
        total += distance.item() / (a.shape[0] * num_dirs)
    return total / repeats


def sliced_wasserstein_steps(*, num_dirs: int = 512, repeats: int = 4, dirs_per_chunk: int = 64) -> int:
    """How many times `sliced_wasserstein` calls ``progress``."""
    return repeats * -(-num_dirs // dirs_per_chunk)


def _batches(images: Tensor | Iterable[Tensor]) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        yield images
    else:
        yield from images


def _collect(
    images: Tensor | Iterable[Tensor], num_patches: int, seed: int, device: torch.device | str
) -> tuple[int, list[Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    per_level: list[list[Tensor]] | None = None
    resolution = 0
    for batch in _batches(images):
        levels = swd_descriptors(batch.to(device), num_patches=num_patches, generator=generator)
        if per_level is None:
            per_level, resolution = [[] for _ in levels], batch.shape[-1]
        elif batch.shape[-1] != resolution:
            raise ValueError(f"all batches must share one resolution: {resolution} then {batch.shape[-1]}")
        # Kept on the CPU, where there is room for them (see compute_swd).
        for store, level in zip(per_level, levels):
            store.append(level.cpu())
    if per_level is None:
        raise ValueError("no images given")
    return resolution, [torch.cat(store) for store in per_level]


def compute_swd(
    real: Tensor | Iterable[Tensor],
    fake: Tensor | Iterable[Tensor],
    *,
    seed: int = 0,
    num_patches: int = 128,
    num_dirs: int = 512,
    repeats: int = 4,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """SWD x 1e3 per pyramid level (``swd_<res>``) and their mean (``swd_mean``).

    ``real`` and ``fake`` are uint8 [N, 3, H, W] (or float in [-1, 1]) tensors or iterables of such
    batches, with the same number of images and the same square power-of-two resolution (>= 16).
    Descriptors of both sets are held on the CPU as float32, 75 KB per image and level per set
    (10k images at 256², 5 levels: about 3.8 GB per set); ``device`` is where pyramids and
    projections are computed.
    """
    real_res, real_desc = _collect(real, num_patches, seed, device)
    fake_res, fake_desc = _collect(fake, num_patches, seed, device)
    if real_res != fake_res:
        raise ValueError(f"real images are {real_res}x{real_res} but fake ones {fake_res}x{fake_res}")
    if real_desc[0].shape[0] != fake_desc[0].shape[0]:
        raise ValueError(
            f"SWD needs as many fake as real images: {real_desc[0].shape[0] // num_patches} real, "
            f"{fake_desc[0].shape[0] // num_patches} fake"
        )
    return swd_from_descriptors(real_desc, fake_desc, real_res, seed=seed, num_dirs=num_dirs, repeats=repeats,
                                device=device)


def swd_from_descriptors(
    real: list[Tensor],
    fake: list[Tensor],
    resolution: int,
    *,
    seed: int = 0,
    num_dirs: int = 512,
    repeats: int = 4,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """The distances x 1e3 per level and their mean, from per-level descriptor sets (finest
    first), e.g. gathered from several processes. ``progress(1)`` is called
    ``len(real) * sliced_wasserstein_steps(...)`` times, as the distances are computed."""
    dir_generator = torch.Generator().manual_seed(seed + 1)
    result = {}
    for res, a, b in zip(level_resolutions(resolution), real, fake):
        a = normalize_descriptors(a.to(device))
        b = normalize_descriptors(b.to(device))
        swd = sliced_wasserstein(a, b, num_dirs=num_dirs, repeats=repeats, generator=dir_generator, progress=progress)
        result[f"swd_{res}"] = swd * 1e3
    result["swd_mean"] = sum(result.values()) / len(result)
    return result


def swd_floor_from_descriptors(
    real: list[Tensor], resolution: int, *, num_patches: int = 128, **options
) -> dict[str, float]:
    """What SWD gives for two disjoint halves of the real set (the first and the second half of
    the images, same settings): the value no generator can be expected to beat at this sample
    size, to read a score against. Keys ``swd_floor_<res>`` and ``swd_floor_mean``.

    ``real`` holds ``num_patches`` descriptors per image, image by image (as `swd_descriptors`
    gives them); ``options`` are those of `swd_from_descriptors`. Each half has half the images,
    so this floor sits slightly above the one of two full-sized real sets.
    """
    half = real[0].shape[0] // num_patches // 2
    if half < 1:
        raise ValueError("the SWD floor needs at least two real images")
    rows = half * num_patches
    first = [level[:rows] for level in real]
    second = [level[rows:2 * rows] for level in real]
    values = swd_from_descriptors(first, second, resolution, **options)
    return {key.replace("swd_", "swd_floor_", 1): value for key, value in values.items()}
