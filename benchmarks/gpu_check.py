"""One GPU check: everything GPU-specific measured in one command, within a hard time budget.

    python benchmarks/gpu_check.py                        # on a GPU: the full check, 8 minutes
    python benchmarks/gpu_check.py --budget-min 12        # more time
    python benchmarks/gpu_check.py --only memory fp16_run # some sections only
    python benchmarks/gpu_check.py --device cpu --tiny    # the same code on the CPU, small, in a minute

Sections, most valuable first (each in its own process, so that one failing, an OOM at 1024²
say, is recorded and the rest go on):
  train_step   the trainer's step at paper widths, 1024², 256² and 64², bf16 and fp16, mid-fade, at
               the per-GPU batch of the shipped 1024² configs: img/s, s/kimg, peak memory, FLOP/s
               against this device's measured matmul/conv ceiling
  memory       the largest per-GPU batch that fits at each resolution up to 1024², against the
               configs' batches
  fp16_run     the real trainer (pipelines/train_progressive.py) in fp16 for a few hundred steps at
               small resolutions, penalties on: skipped steps, final loss scales, how it stopped
  host_sync    GPU idle time between kernels with the one-step-late flags (gan_hr/training/guard.py)
               and with a plain host read of them per step
  two_process  two processes on this device (gloo with CUDA tensors on one GPU; NCCL with two):
               a few steps, then whether the ranks' parameters are equal
  compile      train.compile off and on at 256²: warm-up time, then img/s
The budget is checked between measurements, and a section still running when it runs out is
stopped; SIGTERM or Ctrl-C stop the check the same way. Whatever was measured is written either
way: benchmarks/out/gpu_check.json, gpu_check.md (the table, also printed) and gpu_check.log
(every section's output). benchmarks/README.md says what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTIONS_SCRIPT = Path(__file__).resolve().with_name("gpu_sections.py")
SECTIONS = ("train_step", "memory", "fp16_run", "host_sync", "two_process", "compile")
# The shipped 1024² configs are the papers' 8-GPU settings (slurm/*.sh ask for 8 GPUs per node):
# their batch sizes are global, so one GPU's share is a batch divided by 8.
CONFIG_GPUS = 8
# What the check imports, by import name: the library's needs (pyproject.toml) less those only
# some runs use (wandb, webdataset for remote data, torch-fidelity for FID).
REQUIRED = ("torch", "torchvision", "accelerate", "yaml", "PIL", "numpy", "tqdm", "matplotlib")
# Seconds a section gets after SIGTERM before it is killed, and the least worth starting one with.
STOP_GRACE_S = 3.0
MIN_SECTION_S = 5.0
TINY_WIDTHS = ["model.channel_base=64", "model.channel_max=8", "model.latent_dim=8", "model.w_dim=8",
               "model.mapping_layers=2"]


@dataclass
class Plan:
    """What each section measures: the full check on a GPU, or its tiny twin (`--tiny`)."""

    device: str
    tiny: bool
    models: list[str] = field(default_factory=lambda: ["stylegan", "progan"])  # the references are StyleGAN's
    resolutions: list[int] = field(default_factory=lambda: [1024, 256, 64])  # most valuable first
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp16"])
    steps: int = 10  # timed steps per throughput row
    widths: list[str] = field(default_factory=list)  # config overrides; none: paper widths
    ceiling_seconds: float = 0.5
    memory_max_res: int = 1024
    memory_cap_factor: int = 4  # search up to this many times a resolution's global batch
    fp16_run_steps: int = 300
    # From 4² (8² for StyleGAN) through two fades within 300 steps, at the configs' batches.
    fp16_run_overrides: list[str] = field(default_factory=lambda: [
        "schedule.max_res=16", "schedule.fade_kimg=20", "schedule.stable_kimg=20", "data.synthetic_images=2048"])
    sync_res: list[int] = field(default_factory=lambda: [64, 256])
    sync_steps: int = 10  # timed, then profiled (a profile's events take seconds to read back)
    two_process_res: int = 64
    two_process_steps: int = 3
    compile_res: int = 256
    compile_backend: str = "inductor"


def make_plan(device: str, tiny: bool, steps: int | None = None) -> Plan:
    """The full plan, or with `tiny` one model (StyleGAN, which has every code path ProGAN has and
    more), small widths, resolutions and runs and one precision (fp32 on the CPU), compiled with
    dynamo's eager backend (inductor's code generation takes minutes on 2 cores)."""
    plan = Plan(device=device, tiny=tiny)
    if tiny:
        plan = dataclasses.replace(
            plan, models=["stylegan"], resolutions=[32, 16, 8], precisions=["bf16" if device == "cuda" else "fp32"], steps=2,
            widths=TINY_WIDTHS, ceiling_seconds=0.1, memory_max_res=32, memory_cap_factor=1, fp16_run_steps=6,
            fp16_run_overrides=["schedule.max_res=8", "schedule.batch_by_res={}", "schedule.batch_size=8",
                                "schedule.fade_kimg=0.016", "schedule.stable_kimg=0.016",
                                "data.synthetic_images=64", "data.num_workers=0"],
            sync_res=[8], sync_steps=3, two_process_res=8, two_process_steps=2, compile_res=8,
            compile_backend="eager")
    if steps is not None:
        plan.steps = steps
    return plan


def cuda_available() -> bool:
    import torch  # here only: the sections import it themselves, and `--device` saves the wait

    return torch.cuda.is_available()


def missing_modules() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


# --------------------------------------------------------------------------- running the sections


class Interrupted(Exception):
    """SIGTERM or SIGINT: stop the section running, write what there is, exit."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _stop(proc: subprocess.Popen) -> None:
    """End a section and everything it started (its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def read_rows(rows_file: Path, stopped: str | None) -> tuple[dict, list[dict]]:
    """A section's info and rows as it wrote them; a measurement it had started but not finished
    becomes a row saying why (`stopped`)."""
    info, rows, started = {}, [], None
    lines = rows_file.read_text().splitlines() if rows_file.exists() else []
    for line in lines:
        record = json.loads(line)
        kind = record.pop("kind")
        if kind == "info":
            info.update(record)
        elif kind == "start":
            started = record["label"]
        else:
            rows.append(record)
            started = None
    if started is not None:
        rows.append({"label": started, "stopped": stopped or "section ended"})
    return info, rows


class Check:
    """The sections of one check, their results, and the files they are written to."""

    def __init__(self, plan: Plan, budget_s: float, out_dir: Path, start: float) -> None:
        self.plan = plan
        self.start = start
        self.budget_s = budget_s
        # Sections must end by then, leaving time to stop one and write the results.
        self.deadline = self.start + budget_s - STOP_GRACE_S - 2
        self.out_dir = out_dir
        self.sections: dict[str, dict] = {}
        self.device: dict = {}
        self.status = "running"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir / "gpu_check.log"
        self.log_path.write_text("")
        self.plan_path = out_dir / "gpu_check-plan.json"
        self.plan_path.write_text(json.dumps(dataclasses.asdict(plan)))

    def run(self, names: list[str]) -> None:
        for name in names:
            if self.deadline - time.time() < MIN_SECTION_S:
                self.sections[name] = {"status": "skipped: budget", "seconds": 0.0, "rows": []}
            else:
                self.run_section(name)
            self.write()
            print(f"{name}: {self.sections[name]['status']} ({self.sections[name]['seconds']:.0f} s)", flush=True)

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TQDM_MININTERVAL="10",
                    ACCELERATE_USE_CPU=str(self.plan.device == "cpu").lower())

    def run_section(self, name: str) -> None:
        """One section in its own process (and process group), stopped at the deadline; its rows
        are kept whatever happens, also when this process is interrupted."""
        rows_file = self.out_dir / f"gpu_check-{name}.jsonl"
        rows_file.unlink(missing_ok=True)
        cmd = [sys.executable, str(SECTIONS_SCRIPT), "--section", name, "--plan", str(self.plan_path),
               "--deadline", str(self.deadline), "--rows", str(rows_file)]
        started = time.time()
        status = "done"
        with self.log_path.open("a") as log:
            log.write(f"===== {name}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self._env(),
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=max(1.0, self.deadline - time.time()))
                if code != 0:
                    status = f"failed: exit code {code} (see gpu_check.log)"
            except subprocess.TimeoutExpired:
                status = "stopped: budget"
            except BaseException:
                status = "interrupted"
                raise
            finally:
                _stop(proc)
                info, rows = read_rows(rows_file, None if status == "done" else status)
                rows_file.unlink(missing_ok=True)
                device = info.pop("device", {})  # every section says; the first is kept
                self.device = self.device or device
                self.sections[name] = {"status": status, "seconds": time.time() - started, "info": info,
                                       "rows": rows}

    def outcome(self) -> str:
        """complete (every section ran to its end, no measurement failed), complete with errors, or
        partial (a section failed, was stopped or was skipped)."""
        if any(s["status"] != "done" for s in self.sections.values()):
            return "partial"
        if any("error" in r for s in self.sections.values() for r in s["rows"]):
            return "complete with errors (see the notes)"
        return "complete"

    def result(self) -> dict:
        return {"status": self.status, "budget_s": self.budget_s, "elapsed_s": time.time() - self.start,
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start)),
                "device": self.device, "plan": dataclasses.asdict(self.plan), "sections": self.sections}

    def write(self) -> str:
        """gpu_check.json and gpu_check.md, rewritten after every section; returns the table."""
        from benchmarks.gpu_report import render

        result = self.result()
        (self.out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))
        table = render(result)
        (self.out_dir / "gpu_check.md").write_text(table)
        return table


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when there is one")
    p.add_argument("--tiny", action="store_true",
                   help="small widths and resolutions, one precision: proves the script works (CI runs it on the CPU)")
    p.add_argument("--budget-min", type=float, default=8.0,
                   help="minutes in all (default 8); the check stops then and writes what it has")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                   help=f"run these sections only, in the usual order ({', '.join(SECTIONS)})")
    p.add_argument("--steps", type=int, default=None, help="timed steps per throughput row (default 10; tiny 2)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "out"), help="where the results go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.time()  # the budget counts from here, torch's import included
    args = parse(argv)
    missing = missing_modules()
    if missing:
        print(f"error: cannot import {', '.join(missing)}: install gan_hr's dependencies first "
              "(benchmarks/README.md, 'GPU check')", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if cuda_available() else "cpu")
    if device == "cuda" and not cuda_available():
        print("error: --device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    if device == "cpu" and not args.tiny:
        print("error: on the CPU add --tiny (paper widths at 1024² would take hours there)", file=sys.stderr)
        return 2
    check = Check(make_plan(device, args.tiny, args.steps), 60 * args.budget_min, Path(args.out_dir), start)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        check.run([name for name in SECTIONS if not args.only or name in args.only])
        check.status = check.outcome()
    except Interrupted as exc:
        check.status = f"interrupted ({exc})"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        check.plan_path.unlink(missing_ok=True)
        table = check.write()
    print(table)
    print(f"wrote {check.out_dir / 'gpu_check.json'}, gpu_check.md and gpu_check.log")
    return 0 if not check.status.startswith("interrupted") else 130


if __name__ == "__main__":
    sys.exit(main())
