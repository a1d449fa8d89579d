"""Batch norm over the whole global batch, on any backend.

torch.nn.SyncBatchNorm accepts only GPU tensors, so it cannot run (or be tested) on CPU with
gloo. This one sums each rank's per-channel sum and sum of squares with the differentiable
all-reduce; its backward all-reduces the gradients of those statistics, so after the trainer
averages parameter gradients they equal those of one process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() // channels], dtype=torch.float32, device=x.device)
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3)), count])
        total = dist_fn.all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / (n - 1), self.momentum)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return (xf * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` by SyncBatchNorm2d, keeping parameters and buffers."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        synced = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
