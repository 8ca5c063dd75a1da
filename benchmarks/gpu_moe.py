"""MoE serving on one GPU against its floors (random bf16 weights, ``--load-format dummy``):

  batch 1:   time per output token vs active-parameter bytes per token / copy bandwidth
             (attention, dense and LM-head weights, plus top_k of num_experts experts per layer;
             the embedding table is not read, one row is);
  throughput: N requests of input/output lengths vs the MoE GEMM floor: 6 * top_k * H * I
             FLOPs per token per MoE layer over all processed tokens / measured bf16 matmul rate
             (the whole-model active-FLOP floor is printed beside it).

  python benchmarks/gpu_moe.py --shape qwen3-30b-a3b            # or mixtral-8x7b
  python benchmarks/gpu_moe.py --shape moe-tiny --num-prompts 8 --input-len 32 --output-len 8  # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile

import torch

from pagedlm import LLM
from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.latency import measure
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
from pagedlm.benchmarks.throughput import run_pagedlm
from pagedlm.engine_args import EngineArgs


def moe_dims(shape: dict) -> tuple[int, int, int, int, int]:
    """(hidden, expert intermediate, num experts, top_k, MoE layers) of a shape."""
    experts = shape.get("num_experts") or shape["num_local_experts"]
    inter = shape.get("moe_intermediate_size") or shape["intermediate_size"]
    layers = shape["num_hidden_layers"]
    if shape.get("num_experts"):  # Qwen MoE: dense layers off the sparse grid
        step, dense = shape.get("decoder_sparse_step", 1), set(shape.get("mlp_only_layers", []))
        layers = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return shape["hidden_size"], inter, experts, shape["num_experts_per_tok"], layers


def active_bytes_per_token(model: torch.nn.Module, shape: dict) -> tuple[int, int]:
    """(bytes read per decode token at batch 1, total weight bytes)."""
    total = embed = experts = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        total += size
        if "embed_tokens" in name and "lm_head" not in name:
            embed += size
        if ".experts.w13_weight" in name or ".experts.w2_weight" in name:
            experts += size
    _, _, num_experts, top_k, _ = moe_dims(shape)
    tied = bool(shape.get("tie_word_embeddings", False))
    read = total - (0 if tied else embed) - experts + experts * top_k // num_experts
    return read, total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=[s for s in SHAPES if "architectures" in SHAPES[s]], default="qwen3-30b-a3b")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--latency-input-len", type=int, default=512)
    p.add_argument("--latency-output-len", type=int, default=128)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    floors = None
    if cuda:
        from benchmarks.floors import measure_floors

        floors = measure_floors()
    shape = SHAPES[args.shape]
    model_dir = str(make_shape_dir(args.shape, tempfile.mkdtemp()))
    result = {"shape": args.shape, "floors": floors}
    result["batch1"] = batch1(model_dir, shape, args, floors)
    if not args.skip_throughput:
        result["throughput"] = throughput(model_dir, shape, args, floors)
    print(json.dumps(result, indent=2))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


def batch1(model_dir: str, shape: dict, args: argparse.Namespace, floors: dict | None) -> dict:
    max_len = args.latency_input_len + args.latency_output_len + 16
    llm = LLM(model_dir, load_format="dummy", max_model_len=max_len, max_num_seqs=8, enforce_eager=args.enforce_eager)
    read_bytes, total_bytes = active_bytes_per_token(llm.llm_engine.engine_core.runner.model, shape)
    r = measure(llm, 1, args.latency_input_len, args.latency_output_len, warmup=1, iters=3)
    r.update(active_bytes_per_token=read_bytes, weight_bytes=total_bytes)
    line = f"batch 1: TPOT {r['time_per_output_token_ms']:.2f} ms; active weights {read_bytes / 1e9:.2f} GB " \
           f"of {total_bytes / 1e9:.2f} GB"
    if floors:
        floor_ms = read_bytes / floors["copy_bytes_per_s"] * 1e3
        r["floor_ms"] = floor_ms
        line += f"; floor {floor_ms:.2f} ms ({r['time_per_output_token_ms'] / floor_ms:.2f}x) at " \
                f"{floors['copy_bytes_per_s'] / 1e12:.2f} TB/s copy on {floors['card']}"
    print(line, flush=True)
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return r


def throughput(model_dir: str, shape: dict, args: argparse.Namespace, floors: dict | None) -> dict:
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, 0.0, shape["vocab_size"])
    engine_args = EngineArgs(model=model_dir, load_format="dummy", enforce_eager=args.enforce_eager,
                             max_model_len=args.input_len + args.output_len + 16)
    r = run_pagedlm(engine_args, requests)
    hidden, inter, _, top_k, moe_layers = moe_dims(shape)
    tokens = r["input_tokens"] + r["output_tokens"]
    moe_flops = 6 * top_k * hidden * inter * moe_layers * tokens
    r["moe_gemm_flops"] = moe_flops
    line = f"throughput: {r['output_tokens_per_s']:.0f} output tok/s, {r['total_tokens_per_s']:.0f} total tok/s " \
           f"in {r['elapsed_s']:.1f} s"
    if floors:
        floor_s = moe_flops / (floors["bf16_tflops"] * 1e12)
        r["moe_floor_s"] = floor_s
        line += f"; MoE GEMM floor {floor_s:.1f} s ({r['elapsed_s'] / floor_s:.2f}x) at " \
                f"{floors['bf16_tflops']:.0f} TFLOP/s"
    print(line, flush=True)
    return r


if __name__ == "__main__":
    main()
