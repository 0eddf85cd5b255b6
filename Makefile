# reinforge: two commands do all the set-up on a fresh machine.
#   make quickstart   create .venv, install, run the main job
#   make test         create .venv if missing, install with test extras, run the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

LIBERO_VENV := .venv-libero
LEROBOT_VENV := .venv-lerobot
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# LeRobot >= 0.5 needs Python >= 3.12: the first interpreter here that runs and is new enough (a pyenv shim of an
# inactive version does not run; this machine's 3.12 lives under ~/.pyenv/versions)
PYTHON312 ?= $(shell for p in python3.12 python3.13 $(wildcard $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python); do \
	$$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)

.PHONY: quickstart test test-slow test-libero test-lerobot test-gpu ray oft libero-ray lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch>=2.4,<2.14 picks the local CPU build; an unconstrained torch would pull a CUDA build
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch>=2.4,<2.14"
	$(BIN)/pip install --quiet -e .
	touch $@

# ray (~80 MB, ~8 s) and transformers (~12 s) are in the test set: the `ray` tests (a killed worker,
# reproduction) and the OpenVLA-OFT style policy's tests run by default
$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,metaworld,ray,oft]"
	touch $@

quickstart: $(STAMP)
	$(BIN)/reinforge quickstart

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m slow

# CUDA tests (skipped where torch sees no GPU)
test-gpu: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m gpu

# LIBERO (~2 GB of simulator and assets) lives in its own venv so the default one stays light
$(LIBERO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LIBERO_VENV)
	$(LIBERO_VENV)/bin/pip install --quiet --upgrade pip
	$(LIBERO_VENV)/bin/pip install --quiet "torch>=2.4,<2.14"
	$(LIBERO_VENV)/bin/pip install --quiet -e ".[test,libero,oft]"
	touch $@

test-libero: $(LIBERO_VENV)/.installed
	MUJOCO_GL=egl $(LIBERO_VENV)/bin/python -m pytest -q -m libero

# LeRobot's pi0 (policy kind lerobot) in its own Python 3.12 venv (~2 min, ~5 GB: LeRobot 0.6.1 pins torch 2.11
# and transformers 5.5); its tests build tiny random pi0 models offline
$(LEROBOT_VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make test-lerobot needs Python >= 3.12: install one or pass PYTHON312=/path/to/python3.12"; exit 2; }
	$(PYTHON312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/pip install --quiet --upgrade pip
	@# on a machine without an NVIDIA GPU, torch's CPU build first (LeRobot's pin would pull the CUDA one, ~2.7 GB
	@# more); where that index cannot be reached, say so and go on
	@command -v nvidia-smi >/dev/null 2>&1 || $(LEROBOT_VENV)/bin/pip install --quiet --timeout 10 --retries 0 \
		--index-url $(TORCH_CPU_INDEX) "torch>=2.7,<2.12" torchvision || \
		echo "note: $(TORCH_CPU_INDEX) is unreachable: LeRobot's torch pin installs the CUDA build"
	$(LEROBOT_VENV)/bin/pip install --quiet "lerobot[pi]==0.6.1"
	$(LEROBOT_VENV)/bin/pip install --quiet -e . pytest
	touch $@

test-lerobot: $(LEROBOT_VENV)/.installed
	$(LEROBOT_VENV)/bin/python -m pytest -q -m lerobot

# Ray for distributed runs (distributed.backend=ray) in the default venv, and in the LIBERO one
ray: $(STAMP)
	$(BIN)/pip install --quiet -e ".[ray]"

# transformers for the OpenVLA-OFT style policy (policy kind oft)
oft: $(STAMP)
	$(BIN)/pip install --quiet -e ".[oft]"

libero-ray: $(LIBERO_VENV)/.installed
	$(LIBERO_VENV)/bin/pip install --quiet -e ".[libero,ray]"

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/reinforge bench env --num-envs 256 --image-size 64 --json

clean:
	rm -rf $(VENV) $(LIBERO_VENV) $(LEROBOT_VENV) runs .pytest_cache
