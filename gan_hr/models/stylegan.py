"""StyleGAN generator (Karras et al., CVPR 2019), grown progressively like ProGAN.

z -> mapping network -> w; w is broadcast to one copy per synthesis layer ("ws", two layers per
resolution), optionally mixed with a second w (style mixing regularisation, training only) and
pulled towards the running mean `w_avg` (truncation trick). The synthesis network starts from a
learned 4x4 constant; each layer is conv -> [blur] -> noise -> bias -> leaky ReLU -> AdaIN(w),
or with `model.demodulate` (StyleGAN2's, Karras et al. 2020) a conv modulated by w and
demodulated, then the same without AdaIN (gan_hr/nn/style.py).
Each resolution has its own to-RGB; a new resolution fades in with `alpha` as in ProGAN.

Choices this module makes (documented because callers depend on them):
- `truncation_cutoff`: None means the model's configured cutoff (`ModelConfig.truncation_cutoff`,
  8 by default, the paper's); 0 means every layer.
- `noise_mode="const"` uses per-layer noise images stored as persistent buffers, fixed at
  construction by a seed derived from the layer index (independent of the global RNG), so the
  same z gives the same image every time and EMA copies / checkpoints carry the same noise.
  There is no per-call noise seed: seed the global RNG and use "random" for other noise draws.
- `w_avg` is updated in every training-mode forward (as the official code does); an EMA copy of
  G must copy buffers from G (as the official `beta_nontrainable=0` does), since its own forward
  runs in eval mode.
- Conditional (`model.conditional`): the mapping network embeds the label vector y [N, A]
  (gan_hr/labels.py) linearly, pixel-normalises the embedding as it does z and concatenates the
  two (StyleGAN2-ADA's conditional mapping); D is ProGAN's with its projection term. Truncation
  pulls towards the sample's own class centre: `w_avg_class` [classes, w_dim] is a running mean
  of w per class, updated like `w_avg` from the samples of that class in the batch (a class
  absent from a batch keeps its value), and kept in checkpoints. Attributes have no classes to
  track: the centre of a label vector is the mean w of `ATTRIBUTE_CENTRE_LATENTS` fixed latents
  with that label, computed when truncating.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_hr.config import ModelConfig
from gan_hr.labels import check_labels, num_labels
from gan_hr.models.progan import ProGANDiscriminator
from gan_hr.nn.equalized import EqualLinear
from gan_hr.nn.layers import (
    LRELU_SLOPE,
    ToRGB,
    check_alpha,
    check_resolution,
    expect_shape,
    num_channels,
    pixel_norm,
    upsample2x,
)
from gan_hr.nn.style import NOISE_MODES, StyledConv, StyleEpilogue
from gan_hr.resolutions import check_max_res, resolutions_between

__all__ = ["MappingNetwork", "StyleGANDiscriminator", "StyleGANGenerator", "SynthesisBlock", "SynthesisNetwork"]

_MIN_RES = 4
# Latents (from a fixed seed) whose mean w is the truncation centre of an attribute vector.
ATTRIBUTE_CENTRE_LATENTS = 256


class MappingNetwork(nn.Module):
    """z -> pixel norm -> `num_layers` x (equalized linear + leaky ReLU) -> w.

    `lr_mul` (0.01 in the paper) slows the mapping network's effective learning rate under Adam.
    """

    def __init__(self, latent_dim: int, w_dim: int, num_layers: int, lr_mul: float, num_labels: int = 0) -> None:
        super().__init__()
        # Conditional: a latent_dim-wide label embedding joins z at the input.
        dims = [latent_dim * (2 if num_labels else 1)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualLinear(i, o, lr_mul=lr_mul) for i, o in zip(dims[:-1], dims[1:]))
        self.embed = EqualLinear(num_labels, latent_dim, gain=1.0) if num_labels else None

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = pixel_norm(z)
        if self.embed is not None:
            x = torch.cat([x, pixel_norm(self.embed(labels.to(z.dtype)))], dim=1)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: two styled layers (at 4x4 the learned constant and one conv) and a to-RGB.

    Consumes two ws: ws[:, 0] for the first layer, ws[:, 1] for the second.
    """

    def __init__(
        self, resolution: int, in_channels: int, out_channels: int, w_dim: int,
        *, blur: bool, noise: bool, demodulate: bool, first_layer: int,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        if resolution == _MIN_RES:
            # Ones, like the official initialisation of the constant input.
            self.const = nn.Parameter(torch.ones(1, out_channels, resolution, resolution))
            self.layer0 = StyleEpilogue(out_channels, w_dim, resolution, noise=noise, noise_seed=first_layer)
        else:
            self.const = None
            self.layer0 = StyledConv(
                in_channels, out_channels, w_dim, resolution,
                upsample=True, blur=blur, noise=noise, noise_seed=first_layer, demodulate=demodulate,
            )
        self.layer1 = StyledConv(
            out_channels, out_channels, w_dim, resolution,
            noise=noise, noise_seed=first_layer + 1, demodulate=demodulate,
        )
        self.to_rgb = ToRGB(out_channels)

    def forward(self, x: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """x: the previous block's features (None for the first block); ws: [N, 2, w_dim]."""
        if self.const is not None:
            x = self.layer0(self.const.expand(ws.shape[0], -1, -1, -1), ws[:, 0], noise_mode)
        else:
            expect_shape(x, self.in_channels, self.resolution // 2, f"SynthesisBlock {self.resolution} input")
            x = self.layer0(x, ws[:, 0], noise_mode)
        x = self.layer1(x, ws[:, 1], noise_mode)
        expect_shape(x, self.out_channels, self.resolution, f"SynthesisBlock {self.resolution} output")
        return x


class SynthesisNetwork(nn.Module):
    """Blocks `b4`, `b8`, ..., `b{max_res}`, all built up front; forward runs those needed."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__()
        self.max_res = check_max_res(max_res, _MIN_RES, "StyleGAN")
        self.w_dim = cfg.w_dim
        self.resolutions = resolutions_between(_MIN_RES, max_res)
        self.num_ws = 2 * len(self.resolutions)
        blocks = {}
        for i, res in enumerate(self.resolutions):
            blocks[f"b{res}"] = SynthesisBlock(
                res,
                num_channels(res // 2, cfg.channel_base, cfg.channel_max),
                num_channels(res, cfg.channel_base, cfg.channel_max),
                cfg.w_dim,
                blur=cfg.blur,
                noise=cfg.noise,
                demodulate=cfg.demodulate,
                first_layer=2 * i,
            )
        self.blocks = nn.ModuleDict(blocks)

    def num_ws_at(self, resolution: int) -> int:
        """How many ws (styled layers) the network uses at `resolution`."""
        check_resolution(resolution, self.max_res)
        return 2 * len(resolutions_between(_MIN_RES, resolution))

    def forward(
        self, ws: torch.Tensor, resolution: int, alpha: float = 1.0, noise_mode: str = "random"
    ) -> torch.Tensor:
        """ws: [N, L, w_dim] with L >= num_ws_at(resolution) (extra layers are ignored).

        Returns [N, 3, resolution, resolution]. With alpha < 1 the output is
        lerp(upsample2x(rgb at resolution / 2), rgb at resolution, alpha); alpha == 1 skips the
        old to-RGB and alpha == 0 skips the new block.
        """
        used = self.num_ws_at(resolution)
        alpha = check_alpha(alpha)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] < used or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, >={used}, {self.w_dim}] at resolution {resolution}, got {list(ws.shape)}")
        fading = resolution > _MIN_RES and alpha < 1.0
        last = resolution // 2 if fading else resolution
        x = None
        for i, res in enumerate(self.resolutions):
            if res > last:
                break
            x = self.blocks[f"b{res}"](x, ws[:, 2 * i : 2 * i + 2], noise_mode)
        if not fading:
            return self.blocks[f"b{resolution}"].to_rgb(x)
        old = upsample2x(self.blocks[f"b{last}"].to_rgb(x))
        if alpha == 0.0:
            return old
        new_block = self.blocks[f"b{resolution}"]
        new = new_block.to_rgb(new_block(x, ws[:, used - 2 : used], noise_mode))
        return torch.lerp(old, new, alpha)


class StyleGANGenerator(nn.Module):
    """Mapping network + synthesis network, with style mixing, w_avg tracking and truncation."""

    # Tells the trainer and inference code that forward takes truncation and noise_mode.
    supports_style = True
    # Buffers that change in training; the trainer keeps them equal across ranks.
    tracked_buffers = ("w_avg",)

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__()
        check_max_res(max_res, _MIN_RES, "StyleGAN")
        self.latent_dim = cfg.latent_dim
        self.w_dim = cfg.w_dim
        self.max_res = max_res
        self.style_mixing_prob = cfg.style_mixing_prob
        self.w_avg_beta = cfg.w_avg_beta
        self.truncation_cutoff = cfg.truncation_cutoff
        self.num_labels = num_labels(cfg)
        self.mapping = MappingNetwork(cfg.latent_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mul,
                                      self.num_labels)
        self.synthesis = SynthesisNetwork(cfg, max_res)
        self.num_ws = self.synthesis.num_ws
        # Running mean of w for the truncation trick; a buffer so checkpoints and EMA copies keep it.
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        # And per class, for conditional truncation towards the class's own centre.
        classes = self.num_labels and cfg.label_kind == "class"
        self.register_buffer("w_avg_class", torch.zeros(self.num_labels, cfg.w_dim) if classes else None)
        if classes:
            self.tracked_buffers = ("w_avg", "w_avg_class")

    def num_ws_at(self, resolution: int) -> int:
        return self.synthesis.num_ws_at(resolution)

    def regions(self) -> list[nn.Module]:
        """The mapping network and the synthesis blocks: tensor in, tensor out, one shape per
        resolution (the units `gan_hr.training.compile` compiles; mixing, truncation and the
        fade-in stay in Python)."""
        return [self.mapping, *self.synthesis.blocks.values()]

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None = None,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """centre + psi * (w - centre) on layers below `cutoff` (None: the model's; 0: all layers).
        The centre is w_avg, or for a conditional model each sample's label's (`w_centre`)."""
        cutoff = self.truncation_cutoff if cutoff is None else cutoff
        if cutoff < 0:
            raise ValueError(f"truncation_cutoff must be 0 (all layers) or more, got {cutoff}")
        cutoff = ws.shape[1] if cutoff == 0 else min(cutoff, ws.shape[1])
        centre = self.w_avg if not self.num_labels else self.w_centre(labels)[:, None]
        head = centre + psi * (ws[:, :cutoff] - centre)
        return torch.cat([head.to(ws.dtype), ws[:, cutoff:]], dim=1)

    @torch.no_grad()
    def w_centre(self, labels: torch.Tensor | None) -> torch.Tensor:
        """The truncation centre [N, w_dim] of each sample of a conditional model: its class's
        running mean of w, or for attributes the mean w of fixed latents with its label vector."""
        check_labels(labels, self.num_labels, labels.shape[0] if labels is not None else 0, "G.truncate")
        if self.w_avg_class is not None:
            return self.w_avg_class[labels.argmax(dim=1)]
        unique, index = torch.unique(labels, dim=0, return_inverse=True)
        z = torch.randn(ATTRIBUTE_CENTRE_LATENTS, self.latent_dim, generator=torch.Generator().manual_seed(0))
        z = z.to(labels.device)
        centres = torch.stack([self.mapping(z, row.expand(len(z), -1)).mean(dim=0) for row in unique])
        return centres[index]

    def forward(
        self,
        z: torch.Tensor,
        resolution: int,
        alpha: float = 1.0,
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z: [N, latent_dim] (and labels [N, A] when conditional) -> images [N, 3, resolution, resolution]."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be [N, {self.latent_dim}], got {list(z.shape)}")
        check_labels(labels, self.num_labels, z.shape[0], "G")
        used = self.num_ws_at(resolution)
        # One coin per batch from the CPU generator: no device sync, as in the official code.
        mixing = self.training and self.style_mixing_prob > 0 and float(torch.rand(())) < self.style_mixing_prob
        if mixing:
            # Both latents through the mapping network in one batch.
            both = torch.cat([labels, labels]) if labels is not None else None
            w, w2 = self.mapping(torch.cat([z, torch.randn_like(z)]), both).chunk(2)
        else:
            w = self.mapping(z, labels)
        if self.training:
            self._update_w_avg(w, labels)
        if mixing:
            # Layers below the crossover take the first w, the rest the second.
            crossover = int(torch.randint(1, used, ()))
            ws = torch.cat([w[:, None].expand(-1, crossover, -1), w2[:, None].expand(-1, used - crossover, -1)], 1)
        else:
            ws = w[:, None].expand(-1, used, -1)
        if truncation_psi != 1.0:
            ws = self.truncate(ws, truncation_psi, truncation_cutoff, labels)
        return self.synthesis(ws, resolution, alpha, noise_mode)

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, labels: torch.Tensor | None) -> None:
        batch_mean = w.detach().mean(dim=0).to(self.w_avg.dtype)
        self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))
        if self.w_avg_class is None:
            return
        onehot = labels.detach().to(self.w_avg_class.dtype)
        counts = onehot.sum(dim=0)[:, None]
        means = (onehot.T @ w.detach().to(onehot.dtype)) / counts.clamp(min=1)
        updated = means.lerp(self.w_avg_class, self.w_avg_beta)
        self.w_avg_class.copy_(torch.where(counts > 0, updated, self.w_avg_class))


class StyleGANDiscriminator(ProGANDiscriminator):
    """StyleGAN v1's discriminator: ProGAN's, with the [1, 2, 1] blur before every downsampling
    (the official network's `conv0 -> blur2d -> conv1_down`) when `model.blur` is on, as the
    generator's blur after every upsampling is."""

    def __init__(self, cfg: ModelConfig, max_res: int) -> None:
        super().__init__(cfg, max_res, blur=cfg.blur)
