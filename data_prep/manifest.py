"""The progress state of an unfinished run, and the JSON helpers it and manifest.json share (the
manifest's format itself is gan_hr.manifest, which every reader uses too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.shards import fsync_replace

# Written at the start of a run and after every finished shard; removed once the manifest exists.
STATE = ".data_prep_state.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    fsync_replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe_difference(held: dict, wanted: dict) -> str:
    """Human-readable list of the parameters that differ."""
    diffs = []
    for k in sorted(set(held) | set(wanted)):
        if held.get(k) == wanted.get(k):
            continue
        if k == "source_fingerprint":  # a hash: say what it stands for instead
            diffs.append("the source lists other inputs (names or sizes, or synthetic:N)")
        else:
            diffs.append(f"{k}: {held.get(k)!r} there, {wanted.get(k)!r} asked")
    return "; ".join(diffs)
