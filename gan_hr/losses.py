"""GAN losses: WGAN-GP + drift (ProGAN), non-saturating logistic + R1 (StyleGAN), least squares;
and the VAE's negative ELBO (`vae_loss`).

Pure functions of a discriminator callable and tensors: no distributed or precision code. Each
returns the scalar to backpropagate and a dict of detached named scalars for logging.

Gradient penalties under fp16 loss scaling (`grad_scale`): the penalty needs dD/dx, obtained with
autograd through D's fp16 activations. Those input gradients are small and underflow to zero in
fp16 unless the scores are scaled up first, exactly as the loss scaler does for the parameter
gradients. So the gradient is taken of `scores.sum() * grad_scale` and divided by `grad_scale` in
float32 afterwards, which gives the true gradient. If the scaled gradient overflows, the penalty
becomes inf/NaN, so the parameter gradients do too and the scaler skips the step and lowers its
scale, which is what should happen.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_hr.config import LossConfig

__all__ = ["discriminator_loss", "generator_loss", "vae_loss"]

Discriminator = Callable[[Tensor], Tensor]
Stats = dict[str, Tensor]


def _input_grad(scores: Tensor, inputs: Tensor, grad_scale: float) -> Tensor:
    """d(sum of scores)/d(inputs) per sample, flattened to [N, -1], in float32.

    create_graph=True keeps the graph so that D's parameters receive the penalty's gradient.
    """
    (grad,) = torch.autograd.grad(scores.sum() * grad_scale, inputs, create_graph=True)
    return (grad.float() / grad_scale).flatten(1)


def _d_wgan_gp(cfg: LossConfig, D: Discriminator, D_penalty: Discriminator, real: Tensor, fake: Tensor,
               regularize: bool, grad_scale: float) -> tuple[Tensor, Stats]:
    score_real = D(real).float()
    score_fake = D(fake).float()
    drift = score_real.square().mean()
    loss = score_fake.mean() - score_real.mean() + cfg.drift * drift
    stats = {"score_real": score_real.mean(), "score_fake": score_fake.mean(), "drift": drift}
    # The GP is part of the WGAN-GP objective every step; `regularize` (lazy R1) does not apply.
    if cfg.gp_lambda > 0:
        # Random points on the lines between real and fake samples (Gulrajani et al. 2017).
        u = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=torch.float32)
        mixed = torch.lerp(real.float(), fake.float(), u).requires_grad_(True)
        norm = _input_grad(D_penalty(mixed), mixed, grad_scale).norm(dim=1)
        gp = (norm - cfg.gp_target).square().mean() / cfg.gp_target**2
        loss = loss + cfg.gp_lambda * gp
        stats["gp"] = gp
    return loss, stats


def _d_logistic(cfg: LossConfig, D: Discriminator, D_penalty: Discriminator, real: Tensor, fake: Tensor,
                regularize: bool, grad_scale: float) -> tuple[Tensor, Stats]:
    use_r1 = regularize and cfg.r1_gamma > 0
    if use_r1:
        # R1 differentiates the same D(real) forward, so real must require grad before it
        # (on a detached alias, leaving the caller's tensor as it was).
        real = real.detach().requires_grad_(True)
    score_real = (D_penalty if use_r1 else D)(real).float()
    score_fake = D(fake).float()
    loss = F.softplus(score_fake).mean() + F.softplus(-score_real).mean()
    stats = {"score_real": score_real.mean(), "score_fake": score_fake.mean()}
    if use_r1:
        r1 = _input_grad(score_real, real, grad_scale).square().sum(dim=1).mean()
        # Lazy regularisation (StyleGAN2): applied every r1_every steps, so weighted by r1_every.
        loss = loss + (cfg.r1_gamma / 2) * r1 * cfg.r1_every
        stats["r1"] = r1
    return loss, stats


def _d_lsgan(cfg: LossConfig, D: Discriminator, D_penalty: Discriminator, real: Tensor, fake: Tensor,
             regularize: bool, grad_scale: float) -> tuple[Tensor, Stats]:
    # Mao et al. 2017 with a = 0 (fake), b = 1 (real) targets.
    score_real = D(real).float()
    score_fake = D(fake).float()
    loss = 0.5 * (score_real - 1).square().mean() + 0.5 * score_fake.square().mean()
    return loss, {"score_real": score_real.mean(), "score_fake": score_fake.mean()}


def _g_wgan(scores: Tensor) -> Tensor:
    return -scores.mean()


def _g_logistic(scores: Tensor) -> Tensor:
    return F.softplus(-scores).mean()


def _g_lsgan(scores: Tensor) -> Tensor:
    # c = 1: the generator wants its samples scored as real.
    return 0.5 * (scores - 1).square().mean()


_D_LOSSES = {"wgan_gp": _d_wgan_gp, "logistic": _d_logistic, "lsgan": _d_lsgan}
_G_LOSSES = {"wgan_gp": _g_wgan, "logistic": _g_logistic, "lsgan": _g_lsgan}


def _lookup(table: dict, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(table)}") from None


def discriminator_loss(
    cfg: LossConfig,
    D: Discriminator,
    real: Tensor,
    fake: Tensor,
    *,
    regularize: bool = True,
    grad_scale: float = 1.0,
    D_penalty: Discriminator | None = None,
) -> tuple[Tensor, Stats]:
    """Discriminator loss for `cfg.name`, with its gradient penalty when `regularize`.

    D maps images to raw scores [N]. `fake` is detached here: this loss never trains G. With the
    logistic loss, R1 is taken from the same D(real) forward (`real` gets requires_grad set), and
    with `cfg.r1_every` = k > 1 it is weighted by k (call with `regularize` true every k-th step);
    `regularize=False` skips R1. The WGAN gradient penalty is applied on every call (gp_lambda = 0
    turns it off). `grad_scale` is the current fp16 loss scale (1 otherwise); see the module
    docstring. `D_penalty`, the same discriminator run so that its gradient can be differentiated
    again (uncompiled), takes the forwards a penalty differentiates; default D.
    """
    loss, stats = _lookup(_D_LOSSES, cfg.name)(cfg, D, D_penalty or D, real, fake.detach(), regularize, grad_scale)
    stats = {"loss_d": loss, **stats}
    return loss, {k: v.detach() for k, v in stats.items()}


def generator_loss(cfg: LossConfig, fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """Generator loss for `cfg.name` from D's raw scores [N] on generated images."""
    loss = _lookup(_G_LOSSES, cfg.name)(fake_scores.float())
    return loss, {"loss_g": loss.detach(), "score_fake_g": fake_scores.detach().float().mean()}


def vae_loss(beta: float, encode: Callable[[Tensor], tuple[Tensor, Tensor]], decode: Callable[[Tensor], Tensor],
             real: Tensor) -> tuple[Tensor, Stats]:
    """The negative beta-ELBO per image of a VAE (Kingma & Welling 2014), averaged over the batch.

    `encode` maps images to the posterior's (mu, logvar) [N, L]; z = mu + sigma * eps, eps ~ N(0, I)
    (the reparameterisation trick, drawn from the global RNG); `decode` maps z back to images.
    Reconstruction: the squared error summed over every pixel and channel, the Gaussian negative
    log-likelihood of p(x | z) = N(decode(z), sigma_x^2 I) up to a constant, with sigma_x^2 = 1/2
    (beta rescales it: SSE + beta * KL is the ELBO of sigma_x^2 = beta / 2). Summed, not averaged,
    over pixels: a per-pixel mean would weigh KL 3 * R^2 times more and collapse the posterior.
    Gaussian rather than BCE because pixels are continuous values in [-1, 1], not Bernoulli
    outcomes. KL(q(z | x) || N(0, I)) in closed form, summed over latent dimensions."""
    mu, logvar = (t.float() for t in encode(real))
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    recon = (decode(z).float() - real.float()).square().flatten(1).sum(dim=1).mean()
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()
    loss = recon + beta * kl
    return loss, {"loss_vae": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}
