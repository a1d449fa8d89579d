"""prepare(): source -> per-resolution shards + manifest, in parallel, atomic and resumable."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from data_prep.errors import NoUsableImages, PrepError
from data_prep.files import DEFAULT_MAX_FILE_MB, FileTooLarge, NotRegularFile
from data_prep.images import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    ImageSpec,
    SkipImage,
    encode_all,
    load_square,
    pixel_limit,
)
from data_prep.labels import LabelPlan, attach_labels
from data_prep.manifest import STATE, describe_difference, read_json, write_json_atomic
from data_prep.shards import ShardSetWriter
from data_prep.sources import (
    SYNTHETIC_PREFIX,
    SourceItem,
    close_zips,
    open_source,
    read_bytes,
)
from data_prep.synthetic import render_synthetic
from gan_hr.manifest import LABEL_MEMBERS, MANIFEST, build_manifest, encode_label, shard_relpath
from gan_hr.resolutions import is_power_of_two

# Bump when a change here changes the output bytes, so older prepared folders are not reused.
PREP_VERSION = 1
LOCK = ".data_prep.lock"


class Processed(NamedTuple):
    key: str
    source: str  # as reported in `skipped`
    images: dict[int, bytes] | None  # encoded image per resolution, None when skipped
    reason: str | None


@dataclass(frozen=True)
class PrepResult:
    manifest: dict
    processed: int  # inputs handled by this call (0 when the output was already complete)
    reused: bool


# Worker-side settings, set once per process instead of sent with every item.
_spec: ImageSpec | None = None
_seed = 0


def _configure(spec: ImageSpec, seed: int) -> None:
    global _spec, _seed
    _spec, _seed = spec, seed


def _init_pool_worker(spec: ImageSpec, seed: int) -> None:
    from PIL import Image

    # Ctrl-C goes to the whole process group: the parent stops the pool, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _configure(spec, seed)
    Image.MAX_IMAGE_PIXELS = spec.max_pixels


def _process(item: SourceItem) -> Processed:
    assert _spec is not None, "worker not initialised"
    if item.unlabelled is not None:  # skipped unread
        return Processed(item.key, item.source, None, item.unlabelled)
    try:
        if item.kind == "synthetic":
            image = render_synthetic(item.index, _spec.max_res, _seed)
        else:
            try:
                data = read_bytes(item, _spec.max_file_bytes)
            except NotRegularFile as exc:
                raise SkipImage(f"not a regular file ({exc})") from exc
            except FileTooLarge as exc:
                raise SkipImage(f"larger than --max-file-mb {_spec.max_file_mb} MB") from exc
            except Exception as exc:  # missing file, permissions, bad zip member (CRC, encrypted)
                raise SkipImage(f"unreadable: {type(exc).__name__}: {exc}") from exc
            image = load_square(data, _spec)
        return Processed(item.key, item.source, encode_all(image, _spec), None)
    except SkipImage as exc:
        return Processed(item.key, item.source, None, str(exc))


def default_workers() -> int:
    """Every core this process may run on (respects SLURM / taskset CPU binding)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return os.cpu_count() or 1


def _results(items: list[SourceItem], spec: ImageSpec, seed: int,
             workers: int) -> Iterator[Processed]:
    """Processed items, in source order, whatever the number of workers."""
    workers = min(workers, len(items))
    if workers <= 1:
        with pixel_limit(spec.max_pixels):
            _configure(spec, seed)
            try:
                yield from map(_process, items)
            finally:
                close_zips()
        return
    # spawn: the caller (the trainer) may hold threads, which fork does not survive safely.
    ctx = multiprocessing.get_context("spawn")
    chunksize = max(1, min(32, len(items) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_pool_worker, initargs=(spec, seed)) as pool:
        yield from pool.imap(_process, items, chunksize=chunksize)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One preparation per output folder at a time (e.g. every rank of a launch calling prepare)."""
    with open(out / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as exc:
            # Some cluster file systems (Lustre mounted without flock) do not lock at all.
            if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            print(f"data_prep: warning: cannot lock {out} ({exc.strerror}); "
                  "do not run two preparations into it at once", file=sys.stderr)
        yield


def _complete_manifest(out: Path, params: dict) -> dict | None:
    """The existing manifest if it was made with `params` and its shards are all there."""
    manifest = read_json(out / MANIFEST)
    if not isinstance(manifest, dict):
        return None
    held = manifest.get("params")
    if held != params:
        raise PrepError(f"{out} already holds a different preparation of "
                        f"{manifest.get('source')} ({describe_difference(held or {}, params)}); "
                        "use another --out or delete it")
    paths = [s["path"] for shards in manifest["shards"].values() for s in shards]
    return manifest if all((out / p).is_file() for p in paths) else None


def _resume_point(out: Path, params: dict) -> tuple[list[dict], list[dict]]:
    """Finished shards and skipped inputs of an interrupted run with the same params.

    A finished shard counts only while all its files are there with the recorded sizes; the
    first one that is not, and everything after it, is redone.
    """
    state = read_json(out / STATE)
    if not isinstance(state, dict):
        return [], []
    if state.get("params") != params:
        raise PrepError(f"{out} holds an unfinished preparation with other settings "
                        f"({describe_difference(state.get('params') or {}, params)}); "
                        "use another --out or delete it")
    done: list[dict] = []
    for i, shard in enumerate(state.get("shards", [])):
        ok = all((out / shard_relpath(int(r), i)).is_file()
                 and (out / shard_relpath(int(r), i)).stat().st_size == size
                 for r, size in shard["sizes"].items())
        if not ok:
            break
        done.append(shard)
    start = done[-1]["next"] if done else 0
    skipped = [s for s in state.get("skipped", []) if s["at"] < start]
    return done, skipped


def _check_args(max_res: int, min_res: int, shard_size: int, image_format: str,
                jpeg_quality: int, max_pixels: int, max_file_mb: int,
                workers: int | None) -> None:
    if not is_power_of_two(max_res) or not is_power_of_two(min_res) or min_res > max_res:
        raise PrepError(f"--max-res {max_res} / --min-res {min_res}: need powers of two "
                        "with min-res <= max-res")
    if shard_size < 1:
        raise PrepError(f"--shard-size {shard_size}: must be at least 1")
    if image_format not in FORMATS:
        raise PrepError(f"--format {image_format}: choose one of {', '.join(FORMATS)}")
    if not 1 <= jpeg_quality <= 100:
        raise PrepError(f"--jpeg-quality {jpeg_quality}: must be within 1..100")
    if max_pixels < max_res * max_res:
        raise PrepError(f"--max-pixels {max_pixels}: below max-res² ({max_res * max_res})")
    if max_file_mb < 1:
        raise PrepError(f"--max-file-mb {max_file_mb}: must be at least 1")
    if workers is not None and workers < 1:
        raise PrepError(f"--workers {workers}: must be at least 1")


def run_prepare(src: str, out: str | Path, *, max_res: int, min_res: int = 4,
                shard_size: int = 1000, workers: int | None = None, image_format: str = "png",
                jpeg_quality: int = 95, seed: int = 0, allow_upscale: bool = False,
                progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_file_mb: int = DEFAULT_MAX_FILE_MB, labels: str | None = None,
                label_columns: list[str] | None = None) -> PrepResult:
    """prepare(), also saying how much work this call did (for the CLI's closing line)."""
    _check_args(max_res, min_res, shard_size, image_format, jpeg_quality, max_pixels,
                max_file_mb, workers)
    spec = ImageSpec(max_res, min_res, image_format, jpeg_quality, allow_upscale, max_pixels,
                     max_file_mb)
    sources = open_source(src)
    plan = None
    if labels is not None:  # a label problem stops the run here, before anything is written
        sources, plan = attach_labels(sources, src, labels, label_columns, seed=seed,
                                      max_bytes=spec.max_file_bytes)
    elif label_columns is not None:
        raise PrepError("--label-columns: needs --labels FILE")
    params = {
        "prep_version": PREP_VERSION,
        "source_fingerprint": sources.fingerprint,
        "max_res": max_res,
        "min_res": min_res,
        "shard_size": shard_size,
        "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
        "seed": seed,
        "allow_upscale": allow_upscale,
        "max_pixels": max_pixels,
    }
    if not src.startswith(SYNTHETIC_PREFIX):
        # It decides which files are skipped; synthetic:N reads no file, and leaving the key
        # out keeps synthetic sets prepared before it existed reusable.
        params["max_file_mb"] = max_file_mb
    if plan is not None:  # absent without labels: unlabelled outputs stay as they were
        params["labels"] = plan.params
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {out}")
        (out / LOCK).touch()
    except OSError as exc:
        raise PrepError(f"--out {out}: cannot write there: {exc}") from exc

    manifest = _complete_manifest(out, params)
    if manifest is not None:
        return PrepResult(manifest, 0, True)
    with _locked(out):
        # Another process may have finished the job while this one waited for the lock.
        manifest = _complete_manifest(out, params)
        if manifest is not None:
            return PrepResult(manifest, 0, True)
        done, skipped = _resume_point(out, params)
        write_json_atomic(out / STATE, {"params": params, "shards": done, "skipped": skipped})
        start = done[-1]["next"] if done else 0
        todo = sources.items[start:]
        _write_shards(out, todo, start, spec, seed, workers or default_workers(), params,
                      done, skipped, progress, len(sources.items), plan)
        if not done:
            (out / STATE).unlink(missing_ok=True)
            reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:3])
            raise NoUsableImages(f"no usable image in {src} ({len(skipped)} skipped"
                                 + (f", e.g. {reasons}" if reasons else "") + ")")
        manifest = build_manifest(
            src=src, seed=seed, params=params, resolutions=spec.resolutions,
            shard_counts=[s["count"] for s in done],
            skipped=[{"source": s["source"], "reason": s["reason"]} for s in skipped],
            labels=None if plan is None else _label_summary(plan, sources.items, skipped))
        write_json_atomic(out / MANIFEST, manifest)
        (out / STATE).unlink(missing_ok=True)
    return PrepResult(manifest, len(todo), False)


def _label_summary(plan: LabelPlan, items: list[SourceItem], skipped: list[dict]) -> dict:
    """The manifest's "labels": images written per class, or with each attribute set."""
    gone = {s["at"] for s in skipped}
    written = [item.label for pos, item in enumerate(items) if pos not in gone]
    if plan.kind == "class":
        counts = [0] * len(plan.names)
        for label in written:
            counts[label] += 1
    else:
        counts = [sum(column) for column in zip(*written, strict=True)] or [0] * len(plan.names)
    return {"kind": plan.kind, "names": plan.names, "counts": counts, "source": plan.source}


def _write_shards(out: Path, todo: list[SourceItem], start: int, spec: ImageSpec, seed: int,
                  workers: int, params: dict, done: list[dict], skipped: list[dict],
                  progress: bool, total: int, plan: LabelPlan | None) -> None:
    """Consume processed items in order, cutting the good ones into shards; `done` and
    `skipped` grow in place and are saved to the state file after every finished shard."""
    writer: ShardSetWriter | None = None
    bar = tqdm(total=total, initial=start, unit="img", desc="data_prep", disable=not progress,
               dynamic_ncols=True)
    try:
        results: Iterator[Processed] = _results(todo, spec, seed, workers)
        with closing(results):  # stops the worker pool at once if writing fails
            for pos, (item, result) in enumerate(zip(todo, results, strict=True), start):
                bar.update()
                if result.images is None:
                    skipped.append({"source": result.source, "reason": result.reason, "at": pos})
                    continue
                if writer is None:
                    writer = ShardSetWriter(out, len(done), spec.resolutions, spec.extension)
                label = None if plan is None else (LABEL_MEMBERS[plan.kind],
                                                   encode_label(plan.kind, item.label))
                writer.add(result.key, result.images, label)
                if writer.count == params["shard_size"]:
                    sizes = writer.commit()
                    done.append({"count": writer.count, "next": pos + 1, "sizes": sizes})
                    writer = None
                    write_json_atomic(out / STATE, {"params": params, "shards": done,
                                                    "skipped": skipped})
        if writer is not None:
            done.append({"count": writer.count, "next": start + len(todo),
                         "sizes": writer.commit()})
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()


def prepare(src: str, out: str | Path, *, max_res: int, min_res: int = 4,
            shard_size: int = 1000, workers: int | None = None, image_format: str = "png",
            jpeg_quality: int = 95, seed: int = 0, allow_upscale: bool = False,
            progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
            max_file_mb: int = DEFAULT_MAX_FILE_MB, labels: str | None = None,
            label_columns: list[str] | None = None) -> dict:
    """Prepare SRC (folder, .zip or "synthetic:N") as shards under `out`; returns the manifest.

    A complete output made with the same arguments (and the same list of inputs) is returned
    as it is, without recomputing; an interrupted one is finished from its last complete shard.
    An output folder that holds a preparation with other arguments raises PrepError (nothing
    is deleted). Raises NoUsableImages (a PrepError) when every input is skipped. Inputs that
    are not regular files, or hold more than max_file_mb MB (2**20 bytes), are skipped without
    reading more than that.

    `labels` ("folders", "shapes" for synthetic:N, or a table file; `label_columns` picks the
    table's columns) stores a class or attribute vector with every image (`data_prep.labels`);
    inputs without one are skipped. A label file or column that cannot be used raises PrepError
    before anything is written.
    """
    return run_prepare(src, out, max_res=max_res, min_res=min_res, shard_size=shard_size,
                       workers=workers, image_format=image_format, jpeg_quality=jpeg_quality,
                       seed=seed, allow_upscale=allow_upscale, progress=progress,
                       max_pixels=max_pixels, max_file_mb=max_file_mb, labels=labels,
                       label_columns=label_columns).manifest
