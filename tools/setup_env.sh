#!/usr/bin/env bash
# Create (or update) the dino_mm virtual environment with the pinned OpenMMLab stack.
#
#   bash tools/setup_env.sh            # venv in ./.venv
#   DINO_MM_VENV=/path/to/venv bash tools/setup_env.sh
#   DINO_MM_EXTRAS=tests bash tools/setup_env.sh   # also install the test-only oracles
#
# Idempotent: a second run re-checks every step and takes seconds. The slow step is
# compiling mmcv 2.1.0 with its ops against torch 2.14 (no wheel exists); the wheel is
# cached under $DINO_MM_CACHE (default ~/.cache/dino_mm) keyed by mmcv/torch/python version.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DINO_MM_VENV:-$REPO/.venv}"
CACHE="${DINO_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dino_mm}"
PYTHON_BIN="${DINO_MM_PYTHON:-python3.11}"
EXTRAS="${DINO_MM_EXTRAS:-}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"

STEP="start"
T0=$(date +%s)
log() { printf '[setup_env %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() {
  local rc=$?
  printf '\n[setup_env] FAILED at step: %s (exit code %s)\n' "$STEP" "$rc" >&2
  printf '[setup_env] Fix the cause above and re-run: bash tools/setup_env.sh\n' >&2
  printf '[setup_env] Completed steps are skipped on re-run; to start over: rm -rf %s\n' "$VENV" >&2
  exit "$rc"
}
trap fail ERR

STEP="check python"
if ! command -v "$PYTHON_BIN" >/dev/null 2>&1; then
  echo "[setup_env] $PYTHON_BIN not found; set DINO_MM_PYTHON to a Python 3.11 interpreter" >&2
  exit 2
fi

STEP="create virtual environment at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off PIP_NO_INPUT=1
PYVER=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
log "venv python: $("$PY" --version) ($PYVER)"

installed_version() {  # prints the installed version of a distribution, or nothing
  "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

check_torch() {
  local v
  v=$(installed_version torch)
  if [ "${v%%+*}" != "$TORCH_VERSION" ]; then
    echo "[setup_env] torch is '$v' but $TORCH_VERSION is required (pip can silently change it;" \
         "see ../shared/STACK.md). Re-run this script, or rm -rf $VENV and start over." >&2
    return 1
  fi
}

STEP="install torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION and build tools"
# torch, torchvision and the build tools go in one resolver call: asking for an old
# setuptools separately lets pip quietly downgrade torch (STACK.md).
if [ "$(installed_version torch)" != "$TORCH_VERSION" ] || [ -z "$(installed_version ninja)" ]; then
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (large download on a fresh machine)"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "setuptools>=77.0.3,<82" wheel ninja
else
  log "torch $TORCH_VERSION already installed"
fi
check_torch

STEP="build or reuse the mmcv $MMCV_VERSION wheel"
WHEELDIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYVER"
mkdir -p "$WHEELDIR"
if [ "$(installed_version mmcv)" = "$MMCV_VERSION" ] && "$PY" -c "import mmcv.ops" 2>/dev/null; then
  log "mmcv $MMCV_VERSION with ops already installed"
else
  WHEEL=$(ls "$WHEELDIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    BUILD=$(mktemp -d "${TMPDIR:-/tmp}/dino_mm_mmcv.XXXXXX")
    log "downloading mmcv $MMCV_VERSION sdist into $BUILD"
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch 2.14's headers need C++20.
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    log "compiling mmcv $MMCV_VERSION ops with MAX_JOBS=$MAX_JOBS (about 16-25 min on 2 cores)"
    B0=$(date +%s)
    (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="$MAX_JOBS" "${PIP[@]}" wheel -q \
        --no-build-isolation --no-deps -w "$BUILD/dist" .)
    log "mmcv build took $(( $(date +%s) - B0 )) s"
    BUILT=$(ls "$BUILD"/dist/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
    # Atomic publish into the cache: a killed build never leaves a half-written wheel.
    cp "$BUILT" "$WHEELDIR/.partial.whl"
    mv "$WHEELDIR/.partial.whl" "$WHEELDIR/$(basename "$BUILT")"
    WHEEL="$WHEELDIR/$(basename "$BUILT")"
    rm -rf "$BUILD"
  else
    log "using cached mmcv wheel $WHEEL"
  fi
  "${PIP[@]}" install -q --no-deps "$WHEEL"
  # mmcv's own runtime requirements (its wheel metadata is installed with --no-deps).
  "${PIP[@]}" install -q "mmengine==0.10.7" addict packaging pyyaml yapf opencv-python
fi

STEP="install the OpenMMLab stack, timm and runtime requirements"
log "installing requirements/runtime.txt"
"${PIP[@]}" install -q -r "$REPO/requirements/runtime.txt" "torch==$TORCH_VERSION"
check_torch

if [[ ",$EXTRAS," == *",tests,"* ]]; then
  STEP="install test-only requirements and oracles"
  log "installing requirements/tests.txt and the dinov2 oracle (test-only, --no-deps)"
  "${PIP[@]}" install -q -r "$REPO/requirements/tests.txt" "torch==$TORCH_VERSION"
  "${PIP[@]}" install -q --no-deps "dinov2==0.0.1.dev2"
  check_torch
fi

STEP="install dino_mm in editable mode"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"

STEP="verify the environment"
"$PY" - <<'EOF'
import dino_mm  # first: it applies the compatibility fixes (dino_mm/utils/compat.py)
import torch, mmcv, mmcv.ops, mmengine, mmseg.models, mmdet.models, mmpretrain.models, timm
print(f"[setup_env] torch {torch.__version__}, mmcv {mmcv.__version__} (ops ok), mmengine "
      f"{mmengine.__version__}, timm {timm.__version__}, dino_mm {dino_mm.__version__}")
EOF
check_torch
log "done: activate with 'source $VENV/bin/activate'"
