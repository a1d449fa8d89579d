"""How a run decides to stop: the one place that answers, after every step, "go on, or why stop?".

A run stops when it has trained long enough (`train.max_steps`, `train.total_kimg`), when a rank
is asked to stop (SIGTERM/SIGUSR1: SLURM preemption and time limits), or when it diverges
(`train.nan_tolerance` unhealthy steps in a row). Every rank must reach the same answer at the
same step, so the inputs that differ between ranks travel in the gradient all-reduce: each rank
contributes its stop request (`stop_flag`), and the step's health is computed from averaged
gradients (`apply_gradients`).

The host needs those device values, but reading them at once (`.item()`) would make it wait for
the GPU to finish the step just queued, leaving the GPU idle while the next is queued. They are
read one step late (`LaggedFlags`): the answer for step n arrives after step n+1 was queued, so
a stop or divergence takes effect one step later. Logging and checkpoints wait for the device
anyway, and `sync` brings the counters up to date first. On the CPU this is plain bookkeeping.
`lagged=False` reads them at once instead, a host sync per step: the design this replaced, kept
as a switch so that benchmarks/gpu_check.py can measure what the lag saves on a GPU.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType

import torch
from torch import nn

from gan_hr.data import STOP_SIGNALS
from gan_hr.training.grad_sync import average_gradients

# The answers of `StopGuard.why_stop` for a run that trained as long as it was asked to; the
# others ("diverged", "signal ...") interrupt it.
FINISHED = ("max_steps", "total_kimg")


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


class StopGuard:
    """The stop request, the divergence counters and their lagged device copies of one run.

    Installs the SIGTERM/SIGUSR1 handlers on creation (they only record the request; the run
    acts on it at a step boundary, when every rank agrees); `close` restores the previous ones."""

    def __init__(self, device: torch.device, *, nan_tolerance: int, max_steps: int | None, total_images: int,
                 nan_streak: int = 0, nan_skipped: int = 0, lagged: bool = True) -> None:
        self.device = device
        self.lagged = lagged
        self.nan_tolerance, self.max_steps, self.total_images = nan_tolerance, max_steps, total_images
        # Host values, as of the last step read back: checkpointed with the run's state.
        self.nan_streak, self.nan_skipped = nan_streak, nan_skipped
        self.signal_name: str | None = None
        self._stop_agreed = False
        self._streak = torch.full((1,), float(nan_streak), device=device)
        self._skipped = torch.full((1,), float(nan_skipped), device=device)
        self._lagged = LaggedFlags(device)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def stop_flag(self) -> torch.Tensor:
        """This rank's stop request, to average with the gradients (any rank's request stops all)."""
        return torch.full((1,), float(self.signal_name is not None), device=self.device)

    def record(self, healthy: torch.Tensor, stop_avg: torch.Tensor) -> None:
        """Count a step on the device and read the previous step's counters (no host sync), or
        this step's when not `lagged` (the host waits for the device)."""
        self._streak = (self._streak + 1) * ~healthy
        self._skipped += ~healthy
        values = torch.cat([self._streak, self._skipped, stop_avg.float().reshape(1)])
        self._read(self._lagged.push(values) if self.lagged else values.tolist())

    def sync(self) -> None:
        """Bring the host counters up to this step (logging and checkpoints wait for the device)."""
        self._read(self._lagged.flush())

    def _read(self, values: list[float] | None) -> None:
        if values is not None:
            streak, skipped, stop = values
            self.nan_streak, self.nan_skipped = int(streak), int(skipped)
            self._stop_agreed = stop > 0

    def why_stop(self, step: int, images_seen: int) -> str | None:
        """None to go on, else why the run stops now: "diverged", "signal ...", "max_steps", "total_kimg"."""
        if self.nan_streak >= self.nan_tolerance:
            return "diverged"
        if self._stop_agreed:
            return f"signal {self.signal_name or 'on another rank'}"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if images_seen >= self.total_images:
            return "total_kimg"
        return None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def apply_gradients(loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                    scaler: torch.amp.GradScaler, flags: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward, average gradients (and `flags`) across ranks, and step unless they are not finite.
    `opt` may be several optimizers that together hold `net`'s parameters (a VAE's encoder and
    decoder, trained by one loss): all step or none (under fp16 GradScaler checks each for overflow).

    Returns 0-dim bool device tensors, the same on every rank: whether the step was applied, and
    whether it was healthy; and the averaged flags. A skipped step is healthy when GradScaler
    explains it: under fp16 the scaled gradients overflow while the scaler is still finding its
    scale, with a finite loss on every rank and a scale above 1 left to shrink. Anything else
    non-finite (a NaN or inf loss, overflow at scale 1, any in fp32/bf16) is not.

    Nothing here waits for the device. That takes two private corners of torch, the ones
    GradScaler itself uses: the scale as a device tensor (`_get_scale_async`; `get_scale()`
    reads it on the host), and a fused optimizer's `found_inf`, which skips a step on the device."""
    opts = [opt] if isinstance(opt, torch.optim.Optimizer) else list(opt)
    for o in opts:
        o.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    loss_bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    sent = loss_bad if flags is None else torch.cat([flags.reshape(-1), loss_bad])
    flags_avg, finite = average_gradients(net, sent)
    if scaler.is_enabled():
        # Read before update() halves the scale.
        settling = (flags_avg[-1] == 0) & (scaler._get_scale_async() > 1)
        for o in opts:
            scaler.step(o)  # with a fused optimizer it skips an overflow on the device
        scaler.update()
        healthy = finite | settling
    else:
        for o in opts:
            o.found_inf = (~finite).float()
            o.step()
            del o.found_inf
        healthy = finite
    return finite, healthy, flags_avg[:-1]
