"""The optimizer every network of a run gets, in one place: the trainer's and the ETA probe's."""

from __future__ import annotations

import torch
from torch import nn

from gan_hr.config import Config


def build_adam(cfg: Config, net: nn.Module) -> torch.optim.Optimizer:
    """Adam at schedule.lr with train.adam_betas and adam_eps. Fused: one kernel per step, and it
    can skip a non-finite step on the device (found_inf)."""
    t = cfg.train
    return torch.optim.Adam(net.parameters(), lr=cfg.schedule.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                            fused=True)
