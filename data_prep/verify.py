"""--verify: re-read every shard and check it against the manifest."""

from __future__ import annotations

import io
import multiprocessing
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data_prep.manifest import read_json
from data_prep.pipeline import default_workers
from gan_hr.manifest import LABEL_MEMBERS, MANIFEST, decode_label, manifest_problems

# A badly broken shard would otherwise list every member; the first few say enough.
_MAX_ERRORS_PER_SHARD = 20


@dataclass
class VerifyReport:
    ok: bool
    summary: str
    errors: list[str] = field(default_factory=list)


def _check_shard(task: tuple[str, int, str, tuple[str, int] | None]) -> tuple[list[tuple], list[str]]:
    """(samples in order, problems) of one shard file: a sample is (key, label value), the
    label None in an unlabelled data set. With labels (kind, count), each image member must be
    followed by a label member of its key holding a valid label."""
    path, res, ext, labels = task
    label_ext = LABEL_MEMBERS[labels[0]] if labels else None
    keys: list[tuple] = []
    problems: list[str] = []
    missing = "<missing>"  # a labelled sample's label before its member is read

    def problem(msg: str) -> None:
        if len(problems) < _MAX_ERRORS_PER_SHARD:
            problems.append(f"{path}: {msg}")

    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        return keys, [f"{path}: unreadable tar: {exc}"]
    with tar:
        try:
            for info in tar:
                key, dot, member_ext = info.name.partition(".")
                if labels and member_ext == label_ext:
                    if not keys or keys[-1] != (key, missing):
                        problem(f"{info.name}: a label member not right after its image")
                        continue
                    f = tar.extractfile(info) if info.isreg() else None
                    try:
                        keys[-1] = (key, decode_label(*labels, f.read() if f else b""))
                    except ValueError as exc:
                        keys[-1] = (key, None)
                        problem(f"{info.name}: {exc}")
                    continue
                if keys and keys[-1][1] is missing:
                    problem(f"{keys[-1][0]}: no .{label_ext} label member after the image")
                keys.append((key, missing if labels else None))
                if not info.isreg():
                    problem(f"{info.name}: not a regular file")
                    continue
                if not dot or member_ext != ext or "/" in info.name:
                    problem(f"{info.name}: expected <key>.{ext}")
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        if im.size != (res, res):
                            problem(f"{info.name}: size {im.size[0]}x{im.size[1]}, "
                                    f"expected {res}x{res}")
                            continue
                        im.load()
                        if im.mode != "RGB":
                            problem(f"{info.name}: mode {im.mode}, expected RGB")
                except Exception as exc:  # any decode failure is a finding, not a crash
                    problem(f"{info.name}: does not decode: {type(exc).__name__}: {exc}")
        except (OSError, tarfile.TarError) as exc:
            problem(f"truncated or corrupt tar: {exc}")
    if keys and keys[-1][1] is missing:
        problem(f"{keys[-1][0]}: no .{label_ext} label member after the image")
    return keys, problems


def _manifest_problems(manifest: object) -> list[str]:
    """What keeps the manifest from being read, then whether it agrees with itself."""
    if manifest is None:
        return [f"{MANIFEST} is missing or not valid JSON"]
    problems = [f"{MANIFEST} {problem}" for problem in manifest_problems(manifest)]
    if problems:
        return problems
    resolutions = manifest["resolutions"]
    if sorted(str(r) for r in resolutions) != sorted(manifest["shards"]):
        problems.append("manifest resolutions and shard lists disagree")
    per_res = [[s["count"] for s in manifest["shards"].get(str(r), [])] for r in resolutions]
    if any(counts != per_res[0] for counts in per_res):
        problems.append("resolutions have different shard counts")
    if per_res and sum(per_res[0]) != manifest["num_images"]:
        problems.append(f"shard counts add up to {sum(per_res[0])}, "
                        f"num_images says {manifest['num_images']}")
    labels = manifest.get("labels")
    if labels and labels["kind"] == "class" and sum(labels["counts"]) != manifest["num_images"]:
        problems.append(f"label counts add up to {sum(labels['counts'])}, "
                        f"num_images says {manifest['num_images']}")
    return problems


def _label_counts(labels: dict, values: list) -> list[int]:
    """Images per class, or with each attribute set, from the labels read in the shards."""
    counts = [0] * len(labels["names"])
    for value in values:
        if labels["kind"] == "class":
            counts[value] += 1
        else:
            counts = [c + v for c, v in zip(counts, value, strict=True)]
    return counts


def verify(out: str | Path, *, workers: int | None = None) -> VerifyReport:
    """Check every shard of a data_prep output against its manifest.

    Counts per shard and in total, keys unique and without "." or "/", the same keys in the
    same order at every resolution, and every member decoding to RGB at its resolution. In a
    labelled data set: a valid label member after every image, the same labels at every
    resolution, and the manifest's label counts.
    """
    out = Path(out)
    manifest = read_json(out / MANIFEST)
    errors = _manifest_problems(manifest)
    if errors:
        return VerifyReport(False, f"verify {out}: FAILED ({len(errors)} problems)", errors)
    ext = manifest["image_format"]
    labels = manifest.get("labels")
    label_kind = (labels["kind"], len(labels["names"])) if labels else None
    tasks, expected = [], []
    try:
        for res in manifest["resolutions"]:
            for i, shard in enumerate(manifest["shards"][str(res)]):
                tasks.append((str(out / shard["path"]), int(res), ext, label_kind))
                expected.append((res, i, int(shard["count"])))
    except (KeyError, TypeError, ValueError) as exc:
        return VerifyReport(False, f"verify {out}: FAILED (malformed shard list)", [repr(exc)])
    workers = min(workers or default_workers(), max(len(tasks), 1))
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_check_shard, tasks)
    else:
        results = list(map(_check_shard, tasks))

    keys_by_shard: dict[int, list[tuple]] = {}
    all_keys: Counter[str] = Counter()
    for (res, i, count), (samples, problems) in zip(expected, results, strict=True):
        errors.extend(problems)
        if len(samples) != count:
            errors.append(f"{res}/shard {i}: {len(samples)} {'samples' if labels else 'members'}, "
                          f"manifest says {count}")
        if i not in keys_by_shard:
            keys_by_shard[i] = samples
            all_keys.update(key for key, _ in samples)
        elif [k for k, _ in samples] != [k for k, _ in keys_by_shard[i]]:
            errors.append(f"{res}/shard {i}: keys differ from resolution "
                          f"{manifest['resolutions'][0]}")
        elif samples != keys_by_shard[i]:
            errors.append(f"{res}/shard {i}: labels differ from resolution "
                          f"{manifest['resolutions'][0]}")
    dupes = [k for k, n in all_keys.items() if n > 1]
    if dupes:
        errors.append(f"{len(dupes)} duplicate keys, e.g. {dupes[:3]}")
    bad = [k for k in all_keys if "." in k or "/" in k or not k]
    if bad:
        errors.append(f"{len(bad)} keys with '.' or '/' or empty, e.g. {bad[:3]}")

    if labels and not errors:
        found = _label_counts(labels, [v for i in sorted(keys_by_shard) for _, v in keys_by_shard[i]])
        if found != labels["counts"]:
            errors.append(f"label counts in the shards are {found}, "
                          f"the manifest says {labels['counts']}")
    n_shards = len(keys_by_shard)
    res = manifest["resolutions"]
    if errors:
        return VerifyReport(False, f"verify {out}: FAILED ({len(errors)} problems)", errors)
    return VerifyReport(True, f"verify {out}: OK, {manifest['num_images']} images x "
                              f"{len(res)} resolutions ({res[0]}..{res[-1]}), {n_shards} shards "
                              f"per resolution, {len(manifest['skipped'])} inputs skipped at prep"
                              + (f", {labels['kind']} labels ({len(labels['names'])} names) checked"
                                 if labels else ""))
