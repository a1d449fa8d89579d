"""torch.compile for growing GANs: compile the blocks, keep the fade-in in Python.

A whole-model compile does not fit progressive growing: the fade weight alpha changes every
step, and a Python float that changes is a recompile (or a graph break) per step. The models
therefore list their `regions()`: resolution blocks and the mapping network, which take only
tensors of a fixed shape at a given resolution. Each is compiled on its own ("regional
compilation"), so a step reuses the graphs, and a new resolution compiles only the blocks it
adds (and, for blocks already in use, a graph for the new batch size, if it changed).

Compiled graphs have no double backward, and the gradient penalties need one: `eager()` runs the
same modules uncompiled for those forwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# Graphs one block's code may keep: grad on or off, input requiring grad or not, style mixing
# on or off, a second batch size. Every block of one class shares its code object, so the limit
# must also hold one entry per block of a 1024² model (9 resolutions).
RECOMPILE_LIMIT = 64


def compile_regions(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every region of `model` in place (parameters and state_dict keys unchanged);
    returns how many. A model without `regions()` is left as it is."""
    import torch._dynamo  # here: importing it takes a second and a half, which eager runs need not pay

    regions = model.regions() if hasattr(model, "regions") else []
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 16 * RECOMPILE_LIMIT)
    for region in regions:
        region.compile(backend=backend)
    return len(regions)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules uncompiled inside this block (for forwards differentiated twice)."""
    with torch.compiler.set_stance("force_eager"):
        yield
