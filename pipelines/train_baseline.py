"""Train a fixed-resolution baseline, DCGAN (or LSGAN: loss.name=lsgan, as
configs/lsgan_celebahq64.yaml does), with the same trainer, data, tracking, checkpoints, resume
and launch paths as the progressive models: one resolution, no growing. With no arguments it
trains configs/dcgan_demo.yaml, a narrow DCGAN at 64² on the built-in synthetic set (prepared on
first use). key=value arguments override any config key by its dotted path.

examples:
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_baseline.py
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_baseline.py \\
      loss.name=lsgan train.max_steps=200
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 8 \\
      pipelines/train_baseline.py --config configs/dcgan_celebahq64.yaml data.path=data/celebahq

Exit codes: 0 done (or stopped by a signal, with a checkpoint), 1 training diverged, 2 a bad
config, path or launch (nothing written), 3 a storage fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines._cli import run_training_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_training_cli(sys.argv[1:], default_config="configs/dcgan_demo.yaml", prog="train_baseline.py",
                              single_resolution=True, description=__doc__))
