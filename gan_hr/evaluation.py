"""Image-quality metrics of a generator against a data set, for evaluate.py and the trainer.

What is compared, exactly:

* Real: the first ``num_images`` images of the data set's stream at the generator's resolution,
  read by one reader with ``seed``, no mirroring (`gan_hr.data.ShardStream`). With several
  processes, rank r reads positions ``[r * share, (r + 1) * share)`` of that same stream, so the
  set does not depend on the number of processes.
* Fake: sample i comes from ``latents_from_seeds([seed + i])`` (what ``generate.py --seed S``
  writes as sample i), through the generator in eval mode without gradients, StyleGAN noise
  ``const``, quantised to uint8 as a saved PNG would be. Rank r makes samples
  ``[r * share, (r + 1) * share)``. A conditional generator's sample i takes a label drawn from
  the data's label frequencies with seed ``seed + i`` (``gan_hr.labels.labels_from_seeds``, what
  generate.py writes without --class); `per_class_swd` instead fixes the class.

Per-process features (Inception pool features, SWD patch descriptors) are concatenated across
processes with ``gather`` (e.g. ``accelerator.gather``) in rank order, and cut back to
``num_images``, so every process returns the same numbers, and SWD is
``compute_swd(real, fake, seed=seed)`` of those images whatever the number of processes.

Nothing here draws from the global torch RNG (latents, patch positions and projection directions
come from their own generators) and the whole evaluation runs inside ``fork_rng`` as well: a
training run that evaluates stays bit-exact on resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gan_hr.data import ShardInfo, ShardStream, load_manifest, resolution_shards
from gan_hr.labels import data_labels, labels_from_seeds
from gan_hr.metrics import (
    METRICS,
    NEEDS_INCEPTION,
    InceptionFeatures,
    inception_metrics,
    resolve_inception_weights,
    stats_cache_key,
)
from gan_hr.metrics.fid import no_gather
from gan_hr.metrics.swd import (
    MIN_RESOLUTION as SWD_MIN_RESOLUTION,
    level_resolutions,
    sliced_wasserstein_steps,
    swd_descriptors,
    swd_floor_from_descriptors,
    swd_from_descriptors,
)
from gan_hr.sampling import latents_from_seeds, to_uint8

__all__ = ["SWD_MIN_RESOLUTION", "Evaluator", "default_cache_dir", "per_class_swd"]

Gather = Callable[[Tensor], Tensor]
SWD_PATCHES = 128  # compute_swd's default: 7x7 patches per image and pyramid level
SWD_DIRS, SWD_REPEATS = 512, 4  # and its projection directions


def default_cache_dir(data_root: str) -> Path:
    """Where real-image Inception statistics are kept when no cache_dir is given.

    ``<data_root>/.fid_cache`` for a local data set we may write to; otherwise (read-only
    or remote data) ``$XDG_CACHE_HOME/gan_hr/fid`` (``~/.cache/gan_hr/fid``). The file names
    hash the manifest, so one folder can serve many data sets.
    """
    local = Path(data_root)
    if "://" not in data_root and not data_root.startswith("pipe:") and local.is_dir() and os.access(local, os.W_OK):
        return local / ".fid_cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan_hr" / "fid"


class _RealImages:
    """The real side of every evaluation: images ``[first, first + count)`` of the first
    ``num_images`` of the data set's one-reader stream, and the files that cache their Inception
    statistics.

    Apart from `Evaluator` because none of it depends on the generator: the manifest is read and
    the image count checked once, and then any resolution can be read, or found in the cache.
    """

    def __init__(
        self,
        data_root: str,
        num_images: int,
        *,
        seed: int,
        batch_size: int,
        first: int,
        count: int,
        cache_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.data_root = data_root
        self.manifest = load_manifest(data_root)
        if num_images > self.manifest["num_images"]:
            raise ValueError(f"num_images {num_images} is more than the {self.manifest['num_images']} images "
                             f"of {data_root}; the real set would repeat images")
        self.num_images, self.seed, self.batch_size = num_images, seed, batch_size
        self.first, self.count = first, count
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(data_root)
        self._cache_paths: dict[tuple[int, str], Path] = {}

    def batches(self, resolution: int) -> Iterator[Tensor]:
        """This share at ``resolution``, in batches; a resolution the data set lacks fails here,
        not when (or if) the batches are read."""
        shards = resolution_shards(self.manifest, self.data_root, resolution)
        return self._read(shards, resolution)

    def _read(self, shards: list[ShardInfo], resolution: int) -> Iterator[Tensor]:
        # One image per stream batch: start_batch then skips exactly `first` images (by tar
        # headers, without decoding them).
        stream = ShardStream(shards, batch_size=1, resolution=resolution, seed=self.seed, start_batch=self.first,
                             slots=1)
        samples = iter(stream)
        for size in _chunks(self.count, self.batch_size):
            yield torch.cat([next(samples)["image"] for _ in range(size)]).contiguous()

    def cache_path(self, resolution: int, weights_path: str | os.PathLike[str]) -> Path:
        """The file for the Inception statistics of all num_images at ``resolution`` (hashing the
        weights file once per resolution)."""
        key = (resolution, str(weights_path))
        if key not in self._cache_paths:
            digest = stats_cache_key(self.manifest, resolution, weights_path, num_images=self.num_images)
            name = f"inception-{resolution}px-{self.num_images}img-seed{self.seed}-{digest}.pt"
            self._cache_paths[key] = self.cache_dir / name
        return self._cache_paths[key]

    def swd_floor_path(self, resolution: int, dirs: int = SWD_DIRS, repeats: int = SWD_REPEATS) -> Path:
        """The file for the real-vs-real SWD floor of these num_images at ``resolution``."""
        identity = {"version": 1, "manifest": self.manifest, "resolution": resolution, "num_images": self.num_images,
                    "seed": self.seed, "patches": SWD_PATCHES, "dirs": dirs, "repeats": repeats}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"swd-floor-{resolution}px-{self.num_images}img-seed{self.seed}-{digest}.json"


class Evaluator:
    """Metrics of generators against one data set; build once, call at each evaluation.

    Building it checks the metric names and loads the Inception network when FID or KID is asked
    for (raising ``MissingInceptionWeights`` before any work), so a training run fails at start-up
    rather than at its first evaluation. Call it on every process of a distributed run with that
    process's ``rank`` and a ``gather`` that concatenates tensors across processes in rank order.

    This is the generator side: it makes this rank's fakes, feeds them with the reals
    (`_RealImages`) to every metric in one pass, and gathers the results across processes.
    """

    def __init__(
        self,
        data_root: str,
        metrics: Sequence[str],
        *,
        num_images: int,
        batch_size: int = 32,
        seed: int = 0,
        device: torch.device | str = "cpu",
        inception_weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        rank: int = 0,
        world_size: int = 1,
        gather: Gather | None = None,
        progress: bool = False,
        swd_floor: bool = False,
        swd_dirs: int = SWD_DIRS,
        swd_repeats: int = SWD_REPEATS,
    ) -> None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(sorted(METRICS))}")
        if num_images < 2 or batch_size < 1:
            raise ValueError(f"num_images must be at least 2 and batch_size positive, got {num_images}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if world_size > 1 and gather is None:
            raise ValueError("a distributed evaluation needs a gather function (e.g. accelerator.gather)")
        # First, so that a missing weights file is the error reported even when more is wrong.
        weights = resolve_inception_weights(inception_weights) if NEEDS_INCEPTION.intersection(metrics) else None
        self.metrics = list(dict.fromkeys(metrics))
        # Equal shares, so that gathers see the same shape on every rank; the surplus is cut.
        self.share = math.ceil(num_images / world_size)
        self.reals = _RealImages(data_root, num_images, seed=seed, batch_size=batch_size, first=rank * self.share,
                                 count=self.share, cache_dir=cache_dir)
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.gather = gather or no_gather
        self.progress = progress
        self.swd_floor = swd_floor
        # Random projections of SWD: fewer give the same expected distance, with more noise.
        self.swd_dirs, self.swd_repeats = swd_dirs, swd_repeats
        self.inception = InceptionFeatures(weights, device=self.device) if weights is not None else None

    def metrics_at(self, resolution: int) -> list[str]:
        """The configured metrics that can be computed at ``resolution`` (SWD needs 16² or more)."""
        return [m for m in self.metrics if m != "swd" or resolution >= SWD_MIN_RESOLUTION]

    def __call__(
        self,
        G: nn.Module,
        resolution: int,
        alpha: float = 1.0,
        *,
        metrics: Sequence[str] | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> dict[str, float]:
        """``metrics`` (default: all configured) of ``G(z, resolution, alpha)``, as a flat dict:
        ``swd_<res>`` and ``swd_mean`` (x 1e3), ``fid``, ``kid`` and ``kid_std``; with
        ``swd_floor=True`` also ``swd_floor_<res>`` and ``swd_floor_mean``, the SWD of the real
        set's two halves against each other (cached per data set, resolution and image count).

        Generation runs on G's device, in eval mode (G's mode is restored after).
        """
        names = list(dict.fromkeys(metrics)) if metrics is not None else self.metrics
        extra = [m for m in names if m not in self.metrics]
        if extra or not names:
            raise ValueError(f"metrics {extra or '(none)'} were not configured; this evaluator has {self.metrics}")
        if "swd" in names and resolution < SWD_MIN_RESOLUTION:
            raise ValueError(f"SWD needs images of at least {SWD_MIN_RESOLUTION}², got {resolution}² "
                             "(metrics_at(resolution) lists what applies)")
        style = getattr(G, "supports_style", False)
        if not style and (truncation_psi != 1.0 or truncation_cutoff is not None):
            raise ValueError(f"truncation needs a StyleGAN generator, not {type(G).__name__}")
        style_kwargs = (
            {"truncation_psi": truncation_psi, "truncation_cutoff": truncation_cutoff, "noise_mode": "const"}
            if style else {}
        )
        gen_device = next(G.parameters()).device
        cuda = [gen_device] if gen_device.type == "cuda" else []
        if self.device.type == "cuda" and self.device not in cuda:
            cuda.append(self.device)
        was_training = G.training
        try:
            with torch.random.fork_rng(devices=cuda), torch.no_grad():
                G.eval()
                return self._evaluate(G, resolution, alpha, names, style_kwargs)
        finally:
            G.train(was_training)

    # ------------------------------------------------------------------ one evaluation

    def _evaluate(
        self, G: nn.Module, resolution: int, alpha: float, names: list[str], style_kwargs: Mapping
    ) -> dict[str, float]:
        real_batches = self.reals.batches(resolution)
        inception_names = [m for m in names if m in NEEDS_INCEPTION]
        real_cache = self._agreed_cache(resolution) if inception_names else None
        cached = real_cache is not None and real_cache.is_file()
        swd = "swd" in names
        real_sinks: list[Callable[[Tensor], None]] = []
        fake_sinks: list[Callable[[Tensor], None]] = []
        if swd:
            # Real and fake draw patch positions from generators seeded alike (common random numbers).
            levels, skip = len(level_resolutions(resolution)), self.rank * self.share
            real_swd, fake_swd = (_Descriptors(self.seed, self.device, levels, skip) for _ in range(2))
            real_sinks.append(real_swd.add)
            fake_sinks.append(fake_swd.add)
        reads_reals = swd or (bool(inception_names) and not cached)
        result: dict[str, float] = {}
        bar = tqdm(total=self.share * (2 if reads_reals else 1), desc=f"evaluate {resolution}²", unit="img",
                   disable=not self.progress, dynamic_ncols=True)
        with bar:
            reals = _tee(real_batches, real_sinks, bar)
            fakes = _tee(self._fake_batches(G, resolution, alpha, style_kwargs), fake_sinks, bar)
            if inception_names:
                result.update(inception_metrics(
                    reals, fakes, features=self.inception, metrics=inception_names, real_cache=real_cache,
                    gather=self._gather_first(self.num_images), seed=self.seed,
                ))
            if swd:
                # Whatever the Inception pass did not read (cached real statistics, or no FID).
                for _ in reals:
                    pass
                for _ in fakes:
                    pass
        if swd:
            result.update(self._swd(resolution, real_swd, fake_swd))
        return result

    def _swd(self, resolution: int, real_swd: _Descriptors, fake_swd: _Descriptors) -> dict[str, float]:
        """The distances from the gathered descriptors (and the real-vs-real floor), with a
        progress bar of their own: on a CPU they take longer than making the descriptors."""
        gather = self._gather_first(self.num_images * SWD_PATCHES)
        reals, fakes = real_swd.gathered(gather), fake_swd.gathered(gather)
        dirs, repeats = self.swd_dirs, self.swd_repeats
        floor_path = self.reals.swd_floor_path(resolution, dirs, repeats) if self.swd_floor else None
        floor = _read_json(floor_path) if floor_path is not None else None
        steps = len(reals) * sliced_wasserstein_steps(num_dirs=dirs, repeats=repeats)
        options = {"seed": self.seed, "num_dirs": dirs, "repeats": repeats, "device": self.device}
        bar = tqdm(total=steps * (2 if floor_path is not None and floor is None else 1), desc="swd distances",
                   unit="slice", disable=not self.progress, dynamic_ncols=True)
        with bar:
            result = swd_from_descriptors(reals, fakes, resolution, progress=bar.update, **options)
            if floor_path is not None and floor is None:
                bar.set_description("swd floor, real vs real (cached after)")
                floor = swd_floor_from_descriptors(reals, resolution, num_patches=SWD_PATCHES, progress=bar.update,
                                                   **options)
                _write_json(floor_path, floor)
        return {**result, **(floor or {})}

    def _fake_batches(self, G: nn.Module, resolution: int, alpha: float, style_kwargs: Mapping) -> Iterator[Tensor]:
        device = next(G.parameters()).device
        first = self.seed + self.rank * self.share
        labels = data_labels(self.reals.manifest) if getattr(G, "num_labels", 0) else None
        if getattr(G, "num_labels", 0) and labels is None:
            raise ValueError(f"a conditional generator needs labelled data; {self.reals.data_root} has no labels")
        for size in _chunks(self.share, self.batch_size):
            seeds = range(first, first + size)
            z = latents_from_seeds(seeds, G.latent_dim).to(device)
            kwargs = dict(style_kwargs)
            if labels is not None:
                kwargs["labels"] = labels_from_seeds(seeds, labels[0], labels[2]).to(device)
            first += size
            yield to_uint8(G(z, resolution, alpha, **kwargs).float())

    def _gather_first(self, rows: int) -> Gather:
        """`gather`, then the first `rows` rows: drops what the last ranks made beyond num_images."""
        def gather(x: Tensor) -> Tensor:
            return self.gather(x.to(self.device))[:rows]
        return gather

    def _agreed_cache(self, resolution: int) -> Path | None:
        """The real-statistics cache file, or None when the ranks disagree on whether it exists
        (a node-local cache): a rank that read it would skip the feature gather the others wait in."""
        path = self.reals.cache_path(resolution, self.inception.weights_path)
        if self.world_size == 1:
            return path
        flags = self.gather(torch.tensor([float(path.is_file())], device=self.device))
        return path if flags.min() == flags.max() else None


# --------------------------------------------------------------------------- per class


@torch.no_grad()
def per_class_swd(G: nn.Module, data_root: str, resolution: int, alpha: float = 1.0, *, num_images: int,
                  seed: int = 0, batch_size: int = 32, device: torch.device | str = "cpu",
                  style_kwargs: Mapping | None = None) -> dict[str, float]:
    """SWD (x 1e3) of a conditional generator per group of the data: per class, or per attribute
    value (``Smiling=1``, ``Smiling=0``, ...) for multi-label data. A group's reals are its first
    `num_images` in the data's one-reader stream (with `seed`; all of them when it has fewer), and
    its fakes, from seeds ``seed, seed + 1, ...``, carry those reals' own labels: an attribute
    group's other attributes follow the data, as the reals' do. Returns ``swd_mean_<group>`` and
    ``num_images_<group>`` for every group; one process."""
    from gan_hr.metrics.swd import compute_swd

    manifest = load_manifest(data_root)
    labels = data_labels(manifest)
    if labels is None:
        raise ValueError(f"--per-class needs a data set with labels; {data_root} has none")
    kind, names, _ = labels
    if getattr(G, "num_labels", 0) != len(names):
        raise ValueError(f"--per-class needs a conditional generator with the data's {len(names)} {kind}")
    groups = names if kind == "class" else [f"{name}={v}" for name in names for v in (1, 0)]
    reals: dict[str, list[Tensor]] = {g: [] for g in groups}
    label_rows: dict[str, list[Tensor]] = {g: [] for g in groups}
    shards = resolution_shards(manifest, data_root, resolution)
    stream = ShardStream(shards, batch_size=1, resolution=resolution, seed=seed, slots=1, labels=True)
    for position, batch in enumerate(stream):  # one pass over the data at most
        if position >= manifest["num_images"] or all(len(r) >= num_images for r in reals.values()):
            break
        if kind == "class":
            k = int(batch["label"][0])
            row, members = torch.nn.functional.one_hot(torch.tensor(k), len(names)).float(), [names[k]]
        else:
            row = batch["label"][0].float()
            members = [f"{name}={int(v)}" for name, v in zip(names, row.tolist())]
        for g in members:
            if len(reals[g]) < num_images:
                reals[g].append(batch["image"])
                label_rows[g].append(row)
    was_training = G.training
    G.eval()
    gen_device = next(G.parameters()).device
    result: dict[str, float] = {}
    try:
        with torch.random.fork_rng(devices=[gen_device] if gen_device.type == "cuda" else []):
            for g in groups:
                count = len(reals[g])
                if count < 2:
                    raise ValueError(f"{g!r} has {count} image(s) in {data_root}; SWD needs 2 or more")
                fakes = []
                for start in range(0, count, batch_size):
                    seeds = range(seed + start, seed + min(start + batch_size, count))
                    z = latents_from_seeds(seeds, G.latent_dim).to(gen_device)
                    y = torch.stack(label_rows[g][start : start + len(seeds)]).to(gen_device)
                    fakes.append(to_uint8(G(z, resolution, alpha, labels=y, **(style_kwargs or {})).float().cpu()))
                swd = compute_swd(torch.cat(reals[g]), torch.cat(fakes), seed=seed, device=device)
                result[f"swd_mean_{g}"] = swd["swd_mean"]
                result[f"num_images_{g}"] = count
    finally:
        G.train(was_training)
    return result


# --------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict[str, float] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: computed again


def _write_json(path: Path, values: dict[str, float]) -> None:
    """Atomically; a cache that cannot be written (read-only data) is only a cost, never an error.
    Every process may write: the content is identical."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _chunks(total: int, size: int) -> Iterator[int]:
    for start in range(0, total, size):
        yield min(size, total - start)


def _tee(batches: Iterable[Tensor], sinks: list[Callable[[Tensor], None]], bar: tqdm) -> Iterator[Tensor]:
    """Yield each batch after handing it to every sink, so one pass over the images feeds
    every metric."""
    for batch in batches:
        for sink in sinks:
            sink(batch)
        bar.update(batch.shape[0])
        yield batch


class _Descriptors:
    """SWD patch descriptors of a stream of batches, per pyramid level, kept on the CPU."""

    def __init__(self, seed: int, device: torch.device, num_levels: int, skip_images: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        # Positions come image by image from one stream (as in compute_swd): drawing the earlier
        # ranks' share first gives each image the positions one process would give it, so the
        # result does not depend on the number of processes.
        for n in _chunks(skip_images, 4096):
            torch.rand(n, num_levels, SWD_PATCHES, 2, generator=self.generator)
        self.device = device
        self.levels: list[list[Tensor]] = []

    def add(self, images: Tensor) -> None:
        levels = swd_descriptors(images.to(self.device), num_patches=SWD_PATCHES, generator=self.generator)
        if not self.levels:
            self.levels = [[] for _ in levels]
        for store, level in zip(self.levels, levels):
            store.append(level.cpu())

    def gathered(self, gather: Gather) -> list[Tensor]:
        return [gather(torch.cat(store)).cpu() for store in self.levels]
