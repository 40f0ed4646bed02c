# dino_mm developer commands. VENV can be overridden: make test VENV=/path/to/venv
VENV ?= .venv
PY := $(VENV)/bin/python
# Two workers with one BLAS thread each use the 2 cores of a CI machine best.
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: setup setup-tests demo test test-fast clean-venv

setup:
	DINO_MM_VENV=$(VENV) bash tools/setup_env.sh

setup-tests:
	DINO_MM_VENV=$(VENV) DINO_MM_EXTRAS=tests bash tools/setup_env.sh

# The main job on the embedded default: DINOv2 pretraining of a small ViT on a dataset
# built offline from scikit-learn's digits, then kNN of the trained vs random backbone.
demo: setup
	$(PY) tools/demo.py

test: setup-tests
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Run the tests without re-checking the environment.
test-fast:
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
