"""Train a progressive GAN (ProGAN, or StyleGAN with model.name=stylegan) with Accelerate: the
networks grow from schedule.start_res to schedule.max_res, fading each new resolution in, and the
run directory gets the config, metrics.jsonl, sample grids, checkpoints and plots. With no
arguments it trains configs/demo.yaml on the built-in synthetic set (prepared on first use), on
the CPU in minutes. key=value arguments override any config key by its dotted path.

examples:
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_progressive.py
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_progressive.py \\
      model.name=stylegan train.max_steps=200
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 8 \\
      pipelines/train_progressive.py --config configs/stylegan_celebahq.yaml \\
      --run-dir runs/sg1024 data.path=data/celebahq
  accelerate launch --config_file configs/accelerate/single_gpu.yaml pipelines/train_progressive.py \\
      --run-dir runs/sg1024 --resume auto          # continue a run

Exit codes: 0 done (or stopped by a signal, with a checkpoint), 1 training diverged, 2 a bad
config, path or launch (nothing written), 3 a storage fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines._cli import run_training_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_training_cli(sys.argv[1:], default_config="configs/demo.yaml", prog="train_progressive.py",
                              description=__doc__))
