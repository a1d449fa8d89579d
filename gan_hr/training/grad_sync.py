"""Data-parallel gradient averaging, done by hand once per step (as StyleGAN2-ADA does).

DDP's hooks do not fit GAN training well: the networks grow (blocks not yet faded in have no
gradient), the discriminator runs several forwards per backward, and the gradient penalty
needs a double backward. Averaging the gradients of the parameters that have one, in a single
flat all-reduce after backward, sidesteps all three, and is a no-op with one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (an all-reduce, so also a barrier); `value` alone
    without a process group. How the ranks reach one decision from their own findings."""
    if _world_size() == 1:
        return value
    flag = torch.tensor([value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def average_gradients(module: nn.Module, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the gradients of `module` over all processes, together with `flags` (a small
    float tensor every rank contributes, e.g. a stop request).

    Returns the averaged flags and a 0-dim bool tensor saying whether every averaged gradient
    is finite (identical on all ranks, so all of them skip a bad step together). Which
    parameters have a gradient depends only on resolution and alpha, which every rank shares,
    so the flat buffers line up across ranks."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [flags.to(grads[0].device, grads[0].dtype)])
    world = _world_size()
    if world > 1:
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
    return flat[-flags.numel():], torch.isfinite(flat).all()


def running_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Buffers that change during training: batch-norm running statistics, and those a module
    names in `tracked_buffers` (StyleGAN's w_avg). Constant buffers (fixed noise, filter
    kernels) are left out: averaging identical values is wasted traffic, and with 3 or 6 ranks
    not even exact."""
    found = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            found += [m.running_mean, m.running_var]
        found += [getattr(m, name) for name in getattr(m, "tracked_buffers", ())]
    return found


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average the running buffers across ranks, so every rank holds the same model state;
    each rank saw only its share of the batch."""
    if _world_size() == 1:
        return
    buffers = running_buffers(module)
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= _world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset: offset + b.numel()].view_as(b))
        offset += b.numel()
