"""The run directory: config.yaml, metrics.jsonl, checkpoints/, samples/, and the files that keep
one run one run: run.json (its W&B run id and parent), config-history/, abandoned/ and the lock."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def record(self) -> Path:
        return self.root / "run.json"

    @property
    def config_history(self) -> Path:
        return self.root / "config-history"

    @property
    def abandoned(self) -> Path:
        return self.root / "abandoned"

    def create(self) -> None:
        for path in (self.root, self.checkpoints, self.samples):
            path.mkdir(parents=True, exist_ok=True)

    def read_record(self) -> dict[str, Any] | None:
        """run.json, or None for a directory that has none yet (or an unreadable one)."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("wandb_run_id"), str) else None

    def write_record(self, record: dict[str, Any]) -> None:
        tmp = self.record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.record)


def new_run_id() -> str:
    """A W&B run id, made once when the run directory is created and kept in run.json, so that
    every restart, even one before the first checkpoint, continues the same W&B run."""
    return secrets.token_hex(4)


class RunLocked(RuntimeError):
    """Another trainer holds the run directory."""


class RunLock:
    """An exclusive lock on the run directory for the life of the process (flock on `.lock`).

    The kernel drops it when the process ends, kill -9 included, so there is never a stale lock
    to clean up. Taken once per run, by the process that writes the run directory."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by another trainer ({holder}); "
                            "one run directory takes one trainer at a time") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MetricsLog:
    """Append-only metrics.jsonl, one JSON object per logging step (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate_after(self, step: int, *, keep_dropped_in: Path | None = None) -> int:
        """Drop records past `step` (logged after the checkpoint a resume starts from) and any
        torn last line, so that a resumed run's log continues with no step repeated. With
        `keep_dropped_in`, the dropped records are written there (a branch keeps its past).
        Returns how many records were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            (kept if record.get("step", 0) <= step else dropped).append(line)
        if keep_dropped_in is not None and dropped:
            keep_dropped_in.write_text("".join(line + "\n" for line in dropped))
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
        return len(dropped)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (for plots, tests and evaluation)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
