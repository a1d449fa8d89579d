"""StyleGAN generator: AdaIN, demodulation, noise, blur, mapping lr multiplier, truncation, style mixing,
w_avg, progressive fade-in, autocast and double backward. Tiny widths so the file runs in seconds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gan_hr.config import ModelConfig
from gan_hr.models.progan import ProGANDiscriminator
from gan_hr.models.stylegan import StyleGANDiscriminator, StyleGANGenerator
from gan_hr.nn.equalized import EqualLinear
from gan_hr.nn.layers import Blur2d, upsample2x
from gan_hr.nn.style import AdaIN, NoiseInjection, StyledConv, adain, demodulation

DIM = 32
MAX_RES = 64


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(
        name="stylegan", latent_dim=DIM, w_dim=DIM, channel_base=256, channel_max=32,
        mapping_layers=2, truncation_cutoff=4,
    )
    base.update(overrides)
    return ModelConfig(**base)


def make_g(max_res: int = MAX_RES, **overrides) -> StyleGANGenerator:
    torch.manual_seed(0)
    return StyleGANGenerator(tiny_cfg(**overrides), max_res)


def set_noise_strength(g: StyleGANGenerator, value: float) -> None:
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(value)


def capture_ws(g: StyleGANGenerator) -> list[torch.Tensor]:
    """Record the ws every synthesis call receives."""
    seen: list[torch.Tensor] = []
    g.synthesis.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# --------------------------------------------------------------------------- building blocks


def test_adain_output_has_the_styles_mean_and_std():
    torch.manual_seed(1)
    layer = AdaIN(w_dim=8, channels=5)
    x = torch.randn(3, 5, 8, 8) * torch.rand(1, 5, 1, 1) * 4 + torch.randn(1, 5, 1, 1) * 3
    w = torch.randn(3, 8)
    scale, bias = layer.affine(w).chunk(2, dim=1)
    out = layer(x, w)
    var, mean = torch.var_mean(out, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var.sqrt(), scale.abs(), atol=1e-4, rtol=1e-4)


def test_adain_starts_as_plain_instance_norm():
    layer = AdaIN(w_dim=8, channels=4)
    torch.testing.assert_close(layer.affine.bias, torch.tensor([1.0] * 4 + [0.0] * 4))
    with torch.no_grad():
        layer.affine.weight.zero_()
    x = torch.randn(2, 4, 6, 6) * 3 + 1
    torch.testing.assert_close(layer(x, torch.randn(2, 8)), F.instance_norm(x, eps=1e-8), atol=1e-5, rtol=1e-5)
    # The functional form with an explicit style.
    scale, bias = torch.full((2, 4), 2.0), torch.full((2, 4), -1.0)
    torch.testing.assert_close(adain(x, scale, bias), 2 * F.instance_norm(x, eps=1e-8) - 1, atol=1e-5, rtol=1e-5)


def test_demodulation_gives_every_output_channel_unit_std_whatever_the_style():
    torch.manual_seed(2)
    weight = torch.randn(6, 5, 3, 3) * torch.rand(6, 1, 1, 1) * 3
    style = torch.rand(4, 5) * 10 + 0.1
    x = torch.randn(4, 5, 64, 64)
    out = F.conv2d(x * style[:, :, None, None], weight) * demodulation(weight, style)[:, :, None, None]
    # Unpadded conv, so every output pixel sums 45 independent unit-std terms.
    std = out.std(dim=(2, 3))
    torch.testing.assert_close(std, torch.ones_like(std), rtol=0, atol=0.08)
    plain = F.conv2d(x * style[:, :, None, None], weight).std(dim=(2, 3))
    assert plain.max() / plain.min() > 4  # without it the channels spread by the weights and styles


def test_demodulate_replaces_adain_in_every_styled_conv():
    g = make_g(max_res=16, demodulate=True)
    convs = [m for m in g.modules() if isinstance(m, StyledConv)]
    assert len(convs) == 5 and all(c.modulation is not None and c.epilogue.adain is None for c in convs)
    # Only the 4x4 constant, which has no conv to modulate, keeps AdaIN.
    assert [m for m in g.modules() if isinstance(m, AdaIN)] == [g.synthesis.blocks["b4"].layer0.adain]
    assert all(c.modulation is None for c in make_g(max_res=16).modules() if isinstance(c, StyledConv))
    # The style is the identity at init (bias 1), so a layer's output starts at unit scale.
    conv = convs[1]
    torch.testing.assert_close(conv.modulation.bias, torch.ones(conv.conv.weight.shape[1]))
    z = torch.randn(2, DIM)
    for res, alpha in ((4, 1.0), (8, 0.5), (16, 1.0)):
        img = g(z, res, alpha)
        assert img.shape == (2, 3, res, res) and torch.isfinite(img).all()


def test_demodulated_conv_ignores_the_styles_overall_scale():
    torch.manual_seed(3)
    layer = StyledConv(5, 6, w_dim=8, resolution=16, upsample=True, noise=False, demodulate=True)
    x, w = torch.randn(2, 5, 8, 8), torch.randn(2, 8)
    before = layer(x, w)
    with torch.no_grad():
        layer.modulation.weight.mul_(7.0)
        layer.modulation.bias.mul_(7.0)
    # Demodulation divides the scale back out; per-channel ratios of the style still count.
    torch.testing.assert_close(layer(x, w), before, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        layer.modulation.bias[0].mul_(3.0)
    assert not torch.allclose(layer(x, w), before, rtol=1e-3, atol=1e-4)


def test_blur_is_a_normalised_binomial_filter_with_double_backward():
    blur = Blur2d(2)
    x = torch.randn(1, 2, 6, 6)
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    separable = F.conv2d(F.pad(x, (1, 1, 1, 1)).reshape(2, 1, 8, 8), k.view(1, 1, 1, 3))
    separable = F.conv2d(separable, k.view(1, 1, 3, 1)).reshape(1, 2, 6, 6)
    torch.testing.assert_close(blur(x), separable)
    # A constant image stays constant away from the zero-padded border.
    flat = blur(torch.full((1, 2, 5, 5), 3.0))
    torch.testing.assert_close(flat[..., 1:-1, 1:-1], torch.full((1, 2, 3, 3), 3.0))
    x64 = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(blur, (x64,))


# --------------------------------------------------------------------------- noise


def test_noise_is_inert_at_init_and_modes_behave_once_scaled():
    g = make_g().eval()
    z = torch.randn(2, DIM)
    torch.testing.assert_close(g(z, 16, noise_mode="random"), g(z, 16, noise_mode="none"), rtol=0, atol=0)

    set_noise_strength(g, 0.5)
    const_a, const_b = g(z, 16, noise_mode="const"), g(z, 16, noise_mode="const")
    torch.testing.assert_close(const_a, const_b, rtol=0, atol=0)
    assert not torch.allclose(g(z, 16, noise_mode="random"), g(z, 16, noise_mode="random"))
    assert not torch.allclose(const_a, g(z, 16, noise_mode="none"))
    with pytest.raises(ValueError, match="noise_mode"):
        g(z, 16, noise_mode="fixed")


def test_const_noise_is_independent_of_global_rng_and_saved():
    torch.manual_seed(1)
    g1 = StyleGANGenerator(tiny_cfg(), 16)
    torch.manual_seed(2)
    g2 = StyleGANGenerator(tiny_cfg(), 16)
    noise1 = {k: v for k, v in g1.state_dict().items() if k.endswith("const_noise")}
    noise2 = {k: v for k, v in g2.state_dict().items() if k.endswith("const_noise")}
    assert len(noise1) == g1.num_ws
    for key in noise1:
        torch.testing.assert_close(noise1[key], noise2[key], rtol=0, atol=0)
    # Layers get different noise images.
    assert not torch.equal(noise1["synthesis.blocks.b8.layer0.epilogue.noise.const_noise"],
                           noise1["synthesis.blocks.b8.layer1.epilogue.noise.const_noise"])

    # A checkpoint round trip (and an EMA-style deepcopy) reproduces the const-noise image.
    set_noise_strength(g1, 0.3)
    g1.w_avg.normal_()
    g3 = StyleGANGenerator(tiny_cfg(), 16)
    g3.load_state_dict(g1.state_dict())
    z = torch.randn(2, DIM)
    kwargs = dict(truncation_psi=0.5, noise_mode="const")
    ref = g1.eval()(z, 16, **kwargs)
    torch.testing.assert_close(g3.eval()(z, 16, **kwargs), ref, rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(g1)(z, 16, **kwargs), ref, rtol=0, atol=0)


def test_noise_off_builds_no_noise_layers():
    g = make_g(max_res=8, noise=False)
    assert not any(isinstance(m, NoiseInjection) for m in g.modules())
    z = torch.randn(2, DIM)
    torch.testing.assert_close(g.eval()(z, 8, noise_mode="random"), g(z, 8, noise_mode="none"), rtol=0, atol=0)


# --------------------------------------------------------------------------- mapping


def test_mapping_lr_multiplier_scales_the_effective_adam_step():
    lr_mul, lr = 0.01, 1e-3
    g = make_g(mapping_lr_mul=lr_mul)
    # float64: stored weights are 1/lr_mul larger, so a float32 step would drown in rounding.
    for layer in g.mapping.double().layers:
        # A plain equalized layer with the same effective weights.
        ref = EqualLinear(layer.weight.shape[1], layer.weight.shape[0]).double()
        with torch.no_grad():
            ref.weight.copy_(layer.weight * lr_mul)
            ref.bias.copy_(layer.bias * lr_mul)
        x = torch.randn(8, layer.weight.shape[1], dtype=torch.float64)
        t = torch.randn(8, layer.weight.shape[0], dtype=torch.float64)
        torch.testing.assert_close(layer(x), ref(x))

        def effective(m):
            return (m.weight * m.weight_scale).detach().clone(), (m.bias * m.lr_mul).detach().clone()

        steps = []
        for m in (layer, ref):
            before = effective(m)
            opt = torch.optim.Adam(m.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-20)
            opt.zero_grad()
            (m(x) * t).sum().backward()
            opt.step()
            steps.append([a - b for a, b in zip(effective(m), before)])
        # Adam's first step is lr * sign(grad) in stored units: lr_mul times smaller in effect.
        for got, want in zip(*steps):
            torch.testing.assert_close(got, want * lr_mul, rtol=1e-4, atol=0)
            assert want.abs().min() > 0


def test_mapping_normalises_z():
    g = make_g()
    z = torch.randn(3, DIM)
    torch.testing.assert_close(g.mapping(z), g.mapping(z * 7.0))


# --------------------------------------------------------------------------- truncation, w_avg


def test_truncation_psi_zero_gives_w_avg_and_psi_one_changes_nothing():
    g = make_g().eval()
    set_noise_strength(g, 0.2)
    with torch.no_grad():
        g.w_avg.normal_()
    z = torch.randn(3, DIM)
    out = g(z, 16, truncation_psi=0.0, truncation_cutoff=0, noise_mode="const")
    avg_ws = g.w_avg.expand(1, g.num_ws, DIM)
    torch.testing.assert_close(out, g.synthesis(avg_ws, 16, noise_mode="const").expand(3, -1, -1, -1))
    assert not torch.allclose(out[0], g(z, 16, noise_mode="const")[0])
    torch.testing.assert_close(g(z, 16, truncation_psi=1.0, noise_mode="const"), g(z, 16, noise_mode="const"),
                               rtol=0, atol=0)
    # psi = 0 on the coarse layers only still lets z change the image.
    partial = g(z, 16, truncation_psi=0.0, truncation_cutoff=2, noise_mode="const")
    assert not torch.allclose(partial[0], partial[1])


def test_truncate_formula_and_cutoff():
    g = make_g()
    with torch.no_grad():
        g.w_avg.normal_()
    ws = torch.randn(2, g.num_ws, DIM)
    out = g.truncate(ws, 0.7)  # cutoff None: the configured 4
    torch.testing.assert_close(out[:, :4], g.w_avg + 0.7 * (ws[:, :4] - g.w_avg))
    torch.testing.assert_close(out[:, 4:], ws[:, 4:], rtol=0, atol=0)
    torch.testing.assert_close(g.truncate(ws, 0.7, 0), g.w_avg + 0.7 * (ws - g.w_avg))
    torch.testing.assert_close(g.truncate(ws, 0.0, 100), g.w_avg.expand_as(ws))


@pytest.mark.parametrize("mixing_prob", [0.0, 1.0])
def test_w_avg_tracks_the_mean_w_in_training_only(mixing_prob):
    g = make_g(style_mixing_prob=mixing_prob)
    z = torch.randn(6, DIM)
    g.eval()(z, 8)
    assert torch.count_nonzero(g.w_avg) == 0
    g.train()(z, 8)
    with torch.no_grad():
        expected = (1 - g.w_avg_beta) * g.mapping(z).mean(0)  # from z alone, never the mixing latent
    torch.testing.assert_close(g.w_avg, expected)
    second = g(z, 8)
    assert second.shape == (6, 3, 8, 8)
    torch.testing.assert_close(g.w_avg, expected.lerp(g.mapping(z).mean(0).detach(), 1 - g.w_avg_beta))
    assert "w_avg" in g.state_dict()


# --------------------------------------------------------------------------- style mixing


def test_style_mixing_switches_w_once_at_a_random_crossover():
    g = make_g(style_mixing_prob=1.0).train()
    seen = capture_ws(g)
    z = torch.randn(4, DIM)
    used = g.num_ws_at(16)
    with torch.no_grad():
        w1 = g.mapping(z)
    crossovers = set()
    for seed in range(20):
        torch.manual_seed(seed)
        g(z, 16)
        ws = seen[-1]
        assert ws.shape == (4, used, DIM)
        same = [torch.allclose(ws[:, i], w1) for i in range(used)]
        k = same.index(False)
        assert 1 <= k < used and all(same[:k]) and not any(same[k:])
        # Every layer after the crossover holds the same second w.
        torch.testing.assert_close(ws[:, k:], ws[:, k : k + 1].expand_as(ws[:, k:]))
        crossovers.add(k)
    assert len(crossovers) > 3 and crossovers <= set(range(1, used))


@pytest.mark.parametrize("mode", ["eval", "prob0"])
def test_no_style_mixing_in_eval_or_with_zero_probability(mode):
    g = make_g(style_mixing_prob=0.0 if mode == "prob0" else 1.0)
    g.train(mode == "prob0")
    seen = capture_ws(g)
    z = torch.randn(3, DIM)
    g(z, 16)
    with torch.no_grad():
        w1 = g.mapping(z)
    torch.testing.assert_close(seen[-1], w1[:, None].expand(-1, g.num_ws_at(16), -1))


# --------------------------------------------------------------------------- synthesis, fade-in


def test_shapes_at_every_resolution():
    g = make_g()
    assert (g.latent_dim, g.max_res, g.num_ws) == (DIM, MAX_RES, 10)
    z = torch.randn(2, DIM)
    for i, res in enumerate([4, 8, 16, 32, 64]):
        assert g.num_ws_at(res) == 2 * (i + 1)
        for alpha in (0.0, 0.5, 1.0):
            assert g(z, res, alpha).shape == (2, 3, res, res)
    for bad in (2, 12, 128):
        with pytest.raises(ValueError):
            g(z, bad)
    with pytest.raises(ValueError):
        g(z, 8, 1.5)


def test_fade_in_interpolates_between_old_and_new_outputs():
    g = make_g()
    set_noise_strength(g, 0.2)
    ws = torch.randn(2, g.num_ws, DIM)
    with torch.no_grad():
        for res in (8, 16, 32, 64):
            old = upsample2x(g.synthesis(ws, res // 2, 1.0, noise_mode="const"))
            new = g.synthesis(ws, res, 1.0, noise_mode="const")
            torch.testing.assert_close(g.synthesis(ws, res, 0.0, noise_mode="const"), old, rtol=0, atol=0)
            torch.testing.assert_close(g.synthesis(ws, res, 0.3, noise_mode="const"), torch.lerp(old, new, 0.3))


def test_fade_in_end_points_skip_the_unused_branch():
    g = make_g()
    ws = torch.randn(2, g.num_ws, DIM)
    b16, b32 = g.synthesis.blocks["b16"], g.synthesis.blocks["b32"]

    g.synthesis(ws, 32, 1.0).square().mean().backward()
    assert b16.to_rgb.conv.weight.grad is None
    assert b32.to_rgb.conv.weight.grad is not None

    g.zero_grad(set_to_none=True)
    g.synthesis(ws, 32, 0.0).square().mean().backward()
    assert all(p.grad is None for p in b32.parameters())
    assert b16.to_rgb.conv.weight.grad is not None

    g.zero_grad(set_to_none=True)
    g.synthesis(ws, 32, 0.5).square().mean().backward()
    assert b16.to_rgb.conv.weight.grad is not None and b32.to_rgb.conv.weight.grad is not None


def test_blur_follows_the_config():
    assert make_g(max_res=8).synthesis.blocks["b8"].layer0.blur is not None
    assert make_g(max_res=8, blur=False).synthesis.blocks["b8"].layer0.blur is None


def test_discriminator_blurs_before_every_downsampling_as_the_official_one():
    """StyleGAN's D is ProGAN's (same parameters, so the same checkpoints) with conv0 -> blur ->
    conv1 -> downsample in every block; with model.blur off it computes exactly ProGAN's D."""
    torch.manual_seed(0)
    blurred = StyleGANDiscriminator(tiny_cfg(), 32)
    plain = ProGANDiscriminator(tiny_cfg(), 32)
    plain.load_state_dict(blurred.state_dict())
    assert blurred.state_dict().keys() == plain.state_dict().keys()
    assert all(blurred.blocks[f"b{r}"].blur is not None for r in (8, 16, 32))
    img = torch.randn(4, 3, 32, 32)
    sharp = blurred.blocks["b32"].conv0(blurred.blocks["b32"].from_rgb(img))
    expected = Blur2d(sharp.shape[1])(sharp)
    seen = []
    blurred.blocks["b32"].conv1.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = blurred(img, 32, 0.5)
    torch.testing.assert_close(seen[0], expected)
    assert not torch.allclose(out, plain(img, 32, 0.5))
    unblurred = StyleGANDiscriminator(tiny_cfg(blur=False), 32)
    unblurred.load_state_dict(blurred.state_dict())
    torch.testing.assert_close(unblurred(img, 32, 0.5), plain(img, 32, 0.5))


# --------------------------------------------------------------------------- precision, autograd


@pytest.mark.parametrize("demodulate", [False, True], ids=["adain", "demodulate"])
def test_backward_and_double_backward_under_bf16_autocast(demodulate):
    g = make_g(max_res=32, demodulate=demodulate).train()
    set_noise_strength(g, 0.1)
    z = torch.randn(4, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g(z, 32, 0.5)
        assert out.dtype == torch.bfloat16
        loss = out.float().square().mean()
    loss.backward()
    # Everything but the to-RGBs below the fading pair takes part.
    unused = {"synthesis.blocks.b4.to_rgb", "synthesis.blocks.b8.to_rgb"}
    for name, p in g.named_parameters():
        if name.rsplit(".", 2)[0] not in unused:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in g.mapping.parameters())

    # Path-length style penalty: gradient w.r.t. ws with create_graph, then backward through it
    # (double backward through the blur, AdaIN or demodulation, and noise).
    g.zero_grad(set_to_none=True)
    ws = g.mapping(z)[:, None].expand(-1, g.num_ws, -1).detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = g.synthesis(ws, 32, 1.0)
        (grad,) = torch.autograd.grad((img.float() * torch.randn(img.shape)).sum(), ws, create_graph=True)
        penalty = grad.float().square().sum()
    penalty.backward()
    blur_conv = g.synthesis.blocks["b32"].layer0.conv.weight
    assert blur_conv.grad is not None and torch.isfinite(blur_conv.grad).all() and blur_conv.grad.abs().sum() > 0
