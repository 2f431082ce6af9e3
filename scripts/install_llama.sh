#!/usr/bin/env bash
# Installs the pinned llama-cpp-python into PYTHON's venv, compiled for BACKEND (cpu or cuda).
#
#   scripts/install_llama.sh .venv/bin/python cpu
#   scripts/install_llama.sh .venv/bin/python cuda 90      # CUDA_ARCHITECTURES: 87 Orin, 90 H200
#
# llama-cpp-python has no wheel on PyPI: the first install compiles it (~6 min on 2 cores). Each
# backend's wheel is cached in its own pip cache under ~/.cache/moe2-edge, so later installs (any
# Python: the wheel is py3-none) take seconds and one build never replaces the other.
#
# CPU builds target the build machine (-march=native) but without AMX: on Sapphire Rapids and
# newer x86 CPUs llama.cpp then runs its AMX kernels, and those crashed with SIGSEGV in the
# first decode on this project's machines (2026-12-03: 0.3.36, SmolLM2 Q4_1), where the
# sandbox does not grant the process AMX state. AVX-512 and VNNI stay on.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${1:?usage: scripts/install_llama.sh PYTHON [cpu|cuda] [CUDA_ARCHITECTURES]}
backend=${2:-cpu}
arch=${3:-}
pin=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)

case "$backend" in
  cpu)
    args=""
    if [ "$(uname -m)" = x86_64 ]; then
      no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
      args="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
    fi
    cache="$HOME/.cache/moe2-edge/pip-llama-cpu-noamx"
    ;;
  cuda)
    args="-DGGML_CUDA=on${arch:+ -DCMAKE_CUDA_ARCHITECTURES=$arch}"
    cache="$HOME/.cache/moe2-edge/pip-llama-cuda"
    ;;
  *)
    echo "install_llama: BACKEND must be cpu or cuda, got '$backend'" >&2
    exit 2
    ;;
esac

CMAKE_ARGS="$args" PIP_CACHE_DIR="$cache" "$py" -m pip install -q --force-reinstall --no-deps "$pin"
# Its own dependencies (numpy, jinja2, ...), without touching the build just installed.
"$py" -m pip install -q "$pin"
