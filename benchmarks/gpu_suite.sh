#!/usr/bin/env bash
# The GPU checks and the BENCHMARKS.md rows of the open GPU issues, in stages that each fit one
# device call (under 10 minutes on an H200; every step has its own time limit and leaves its log
# and JSON in $OUT, so a stage cut short still reports what it measured). Repo root:
#   bash benchmarks/gpu_suite.sh STAGE
# STAGE:
#   tests-gpu      pytest tests/gpu                                                  (~5 min)
#   tests-kernels  pytest tests/kernels                                              (~5 min)
#   batch1         floors; batch-1 TPOT and the step profile, bf16 / fp8 / int8 / AWQ (~6 min)
#   uniform        floors; 1,000 x 512/256 against transformers' static batches 64/128/256, and
#                  a decode and a prefill step's kernels vs gaps at 1,024 requests    (~6 min)
#   mixed          floors; the same workload with lengths drawn from [0.5, 1.5] x the mean
#                  (--random-range-ratio 0.5), where static batching pays for padding  (~8 min)
#   serve          `pagedlm serve` + `pagedlm bench serve` at rate inf, 1,000 x 512/256, at the
#                  server's defaults and at --max-num-seqs 256, beside the offline engine (~7 min)
#   serve-pool     the same server run with --api-server-count 2, 4 and 8              (~7 min)
#   attention      the paged attention against torch's FlashAttention-2 and cuDNN on causal
#                  prefills, and the attention kernel tests                           (~3 min)
#   int4-tiles     the W4A16 tensor-core tiles at M = 16-256 per 8B layer, with the large
#                  swapped (wide_t) tiles; the wide-kind and tuning-cache kernel tests (~6 min)
#   int4-engine    AWQ against bf16 in the engine: 1,000 x 512/256 (issue 10's throughput row)
#                  and 128 x 512/256 at max_num_seqs 32 (batched decode at M <= 32)  (~8 min)
#   int4-mma       the int4 mma kind per 8B layer at M = 1 and 8, and the AWQ decode step at
#                  batch 8 with and without it (kernels vs gaps)                     (~7 min)
#   cuda-kernels   the CUDA C++ decode GEMMs (int4, 8-bit): their tests, then per layer against the
#                  Triton kinds, and AWQ / int8 / fp8 at batch 1 with and without them     (~8 min)
#   cutlass        the CUTLASS int4 GEMM (needs the nvidia-cutlass wheel; builds its 8 tiles
#                  first, ~2 min): its tests and the AWQ / GPTQ engine tests (with session 26's
#                  quantized MoE and block-wise fp8 checkpoints against the CPU engine), per 8B layer at
#                  M = 16-16,384, then AWQ against bf16 at 1,000 x 512/256 (issue 10's row) (~9 min)
#   quant-archs    session 27's quantized paths not yet run on a GPU: the new architectures and
#                  formats (Phi-3, Gemma 2, Falcon, compressed-tensors W4A16, DeepSeek-V3 block fp8,
#                  fbgemm_fp8, in-flight bitsandbytes, online int8) and the quantized-MoE test in
#                  float32, each against the CPU engine                                (~5 min)
#   dequant-kernels  session 28's kernels for the layers that dequantized per call: block-wise fp8
#                  (Qwen / DeepSeek FP8: the decode GEMV with block scales, a tiled block-scaled GEMM)
#                  and bitsandbytes 4-bit (a tiled NF4 / FP4 GEMM), to 1,024 rows: kernel and dispatch
#                  tests, the GPU engine against the CPU engine, batch-1 TPOT of bf16 / fp8 / fp8-block
#                  / bnb-online                                                       (~7 min)
#   dequant-throughput  the same formats at 1,000 x 512/256                          (~8 min)
#   new-paths      the paths of session 24 not yet run on a GPU: attention sinks and gpt-oss,
#                  the kernels they touched (fused MoE incl. expert parallelism's skipped
#                  routes), sleep mode, the transformers backend, logprobs modes, prompt
#                  embeddings, the new architectures                                  (~8 min)
# On a two-GPU host two stages can run side by side (CUDA_VISIBLE_DEVICES=0 / 1, one each).
# Wheels the machine lacks travel in .whl/ (installed into /tmp/site first when present). Beyond
# the server's and client's packages, the GPU tests want xgrammar with its apache-tvm-ffi, and
# jsonschema (+ jsonschema-specifications, referencing, rpds-py, attrs) for the structured-output
# tests, which otherwise skip: the first line of every stage names what is missing.
set -uo pipefail
if [ -d .whl ]; then
  # once per machine (two stages may start side by side on a two-GPU host: the first installs)
  if mkdir /tmp/site.lock 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
    touch /tmp/site/.installed
  fi
  while [ ! -e /tmp/site/.installed ]; do sleep 1; done
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
else
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WORKLOAD=(--shape llama-3.1-8b --num-prompts 1000 --input-len 512 --output-len 256 --hf-batch-size 64 128 256
          --hf-num-prompts 256)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import importlib
import importlib.util
missing = []
for name in ("xgrammar", "jsonschema", "fastapi", "uvicorn", "openai", "zmq", "msgspec", "gguf"):
    try:
        importlib.import_module(name)
    except Exception as e:  # a package present but broken (xgrammar without tvm_ffi) counts too
        missing.append(f"{name} ({type(e).__name__}: {e})")
if importlib.util.find_spec("cutlass_library") is None:  # only its headers are used (nvidia-cutlass)
    missing.append("cutlass_library (nvidia-cutlass: the CUTLASS int4 GEMM is not built)")
print("optional packages missing: " + ("; ".join(missing) if missing else "none"))
PY
floors() { timeout 60 python3 benchmarks/floors.py 2>&1 | tail -n 1; }

case "${1:-}" in
  tests-gpu)
    timeout 560 python3 -m pytest -q -p no:cacheprovider tests/gpu > "$OUT/tests_gpu.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_gpu.log" | tail -n 15 ;;
  tests-kernels)
    timeout 560 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/unit/test_sampler.py \
      > "$OUT/tests_kernels.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_kernels.log" | tail -n 15 ;;
  batch1)
    floors
    timeout 480 python3 benchmarks/gpu_quant.py --formats bf16,fp8,int8,awq --iters 2 --skip-throughput \
      --profile-batch1 --output-json "$OUT/batch1.json" > "$OUT/batch1.log" 2>&1
    grep -E "^(PASS|FAIL|PROFILE|SKIP)|^(bf16|fp8|int8|awq) " "$OUT/batch1.log" | tail -n 16 ;;
  uniform)
    floors
    timeout 300 python3 benchmarks/compare_throughput.py "${WORKLOAD[@]}" --random-range-ratio 0 \
      --output-json "$OUT/uniform.json" > "$OUT/uniform.log" 2>&1
    grep -E "^(transformers|pagedlm)" "$OUT/uniform.log" | tail -n 8
    # the step at the engine's defaults for this card (1,024 sequences, 16,384 batched tokens),
    # PDL off so that each kernel's interval is its own
    for phase in decode prefill; do
      PAGEDLM_PDL=0 timeout 150 python3 benchmarks/gpu_step_profile.py --batch-size 1024 \
        --max-num-batched-tokens 16384 --steps 8 --phase $phase > "$OUT/step_$phase.log" 2>&1
      grep -A 10 " $phase steps" "$OUT/step_$phase.log" | head -n 11
    done ;;
  mixed)
    floors
    # transformers' batch sizes largest first: its padded generate is slow here, and the best one
    # should land before the time limit
    timeout 560 python3 benchmarks/compare_throughput.py "${WORKLOAD[@]}" --random-range-ratio 0.5 \
      --hf-batch-size 256 128 64 --output-json "$OUT/mixed.json" > "$OUT/mixed.log" 2>&1
    grep -E "^(transformers|pagedlm)" "$OUT/mixed.log" | tail -n 8 ;;
  serve)
    timeout 150 python3 benchmarks/compare_throughput.py "${WORKLOAD[@]}" --random-range-ratio 0 --skip-hf \
      > "$OUT/offline.log" 2>&1
    grep -E "^pagedlm" "$OUT/offline.log" | tail -n 1
    for seqs in default 256; do
      extra=(); [ "$seqs" = default ] || extra=(--server-args "--max-num-seqs $seqs")
      mkdir -p "/tmp/serve_$seqs"
      timeout 200 python3 benchmarks/serve_vs_offline.py --num-prompts 1000 --concurrency-1-prompts 4 --rate 0 \
        --out-dir "/tmp/serve_$seqs" "${extra[@]}" > "$OUT/serve_$seqs.log" 2>&1
      echo "max_num_seqs $seqs:"; tail -n 4 "$OUT/serve_$seqs.log"
    done ;;
  serve-pool)
    for count in ${API_SERVER_COUNTS:-2 4 8}; do
      mkdir -p "/tmp/serve_asc$count"
      timeout 200 python3 benchmarks/serve_vs_offline.py --num-prompts 1000 --concurrency-1-prompts 4 --rate 0 \
        --port $((8400 + count)) --out-dir "/tmp/serve_asc$count" --server-args "--api-server-count $count" \
        > "$OUT/serve_asc$count.log" 2>&1
      echo "api_server_count $count:"; tail -n 4 "$OUT/serve_asc$count.log"
    done ;;
  attention)
    timeout 240 python3 benchmarks/gpu_attention_peers.py > "$OUT/attention_peers.log" 2>&1
    grep -E "matmul|^[0-9]+ x [0-9]+|^ragged" "$OUT/attention_peers.log" | tail -n 15
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_kernels.py \
      tests/kernels/test_fp8_kv_kernels.py -k attention > "$OUT/tests_attention.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_attention.log" | tail -n 8 ;;
  int4-tiles)
    timeout 300 python3 benchmarks/gpu_w4a16_tiles.py --swapped-tiles > "$OUT/int4_tiles.log" 2>&1
    grep -E "^(ERR|M=)|M= 256" "$OUT/int4_tiles.log" | tail -n 12
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_wna16_kernels.py \
      -k "wide or disk or tuned or every" > "$OUT/tests_int4.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_int4.log" | tail -n 8 ;;
  int4-engine)
    floors
    timeout 330 python3 benchmarks/gpu_quant.py --formats bf16,awq --iters 1 --output-json "$OUT/int4_1000.json" \
      > "$OUT/int4_1000.log" 2>&1
    grep -E "^(PASS|FAIL)|^(bf16|awq) " "$OUT/int4_1000.log" | tail -n 4
    timeout 200 python3 benchmarks/gpu_quant.py --formats bf16,awq --iters 1 --max-num-seqs 32 --num-prompts 128 \
      --output-json "$OUT/int4_32.json" > "$OUT/int4_32.log" 2>&1
    grep -E "^(PASS|FAIL)|^(bf16|awq) " "$OUT/int4_32.log" | tail -n 4 ;;
  int4-mma)
    # the mma kind per layer at M = 1 and 8, then the AWQ decode step at batch 8 with and
    # without it (PAGEDLM_W4A16_MMA=0): wall vs kernels vs gaps, the GEMMs' share
    timeout 200 python3 benchmarks/gpu_w4a16_mma.py > "$OUT/int4_mma_layers.log" 2>&1
    grep -E "^(M=|RESULT|FAIL)" "$OUT/int4_mma_layers.log" | cut -c1-200
    for mma in 1 0; do
      PAGEDLM_W4A16_MMA=$mma timeout 170 python3 benchmarks/gpu_step_profile.py --format awq --batch-size 8 \
        --steps 32 > "$OUT/int4_step8_mma$mma.log" 2>&1
      echo "PAGEDLM_W4A16_MMA=$mma:"; grep -E "per step|GEMM|attention|other|waiting" "$OUT/int4_step8_mma$mma.log"
    done ;;
  cuda-kernels)
    timeout 150 python3 -m pytest -q tests/kernels/test_cuda_w4a16.py tests/kernels/test_cuda_w8a8.py 2>&1 | tail -n 3
    timeout 120 python3 benchmarks/gpu_w4a16_cuda.py --m 1 8 > "$OUT/cuda_w4a16.log" 2>&1
    grep -E "^(M=|RESULT|correctness)" "$OUT/cuda_w4a16.log" | cut -c1-220
    for on in 1 0; do
      # the load-time tuner times each shape's candidates first (about 30 s a shape with the cuda kinds, 4 shapes a format)
      PAGEDLM_CUDA_KERNELS=$on timeout $((on ? 240 : 150)) python3 benchmarks/gpu_quant.py --formats awq,int8 --skip-throughput \
        > "$OUT/cuda_batch1_$on.log" 2>&1
      echo "PAGEDLM_CUDA_KERNELS=$on:"; grep '"tpot_ms"' "$OUT/cuda_batch1_$on.log" | cut -c1-160
    done ;;
  cutlass)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_cutlass_w4a16.py tests/gpu/test_gpu_wna16.py \
      tests/gpu/test_gpu_quantized_moe.py > "$OUT/tests_cutlass.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_cutlass.log" | tail -n 8
    timeout 90 python3 benchmarks/gpu_w4a16_cutlass.py --m 16,64,256,1024,16384 > "$OUT/cutlass_layers.log" 2>&1
    grep -A 7 "^per decoder layer" "$OUT/cutlass_layers.log"
    timeout 240 python3 benchmarks/gpu_quant.py --formats bf16,awq --iters 1 --output-json "$OUT/cutlass_engine.json" \
      > "$OUT/cutlass_engine.log" 2>&1
    grep -E "^(PASS|FAIL)|^(bf16|awq) " "$OUT/cutlass_engine.log" | tail -n 4 ;;
  quant-archs)
    timeout 500 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_quantized_archs.py \
      tests/gpu/test_gpu_quantized_moe.py > "$OUT/tests_quant_archs.log" 2>&1
    grep -E "passed|failed|FAILED" "$OUT/tests_quant_archs.log" | tail -n 12 ;;
  dequant-kernels)
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_block_fp8.py tests/kernels/test_nf4_kernel.py \
      tests/kernels/test_gemv_fused.py "tests/gpu/test_gpu_quantized_archs.py::test_gpu_matches_cpu[llama_block_fp8]" \
      tests/gpu/test_gpu_quantized_archs.py::test_gpu_in_flight_bitsandbytes_and_online_int8 2>&1 | tail -n 5
    floors
    timeout 240 python3 benchmarks/gpu_quant.py --formats bf16,fp8,fp8-block,bnb-online --iters 2 --skip-throughput \
      --output-json "$OUT/dequant_batch1.json" > "$OUT/dequant_batch1.log" 2>&1
    grep -E "^(PASS|FAIL)|^(bf16|fp8|fp8-block|bnb-online) " "$OUT/dequant_batch1.log" | tail -n 8 ;;
  dequant-throughput)
    floors
    timeout 540 python3 benchmarks/gpu_quant.py --formats bf16,fp8-block,bnb-online --iters 1 \
      --output-json "$OUT/dequant_tput.json" > "$OUT/dequant_tput.log" 2>&1
    grep -E "^(PASS|FAIL)|^(bf16|fp8-block|bnb-online) " "$OUT/dequant_tput.log" | tail -n 6 ;;
  new-paths)
    timeout 300 python3 -m pytest -q tests/kernels/test_attention_sinks.py tests/models/test_parity_gpt_oss.py \
      tests/kernels/test_triton_kernels.py tests/kernels/test_fused_moe.py tests/kernels/test_fp8_kv_kernels.py \
      tests/kernels/test_verify_graph_kernels.py 2>&1 | tail -n 5
    # CPU tests whose oracle holds on CUDA too (no float32 values compared to transformers: the
    # Triton kernels' float32 dots run in tf32), run from copies with device="cuda"
    sed 's/device="cpu"/device="cuda", kv_cache_memory_bytes=1 << 28/' tests/unit/test_sleep_mode.py \
      > tests/unit/test_zcuda_sleep_mode.py
    sed 's/device="cpu"/device="cuda", kv_cache_memory_bytes=1 << 28/' tests/unit/test_prompt_embeds.py \
      > tests/unit/test_zcuda_prompt_embeds.py
    timeout 200 python3 -m pytest -q tests/unit/test_zcuda_sleep_mode.py tests/unit/test_zcuda_prompt_embeds.py \
      tests/gpu/test_gpu_model_impl_and_logprobs.py tests/gpu/test_gpu_archs_new.py 2>&1 | tail -n 5
    rm -f tests/unit/test_zcuda_sleep_mode.py tests/unit/test_zcuda_prompt_embeds.py ;;
  *)
    echo "usage: bash benchmarks/gpu_suite.sh tests-gpu|tests-kernels|batch1|uniform|mixed|serve|serve-pool|attention|int4-tiles|int4-engine|int4-mma|cuda-kernels|cutlass|quant-archs|dequant-kernels|dequant-throughput|new-paths" >&2
    exit 2 ;;
esac
