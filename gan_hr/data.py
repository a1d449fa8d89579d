"""Shard stream for one resolution: node/worker split, shuffling, decode, exact cheap resume.

Each rank owns a fixed number of *slots* (``slots``, 16 by default), ``world_size * slots`` in
all. Each slot owns an infinite, deterministic sample sequence; per epoch the slots' samples are
disjoint and together cover the data set, and no slot is ever empty, so no rank or worker runs
dry (no DDP hang on uneven shards).

Epoch ``e`` of slot ``s`` out of ``S`` slots:

* the shards are put in an order drawn from ``(seed, e)``;
* with at least ``S`` shards, slot ``s`` takes the shards at positions ``s, s + S, ...`` of that
  order, all their samples; with fewer, it reads every shard in that order and takes the samples
  whose index in the epoch's global sequence is ``s`` modulo ``S`` (the others are never decoded);
* inside a shard, samples are visited in an order drawn from ``(seed, e, shard index)``, and the
  same generator decides each member's mirror flip.

A slot's sequence is cut into batches of ``batch_size`` consecutive samples, and a rank's batch
``b`` is batch ``b // slots`` of its slot ``b % slots``: the order depends on (seed, rank, world
size) alone, never on the loader's workers. Worker ``w`` of ``W`` makes the rank's batches
``w, w + W, ...`` (slots ``w, w + W, ...``, each in turn), which is exactly the order in which the
DataLoader takes batches from its workers, round-robin, whenever ``W`` divides ``slots``; with no
workers one process makes them all. So ``data.num_workers`` is a speed setting only: a run may
resume with another count and continue bit for bit. A stream built with ``start_batch=b0`` starts
each worker at the rank's batch ``b0 + w``. Skipping uses the manifest counts (whole epochs and
shards are never read) and then the tar headers (skipped members are never decoded).

A corrupt member (undecodable, wrong size, missing) is skipped, logged and counted; its batch is
filled with the next good samples after the batch's own positions. A batch's positions in its
slot's sequence never move, so resume stays exact with corrupt data too. A shard that cannot be
opened, or a whole epoch of corrupt samples in a row, is a `DataError`: training cannot go on.

Labels: in a labelled data set (`gan_hr.manifest`) each image member is followed by its label
member. The stream always steps over those (a sample is still one image); asked for labels
(``labels=True``) it also yields each batch's labels, and a sample whose label member is missing
or malformed counts as corrupt. Labels follow their images through shuffling, splitting, resume
and mirroring (a flip changes no label).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gan_hr.config import SLOTS_PER_RANK
from gan_hr.image_ops import READ_RGB, load_image_ops
from gan_hr.manifest import (
    LABEL_MEMBERS,
    MANIFEST,
    ManifestError,
    decode_label,
    parse_manifest,
    remote_template,
)

__all__ = [
    "DataError",
    "ShardInfo",
    "STOP_SIGNALS",
    "ShardStream",
    "data_url",
    "load_manifest",
    "loader_workers",
    "make_loader",
    "resolution_shards",
    "to_float",
]

log = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = {"png", "jpg", "jpeg"}
# The op under torchvision.io.decode_image (PNG or JPEG bytes -> uint8 CHW view of HWC pixels):
# the Python wrapper costs ~4 us a call, 5% of decoding a 64² PNG.
load_image_ops()
_decode_image = torch.ops.image.decode_image
# Paths inside a data set: relative, no "..", no characters a shell would interpret (they may be
# substituted into a `pipe:` command).
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
# What SLURM sends every process of a job step to stop it: the training process handles them.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Corrupt members: log the first few of each process in full, then every this-many-th.
_LOG_FIRST = 10
_LOG_EVERY = 1000


class DataError(RuntimeError):
    """A data fault training cannot continue past (a shard missing or unreadable, data that is
    all corrupt), said in one line that names the shard."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error is raised again in the trainer as DataError("Caught DataError
        # in DataLoader worker process N.\nOriginal Traceback ... DataError: <message>"): keep the
        # one line worth printing.
        super().__init__(message.rstrip().rpartition(f"{DataError.__name__}: ")[2])


def _unreadable(url: str, err: OSError) -> DataError:
    return DataError(f"shard {url} is missing or unreadable ({type(err).__name__}: {err.strerror or err})")


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of one resolution and how many images it holds."""

    url: str
    count: int
    # (kind, number of classes or attributes) of a labelled data set, whose shards hold a label
    # member after each image; None for images only.
    labels: tuple[str, int] | None = None


def data_url(root: str, path: str) -> str:
    """Where `path` (relative to a data set root) lives.

    `root` is a local directory, a URL webdataset's gopen opens (``file://``, ``http(s)://``, ...),
    or a ``pipe:`` command: its ``{path}`` is replaced by the relative path
    (``pipe:aws s3 cp s3://bucket/celebahq/{path} -``), or without one the path follows its last
    word that ends in ``/`` (``pipe:aws s3 cp s3://bucket/celebahq/ -``); see
    `gan_hr.manifest.remote_template`.
    """
    if not _SAFE_PATH.fullmatch(path) or ".." in path.split("/"):
        raise ValueError(f"unsafe path in data set {root!r}: {path!r}")
    if root.startswith("pipe:") or urlparse(root).scheme:
        return remote_template(root).replace("{path}", path)
    return os.path.join(root, path)


def _local_path(url: str) -> str | None:
    """The file system path of a local `url`, or None when something else must open it."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    # One-letter schemes are Windows drive letters.
    return url if len(parsed.scheme) <= 1 else None


def _read_bytes(url: str) -> bytes:
    path = _local_path(url)
    if path is not None:
        with open(path, "rb") as f:
            return f.read()
    from webdataset.gopen import gopen  # only remote data needs it

    with gopen(url, "rb") as stream:
        return stream.read()


def load_manifest(root: str) -> dict:
    """Read ``{root}/manifest.json`` (`root` as in `data_url`) and check it (ManifestError)."""
    try:
        return parse_manifest(_read_bytes(data_url(root, MANIFEST)))
    except ManifestError as exc:
        raise ManifestError(f"{data_url(root, MANIFEST)} {exc}") from None


def resolution_shards(manifest: dict, root: str, resolution: int) -> list[ShardInfo]:
    """The shards of one resolution, in manifest order (shard i holds the same images at every
    resolution, so its index is a stable identity for shuffling)."""
    shards = manifest["shards"].get(str(resolution))
    if not shards:
        raise ValueError(
            f"data set {root!r} has no resolution {resolution}; it has {manifest['resolutions']}"
        )
    labels = manifest.get("labels")
    kind = None if labels is None else (labels["kind"], len(labels["names"]))
    return [ShardInfo(data_url(root, s["path"]), int(s["count"]), kind) for s in shards]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] (any memory layout) -> contiguous float32 in [-1, 1].

    Done on the training side, ideally on the device: shipping uint8 from the workers moves a
    quarter of the bytes, and the channels_last -> contiguous transpose is nearly free there.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


# --- shard reading ---------------------------------------------------------------------------

_ZERO_BLOCK = bytes(512)


def _tar_number(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for big values
        return int.from_bytes(field[1:], "big")
    return int(field.rstrip(b"\0 ").strip() or b"0", 8)


def _tar_members(buf) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file of an uncompressed tar, in order.

    A minimal reader over the whole shard in memory: `tarfile` costs ~50 us per member, more than
    half the time it takes to decode a 64² PNG. Stops at the end marker or at the first damaged
    header (what follows counts as missing). Handles ustar prefixes, pax paths and GNU long names.
    """
    members: list[tuple[str, int, int]] = []
    long_name: str | None = None
    offset, end = 0, len(buf)
    while offset + 512 <= end:
        header = buf[offset : offset + 512]
        if header == _ZERO_BLOCK:
            break
        try:
            # Every format we read (ustar, pax, GNU) carries this magic; a cheap damage check.
            if header[257:262] != b"ustar":
                raise ValueError("no ustar magic")
            size = _tar_number(header[124:136])
        except ValueError:
            log.warning("damaged tar header at byte %d; the rest of the shard is skipped", offset)
            break
        data = offset + 512
        if data + size > end:
            log.warning("tar member at byte %d is truncated; the rest is skipped", offset)
            break
        kind = header[156:157]
        if kind == b"L":
            long_name = bytes(buf[data : data + size]).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":
            for record in bytes(buf[data : data + size]).decode("utf-8", "replace").split("\n"):
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
        elif kind in (b"0", b"\0", b"7"):
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = f"{prefix.decode('utf-8', 'replace')}/{name}"
            members.append((name, data, size))
            long_name = None
        else:
            long_name = None  # directories, links, global pax headers: not images
        offset = data + (size + 511) // 512 * 512
    return members


def _open_shard(url: str):
    """The whole shard as a writable buffer that `torch.frombuffer` can view without copying.

    Local files are memory-mapped copy-on-write: pages come from the page cache only when used
    (skipped members are never read) and are shared by all workers. Anything else is read through
    webdataset's gopen. A shard that cannot be read is a `DataError`.
    """
    path = _local_path(url)
    try:
        if path is None:
            return bytearray(_read_bytes(url))
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return bytearray()
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as err:
        raise _unreadable(url, err) from err


def _check_shards(shards: list[ShardInfo]) -> None:
    """Raise `DataError` for the first local shard that cannot be opened (remote ones are only
    tried when read): a phase with a missing shard fails as it starts, not when a worker gets to
    the shard. Opens each file, reads nothing."""
    for shard in shards:
        path = _local_path(shard.url)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise _unreadable(shard.url, err) from None


class _Shard:
    """One shard's members, padded or cut to the manifest count so positions never shift."""

    def __init__(self, info: ShardInfo):
        self.url = info.url
        self.buffer = _open_shard(info.url)
        members = _tar_members(self.buffer)
        # Data offset of an image member -> (offset, size) of its label member.
        self.labels: dict[int, tuple[int, int]] = {}
        if info.labels is not None:
            members = self._pair_labels(members, LABEL_MEMBERS[info.labels[0]])
        if len(members) != info.count:
            log.warning(
                "%s has %d members, the manifest says %d; missing ones count as corrupt",
                info.url, len(members), info.count,
            )
        self.members: list[tuple[str, int, int] | None] = members[: info.count]
        self.members += [None] * (info.count - len(self.members))

    def _pair_labels(self, members: list[tuple[str, int, int]], label_ext: str
                     ) -> list[tuple[str, int, int]]:
        """The image members; each label member that follows its image (same key) is noted in
        `labels`. A label member anywhere else belongs to no sample and is passed over."""
        images: list[tuple[str, int, int]] = []
        image_key = None
        for name, offset, size in members:
            key, _, ext = name.rpartition("/")[2].partition(".")
            if ext != label_ext:
                images.append((name, offset, size))
                image_key = key
            elif key == image_key and images[-1][1] not in self.labels:
                self.labels[images[-1][1]] = (offset, size)
        return images

    def label(self, member: tuple[str, int, int], kind: tuple[str, int]) -> int | list[int]:
        """The label of an image member (ValueError when it has none or it is malformed)."""
        span = self.labels.get(member[1])
        if span is None:
            raise ValueError("no label member after the image")
        offset, size = span
        return decode_label(kind[0], kind[1], bytes(self.buffer[offset : offset + size]))


# --- sample order ----------------------------------------------------------------------------


def _member_key(name: str) -> str:
    """The key of member "dir/abc.png" is "abc" (keys hold no "." and no "/")."""
    return name.rpartition("/")[2].partition(".")[0]


def _rng(*words: int) -> np.random.Generator:
    seed = np.random.SeedSequence([w & (2**64 - 1) for w in words])
    return np.random.Generator(np.random.PCG64(seed))


# A sample chosen for a slot, not decoded yet: (key, shard, member or None if missing, flip).
_RawItem = tuple[str, _Shard, "tuple[str, int, int] | None", bool]
# A decoded sample: (key, image or None if corrupt, flip), and its label when labels are asked for.
_Sample = tuple  # (str, torch.Tensor | None, bool) or (str, torch.Tensor | None, bool, label)


class _SlotSequence:
    """The infinite sample sequence of one slot (see the module docstring)."""

    def __init__(self, shards: list[ShardInfo], seed: int, slot: int, num_slots: int):
        self.shards, self.seed, self.slot, self.num_slots = shards, seed, slot, num_slots

    def epoch_plan(self, epoch: int) -> list[tuple[int, range]]:
        """(shard index, positions in the shard's visiting order) of this slot in `epoch`."""
        order = _rng(self.seed, epoch).permutation(len(self.shards)).tolist()
        if len(self.shards) >= self.num_slots:
            mine = order[self.slot :: self.num_slots]
            return [(i, range(self.shards[i].count)) for i in mine]
        plan, start = [], 0
        for i in order:
            count = self.shards[i].count
            first = (self.slot - start) % self.num_slots
            if first < count:
                plan.append((i, range(first, count, self.num_slots)))
            start += count
        return plan

    def items(self, position: int) -> Iterator[_RawItem]:
        """The sequence from `position` on; what comes before is skipped without being read."""
        epoch = 0
        while True:
            for index, positions in self.epoch_plan(epoch):
                if position >= len(positions):
                    position -= len(positions)
                    continue
                shard = _Shard(self.shards[index])
                rng = _rng(self.seed, epoch, index)
                order = rng.permutation(len(shard.members))
                flips = (rng.random(len(shard.members)) < 0.5).tolist()
                members = shard.members
                for m in order[positions[position:]].tolist():
                    member = members[m]
                    key = _member_key(member[0]) if member else f"{index}:{m}"
                    yield key, shard, member, flips[m]
                position = 0
                del shard  # the next shard's buffer replaces it, not joins it
            epoch += 1


# --- decoding and batching -------------------------------------------------------------------


class _CorruptLog:
    """Rate-limited warnings for corrupt members, per process."""

    def __init__(self):
        self.count = 0

    def __call__(self, item: _RawItem, reason: str) -> None:
        self.count += 1
        if self.count <= _LOG_FIRST or self.count % _LOG_EVERY == 0:
            key, shard, member, _ = item
            log.warning(
                "skipping corrupt member %r of %s (%s); %d skipped in this process so far",
                member[0] if member else key, shard.url, reason, self.count,
            )


def _decode(item: _RawItem, resolution: int, report: _CorruptLog) -> _Sample:
    key, shard, member, flip = item
    if member is None:
        report(item, "missing from the shard")
        return key, None, flip
    name, offset, size = member
    if name.rpartition(".")[2].lower() not in _IMAGE_EXTENSIONS:
        report(item, "not a .png/.jpg member")
        return key, None, flip
    try:
        data = torch.frombuffer(shard.buffer, dtype=torch.uint8, count=size, offset=offset)
        image = _decode_image(data, READ_RGB, False)
    except (RuntimeError, ValueError) as err:
        report(item, f"undecodable: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        return key, None, flip
    expected = (3, resolution, resolution)
    if image.dtype != torch.uint8 or image.shape != expected:
        report(item, f"{tuple(image.shape)} {image.dtype}, not {expected} uint8")
        return key, None, flip
    return key, image, flip


class ShardStream(IterableDataset):
    """Infinite stream of ready batches for one resolution, for one rank.

    Yields ``{"image": uint8 [batch_size, 3, R, R], "key": list[str], "skipped": int}`` where
    ``skipped`` counts corrupt members met at this batch's positions; with ``labels=True`` (a
    labelled data set) also ``"label"``: int64 [batch_size] class indices, or float32
    [batch_size, A] 0/1 attributes, in the manifest's order of names. ``image`` is stored
    channels_last (as decoders write it); `to_float` makes it contiguous. Use it in process or
    with a DataLoader with ``batch_size=None`` and a number of workers that divides `slots` (see
    `make_loader`); after this rank has taken `start_batch` batches from a stream with the same
    arguments, a new stream given that `start_batch` continues it exactly, whatever the workers.
    """

    def __init__(
        self,
        shards: list[ShardInfo],
        *,
        batch_size: int,
        resolution: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        mirror: bool = False,
        slots: int = SLOTS_PER_RANK,
        labels: bool = False,
    ):
        super().__init__()
        if not shards:
            raise ValueError("no shards")
        if any(s.count < 1 for s in shards):
            raise ValueError("every shard must hold at least one image")
        if batch_size < 1 or resolution < 1 or slots < 1 or start_batch < 0:
            raise ValueError("need batch_size, resolution, slots >= 1 and start_batch >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        total = sum(s.count for s in shards)
        if total < world_size * slots:
            raise ValueError(
                f"{total} images cannot feed {world_size * slots} slots ({slots} per rank)"
            )
        self.shards = list(shards)
        self.batch_size, self.resolution, self.seed = batch_size, resolution, seed
        self.rank, self.world_size, self.slots = rank, world_size, slots
        self.start_batch, self.mirror = start_batch, mirror
        self.total_images = total
        # (kind, size) of the labels to yield; None: images only (the fast path, unchanged).
        self.labels = None
        if labels:
            kinds = {s.labels for s in shards}
            if None in kinds or len(kinds) != 1:
                raise ValueError("the data set has no labels: prepare it with "
                                 "python -m data_prep --labels ...")
            self.labels = shards[0].labels

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.slots % workers:
            raise ValueError(
                f"{workers} loader workers cannot share {self.slots} slots in order; "
                f"use a number of workers that divides {self.slots}"
            )
        return self._interleaved(worker, workers)

    def _interleaved(self, worker: int, workers: int) -> Iterator[dict]:
        """This worker's batches of the rank's sequence: b0 + worker, then every workers-th."""
        per_slot: dict[int, Iterator[dict]] = {}
        batch = self.start_batch + worker
        while True:
            slot = batch % self.slots
            if slot not in per_slot:
                sequence = _SlotSequence(
                    self.shards, self.seed, self.rank * self.slots + slot, self.world_size * self.slots
                )
                per_slot[slot] = self._batches(sequence.items(batch // self.slots * self.batch_size))
            yield next(per_slot[slot])
            batch += workers

    def _samples(self, items: Iterator[_RawItem]) -> Iterator[_Sample]:
        report = _CorruptLog()
        bad_run = 0
        for item in items:
            sample = _decode(item, self.resolution, report)
            if self.labels is not None and sample[1] is not None:
                sample = self._labelled(sample, item, report)
            bad_run = bad_run + 1 if sample[1] is None else 0
            # A whole epoch's worth of corrupt samples in a row: broken data must fail loudly.
            if bad_run > self.total_images:
                raise DataError(f"more than {self.total_images} corrupt samples in a row at "
                                f"{self.resolution}x{self.resolution}: check the data with data_prep --verify")
            yield sample

    def _labelled(self, sample: _Sample, item: _RawItem, report: _CorruptLog) -> _Sample:
        """The decoded sample with its label, or corrupt when the label cannot be read."""
        key, shard, member, flip = item
        try:
            return (*sample, shard.label(member, self.labels))
        except ValueError as err:
            report(item, f"label: {err}")
            return key, None, flip

    def _batches(self, items: Iterator[_RawItem]) -> Iterator[dict]:
        samples = self._samples(items)
        ahead: deque[_Sample] = deque()  # decoded early to fill an earlier batch, not taken yet
        shape = (self.batch_size, 3, self.resolution, self.resolution)
        while True:
            window = [ahead.popleft() if ahead else next(samples) for _ in range(self.batch_size)]
            good = [s for s in window if s[1] is not None]
            skipped = len(window) - len(good)
            # Fill from the samples after this window; they stay queued for their own batch.
            lookahead = 0
            while len(good) < self.batch_size:
                if lookahead == len(ahead):
                    ahead.append(next(samples))
                if ahead[lookahead][1] is not None:
                    good.append(ahead[lookahead])
                lookahead += 1
            # Decoders write HWC: a channels_last batch takes the images with plain copies and
            # leaves the transpose to `to_float`, on the device.
            images = torch.empty(shape, dtype=torch.uint8, memory_format=torch.channels_last)
            mirror = self.mirror
            torch.stack([x.flip(-1) if mirror and flip else x for _, x, flip, *_ in good], out=images)
            batch = {"image": images, "key": [s[0] for s in good], "skipped": skipped}
            if self.labels is not None:
                dtype = torch.int64 if self.labels[0] == "class" else torch.float32
                batch["label"] = torch.tensor([s[3] for s in good], dtype=dtype)
            yield batch


def make_loader(
    root: str,
    resolution: int,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    start_batch: int = 0,
    mirror: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    labels: bool = False,
) -> Iterable[dict]:
    """A DataLoader over one resolution of the data set at `root` (see `data_url`) for one rank.

    Build a new one per resolution phase; nothing is shared between loaders. Do not pass it to
    ``accelerator.prepare``: the rank split is already done here. `num_workers` must divide
    `SLOTS_PER_RANK` (0 decodes in this process); it changes speed, never the batches. Every local
    shard is checked up front (`_check_shards`); with workers, an error stops them at once
    (`_StopWorkersOnError`). `labels=True` adds each batch's labels (see `ShardStream`).
    """
    shards = resolution_shards(load_manifest(root), root, resolution)
    _check_shards(shards)
    stream = ShardStream(
        shards,
        batch_size=batch_size,
        resolution=resolution,
        seed=seed,
        rank=rank,
        world_size=world_size,
        start_batch=start_batch,
        mirror=mirror,
        labels=labels,
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_ignore_stop_signals,
    )
    return _WorkerLoader(loader) if num_workers > 0 else loader


class _WorkerLoader:
    """A multi-worker DataLoader whose iterators shut their workers down as soon as they raise."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        # A stop signal between a worker's fork and its `_ignore_stop_signals` would kill it, and
        # the trainer with it: the workers start with the signals blocked, and one that comes
        # meanwhile waits for the training process, whose handler takes it once they are restored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            batches = iter(self.loader)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return _StopWorkersOnError(batches)


class _StopWorkersOnError:
    """A DataLoader iterator that lets go of its workers the moment it raises.

    The workers ignore SIGTERM (`_ignore_stop_signals`), and multiprocessing's exit handler stops
    the workers still running with SIGTERM and then waits for them: forever. Left alone, the
    iterator outlives its error, and its workers with it, up to that handler: the error's
    traceback holds the DataLoader's frames, which hold the iterator (the one that re-raises a
    worker's error holds the error too, a cycle only the garbage collector breaks). So the
    iterator and the traceback are dropped here: freeing the iterator shuts the workers down
    (DataLoader's `__del__`) before the error goes on. Like a generator, it ends after an error.
    """

    def __init__(self, batches: Iterator[dict]):
        self._batches = batches

    def __iter__(self) -> _StopWorkersOnError:
        return self

    def __next__(self) -> dict:
        try:
            return next(self._batches)
        except BaseException as err:
            self._batches = iter(())
            raise err.with_traceback(None)


def loader_workers(setting: int | str, resolution: int, *, cpus: int | None = None) -> int:
    """Loader worker processes per training process for one resolution phase.

    `setting` is ``data.num_workers``: a number is used as given; ``"auto"`` takes the CPUs this
    process may use (`cpus`; default its CPU affinity divided by ``LOCAL_WORLD_SIZE``, the
    training processes sharing the node), keeps one of them for the training process itself,
    caps the rest at ``max(2, resolution // 64)``: 2 up to 128², 4 at 256², 16 at 1024², and
    rounds down to a power of two (a divisor of `SLOTS_PER_RANK`). Decoding time per image grows
    with its pixels (one core: ~8k PNGs/s at 64², ~1.6k at 256², 100-250 at 1024²; a worker
    delivers ~0.6 of that), so the workers a device needs grow with the resolution; at the small
    ones two are ample, and more would only cost start-up time and memory in every phase. At
    least one worker. The count never changes the data, only how fast it comes.
    """
    if setting != "auto":
        return int(setting)
    if cpus is None:
        node = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cpus = (node or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    wanted = max(1, min(cpus - 1, max(2, resolution // 64), SLOTS_PER_RANK))
    return 1 << (wanted.bit_length() - 1)


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore SIGTERM/SIGUSR1: SLURM signals every process of a job step, and a worker
    killed by it would crash the trainer before it can write its checkpoint. The training
    process handles the signal and shuts the workers down itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked while it started (_WorkerLoader)
