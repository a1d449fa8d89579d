"""Helpers the data_prep tests share: build a zip source, read back a prepared tree."""

from __future__ import annotations

import zipfile
from pathlib import Path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    """A deflated zip at `path` holding `files` (member name -> bytes), as data sets are shipped."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path (the lock file aside): equal trees, equal bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".data_prep.lock"}
