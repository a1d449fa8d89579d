"""The measurements of benchmarks/gpu_check.py, one section per process:

    python benchmarks/gpu_sections.py --section NAME --plan PLAN.json --deadline EPOCH --rows FILE

Each measurement goes to FILE (JSON lines) as soon as it is made, after a line saying it started,
so that a section stopped at the budget, or killed by a crash, still leaves what it measured and
says what it was doing. An exception in one measurement (an OOM, say) becomes that row's `error`
and the section goes on; none starts after the deadline. The two-process section starts this
script again in each process, as `--rank-worker`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ddp_overhead import launch_processes  # noqa: E402
from benchmarks.gpu_check import CONFIG_GPUS, Plan  # noqa: E402
from benchmarks.train_step import (PRECISION, fixed_step, make_trainer, measure_ceiling, position,  # noqa: E402
                                   real_batch, synchronize, throughput, time_steps)
from gan_hr.checkpoint import complete_checkpoints, load_checkpoint  # noqa: E402
from gan_hr.config import Config, load_config  # noqa: E402
from gan_hr.schedule import Phase  # noqa: E402
from gan_hr.training.trainer import Trainer  # noqa: E402

# CUDA runtime calls in which the host waits for the device.
SYNC_CALLS = {"cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
# GradScaler's start value (the trainer keeps torch's default).
INIT_SCALE = 2.0**16


class Rows:
    """A section's measurements, appended to its rows file as they are made."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def info(self, **values) -> None:
        self._write({"kind": "info", **values})

    def measure(self, label: str, fn: Callable[[], dict | list[dict]]) -> None:
        """Run one measurement unless the deadline has passed; an exception becomes its `error`.
        Each row records the seconds the measurement took (what a budget must allow for it)."""
        start = time.time()
        if start >= self.deadline:
            result: dict | list[dict] = {"skipped": "budget"}
        else:
            self._write({"kind": "start", "label": label})
            print(f"--- {label} ({time.strftime('%H:%M:%S')})", flush=True)
            try:
                result = fn()
            except Exception as exc:  # one failed measurement (an OOM at 1024², say) must not end the check
                traceback.print_exc()
                result = {"error": _first_line(exc)}
            finally:
                release_memory()
        for row in result if isinstance(result, list) else [result]:
            self._write({"kind": "row", "label": label, **row, "seconds": round(time.time() - start, 2)})


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def release_memory() -> None:
    """Drop what a finished (or failed) measurement left, so the next starts with the device's memory free."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    devices=torch.cuda.device_count())
    else:
        info.update(name=platform.processor() or "cpu", threads=torch.get_num_threads())
    return info


def shipped_config(plan: Plan, model: str, *overrides: str) -> Config:
    """configs/<model>_celebahq.yaml, whose batches are checked, at the plan's widths, without data
    or tracking (steps are fed by hand)."""
    return load_config(ROOT / "configs" / f"{model}_celebahq.yaml",
                       ["data.path=null", "data.num_workers=0", "tracking.backend=none", *plan.widths, *overrides])


def _precision(precision: str) -> str:
    return f"train.mixed_precision='{PRECISION[precision]}'"  # quoted: YAML reads a bare no as false


def per_gpu_batch(global_batch: int) -> int:
    return max(1, global_batch // CONFIG_GPUS)


class Setup(NamedTuple):
    trainer: Trainer
    target: Phase
    batch: int
    step: Callable[[], None]


@contextlib.contextmanager
def shipped_step(plan: Plan, model: str, res: int, precision: str, *overrides: str,
                 **trainer_options) -> Iterator[Setup]:
    """A trainer of the shipped config up to `res` in `precision`, mid-fade at `res`, and its step
    on one GPU's share of the config's batch there (`trainer_options`: make_trainer's)."""
    cfg = shipped_config(plan, model, f"schedule.max_res={res}", _precision(precision), *overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, Path(tmp), **trainer_options)
        target = position(trainer, res, "fade")
        batch = per_gpu_batch(trainer.schedule.batch_size(res))
        yield Setup(trainer, target, batch, fixed_step(trainer, target, real_batch(batch, res, trainer.device)))


# --------------------------------------------------------------------------- train_step and compile


def step_row(plan: Plan, model: str, res: int, precision: str, ceiling: dict[str, float] | None = None,
             compiled: bool = False) -> dict:
    """The trainer's step at `res`, mid-fade, on one GPU's share of the config's batch there."""
    compiling = ["train.compile=true", f"train.compile_backend={plan.compile_backend}"] if compiled else []
    with shipped_step(plan, model, res, precision, *compiling) as setup:
        alpha = setup.target.alpha(setup.trainer.state.images_seen)
        global_batch = setup.trainer.schedule.batch_size(res)
        timing = time_steps(setup.step, setup.trainer.device, plan.steps, compiled)
    return {"model": model, "res": res, "precision": precision, "batch": setup.batch, "global_batch": global_batch,
            "alpha": round(alpha, 3), "steps": plan.steps, "compile": compiled,
            **({"compile_backend": plan.compile_backend} if compiled else {}),
            **throughput(timing, setup.batch, ceiling, precision)}


def train_step_section(plan: Plan, rows: Rows) -> None:
    ceiling = measure_ceiling(torch.device(plan.device), plan.precisions, plan.ceiling_seconds)
    rows.info(ceiling_tflops={k: v / 1e12 for k, v in ceiling.items()})
    for res in plan.resolutions:
        for precision in plan.precisions:
            for model in plan.models:
                rows.measure(f"{model} {res} {precision}", lambda: step_row(plan, model, res, precision, ceiling))


def compile_section(plan: Plan, rows: Rows) -> None:
    for model in plan.models:
        for compiled in (False, True):
            rows.measure(f"{model} {plan.compile_res} compile {'on' if compiled else 'off'}",
                         lambda: step_row(plan, model, plan.compile_res, plan.precisions[0], compiled=compiled))


# --------------------------------------------------------------------------- memory


def out_of_memory(exc: RuntimeError) -> bool:
    """The allocator's OutOfMemoryError, or cuDNN/cuBLAS failing to get their workspace."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "ALLOC_FAILED" in str(exc)


def fits_in_memory(step: Callable[[], None], device: torch.device) -> tuple[bool, float | None]:
    """Whether one training step runs without running out of device memory, and its peak
    allocation in MB (CUDA only: on the CPU there is no limit to find, only the step to run)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        step()
        synchronize(device)
    except RuntimeError as exc:
        if not out_of_memory(exc):
            raise
        ok = False
    else:
        ok = True
    if not ok:  # outside the except block, so the traceback's frames no longer hold the step's tensors
        release_memory()
        return False, None
    return True, torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def largest_fitting(fits: Callable[[int], bool], start: int, cap: int) -> tuple[int, int | None]:
    """The largest batch up to `cap` that fits (0: not even 1), and the smallest seen failing
    (None: none failed), assuming a batch fits when any larger one does. Doubles from `start`
    until one fails or `cap` is reached, then bisects until the two are within an eighth."""
    largest, failing = 0, None
    batch = min(start, cap)
    while failing is None:
        if not fits(batch):
            failing = batch
        elif batch >= cap:
            return batch, None
        else:
            largest, batch = batch, min(2 * batch, cap)
    while failing - largest > max(1, largest // 8):
        middle = (largest + failing) // 2
        if fits(middle):
            largest = middle
        else:
            failing = middle
    return largest, failing


def memory_row(plan: Plan, trainer: Trainer, model: str, res: int) -> dict:
    """The largest batch that fits at `res` (mid-fade), against one GPU's share of the config's."""
    device = trainer.device
    target = position(trainer, res, "fade")
    global_batch = trainer.schedule.batch_size(res)
    per_gpu, cap = per_gpu_batch(global_batch), plan.memory_cap_factor * global_batch
    peaks: dict[int, float | None] = {}

    def fits(batch: int) -> bool:
        ok, peaks[batch] = fits_in_memory(fixed_step(trainer, target, real_batch(batch, res, device)), device)
        return ok

    largest, failing = largest_fitting(fits, per_gpu, cap)
    row = {"model": model, "res": res, "global_batch": global_batch, "per_gpu_batch": per_gpu,
           "largest_batch": largest, "first_failing_batch": failing, "searched_up_to": cap,
           "peak_mem_mb_at_per_gpu_batch": peaks.get(per_gpu), "per_gpu_fits": largest >= per_gpu,
           "one_gpu_fits": largest >= global_batch, "probes_mb": {str(b): peaks[b] for b in sorted(peaks)}}
    if device.type != "cuda":
        row["note"] = "CPU: no device memory to run out of; each probe ran one real step"
    return row


def memory_section(plan: Plan, rows: Rows) -> None:
    """One trainer per model holding every block up to memory_max_res, as a real run does, walked
    through the resolutions."""
    for model in plan.models:
        cfg = shipped_config(plan, model, f"schedule.max_res={plan.memory_max_res}", _precision(plan.precisions[0]))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = make_trainer(cfg, Path(tmp))
            for res in trainer.schedule.resolutions:
                rows.measure(f"{model} {res}", lambda: memory_row(plan, trainer, model, res))
            del trainer  # before the next model's is built


# --------------------------------------------------------------------------- fp16_run


def scaler_skips(state: dict, steps: int) -> int | None:
    """Steps a GradScaler skipped (overflow), read from its final scale: each skip halved it from
    INIT_SCALE, and it grows only after `growth_interval` clean steps in a row, so for a run
    shorter than that the count is exact. None when the scaler was off or the run longer."""
    if not state or steps >= state["growth_interval"]:
        return None
    return round(math.log2(INIT_SCALE / state["scale"]) / -math.log2(state["backoff_factor"]))


def training_run(plan: Plan, model: str, precision: str, tmp: Path) -> dict:
    """pipelines/train_progressive.py itself, on the built-in synthetic set: how it stopped, the
    steps it skipped, its final loss scales."""
    run_dir = tmp / f"run-{model}"
    cmd = [sys.executable, str(ROOT / "pipelines" / "train_progressive.py"),
           "--config", str(ROOT / "configs" / f"{model}_celebahq.yaml"), "--run-dir", str(run_dir),
           "data.path=null", f"data.synthetic_dir={tmp / 'data'}", "tracking.backend=none", _precision(precision),
           f"train.max_steps={plan.fp16_run_steps}", "train.log_every_steps=25", *plan.widths,
           *plan.fp16_run_overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    if proc.returncode not in (0, 1):  # 1: diverged, a result; anything else: the run failed
        raise RuntimeError(f"exit code {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    stopped = re.search(r"stopped \((.+?)\) at step", proc.stdout)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    optim = load_checkpoint(complete_checkpoints(run_dir / "checkpoints")[-1]).optim
    scalers = {net: optim[f"scaler_{net}"] for net in ("D", "G")}
    row = {"model": model, "precision": precision, "exit_code": proc.returncode, "diverged": proc.returncode == 1,
           "stop_reason": "diverged" if proc.returncode == 1 else stopped and stopped.group(1),
           "steps": last["step"], "res": last["resolution"], "alpha": last["alpha"], "kimg": last["kimg"],
           "unhealthy_steps": last["nan_skipped"], "images_per_s": last["images_per_s"],
           **{f"loss_scale_{net}": state.get("scale") for net, state in scalers.items()},
           **{f"overflow_skips_{net}": scaler_skips(state, last["step"]) for net, state in scalers.items()}}
    if precision != "fp16":
        row["note"] = f"fp16 needs CUDA: this run is {precision}, without a loss scaler"
    return row


def fp16_run_section(plan: Plan, rows: Rows) -> None:
    precision = "fp16" if plan.device == "cuda" else plan.precisions[0]  # fp16 needs CUDA
    with tempfile.TemporaryDirectory() as tmp:
        for model in plan.models:
            rows.measure(f"{model} {precision} run", lambda: training_run(plan, model, precision, Path(tmp)))


# --------------------------------------------------------------------------- host_sync


def timeline_shares(events: list, steps: int, wall_s: float) -> dict:
    """From a profile of `steps` steps: the share of the time from the first device activity
    (kernel, copy) to the last with none running, and the host's waits for the device (CUDA
    runtime sync calls; the profile's own closing sync left out), per step and as a share of
    the wall time. None where there is no device timeline."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False))
    if not spans:
        return {"gpu_idle_share": None, "host_syncs_per_step": None, "host_wait_share": None,
                "note": "n/a: no device timeline (the CPU, or a profiler that recorded no kernels)"}
    syncs = sorted((e.time_range.start, e.time_range.elapsed_us()) for e in events if e.name in SYNC_CALLS)[:-1]
    busy, covered = 0.0, spans[0][0]
    for start, end in spans:  # the union of the spans: overlapping parts count once
        busy += max(0.0, end - max(start, covered))
        covered = max(covered, end)
    return {"gpu_idle_share": 1 - busy / (covered - spans[0][0]), "kernels_per_step": len(spans) / steps,
            "host_syncs_per_step": len(syncs) / steps,
            "host_wait_share": sum(elapsed for _, elapsed in syncs) / (wall_s * 1e6)}


def device_timeline(step: Callable[[], None], steps: int, device: torch.device) -> dict:
    """Profiles `steps` steps (after the caller's warm-up) for timeline_shares."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = time.perf_counter() - start
    return timeline_shares(list(prof.events()), steps, wall)


def sync_row(plan: Plan, model: str, res: int, precision: str, lagged: bool) -> dict:
    """Images/s, then the device timeline, with the guard's flags read a step late or at once."""
    with shipped_step(plan, model, res, precision, lagged_flags=lagged) as setup:
        device = setup.trainer.device
        timing = time_steps(setup.step, device, plan.sync_steps, compiled=False)
        shares = device_timeline(setup.step, plan.sync_steps, device)
    return {"model": model, "res": res, "precision": precision, "batch": setup.batch,
            "flags": "lagged" if lagged else "read each step", "images_per_s": setup.batch / timing["step_s"],
            **shares}


def host_sync_section(plan: Plan, rows: Rows) -> None:
    model, precision = plan.models[0], plan.precisions[0]
    for res in plan.sync_res:
        for lagged in (True, False):
            rows.measure(f"{model} {res} flags {'lagged' if lagged else 'read each step'}",
                         lambda: sync_row(plan, model, res, precision, lagged))


# --------------------------------------------------------------------------- two_process


def state_digest(trainer: Trainer) -> str:
    """sha256 of G, D and G_ema's parameters and buffers, bit for bit."""
    digest = hashlib.sha256()
    for net in (trainer.G, trainer.D, trainer.G_ema):
        for name, tensor in net.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_steps(plan: Plan, model: str, backend: str) -> dict:
    """This rank's few steps on its share of the batch; what every rank ended with, gathered."""
    res, precision = plan.two_process_res, plan.precisions[0]
    with shipped_step(plan, model, res, precision, backend=backend) as setup:
        if not dist.is_initialized() or dist.get_world_size() != 2:
            raise RuntimeError(f"expected a process group of 2, got {setup.trainer.world} process(es)")
        for _ in range(plan.two_process_steps):
            setup.step()
        mine = {"device": str(setup.trainer.device), "pid": os.getpid(), "digest": state_digest(setup.trainer)}
    ranks: list[dict] = [{}] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return {"model": model, "res": res, "precision": precision, "batch_per_rank": setup.batch,
            "steps": plan.two_process_steps, "backend": dist.get_backend(), "world": len(ranks),
            "devices": sorted({r["device"] for r in ranks}), "pids": sorted(r["pid"] for r in ranks),
            "ranks_equal": len({r["digest"] for r in ranks}) == 1}


def rank_worker(plan: Plan, out: Path) -> int:
    """One of the two processes: NCCL when each can have a GPU of its own, else gloo, which
    all-reduces CUDA tensors too (NCCL refuses two ranks on one GPU)."""
    backend = "nccl" if plan.device == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    results = [rank_steps(plan, model, backend) for model in plan.models]
    if dist.get_rank() == 0:
        out.write_text(json.dumps(results))
    dist.destroy_process_group()  # without it, gloo sometimes aborts at exit
    return 0


def launch_ranks(plan: Plan) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        plan_file, out = Path(tmp) / "plan.json", Path(tmp) / "ranks.json"
        plan_file.write_text(json.dumps(dataclasses.asdict(plan)))
        script = [str(Path(__file__).resolve()), "--rank-worker", "--plan", str(plan_file), "--rows", str(out)]
        launch_processes(script, 2, threads=max(1, len(os.sched_getaffinity(0)) // 2), use_cpu=plan.device == "cpu")
        return json.loads(out.read_text())


def two_process_section(plan: Plan, rows: Rows) -> None:
    rows.measure("two processes", lambda: launch_ranks(plan))


# --------------------------------------------------------------------------- entry point

RUNNERS: dict[str, Callable[[Plan, Rows], None]] = {
    "train_step": train_step_section, "memory": memory_section, "fp16_run": fp16_run_section,
    "host_sync": host_sync_section, "two_process": two_process_section, "compile": compile_section,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--section", choices=list(RUNNERS))
    p.add_argument("--plan", required=True, help="the plan, as JSON (written by gpu_check.py)")
    p.add_argument("--deadline", type=float, default=math.inf, help="no measurement starts after this time (epoch s)")
    p.add_argument("--rows", required=True, help="where the results go (JSON lines)")
    p.add_argument("--rank-worker", action="store_true", help="one process of the two-process section")
    args = p.parse_args(argv)
    plan = Plan(**json.loads(Path(args.plan).read_text()))
    if args.rank_worker:
        return rank_worker(plan, Path(args.rows))
    rows = Rows(Path(args.rows), args.deadline)
    rows.info(device=device_info(torch.device(plan.device)))
    RUNNERS[args.section](plan, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
