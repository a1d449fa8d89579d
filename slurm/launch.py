"""Run `accelerate launch` for this node of a SLURM job (one `srun` task per node runs this).

Everything comes from the environment, so every node derives the same layout on its own:
SLURM's variables (SLURM_JOB_NODELIST, SLURM_NNODES, SLURM_NODEID, SLURM_JOB_ID,
SLURM_GPUS_ON_NODE, SLURM_CPUS_PER_TASK) and the template's (CONFIG, RUN_DIR, OVERRIDES,
NPROC_PER_NODE, MAIN_PORT, MAIN_ADDR, TRAIN_SCRIPT, RESUME). The machine rank is read here,
inside the step, because only there does each node see its own SLURM_NODEID (accelerate
issue 3206: expanding it in the batch script gives every node rank 0).

    python slurm/launch.py            # run it (what the templates do)
    python slurm/launch.py --print    # only print it, for checking a layout by hand

Signals: SLURM delivers a step signal (`scancel --signal`, time limit, preemption) to every
process of the step, launchers and data workers included, and only the trainers may act on
it: they checkpoint and exit. This process runs the launcher in-process with
- SIGUSR1 ignored: the ignore is inherited through exec by everything it starts, so the
  launcher, torchrun's agent and any pool worker survive it; the trainers install a handler.
- SIGTERM caught by a no-op handler: the single-process launcher keeps waiting for its
  trainer instead of dying first; a handler (unlike an ignore) is not inherited through
  exec, so the trainers and the workers they start keep SIGTERM's default (multiprocessing
  stops its workers with it), and torchrun's agent installs its own (it forwards it and waits).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"


class LaunchConfigError(RuntimeError):
    """The environment does not describe a launchable job."""


@dataclass(frozen=True)
class Layout:
    """Where this node sits in the job and how many trainers it runs."""

    num_machines: int
    machine_rank: int
    procs_per_node: int
    main_addr: str
    main_port: int
    use_cpu: bool

    @property
    def num_processes(self) -> int:
        return self.num_machines * self.procs_per_node


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key, "").strip()
    if not value:
        if default is None:
            raise LaunchConfigError(f"{key} is not set (run this inside a SLURM job step)")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchConfigError(f"{key}={value!r} is not an integer") from None


def gpus_on_node(env: Mapping[str, str]) -> int:
    """GPUs SLURM gave this node; without a GPU request, those this step can see."""
    if env.get("SLURM_GPUS_ON_NODE", "").strip():
        return _int(env, "SLURM_GPUS_ON_NODE")
    if "CUDA_VISIBLE_DEVICES" in env:
        return len([d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    if shutil.which("nvidia-smi", path=env.get("PATH")):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if out.returncode == 0:
            return sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    return 0


def main_address(env: Mapping[str, str]) -> str:
    """MAIN_ADDR, or the job's first host (rank 0 runs there, so it hosts the rendezvous)."""
    if env.get("MAIN_ADDR"):
        return env["MAIN_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchConfigError("SLURM_JOB_NODELIST is not set (run this inside a SLURM job step)")
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                         env=dict(env))
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise LaunchConfigError(f"scontrol show hostnames {nodelist} failed: {out.stderr.strip()}")
    return hosts[0]


def main_port(env: Mapping[str, str]) -> int:
    """MAIN_PORT, or one derived from the job id: fixed across requeues, distinct for jobs
    sharing a node, and below Linux's ephemeral range (32768+) where outgoing connections
    could hold it."""
    if env.get("MAIN_PORT"):
        return _int(env, "MAIN_PORT")
    return 15000 + _int(env, "SLURM_JOB_ID") % 15000


def node_layout(env: Mapping[str, str]) -> Layout:
    """The layout of this node from SLURM's variables and the template's overrides."""
    num_machines = _int(env, "SLURM_NNODES", _int(env, "SLURM_JOB_NUM_NODES", 1))
    machine_rank = _int(env, "SLURM_NODEID", 0)
    if not 0 <= machine_rank < num_machines:
        raise LaunchConfigError(f"SLURM_NODEID={machine_rank} is outside 0..{num_machines - 1}")
    gpus = gpus_on_node(env)
    use_cpu = gpus == 0 or env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    procs = _int(env, "NPROC_PER_NODE", 1 if use_cpu else gpus)
    if procs < 1:
        raise LaunchConfigError(f"NPROC_PER_NODE={procs}: need at least one process per node")
    if not use_cpu and procs > gpus:
        raise LaunchConfigError(f"NPROC_PER_NODE={procs} but this node has {gpus} GPU(s)")
    # One node needs no address (the launcher rendezvous on loopback) and no scontrol.
    addr = main_address(env) if num_machines > 1 else "127.0.0.1"
    return Layout(num_machines, machine_rank, procs, addr, main_port(env), use_cpu)


def accelerate_config(layout: Layout) -> Path:
    """Our launch config for this layout. Always passing one keeps a user's own
    ~/.cache/huggingface/accelerate/default_config.yaml from changing the launch."""
    if layout.num_machines > 1:
        name = "multi_node"
    elif layout.num_processes > 1:
        name = "multi_gpu"
    else:
        name = "cpu" if layout.use_cpu else "single_gpu"
    return ACCELERATE_CONFIGS / f"{name}.yaml"


def config_precision(config: str, overrides: list[str]) -> str:
    """The run config's train.mixed_precision for `--mixed_precision`, `no` for `auto`.

    The trainer alone resolves `auto` for its device and passes the result to
    Accelerator(mixed_precision=...), which overrides this flag; the flag passes an explicit
    choice on to scripts that build a bare Accelerator(). Loading the config here also rejects
    a bad one once, in one line, before any trainer starts."""
    sys.path.insert(0, str(ROOT))
    from gan_hr.config import ConfigError, load_config

    try:
        requested = load_config(config, overrides).train.mixed_precision
    except ConfigError as exc:
        raise LaunchConfigError(f"config {config}: {exc}") from None
    return "no" if requested == "auto" else requested


def build_command(env: Mapping[str, str], python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of this node's `accelerate launch`."""
    layout = node_layout(env)
    config = env.get("CONFIG") or "configs/demo.yaml"
    overrides = shlex.split(env.get("OVERRIDES", ""))
    run_dir = env.get("RUN_DIR")
    if not run_dir:
        raise LaunchConfigError("RUN_DIR is not set (the templates set it from the job id)")
    threads = None
    if env.get("SLURM_CPUS_PER_TASK", "").strip():
        threads = max(1, _int(env, "SLURM_CPUS_PER_TASK") // layout.procs_per_node)

    argv = [
        python, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config(layout)),
        "--num_machines", str(layout.num_machines),
        "--machine_rank", str(layout.machine_rank),
        "--num_processes", str(layout.num_processes),
        "--main_process_ip", layout.main_addr,
        "--main_process_port", str(layout.main_port),
        "--mixed_precision", config_precision(config, overrides),
        "--dynamo_backend", "no",
    ]
    if layout.num_processes > 1:
        # Also on CPU: with ACCELERATE_USE_CPU=true this is DDP over gloo; without it, N
        # unsynchronised copies.
        argv.append("--multi_gpu")
    if layout.num_machines > 1:
        argv += ["--rdzv_backend", "static"]
    if threads is not None:
        argv += ["--num_cpu_threads_per_process", str(threads)]
    argv += [
        env.get("TRAIN_SCRIPT") or "pipelines/train_progressive.py",
        "--config", config,
        "--run-dir", run_dir,
        "--resume", env.get("RESUME") or "auto",
        *overrides,
    ]
    extra_env = {"ACCELERATE_USE_CPU": "true"} if layout.use_cpu else {}
    return argv, extra_env


def format_command(argv: list[str], extra_env: Mapping[str, str]) -> str:
    """A shell line that reproduces the launch by hand."""
    prefix = [f"{key}={shlex.quote(value)}" for key, value in sorted(extra_env.items())]
    return " ".join(prefix + [shlex.quote(arg) for arg in argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    # Relative CONFIG, RUN_DIR and TRAIN_SCRIPT paths are relative to the repository root.
    os.chdir(ROOT)
    try:
        command, extra_env = build_command(os.environ)
    except LaunchConfigError as exc:
        print(f"slurm/launch.py: error: {exc}", file=sys.stderr)
        return 2
    line = format_command(command, extra_env)
    if args.print:
        print(line)
        return 0
    rank = os.environ.get("SLURM_NODEID", "0")
    print(f"[node {rank} {os.uname().nodename}] {line}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _launcher_ignores_term)
    os.environ.update(extra_env)
    # `python -m accelerate.commands.launch ARGS`, in this process so the signal setup holds.
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(command[3:]))
    return 0


def _launcher_ignores_term(signum: int, frame: object) -> None:
    """The trainers got the same SIGTERM from SLURM; the launcher waits for them to exit."""


if __name__ == "__main__":
    sys.exit(main())
