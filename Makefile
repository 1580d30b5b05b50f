# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch's default OpenMP spin-wait makes small ops many times slower on a busy 2-core box (NOTES.md).
export OMP_WAIT_POLICY ?= PASSIVE
export MUJOCO_GL ?= egl
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup demo test test-slow test-all test-lerobot test-client-pythons bench lint clean results-smoke

setup: $(STAMP)

# torch first: the CPU wheel on local disk; a range-only requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py packages/vla-client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e packages/vla-client
	$(PY) -m pip install -q -e ".[sim,serve,dev]"
	touch $(STAMP)

DEMO_DATA  := data/demo/reach.zarr
DEMO_RUN   ?= runs/demo-reach
DEMO_STEPS := 900
# the seed study in docs/results.md ("The demo") reruns the demo with these: make demo DEMO_SEED=1 DEMO_RUN=...
DEMO_SEED  ?= 0
DEMO_KEYPOINT_SCALE ?= 4
DEMO_CKPT  := $(DEMO_RUN)/checkpoints/step_$(shell printf %06d $(DEMO_STEPS))
# held-out scenes: the demos are seeds 0-499, the evaluation starts at 100000
DEMO_EVAL  := checkpoint=$(DEMO_CKPT) episodes=50 seed=100000 noise_scale=0.5

# The main job on the built-in default, builtin/reach ("move to the {colour} block": three blocks, the words pick
# one): collect -> validate -> train (small preset + the pointing stem, ~5.5 min on 2 CPU cores) -> evaluate on
# held-out scenes, as instructed and with another block named -> summary. A second run reuses what the first made.
# keypoint_scale=4: without it the stem found the named block by step 900 with one of three seeds (98, 50, 58%)
demo: setup
	@mkdir -p $(DEMO_RUN) && date +%s > $(DEMO_RUN)/started
	$(VENV)/bin/vla collect env=builtin/reach episodes=500 cameras=[top] out=$(DEMO_DATA)
	$(VENV)/bin/vla data validate $(DEMO_DATA)
	$(VENV)/bin/vla data info $(DEMO_DATA)
	$(VENV)/bin/vla train policy=small grounding=pointing data.path=$(DEMO_DATA) out=$(DEMO_RUN) resume=auto \
	    policy.grounding.keypoint_scale=$(DEMO_KEYPOINT_SCALE) trainer.seed=$(DEMO_SEED) \
	    "++policy.normalization={state:mean_std,action:min_max,targets:mean_std}" trainer.steps=$(DEMO_STEPS) \
	    trainer.batch_size=64 trainer.lr=1e-3 trainer.warmup_steps=50 \
	    trainer.checkpoint_every=300 trainer.val_every=300
	$(VENV)/bin/vla eval $(DEMO_EVAL) videos=3 out=$(DEMO_RUN)/eval
	$(VENV)/bin/vla eval $(DEMO_EVAL) videos=0 instruction_swap=true out=$(DEMO_RUN)/eval-swap
	@$(PY) -m vla.eval.demo_report $(DEMO_RUN) --started $$(cat $(DEMO_RUN)/started)

test: setup
	$(PY) -m pytest -q -m "not slow and not lerobot"

test-slow: setup
	$(PY) -m pytest -q -m "slow and not lerobot"

test-all: setup
	$(PY) -m pytest -q -m "not lerobot"

# Compatibility proven against LeRobot itself: its LeRobotDataset reads our exports, its writer's datasets
# convert in (tests/test_lerobot_compat.py). LeRobot needs Python >= 3.12 and numpy 2, so it gets its own
# venv: about 5 minutes and 6 GB the first time (torch 2.11 from PyPI is a CUDA build; it runs on CPU).
PYTHON312 ?= $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c "" 2>/dev/null && echo python3.12 || ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
# also LeRobot's real SO101Follower, driven by vla-client (installed there too) against `vla serve`
LEROBOT_VENV ?= .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed-lerobot-0.6.1

$(LEROBOT_STAMP):
	@test -n "$(PYTHON312)" || { echo "test-lerobot needs Python 3.12 (set PYTHON312=/path/to/python3.12)"; exit 1; }
	test -x $(LEROBOT_VENV)/bin/python || $(PYTHON312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install -q "lerobot[dataset,feetech]==0.6.1" torch==2.11.0 torchvision==0.26.0
	touch $@

# the robot-side package, into LeRobot's venv (numpy 2, Python 3.12): reinstalled whenever it changes
$(LEROBOT_VENV)/.installed-vla-client: $(LEROBOT_STAMP) packages/vla-client/pyproject.toml
	$(LEROBOT_VENV)/bin/python -m pip install -q -e packages/vla-client
	touch $@

test-lerobot: setup $(LEROBOT_STAMP) $(LEROBOT_VENV)/.installed-vla-client
	VLA_LEROBOT_PYTHON=$(abspath $(LEROBOT_VENV))/bin/python $(PY) -m pytest -q -m lerobot

# LeRobot's ACT on our demos, our training budget, our evaluation (benchmarks/lerobot_act_compare.py;
# docs/results.md). Its trainer needs lerobot[training]. Tens of minutes each; not in CI. More settings:
# ACT_ARGS='save_every=150' (configs/bench/lerobot_act_compare.yaml).
$(LEROBOT_VENV)/.installed-lerobot-training: $(LEROBOT_STAMP)
	$(LEROBOT_VENV)/bin/python -m pip install -q "lerobot[training,dataset]==0.6.1" torch==2.11.0 torchvision==0.26.0
	touch $@

lerobot-act-%: setup $(LEROBOT_VENV)/.installed-vla-client $(LEROBOT_VENV)/.installed-lerobot-training
	$(PY) benchmarks/lerobot_act_compare.py compare_with=$* lerobot_python=$(abspath $(LEROBOT_VENV))/bin/python \
	    $(if $(filter builtin,$*),task=builtin/push) $(ACT_ARGS)

# vla-client alone (numpy, websockets, msgpack from PyPI; no torch) on the oldest and newest Pythons it supports:
# a fresh venv each, then tools/client_smoke.py. Not in CI (it needs those interpreters).
CLIENT_PYTHONS ?= $(shell ls -d $$HOME/.pyenv/versions/3.10*/bin/python3.10 $$HOME/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null)

test-client-pythons:
	@test -n "$(CLIENT_PYTHONS)" || { echo "set CLIENT_PYTHONS='/path/python3.10 /path/python3.13'"; exit 1; }
	for py in $(CLIENT_PYTHONS); do \
	  dir=$$(mktemp -d) && $$py -m venv $$dir && $$dir/bin/python -m pip install -q ./packages/vla-client && \
	  (cd $$dir && $$dir/bin/python $(abspath tools/client_smoke.py)) || exit 1; rm -rf $$dir; \
	done

# Results (docs/results.md): `make results-builtin`, results-heads_builtin, results-heads_reach, results-heads_lift,
# results-lift, results-pickplacecan, results-liftcolor, results-mt10 (configs/experiment/).
EXPERIMENTS := builtin heads_builtin heads_reach heads_lift lift pickplacecan liftcolor mt10

results-smoke: setup
	for e in $(EXPERIMENTS); do $(PY) benchmarks/results.py experiment=$$e smoke=true > /dev/null || exit 1; done

results-%: setup
	$(PY) benchmarks/results.py experiment=$*

bench: setup
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/env_speed.py
	$(PY) benchmarks/expert_success.py
	$(PY) benchmarks/policy_latency.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/serve_latency.py

# ruff check (line length 110 included) and ruff format --check, as CI runs them
lint: setup
	$(VENV)/bin/ruff check vla envs tests benchmarks tools packages setup.py
	$(VENV)/bin/ruff format --check vla envs tests benchmarks tools packages setup.py

clean:
	rm -rf $(VENV) .pytest_cache data/demo runs/demo runs/demo-reach
