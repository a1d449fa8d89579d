"""Building blocks: equalized learning rate, pixel norm, minibatch stddev, resampling, RGB layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_hr.nn.equalized import EqualConv2d, EqualLinear
from gan_hr.nn.layers import (
    ConvLayer,
    FromRGB,
    MinibatchStddev,
    ToRGB,
    check_alpha,
    check_resolution,
    downsample2x,
    num_channels,
    pixel_norm,
    upsample2x,
)


# --------------------------------------------------------------------------- equalized lr


def test_equal_linear_scale_and_forward():
    torch.manual_seed(0)
    layer = EqualLinear(8, 4, lr_mul=0.01, bias_init=1.0)
    assert layer.weight_scale == pytest.approx(math.sqrt(2 / 8) * 0.01)
    x = torch.randn(5, 8)
    expected = x @ (layer.weight * math.sqrt(2 / 8) * 0.01).T + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    # The bias is stored divided by lr_mul so that its effective value is bias_init.
    torch.testing.assert_close(layer.bias * layer.lr_mul, torch.ones(4))


def test_equal_conv_scale_uses_full_fan_in():
    conv = EqualConv2d(6, 5, 3)
    assert conv.weight_scale == pytest.approx(math.sqrt(2 / (6 * 3 * 3)))
    assert EqualConv2d(6, 5, 1, gain=1.0).weight_scale == pytest.approx(1 / math.sqrt(6))
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.weight_scale, conv.bias, padding=1))


def test_equalized_weights_have_he_std_at_init():
    torch.manual_seed(0)
    layer = EqualLinear(256, 256, lr_mul=0.01)
    effective = layer.weight * layer.weight_scale
    assert effective.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.02)


@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_adam_step_moves_effective_weight_by_lr_times_he_times_lr_mul(lr_mul):
    # Adam's first step changes each stored weight by lr * sign(grad); the effective weight
    # (stored * scale) therefore moves by lr * sqrt(2 / fan_in) * lr_mul, whatever the layer.
    torch.manual_seed(0)
    # float64: stored weights are ~1 / lr_mul = 100, so a 1e-3 step is below float32 resolution.
    layer = EqualLinear(16, 3, lr_mul=lr_mul).double()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, eps=1e-12)
    before = (layer.weight * layer.weight_scale).detach().clone()
    layer(torch.randn(4, 16, dtype=torch.float64)).square().sum().backward()
    opt.step()
    step = (layer.weight * layer.weight_scale).detach() - before
    expected = 1e-3 * math.sqrt(2 / 16) * lr_mul
    torch.testing.assert_close(step.abs(), torch.full_like(step, expected), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- widths


def test_num_channels_paper_table():
    widths = [num_channels(2**i, 16384, 512) for i in range(2, 11)]
    assert widths == [512, 512, 512, 512, 256, 128, 64, 32, 16]


def test_num_channels_floor_and_cap():
    assert num_channels(64, 256, 32) == 4
    assert num_channels(1024, 256, 32) == 1  # never zero
    assert num_channels(4, 256, 32) == 32


# --------------------------------------------------------------------------- pixel norm


def test_pixel_norm_unit_rms_over_channels():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 5) * torch.rand(3, 1, 5, 5) * 10
    y = pixel_norm(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(3, 5, 5))
    # Direction is kept: y is a positive multiple of x at every pixel.
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))
    torch.testing.assert_close(pixel_norm(torch.zeros(1, 4)), torch.zeros(1, 4))


def test_pixel_norm_on_latents():
    z = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(pixel_norm(z), z / math.sqrt(12.5))


# --------------------------------------------------------------------------- minibatch stddev


def _mbstd_reference(x: np.ndarray, group: int, features: int = 1) -> np.ndarray:
    """Plain loops: sample i is grouped with every j where j % M == i % M, M = N / group."""
    n, c, h, w = x.shape
    m = n // group
    out = np.zeros((n, features, h, w))
    for i in range(n):
        members = [j for j in range(n) if j % m == i % m]
        assert len(members) == group
        for f in range(features):
            part = x[members, f * c // features:(f + 1) * c // features]  # [G, C/F, H, W]
            std = np.sqrt(((part - part.mean(axis=0)) ** 2).mean(axis=0) + 1e-8)
            out[i, f] = std.mean()
    return np.concatenate([x, out], axis=1)


def test_minibatch_stddev_hand_example():
    # N = 4, G = 2: groups are {0, 2} and {1, 3} (official reshape), not {0, 1} and {2, 3}.
    x = torch.zeros(4, 1, 1, 2)
    x[0] = torch.tensor([[0.0, 0.0]])
    x[1] = torch.tensor([[5.0, 5.0]])
    x[2] = torch.tensor([[2.0, 4.0]])
    x[3] = torch.tensor([[5.0, 5.0]])
    y = MinibatchStddev(group_size=2)(x)
    assert y.shape == (4, 2, 1, 2)
    torch.testing.assert_close(y[:, :1], x)
    # Group {0, 2}: per-pixel stddevs |0-2|/2 = 1 and |0-4|/2 = 2 -> mean 1.5.
    # Group {1, 3}: identical samples -> sqrt(1e-8) = 1e-4.
    expected = torch.tensor([1.5, 1e-4, 1.5, 1e-4]).view(4, 1, 1, 1).expand(4, 1, 1, 2)
    torch.testing.assert_close(y[:, 1:], expected)


@pytest.mark.parametrize(
    "n, group_size, features, effective_group",
    [(8, 4, 1, 4), (6, 4, 1, 3), (3, 4, 1, 3), (4, 4, 2, 4), (5, 4, 1, 1), (2, 1, 1, 1)],
)
def test_minibatch_stddev_matches_reference(n, group_size, features, effective_group):
    torch.manual_seed(n)
    x = torch.randn(n, 4, 3, 3)
    y = MinibatchStddev(group_size, features)(x)
    assert y.shape == (n, 4 + features, 3, 3)
    expected = _mbstd_reference(x.double().numpy(), effective_group, features)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_statistics_in_float32():
    # fp16 squares of 300 overflow (90000 > 65504); the statistics must still be finite.
    x = torch.full((4, 2, 2, 2), 300.0)
    x[::2] = -300.0
    y = MinibatchStddev(group_size=4)(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y[:, 2:].float(), torch.full((4, 1, 2, 2), 300.0))


def test_minibatch_stddev_rejects_bad_channel_split():
    with pytest.raises(ValueError, match="split"):
        MinibatchStddev(4, num_channels=3)(torch.randn(4, 4, 2, 2))


# --------------------------------------------------------------------------- resampling


def test_upsample_nearest_and_downsample_average():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    up = upsample2x(x)
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32)
    torch.testing.assert_close(up[0, 0], expected)
    torch.testing.assert_close(downsample2x(up), x)
    y = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(downsample2x(y)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


# --------------------------------------------------------------------------- rgb and conv layers


def test_to_rgb_is_linear_1x1_with_gain_one():
    torch.manual_seed(0)
    layer = ToRGB(8)
    assert layer.conv.weight.shape == (3, 8, 1, 1)
    assert layer.conv.weight_scale == pytest.approx(1 / math.sqrt(8))
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(layer(-x) - layer.conv.bias.view(1, 3, 1, 1),
                               -(layer(x) - layer.conv.bias.view(1, 3, 1, 1)))


def test_from_rgb_applies_leaky_relu():
    torch.manual_seed(0)
    layer = FromRGB(6)
    x = torch.randn(2, 3, 4, 4)
    pre = layer.conv(x)
    assert (pre < 0).any()
    torch.testing.assert_close(layer(x), torch.where(pre > 0, pre, 0.2 * pre))
    assert layer.conv.weight_scale == pytest.approx(math.sqrt(2 / 3))


def test_conv_layer_pixelnorm_option():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    plain = ConvLayer(4, 6)
    normed = ConvLayer(4, 6, pixelnorm=True)
    normed.load_state_dict(plain.state_dict())
    pre = plain.conv(x)
    torch.testing.assert_close(plain(x), F.leaky_relu(pre, 0.2))
    torch.testing.assert_close(normed(x), pixel_norm(F.leaky_relu(pre, 0.2)))


def test_resolution_and_alpha_validation():
    assert check_resolution(16, 64) == 16
    assert check_resolution(np.int64(8), 64) == 8
    for bad in (2, 6, 128, 0, -4, 8.0, "8"):
        with pytest.raises(ValueError):
            check_resolution(bad, 64)
    assert check_alpha(0) == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            check_alpha(bad)
