# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch's default OpenMP spin-wait makes small ops many times slower on a busy 2-core box (NOTES.md).
export OMP_WAIT_POLICY ?= PASSIVE
export MUJOCO_GL ?= egl
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup demo test test-slow test-all bench lint clean

setup: $(STAMP)

# torch first: the CPU wheel on local disk; a range-only requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[sim,serve,dev]"
	touch $(STAMP)

DEMO_DATA := data/demo/push.zarr

# The main job on the built-in default. Today: collect -> validate -> stats -> info
# (training, evaluation and the report arrive with their issues; nothing is faked here).
demo: setup
	$(VENV)/bin/vla collect env=builtin/push episodes=100 cameras=[top,wrist] out=$(DEMO_DATA)
	$(VENV)/bin/vla data validate $(DEMO_DATA)
	$(VENV)/bin/vla data stats $(DEMO_DATA)
	$(VENV)/bin/vla data info $(DEMO_DATA)
	@echo "demo dataset: $(DEMO_DATA)   videos: data/demo/push_videos/"

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/env_speed.py
	$(PY) benchmarks/expert_success.py
	$(PY) benchmarks/policy_latency.py

lint: setup
	$(VENV)/bin/ruff check vla envs tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache data/demo
