#!/usr/bin/env bash
# One-GPU check of dino_mm (benchmarks/gpu_check.py): the report goes to the terminal and to
# $OUT_DIR/report.txt and report.json (the DCP test checkpoint too); the exit status is the
# script's (0 passed, 1 a check failed, 2 no CUDA / bad arguments).
#   bash benchmarks/gpu_check.sh [gpu_check.py args...]
# Env: PYTHON (python), OUT_DIR (work_dirs/gpu_check).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-$ROOT/work_dirs/gpu_check}
mkdir -p "$OUT_DIR"
if command -v nvidia-smi > /dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
set +e
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$ROOT/benchmarks/gpu_check.py" \
    --json "$OUT_DIR/report.json" --work-dir "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/report.txt"
rc=${PIPESTATUS[0]}
exit "$rc"
