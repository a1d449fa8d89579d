"""VAE networks (Kingma & Welling, ICLR 2014) on DCGAN's convolutional layers.

The decoder is `DCGANGenerator` as it is: z -> images in [-1, 1] (tanh), the mean of the
Gaussian p(x | z). It takes the generator's slot (G, and G_ema in checkpoints), so sampling,
evaluation and `gan_hr.inference` treat it as any generator: z ~ N(0, I) -> image.

The encoder (`VAEEncoder`, the discriminator's slot D) is DCGAN's discriminator with its one-score
head replaced by 2 * latent_dim outputs: the mean and log-variance of the diagonal Gaussian
posterior q(z | x). Batch norm as in DCGAN (none on the image-facing layer); no spectral norm
(config.validate refuses it for vae).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.models.dcgan import _BASE_RES, DCGANDiscriminator, _check_resolution, init_dcgan_weights

__all__ = ["VAEEncoder"]


class VAEEncoder(DCGANDiscriminator):
    """Images [N, 3, R, R] -> (mu, logvar), each [N, latent_dim]; `alpha` is unused."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__(dataclasses.replace(cfg, d_spectral_norm=False), max_res)
        self.score = nn.Conv2d(self.score.in_channels, 2 * cfg.latent_dim, _BASE_RES, 1, 0)
        init_dcgan_weights(self.score)

    def forward(self, img: torch.Tensor, resolution: int, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        _check_resolution(resolution, self.max_res)
        if img.ndim != 4 or tuple(img.shape[1:]) != (3, self.max_res, self.max_res):
            raise ValueError(f"expected images of shape [N, 3, {self.max_res}, {self.max_res}], got {list(img.shape)}")
        h = self.score(self.blocks(img))
        assert h.shape[1:] == (2 * self.latent_dim, 1, 1), tuple(h.shape)
        mu, logvar = h[:, :, 0, 0].chunk(2, dim=1)
        return mu, logvar
