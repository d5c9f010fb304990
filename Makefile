# rmn-lora — every target sets up .venv itself (idempotent; quick when already done).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu
BENCH_MODEL ?= tiny
STAMP := $(VENV)/.installed-$(EXTRA)
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo serve crew test test-fast lint bench bench-long clean help

help: ## list targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml scripts/setup-venv.sh
	EXTRA=$(EXTRA) PY=$(PY) bash scripts/setup-venv.sh
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the project, vLLM (CPU) and dev tools

demo: setup ## prepare demo model + adapters, serve them, print each adapter's answer
	$(BIN)/rmn demo $(DEMO_ARGS)

serve: setup ## serve on 127.0.0.1:8000 with the embedded defaults
	$(BIN)/rmn model prepare && $(BIN)/rmn serve

crew: setup ## the six-role agent crew (examples/agents/crew.py) against the federated demo app it starts (after make demo)
	$(BIN)/python -m examples.agents.crew --local $(CREW_ARGS)

test: setup ## every tier: unit, serve (Ray Serve + FakeEngine), integration (real vLLM on CPU, the UI in chromium)
	bash scripts/ensure-chromium.sh
	bash scripts/run-tests.sh $(PYTEST_ARGS)

test-fast: setup ## unit + serve tiers (no vLLM engine; about a minute and a half)
	bash scripts/run-tests.sh -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff + mypy
	$(BIN)/ruff check serving adapters federation cleanroom tests bench examples
	$(BIN)/ruff format --check serving adapters federation cleanroom tests bench examples
	$(BIN)/mypy

bench: setup ## serving, adapter, router, clean-room and planning benchmarks -> bench/results/*.json (tiny model; BENCH_MODEL=demo for SmolLM2)
	$(BIN)/rmn model prepare
	$(BIN)/python -m bench.serving --model $(BENCH_MODEL)
	$(BIN)/python -m bench.adapters --model demo
	$(BIN)/python -m bench.router --model $(BENCH_MODEL)
	$(BIN)/python -m bench.cleanroom
	$(BIN)/python -m bench.planning

bench-long: setup ## the long ones: 10 min of 1,100 compositions (bench/scale.py), engine replicas sharing cores (bench/replicas.py)
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.replicas

clean: ## remove build leftovers (keeps .venv and artifacts/)
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
