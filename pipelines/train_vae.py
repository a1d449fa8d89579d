"""Train a VAE baseline (Kingma & Welling 2014) with the same trainer, data, tracking,
checkpoints, resume, signals and launch paths as the GANs: one resolution, a convolutional
encoder to a diagonal Gaussian posterior, the reparameterisation trick, DCGAN's generator as
the decoder, and the loss recon + model.vae_beta * KL. Sample grids are drawn from the prior,
with the reconstructions of fixed reals beside them (samples/step-XXXXXXXX-res<R>-recon.png).
With no arguments it trains configs/vae_shapes.yaml, a small VAE at 32² on the built-in
synthetic set (prepared on first use), in minutes on a CPU. key=value arguments override any
config key by its dotted path.

examples:
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_vae.py
  accelerate launch --config_file configs/accelerate/cpu.yaml pipelines/train_vae.py \\
      model.vae_beta=0.5 train.max_steps=200
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes 8 \\
      pipelines/train_vae.py --config configs/vae_celebahq64.yaml data.path=data/celebahq

Exit codes: 0 done (or stopped by a signal, with a checkpoint), 1 training diverged, 2 a bad
config, path or launch (nothing written), 3 a storage fault.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines._cli import run_training_cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_training_cli(sys.argv[1:], default_config="configs/vae_shapes.yaml", prog="train_vae.py",
                              single_resolution=True, models=("vae",), description=__doc__))
