"""Train a progressive GAN (ProGAN or StyleGAN) on Accelerate.

    accelerate launch pipelines/train_progressive.py [--config C] [--run-dir D]
        [--resume auto|none|PATH] [key=value ...]

With no arguments: configs/demo.yaml on the built-in synthetic set, on the CPU in minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines._cli import run_training_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_training_cli(sys.argv[1:], default_config="configs/demo.yaml", prog="train_progressive.py"))
