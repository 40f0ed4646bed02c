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

# Every path we are given is made absolute before anything else: later steps `cd` into a
# build directory, where a relative venv or cache path would no longer resolve.
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/${1#./}" ;;
  esac
}
VENV="$(abspath "${DINO_MM_VENV:-$REPO/.venv}")"
CACHE="$(abspath "${DINO_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dino_mm}")"
PYTHON_BIN="${DINO_MM_PYTHON:-python3.11}"
EXTRAS="${DINO_MM_EXTRAS:-}"
# CUDA=1 (or DINO_MM_CUDA=1): compile mmcv's CUDA ops and install xformers (GPU nodes).
CUDA="${DINO_MM_CUDA:-0}"
NVCC="${DINO_MM_NVCC:-nvcc}"
# Another torch wheel index (e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# build, ~0.2 GB instead of ~3 GB of NVIDIA libraries); empty keeps pip's default.
TORCH_INDEX_URL="${DINO_MM_TORCH_INDEX_URL:-}"
# DRY_RUN=1: perform every step except the long mmcv compile and the large downloads,
# printing the commands it would run instead (used by the cold-path test).
DRY_RUN="${DINO_MM_DRY_RUN:-0}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
XFORMERS_SPEC="${DINO_MM_XFORMERS:-xformers}"
# Compile parallelism from the cores this process may use. GNU nproc honours
# OMP_NUM_THREADS (the Makefile sets it to 1 for the tests), so it is unset here.
MAX_JOBS="${MAX_JOBS:-$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 2)}"

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
log "venv python: $("$PY" --version) ($PYVER); cache $CACHE; CUDA=$CUDA; MAX_JOBS=$MAX_JOBS"
[ "$DRY_RUN" = 1 ] && log "DRY RUN: the mmcv compile and the large downloads are only printed"

# heavy CMD...: a step that downloads or compiles a lot; printed instead of run in dry-run.
heavy() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '[setup_env dry-run] would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

installed_version() {  # prints the installed version of a distribution, or nothing
  "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

check_torch() {
  [ "$DRY_RUN" = 1 ] && return 0
  local v
  v=$(installed_version torch)
  if [ "${v%%+*}" != "$TORCH_VERSION" ]; then
    echo "[setup_env] torch is '$v' but $TORCH_VERSION is required (pip can silently change it" \
         "when another package asks for a different release). Re-run this script, or" \
         "rm -rf $VENV and start over." >&2
    return 1
  fi
}

STEP="install torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION and build tools"
# torch, torchvision and the build tools go in one resolver call: asking for an old
# setuptools separately lets pip quietly downgrade torch.
TORCH_INDEX_ARGS=()
if [ -n "$TORCH_INDEX_URL" ]; then
  # The extra index only adds torch builds; everything else still comes from PyPI.
  TORCH_INDEX_ARGS=(--extra-index-url "$TORCH_INDEX_URL")
fi
TV=$(installed_version torch)
if [ "${TV%%+*}" != "$TORCH_VERSION" ] || [ -z "$(installed_version ninja)" ]; then
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL }(large download on a fresh machine)"
  heavy "${PIP[@]}" install -q "${TORCH_INDEX_ARGS[@]}" "torch==$TORCH_VERSION" \
    "torchvision==$TORCHVISION_VERSION" "setuptools>=77.0.3,<82" wheel ninja
  # A dry run still needs the small build tools: the sdist download below reads the
  # package metadata with them.
  [ "$DRY_RUN" = 1 ] && "${PIP[@]}" install -q "setuptools>=77.0.3,<82" wheel ninja
else
  log "torch $TORCH_VERSION already installed"
fi
check_torch

STEP="work out the mmcv ops flavour (cache key)"
# The cache key names the ops flavour: a CPU-only wheel in a shared $HOME must never be
# reused on a GPU node, nor a wheel built for one CUDA version on another.
if [ "$CUDA" = 1 ]; then
  CUDA_VER="${DINO_MM_CUDA_VERSION:-}"
  if [ -z "$CUDA_VER" ] && [ "$DRY_RUN" != 1 ]; then
    CUDA_VER=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
  fi
  if [ -z "$CUDA_VER" ] && command -v "$NVCC" >/dev/null 2>&1; then
    CUDA_VER=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  fi
  if [ -z "$CUDA_VER" ]; then
    echo "[setup_env] CUDA=1 but neither torch nor nvcc ('$NVCC') reports a CUDA version:" \
         "install the CUDA toolkit matching torch (nvcc on PATH, CUDA_HOME set), or set" \
         "DINO_MM_NVCC or DINO_MM_CUDA_VERSION" >&2
    exit 2
  fi
  ARCHS="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"   # A100 (sm80) and H100 (sm90) by default
  OPS_KEY="cu${CUDA_VER//./}-sm${ARCHS//[^0-9]/_}"
  WANT_OPS_CUDA="$CUDA_VER"
else
  OPS_KEY="cpu"
  WANT_OPS_CUDA="not available"
fi
WHEELDIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYVER-$OPS_KEY"
log "mmcv wheel cache: $WHEELDIR"

STEP="build or reuse the mmcv $MMCV_VERSION wheel ($OPS_KEY)"
mkdir -p "$WHEELDIR"
have_mmcv_ops() {  # the installed mmcv has ops of the wanted flavour (CPU-only or CUDA x.y)
  [ "$(installed_version mmcv)" = "$MMCV_VERSION" ] || return 1
  local got
  got=$("$PY" -c 'from mmcv.ops import get_compiling_cuda_version as v; print(v())' 2>/dev/null) \
    || return 1
  [ "$got" = "$WANT_OPS_CUDA" ]
}
if have_mmcv_ops; then
  log "mmcv $MMCV_VERSION with $OPS_KEY ops already installed"
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
    BUILD_ENV=(MMCV_WITH_OPS=1 MAX_JOBS="$MAX_JOBS")
    if [ "$CUDA" = 1 ]; then
      BUILD_ENV+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS")
      log "compiling mmcv $MMCV_VERSION CPU+CUDA ops (CUDA $CUDA_VER, archs $ARCHS) with MAX_JOBS=$MAX_JOBS (about 40-60 min on 16 cores)"
    else
      BUILD_ENV+=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
      log "compiling mmcv $MMCV_VERSION CPU ops with MAX_JOBS=$MAX_JOBS (about 12 min on 2 cores)"
    fi
    B0=$(date +%s)
    # The build runs from inside the source tree: every path used here is absolute.
    (cd "$SRC" && "$PY" -c 'import sys' && \
       heavy env "${BUILD_ENV[@]}" "${PIP[@]}" wheel -q --no-build-isolation --no-deps \
         -w "$BUILD/dist" .)
    log "mmcv build took $(( $(date +%s) - B0 )) s"
    if [ "$DRY_RUN" = 1 ]; then
      log "dry-run: no wheel built, nothing published to $WHEELDIR"
      WHEEL=""
    else
      BUILT=$(ls "$BUILD"/dist/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
      # Atomic publish into the cache: a killed build never leaves a half-written wheel.
      cp "$BUILT" "$WHEELDIR/.partial.whl"
      mv "$WHEELDIR/.partial.whl" "$WHEELDIR/$(basename "$BUILT")"
      WHEEL="$WHEELDIR/$(basename "$BUILT")"
    fi
    rm -rf "$BUILD"
  else
    log "using cached mmcv wheel $WHEEL"
  fi
  [ -n "$WHEEL" ] && heavy "${PIP[@]}" install -q --no-deps "$WHEEL"
  # mmcv's own runtime requirements (its wheel metadata is installed with --no-deps).
  heavy "${PIP[@]}" install -q "mmengine==0.10.7" addict packaging pyyaml yapf opencv-python
fi

STEP="install the OpenMMLab stack, timm and runtime requirements"
log "installing requirements/runtime.txt"
heavy "${PIP[@]}" install -q "${TORCH_INDEX_ARGS[@]}" -r "$REPO/requirements/runtime.txt" \
  "torch==$TORCH_VERSION"
check_torch

if [ "$CUDA" = 1 ]; then
  STEP="install xformers (optional, GPU attention kernels)"
  # Optional: dino_mm falls back to torch's scaled_dot_product_attention without it. The
  # torch pin stays in the same resolver call so pip cannot swap torch for xformers' choice.
  if ! heavy "${PIP[@]}" install -q "${TORCH_INDEX_ARGS[@]}" "$XFORMERS_SPEC" "torch==$TORCH_VERSION"; then
    log "WARNING: no xformers build for torch $TORCH_VERSION was installable; continuing without it"
  fi
  check_torch
fi

if [[ ",$EXTRAS," == *",tests,"* ]]; then
  STEP="install test-only requirements and oracles"
  log "installing requirements/tests.txt and the dinov2 oracle (test-only, --no-deps)"
  heavy "${PIP[@]}" install -q "${TORCH_INDEX_ARGS[@]}" -r "$REPO/requirements/tests.txt" \
    "torch==$TORCH_VERSION"
  heavy "${PIP[@]}" install -q --no-deps "dinov2==0.0.1.dev2"
  check_torch
fi

STEP="install dino_mm in editable mode"
# Small and offline: runs in a dry run too.
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"

STEP="install the start-up hook for mmpretrain + transformers 5"
# Lets a user's script import mmseg / mmdet / mmpretrain before (or without) dino_mm; see
# dino_mm/utils/startup_hook.py for why. Small and offline: runs in a dry run too.
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$REPO/dino_mm/utils/startup_hook.py" "$SITE/_dino_mm_startup.py.tmp"
mv "$SITE/_dino_mm_startup.py.tmp" "$SITE/_dino_mm_startup.py"
printf '%s\n' 'import _dino_mm_startup; _dino_mm_startup.install()' > "$SITE/dino_mm_startup.pth"
log "start-up hook installed: $SITE/dino_mm_startup.pth"

STEP="verify the environment"
if [ "$DRY_RUN" = 1 ]; then
  log "dry-run done: every step ran except the compile and the large downloads"
  exit 0
fi
"$PY" - <<'PYEOF'
# The OpenMMLab packages first, as a user's script may import them: the start-up hook
# must make that work without dino_mm imported.
import torch, mmcv, mmcv.ops, mmengine, mmseg.models, mmdet.models, mmpretrain.models, timm
import dino_mm
print(f"[setup_env] torch {torch.__version__}, mmcv {mmcv.__version__} (ops ok, CUDA ops: "
      f"{mmcv.ops.get_compiling_cuda_version()}), mmengine {mmengine.__version__}, "
      f"timm {timm.__version__}, dino_mm {dino_mm.__version__}")
PYEOF
check_torch
log "done: activate with 'source $VENV/bin/activate'"
