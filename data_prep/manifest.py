"""manifest.json (the finished dataset) and the progress state of an unfinished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.shards import fsync_replace, shard_relpath

FORMAT = "gan_hr-shards"
VERSION = 1
MANIFEST = "manifest.json"
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


def build_manifest(*, src: str, seed: int, params: dict, resolutions: list[int],
                   shard_counts: list[int], skipped: list[dict]) -> dict:
    """The manifest for shards 0..len(shard_counts)-1 at every resolution.

    It holds nothing that changes from run to run (no times, no worker count), so an identical
    preparation writes an identical file.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_images": sum(shard_counts),
        "resolutions": resolutions,
        "image_format": params["image_format"],
        "shard_size": params["shard_size"],
        "shards": {
            str(res): [{"path": shard_relpath(res, i), "count": c}
                       for i, c in enumerate(shard_counts)]
            for res in resolutions
        },
        "skipped": skipped,
        "source": src,
        "seed": seed,
        "filter": "lanczos to max_res, then 2x2 box mean per halving",
        "params": params,
    }


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
