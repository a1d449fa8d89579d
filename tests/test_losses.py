"""Losses against hand computations on a linear "D" whose input gradient is known exactly.

With D(x) = sum(w * x) + b, dD/dx = w for every sample, so ||grad|| = ||w|| and every penalty,
and its gradient with respect to w, has a closed form.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from gan_hr.config import LossConfig
from gan_hr.losses import discriminator_loss, generator_loss

SHAPE = (3, 4, 4)


class LinearD(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(SHAPE, generator=gen) * 0.3)
        self.b = torch.nn.Parameter(torch.tensor(0.2))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (x * self.w).sum(dim=(1, 2, 3)) + self.b


def _batch(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _cfg(name: str, **kw) -> LossConfig:
    return dataclasses.replace(LossConfig(name=name), **kw)


# --------------------------------------------------------------------------- wgan-gp


def test_wgan_gp_matches_hand_computation_and_parameter_gradient():
    cfg = _cfg("wgan_gp", gp_lambda=10.0, gp_target=1.0, drift=0.001)
    D, real, fake = LinearD(), _batch(1), _batch(2)
    loss, stats = discriminator_loss(cfg, D, real, fake)
    assert D.calls == 3  # real, fake, and the interpolates

    w, b = D.w.detach(), D.b.detach()
    s_real, s_fake = (real * w).sum((1, 2, 3)) + b, (fake * w).sum((1, 2, 3)) + b
    norm = w.norm()
    gp = (norm - 1.0) ** 2
    expected = s_fake.mean() - s_real.mean() + 10.0 * gp + 0.001 * s_real.square().mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["gp"], gp)
    torch.testing.assert_close(stats["drift"], s_real.square().mean())
    torch.testing.assert_close(stats["score_real"], s_real.mean())
    torch.testing.assert_close(stats["score_fake"], s_fake.mean())
    torch.testing.assert_close(stats["loss_d"], expected)
    assert all(not v.requires_grad for v in stats.values())

    # d loss / d w includes the penalty term 10 * 2 (||w|| - 1) w / ||w||: needs create_graph.
    loss.backward()
    expected_grad = (
        fake.mean(0) - real.mean(0)
        + 10.0 * 2 * (norm - 1.0) * w / norm
        + 0.001 * (2 * s_real.view(-1, 1, 1, 1) * real).mean(0)
    )
    torch.testing.assert_close(D.w.grad, expected_grad)


def test_wgan_gp_target_normalisation():
    cfg = _cfg("wgan_gp", gp_lambda=2.0, gp_target=750.0, drift=0.0)
    D = LinearD()
    _, stats = discriminator_loss(cfg, D, _batch(1), _batch(2))
    torch.testing.assert_close(stats["gp"], (D.w.detach().norm() - 750.0) ** 2 / 750.0**2)


def test_wgan_gp_same_under_grad_scale():
    cfg = _cfg("wgan_gp")
    real, fake = _batch(1), _batch(2)
    results = []
    for scale in (1.0, 1024.0):
        D = LinearD()
        loss, stats = discriminator_loss(cfg, D, real, fake, grad_scale=scale)
        loss.backward()
        results.append((loss.detach(), stats["gp"], D.w.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


class HalfD(torch.nn.Module):
    """A D whose backward runs in fp16 and whose input gradients are 1e-8 * w: they underflow."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.full(SHAPE, 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.half() * self.w.half()).sum(dim=(1, 2, 3)).float() * 1e-8


def test_gradient_penalties_survive_fp16_with_grad_scale():
    true_norm = 1e-8 * 0.5 * (3 * 4 * 4) ** 0.5
    gp_cfg = _cfg("wgan_gp", gp_target=true_norm, drift=0.0)
    r1_cfg = _cfg("logistic", r1_gamma=2.0)
    real, fake = _batch(1).clamp(-2, 2), _batch(2).clamp(-2, 2)

    # Without scaling, dD/dx is flushed to zero in fp16: the penalty sees a zero gradient.
    _, unscaled = discriminator_loss(gp_cfg, HalfD(), real, fake)
    torch.testing.assert_close(unscaled["gp"], torch.tensor(1.0))
    # With the loss-scaler factor it sees the true gradient.
    _, scaled = discriminator_loss(gp_cfg, HalfD(), real, fake, grad_scale=2.0**16)
    assert scaled["gp"].item() < 1e-4
    _, r1 = discriminator_loss(r1_cfg, HalfD(), real, fake, grad_scale=2.0**16)
    torch.testing.assert_close(r1["r1"], torch.tensor(true_norm**2), rtol=2e-3, atol=0)


def test_wgan_gp_interpolates_between_real_and_fake():
    seen = []

    def D(x):
        seen.append(x.detach())
        return x.sum(dim=(1, 2, 3))

    real, fake = torch.zeros(64, *SHAPE), torch.ones(64, *SHAPE)
    discriminator_loss(_cfg("wgan_gp"), D, real, fake)
    mixed = seen[2]
    # One u per sample, uniform in (0, 1).
    per_sample = mixed.flatten(1)
    assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample))
    u = per_sample[:, 0]
    assert 0 < u.min() and u.max() < 1 and u.std() > 0.1


def test_wgan_gp_every_step_and_off_at_zero_lambda():
    # `regularize` is the lazy-R1 switch; the WGAN-GP penalty belongs to the objective itself.
    _, stats = discriminator_loss(_cfg("wgan_gp"), LinearD(), _batch(1), _batch(2), regularize=False)
    assert "gp" in stats
    D = LinearD()
    loss, stats = discriminator_loss(_cfg("wgan_gp", gp_lambda=0.0, drift=0.0), D, _batch(1), _batch(2))
    assert "gp" not in stats and D.calls == 2
    torch.testing.assert_close(loss, stats["score_fake"] - stats["score_real"])


def test_discriminator_loss_does_not_train_generator():
    g_param = torch.nn.Parameter(torch.tensor(2.0))
    fake = _batch(2) * g_param
    for name in ("wgan_gp", "logistic", "lsgan"):
        loss, _ = discriminator_loss(_cfg(name), LinearD(), _batch(1), fake)
        loss.backward()
        assert g_param.grad is None, name


# --------------------------------------------------------------------------- logistic + R1


def test_logistic_r1_matches_hand_computation():
    cfg = _cfg("logistic", r1_gamma=10.0, r1_every=1)
    D, real, fake = LinearD(), _batch(1), _batch(2)
    loss, stats = discriminator_loss(cfg, D, real, fake)
    assert D.calls == 2  # R1 reuses the D(real) forward
    assert not real.requires_grad  # the caller's tensor is left alone

    w, b = D.w.detach(), D.b.detach()
    s_real, s_fake = (real * w).sum((1, 2, 3)) + b, (fake * w).sum((1, 2, 3)) + b
    r1 = w.square().sum()
    expected = F.softplus(s_fake).mean() + F.softplus(-s_real).mean() + 5.0 * r1
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["r1"], r1)

    loss.backward()
    expected_grad = (
        (torch.sigmoid(s_fake).view(-1, 1, 1, 1) * fake).mean(0)
        - (torch.sigmoid(-s_real).view(-1, 1, 1, 1) * real).mean(0)
        + 5.0 * 2 * w
    )
    torch.testing.assert_close(D.w.grad, expected_grad)


def test_r1_lazy_multiplier_and_skip():
    real, fake = _batch(1), _batch(2)
    D = LinearD()
    base, _ = discriminator_loss(_cfg("logistic", r1_gamma=0.0), D, real, fake)
    lazy, stats = discriminator_loss(_cfg("logistic", r1_gamma=10.0, r1_every=4), D, real, fake)
    torch.testing.assert_close(lazy - base, 4 * 5.0 * D.w.detach().square().sum())
    skipped, stats = discriminator_loss(_cfg("logistic", r1_gamma=10.0, r1_every=4), D, real, fake,
                                        regularize=False)
    assert "r1" not in stats
    torch.testing.assert_close(skipped, base)


def test_r1_same_under_grad_scale():
    cfg = _cfg("logistic", r1_gamma=10.0)
    a, _ = discriminator_loss(cfg, LinearD(), _batch(1), _batch(2), grad_scale=1.0)
    b, _ = discriminator_loss(cfg, LinearD(), _batch(1), _batch(2), grad_scale=1024.0)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- lsgan


def test_lsgan_matches_hand_computation():
    D, real, fake = LinearD(), _batch(1), _batch(2)
    loss, stats = discriminator_loss(_cfg("lsgan"), D, real, fake)
    w, b = D.w.detach(), D.b.detach()
    s_real, s_fake = (real * w).sum((1, 2, 3)) + b, (fake * w).sum((1, 2, 3)) + b
    torch.testing.assert_close(loss, 0.5 * ((s_real - 1) ** 2).mean() + 0.5 * (s_fake**2).mean())
    assert set(stats) == {"loss_d", "score_real", "score_fake"}


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "name, expected",
    [
        ("wgan_gp", lambda s: -s.mean()),
        ("logistic", lambda s: torch.log1p(torch.exp(-s)).mean()),
        ("lsgan", lambda s: 0.5 * ((s - 1) ** 2).mean()),
    ],
)
def test_generator_losses(name, expected):
    scores = torch.tensor([-2.0, -0.5, 0.0, 1.5], requires_grad=True)
    loss, stats = generator_loss(_cfg(name), scores)
    torch.testing.assert_close(loss, expected(scores.detach()))
    torch.testing.assert_close(stats["loss_g"], loss.detach())
    loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_unknown_loss_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        generator_loss(_cfg("hinge"), torch.zeros(2))
    with pytest.raises(ValueError, match="unknown loss"):
        discriminator_loss(_cfg("hinge"), LinearD(), _batch(1), _batch(2))
