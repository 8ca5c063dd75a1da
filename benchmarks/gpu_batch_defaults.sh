#!/usr/bin/env bash
# One device call (about 4 minutes, one H200): offline throughput of the Llama-3.1-8B shape on
# 1,000 x 512/256 at max_num_seqs 256 / 8192 batched tokens (pagedlm's GPU defaults) against
# vLLM's defaults for GPUs of 70 GiB and more (1024 / 16384), to decide whether to adopt them.
#   bash benchmarks/gpu_batch_defaults.sh      (repo root)
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for cfg in "256 8192" "512 16384" "1024 16384"; do
  set -- $cfg
  timeout 170 python3 benchmarks/compare_throughput.py --shape llama-3.1-8b --num-prompts 1000 --input-len 512 \
    --output-len 256 --skip-hf --max-num-seqs "$1" --max-num-batched-tokens "$2" \
    --output-json "$OUT/tput_$1.json" > "$OUT/tput_$1.log" 2>&1
  echo "max_num_seqs $1, batched $2:"; grep -E "^pagedlm" "$OUT/tput_$1.log" | tail -n 1
done
