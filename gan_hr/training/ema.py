"""Generator EMA (Karras et al.): G_ema tracks G with a half-life measured in images."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, halflife_kimg: float, images_seen: int, rampup: float | None = None) -> float:
    """Per-step decay for a half-life in kimg; with ramp-up (StyleGAN2) the half-life is at most
    `rampup` times the images seen, so early samples are not dominated by the random init."""
    halflife = halflife_kimg * 1000
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    if halflife <= 0:
        return 0.0
    return 0.5 ** (batch_size / halflife)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float | torch.Tensor) -> None:
    """ema <- lerp(model, ema, beta) for parameters; buffers (w_avg, fixed noise) are copied.

    `beta` may be a 0-dim device tensor (the trainer's: 1 on a skipped step), so that the
    decision never has to reach the host."""
    ema_params = list(ema.parameters())
    model_params = list(model.parameters())
    torch._foreach_lerp_(ema_params, model_params, [1.0 - beta] * len(ema_params))
    for ema_buf, buf in zip(ema.buffers(), model.buffers()):
        ema_buf.copy_(buf)
