"""Train a fixed-resolution baseline (DCGAN, or LSGAN with loss.name=lsgan) on the same trainer,
data, tracking, checkpoints and launch paths as the progressive models.

    accelerate launch pipelines/train_baseline.py [--config configs/dcgan_celebahq64.yaml]
        [--run-dir D] [--resume auto|none|PATH] [key=value ...]

With no arguments: a small DCGAN at 64² on the built-in synthetic set (configs/dcgan_demo.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines._cli import run_training_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_training_cli(sys.argv[1:], default_config="configs/dcgan_demo.yaml", prog="train_baseline.py",
                              single_resolution=True))
