"""Data throughput: shard preparation, and the shard stream against the raw decode limit.

    python benchmarks/data_throughput.py [--images 512] [--max-res 256] [--resolutions 64,256]
        [--batch-size 32] [--format png] [--seconds 1.5] [--repeats 3]
        [--sharing-strategy file_descriptor|file_system] [--json FILE]

For each resolution it measures, on the same shard bytes:

- raw decode limit: decoding the members in a tight loop on one core, no tar, no batching, no
  DataLoader; with the stream's decoder (torchvision) and with PIL for reference;
- the stream in this process (`ShardStream` iterated directly: read, shuffle, decode, batch);
- the hand-off floor: a worker that only hands ready-made batches of the same shape to the
  trainer (the DataLoader's queue and shared memory), which every worker pays on top of its work;
  `--sharing-strategy` picks how torch shares those batches between processes;
- `make_loader` with 1 and 2 workers: images/s seen by the trainer (wall clock) and per worker.

Rates are measured both in wall-clock time and in CPU time of the process doing the work (the
worker's own CPU time for loaders), which is less sensitive to other load on a shared machine.
The raw decoders and the in-process stream run in alternating short turns, so they see the same
load; each loader run is compared with raw decoding measured right before and after it. Ratios
are what to read on a shared machine; absolute rates drift with its load.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data_prep  # noqa: E402
from gan_hr.data import ShardStream, load_manifest, resolution_shards  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "data_throughput.json"


def timed(work, seconds: float) -> tuple[int, float, float]:
    """Run `work()` (returns images done) until `seconds` of wall time: (images, wall s, CPU s)."""
    images, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        images += work()
    return images, time.perf_counter() - wall0, time.process_time() - cpu0


def shard_blobs(shards) -> list[bytes]:
    blobs = []
    for shard in shards:
        with tarfile.open(shard.url) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if m.isfile()]
    return blobs


def raw_torchvision(blobs: list[bytes], chunk: int):
    tensors = itertools.cycle([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs])

    def work() -> int:
        for t in itertools.islice(tensors, chunk):
            decode_image(t, mode=ImageReadMode.RGB)
        return chunk

    return work


def raw_pil(blobs: list[bytes], chunk: int):
    cycle = itertools.cycle(blobs)

    def work() -> int:
        for b in itertools.islice(cycle, chunk):
            Image.open(io.BytesIO(b)).load()
        return chunk

    return work


def stream_in_process(shards, res: int, batch: int):
    stream = iter(ShardStream(shards, batch_size=batch, resolution=res, seed=0, mirror=True))
    next(stream)  # opens the first shard
    return lambda: len(next(stream)["key"])


def paired(works: dict, seconds: float, turns: int) -> dict:
    """Each work in short alternating turns, `seconds` in all: on a shared machine all of them
    see the same load, so their ratios hold even when the absolute rates drift."""
    totals = {name: [0, 0.0, 0.0] for name in works}
    for _ in range(turns):
        for name, work in works.items():
            for i, value in enumerate(timed(work, seconds / turns)):
                totals[name][i] += value
    return {name: rates(*t) for name, t in totals.items()}


class _Handoff(IterableDataset):
    """Ready-made batches of the stream's shape: what a worker pays just to hand batches over."""

    def __init__(self, res: int, batch: int):
        self.res, self.batch = res, batch

    def __iter__(self):
        images = torch.zeros((self.batch, 3, self.res, self.res), dtype=torch.uint8)
        images = images.to(memory_format=torch.channels_last)
        keys = [f"synth-{i:06d}" for i in range(self.batch)]
        while True:
            yield {"image": images.clone(), "key": list(keys), "skipped": 0}


class _WorkerClock(IterableDataset):
    """Tags each batch with its worker and that worker's CPU clock, to get per-worker CPU rates."""

    def __init__(self, dataset: IterableDataset):
        self.dataset = dataset

    def __iter__(self):
        worker = get_worker_info().id
        for batch in self.dataset:
            batch["worker"], batch["cpu"] = worker, time.process_time()
            yield batch


def loader(dataset: IterableDataset, workers: int, seconds: float) -> dict:
    batches = iter(DataLoader(_WorkerClock(dataset), batch_size=None, num_workers=workers))
    for _ in range(2 * workers):  # workers started, first shards open
        next(batches)
    first: dict[int, float] = {}
    last: dict[int, tuple[float, int]] = {}
    images, wall0 = 0, time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        b = next(batches)
        w = b["worker"]
        if w not in first:
            first[w] = b["cpu"]  # this batch's work happened before the clock starts
            last[w] = (b["cpu"], 0)
        else:
            last[w] = (b["cpu"], last[w][1] + len(b["key"]))
        images += len(b["key"])
    wall = time.perf_counter() - wall0
    del batches  # stops the workers
    cpu_rates = [n / (cpu - first[w]) for w, (cpu, n) in last.items() if cpu > first[w]]
    return {
        "images_per_s": images / wall,
        "per_worker_images_per_s": images / wall / workers,
        "per_worker_cpu_images_per_s": min(cpu_rates) if cpu_rates else None,
    }


def stream_loader(shards, res: int, batch: int, workers: int, seconds: float) -> dict:
    stream = ShardStream(shards, batch_size=batch, resolution=res, seed=0, mirror=True)
    return loader(stream, workers, seconds)


def rates(images: int, wall: float, cpu: float) -> dict:
    return {"images_per_s": images / wall, "cpu_images_per_s": images / cpu if cpu > 0 else None}


def best(runs: list[dict]) -> dict:
    return {k: max((r[k] for r in runs if r[k] is not None), default=None) for k in runs[0]}


def bench_resolution(root: str, res: int, args) -> dict:
    shards = resolution_shards(load_manifest(root), root, res)
    blobs = shard_blobs(shards)
    b = args.batch_size
    out = paired(
        {
            "raw_torchvision": raw_torchvision(blobs, b),
            "raw_pil": raw_pil(blobs, b),
            "stream_in_process": stream_in_process(shards, res, b),
        },
        args.seconds,
        args.turns,
    )
    # Loader runs take seconds to start and run beside the trainer process, so they cannot take
    # short turns: each is compared with raw decoding measured just before and after it, and the
    # median ratio over the repeats is kept.
    t = args.loader_seconds
    raw = raw_torchvision(blobs, b)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for name, run in [
            ("handoff_1_worker", lambda: loader(_Handoff(res, b), 1, t)),
            ("loader_1_worker", lambda: stream_loader(shards, res, b, 1, t)),
            ("loader_2_workers", lambda: stream_loader(shards, res, b, 2, t)),
        ]:
            before = rates(*timed(raw, t / 2))
            result = run()
            after = rates(*timed(raw, t / 2))
            for key in ("images_per_s", "cpu_images_per_s"):
                result[f"raw_{key}"] = (before[key] + after[key]) / 2
            runs.setdefault(name, []).append(result)
    out.update({name: best(r) for name, r in runs.items()})

    def ratio(name: str, key: str, raw_key: str) -> float:
        return statistics.median(r[key] / r[raw_key] for r in runs[name])

    handoff = 1 / ratio("handoff_1_worker", "per_worker_cpu_images_per_s", "raw_cpu_images_per_s")
    worker = ratio("loader_1_worker", "per_worker_cpu_images_per_s", "raw_cpu_images_per_s")
    raw_tv, in_process = out["raw_torchvision"], out["stream_in_process"]
    out["ratios"] = {
        "in_process_cpu_vs_raw": in_process["cpu_images_per_s"] / raw_tv["cpu_images_per_s"],
        "in_process_wall_vs_raw": in_process["images_per_s"] / raw_tv["images_per_s"],
        "in_process_cpu_vs_raw_pil": (
            in_process["cpu_images_per_s"] / out["raw_pil"]["cpu_images_per_s"]
        ),
        "worker_cpu_vs_raw": worker,
        # Hand-off time per image over raw decode time per image.
        "handoff_vs_raw_decode_time": handoff,
        "worker_cpu_vs_raw_plus_handoff": worker * (1 + handoff),
        "loader_1_worker_wall_vs_raw": ratio("loader_1_worker", "images_per_s", "raw_images_per_s"),
        "loader_2_workers_per_worker_wall_vs_raw": ratio(
            "loader_2_workers", "per_worker_images_per_s", "raw_images_per_s"
        ),
        "loader_2_workers_per_worker_cpu_vs_raw": ratio(
            "loader_2_workers", "per_worker_cpu_images_per_s", "raw_cpu_images_per_s"
        ),
    }
    out["images_in_shards"] = len(blobs)
    out["mean_member_bytes"] = sum(map(len, blobs)) / len(blobs)
    return out


def prepare(args, out: str) -> dict:
    start = time.perf_counter()
    manifest = data_prep.prepare(
        f"synthetic:{args.images}", out, max_res=args.max_res, shard_size=args.shard_size,
        workers=args.prep_workers, image_format=args.format, progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "images": manifest["num_images"], "max_res": args.max_res, "seconds": seconds,
        "images_per_s": manifest["num_images"] / seconds,
        "workers": args.prep_workers or os.cpu_count(),
    }


def print_table(result: dict) -> None:
    prep = result["prep"]
    print(f"\nprep: {prep['images']} synthetic images at max-res {prep['max_res']} with "
          f"{prep['workers']} workers: {prep['images_per_s']:.0f} images/s "
          f"({prep['seconds']:.1f} s)")
    rows = [
        ("raw decode, torchvision", "raw_torchvision", "images_per_s", "cpu_images_per_s"),
        ("raw decode, PIL", "raw_pil", "images_per_s", "cpu_images_per_s"),
        ("stream in process", "stream_in_process", "images_per_s", "cpu_images_per_s"),
        ("hand-off only, 1 worker", "handoff_1_worker", "images_per_s",
         "per_worker_cpu_images_per_s"),
        ("loader, 1 worker", "loader_1_worker", "images_per_s", "per_worker_cpu_images_per_s"),
        ("loader, 2 workers (total)", "loader_2_workers", "images_per_s", None),
        ("loader, 2 workers (each)", "loader_2_workers", "per_worker_images_per_s",
         "per_worker_cpu_images_per_s"),
    ]
    for res, r in result["resolutions"].items():
        print(f"\n{res}x{res} {result['format']}, batch {result['batch_size']}, "
              f"{r['images_in_shards']} images, {r['mean_member_bytes'] / 1024:.1f} KiB each, "
              f"sharing strategy {result['sharing_strategy']}")
        print(f"  {'':28s} {'img/s wall':>11s} {'img/s per CPU s':>16s}")
        for label, key, wall, cpu in rows:
            cpu_value = f"{r[key][cpu]:.0f}" if cpu and r[key][cpu] is not None else "-"
            print(f"  {label:28s} {r[key][wall]:11.0f} {cpu_value:>16s}")
        for name, value in r["ratios"].items():
            print(f"  {name:44s} {value:5.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--max-res", type=int, default=256)
    parser.add_argument("--resolutions", default="64,256", help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--format", choices=["png", "jpg"], default="png")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--prep-workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="per in-process measurement (raw decoders and stream, interleaved)")
    parser.add_argument("--turns", type=int, default=10, help="interleaved turns per measurement")
    parser.add_argument("--loader-seconds", type=float, default=1.0, help="per loader run")
    parser.add_argument("--repeats", type=int, default=3, help="loader runs (median ratio kept)")
    parser.add_argument("--sharing-strategy", choices=["file_descriptor", "file_system"],
                        default="file_descriptor", help="torch.multiprocessing's; the trainer's is "
                        "file_descriptor (torch's default)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    if max(resolutions) > args.max_res:
        parser.error("--resolutions must not exceed --max-res")

    torch.set_num_threads(1)  # the raw limit is one core; the stream decodes on one core too
    torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "torch": torch.__version__},
            "format": args.format, "batch_size": args.batch_size,
            "sharing_strategy": args.sharing_strategy,
            "prep": prepare(args, tmp),
            "resolutions": {res: bench_resolution(tmp, res, args) for res in resolutions},
        }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
