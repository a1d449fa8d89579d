"""Which buffers the trainer keeps equal across ranks, and the single-process no-ops."""

from __future__ import annotations

import torch

from gan_hr.config import ModelConfig
from gan_hr.models.dcgan import DCGANDiscriminator
from gan_hr.models.stylegan import StyleGANGenerator
from gan_hr.training.grad_sync import average_buffers, average_gradients, running_buffers

TINY = ModelConfig(latent_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, base_width=8)


def test_running_buffers_are_only_those_that_change():
    G = StyleGANGenerator(TINY, 16)
    assert [b.data_ptr() for b in running_buffers(G)] == [G.w_avg.data_ptr()]
    D = DCGANDiscriminator(TINY, 32)
    bn = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(running_buffers(D)) == 2 * len(bn) > 0


def test_single_process_is_a_no_op():
    D = DCGANDiscriminator(TINY, 32)
    D(torch.randn(2, 3, 32, 32), 32).sum().backward()
    grads = [p.grad.clone() for p in D.parameters()]
    flags, finite = average_gradients(D, torch.tensor([3.0]))
    assert flags.tolist() == [3.0] and bool(finite)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, D.parameters()))
    before = [b.clone() for b in running_buffers(D)]
    average_buffers(D)
    assert all(torch.equal(a, b) for a, b in zip(before, running_buffers(D)))


def test_non_finite_gradients_are_reported():
    D = DCGANDiscriminator(TINY, 32)
    D(torch.randn(2, 3, 32, 32), 32).sum().backward()
    next(D.parameters()).grad[0] = float("nan")
    _, finite = average_gradients(D, torch.zeros(1))
    assert not bool(finite)
