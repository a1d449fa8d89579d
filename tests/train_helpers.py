"""Running the real training scripts in subprocesses, with tiny models, for end-to-end tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Tiny widths and short phases: 8 steps per phase stretch at batch 8 (64 images). No SWD at the
# end (seconds per run; tests/test_report.py turns it on), so metrics.jsonl has one row per step.
TINY = [
    "model.channel_base=128", "model.channel_max=16", "model.latent_dim=16", "model.w_dim=16",
    "model.mapping_layers=2", "schedule.batch_size=8", "schedule.start_res=4", "schedule.lr=0.002", "loss.name=wgan_gp",
    "schedule.fade_kimg=0.064", "schedule.stable_kimg=0.064", "schedule.max_res=16", "data.num_workers=0", "train.log_every_steps=1",
    "train.sample_grid=4", "train.checkpoint_every_kimg=1000", "train.sample_every_kimg=1000",
    "train.final_swd=false",
]


def cpu_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_"))}
    env.update(ACCELERATE_USE_CPU="true", WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def train_command(script: str, run_dir: Path, overrides: list[str], *, config: str = "configs/demo.yaml",
                  resume: str = "none") -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / script), "--config", str(ROOT / config),
            "--run-dir", str(run_dir), "--resume", resume, *overrides]


def train(run_dir: Path, data: Path, *overrides: str, resume: str = "none", script: str = "train_progressive.py",
          config: str = "configs/demo.yaml", check: bool = True, tiny: bool = True,
          env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """One single-process training run of the real entry point."""
    args = (TINY if tiny else []) + [f"data.path={data}", *overrides]
    proc = subprocess.run(train_command(script, run_dir, args, config=config, resume=resume), cwd=ROOT,
                          env=env or cpu_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def accelerate_launch(run_dir: Path, data: Path, *overrides: str, num_processes: int = 2, num_machines: int = 1,
                      port: int,
                      extra_launch: list[str] | None = None, script: str = "train_progressive.py",
                      config: str = "configs/demo.yaml") -> list[str]:
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(num_processes),
              "--num_machines", str(num_machines), "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), *(extra_launch or [])]
    cmd = train_command(script, run_dir, TINY + [f"data.path={data}", *overrides], config=config)
    return launch + cmd[1:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))


def meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def load_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's models and optimizers, flattened by name."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("models", torch.load(ckpt / "models.pt", weights_only=True))
    walk("optim", torch.load(ckpt / "optim.pt", weights_only=True))
    return flat


def assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_state(a), load_state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
