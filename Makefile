# dino_mm developer commands. VENV can be overridden: make test VENV=/path/to/venv
# GPU nodes: make setup CUDA=1 (mmcv with CUDA ops, xformers). A CPU-only machine can take
# the CPU torch wheels: make setup DINO_MM_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
VENV ?= .venv
CUDA ?= 0
PY := $(VENV)/bin/python
# Two workers with one BLAS thread each use the 2 cores of a CI machine best.
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup setup-tests demo demo-dinotxt test test-fast clean-venv

# tools/setup_env.sh makes VENV absolute and takes its compile parallelism from the cores,
# not from the OMP_NUM_THREADS exported below for the tests.
setup:
	DINO_MM_VENV=$(VENV) DINO_MM_CUDA=$(CUDA) bash tools/setup_env.sh

setup-tests:
	DINO_MM_VENV=$(VENV) DINO_MM_CUDA=$(CUDA) DINO_MM_EXTRAS=tests bash tools/setup_env.sh

# The main job on the embedded default: DINOv2 pretraining of a small ViT on a dataset
# built offline from scikit-learn's digits, then kNN of the trained vs random backbone.
demo: setup
	$(PY) tools/demo.py

# dino.txt on the same data: a text tower aligned to a frozen ViT on captioned digits, then
# zero-shot classification of the held-out digits from class names alone.
demo-dinotxt: setup
	$(PY) tools/demo_dinotxt.py

test: setup-tests
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Run the tests without re-checking the environment.
test-fast:
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
