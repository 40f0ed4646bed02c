#!/usr/bin/env bash
# Evaluate on a SLURM cluster.
#   GPUS=8 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# Env: GPUS (8), GPUS_PER_NODE (min(GPUS, 8)), CPUS_PER_TASK (5), SRUN_ARGS (""), PYTHON,
#      PORT / MASTER_PORT (derived from the SLURM job id).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
GPUS=${GPUS:-8}
if [ "$GPUS" -lt 8 ]; then DEFAULT_GPN=$GPUS; else DEFAULT_GPN=8; fi
GPUS_PER_NODE=${GPUS_PER_NODE:-$DEFAULT_GPN}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Rendezvous port: PORT or MASTER_PORT if set, else derived from the job id of the allocation
# this script runs in (sbatch / salloc), so that jobs sharing a node do not collide. Outside
# an allocation the id is not known yet: every task then derives the same port from its own
# SLURM_JOB_ID (dino_mm/utils/slurm.py, also the one place that holds the formula).
DERIVED_PORT=$("$PYTHON" "$ROOT/dino_mm/utils/slurm.py" master-port)
if [ -n "$DERIVED_PORT" ]; then export MASTER_PORT=$DERIVED_PORT; fi

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
    "$PYTHON" -u "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher slurm "$@"
