"""Shard files: deterministic plain tars, written under a temporary name and renamed into place."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from gan_hr.manifest import shard_relpath


def _tmp_path(final: Path) -> Path:
    # Hidden, so nothing that globs "shard-*.tar" ever sees a half-written shard.
    return final.with_name(f".{final.name}.tmp")


def _member(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the same images give the same bytes on any machine, run or worker count.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def fsync_replace(tmp: Path, final: Path) -> None:
    """Make `tmp` durable, then atomically give it the name `final`."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


class ShardSetWriter:
    """Shard `index` at every resolution; the files appear under their final names together
    only when `commit` runs (a crash leaves at most hidden temporary files)."""

    def __init__(self, out_dir: Path, index: int, resolutions: list[int], extension: str):
        self.out_dir, self.index, self.extension = Path(out_dir), index, extension
        self.count = 0
        self._files: dict[int, tuple[Path, Path, tarfile.TarFile]] = {}
        for res in resolutions:
            final = self.out_dir / shard_relpath(res, index)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(final)
            self._files[res] = (tmp, final, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT))

    def add(self, key: str, images: dict[int, bytes], label: tuple[str, bytes] | None = None) -> None:
        """One sample: its image at every resolution, then its label member (extension, bytes)
        when the data set is labelled, the same in every resolution's shard."""
        for res, (_, _, tar) in self._files.items():
            data = images[res]
            tar.addfile(_member(f"{key}.{self.extension}", len(data)), io.BytesIO(data))
            if label is not None:
                tar.addfile(_member(f"{key}.{label[0]}", len(label[1])), io.BytesIO(label[1]))
        self.count += 1

    def commit(self) -> dict[str, int]:
        """Close, rename into place; returns each final file's size in bytes by resolution."""
        sizes = {}
        for res, (tmp, final, tar) in self._files.items():
            tar.close()
            fsync_replace(tmp, final)
            sizes[str(res)] = final.stat().st_size
        return sizes

    def abort(self) -> None:
        for tmp, _, tar in self._files.values():
            tar.close()
            tmp.unlink(missing_ok=True)


def read_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member of a shard in order, with its data (None for anything but a regular file)."""
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            yield info, (f.read() if f is not None else None)
