#!/bin/bash
# ProGAN on SLURM. Submit from the repository root (that is where the job runs):
#   sbatch slurm/progan.sh
#   CONFIG=configs/progan_celebahq.yaml OVERRIDES="train.total_kimg=12000" sbatch --nodes=2 slurm/progan.sh
# Command-line options override the #SBATCH lines; the variables are described in slurm/common.sh.
#SBATCH --job-name=progan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@600
#SBATCH --output=%x-%j.out

# sbatch runs a copy of this file from its spool directory: find the repository from where the
# job was submitted (or GAN_HR_ROOT).
ROOT="${GAN_HR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [[ ! -f "$ROOT/slurm/common.sh" ]]; then
    echo "error: $ROOT is not the gan_hr repository: submit from its root or set GAN_HR_ROOT" >&2
    exit 2
fi
cd "$ROOT" || exit 2
DEFAULT_CONFIG=configs/progan_celebahq.yaml
source slurm/common.sh
