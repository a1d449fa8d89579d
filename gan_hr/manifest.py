"""manifest.json: the one description of a data set, written by data_prep and read by everything.

A data set is one shard set per resolution (`<res>/shard-000000.tar`, ...) and this file, which
lists them with their image counts, the inputs that were skipped and why, and how it was made.
Shard i holds the same images at every resolution. The writer (`build_manifest`), the shard
paths (`shard_relpath`) and the reader's checks (`manifest_problems`, `parse_manifest`) live here
together, so data_prep, the trainer's config check, the data stream and `--verify` agree on one
format. No torch here: the config and the command lines read manifests before torch loads.

Labels (version 2): a labelled data set's manifest has a `labels` entry (`kind`, `names` in index
order, `counts`, `source`), and in every shard each image member is followed by one label member
with the same key: ``<key>.cls`` (the class index in ASCII decimal) for ``kind: class``, or
``<key>.json`` (a list of 0/1, one per attribute) for ``kind: attributes``. These are webdataset's
own conventions, so any webdataset reader decodes them as they are (``.cls`` to an int, ``.json``
to a list); the label is per sample, so shuffling, rank and worker splits and resume carry it
with its image. Data sets without labels stay version 1, byte for byte: a v1 reader refuses a
labelled set instead of taking its label members for corrupt images.
"""

from __future__ import annotations

import json
import re
from typing import Any

FORMAT = "gan_hr-shards"
VERSION = 1  # images only
LABELLED_VERSION = 2  # a label member after each image, described by "labels"
MANIFEST = "manifest.json"
# Label kind -> extension of the member holding a sample's label.
LABEL_MEMBERS = {"class": "cls", "attributes": "json"}


class ManifestError(ValueError):
    """A manifest that is not a readable gan_hr-shards v1 description: the first problem, worded
    to follow the manifest's path ("... is not valid JSON")."""


def shard_relpath(res: int, index: int) -> str:
    """Where shard `index` of resolution `res` lives, relative to the data set's root."""
    return f"{res}/shard-{index:06d}.tar"


# A webdataset shard list ("shard-{000000..000099}.tar", "{a,b}.tar"), not a root.
_BRACE_LIST = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_PATH = "{path}"


def remote_template(root: str) -> str:
    """A ``pipe:`` or URL data root as a template with ``{path}`` where a path relative to the
    root goes (ValueError, one line, when that cannot be told).

    A ``pipe:`` root either holds ``{path}`` or gets the path after its last whitespace-separated
    word that ends in ``/`` (``pipe:aws s3 cp s3://b/celebahq/ -`` reads
    ``pipe:aws s3 cp s3://b/celebahq/64/shard-000000.tar -``); a URL gets ``/path`` appended. A
    brace-expanded shard list is refused with the root form to write instead: a data set is a
    root whose manifest.json lists the shards and their image counts.
    """
    brace = _BRACE_LIST.search(root)
    if brace:
        word = next(m for m in re.finditer(r"\S+", root) if m.start() <= brace.start() < m.end())
        parent = word.group()[: word.group().rfind("/", 0, brace.start() - word.start()) + 1]
        # ".../celebahq/64/shard-{...}.tar": the root is above the resolution's folder.
        parent = re.sub(r"(?<=/)\d+/$", "", parent) or "DIR/"
        path = _PATH if root.startswith("pipe:") else ""  # a URL root takes paths after its "/"
        example = root[: word.start()] + parent + path + root[word.end():]
        raise ValueError(
            f"{root!r} is a brace-expanded shard list, but a gan_hr data set is a root whose "
            f"{MANIFEST} lists the shards (python -m data_prep writes it): write {example!r}"
        )
    if not root.startswith("pipe:"):
        return root.rstrip("/") + "/" + _PATH
    if _PATH in root:
        return root
    ends = [m.end() for m in re.finditer(r"\S+", root) if m.group().endswith("/")]
    if not ends:
        raise ValueError(
            f"cannot tell where the data set's paths go in {root!r}: end the root's directory "
            f"with '/' or mark the place with {_PATH}, e.g. 'pipe:aws s3 cp s3://bucket/celebahq/{_PATH} -'"
        )
    return root[: ends[-1]] + _PATH + root[ends[-1]:]


def encode_label(kind: str, value: int | list[int]) -> bytes:
    """The label member's bytes: ``b"3"`` for a class, ``b"[1,0,1]"`` for attributes."""
    if kind == "class":
        return str(value).encode()
    return json.dumps(value, separators=(",", ":")).encode()


def decode_label(kind: str, num_names: int, data: bytes) -> int | list[int]:
    """A label member's value, checked against the data set's `num_names` classes or
    attributes; ValueError (one line) when it is not one."""
    if kind == "class":
        if not data.isdigit() or not 0 <= int(data) < num_names:
            raise ValueError(f"{data[:20]!r} is not a class index below {num_names}")
        return int(data)
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if (not isinstance(value, list) or len(value) != num_names
            or not all(type(v) is int and v in (0, 1) for v in value)):
        raise ValueError(f"{data[:40]!r} is not a list of {num_names} 0/1 attributes")
    return value


def build_manifest(*, src: str, seed: int, params: dict, resolutions: list[int],
                   shard_counts: list[int], skipped: list[dict], labels: dict | None = None) -> dict:
    """The manifest for shards 0..len(shard_counts)-1 at every resolution; `labels` (kind,
    names, counts, source) makes it a labelled (version 2) one.

    It holds nothing that changes from run to run (no times, no worker count), so an identical
    preparation writes an identical file.
    """
    manifest = {
        "format": FORMAT,
        "version": VERSION if labels is None else LABELLED_VERSION,
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
    if labels is not None:
        manifest["labels"] = labels
    return manifest


def _entry_ok(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("path"), str)
            and type(entry.get("count")) is int and entry["count"] >= 1)


def manifest_problems(manifest: object) -> list[str]:
    """Everything that keeps a parsed manifest from being read, each worded to follow its path
    (empty when it can be read): format,
    version, the fields readers use, and a path and a count for every shard. Whether it agrees
    with itself and with its shards is `data_prep --verify`'s question."""
    if not isinstance(manifest, dict):
        return ["is not a JSON object"]
    version = manifest.get("version")
    if manifest.get("format") != FORMAT or type(version) is not int or version not in (VERSION, LABELLED_VERSION):
        return [f"is not a {FORMAT} v{VERSION} or v{LABELLED_VERSION} data set (run python -m data_prep)"]
    problems = [f"has no {name!r}" for name in ("num_images", "resolutions", "image_format", "shards", "skipped")
                if name not in manifest]
    if version == VERSION and "labels" in manifest:
        problems.append(f"has 'labels' but version {VERSION} "
                        f"(labelled data sets are version {LABELLED_VERSION})")
    elif version == LABELLED_VERSION:
        problems += _label_problems(manifest.get("labels"))
    if problems:
        return problems
    shards, resolutions = manifest["shards"], manifest["resolutions"]
    if not isinstance(shards, dict) or not isinstance(resolutions, list):
        return ["needs 'shards' to map resolutions to lists and 'resolutions' to be a list"]
    for res, entries in shards.items():
        if not isinstance(entries, list) or not all(_entry_ok(e) for e in entries):
            problems.append(f"lists a shard at {res}x{res} without a path and a count >= 1")
    return problems


def _label_problems(labels: object) -> list[str]:
    """What is wrong with a version 2 manifest's "labels" entry (nothing when it can be read)."""
    kinds = " or ".join(LABEL_MEMBERS)
    if not isinstance(labels, dict):
        return [f"has no 'labels' object (version {LABELLED_VERSION} is a labelled data set)"]
    problems = []
    if labels.get("kind") not in LABEL_MEMBERS:
        problems.append(f"has labels of kind {labels.get('kind')!r}, not {kinds}")
    names, counts = labels.get("names"), labels.get("counts")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        problems.append("needs labels 'names': a list of distinct non-empty strings")
    elif (not isinstance(counts, list) or len(counts) != len(names)
          or not all(type(c) is int and c >= 0 for c in counts)):
        problems.append(f"needs labels 'counts': {len(names)} counts >= 0, one per name")
    if not isinstance(labels.get("source"), str):
        problems.append("needs labels 'source': where the labels came from")
    unknown = sorted(set(labels) - {"kind", "names", "counts", "source"})
    if unknown:
        problems.append(f"has unknown labels keys {unknown}")
    return problems


def parse_manifest(data: str | bytes) -> dict[str, Any]:
    """The manifest in `data`, checked; ManifestError names the first problem."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"is not valid JSON ({exc})") from exc
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError(problems[0])
    return manifest


def image_counts(manifest: dict[str, Any]) -> dict[int, int]:
    """Images per resolution of a checked manifest."""
    return {int(res): sum(s["count"] for s in entries) for res, entries in manifest["shards"].items()}
