"""ProGAN networks: shapes per resolution, fade-in, no compute for zero-weight branches, widths."""

from __future__ import annotations

import math

import pytest
import torch

from gan_hr.config import LossConfig, ModelConfig
from gan_hr.losses import discriminator_loss
from gan_hr.models.progan import ProGANDiscriminator, ProGANGenerator
from gan_hr.nn.layers import downsample2x, upsample2x

MAX_RES = 64
RESOLUTIONS = [4, 8, 16, 32, 64]
TINY = ModelConfig(latent_dim=32, channel_base=256, channel_max=32, mbstd_group_size=4)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G = ProGANGenerator(TINY, MAX_RES)
    D = ProGANDiscriminator(TINY, MAX_RES)
    # Non-zero biases so that no branch is trivially zero.
    with torch.no_grad():
        for p in (*G.parameters(), *D.parameters()):
            if p.ndim == 1:
                p.normal_(0, 0.1)
    return G, D


def _z(n=4, seed=1):
    return torch.randn(n, TINY.latent_dim, generator=torch.Generator().manual_seed(seed))


def _img(n, res, seed=2):
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_output_shapes(nets, res):
    G, D = nets
    for alpha in (0.0, 0.5, 1.0):
        with torch.no_grad():
            img = G(_z(), res, alpha)
            assert img.shape == (4, 3, res, res)
            scores = D(img, res, alpha)
        assert scores.shape == (4,)
        assert torch.isfinite(img).all() and torch.isfinite(scores).all()


def test_blocks_built_up_front_with_expected_widths(nets):
    G, D = nets
    assert list(G.blocks) == [f"b{r}" for r in RESOLUTIONS] == list(D.blocks)
    assert G.latent_dim == 32 and G.max_res == D.max_res == MAX_RES
    # channel_base 256, channel_max 32: widths 32, 32, 16, 8, 4 at 4..64.
    assert G.blocks["b4"].conv.conv.weight.shape == (32, 32, 3, 3)
    assert G.blocks["b16"].conv0.conv.weight.shape == (16, 32, 3, 3)
    assert G.blocks["b64"].to_rgb.conv.weight.shape == (3, 4, 1, 1)
    assert D.blocks["b64"].from_rgb.conv.weight.shape == (4, 3, 1, 1)
    assert D.blocks["b64"].conv1.conv.weight.shape == (8, 4, 3, 3)
    assert D.blocks["b4"].conv.conv.weight.shape == (32, 33, 3, 3)  # + minibatch stddev map
    assert D.blocks["b4"].dense.weight.shape == (32, 32 * 16)


def test_generator_input_block_follows_official_code(nets):
    G, _ = nets
    dense = G.blocks["b4"].dense
    assert dense.weight.shape == (32 * 16, 32)
    assert dense.weight_scale == pytest.approx(math.sqrt(2) / 4 / math.sqrt(32))
    assert dense.bias is None and G.blocks["b4"].bias.shape == (32,)


def test_latent_is_pixel_normalised(nets):
    G, _ = nets
    with torch.no_grad():
        torch.testing.assert_close(G(_z(), 16), G(_z() * 7.0, 16))


def test_every_feature_map_pixel_normalised(nets):
    G, _ = nets
    feats = {}
    hooks = [G.blocks[k].register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o)) for k in ("b4", "b8")]
    with torch.no_grad():
        G(_z(), 8)
    for h in hooks:
        h.remove()
    for out in feats.values():
        torch.testing.assert_close(out.square().mean(dim=1), torch.ones_like(out[:, 0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("res", [8, 32, 64])
def test_generator_alpha_zero_is_previous_resolution_upsampled(nets, res):
    G, _ = nets
    with torch.no_grad():
        torch.testing.assert_close(G(_z(), res, 0.0), upsample2x(G(_z(), res // 2, 1.0)))


@pytest.mark.parametrize("res", [8, 64])
def test_discriminator_alpha_zero_is_lower_resolution_on_downsampled_image(nets, res):
    _, D = nets
    img = _img(4, res)
    with torch.no_grad():
        torch.testing.assert_close(D(img, res, 0.0), D(downsample2x(img), res // 2, 1.0))


def test_alpha_interpolates_linearly(nets):
    G, D = nets
    img = _img(4, 16)
    with torch.no_grad():
        g0, g1, g = G(_z(), 16, 0.0), G(_z(), 16, 1.0), G(_z(), 16, 0.25)
        torch.testing.assert_close(g, 0.75 * g0 + 0.25 * g1)
        assert not torch.allclose(g0, g1, atol=1e-3)
        # D is not linear in alpha (the blend happens inside), but it differs from both ends.
        d0, d1, d = D(img, 16, 0.0), D(img, 16, 1.0), D(img, 16, 0.25)
    assert not torch.allclose(d, d0) and not torch.allclose(d, d1)


def test_alpha_one_ignores_old_rgb_layers():
    torch.manual_seed(0)
    G, D = ProGANGenerator(TINY, 32), ProGANDiscriminator(TINY, 32)
    z, img = _z(), _img(4, 16)
    with torch.no_grad():
        g_before, d_before = G(z, 16, 1.0), D(img, 16, 1.0)
        G.blocks["b8"].to_rgb.conv.weight.add_(1.0)
        D.blocks["b8"].from_rgb.conv.weight.add_(1.0)
        torch.testing.assert_close(G(z, 16, 1.0), g_before)
        torch.testing.assert_close(D(img, 16, 1.0), d_before)
        # The perturbed layers do matter while fading.
        assert not torch.allclose(G(z, 16, 0.5), g_before)


def _grads(model):
    return {name: p.grad for name, p in model.named_parameters()}


def test_no_compute_for_zero_weight_branches():
    torch.manual_seed(0)
    G, D = ProGANGenerator(TINY, 32), ProGANDiscriminator(TINY, 32)
    z = _z()

    D(G(z, 16, 1.0), 16, 1.0).sum().backward()
    g, d = _grads(G), _grads(D)
    assert g["blocks.b8.to_rgb.conv.weight"] is None and d["blocks.b8.from_rgb.conv.weight"] is None
    assert g["blocks.b16.to_rgb.conv.weight"] is not None and d["blocks.b16.from_rgb.conv.weight"] is not None
    # Blocks above the current resolution never run.
    assert all(v is None for k, v in {**g, **d}.items() if k.startswith("blocks.b32."))

    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    D(G(z, 16, 0.0), 16, 0.0).sum().backward()
    g, d = _grads(G), _grads(D)
    assert all(v is None for k, v in {**g, **d}.items() if k.startswith(("blocks.b16.", "blocks.b32.")))
    assert g["blocks.b8.to_rgb.conv.weight"] is not None and d["blocks.b8.from_rgb.conv.weight"] is not None

    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    D(G(z, 16, 0.5), 16, 0.5).sum().backward()
    # While fading, everything up to 16² gets a gradient except the 4x4 RGB layers (used at 4² only).
    unused = ("blocks.b32.", "blocks.b4.to_rgb.", "blocks.b4.from_rgb.")
    assert all(v is not None for k, v in {**_grads(G), **_grads(D)}.items() if not k.startswith(unused))


def test_start_resolution_has_no_fade(nets):
    G, D = nets
    with torch.no_grad():
        torch.testing.assert_close(G(_z(), 4, 0.3), G(_z(), 4, 1.0))
        torch.testing.assert_close(D(_img(4, 4), 4, 0.3), D(_img(4, 4), 4, 1.0))


def test_invalid_arguments_rejected(nets):
    G, D = nets
    for res in (2, 6, 128):
        with pytest.raises(ValueError, match="resolution"):
            G(_z(), res)
        with pytest.raises(ValueError, match="resolution"):
            D(_img(2, 8), res)
    with pytest.raises(ValueError, match="alpha"):
        G(_z(), 8, 1.5)
    with pytest.raises(ValueError, match="images"):
        D(_img(2, 16), 8)
    with pytest.raises(ValueError, match="z"):
        G(torch.randn(2, 7), 8)
    with pytest.raises(ValueError, match="max_res"):
        ProGANGenerator(TINY, 48)


def test_minibatch_stddev_in_discriminator():
    torch.manual_seed(0)
    D = ProGANDiscriminator(TINY, 8)
    # Batch 6 with group size 4 uses groups of 3; a sample's score depends on its group mates.
    img = _img(6, 8)
    with torch.no_grad():
        scores = D(img, 8)
        img2 = img.clone()
        img2[2] += 1.0  # groups are {0, 2, 4} and {1, 3, 5}
        changed = D(img2, 8)
    assert scores.shape == (6,)
    torch.testing.assert_close(changed[[1, 3, 5]], scores[[1, 3, 5]])
    assert not torch.allclose(changed[[0, 4]], scores[[0, 4]])

    off = ProGANDiscriminator(ModelConfig(latent_dim=32, channel_base=256, channel_max=32, mbstd_group_size=0), 8)
    assert off.blocks["b4"].mbstd is None and off.blocks["b4"].conv.conv.weight.shape[1] == 32
    with torch.no_grad():
        a = off(img, 8)
        b = off(img2, 8)
    torch.testing.assert_close(a[[0, 1, 3, 4, 5]], b[[0, 1, 3, 4, 5]])


def test_paper_widths_and_parameter_counts():
    # Karras et al. 2018, Table 2 (CelebA-HQ 1024²): 23.1M parameters in each network.
    G, D = ProGANGenerator(ModelConfig(), 1024), ProGANDiscriminator(ModelConfig(), 1024)
    g_widths = [G.blocks["b4"].channels] + [G.blocks[f"b{2**i}"].out_channels for i in range(3, 11)]
    assert g_widths == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    d_widths = [D.blocks[f"b{2**i}"].in_channels for i in range(3, 11)]
    assert d_widths == [512, 512, 512, 256, 128, 64, 32, 16]
    for net in (G, D):
        assert round(sum(p.numel() for p in net.parameters()) / 1e5) == 231


@pytest.mark.parametrize("loss_name", ["wgan_gp", "logistic"])
def test_penalised_step_under_bf16_autocast(nets, loss_name):
    # The trainer runs models and losses under autocast; the fade blend, minibatch stddev and
    # the double backward of the penalties must all work with mixed dtypes.
    G, D = nets
    D.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(_z(), 16, 0.5)
        assert fake.dtype == torch.bfloat16
        loss, stats = discriminator_loss(LossConfig(name=loss_name), lambda x: D(x, 16, 0.5), _img(4, 16), fake)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert D.blocks["b16"].conv0.conv.weight.grad is not None
    D.zero_grad(set_to_none=True)
