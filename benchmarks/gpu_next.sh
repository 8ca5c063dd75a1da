#!/usr/bin/env bash
# One device call that validates the branch next-gpu (RoPE + KV write in one launch, RMSNorm
# emitting 8-bit codes for W8A8 layers) and measures batch 1 (bf16, fp8, int8, AWQ):
#   bash benchmarks/gpu_next.sh        (repo root, H100/H200; about 9 minutes)
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 220 python3 -m pytest -q tests/kernels/test_triton_kernels.py tests/kernels/test_rope_kv.py \
  tests/kernels/test_norm_quant.py tests/kernels/test_fp8_kv_kernels.py tests/gpu/test_gpu_engine.py \
  tests/gpu/test_gpu_quant.py tests/gpu/test_gpu_fp8_kv.py 2>&1 | tail -n 8
timeout 320 python3 benchmarks/gpu_quant.py --formats bf16,fp8,int8,awq --iters 2 --skip-throughput --profile-batch1 \
  --output-json "$OUT/quant.json" > "$OUT/quant.log" 2>&1
grep -E "PASS|FAIL|PROFILE|^bf16|^fp8|^int8|^awq|Error" "$OUT/quant.log" | tail -n 14
