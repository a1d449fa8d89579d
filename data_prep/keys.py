"""Sample keys and source ordering derived from relative paths or zip member names."""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter

# Keys stay well inside a ustar member name (100 bytes) together with ".png".
MAX_KEY_LEN = 64
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_DIGIT_RUNS = re.compile(r"([0-9]+)")


def natural_sort_key(name: str) -> tuple:
    """Order "2.jpg" before "10.jpg", component by component; the raw name breaks ties."""
    parts = []
    for component in name.split("/"):
        pieces = _DIGIT_RUNS.split(component.lower())
        # split() alternates text and digit runs, so position parity says which is which.
        parts.append([int(p) if i % 2 else p for i, p in enumerate(pieces)])
    return parts, name


def _short_hash(name: str, length: int = 8) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def slug(name: str) -> str:
    """Lowercase ASCII letters, digits and "_" from a path without its extension."""
    stem, _ = posixpath.splitext(name)
    base = _NOT_ALNUM.sub("_", stem.lower()).strip("_") or "img"
    if len(base) > MAX_KEY_LEN:
        base = f"{base[:MAX_KEY_LEN - 9]}_{_short_hash(name)}"
    return base


def unique_keys(names: list[str]) -> list[str]:
    """One key per name, in order; names whose slugs collide get a hash of the full name.

    Identical names (a zip may hold one twice) or hash collisions get an ordinal suffix, so the
    result is unique whatever the input.
    """
    bases = [slug(n) for n in names]
    counts = Counter(bases)
    keys, used = [], set()
    for name, base in zip(names, bases, strict=True):
        key = base if counts[base] == 1 else f"{base[:MAX_KEY_LEN - 9]}_{_short_hash(name)}"
        candidate, n = key, 1
        while candidate in used:
            n += 1
            candidate = f"{key}_{n}"
        used.add(candidate)
        keys.append(candidate)
    return keys
