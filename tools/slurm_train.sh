#!/usr/bin/env bash
# Train on a SLURM cluster: one task per GPU, rendezvous from SLURM variables.
#   GPUS=32 GPUS_PER_NODE=8 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
# Env: GPUS (8), GPUS_PER_NODE (min(GPUS, 8)), CPUS_PER_TASK (10), SRUN_ARGS (""),
#      PYTHON (python), PORT / MASTER_PORT (derived from the SLURM job id). Each task runs
#      tools/train.py --launcher slurm; the process group is initialised from
#      SLURM_PROCID / SLURM_NTASKS / SLURM_NODELIST.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
WORK_DIR=""
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  WORK_DIR=$1
  shift
fi
GPUS=${GPUS:-8}
if [ "$GPUS" -lt 8 ]; then DEFAULT_GPN=$GPUS; else DEFAULT_GPN=8; fi
GPUS_PER_NODE=${GPUS_PER_NODE:-$DEFAULT_GPN}
CPUS_PER_TASK=${CPUS_PER_TASK:-10}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Rendezvous port: PORT or MASTER_PORT if set, else derived from the job id of the allocation
# this script runs in (sbatch / salloc), so that jobs sharing a node do not collide. Outside
# an allocation the id is not known yet: every task then derives the same port from its own
# SLURM_JOB_ID (dino_mm/utils/slurm.py, also the one place that holds the formula).
DERIVED_PORT=$("$PYTHON" "$ROOT/dino_mm/utils/slurm.py" master-port)
if [ -n "$DERIVED_PORT" ]; then export MASTER_PORT=$DERIVED_PORT; fi
WORK_DIR_ARGS=()
if [ -n "$WORK_DIR" ]; then WORK_DIR_ARGS=(--work-dir "$WORK_DIR"); fi

# shellcheck disable=SC2086
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" "${WORK_DIR_ARGS[@]}" --launcher slurm "$@"
