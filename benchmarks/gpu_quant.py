"""Weight quantization on one GPU, one table: batch-1 time per output token against each
format's weight-bytes floor, and throughput, for the Llama-3.1-8B shape with dummy weights in
each format (``--load-format dummy`` builds valid quantized parameters per QuantMethod).

  python benchmarks/gpu_quant.py                                   # bf16, fp8, fp8-online, int8
  python benchmarks/gpu_quant.py --formats bf16,fp8,int8,awq,gptq   # awq/gptq when registered
  python benchmarks/gpu_quant.py --skip-throughput                 # batch 1 only (faster)
  python benchmarks/gpu_quant.py --shape cpu-small --formats bf16,fp8,int8 --num-prompts 8 \
      --input-len 32 --output-len 8 --kv-blocks 256                # CPU smoke run

First, per format, a correctness line: one quantized layer's output on the device against
the same method through the PyTorch reference ops (PASS / FAIL), and which kernels were picked.
Floor: (weight bytes - embedding table, of which one row is read) / measured copy bandwidth.
Targets (issue #10): TPOT fp8, int8 <= 0.6 x bf16, int4 <= 0.4 x bf16; throughput fp8 >= 1.3 x
bf16, int4 >= 1.0 x bf16. Every format runs with the same fixed KV block count.
"""

from __future__ import annotations

import argparse
import gc
import logging
import json
import tempfile
from pathlib import Path

import torch

from pagedlm import LLM
from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.latency import measure
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir

INT8_W8A8 = {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
             "config_groups": {"group_0": {
                 "targets": ["Linear"], "output_activations": None,
                 "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
                 "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True,
                                       "strategy": "token"}}}}
# format -> (config.json quantization_config or None, --quantization or None)
FORMATS: dict[str, tuple[dict | None, str | None]] = {
    "bf16": (None, None),
    "fp8": ({"quant_method": "fp8", "activation_scheme": "dynamic"}, None),
    "fp8-online": (None, "fp8"),
    # Qwen's / DeepSeek's block-wise fp8 (W8A16: the block-scaled GEMV at decode)
    "fp8-block": ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, None),
    "bnb-online": (None, "bitsandbytes"),  # NF4 in flight (the tiled 4-bit GEMM up to 1,024 rows)
    "int8": (INT8_W8A8, None),
    "int8-w8a16": ({**INT8_W8A8, "format": "naive-quantized", "config_groups": {"group_0": {
        **INT8_W8A8["config_groups"]["group_0"], "input_activations": None}}}, None),
    # fp8 weights times 16-bit activations (compressed-tensors W8A16): no activation quantization
    "fp8-w8a16": ({**INT8_W8A8, "format": "float-quantized", "config_groups": {"group_0": {
        **INT8_W8A8["config_groups"]["group_0"], "input_activations": None,
        "weights": {**INT8_W8A8["config_groups"]["group_0"]["weights"], "type": "float"}}}}, None),
    "awq": ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, None),
    "gptq": ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}, None),
}
TPOT_TARGETS = {"fp8": 0.6, "fp8-online": 0.6, "fp8-block": 0.6, "fp8-w8a16": 0.6, "int8": 0.6, "awq": 0.4, "gptq": 0.4}
THROUGHPUT_TARGETS = {"fp8": 1.3, "fp8-online": 1.3, "awq": 1.0, "gptq": 1.0}


def format_dir(shape: str, fmt: str, root: Path) -> Path | None:
    """The shape's checkpoint directory with ``fmt``'s quantization_config; None when the
    format's method is not registered in this build (printed as SKIP)."""
    from pagedlm.layers.quantization import QuantizationError, resolve_quantization

    hf_quant, _ = FORMATS[fmt]
    out = make_shape_dir(shape, root / fmt)
    if hf_quant is not None:
        config = json.loads((out / "config.json").read_text())
        config["quantization_config"] = hf_quant
        (out / "config.json").write_text(json.dumps(config, indent=2))

        class _Cfg:
            quantization_config = hf_quant
        try:
            resolve_quantization(_Cfg(), None)
        except QuantizationError as exc:
            print(f"SKIP {fmt}: {exc}")
            return None
    return out


def check_layer(llm: LLM, fmt: str) -> bool:
    """The first quantized layer on the device vs the same method through the reference ops."""
    from pagedlm.kernels import quant_reference as ref
    from pagedlm.kernels.quant_ops import REFERENCE_OPS
    from pagedlm.layers.quantization.loading import quantized_layers
    from pagedlm.layers.quantization.w8a8 import W8LinearMethod

    layers = quantized_layers(llm.llm_engine.engine_core.runner.model)
    if not layers:
        print(f"CHECK {fmt}: unquantized")
        return True
    layer, method = layers[0], layers[0].quant_method
    # the layer's own input width (a packed weight's second dim is not: bitsandbytes, AWQ)
    x = torch.randn(7, getattr(layer, "input_size_per_partition", layer.input_size),
                    device=next(layer.parameters()).device, dtype=llm.llm_engine.model_config.torch_dtype)
    with torch.inference_mode():
        out = method.apply(layer, x).float()
        if not isinstance(method, W8LinearMethod):
            ok = bool(torch.isfinite(out).all())
            print(f"{'PASS' if ok else 'FAIL'} {fmt}: {type(method).__name__} output finite (no reference here)")
            return ok
        kernels = (method.ops, method.gemm)
        method.ops, method.gemm = REFERENCE_OPS, ref.scaled_mm
        try:
            expect = method.apply(layer, x).float()
        finally:
            method.ops, method.gemm = kernels
    err = ((out - expect).norm() / expect.norm().clamp_min(1e-12)).item()
    ok = err < 2e-2
    quantizer = method.ops.per_token_impl.get(method.scheme.weight_dtype, method.ops.per_token_quant)
    names = f"quant={quantizer.__module__.rsplit('.', 1)[-1]}, gemm={method.gemm.__name__}"
    print(f"{'PASS' if ok else 'FAIL'} {fmt}: layer {layer.prefix} rel err {err:.2e} vs reference ({names}, "
          f"weight_only={method.weight_only})")
    return ok


def profile_batch1(llm: LLM, fmt: str, input_len: int, steps: int = 20) -> dict:
    """Where one batch-1 decode step's time goes: wall, device kernel time (union of kernel
    intervals), gaps, and the kernels by device time per step."""
    import time

    from benchmarks.gpu_step_profile import kernel_intervals, union_us
    from pagedlm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=steps * 3 + 32, detokenize=False)
    engine.add_request("profile", {"prompt_token_ids": list(range(100, 100 + input_len))}, params)
    for _ in range(12):  # the prefill, then decode steps with the graphs warm
        engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    engine.abort_request(["profile"])
    intervals = kernel_intervals(prof)
    busy = union_us(intervals)
    out = {"wall_ms": wall_us / steps / 1e3, "kernel_ms": busy / steps / 1e3, "kernels_per_step": len(intervals) / steps}
    print(f"PROFILE {fmt} batch 1: wall {out['wall_ms']:.3f} ms/step, kernels {out['kernel_ms']:.3f} ms, "
          f"gaps {out['wall_ms'] - out['kernel_ms']:.3f} ms, {out['kernels_per_step']:.0f} kernels/step")
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70)
    print(table)
    return out


def free(llm: LLM | None) -> None:
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_format(model_dir: Path, fmt: str, args, copy_bw: float | None) -> dict:
    """One engine per format (loaded once): the correctness line, batch-1 TPOT, then throughput."""
    import time

    from pagedlm import SamplingParams

    _, quantization = FORMATS[fmt]
    llm = LLM(str(model_dir), load_format="dummy", quantization=quantization, device=args.device, dtype=args.dtype,
              num_gpu_blocks_override=args.kv_blocks, max_num_seqs=args.max_num_seqs,
              max_model_len=args.input_len + args.output_len + 16)
    row = {"format": fmt, "check": check_layer(llm, fmt)}
    model = llm.llm_engine.engine_core.runner.model
    row["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    # what the model holds beside its parameters for other kernels (the CUTLASS int4 GEMM's copy of
    # the codes): memory, not bytes a batch-1 step reads
    row["kernel_copy_bytes"] = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                                   if "wna16_cutlass" in n)
    embed = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" in n)
    row["floor_ms"] = (row["weight_bytes"] - embed) / copy_bw * 1e3 if copy_bw else float("nan")
    r = measure(llm, 1, args.input_len, args.output_len, warmup=1, iters=args.iters)
    row.update(tpot_ms=r["time_per_output_token_ms"], ttft_ms=r["time_to_first_token_s"] * 1e3)
    if args.profile_batch1:
        row["batch1_profile"] = profile_batch1(llm, fmt, args.input_len)
    if not args.skip_throughput:
        vocab = llm.llm_engine.model_config.vocab_size
        requests = random_requests(args.num_prompts, args.input_len, args.output_len, 0.0, vocab)
        prompts = [{"prompt_token_ids": q.prompt_token_ids} for q in requests]
        params = [SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=q.output_len, detokenize=False)
                  for q in requests]
        llm.llm_engine.reset_prefix_cache()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        row["output_tokens_per_s"] = sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed
        row["preemptions"] = llm.llm_engine.get_stats().num_preemptions_total
    free(llm)
    return row


def verdict(ratio: float, target: float | None, at_most: bool) -> str:
    if target is None or ratio != ratio:
        return ""
    ok = ratio <= target if at_most else ratio >= target
    return f"{'PASS' if ok else 'FAIL'} ({'<=' if at_most else '>='}{target})"


def print_table(rows: list[dict], floors: dict | None) -> None:
    base = next((r for r in rows if r["format"] == "bf16"), None)
    card = floors["card"] if floors else "cpu"
    print(f"\n{card}, shape {rows[0]['shape']}, {rows[0]['dtype']} activations: batch-1 TPOT vs weight-bytes floor; "
          "throughput out tok/s ('bf16' is the unquantized model in that dtype)")
    print(f"{'format':<12} {'check':<5} {'weights GB':>10} {'+copies':>7} {'TPOT ms':>8} {'floor ms':>8} {'x floor':>7} "
          f"{'x bf16':>6} {'TPOT target':<14} {'out tok/s':>10} {'x bf16':>6} {'tput target':<14}")
    for r in rows:
        t_ratio = r["tpot_ms"] / base["tpot_ms"] if base else float("nan")
        tp = r.get("output_tokens_per_s")
        tp_ratio = tp / base["output_tokens_per_s"] if base and tp and base.get("output_tokens_per_s") else float("nan")
        print(f"{r['format']:<12} {'PASS' if r['check'] else 'FAIL':<5} {r['weight_bytes'] / 1e9:>10.2f} "
              f"{r.get('kernel_copy_bytes', 0) / 1e9:>7.2f} "
              f"{r['tpot_ms']:>8.2f} {r['floor_ms']:>8.2f} {r['tpot_ms'] / r['floor_ms']:>7.2f} {t_ratio:>6.2f} "
              f"{verdict(t_ratio, TPOT_TARGETS.get(r['format']), True):<14} "
              f"{tp if tp else float('nan'):>10.1f} {tp_ratio:>6.2f} "
              f"{verdict(tp_ratio, THROUGHPUT_TARGETS.get(r['format']), False):<14}")


def main() -> None:
    # which decode GEMMs the GEMVs (and the block-fp8 / 4-bit kernels) replaced
    for name in ("pagedlm.kernels.scaled_gemv", "pagedlm.kernels.gemv", "pagedlm.kernels.bucket_tuner"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--formats", default="bf16,fp8,fp8-online,int8",
                   help=f"comma-separated, from {sorted(FORMATS)}; bf16 is the baseline of the ratios")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--kv-blocks", type=int, default=12288, help="fixed KV blocks (16 tokens) for every format")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                   help="the activations' dtype of every format (AutoAWQ writes float16 checkpoints); the 'bf16' "
                        "format is then the unquantized model in this dtype")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--profile-batch1", action="store_true", help="print where a batch-1 decode step's time goes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SystemExit(f"unknown formats {unknown}; choose from {sorted(FORMATS)}")
    floors = None
    if args.device == "cuda":
        from benchmarks.floors import measure_floors

        floors = measure_floors()
    root = Path(tempfile.mkdtemp())
    rows = []
    for fmt in formats:
        model_dir = format_dir(args.shape, fmt, root)
        if model_dir is None:
            continue
        row = run_format(model_dir, fmt, args, floors["copy_bytes_per_s"] if floors else None)
        row["shape"] = args.shape
        row["dtype"] = args.dtype
        rows.append(row)
        print(json.dumps(row))
    if rows:
        print_table(rows, floors)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"floors": floors, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
