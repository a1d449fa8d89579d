"""Stop requests from SIGTERM / SIGUSR1 (SLURM preemption and time limits).

The handler only records the request; the trainer acts on it at the next step boundary, when
every rank agrees, so checkpoints are always taken between whole steps."""

from __future__ import annotations

import signal
from types import FrameType


class StopRequest:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signal_name: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
