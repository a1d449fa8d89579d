"""What each model learns in the same training time on the built-in set: trains DCGAN, cDCGAN,
DCGAN + spectral norm, the VAE, ProGAN and StyleGAN at 32² from their demo configs, each for the
same CPU time, and scores the final generator with pipelines/evaluate.py (SWD against the
real-vs-real floor of the same data).

    python benchmarks/equal_time.py [--seconds 300] [--threads 1] [--parallel 2] [--models dcgan vae ...]
        [--seed 0] [--runs DIR] [--json FILE] [key=value ...]

Each run is the real `accelerate launch` of its pipeline, with a total_kimg it will not reach.
Its clock starts when the trainer prints its header (data prepared, networks built, ETA probed)
and counts the CPU seconds of the trainer and its loader workers, so runs sharing a machine
(`--parallel`) still get the same compute each. At the budget the run gets SIGUSR1, the
preemption signal: it checkpoints and exits, and that checkpoint is what is scored. key=value
overrides go to every run after its own (e.g. data.path=DIR). It prints a Markdown table and
writes JSON (default benchmarks/out/equal_time.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from learning import ROOT, cpu_description, evaluate, new_run_dir

# model -> (pipeline, config, overrides): each demo config, all at 32², the built-in set's size.
MODELS: dict[str, tuple[str, str, list[str]]] = {
    "dcgan": ("train_baseline.py", "configs/dcgan_demo.yaml", ["schedule.start_res=32", "schedule.max_res=32"]),
    "cdcgan": ("train_baseline.py", "configs/cdcgan_shapes.yaml", []),
    "dcgan+sn": ("train_baseline.py", "configs/dcgan_demo.yaml",
                 ["schedule.start_res=32", "schedule.max_res=32", "model.d_spectral_norm=true"]),
    "vae": ("train_vae.py", "configs/vae_shapes.yaml", []),
    "progan": ("train_progressive.py", "configs/demo.yaml", ["model.name=progan"]),
    "stylegan": ("train_progressive.py", "configs/demo.yaml", ["model.name=stylegan"]),
}
NEVER_REACHED_KIMG = 100_000
INTERRUPTED = threading.Event()  # set on Ctrl-C: every run still training stops
HEADER_LAST_LINE = "estimate"


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU seconds of a process, its live descendants and the children they reaped."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def header_printed(log: Path) -> bool:
    return any(line.startswith(HEADER_LAST_LINE) for line in log.read_text(errors="replace").splitlines())


def train_for(run: Path, model: str, seed: int, threads: int, seconds: float,
              extra: list[str]) -> dict[str, float]:
    """One launch, stopped by SIGUSR1 after `seconds` of CPU time past its header."""
    pipeline, config, overrides = MODELS[model]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads)]
    args = [f"pipelines/{pipeline}", "--run-dir", str(run), "--config", config, *overrides, f"train.seed={seed}",
            f"train.total_kimg={NEVER_REACHED_KIMG}", "train.final_swd=false", "tracking.backend=none", *extra]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    log_path = run.parent / f"{run.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(launch + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            tree = psutil.Process(proc.pid)
            started_cpu = started_wall = None
            while proc.poll() is None and not INTERRUPTED.is_set():
                time.sleep(0.5)
                if started_cpu is None:
                    if header_printed(log_path):
                        started_cpu, started_wall = tree_cpu_seconds(tree), time.perf_counter()
                    continue
                cpu = tree_cpu_seconds(tree) - started_cpu
                if cpu >= seconds:
                    wall = time.perf_counter() - started_wall
                    os.killpg(proc.pid, signal.SIGUSR1)
                    proc.wait()
                    return {"cpu_s": cpu, "wall_s": wall}
        finally:
            # Interrupted: the run is in a session of its own and would train on unseen.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGUSR1)
                proc.wait()
    if INTERRUPTED.is_set():
        raise SystemExit(f"interrupted: {model} stopped with a checkpoint; see {log_path}")
    raise SystemExit(f"error: {model} exited ({proc.returncode}) before its budget; see {log_path}")


def kimg_trained(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["kimg"] for r in rows if "kimg" in r)


def table(rows: list[dict[str, Any]], seconds: float, threads: int, cpu: str) -> str:
    lines = [f"{seconds:.0f} CPU seconds of training each, {threads} thread(s), on {cpu}", "",
             "| model | kimg trained | SWD ×10³ | floor | SWD / floor |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kimg']:.1f} | {r['swd_mean']:.1f} | {r['swd_floor_mean']:.1f} | "
                     f"{r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seconds", type=float, default=300, help="CPU seconds of training per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1, help="runs at once (threads x parallel should not exceed the cores)")
    p.add_argument("--runs", default="benchmarks/out/equal-time-runs", help="where the run directories go")
    p.add_argument("--json", default="benchmarks/out/equal_time.json")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)

    runs = Path(args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    planned = {model: new_run_dir(runs, f"{model}-seed{args.seed}") for model in args.models}

    def measure(model: str) -> dict[str, Any]:
        run = planned[model]
        spent = train_for(run, model, args.seed, args.threads, args.seconds, args.overrides)
        record = evaluate(run, args.threads)
        r = {"model": model, "seed": args.seed, "kimg": kimg_trained(run), **spent,
             "ratio": record["swd_mean"] / record["swd_floor_mean"],
             **{k: v for k, v in record.items() if k.startswith("swd")}, "run": str(run)}
        print(f"{model}: {r['kimg']:.1f} kimg in {r['cpu_s']:.0f} CPU s ({r['wall_s']:.0f} s wall), "
              f"SWD {r['swd_mean']:.1f} / floor {r['swd_floor_mean']:.1f} = {r['ratio']:.2f}x", flush=True)
        return r

    # Runs at once share the cores; each still gets its CPU seconds (threads x parallel <= cores).
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(measure, model) for model in args.models]
        try:
            rows = [f.result() for f in futures]
        except KeyboardInterrupt:
            # Ctrl-C reaches this thread only: stop the runs (each checkpoints), or the pool's exit
            # would wait for their budgets.
            INTERRUPTED.set()
            for f in futures:
                f.cancel()
            raise
    print(table(rows, args.seconds, args.threads, cpu))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": args.seconds, "threads": args.threads, "seed": args.seed, "cpu": cpu,
                               "overrides": args.overrides,
                               "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
