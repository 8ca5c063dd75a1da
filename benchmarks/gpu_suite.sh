#!/usr/bin/env bash
# Everything the GPU issue checks, in one device call (H100/H200 machine, repo root):
#   bash benchmarks/gpu_suite.sh  [quick]
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pytest -q tests/kernels tests/gpu tests/unit/test_sampler.py 2>&1 | tail -n 15
python3 benchmarks/gpu_latency.py 2>&1 | tee "$OUT/latency.log" | tail -n 3
[ "${1:-}" = quick ] && exit 0
python3 benchmarks/compare_throughput.py --shape llama-3.1-8b --num-prompts 1000 --input-len 512 --output-len 256 \
  --random-range-ratio 0 0.5 --hf-batch-size 64 128 256 --hf-num-prompts 256 --output-json "$OUT/throughput.json" \
  2>&1 | tee "$OUT/throughput.log" | grep -E "^(===|transformers|pagedlm)" 
python3 benchmarks/gpu_gemv.py --output-json "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log" | tail -n 25
python3 benchmarks/gpu_step_profile.py 2>&1 | tee "$OUT/step_profile.log" | grep -A 22 "decode steps"
python3 benchmarks/gpu_moe.py --shape qwen3-30b-a3b --output-json "$OUT/moe.json" 2>&1 | tee "$OUT/moe.log" | grep -E "^(batch 1|throughput):"
