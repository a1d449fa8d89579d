#!/usr/bin/env bash
# Install the SLURM daemons, client tools and munge so tests/test_slurm.py can start a real
# single-node cluster. Idempotent: does nothing when everything is already installed.
set -euo pipefail
# The daemons live in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

needed=(slurmctld slurmd sbatch munged)
missing=0
for tool in "${needed[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [[ $missing -eq 0 ]]; then
    echo "install_slurm: already installed ($(slurmctld -V))"
    exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# No daemons are started here: the test fixture runs its own with a private config.
$sudo apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
echo "install_slurm: installed ($(slurmctld -V))"
