"""Equalized learning rate (Karras et al. 2018, section 4.1).

Weights are stored as N(0, 1) / lr_mul and scaled at run time by the He constant
sqrt(2 / fan_in) (gain `gain`) times `lr_mul`, so Adam sees every weight on the same scale and
`lr_mul` scales the effective learning rate of a layer (the StyleGAN mapping network uses 0.01).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.weight_scale, bias)

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
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_scale = gain / math.sqrt(in_channels * kernel_size * kernel_size) * lr_mul
        self.lr_mul = lr_mul
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.conv2d(x, self.weight * self.weight_scale, bias, padding=self.padding)

    def extra_repr(self) -> str:
        out_c, in_c, k, _ = self.weight.shape
        return f"{in_c}, {out_c}, kernel_size={k}, padding={self.padding}, lr_mul={self.lr_mul}"
