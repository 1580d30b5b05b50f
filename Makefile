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

demo: setup
	$(VENV)/bin/vla demo

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/data_throughput.py

lint: setup
	$(VENV)/bin/ruff check vla envs tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache runs/demo data/demo.zarr
