"""Reading the step's device-side flags on the host one step late.

The trainer needs a few numbers from every step on the host: whether the step was skipped as
non-finite, and whether some rank was asked to stop. Reading them at once (`.item()`) makes the
host wait for the GPU to finish the step it has just queued, so the GPU then idles while the host
queues the next one. Read one step late, they are long computed: the copy is queued behind the
step, and the host waits for it only after queueing the next step, which keeps the GPU busy.
On the CPU every copy is immediate and this is plain bookkeeping.
"""

from __future__ import annotations

import torch


class LaggedFlags:
    """A small device tensor per step, handed to the host a step later (or now, with `flush`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def push(self, values: torch.Tensor) -> list[float] | None:
        """Queue this step's values; returns the previous step's (None after `flush` or at start)."""
        previous = self._take()
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=self.device.type == "cuda")
        host.copy_(values.detach(), non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._pending = (host, event)
        return previous

    def flush(self) -> list[float] | None:
        """The values of the last step pushed, waiting for them (checkpoints, the end of a run)."""
        return self._take()

    def _take(self) -> list[float] | None:
        if self._pending is None:
            return None
        host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        return host.tolist()
