# rmn-lora — every target sets up .venv itself (idempotent; quick when already done).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENGINE ?= cpu
BENCH_MODEL ?= tiny
# each target installs only the extras it needs (pyproject.toml), pinned by constraints/$(ENGINE).txt
SERVE_VENV := $(VENV)/.installed-$(ENGINE)
DEMO_VENV := $(VENV)/.installed-$(ENGINE),demo
CREW_VENV := $(VENV)/.installed-$(ENGINE),demo,agents
TEST_VENV := $(VENV)/.installed-$(ENGINE),demo,agents,test
LINT_VENV := $(VENV)/.installed-$(ENGINE),demo,agents,test,lint
DEV_VENV := $(VENV)/.installed-$(ENGINE),dev
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo serve crew test test-fast test-serve gpu-smoke lint lock bench bench-long clean help

help: ## list targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'

$(VENV)/.installed-%: pyproject.toml scripts/setup-venv.sh constraints/$(ENGINE).txt
	EXTRAS=$* PY=$(PY) bash scripts/setup-venv.sh
	touch '$@'

setup: $(DEV_VENV) ## create .venv with everything a developer uses (ENGINE=gpu for CUDA vLLM)

lock: $(SERVE_VENV) ## re-resolve constraints/*.txt from PyPI (+ PyTorch's CPU index; RMN_TORCH_WHEEL=FILE|auto stands in for it)
	$(BIN)/python scripts/lock.py write $(if $(RMN_TORCH_WHEEL),--torch-wheel $(RMN_TORCH_WHEEL))

demo: $(DEMO_VENV) ## prepare demo model + adapters, serve them, print each adapter's answer
	$(BIN)/rmn demo $(DEMO_ARGS)

serve: $(SERVE_VENV) ## serve on 127.0.0.1:8000 with the embedded defaults
	$(BIN)/rmn model prepare && $(BIN)/rmn serve

crew: $(CREW_VENV) ## the six-role agent crew (examples/agents/crew.py) against the federated demo app it starts (after make demo)
	$(BIN)/python -m examples.agents.crew --local $(CREW_ARGS)

test: $(TEST_VENV) ## every tier: unit, serve (Ray Serve + FakeEngine), integration (real vLLM on CPU, the UI in chromium)
	bash scripts/ensure-chromium.sh
	bash scripts/run-tests.sh $(PYTEST_ARGS)

test-fast: $(TEST_VENV) ## unit + gateway tiers: no Ray cluster, no vLLM engine (docs/development.md has the time)
	RMN_PROPERTY_QUERIES=100 bash scripts/run-tests.sh -m "not slow and not network and not serve and not isa and not numerics" $(PYTEST_ARGS)

test-serve: $(TEST_VENV) ## the Serve tier: real Ray Serve with the FakeEngine
	bash scripts/run-tests.sh -m serve $(PYTEST_ARGS)

# the GPU engine's venv where nvidia-smi lists a GPU (ENGINE=... on the command line decides otherwise)
SMOKE_ENGINE := $(if $(filter command line,$(origin ENGINE)),$(ENGINE),$(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo gpu || echo cpu))
gpu-smoke: ## the GPU smoke check (ten minutes on one GPU; ENGINE=gpu where nvidia-smi lists one; skips what needs CUDA without one) -> bench/results/gpu-smoke.json
	$(MAKE) --no-print-directory ENGINE=$(SMOKE_ENGINE) $(VENV)/.installed-$(SMOKE_ENGINE),demo,agents,test
	$(BIN)/python scripts/gpu_smoke.py

lint: $(LINT_VENV) ## ruff + mypy
	$(BIN)/ruff check serving adapters federation planning cleanroom tests bench examples scripts
	$(BIN)/ruff format --check serving adapters federation planning cleanroom tests bench examples scripts
	$(BIN)/mypy

bench: $(DEV_VENV) ## serving, adapter, router, clean-room, planning and cluster-admission benchmarks -> bench/results/*.json (tiny model; BENCH_MODEL=demo for SmolLM2)
	$(BIN)/rmn model prepare
	$(BIN)/python -m bench.serving --model $(BENCH_MODEL)
	$(BIN)/python -m bench.adapters --model demo
	$(BIN)/python -m bench.router --model $(BENCH_MODEL)
	$(BIN)/python -m bench.cleanroom
	$(BIN)/python -m bench.planning
	$(BIN)/python -m bench.cluster

bench-long: $(DEV_VENV) ## the long ones: 10 min of 1,100 compositions (bench/scale.py), engine replicas sharing cores (bench/replicas.py)
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.replicas

clean: ## remove build leftovers (keeps .venv and artifacts/)
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
