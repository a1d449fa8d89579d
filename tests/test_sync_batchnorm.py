"""SyncBatchNorm2d on two gloo processes equals one BatchNorm2d over the whole batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from train_helpers import free_port

from gan_hr.training.sync_batchnorm import SyncBatchNorm2d, convert_sync_batchnorm


def _reference(x: torch.Tensor, weight: torch.Tensor):
    bn = nn.BatchNorm2d(3)
    bn.weight.data.copy_(weight)
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def _rank(rank: int, port: int, x: torch.Tensor, weight: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
        assert isinstance(bn, SyncBatchNorm2d)
        bn.weight.data.copy_(weight)
        half = x[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        y = bn(half)
        # The same per-element loss as the reference, restricted to this rank's half.
        full_index = torch.arange(x.numel()).reshape(x.shape).float().sin()[rank * 4:(rank + 1) * 4]
        (y * full_index).sum().backward()
        # The trainer sums per-rank losses' parameter gradients by averaging; here: sum.
        for p in (bn.weight, bn.bias):
            dist.all_reduce(p.grad)
        out[rank] = (y.detach(), half.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_batch_norm_over_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    weight = torch.rand(3) + 0.5
    ref = _reference(x, weight)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank, args=(free_port(), x, weight, out), nprocs=2, join=True)
    y = torch.cat([out[0][0], out[1][0]])
    grad_x = torch.cat([out[0][1], out[1][1]])
    torch.testing.assert_close(y, ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, ref[1], atol=1e-5, rtol=1e-4)
    for i in (2, 3, 4, 5):
        torch.testing.assert_close(out[0][i], ref[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[1][i], ref[i], atol=1e-5, rtol=1e-4)


def test_single_process_is_plain_batch_norm():
    torch.manual_seed(0)
    bn, sync = nn.BatchNorm2d(4), convert_sync_batchnorm(nn.BatchNorm2d(4))
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)
