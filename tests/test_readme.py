"""Every command in the README's ```bash blocks, in order, as a new user would type them after
the two set-up commands, on a fresh copy of the repository: each must exit 0 without a
traceback. Commands that would train long get small overrides (`OVERRIDES`); those that need a
GPU, SLURM, the network or the real CelebA-HQ are skipped by name (`SKIPPED`), and a skip that
no longer matches a command fails the test, so nothing is left out silently."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import ROOT, TINY

# README text that marks a command as not runnable here, and why. Each must match a command.
SKIPPED = {
    "make test": "the test suite itself",
    "--src CelebA-HQ-img": "needs the real CelebA-HQ",
    "--src celeba-hq.zip": "needs the real CelebA-HQ",
    "--verify data/celebahq": "needs the real CelebA-HQ",
    "data.path=data/celebahq": "needs GPUs and the real CelebA-HQ",
    "--run-dir runs/sg1024 --resume auto": "continues the 8-GPU CelebA-HQ run",
    "--run-dir runs/grow1024": "warm start from a 256² CelebA-HQ run, on GPUs",
    "--checkpoint runs/sg1024": "scores the CelebA-HQ StyleGAN run",
    "--checkpoint runs/cstylegan": "samples the conditional CelebA-HQ attribute run",
    "benchmarks/": "minutes each at paper widths (tests/test_benchmarks.py runs them small)",
    "sbatch": "needs SLURM (tests/test_slurm.py runs the templates on a one-node cluster)",
    "scancel": "needs SLURM",
    "cd gan_hr": "part of the SLURM example",
}

# Small overrides: every progressive run reaches 16² (fading in) in 28 tiny steps, so that SWD,
# grids, mixing and interpolation all have a model to work on.
PROGRESSIVE = " ".join([*TINY, "train.max_steps=28"])
OVERRIDES = [
    ("make demo", lambda c: c.replace("make demo", f'make -o .venv/.installed demo ARGS="{PROGRESSIVE}"')),
    ("pipelines/train_progressive.py", lambda c: f"{c} {PROGRESSIVE}"),
    # The baseline keeps its final SWD (TINY turns it off), on fewer images.
    ("pipelines/train_baseline.py",
     lambda c: f"{c} train.max_steps=2 data.num_workers=0 train.sample_grid=4 train.metrics_num_images=256"),
    ("pipelines/train_vae.py",
     lambda c: f"{c} train.max_steps=2 data.num_workers=0 train.sample_grid=4 train.metrics_num_images=256"),
    ("--num 10000", lambda c: f"{c} --num 8"),
    ("pipelines/evaluate.py", lambda c: f"{c} --num 64"),
]
ACCELERATE_NOTE = "had defaults used instead"  # Accelerate's "values were not passed" warning


def readme_commands() -> list[str]:
    """The commands of every ```bash block, continuation lines joined, comments and blanks dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        # A trailing "  # comment" is dropped too, so that overrides appended below are not commented out.
        lines = (re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines())
        commands += [line for line in lines if line and not line.startswith("#")]
    return commands


def _skip_reason(command: str) -> str | None:
    return next((why for marker, why in SKIPPED.items() if marker in command), None)


def test_skips_are_few_and_each_names_a_command():
    commands = readme_commands()
    assert len(commands) > 20
    for marker in SKIPPED:
        assert any(marker in c for c in commands), f"SKIPPED entry {marker!r} matches no README command"
    runnable = [c for c in commands if _skip_reason(c) is None]
    assert "source .venv/bin/activate" in runnable[:2], "the activation must follow the set-up commands"
    assert len(runnable) >= 12


def _fresh_copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "data", "runs", "wandb", "__pycache__", ".pytest_cache", "out",
                                    "*.egg-info")
    shutil.copytree(ROOT, dest, ignore=ignore)
    # The environment `make setup` would have made: this interpreter's, already installed.
    (dest / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return dest


def _skip_without_venv_and_make() -> None:
    if not (Path(sys.prefix) / "bin" / "activate").is_file() or shutil.which("make") is None:
        pytest.skip("needs a virtual environment (bin/activate) and make, as the README does")


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path):
    _skip_without_venv_and_make()
    repo = _fresh_copy(tmp_path / "gan_hr")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_", "ACCELERATE_", "OMP_NUM_THREADS",
                                "PYTHONPATH", "VIRTUAL_ENV"))}
    # As in a new shell: the environment is not active until the README says so.
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    shell_state: list[str] = []  # commands that change the shell (source ...), replayed before each
    ran, skipped = [], []
    for command in readme_commands():
        if (why := _skip_reason(command)) is not None:
            skipped.append(f"{command}  [{why}]")
            continue
        if command.startswith("source "):
            shell_state.append(command)
        for marker, change in OVERRIDES:
            if marker in command:
                command = change(command)
        script = "\n".join(["set -e", *shell_state, command])
        proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in output, (
            f"README command failed (exit {proc.returncode}): {command}\n{output[-4000:]}")
        assert ACCELERATE_NOTE not in output, f"Accelerate warns on {command}:\n{output[-2000:]}"
        ran.append(command)
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
    assert any("train_progressive.py" in c for c in ran) and any("evaluate.py" in c for c in ran)
    # The demo's set is where the README says, and the data_prep command found it already there.
    assert (repo / "data" / "synthetic" / "synthetic-2048-32" / "manifest.json").is_file()


@pytest.mark.slow
def test_make_demo_with_a_bad_value_prints_its_one_line_and_writes_nothing(tmp_path):
    """The launcher adds no traceback under the trainer's error line, and nothing is written."""
    _skip_without_venv_and_make()
    repo = _fresh_copy(tmp_path / "gan_hr")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "OMP_NUM_THREADS", "PYTHONPATH"))}
    proc = subprocess.run(["make", "-o", ".venv/.installed", "demo", "ARGS=train.total_kimg=-1"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    launcher_lines = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert launcher_lines == ["error: train.total_kimg: must be positive"]
    assert not (repo / "runs").exists() and not (repo / "data").exists()
