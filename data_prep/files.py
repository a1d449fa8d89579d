"""Reading untrusted input files: regular files only, and never more than a bound.

A folder of images may hold anything under an image name: a FIFO (opening it blocks until
a writer appears, i.e. forever), a link to /dev/zero (reading it never ends), a procfs-like
file whose reported size is 0 whatever it holds. So the file type is checked before opening,
the open itself cannot block, and every read stops one byte past the bound whatever `stat`
said the size was.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

# Far above any real image (CelebA-HQ PNGs are a few MB); small enough that a few workers each
# holding one file stay within memory.
DEFAULT_MAX_FILE_MB = 256
MB = 1 << 20
_CHUNK = MB

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


class NotRegularFile(Exception):
    """The path is not a regular file; the message says what it is instead."""


class FileTooLarge(Exception):
    """The input holds more bytes than the bound."""


def file_kind(mode: int) -> str:
    """What a non-regular st_mode is, in words ("FIFO", "character device", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """stat(path) following links; raises NotRegularFile for anything but a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFile("dangling symlink") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(file_kind(st.st_mode))
    return st


def open_regular(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """`path` opened for binary reading, only if it is a regular file of at most max_bytes.

    Checked before opening (opening a device can have side effects) and again on the open
    descriptor, since the path may be replaced in between; O_NONBLOCK keeps that open from
    hanging if it was replaced by a FIFO (it does nothing for regular files).
    """
    st = check_regular(path)
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileTooLarge(f"{st.st_size} bytes")
    f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
    try:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(file_kind(mode))
    except BaseException:
        f.close()
        raise
    return f


def read_at_most(f: BinaryIO, max_bytes: int) -> bytes:
    """All of `f`, or FileTooLarge as soon as more than max_bytes arrived (at most one more)."""
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = f.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)  # a single chunk is returned as it is, not copied
        chunks.append(chunk)
        total += len(chunk)
    raise FileTooLarge(f"more than {max_bytes} bytes")
