"""Spectral normalization (Miyato et al., ICLR 2018) for discriminator layers.

A layer with spectral norm uses W / sigma(W), where sigma is the largest singular value of W
reshaped to [out, in * k * k] (the paper's choice, not the conv operator's norm), estimated by
power iteration from a left singular vector `u` kept as a buffer.

Why not `torch.nn.utils.spectral_norm` or its parametrization:
- The equalized-lr layers build their weight at run time (stored weight times the He constant).
  Torch's hooks would normalize the stored parameter, and the constant applied after would move
  the norm off 1 again. Here the layer computes its run-time weight and hands it to
  `SpectralNorm`.
- Torch's versions update u inside every training-mode forward. D runs three or four forwards
  per step (reals, fakes, the penalty's, the G step's), so u would advance a number of times
  that depends on the loss, the penalty's forward (differentiated twice) included. Here forward never writes: `update_spectral_norms` does one power iteration per D
  step, called by the trainer before D's forwards, as in the paper's Algorithm 1 ("for each
  update ... apply power iteration"). Every forward of a step, the penalty's included, sees the
  same u; evaluation forwards change nothing.
- State is one plain buffer per layer (`<layer>.sn.u`), so checkpoints hold it and resume is
  exact; with the option off no key changes, so older checkpoints load as they are.
- sigma and the power iteration are computed in float32 with autocast off: under bf16 autocast
  a matmul would round W and u to 8 bits of mantissa, and the normalization would then depend
  on the precision setting.

Across ranks: u is not averaged with the running buffers. It starts equal on every rank (built
from the same seed) and each update is a function of u and D's weights, which the gradient
average keeps identical, so every rank computes the same u.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpectralNorm", "SpectralNormConv2d", "update_spectral_norms", "INIT_ITERATIONS"]

# Power iterations when a network is built (torch's parametrization does 15): the estimate
# starts close, after which one per step follows the slowly moving weights.
INIT_ITERATIONS = 30


def _float32(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on `device` (nothing to turn off on a device without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class SpectralNorm(nn.Module):
    """u for one weight of `out_features` rows; `forward(weight)` returns weight / sigma.

    sigma = ||W^T u||, which equals u^T W v for v = W^T u / ||W^T u|| (the paper's estimate),
    and its gradient through W is u v^T, the paper's, with u a constant buffer.
    """

    def __init__(self, out_features: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0, eps=eps))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The estimated largest singular value of `weight` (float32, a 0-dim tensor)."""
        with _float32(weight.device):
            return torch.linalg.vector_norm(self.u.float() @ weight.float().flatten(1)).clamp_min(self.eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return (weight.float() / self.sigma(weight)).to(weight.dtype)

    @torch.no_grad()
    def power_iteration_(self, weight: torch.Tensor, iterations: int = 1) -> None:
        """Advance u by `iterations` steps of the power method on `weight`. Scaling the weight
        (the equalized-lr constant) does not change u: only directions are kept."""
        w = weight.detach().float().flatten(1)
        u = self.u.float()
        with _float32(weight.device):
            for _ in range(iterations):
                v = F.normalize(u @ w, dim=0, eps=self.eps)
                u = F.normalize(w @ v, dim=0, eps=self.eps)
        self.u.copy_(u)

    def extra_repr(self) -> str:
        return f"{self.u.numel()}"


class SpectralNormConv2d(nn.Conv2d):
    """`nn.Conv2d` whose weight is spectrally normalized (the DCGAN discriminator's convs).
    Parameters and their names are nn.Conv2d's; the state adds `sn.u`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sn = SpectralNorm(self.out_channels)

    def effective_weight(self) -> torch.Tensor:
        return self.sn(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


def update_spectral_norms(module: nn.Module, iterations: int = 1) -> int:
    """One power iteration (or `iterations`) for every spectrally normalized layer in `module`:
    each layer whose `sn` is a SpectralNorm, on its `weight`. Returns how many layers; 0 (and no
    work) for a network without spectral norm."""
    count = 0
    for m in module.modules():
        sn = getattr(m, "sn", None)
        if isinstance(sn, SpectralNorm):
            sn.power_iteration_(m.weight, iterations)
            count += 1
    return count
