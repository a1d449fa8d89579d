"""StyleGAN synthesis layers (Karras et al. 2019): noise injection, AdaIN, binomial blur, styled conv.

The order inside one layer follows the official StyleGAN v1 "layer epilogue":
conv -> [blur] -> noise -> bias -> leaky ReLU -> instance norm -> style modulation (AdaIN).
With `demodulate` a styled conv instead takes StyleGAN2's weight (de)modulation (Karras et al.
2020): style-scaled input -> conv -> divided by the expected std -> [blur] -> noise -> bias ->
leaky ReLU, with no instance norm.
Everything is plain PyTorch (no custom ops), so it runs under autocast and supports
double backward (R1 / path-length style penalties).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.nn.equalized import EqualConv2d, EqualLinear
from gan_hr.nn.layers import LRELU_SLOPE, Blur2d, upsample2x

NOISE_MODES = ("random", "const", "none")


def _as(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A small parameter in the activations' dtype, so bf16 autocast keeps the layer in bf16."""
    return param.to(x.dtype)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise times a learned per-channel scale (zero-initialised).

    noise_mode "random" draws fresh noise from the global RNG on every call, "const" uses a
    fixed noise image made at construction from `seed` (a persistent buffer, so EMA copies and
    checkpoints keep it), "none" adds nothing.
    """

    def __init__(self, channels: int, resolution: int, *, seed: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        # A local generator: the const noise must not depend on (or disturb) the global RNG.
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("const_noise", torch.randn(1, 1, resolution, resolution, generator=gen))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            n, _, h, w = x.shape
            noise = torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.const_noise.to(x.dtype)
        else:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        # One fused op; the [N,1,H,W] noise broadcasts against the [1,C,1,1] scale.
        return torch.addcmul(x, noise, _as(self.weight, x).view(1, -1, 1, 1))


def adain(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Instance norm, then the style's per-channel scale and bias: two kernels in all.

    x: [N, C, H, W]; scale, bias: [N, C]. Each channel of the result has mean `bias` and
    (population) std `|scale|` (up to eps). The native instance norm beat hand-fused moments
    (var_mean, or E[x^2] - E[x]^2, folded into one affine) on CPU forward+backward, keeps the
    input dtype under autocast, and supports double backward.
    """
    return torch.addcmul(bias[:, :, None, None], F.instance_norm(x, eps=eps), scale[:, :, None, None])


def demodulation(weight: torch.Tensor, style: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's demodulation factors: [N, out] that give every output channel of a conv with
    weight * style unit expected std for unit-std, independent inputs.

    weight: [out, in, k, k] (the effective weight); style: [N, in]. Applied to the conv's output
    (the non-fused form: one conv for the whole batch instead of a grouped conv per sample).
    """
    return torch.rsqrt(style.square() @ weight.square().sum(dim=(2, 3)).t() + eps)


class AdaIN(nn.Module):
    """Adaptive instance norm: a learned affine map of w gives each channel's scale and bias.

    The affine layer has gain 1 and bias init 1 for the scale half and 0 for the bias half, so
    at initialisation the style is close to the identity (scale 1, bias 0), as in the paper.
    """

    def __init__(self, w_dim: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.affine = EqualLinear(w_dim, 2 * channels, gain=1.0)
        with torch.no_grad():
            self.affine.bias[:channels].fill_(1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, bias = self.affine(w).to(x.dtype).chunk(2, dim=1)
        return adain(x, scale, bias)


class StyleEpilogue(nn.Module):
    """What follows every conv (and the learned constant): noise, bias, leaky ReLU, [AdaIN].

    `styled=False` leaves AdaIN out, for a conv that took its style by modulation already.
    """

    def __init__(
        self, channels: int, w_dim: int, resolution: int, *, noise: bool, noise_seed: int, styled: bool = True,
    ) -> None:
        super().__init__()
        self.noise = NoiseInjection(channels, resolution, seed=noise_seed) if noise else None
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adain = AdaIN(w_dim, channels) if styled else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.noise is not None:
            x = self.noise(x, noise_mode)
        x = F.leaky_relu(x + _as(self.bias, x).view(1, -1, 1, 1), LRELU_SLOPE)
        return self.adain(x, w) if self.adain is not None else x


class StyledConv(nn.Module):
    """[nearest 2x upsample] -> equalized 3x3 conv -> [blur] -> style epilogue; consumes one w.

    With `demodulate` the style scales the conv's input channels (an affine map of w with bias
    init 1, as StyleGAN2's) and the output is divided by its expected std, in place of AdaIN.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        upsample: bool = False,
        blur: bool = False,
        noise: bool = True,
        noise_seed: int = 0,
        demodulate: bool = False,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.upsample = upsample
        # The bias is added after the blur (in the epilogue), as in the official network.
        self.conv = EqualConv2d(in_channels, out_channels, 3, bias=False)
        # Official order: upsample -> conv -> blur; blurring the conv's output is the cheaper
        # side when channels shrink with resolution.
        self.blur = Blur2d(out_channels) if upsample and blur else None
        self.modulation = None
        if demodulate:
            self.modulation = EqualLinear(w_dim, in_channels, gain=1.0)
            with torch.no_grad():
                self.modulation.bias.fill_(1.0)
        self.epilogue = StyleEpilogue(
            out_channels, w_dim, resolution, noise=noise, noise_seed=noise_seed, styled=not demodulate,
        )

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.modulation is not None:
            style = self.modulation(w).to(x.dtype)
            demod = demodulation(self.conv.effective_weight().to(x.dtype), style)
            x = x * style[:, :, None, None]
        if self.upsample:
            x = upsample2x(x)
        x = self.conv(x)
        if self.modulation is not None:
            x = x * _as(demod, x)[:, :, None, None]
        if self.blur is not None:
            x = self.blur(x)
        return self.epilogue(x, w, noise_mode)
