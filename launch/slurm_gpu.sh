#!/bin/bash
# SLURM launcher for GPU clusters: one task per node, all of a node's GPUs per task.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh --config=configs/universal.py:full --workdir=/shared/run1
#
# jax.distributed.initialize() reads SLURM's environment (coordinator = first node, process
# count = tasks, process id = SLURM_PROCID), so no coordinator flags are needed. The workdir must
# be on a filesystem every node sees (checkpoints are written by all processes through Orbax).
#SBATCH --job-name=dassemble_jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# A venv on the shared filesystem with: pip install -e '.[gpu]'
source "${VENV:-.venv}/bin/activate"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 python -m dassemble_jax.main --distributed=on "$@"
