# ptuning — make targets. `make help` lists them.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# the one torch pin (torch==X), shared with the Docker image and CI
TORCH_REQ   := requirements/torch.txt
JOB         ?=
ARGS        ?=
RESULTS     ?= results

.DEFAULT_GOAL := help
.PHONY: help install test test-slurm test-slow smoke demo run tables plots check list params bench gpu-check clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The CUDA build of the pinned torch in $(PYTHON) (a GPU machine, a PyTorch image) is kept: the venv then sees
# $(PYTHON)'s packages (--system-site-packages) and pip leaves that torch alone. Otherwise the venv is isolated.
$(BIN)/python:
	@if $(PYTHON) tools/check-torch.py $(TORCH_REQ) --require-cuda >/dev/null 2>&1; then \
		echo "make install: keeping the CUDA build of torch in $(PYTHON) (the venv sees its packages)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

$(BIN)/ptuning: $(BIN)/python pyproject.toml $(CONSTRAINTS) $(TORCH_REQ) requirements/opendelta.txt
	@# torch: the version $(TORCH_REQ) pins; a build of it already visible to .venv (CPU or CUDA) is kept, anything else replaced
	$(BIN)/python tools/check-torch.py $(TORCH_REQ) || $(BIN)/pip install -r $(TORCH_REQ)
	$(BIN)/python tools/check-torch.py $(TORCH_REQ)
	$(BIN)/pip install -c $(CONSTRAINTS) -c $(TORCH_REQ) -e ".[libs,slurm,test,tensorboard]"
	@# OpenDelta's metadata requires the dead `sklearn` package: install it without deps, plus what it imports
	$(BIN)/pip install -c $(CONSTRAINTS) -r requirements/opendelta.txt
	$(BIN)/pip install -c $(CONSTRAINTS) --no-deps opendelta
	@touch $@

install: $(BIN)/ptuning  ## create .venv with everything (from nothing)

test: install  ## run the test suite (CPU, no network)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

test-slurm: install  ## the SLURM tests (pytest -m slurm) on a private one-node SLURM started and stopped here (root)
	@if bash scripts/slurm-local.sh can-start; then \
		HF_HUB_OFFLINE=1 bash scripts/slurm-local.sh run $(BIN)/python -m pytest -q -m slurm tests/cluster $(ARGS); \
	else \
		HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slurm tests/cluster $(ARGS); \
	fi

test-slow: install  ## the slow tests (pytest -m slow): ptuning tune on the demo task, a few minutes of CPU
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow $(ARGS)

smoke: install  ## all jobs end to end on a tiny offline model (CPU, under a minute)
	$(BIN)/ptuning smoke $(ARGS)

demo: install  ## zero-shot and every row learning a synthetic task, offline on CPU (a few minutes; docs/demo.md)
	$(BIN)/ptuning demo $(ARGS)

run: install  ## run all jobs (needs a GPU and the hub), or one: make run JOB=lora_8
ifeq ($(JOB),)
	$(BIN)/ptuning run-all --output-dir $(RESULTS) $(ARGS)
else
	$(BIN)/ptuning run $(JOB) --output-dir $(RESULTS) $(ARGS)
endif

tables: install  ## print the accuracy table from results/ (the full tables go to results/TABLES.md)
	$(BIN)/ptuning tables --results $(RESULTS) $(ARGS)

plots: install  ## write the three plots of results/ into results/plots/
	$(BIN)/ptuning plots --results $(RESULTS)

check: install  ## compare results/ with the report's accuracies (exit 1 if a row is off or incomplete)
	$(BIN)/ptuning check --results $(RESULTS) $(ARGS)

list: install  ## list the jobs: row, name, method, knob, learning rate
	$(BIN)/ptuning list

params: install  ## parameter counts of every job vs the analytic formulas (no download)
	$(BIN)/ptuning params $(ARGS)

bench: install  ## time the exercise's loop vs the fast path on this device (random weights, no download)
	$(BIN)/ptuning bench --output $(RESULTS)/bench.md --json $(RESULTS)/bench.json $(ARGS)

gpu-check: install  ## on a GPU: bench + a scaled run-all vs its projection -> results/BENCHMARKS.md (ARGS e.g. --budget 900)
	PYTHON=$(BIN)/python bash scripts/gpu-check.sh --device cuda $(ARGS)

clean:  ## remove caches (keeps .venv and results)
	rm -rf .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

-include docker/docker.mk
-include lint.mk
