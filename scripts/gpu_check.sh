#!/usr/bin/env bash
# The GPU validation of docs/hardware.md, for a machine with an NVIDIA GPU and the CUDA toolkit
# (about 10 minutes on 16 cores): builds the CUDA wheel of llama-cpp-python, then for every
# bundled model prints tokens/s with every layer on the GPU and on the CPU (node through gRPC
# and direct llama-cpp-python, benchmarks/node_throughput.py), and the NVML energy check
# (scripts/nvml_probe.py: counter vs sampled-power integral over 1 s / 0.3 s / 0.05 s windows,
# idle and under load, and which figures are labelled approximate). Everything goes to
# stdout and to $OUT (default ./gpu-check) as JSON. It has not been run yet: no NVIDIA GPU was
# available to the sessions that wrote it.
#
#     scripts/gpu_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,compute_cap,driver_version,power.limit --format=csv | tee "$OUT/gpu.csv"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
time make setup LLAMA_BACKEND=cuda CUDA_ARCHITECTURES="$ARCH"
PY=.venv/bin/python
$PY -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else "no GPU offload")'
THREADS=$(nproc)
for model in smollm2-135m gemma3-270m qwen2.5-0.5b; do
  for layers in -1 0; do
    echo "== $model, --n-gpu-layers $layers =="
    $PY benchmarks/node_throughput.py --model "$model" --threads "$THREADS" --n-gpu-layers "$layers" \
      --rounds 5 --tokens 128 --score-calls 30 --out "$OUT/throughput-$model-$layers.json"
  done
done
echo "== NVML energy =="
$PY scripts/nvml_probe.py --repeats 5 --load auto | tee "$OUT/nvml.json"
echo "== a node with every layer on the GPU reports =="
$PY -m edge_node.cli serve --model qwen2.5-0.5b --n-gpu-layers -1 --port 0 > "$OUT/node.out" 2> "$OUT/node.err" &
NODE=$!
trap 'kill $NODE 2>/dev/null || true' EXIT
for _ in $(seq 60); do grep -q listening "$OUT/node.out" && break; sleep 1; done
TARGET=$(sed -n 's/^listening on //p' "$OUT/node.out")
$PY -m edge_node.cli info --target "$TARGET" --json | tee "$OUT/info.json"
$PY -m edge_node.cli score --target "$TARGET" --json "Is the sky blue?" --choices " yes" " no" | tee "$OUT/score.json"
