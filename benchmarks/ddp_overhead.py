"""Multi-process overhead: the same training step and global batch with 1 process and with 2
processes (gloo, each taking half the batch), and how much of the 2-process step goes to
averaging gradients and buffers across ranks.

    python benchmarks/ddp_overhead.py [--model progan stylegan] [--res 32] [--batch 16]
        [--precision fp32] [--phase fade] [--channel-max 64 256] [--steps 3] [--rounds 1] [--threads N]
        [--json FILE]

The cores are split fairly: 1 process uses all `--threads` (default: the cores this process may
use), each of 2 processes half of them. The trainer's `average_gradients` / `average_buffers` are
wrapped from here (the library carries no instrumentation): a barrier timed just before each
call is "wait" (the faster rank waiting for the slower one), the call itself is "comm" (flatten,
all-reduce, average, copy back). Every combination of --model, --res, --precision, --phase and
--channel-max is measured; one launch per process count and round runs them all, rounds
alternating 1 and 2 processes (the fastest of each is reported: the machine is shared). It prints
a table and writes JSON (default benchmarks/out/ddp_overhead.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gan_hr.training.guard as guard_module  # noqa: E402
import gan_hr.training.trainer as trainer_module  # noqa: E402
from benchmarks.train_step import PRECISION, build_trainer, fixed_step, real_batch  # noqa: E402
from gan_hr.training.grad_sync import running_buffers  # noqa: E402

# The averaging functions, by the module that calls them (each imports them by name).
WRAPPED = {"average_gradients": guard_module, "average_buffers": trainer_module}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _launched() -> int:
    """Processes the launcher started (a launch without a process group would otherwise run
    each of them alone on the full batch, silently)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class SyncTimer:
    """Wraps the trainer's gradient and buffer averaging to time them and count their payload.

    Patches the names where they are called (see WRAPPED) while active."""

    def __init__(self) -> None:
        self.world = _world()
        self.originals = {name: getattr(module, name) for name, module in WRAPPED.items()}
        self.reset()

    def reset(self) -> None:
        self.wait_s = 0.0
        self.comm_s = 0.0
        self.bytes = 0
        self.sizes: list[int] = []  # elements of each all-reduce in the last step, for the raw timing

    def __enter__(self) -> SyncTimer:
        for name, module in WRAPPED.items():
            setattr(module, name, self._wrap(self.originals[name], name))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self.originals.items():
            setattr(WRAPPED[name], name, fn)

    @staticmethod
    def _payload(name: str, module: torch.nn.Module, args: tuple) -> int:
        """Elements the call all-reduces (fp32 either way: gradients are fp32, buffers are cast)."""
        if name == "average_gradients":
            return sum(p.grad.numel() for p in module.parameters() if p.grad is not None) + args[0].numel()
        return sum(b.numel() for b in running_buffers(module))

    def _wrap(self, fn: Callable, name: str) -> Callable:
        def timed(module, *args):
            numel = self._payload(name, module, args)
            start = time.perf_counter()
            if self.world > 1:
                dist.barrier()  # whatever time the faster rank spends here is load imbalance
            entered = time.perf_counter()
            out = fn(module, *args)
            self.wait_s += entered - start
            self.comm_s += time.perf_counter() - entered
            if numel:
                self.bytes += 4 * numel
                self.sizes.append(numel)
            return out

        return timed


def _median_seconds(fn: Callable[[], None], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_collectives(sizes: list[int], reps: int = 5) -> dict[str, float]:
    """Seconds per step for the bare all-reduces of the step's sizes (already-flat tensors), and
    for one barrier between ranks that are already in step: the floor under "comm" and "wait"."""
    buffers = [torch.zeros(n) for n in sizes]

    def all_reduces() -> None:
        for b in buffers:
            dist.all_reduce(b)

    dist.barrier()
    allreduce_s = _median_seconds(all_reduces, reps)
    dist.barrier()
    return {"allreduce_only_s": allreduce_s, "barrier_s": _median_seconds(dist.barrier, 4 * reps)}


def measure(args, model: str, res: int, precision: str, phase: str, channel_max: int, threads: int) -> dict:
    """This rank's timings of `args.steps` training steps (after one warm-up) on its share of the batch."""
    with tempfile.TemporaryDirectory() as tmp:
        # Also starts the process group, on the first call.
        trainer, target = build_trainer(model=model, res=res, batch=args.batch, precision=precision, phase=phase,
                                        channel_max=channel_max, loss=args.loss, run_dir=Path(tmp))
        world = _world()
        if world != _launched():
            raise RuntimeError(f"launched {_launched()} processes but the process group has {world}")
        torch.set_num_threads(threads)  # Accelerate sets its own count when it starts a process group
        start_images = trainer.state.images_seen
        step = fixed_step(trainer, target, real_batch(args.batch // world, res, trainer.device))

        with SyncTimer() as timer:
            step()  # warm-up
            step_s, wait_s, comm_s = [], [], []
            for _ in range(args.steps):
                timer.reset()
                start = time.perf_counter()
                step()
                step_s.append(time.perf_counter() - start)
                wait_s.append(timer.wait_s)
                comm_s.append(timer.comm_s)
    row = {
        "step_s": statistics.mean(step_s), "wait_s": statistics.mean(wait_s), "comm_s": statistics.mean(comm_s),
        "bytes_per_step": timer.bytes, "allreduces_per_step": len(timer.sizes), "threads": torch.get_num_threads(),
        "pid": os.getpid(), "alpha": round(target.alpha(start_images), 3),
    }
    if world > 1:
        row.update(raw_collectives(timer.sizes))
    return row


def combinations(args) -> list[tuple]:
    return list(itertools.product(args.model, args.res, args.precision, args.phase, args.channel_max))


def worker(args) -> int:
    """One process of a launch: measures every combination, rank 0 writes what all ranks saw."""
    world = _launched()
    main_process = int(os.environ.get("RANK", "0")) == 0
    threads = max(1, args.threads // world)
    torch.set_num_threads(threads)
    results = []
    for model, res, precision, phase, channel_max in combinations(args):
        mine = measure(args, model, res, precision, phase, channel_max, threads)
        ranks = [mine]
        if _world() > 1:
            ranks = [None] * _world()
            dist.all_gather_object(ranks, mine)
        results.append({"model": model, "res": res, "precision": precision, "phase": phase,
                        "channel_max": channel_max, "ranks": ranks})
        if main_process:
            print(f"  {world} process(es): {model} {res} {precision} {phase} ch{channel_max}: "
                  f"{max(r['step_s'] for r in ranks):.3f} s/step", flush=True)
    if main_process:
        Path(args.worker_out).write_text(json.dumps(results))
    if dist.is_initialized():
        dist.destroy_process_group()  # without it, gloo sometimes aborts at exit
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_processes(script: list[str], processes: int, *, threads: int, use_cpu: bool = True, port: int = 0) -> None:
    """Runs a Python script (path and arguments) in `processes` processes of one process group:
    plainly for one, through Accelerate's launcher for more (on the CPU over gloo; on CUDA the
    script chooses its backend, see train_step.make_trainer). Each process gets `threads` torch
    threads. Raises CalledProcessError when the launch fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU=str(use_cpu).lower())
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port or _free_port()), *script]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)


def launch(args, argv: list[str], processes: int, out: Path) -> list[dict]:
    """Runs the worker in `processes` processes (Accelerate over gloo for more than one)."""
    script = [str(Path(__file__).resolve()), *argv, "--worker-out", str(out)]
    launch_processes(script, processes, threads=max(1, args.threads // processes), port=args.port)
    return json.loads(out.read_text())


def _step(result: dict) -> float:
    return max(r["step_s"] for r in result["ranks"])  # ranks end each step together


def summarize(ones: list[dict], twos: list[dict], batch: int) -> dict:
    """One configuration over all rounds: the fastest 1-process and 2-process launches side by
    side (the machine is shared: the fastest round is the least disturbed), rank figures averaged."""
    def mean(ranks: list[dict], key: str) -> float:
        return statistics.mean(r[key] for r in ranks)

    one, two = min(ones, key=_step), min(twos, key=_step)
    r1, r2 = one["ranks"], two["ranks"]
    step1, step2 = _step(one), _step(two)
    comm2, wait2, bare2 = mean(r2, "comm_s"), mean(r2, "wait_s"), mean(r2, "allreduce_only_s")
    sent = r2[0]["bytes_per_step"]
    row = {k: one[k] for k in ("model", "res", "precision", "phase", "channel_max")}
    row.update({
        "batch": batch, "alpha": r1[0]["alpha"],
        "one_process": {"processes": 1, "threads_per_process": r1[0]["threads"], "step_s": step1,
                        "step_s_rounds": [_step(o) for o in ones], "images_per_s": batch / step1,
                        "sync_local_s": r1[0]["comm_s"], "sync_local_share": r1[0]["comm_s"] / step1},
        "two_processes": {"processes": len(r2), "threads_per_process": r2[0]["threads"],
                          "pids": sorted(r["pid"] for r in r2), "step_s": step2,
                          "step_s_rounds": [_step(t) for t in twos], "images_per_s": batch / step2,
                          "wait_s": wait2, "comm_s": comm2, "wait_share": wait2 / step2, "comm_share": comm2 / step2,
                          "bytes_per_step": sent, "allreduces_per_step": r2[0]["allreduces_per_step"],
                          "effective_gb_per_s": sent / comm2 / 1e9,
                          "allreduce_only_s": bare2, "allreduce_only_share": bare2 / step2,
                          "allreduce_only_gb_per_s": sent / bare2 / 1e9,
                          "barrier_s": mean(r2, "barrier_s"), "per_rank": r2},
        "speedup": step1 / step2,
    })
    return row


def print_table(rows: list[dict]) -> None:
    head = ("model", "ch max", "res", "prec", "1p s/step", "2p s/step", "1p img/s", "2p img/s", "speed-up",
            "wait %", "comm %", "bare AR %", "MB/step", "GB/s", "bare GB/s")
    print(" ".join(f"{h:>9}" for h in head))
    for r in rows:
        one, two = r["one_process"], r["two_processes"]
        cells = (r["model"], r["channel_max"], r["res"], r["precision"], f"{one['step_s']:.3f}", f"{two['step_s']:.3f}",
                 f"{one['images_per_s']:.2f}", f"{two['images_per_s']:.2f}", f"{r['speedup']:.2f}",
                 f"{100 * two['wait_share']:.1f}", f"{100 * two['comm_share']:.1f}",
                 f"{100 * two['allreduce_only_share']:.1f}", f"{two['bytes_per_step'] / 1e6:.1f}",
                 f"{two['effective_gb_per_s']:.2f}", f"{two['allreduce_only_gb_per_s']:.2f}")
        print(" ".join(f"{c:>9}" for c in cells))
    one, two = rows[0]["one_process"], rows[0]["two_processes"]
    print(f"threads: 1 process x {one['threads_per_process']} vs 2 processes x {two['threads_per_process']}; "
          "wait = barrier before each all-reduce, comm = the averaging call, bare AR = the same all-reduces alone")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["progan", "stylegan"], choices=["progan", "stylegan", "dcgan"])
    p.add_argument("--res", nargs="+", type=int, default=[32])
    p.add_argument("--batch", type=int, default=16, help="global batch, split evenly across the processes")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISION))
    p.add_argument("--phase", nargs="+", default=["fade"], choices=["fade", "stable"])
    p.add_argument("--channel-max", nargs="+", type=int, default=[64, 256])
    p.add_argument("--loss", default="wgan_gp", choices=["wgan_gp", "logistic", "lsgan"])
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--rounds", type=int, default=1,
                   help="launches of each process count, alternating; the fastest of each is reported")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads in all: 1 process uses them all, each of 2 processes half")
    p.add_argument("--port", type=int, default=0, help="rendezvous port of the 2-process launch (0: a free one)")
    p.add_argument("--json", default="benchmarks/out/ddp_overhead.json")
    p.add_argument("--worker-out", help=argparse.SUPPRESS)  # set by the launcher: this process is a worker
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error("--batch must be even: 2 processes take half each")
    if "dcgan" in args.model and "fade" in args.phase:
        p.error("dcgan has no fade: use --phase stable")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker_out:
        return worker(args)
    launches: dict[int, list[list[dict]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # alternate, so a busy spell on the machine hits both
            for processes in launches:
                launches[processes].append(launch(args, argv, processes, Path(tmp) / f"{processes}-{round_}.json"))
    rows = [summarize([run[i] for run in launches[1]], [run[i] for run in launches[2]], args.batch)
            for i in range(len(combinations(args)))]
    print_table(rows)
    result = {
        "device": platform.processor() or "cpu", "cores": len(os.sched_getaffinity(0)), "threads_total": args.threads,
        "torch": torch.__version__, "backend": "gloo", "steps": args.steps, "rounds": args.rounds, "loss": args.loss,
        "results": rows,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
