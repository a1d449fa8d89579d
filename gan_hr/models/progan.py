"""Progressive GAN generator and discriminator (Karras et al., ICLR 2018, Table 2).

Every resolution's block (with its own to-RGB / from-RGB) is built up front and stored as
`blocks["b{res}"]`; `forward(..., resolution, alpha)` runs only the blocks up to `resolution` and
fades the newest one in with `alpha`. Growing therefore never changes the modules, so optimizer
state, checkpoints and EMA copies keep one fixed set of parameters for the whole run.

At alpha == 1 the old to-RGB / from-RGB branch is not computed, and at alpha == 0 the new block is
not computed: their parameters get no gradient, which a DDP wrapper must allow for (the trainer's
business, not the model's).

With `model.conditional` both take label vectors y [N, A] (one-hot class or 0/1 attributes,
gan_hr/labels.py). G embeds y linearly to latent_dim, pixel-normalises the embedding as it does
z, and concatenates the two; D adds a projection term to its score (Miyato & Koyama, ICLR 2018):
the inner product of a linear embedding of y with D's final features, over sqrt(features) as
StyleGAN2-ADA scales it, so it starts at the scale of the unconditional score.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.nn.equalized import EqualLinear
from gan_hr.nn.layers import (
    LRELU_SLOPE,
    Blur2d,
    ConvLayer,
    FromRGB,
    MinibatchStddev,
    ToRGB,
    check_alpha,
    check_resolution,
    downsample2x,
    expect_shape,
    num_channels,
    pixel_norm,
    upsample2x,
)
from gan_hr.labels import check_labels, num_labels
from gan_hr.nn.spectral import INIT_ITERATIONS, update_spectral_norms
from gan_hr.resolutions import check_max_res, resolutions_between

__all__ = ["ProGANDiscriminator", "ProGANGenerator"]

BASE_RES = 4


# --------------------------------------------------------------------------- generator


class GInputBlock(nn.Module):
    """Latent -> 4x4 features: dense + lrelu + pixel norm, then 3x3 conv + lrelu + pixel norm."""

    resolution = BASE_RES

    def __init__(self, latent_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # Official code: a dense layer with gain sqrt(2)/4 (it acts as a 4x4 transposed conv on a
        # 1x1 input) and one bias per channel, added after the reshape.
        self.dense = EqualLinear(latent_dim, channels * BASE_RES * BASE_RES, bias=False, gain=math.sqrt(2) / 4)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv = ConvLayer(channels, channels, 3, pixelnorm=True)
        self.to_rgb = ToRGB(channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).reshape(-1, self.channels, BASE_RES, BASE_RES) + self.bias.view(1, -1, 1, 1)
        x = pixel_norm(F.leaky_relu(x, LRELU_SLOPE))
        x = self.conv(x)
        expect_shape(x, self.channels, BASE_RES, "G.b4 output")
        return x


class GBlock(nn.Module):
    """Features at res/2 -> res: upsample, then two 3x3 convs each with lrelu + pixel norm."""

    def __init__(self, resolution: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv0 = ConvLayer(in_channels, out_channels, 3, pixelnorm=True)
        self.conv1 = ConvLayer(out_channels, out_channels, 3, pixelnorm=True)
        self.to_rgb = ToRGB(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expect_shape(x, self.in_channels, self.resolution // 2, f"G.b{self.resolution} input")
        x = self.conv1(self.conv0(upsample2x(x)))
        expect_shape(x, self.out_channels, self.resolution, f"G.b{self.resolution} output")
        return x


class ProGANGenerator(nn.Module):
    """z [N, latent_dim] -> image [N, 3, resolution, resolution] (linear output, no tanh)."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.num_labels = num_labels(cfg)
        self.max_res = check_max_res(max_res, BASE_RES, "ProGAN")
        self.resolutions = resolutions_between(BASE_RES, max_res)
        ch = functools.partial(num_channels, channel_base=cfg.channel_base, channel_max=cfg.channel_max)
        # Conditional: the label embedding (latent_dim wide) joins z at the input.
        inputs = cfg.latent_dim * (2 if self.num_labels else 1)
        blocks: dict[str, nn.Module] = {"b4": GInputBlock(inputs, ch(BASE_RES))}
        for res in self.resolutions[1:]:
            blocks[f"b{res}"] = GBlock(res, ch(res // 2), ch(res))
        self.blocks = nn.ModuleDict(blocks)
        self.embed = EqualLinear(self.num_labels, cfg.latent_dim, gain=1.0) if self.num_labels else None

    def regions(self) -> list[nn.Module]:
        """The resolution blocks: tensor in, tensor out, one shape per resolution (the units
        `gan_hr.training.compile` compiles; the fade-in between them stays in Python)."""
        return list(self.blocks.values())

    def forward(self, z: torch.Tensor, resolution: int, alpha: float = 1.0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        resolution = check_resolution(resolution, self.max_res)
        alpha = check_alpha(alpha)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"G: expected z of shape [N, {self.latent_dim}], got {list(z.shape)}")
        check_labels(labels, self.num_labels, z.shape[0], "G")
        x = pixel_norm(z)
        if self.embed is not None:
            x = torch.cat([x, pixel_norm(self.embed(labels.to(z.dtype)))], dim=1)
        for res in self.resolutions:
            if res == resolution:
                break
            x = self.blocks[f"b{res}"](x)
        top = self.blocks[f"b{resolution}"]
        if resolution == BASE_RES or alpha == 1.0:
            return top.to_rgb(top(x))
        old = upsample2x(self.blocks[f"b{resolution // 2}"].to_rgb(x))
        if alpha == 0.0:
            return old
        new = top.to_rgb(top(x))
        return old + (new - old) * alpha


# --------------------------------------------------------------------------- discriminator


class DBlock(nn.Module):
    """Features at res -> res/2: 3x3 conv + lrelu, [blur], 3x3 conv to the lower width + lrelu,
    2x2 avg pool. The blur is StyleGAN's (its official `conv0 -> blur2d -> conv1_down`); ProGAN
    has none."""

    def __init__(self, resolution: int, in_channels: int, out_channels: int, *, blur: bool = False,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.from_rgb = FromRGB(in_channels, spectral_norm=spectral_norm)
        self.conv0 = ConvLayer(in_channels, in_channels, 3, spectral_norm=spectral_norm)
        self.blur = Blur2d(in_channels) if blur else None
        self.conv1 = ConvLayer(in_channels, out_channels, 3, spectral_norm=spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expect_shape(x, self.in_channels, self.resolution, f"D.b{self.resolution} input")
        x = self.conv0(x)
        if self.blur is not None:
            x = self.blur(x)
        x = downsample2x(self.conv1(x))
        expect_shape(x, self.out_channels, self.resolution // 2, f"D.b{self.resolution} output")
        return x


class DOutputBlock(nn.Module):
    """4x4 features -> score: minibatch stddev, 3x3 conv, dense 4*4*C -> C, dense -> 1 (gain 1)."""

    resolution = BASE_RES

    def __init__(self, channels: int, mbstd_group_size: int, *, spectral_norm: bool = False,
                 num_labels: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.from_rgb = FromRGB(channels, spectral_norm=spectral_norm)
        # group size 0 turns the layer off (e.g. for ablations or batch-size-1 debugging).
        self.mbstd = MinibatchStddev(mbstd_group_size) if mbstd_group_size > 0 else None
        extra = self.mbstd.num_channels if self.mbstd is not None else 0
        self.conv = ConvLayer(channels + extra, channels, 3, spectral_norm=spectral_norm)
        self.dense = EqualLinear(channels * BASE_RES * BASE_RES, channels, spectral_norm=spectral_norm)
        self.out = EqualLinear(channels, 1, gain=1.0, spectral_norm=spectral_norm)
        # The projection discriminator's label embedding (conditional only).
        self.embed = (EqualLinear(num_labels, channels, bias=False, gain=1.0, spectral_norm=spectral_norm)
                      if num_labels else None)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        expect_shape(x, self.channels, BASE_RES, "D.b4 input")
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = F.leaky_relu(self.dense(x.flatten(1)), LRELU_SLOPE)
        score = self.out(x).squeeze(1)
        if self.embed is None:
            return score
        return score + (self.embed(labels.to(x.dtype)) * x).sum(1) * self.channels**-0.5


class ProGANDiscriminator(nn.Module):
    """Image [N, 3, resolution, resolution] -> raw scores [N]. `blur` puts the [1, 2, 1] filter
    before every downsampling (StyleGAN's discriminator). With `model.d_spectral_norm` every
    conv and dense layer (from-RGB and output included) is spectrally normalized
    (gan_hr/nn/spectral.py); the trainer advances the estimates once per D step."""

    def __init__(self, cfg: ModelConfig, max_res: int, *, blur: bool = False) -> None:
        super().__init__()
        self.max_res = check_max_res(max_res, BASE_RES, "ProGAN")
        self.resolutions = resolutions_between(BASE_RES, max_res)
        ch = functools.partial(num_channels, channel_base=cfg.channel_base, channel_max=cfg.channel_max)
        sn = cfg.d_spectral_norm
        self.num_labels = num_labels(cfg)
        blocks: dict[str, nn.Module] = {"b4": DOutputBlock(ch(BASE_RES), cfg.mbstd_group_size, spectral_norm=sn,
                                                           num_labels=self.num_labels)}
        for res in self.resolutions[1:]:
            blocks[f"b{res}"] = DBlock(res, ch(res), ch(res // 2), blur=blur, spectral_norm=sn)
        self.blocks = nn.ModuleDict(blocks)
        update_spectral_norms(self, INIT_ITERATIONS)

    def regions(self) -> list[nn.Module]:
        """The resolution blocks (see ProGANGenerator.regions)."""
        return list(self.blocks.values())

    def forward(self, img: torch.Tensor, resolution: int, alpha: float = 1.0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        resolution = check_resolution(resolution, self.max_res)
        alpha = check_alpha(alpha)
        if img.ndim != 4 or img.shape[1:] != (3, resolution, resolution):
            raise ValueError(f"D: expected images [N, 3, {resolution}, {resolution}], got {list(img.shape)}")
        check_labels(labels, self.num_labels, img.shape[0], "D")
        # Only the 4x4 output block takes labels (its projection term); None keeps its call as it was.
        extra = (labels,) if labels is not None else ()
        top = self.blocks[f"b{resolution}"]
        if resolution == BASE_RES:
            return top(top.from_rgb(img), *extra)
        if alpha == 0.0:
            x = self.blocks[f"b{resolution // 2}"].from_rgb(downsample2x(img))
        else:
            x = top(top.from_rgb(img))
            if alpha < 1.0:
                old = self.blocks[f"b{resolution // 2}"].from_rgb(downsample2x(img))
                x = old + (x - old) * alpha
        for res in reversed(self.resolutions):
            if res < resolution:
                x = self.blocks[f"b{res}"](x, *(extra if res == BASE_RES else ()))
        return x
