"""Does the demo learn, and at what cost: trains a config for each model and seed with the real
entry point, then scores the final EMA generator with pipelines/evaluate.py (SWD against the
real-vs-real floor of the same data).

    python benchmarks/learning.py [--config configs/demo.yaml] [--models progan stylegan]
        [--seeds 0 1 2] [--threads N] [--label NAME] [--runs DIR] [--json FILE] [key=value ...]

key=value overrides go to every run (e.g. schedule.max_res=16 train.total_kimg=6). Each run is
launched as `make demo` launches it (accelerate, one CPU process, --num_cpu_threads_per_process
--threads). Per run it reports SWD / floor, images per second at each resolution (the median of
the logged windows), the seconds spent at each resolution and the wall time of the whole launch.
It prints a Markdown table and writes JSON (default benchmarks/out/learning.json). Runs one after
another: a shared machine makes the times, never the SWDs, unreliable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> str:
    """The CPU and the vector extensions that decide fp32/bf16 speed (every table says which)."""
    model, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        isa = "AVX-512 with bf16"
    elif "avx512f" in flags:
        isa = "AVX-512, no bf16"
    elif "avx2" in flags:
        isa = "AVX2 only"
    else:
        isa = "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def train(run: Path, config: str | None, model: str, seed: int, threads: int, overrides: list[str]) -> float:
    """One launch of the trainer; returns its wall time in seconds."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads)]
    args = ["pipelines/train_progressive.py", "--run-dir", str(run)] + (["--config", config] if config else [])
    args += [f"model.name={model}", f"train.seed={seed}", "tracking.backend=none", *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    start = time.perf_counter()
    with open(run.parent / f"{run.name}.log", "w") as log:
        subprocess.run(launch + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def new_run_dir(runs: Path, name: str) -> Path:
    """runs/name for a new run: one that exists would be resumed or refused by the trainer."""
    run = runs / name.replace(" ", "_").replace("+", "-")
    if run.exists():
        raise SystemExit(f"error: {run} exists; remove it or pass another --runs (or --label)")
    return run


def evaluate(run: Path, threads: int) -> dict[str, Any]:
    """pipelines/evaluate.py's SWD record of the run's final checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "pipelines/evaluate.py", "--checkpoint", str(run), "--metric", "swd"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_by_resolution(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """Median images/s of the logged windows and the seconds spent, per resolution."""
    rates: dict[int, list[float]] = defaultdict(list)
    seconds: dict[int, float] = defaultdict(float)
    last_kimg = 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "images_per_s" not in row:
            continue
        res = int(row["resolution"])
        rates[res].append(row["images_per_s"])
        seconds[res] += (row["kimg"] - last_kimg) * row["sec_per_kimg"]
        last_kimg = row["kimg"]
    return {r: statistics.median(v) for r, v in sorted(rates.items())}, dict(sorted(seconds.items()))


def table(rows: list[dict[str, Any]], label: str, cpu: str) -> str:
    lines = [f"{label} on {cpu}", "",
             "| model | seed | SWD ×10³ | floor | SWD / floor | img/s per resolution | s per resolution | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rates = " ".join(f"{res}²:{v:.0f}" for res, v in r["images_per_s"].items())
        secs = " ".join(f"{res}²:{v:.0f}" for res, v in r["seconds"].items())
        lines.append(f"| {r['model']} | {r['seed']} | {r['swd_mean']:.1f} | {r['swd_floor_mean']:.1f} | "
                     f"{r['ratio']:.2f} | {rates} | {secs} | {r['wall_s']:.0f} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        ratios = [r["ratio"] for r in rows if r["model"] == model]
        walls = [r["wall_s"] for r in rows if r["model"] == model]
        lines.append(f"| **{model}** | median of {len(ratios)} | | | **{statistics.median(ratios):.2f}** "
                     f"(max {max(ratios):.2f}) | | | {statistics.median(walls):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="config file (default: the trainer's, configs/demo.yaml)")
    p.add_argument("--models", nargs="+", default=["progan", "stylegan"], choices=["progan", "stylegan"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--label", default="demo", help="the table's title (e.g. which config this is)")
    p.add_argument("--runs", default="benchmarks/out/learning-runs", help="where the run directories go")
    p.add_argument("--json", default="benchmarks/out/learning.json")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)

    runs = Path(args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    rows = []
    for model in args.models:
        for seed in args.seeds:
            run = new_run_dir(runs, f"{args.label}-{model}-seed{seed}")
            wall = train(run, args.config, model, seed, args.threads, args.overrides)
            record = evaluate(run, args.threads)
            rates, seconds = speed_by_resolution(run)
            rows.append({"model": model, "seed": seed, "wall_s": wall, "images_per_s": rates, "seconds": seconds,
                         "ratio": record["swd_mean"] / record["swd_floor_mean"],
                         **{k: v for k, v in record.items() if k.startswith("swd")}, "run": str(run)})
            r = rows[-1]
            print(f"{model} seed {seed}: SWD {r['swd_mean']:.1f} / floor {r['swd_floor_mean']:.1f} = "
                  f"{r['ratio']:.2f}x in {wall:.0f} s", flush=True)
    text = table(rows, args.label, cpu)
    print(text)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"label": args.label, "cpu": cpu, "threads": args.threads, "config": args.config,
                               "overrides": args.overrides, "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
