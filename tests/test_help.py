"""--help of every entry point: fast (nothing heavy imported before the arguments are parsed),
complete (a real description, examples, every option explained) and right for its script."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import ROOT, cpu_env

from data_prep.cli import SYNTHETIC_DEFAULT_MAX_RES, build_parser

ENTRY_POINTS = ["pipelines/generate.py", "pipelines/evaluate.py", "pipelines/train_progressive.py",
                "pipelines/train_baseline.py", "pipelines/train_vae.py"]

# Runs the script's --help in this interpreter and reports which heavy modules it imported.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("HEAVY", sorted(m for m in ("torch", "accelerate", "wandb", "gan_hr.training.trainer") if m in sys.modules))
"""


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_imports_neither_torch_nor_accelerate(script):
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / script)], env=cpu_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "usage:" in out and "HEAVY []" in out


def _help(script: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / script), "--help"], env=cpu_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True).stdout


def test_trainers_describe_themselves_with_examples_for_their_own_models():
    progressive, baseline = _help("pipelines/train_progressive.py"), _help("pipelines/train_baseline.py")
    for text in (progressive, baseline):
        assert "Train a GAN;" not in text and "examples:" in text
        assert "--config_file configs/accelerate/cpu.yaml" in text and "Exit codes" in text
    assert "progressive GAN" in progressive and "model.name=stylegan" in progressive
    assert "DCGAN" in baseline and "loss.name=lsgan" in baseline and "model.name=stylegan" not in baseline


def test_generate_help_is_whole_and_explains_every_option():
    text = _help("pipelines/generate.py")
    assert "a truncation sweep. Mixing, truncation" in text and "examples:" in text
    flat = " ".join(text.split())
    for option, said in (("--mode {grid,mixing,interpolation,truncation}", "grid: --num samples (default)"),
                         ("--seed SEED", "sample i comes from seed S + i"),
                         ("--batch-size BATCH_SIZE", "images per generator forward")):
        assert f"{option} {said}" in flat, f"{option} has no help"
    assert "psi 1.0, 0.85, 0.7, 0.5, 0.25, 0.0" in flat


def test_data_prep_synthetic_defaults_to_a_small_max_res(tmp_path):
    from data_prep.cli import main
    from data_prep.manifest import read_json

    assert main(["--src", "synthetic:16", "--out", str(tmp_path / "s"), "--shard-size", "8", "--no-progress"]) == 0
    assert max(read_json(tmp_path / "s" / "manifest.json")["resolutions"]) == SYNTHETIC_DEFAULT_MAX_RES == 32
    text = " ".join(build_parser().format_help().split())
    assert "default 1024; 32 for synthetic:N" in text and "N generated images" in text
    assert "--out data/synthetic/synthetic-2048-32 --shard-size 256" in text
