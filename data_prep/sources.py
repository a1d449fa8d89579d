"""Inputs: a folder (searched recursively), a zip read in place, or `synthetic:N`.

Only files with an image extension are inputs; everything else (.txt, .json, .DS_Store, ...) is
ignored silently, as are hidden files and folders (names starting with ".", which includes macOS
"._x.jpg" metadata) and "__MACOSX/" folders in zips. Files with an image extension that turn out
not to be images, not to be regular files (FIFOs, devices, dangling links, linked folders) or to
be larger than the bound are reported in `skipped`.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import PrepError
from data_prep.files import FileTooLarge, NotRegularFile, open_regular, read_at_most
from data_prep.keys import natural_sort_key, unique_keys
from data_prep.synthetic import SYNTHETIC_VERSION

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
})
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class SourceItem:
    """One input, cheap to send to a worker process."""

    key: str
    source: str  # reported in `skipped`: path relative to SRC, zip member name, or the key
    kind: str  # "file" | "zip" | "synthetic"
    path: str = ""  # the file, or the zip holding the member
    index: int = 0  # zip member position, or synthetic image index
    label: int | tuple[int, ...] | None = None  # class index or 0/1 attributes, with --labels
    unlabelled: str | None = None  # with --labels, why this input has no label: it is skipped


@dataclass(frozen=True)
class SourceSet:
    items: list[SourceItem]
    # Changes when the list of inputs (names, sizes) changes: a finished output is only reused
    # for the inputs it was made from.
    fingerprint: str


def _is_input(name: str) -> bool:
    parts = name.split("/")
    hidden = [p for p in parts if p.startswith(".") and p not in (".", "..")]
    if hidden or "__MACOSX" in parts:
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def _fingerprint(kind: str, entries: list) -> str:
    blob = json.dumps([kind, entries], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _folder(root: Path) -> SourceSet:
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Linked folders are not followed (no loops), but one with an image name is an input
        # the worker reports, rather than a silent omission.
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in filenames + linked:
            rel = Path(dirpath, fname).relative_to(root).as_posix()
            if _is_input(rel):
                try:
                    size = os.stat(Path(dirpath, fname)).st_size
                except OSError:
                    size = -1  # a dangling link: the worker reports it
                found.append((rel, size))
    found.sort(key=lambda e: natural_sort_key(e[0]))
    names = [rel for rel, _ in found]
    items = [SourceItem(key, rel, "file", str(root / rel))
             for key, rel in zip(unique_keys(names), names, strict=True)]
    return SourceSet(items, _fingerprint("folder", found))


def _zip(path: Path) -> SourceSet:
    try:
        with open_regular(path) as f:
            if not zipfile.is_zipfile(f):
                raise PrepError(f"--src {path}: not a folder, a .zip or synthetic:N")
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
    except NotRegularFile as exc:
        raise PrepError(f"--src {path}: not a folder, a .zip or synthetic:N (a {exc})") from None
    except FileNotFoundError:
        raise PrepError(f"--src {path}: no such file or directory") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise PrepError(f"--src {path}: unreadable zip: {exc}") from exc
    found = [(i, info.filename, info.file_size) for i, info in enumerate(infos)
             if not info.is_dir() and _is_input(info.filename)]
    found.sort(key=lambda e: (natural_sort_key(e[1]), e[0]))
    names = [name for _, name, _ in found]
    # Member names only ever become keys (slugs), never paths: "../../x.png" writes nothing.
    items = [SourceItem(key, name, "zip", str(path), index)
             for key, (index, name, _) in zip(unique_keys(names), found, strict=True)]
    return SourceSet(items, _fingerprint("zip", [[n, s] for _, n, s in found]))


def _synthetic(spec: str) -> SourceSet:
    count = spec[len(SYNTHETIC_PREFIX):]
    if not count.isdigit() or int(count) < 1:
        raise PrepError(f"--src {spec}: expected synthetic:N with N a positive integer")
    n = int(count)
    items = [SourceItem(f"synth-{i:06d}", f"synth-{i:06d}", "synthetic", index=i) for i in range(n)]
    return SourceSet(items, _fingerprint("synthetic", [n, SYNTHETIC_VERSION]))


def open_source(src: str) -> SourceSet:
    """List the inputs of SRC in a stable natural order, with their keys."""
    if src.startswith(SYNTHETIC_PREFIX):
        return _synthetic(src)
    path = Path(src)
    return _folder(path) if path.is_dir() else _zip(path)


# Each worker keeps its zips open: reopening per member would reread the central directory.
_open_zips: dict[str, zipfile.ZipFile] = {}


def read_bytes(item: SourceItem, max_bytes: int) -> bytes:
    """The raw bytes of a file or zip member (never extracted to disk).

    Raises NotRegularFile for a file that is not a regular one (nothing is opened), and
    FileTooLarge past max_bytes, whether stated (size, zip header) or found while reading.
    """
    if item.kind == "file":
        with open_regular(item.path, max_bytes) as f:
            return read_at_most(f, max_bytes)
    zf = _open_zips.get(item.path)
    if zf is None:  # open_source has checked that it is a regular file
        zf = _open_zips[item.path] = zipfile.ZipFile(item.path)
    info = zf.infolist()[item.index]
    if info.file_size > max_bytes:
        raise FileTooLarge(f"{info.file_size} bytes")
    with zf.open(info) as member:
        return read_at_most(member, max_bytes)


def close_zips() -> None:
    for zf in _open_zips.values():
        zf.close()
    _open_zips.clear()
