"""DCGAN generator and discriminator (Radford et al., ICLR 2016); LSGAN (Mao et al. 2017) uses the
same networks with the least-squares loss.

Both networks train at one resolution only. They take the progressive models' forward arguments
(`resolution`, `alpha`) so that one trainer serves every model; `alpha` is ignored.

Widths: the feature maps at resolution r have `dcgan_channels(r, max_res, base_width)` channels,
`min(8 W, W * max_res // (2 r))`. At 64² with W = 64 this is the paper's 512, 256, 128, 64 at
4, 8, 16, 32; larger outputs add blocks at the top (4² and 8² stay capped at 8 W) so the
layer just below the image always has W channels.

With `model.d_spectral_norm` every discriminator conv is spectrally normalized
(`SpectralNormConv2d`, gan_hr/nn/spectral.py) and the discriminator has no batch norm, as in
Miyato et al.'s DCGAN-style discriminator: batch norm divides by the batch's standard deviation,
which undoes any scaling of the conv before it, so SN on a conv followed by batch norm would
change nothing.

With `model.conditional` (cGAN, Mirza & Osindero 2014, as DCGAN courses build it) the label
vector y [N, A] (one-hot class or 0/1 attributes, gan_hr/labels.py) is concatenated to z in G,
and enters D as A constant input channels beside the image (y tiled over every pixel).

Batch norm is plain `nn.BatchNorm2d`. Nothing distributed lives here: when `model.sync_batchnorm`
asks for it, the trainer swaps each one for `gan_hr.training.sync_batchnorm.SyncBatchNorm2d`
(`convert_sync_batchnorm` there; unlike torch's SyncBatchNorm it also runs on CPU with gloo), so
no helper is needed. The batch-norm buffers (running statistics) are part of the model state: an
EMA copy of G and checkpoints must carry buffers as well as parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.labels import check_labels, num_labels
from gan_hr.nn.spectral import INIT_ITERATIONS, SpectralNormConv2d, update_spectral_norms
from gan_hr.resolutions import check_max_res, resolutions_between

__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "dcgan_channels",
    "init_dcgan_weights",
]

# The smallest feature map: G projects z to it, D scores it with one 4x4 conv.
_BASE_RES = 4
_MIN_MAX_RES = 32


def dcgan_channels(resolution: int, max_res: int, base_width: int) -> int:
    """Channels of the feature maps at `resolution` in a DCGAN whose images are `max_res`²."""
    return min(8 * base_width, base_width * max_res // (2 * resolution))


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation of every layer in `module`: conv weights N(0, 0.02), batch-norm scale
    N(1, 0.02), biases 0. Works on SyncBatchNorm too, so it can be re-applied after conversion."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_resolution(resolution: int, max_res: int) -> None:
    if resolution != max_res:
        raise ValueError(f"this DCGAN runs at {max_res}² only (no growing), got resolution={resolution}")



def _feature_resolutions(max_res: int) -> list[int]:
    """4, 8, ..., max_res / 2: the feature-map sizes between the latent and the image."""
    return resolutions_between(_BASE_RES, max_res // 2)


class DCGANUpBlock(nn.Module):
    """ConvTranspose + BatchNorm + ReLU producing `resolution`²: from the 1x1 latent at 4², else
    doubling the input."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.in_res = 1 if resolution == _BASE_RES else resolution // 2
        stride, padding = (1, 0) if resolution == _BASE_RES else (2, 1)
        # No conv bias: batch norm's shift replaces it.
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride, padding, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.in_res, self.in_res), (tuple(x.shape), self.resolution)
        return self.act(self.norm(self.conv(x)))


class DCGANDownBlock(nn.Module):
    """Stride-2 conv + (BatchNorm) + LeakyReLU(0.2) producing `resolution`² from twice that."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, *, batch_norm: bool,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.resolution = resolution
        conv = SpectralNormConv2d if spectral_norm else nn.Conv2d
        self.conv = conv(in_channels, out_channels, 4, 2, 1, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (2 * self.resolution, 2 * self.resolution), (tuple(x.shape), self.resolution)
        return self.act(self.norm(self.conv(x)))


class DCGANGenerator(nn.Module):
    """z -> 4x4 by a transposed conv (no fully connected layer), stride-2 transposed-conv blocks
    up to `max_res`, then 3 channels and tanh."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.num_labels = num_labels(cfg)
        self.max_res = check_max_res(max_res, _MIN_MAX_RES, "DCGAN")
        w = cfg.base_width
        in_ch = cfg.latent_dim + self.num_labels
        blocks = []
        for res in _feature_resolutions(max_res):
            out_ch = dcgan_channels(res, max_res, w)
            blocks.append(DCGANUpBlock(in_ch, out_ch, res))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(in_ch, 3, 4, 2, 1), nn.Tanh())
        init_dcgan_weights(self)

    def regions(self) -> list[nn.Module]:
        """The fixed-shape layer stacks (see ProGANGenerator.regions)."""
        return [self.blocks, self.to_rgb]

    def forward(self, z: torch.Tensor, resolution: int, alpha: float = 1.0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """[N, latent_dim] (and labels [N, A] when conditional) -> images [N, 3, max_res, max_res]
        in [-1, 1]; `alpha` is unused."""
        _check_resolution(resolution, self.max_res)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected z of shape [N, {self.latent_dim}], got {list(z.shape)}")
        check_labels(labels, self.num_labels, z.shape[0], "G")
        if labels is not None:
            z = torch.cat([z, labels.to(z.dtype)], dim=1)
        return self.to_rgb(self.blocks(z[:, :, None, None]))


class DCGANDiscriminator(nn.Module):
    """Images -> stride-2 conv blocks down to 4x4 (batch norm on all but the first) -> a 4x4 conv
    giving one raw score per image; the loss applies the sigmoid or the least squares. With
    `model.d_spectral_norm`: every conv spectrally normalized, and no batch norm."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.num_labels = num_labels(cfg)
        self.max_res = check_max_res(max_res, _MIN_MAX_RES, "DCGAN")
        w = cfg.base_width
        in_ch = 3 + self.num_labels
        blocks = []
        sn = cfg.d_spectral_norm
        for i, res in enumerate(reversed(_feature_resolutions(max_res))):
            out_ch = dcgan_channels(res, max_res, w)
            # No batch norm on the image-facing layer, as in the paper (nor anywhere under SN).
            blocks.append(DCGANDownBlock(in_ch, out_ch, res, batch_norm=i > 0 and not sn, spectral_norm=sn))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.score = (SpectralNormConv2d if sn else nn.Conv2d)(in_ch, 1, _BASE_RES, 1, 0)
        init_dcgan_weights(self)
        update_spectral_norms(self, INIT_ITERATIONS)  # after the init: u follows the final weights

    def regions(self) -> list[nn.Module]:
        """The fixed-shape layer stacks (see ProGANGenerator.regions)."""
        return [self.blocks, self.score]

    def forward(self, img: torch.Tensor, resolution: int, alpha: float = 1.0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3, max_res, max_res] (and labels [N, A] when conditional) -> raw scores [N]; `alpha`
        is unused."""
        _check_resolution(resolution, self.max_res)
        if img.ndim != 4 or tuple(img.shape[1:]) != (3, self.max_res, self.max_res):
            shape = f"[N, 3, {self.max_res}, {self.max_res}]"
            raise ValueError(f"expected images of shape {shape}, got {list(img.shape)}")
        check_labels(labels, self.num_labels, img.shape[0], "D")
        if labels is not None:
            planes = labels.to(img.dtype)[:, :, None, None].expand(-1, -1, self.max_res, self.max_res)
            img = torch.cat([img, planes], dim=1)
        return self.score(self.blocks(img))[:, 0, 0, 0]
