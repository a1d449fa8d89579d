"""Building blocks shared by the progressive generators and discriminators (ProGAN, StyleGAN).

Everything here is device- and precision-agnostic; the training loop decides both.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.nn.equalized import EqualConv2d
from gan_hr.resolutions import is_power_of_two

LRELU_SLOPE = 0.2


def num_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at `resolution`: channel_base // resolution, capped at channel_max, at least 1.

    16384 / 512 gives the ProGAN/StyleGAN widths: 512 up to 32², then halving to 16 at 1024².
    """
    return max(1, min(channel_base // resolution, channel_max))


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each pixel's feature vector to unit RMS (ProGAN section 4.2)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def _group_size(batch: int, group_size: int) -> int:
    # The largest divisor of the batch that is <= group_size, so any batch works (a last,
    # uneven batch or a per-process batch of 6 with group_size 4 -> groups of 3).
    size = min(group_size, batch)
    while batch % size:
        size -= 1
    return size


class MinibatchStddev(nn.Module):
    """Append the minibatch standard deviation as extra feature maps (ProGAN section 3).

    The batch is split into groups of G = min(group_size, N) samples, formed as in the official
    code (`x.reshape(G, -1, ...)`: sample i belongs to group i % (N / G)). If N is not divisible
    by G, G becomes the largest divisor of N that is <= group_size. Within each group, the stddev
    of every feature at every pixel is averaged over features and pixels; the result is appended
    as `num_channels` maps (features split into that many parts), shared by the group's members.
    The statistics are computed in float32 even under autocast: squares of fp16 activations
    overflow and their small differences lose all precision.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError("MinibatchStddev: group_size and num_channels must be at least 1")
        self.group_size = group_size
        self.num_channels = num_channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        f = self.num_channels
        if c % f:
            raise ValueError(f"MinibatchStddev: {c} channels do not split into {f} parts")
        g = _group_size(n, self.group_size)
        y = x.float().reshape(g, -1, f, c // f, h, w)  # [G, M, F, C/F, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + self.eps).sqrt()  # stddev over the group: [M, F, C/F, H, W]
        y = y.mean(dim=(2, 3, 4))  # [M, F]
        y = y.to(x.dtype).reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W], row i = group i % M
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling (ProGAN's upscale2d)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling (ProGAN's downscale2d)."""
    return F.avg_pool2d(x, kernel_size=2)


def binomial_kernel() -> torch.Tensor:
    """The normalised 3x3 binomial filter [1, 2, 1] x [1, 2, 1] / 16."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum()


class Blur2d(nn.Module):
    """Binomial low-pass filter as a depthwise 3x3 conv with zero padding (as the official blur2d).

    StyleGAN's generator blurs after each upsampling (against the checkerboard of nearest
    upsampling) and its discriminator before each downsampling (against aliasing). A plain
    conv2d, so it casts under autocast and supports double backward.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # Not persistent: a constant, not state; it still follows .to(device).
        self.register_buffer("kernel", binomial_kernel().expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)


class ConvLayer(nn.Module):
    """Equalized conv + leaky ReLU 0.2, optionally followed by pixel norm (ProGAN's generator)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, pixelnorm: bool = False,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, kernel_size, spectral_norm=spectral_norm)
        self.pixelnorm = pixelnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), LRELU_SLOPE)
        return pixel_norm(x) if self.pixelnorm else x


class ToRGB(nn.Module):
    """1x1 equalized conv to 3 channels, gain 1 and no activation: a linear image readout."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels, 3, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FromRGB(nn.Module):
    """1x1 equalized conv from 3 channels + leaky ReLU 0.2: the discriminator's image input."""

    def __init__(self, out_channels: int, *, spectral_norm: bool = False) -> None:
        super().__init__()
        self.conv = EqualConv2d(3, out_channels, 1, spectral_norm=spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), LRELU_SLOPE)


def check_resolution(resolution: int, max_res: int, min_res: int = 4) -> int:
    """Raise ValueError unless `resolution` is a power of two in [min_res, max_res]."""
    try:
        res = operator.index(resolution)
    except TypeError:
        res = 0
    if not (min_res <= res <= max_res and is_power_of_two(res)):
        raise ValueError(f"resolution must be a power of two in [{min_res}, {max_res}], got {resolution!r}")
    return res


def check_alpha(alpha: float) -> float:
    """Raise ValueError unless the fade-in weight is a finite number in [0, 1]."""
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def expect_shape(x: torch.Tensor, channels: int, resolution: int, where: str) -> None:
    """Assert a block-boundary shape [N, channels, resolution, resolution]."""
    assert x.shape[1:] == (channels, resolution, resolution), (
        f"{where}: expected [N, {channels}, {resolution}, {resolution}], got {list(x.shape)}"
    )
