"""The SLURM templates under a real scheduler, and the `accelerate launch` command they build.

The sbatch tests start a private single-node cluster (tests/slurm_cluster.py); they need the
Debian SLURM packages (.ci/install_slurm.sh) and root. Without them they are skipped locally and
fail in CI (CI=true), where they must run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import SlurmCluster, missing_tools  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "slurm" / "launch.py"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
# Small enough that a CPU step takes a fraction of a second on two busy cores.
TINY = [
    "data.synthetic_images=64", "data.num_workers=1", "schedule.batch_size=4", "schedule.start_res=4",
    "schedule.max_res=8",
    "model.channel_base=128", "model.channel_max=16", "model.latent_dim=16", "model.w_dim=16",
    "train.sample_grid=4", "train.log_every_steps=1", "tracking.backend=none",
]


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fake_scontrol(bin_dir: Path, hosts: list[str]) -> None:
    """`scontrol show hostnames ...` that prints `hosts`, as the real one expands a nodelist."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    lines = "\n".join(hosts)
    script.write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\nprintf "%s\\n" "{lines}"\n')
    script.chmod(0o755)


def _node_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """What a job step on a GPU-less node sees, plus `extra`; nothing leaks from this shell."""
    env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": os.environ.get("HOME", "/root"),
        "CUDA_VISIBLE_DEVICES": "",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "CONFIG": "configs/demo.yaml",
        "RUN_DIR": "runs/test",
    }
    env.update(extra)
    return env


def _printed_command(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, argv) of `slurm/launch.py --print` under `env`."""
    out = subprocess.run([sys.executable, str(LAUNCH), "--print"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assigns = {}
    while "=" in words[0] and not words[0].startswith("/"):
        key, value = words.pop(0).split("=", 1)
        assigns[key] = value
    return assigns, words


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _launch_args(argv: list[str]) -> list[str]:
    """The accelerate-launch part of argv (before the training script)."""
    return argv[: argv.index("pipelines/train_progressive.py")]


def _metrics_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            break  # a line being written right now
    return steps


def _checkpoint_steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name.split("-")[-1]) for p in ckpts.iterdir() if (p / "meta.json").is_file())


# --------------------------------------------------------------------------- the command builder


def test_two_nodes_four_gpus_each(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, ["gpu-a17", "gpu-a18"])
    commands = []
    for node in ("0", "1"):
        env = _node_env(
            bin_dir, SLURM_NNODES="2", SLURM_NODEID=node, SLURM_JOB_NODELIST="gpu-a[17-18]",
            SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="32", CONFIG="configs/stylegan_celebahq.yaml",
            OVERRIDES="data.path=null train.max_steps=10", RUN_DIR="runs/stylegan-4242",
        )
        del env["CUDA_VISIBLE_DEVICES"]
        commands.append(_printed_command(env))

    for rank, (assigns, argv) in enumerate(commands):
        launch = _launch_args(argv)
        assert "ACCELERATE_USE_CPU" not in assigns
        assert argv[1:3] == ["-m", "accelerate.commands.launch"]
        assert _flag(launch, "--machine_rank") == str(rank)
        assert _flag(launch, "--num_machines") == "2"
        assert _flag(launch, "--num_processes") == "8"
        assert _flag(launch, "--main_process_ip") == "gpu-a17"
        assert _flag(launch, "--rdzv_backend") == "static"
        assert "--multi_gpu" in launch
        assert Path(_flag(launch, "--config_file")).name == "multi_node.yaml"
        # The config's precision (bf16 for StyleGAN), so launcher and trainer agree.
        assert _flag(launch, "--mixed_precision") == "bf16"
        assert _flag(launch, "--num_cpu_threads_per_process") == "8"
        trainer = argv[len(launch):]
        assert trainer == ["pipelines/train_progressive.py", "--config", "configs/stylegan_celebahq.yaml",
                           "--run-dir", "runs/stylegan-4242", "--resume", "auto", "data.path=null",
                           "train.max_steps=10"]
    ports = {_flag(argv, "--main_process_port") for _, argv in commands}
    assert len(ports) == 1
    # Rank 0's command differs from rank 1's only in the machine rank.
    a, b = (argv for _, argv in commands)
    assert [x for x, y in zip(a, b) if x != y] == ["0"]


def test_cpu_node_runs_gloo_with_multi_gpu_flag(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, ["localhost"])

    assigns, argv = _printed_command(_node_env(bin_dir, NPROC_PER_NODE="2"))
    launch = _launch_args(argv)
    assert assigns == {"ACCELERATE_USE_CPU": "true"}
    assert "--multi_gpu" in launch  # without it two CPU processes would not form a group
    assert _flag(launch, "--num_processes") == "2"
    assert Path(_flag(launch, "--config_file")).name == "multi_gpu.yaml"

    assigns, argv = _printed_command(_node_env(bin_dir))
    launch = _launch_args(argv)
    assert assigns == {"ACCELERATE_USE_CPU": "true"}
    assert "--multi_gpu" not in launch
    assert _flag(launch, "--num_processes") == "1"
    assert Path(_flag(launch, "--config_file")).name == "cpu.yaml"
    assert _flag(launch, "--mixed_precision") == "no"


def test_port_is_stable_per_job_and_differs_between_jobs(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, ["localhost"])
    ports = [_flag(_printed_command(_node_env(bin_dir, SLURM_JOB_ID=job))[1], "--main_process_port")
             for job in ("100", "100", "101")]
    assert ports[0] == ports[1] != ports[2]


def test_bad_config_is_refused_before_launch(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, ["localhost"])
    env = _node_env(bin_dir, OVERRIDES="train.mixed_precision=fp8")
    out = subprocess.run([sys.executable, str(LAUNCH), "--print"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "train.mixed_precision" in out.stderr


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"single_gpu": ("NO", False), "multi_gpu": ("MULTI_GPU", False),
                "multi_node": ("MULTI_GPU", False), "cpu": ("NO", True)}
    for name, (kind, use_cpu) in expected.items():
        cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
        assert cfg.distributed_type.value == kind, name
        assert cfg.use_cpu is use_cpu, name


PROBE = """
import json, os, signal, sys
import torch
from accelerate import Accelerator

acc = Accelerator()
total = acc.reduce(torch.tensor([acc.process_index + 1.0]), reduction="sum").item()
run_dir = sys.argv[sys.argv.index("--run-dir") + 1]
with open(os.path.join(run_dir, f"rank{acc.process_index}.json"), "w") as f:
    json.dump({"num_processes": acc.num_processes, "sum": total, "device": acc.device.type,
               "precision": str(acc.mixed_precision),
               "usr1": str(signal.getsignal(signal.SIGUSR1)), "term": str(signal.getsignal(signal.SIGTERM))}, f)
torch.distributed.destroy_process_group()
"""


def test_two_node_command_rendezvous_on_loopback(tmp_path):
    """Both nodes' commands, run for real on one machine, form one two-process group."""
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, ["127.0.0.1", "127.0.0.1"])
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    port = str(_free_port())
    procs = []
    for node in ("0", "1"):
        env = _node_env(bin_dir, SLURM_NNODES="2", SLURM_NODEID=node, SLURM_JOB_NODELIST="node[1-2]",
                        SLURM_CPUS_PER_TASK="1", MAIN_PORT=port, TRAIN_SCRIPT=str(probe),
                        RUN_DIR=str(tmp_path), OVERRIDES="train.mixed_precision=bf16")
        procs.append(subprocess.Popen([sys.executable, str(LAUNCH)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in results:
        # A trainer starts with SIGUSR1 ignored (SLURM signals every process of the step; only
        # the trainer's own handler acts on it) and SIGTERM at its default.
        assert res == {"num_processes": 2, "sum": 3.0, "device": "cpu", "precision": "bf16",
                       "usr1": str(signal.SIG_IGN), "term": str(signal.SIG_DFL)}


# --------------------------------------------------------------------------- real sbatch runs


@pytest.fixture(scope="module")
def slurm_cluster():
    """A private single-node SLURM cluster for this module (up in about 1 s)."""
    missing = missing_tools()
    reason = None
    if missing:
        reason = f"SLURM is not installed (missing {', '.join(missing)}): run .ci/install_slurm.sh"
    elif os.geteuid() != 0:
        reason = "the private SLURM cluster runs its daemons as root"
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (CI must run the SLURM tests)")
        pytest.skip(reason)
    cluster = SlurmCluster(cpus=2)
    started = time.monotonic()
    cluster.start()
    print(f"SLURM cluster up in {time.monotonic() - started:.1f} s")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """One synthetic data set shared by the runs, kept out of the repository."""
    return tmp_path_factory.mktemp("synthetic")


def _submit(cluster: SlurmCluster, template: str, out_dir: Path, env: dict[str, str], *sbatch_args: str) -> str:
    """Submit a template from the repository root, on the CPU; returns the job id."""
    full_env = {**cluster.env, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "CONFIG": "configs/demo.yaml",
                **env}
    # The cluster has two CPUs and no GPUs: these override the templates' #SBATCH lines.
    argv = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=2",
            f"--output={out_dir}/%x-%j.out", *sbatch_args, f"slurm/{template}"]
    out = subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}\n{cluster.logs()}"
    return out.stdout.strip().split(";")[0]


def _wait_for_steps(cluster: SlurmCluster, job: str, run_dir: Path, log_path: Path, steps: int) -> None:
    """Block until the job has logged `steps` training steps."""
    deadline = time.monotonic() + 300
    while len(_metrics_steps(run_dir)) < steps:
        state = cluster.job_state(job)
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        assert state in ("PENDING", "RUNNING"), f"job {job} {state} before training\n{log}"
        assert time.monotonic() < deadline, f"no training steps logged\n{log}"
        time.sleep(0.2)


def test_stylegan_job_trains_then_stops_on_term_without_requeue(slurm_cluster, synthetic_dir, tmp_path):
    # No RUN_DIR: the template's default runs/<job name>-<job id>; a unique name keeps it ours.
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    max_steps = 400
    overrides = ["model.name=stylegan", f"train.max_steps={max_steps}", f"data.synthetic_dir={synthetic_dir}",
                 *TINY]
    # One CPU process: accelerate's single-process launcher sits between srun and the trainer.
    job = _submit(slurm_cluster, "stylegan.sh", tmp_path, {"OVERRIDES": " ".join(overrides)}, f"--job-name={name}")
    run_dir = REPO / "runs" / f"{name}-{job}"
    log_path = tmp_path / f"{name}-{job}.out"
    try:
        _wait_for_steps(slurm_cluster, job, run_dir, log_path, 2)
        # How a user stops a run for good, with a checkpoint.
        slurm_cluster.run("scancel", "--batch", "--signal=TERM", job)
        state = slurm_cluster.wait_state(job, FINAL_STATES, timeout=180)
        log = log_path.read_text(errors="replace")
        assert state == "COMPLETED", log
        assert slurm_cluster.job_fields(job)["Restarts"] == "0"
        assert "restart count 0" in log and "step ended with status 0" in log
        assert "--multi_gpu" not in log
        assert "model:\n  name: stylegan" in (run_dir / "config.yaml").read_text()
        stopped_at = _checkpoint_steps(run_dir)
        assert len(stopped_at) == 1 and 2 <= stopped_at[0] < max_steps, (stopped_at, log)
        assert _metrics_steps(run_dir) == list(range(1, stopped_at[0] + 1))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # runs/, if this test created it


# ProGAN on two processes: the signal must pass the torchrun agent and reach both trainers. The
# VAE through the same template, as the README says to run it (TRAIN_SCRIPT and CONFIG), at 32²,
# without the final SWD (its metrics row would repeat the last step).
PREEMPTED = {
    "progan": ({"NPROC_PER_NODE": "2"}, []),
    "vae": ({"NPROC_PER_NODE": "1", "TRAIN_SCRIPT": "pipelines/train_vae.py", "CONFIG": "configs/vae_shapes.yaml"},
            ["schedule.start_res=32", "schedule.max_res=32", "model.base_width=8", "model.latent_dim=16",
             "train.final_swd=false"]),
}


@pytest.mark.parametrize("model", list(PREEMPTED))
def test_preemption_checkpoints_requeues_and_resumes(slurm_cluster, synthetic_dir, tmp_path, model):
    run_dir = tmp_path / "run"
    max_steps = 120
    env, model_overrides = PREEMPTED[model]
    overrides = [f"train.max_steps={max_steps}", f"data.synthetic_dir={synthetic_dir}", *TINY, *model_overrides]
    job = _submit(slurm_cluster, "progan.sh", tmp_path,
                  {"RUN_DIR": str(run_dir), "OVERRIDES": " ".join(overrides), **env})
    log_path = tmp_path / f"progan-{job}.out"

    _wait_for_steps(slurm_cluster, job, run_dir, log_path, 2)

    # What `#SBATCH --signal=B:USR1@600` does near the time limit.
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    slurm_cluster.wait_state(job, {"PENDING", *FINAL_STATES}, timeout=180)
    log = log_path.read_text(errors="replace")
    assert slurm_cluster.job_state(job) == "PENDING", log + slurm_cluster.logs()
    assert slurm_cluster.job_fields(job)["Restarts"] == "1"
    stopped_at = _checkpoint_steps(run_dir)
    assert len(stopped_at) == 1 and 2 <= stopped_at[0] < max_steps, (stopped_at, log)
    assert _metrics_steps(run_dir)[-1] == stopped_at[0]

    # The requeued job starts by itself once its old credential expires (BeginTime; 11 s on
    # this cluster). `scontrol update StartTime=now` before that gets it killed as
    # "credential revoked".
    slurm_cluster.wait_state(job, FINAL_STATES, timeout=300)
    log = log_path.read_text(errors="replace")
    assert slurm_cluster.job_state(job) == "COMPLETED", log + slurm_cluster.logs()
    assert "restart count 0" in log and "restart count 1" in log
    # Every step logged exactly once across the two runs, ending at max_steps.
    assert _metrics_steps(run_dir) == list(range(1, max_steps + 1))
    assert _checkpoint_steps(run_dir)[-1] == max_steps
    assert f"model:\n  name: {model}" in (run_dir / "config.yaml").read_text()



HUNG_TRAINER = """
import sys, time
print("hung trainer up", flush=True)
time.sleep(600)  # never installs a SIGUSR1 handler, so it ignores the stop request
"""


def test_trainer_that_ignores_the_stop_request_is_cancelled_and_requeued(slurm_cluster, tmp_path):
    script = tmp_path / "hung.py"
    script.write_text(HUNG_TRAINER)
    job = _submit(slurm_cluster, "stylegan.sh", tmp_path,
                  {"RUN_DIR": str(tmp_path / "run"), "TRAIN_SCRIPT": str(script), "STOP_GRACE": "2"})
    log_path = tmp_path / f"stylegan-{job}.out"
    deadline = time.monotonic() + 120
    while "hung trainer up" not in (log_path.read_text() if log_path.exists() else ""):
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING")
        assert time.monotonic() < deadline, log_path.read_text() if log_path.exists() else "no log"
        time.sleep(0.2)

    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    state = slurm_cluster.wait_state(job, {"PENDING", *FINAL_STATES}, timeout=120)
    log = log_path.read_text(errors="replace")
    assert state == "PENDING", log
    assert slurm_cluster.job_fields(job)["Restarts"] == "1"
    assert "cancelling the step" in log
    slurm_cluster.run("scancel", job)
