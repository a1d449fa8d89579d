"""Equalized learning rate (Karras et al. 2018, section 4.1).

Weights are stored as N(0, 1) / lr_mul and scaled at run time by the He constant
sqrt(2 / fan_in) (gain `gain`) times `lr_mul`, so Adam sees every weight on the same scale and
`lr_mul` scales the effective learning rate of a layer (the StyleGAN mapping network uses 0.01).

With `spectral_norm=True` (a discriminator option, gan_hr/nn/spectral.py) the run-time weight,
stored weight times constant, is divided by its largest singular value. The constant then
cancels in the forward (sigma(c W) = c sigma(W)): the gain and the He scaling no longer set the
layer's output scale; every layer has spectral norm 1. What equalized lr still does is in the
update: the stored weights stay N(0, 1) / lr_mul in every layer, so Adam's steps (about lr per
weight) change every layer by the same relative amount, and `lr_mul` keeps scaling that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.nn.spectral import SpectralNorm


class EqualLinear(nn.Module):
    """Linear layer with run-time He scaling and an lr multiplier for weight and bias."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        gain: float = math.sqrt(2),
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul
        self.sn = SpectralNorm(out_features) if spectral_norm else None

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies: scaled at run time, then spectrally normalized if asked."""
        weight = self.weight * self.weight_scale
        return self.sn(weight) if self.sn is not None else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.effective_weight(), bias)

    def extra_repr(self) -> str:
        out_f, in_f = self.weight.shape
        return f"{in_f}, {out_f}, lr_mul={self.lr_mul}"


class EqualConv2d(nn.Module):
    """Conv layer with run-time He scaling; 'same' padding for odd kernels by default."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int | None = None,
        bias: bool = True,
        lr_mul: float = 1.0,
        gain: float = math.sqrt(2),
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_scale = gain / math.sqrt(in_channels * kernel_size * kernel_size) * lr_mul
        self.lr_mul = lr_mul
        self.padding = kernel_size // 2 if padding is None else padding
        self.sn = SpectralNorm(out_channels) if spectral_norm else None

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies: scaled at run time, then spectrally normalized if asked."""
        weight = self.weight * self.weight_scale
        return self.sn(weight) if self.sn is not None else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.conv2d(x, self.effective_weight(), bias, padding=self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, kernel_size={k}, padding={self.padding}, lr_mul={self.lr_mul}"
