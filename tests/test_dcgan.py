"""DCGAN/LSGAN networks: shapes, the paper's layer structure, initialisation, trainability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.models.dcgan import (
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_channels,
    init_dcgan_weights,
)

TINY = ModelConfig(latent_dim=16, base_width=8)


def _pair(res: int, cfg: ModelConfig = TINY) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    torch.manual_seed(0)
    return DCGANGenerator(cfg, res), DCGANDiscriminator(cfg, res)


def _layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def _leaf_kinds(module: nn.Module) -> list[str]:
    """Leaf layer types in forward order (blocks are registered in the order they run)."""
    leaves = [m for m in module.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    return [type(m).__name__ for m in leaves]


@pytest.mark.parametrize("res", [64, 128])
def test_output_shapes_and_ranges(res: int) -> None:
    G, D = _pair(res)
    assert (G.latent_dim, G.max_res, D.max_res) == (16, res, res)
    z = torch.randn(3, 16)
    img = G(z, res, alpha=0.5)
    assert img.shape == (3, 3, res, res)
    assert img.abs().max() <= 1.0
    score = D(img, res)
    assert score.shape == (3,)
    assert torch.isfinite(score).all()

    # Blow up the last layer: without the tanh the images would leave [-1, 1].
    with torch.no_grad():
        G.to_rgb[0].weight.mul_(1e4)
    img = G(z, res)
    assert img.abs().max() <= 1.0
    assert img.abs().max() > 0.99


def test_channel_rule() -> None:
    assert [dcgan_channels(r, 64, 64) for r in (4, 8, 16, 32)] == [512, 256, 128, 64]
    assert [dcgan_channels(r, 128, 64) for r in (4, 8, 16, 32, 64)] == [512, 512, 256, 128, 64]
    assert [dcgan_channels(r, 32, 64) for r in (4, 8, 16)] == [256, 128, 64]


def test_structure_matches_standard_dcgan_64() -> None:
    cfg = ModelConfig(latent_dim=100, base_width=64)
    G, D = DCGANGenerator(cfg, 64), DCGANDiscriminator(cfg, 64)
    assert not _layers(G, nn.Linear) and not _layers(D, nn.Linear)

    convs_t = _layers(G, nn.ConvTranspose2d)
    assert [(c.in_channels, c.out_channels) for c in convs_t] == [
        (100, 512), (512, 256), (256, 128), (128, 64), (64, 3)
    ]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs_t] == [((4, 4), (1, 1), (0, 0))] + [
        ((4, 4), (2, 2), (1, 1))
    ] * 4
    assert _leaf_kinds(G) == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 4 + ["ConvTranspose2d", "Tanh"]

    convs = _layers(D, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64), (64, 128), (128, 256), (256, 512), (512, 1)
    ]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((4, 4), (2, 2), (1, 1))] * 4 + [
        ((4, 4), (1, 1), (0, 0))
    ]
    assert _leaf_kinds(D) == ["Conv2d", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3 + ["Conv2d"]
    assert all(a.negative_slope == 0.2 for a in _layers(D, nn.LeakyReLU))
    # The standard nets' sizes (PyTorch's DCGAN example, plus the biases of layers without BN).
    assert sum(p.numel() for p in G.parameters()) == 3_576_704 + 3
    assert sum(p.numel() for p in D.parameters()) == 2_765_568 + 64 + 1


def test_larger_nets_add_capped_blocks() -> None:
    cfg = ModelConfig(latent_dim=100, base_width=64)
    G, D = DCGANGenerator(cfg, 256), DCGANDiscriminator(cfg, 256)
    assert [c.out_channels for c in _layers(G, nn.ConvTranspose2d)] == [512, 512, 512, 256, 128, 64, 3]
    assert [c.out_channels for c in _layers(D, nn.Conv2d)] == [64, 128, 256, 512, 512, 512, 1]
    assert len(_layers(D, nn.BatchNorm2d)) == 5


def _check_init(module: nn.Module) -> None:
    biggest = max(_layers(module, (nn.Conv2d, nn.ConvTranspose2d)), key=lambda m: m.weight.numel())
    w = biggest.weight.detach()
    assert w.numel() > 1_000_000
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    for conv in _layers(module, (nn.Conv2d, nn.ConvTranspose2d)):
        assert conv.weight.std().item() == pytest.approx(0.02, rel=0.25)
        if conv.bias is not None:
            assert torch.all(conv.bias == 0)
    norms = _layers(module, nn.modules.batchnorm._BatchNorm)
    scale = torch.cat([n.weight.detach() for n in norms])
    assert scale.numel() >= 896
    assert scale.mean().item() == pytest.approx(1.0, abs=0.005)
    assert scale.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(torch.all(n.bias == 0) for n in norms)


def test_initialisation_statistics() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(latent_dim=100, base_width=64)
    _check_init(DCGANGenerator(cfg, 64))
    _check_init(DCGANDiscriminator(cfg, 64))


def test_init_applies_to_sync_batchnorm() -> None:
    torch.manual_seed(0)
    D = nn.SyncBatchNorm.convert_sync_batchnorm(DCGANDiscriminator(ModelConfig(base_width=64), 64))
    for m in D.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.ones_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)
    init_dcgan_weights(D)
    assert _layers(D, nn.SyncBatchNorm)
    _check_init(D)


@pytest.mark.parametrize("bad", [16, 48, 100, 0, -64, 64.0, True])
def test_invalid_max_res_rejected(bad) -> None:
    with pytest.raises(ValueError, match="power of two >= 32"):
        DCGANGenerator(TINY, bad)
    with pytest.raises(ValueError, match="power of two >= 32"):
        DCGANDiscriminator(TINY, bad)


def test_wrong_inputs_rejected() -> None:
    G, D = _pair(32)
    with pytest.raises(ValueError, match="32"):
        G(torch.randn(2, 16), 64)
    with pytest.raises(ValueError, match="32"):
        D(torch.randn(2, 3, 32, 32), 16)
    with pytest.raises(ValueError, match="z of shape"):
        G(torch.randn(2, 15), 32)
    with pytest.raises(ValueError, match="images of shape"):
        D(torch.randn(2, 3, 64, 64), 32)


# (D loss of real and fake scores, G loss of fake scores) on raw scores.
LOSSES = {
    "bce": (
        lambda real, fake: F.softplus(-real).mean() + F.softplus(fake).mean(),
        lambda fake: F.softplus(-fake).mean(),
    ),
    "least_squares": (
        lambda real, fake: 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean(),
        lambda fake: 0.5 * ((fake - 1) ** 2).mean(),
    ),
}


@pytest.mark.parametrize("loss", LOSSES)
def test_few_steps_train_every_parameter(loss: str) -> None:
    d_loss_fn, g_loss_fn = LOSSES[loss]
    res, n = 32, 8
    G, D = _pair(res)
    before = {f"G.{k}": v.clone() for k, v in G.state_dict().items()}
    before |= {f"D.{k}": v.clone() for k, v in D.state_dict().items()}
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(n, 3, res, res, generator=gen) * 2 - 1
    d_losses = []
    for _ in range(6):
        fake = G(torch.randn(n, 16, generator=gen), res)
        d_loss = d_loss_fn(D(real, res), D(fake.detach(), res))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        d_losses.append(d_loss.item())

        fake = G(torch.randn(n, 16, generator=gen), res)
        g_loss = g_loss_fn(D(fake, res))
        opt_g.zero_grad()
        g_loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
        opt_g.step()
        assert torch.isfinite(g_loss)

    after = {f"G.{k}": v for k, v in G.state_dict().items()}
    after |= {f"D.{k}": v for k, v in D.state_dict().items()}
    unchanged = [k for k in before if "num_batches" not in k and torch.equal(before[k], after[k])]
    assert not unchanged
    # D quickly learns to tell the fixed real batch from fakes.
    assert d_losses[-1] < d_losses[0]


def test_bf16_autocast_forward_backward() -> None:
    res = 32
    G, D = _pair(res)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(torch.randn(4, 16), res)
        score = D(img, res)
    assert img.shape == (4, 3, res, res) and score.shape == (4,)
    F.softplus(-score.float()).mean().backward()
    for p in list(G.parameters()) + list(D.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in G.parameters())
