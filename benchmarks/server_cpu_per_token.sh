#!/usr/bin/env bash
# The API server's CPU time per streamed output token, on the CPU, with a tiny model: the
# frontend's own cost (HTTP, SSE, detokenizing, output processing), which bounds how many
# streams one API server process can carry.
#   bash benchmarks/server_cpu_per_token.sh [PORT] [extra `pagedlm serve` flags...]
# Starts `pagedlm serve` on the demo checkpoint (CPU), warms up with 200 requests, then runs
# `pagedlm bench serve` with 1,500 streams of 128 tokens at rate inf and prints the API server
# process's CPU µs per output token (from /proc) and the output tokens/s.
set -euo pipefail
port=${1:-18140}; shift || true
work=$(mktemp -d)
python -c "from pathlib import Path; from pagedlm.demo import build_tiny_checkpoint; build_tiny_checkpoint(Path('$work/ckpt'))" >/dev/null 2>&1
python -m pagedlm serve "$work/ckpt" --served-model-name tiny --max-model-len 256 --num-gpu-blocks-override 4096 \
  --device cpu --port "$port" --max-num-seqs 512 --disable-uvicorn-access-log "$@" > "$work/server.log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 120); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 1; done
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
bench() { python -m pagedlm bench serve --base-url "http://127.0.0.1:$port" --random-input-len 32 --ignore-eos \
  --request-rate inf "$@"; }
bench --num-prompts 200 --random-output-len 16 --seed 1 >/dev/null
before=$(cpu)
bench --num-prompts 1500 --random-output-len 128 --seed 9 > "$work/bench.txt"
after=$(cpu)
tokens=$(awk '/Total generated tokens/ {print $4}' "$work/bench.txt")
rate=$(awk '/Output token throughput/ {print $5}' "$work/bench.txt")
ticks=$(getconf CLK_TCK)
python -c "print(f'API server CPU per output token: {($after - $before) / $ticks / $tokens * 1e6:.1f} us; output tok/s {$rate:.0f}; tokens $tokens')"
