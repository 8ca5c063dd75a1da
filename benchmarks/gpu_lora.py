"""Multi-LoRA throughput against the base model, in one run on one GPU (random bf16 weights,
``--load-format dummy``; dummy rank-16 adapters on every projection, written on the fly):

  1. correctness: the Triton shrink / expand kernels against the PyTorch references at the
     8B shapes (PASS / FAIL lines);
  2. throughput of N requests of input/output lengths: the base model (LoRA off), then with
     LoRA on for each --max-loras, requests spread round-robin over 1, 4 and 16 adapters;
     each figure as a fraction of the base. Target: >= 0.85 x base with 4 adapters, max_loras 4.

  python benchmarks/gpu_lora.py                                   # H200: 8B shape, 1000 x 512/256
  python benchmarks/gpu_lora.py --num-prompts 300                 # shorter
  python benchmarks/gpu_lora.py --shape cpu-small --num-prompts 8 --input-len 32 --output-len 8 \
      --adapters 1 2 --max-loras 2 --skip-kernel-check            # CPU smoke run of the script
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from pagedlm import LLM, SamplingParams
from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
from pagedlm.lora.request import LoRARequest
from pagedlm.lora.testing import write_random_adapter


def kernel_check(shape: dict) -> bool:
    """Shrink + expand of the fused QKV layer and down_proj at this shape, 4 slots, against
    the references in float32; a decode-sized and a prefill-sized batch."""
    from pagedlm.lora import ops, triton_lora

    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = hidden // shape["num_attention_heads"]
    q, kv = hidden, shape["num_key_value_heads"] * head_dim
    ok = True
    for name, in_dim, widths in (("qkv_proj", hidden, [q, kv, kv]), ("down_proj", inter, [hidden])):
        for num_tokens in (64, 2048):
            gen = torch.Generator().manual_seed(num_tokens)
            x = torch.randn(num_tokens, in_dim, generator=gen)
            a = torch.randn(4, len(widths) * 16, in_dim, generator=gen) * 0.02
            b = torch.randn(4, sum(widths), 16, generator=gen) * 0.02
            slots = torch.randint(-1, 4, (num_tokens,), generator=gen, dtype=torch.int32)
            starts = tuple(torch.tensor([0, *widths]).cumsum(0).tolist())
            ref = torch.zeros(num_tokens, sum(widths))
            ops.lora_expand_ref(ref, ops.lora_shrink_ref(x, a, slots), b, slots, starts, 16)
            y = torch.zeros(num_tokens, sum(widths), dtype=torch.bfloat16, device="cuda")
            bf = dict(dtype=torch.bfloat16, device="cuda")
            shrunk = triton_lora.lora_shrink(x.to(**bf), a.to(**bf), slots.cuda())
            triton_lora.lora_expand(y, shrunk, b.to(**bf), slots.cuda(), starts, 16)
            err = ((y.float().cpu() - ref).norm() / ref.norm()).item()
            passed = err < 2e-2
            ok &= passed
            print(f"{'PASS' if passed else 'FAIL'} kernels {name} tokens={num_tokens}: rel. error {err:.2e}", flush=True)
    return ok


def run(model_dir: str, args: argparse.Namespace, requests, loras: list[LoRARequest | None],
        llm_kwargs: dict) -> dict:
    llm = LLM(model_dir, load_format="dummy", max_model_len=args.input_len + args.output_len + 16,
              enforce_eager=args.enforce_eager, **llm_kwargs)
    results = {}
    for spread in (args.adapters if llm_kwargs.get("enable_lora") else [0]):
        assigned = [loras[i % spread] if spread else None for i in range(len(requests))]
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
        params = [SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False)
                  for r in requests]
        # Warm up (Triton compiles, adapters reach the host cache and the device slots).
        llm.generate(prompts[:16], params[:16], use_tqdm=False, lora_request=assigned[:16])
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=assigned)
        elapsed = time.perf_counter() - start
        num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
        num_in = sum(len(r.prompt_token_ids) for r in requests)
        results[spread] = {"elapsed_s": elapsed, "output_tokens_per_s": num_out / elapsed,
                           "total_tokens_per_s": (num_in + num_out) / elapsed}
        print(f"  {llm_kwargs or 'base'} adapters={spread}: {num_out / elapsed:.0f} output tok/s, "
              f"{(num_in + num_out) / elapsed:.0f} total tok/s in {elapsed:.1f} s", flush=True)
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-loras", type=int, nargs="+", default=[4, 16])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--skip-kernel-check", action="store_true")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    shape = SHAPES[args.shape]
    ok: bool | None = None  # None: not checked (no CUDA, or skipped)
    if torch.cuda.is_available() and not args.skip_kernel_check:
        ok = kernel_check(shape)
    tmp = Path(tempfile.mkdtemp())
    model_dir = str(make_shape_dir(args.shape, tmp / "model"))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_dir)
    loras = [LoRARequest(f"a{i}", i + 1, write_random_adapter(tmp / f"a{i}", hf_config, rank=args.rank, seed=i))
             for i in range(max(args.adapters))]
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, 0.0, shape["vocab_size"])
    print(f"{args.shape}: {args.num_prompts} x {args.input_len}/{args.output_len}, rank-{args.rank} adapters",
          flush=True)
    base = run(model_dir, args, requests, loras, {})[0]["output_tokens_per_s"]
    table = {"base": base}
    for max_loras in args.max_loras:
        res = run(model_dir, args, requests, loras, dict(enable_lora=True, max_loras=max_loras,
                                                         max_cpu_loras=max(args.adapters), max_lora_rank=args.rank))
        for spread, r in res.items():
            table[f"max_loras={max_loras} adapters={spread}"] = r["output_tokens_per_s"]
    print("\n| configuration | output tok/s | x base |\n|---|---|---|")
    for name, tps in table.items():
        print(f"| {name} | {tps:.0f} | {tps / base:.2f} |")
    target = table.get("max_loras=4 adapters=4")
    if target is not None:
        print(f"{'PASS' if target >= 0.85 * base else 'FAIL'} target: 4 adapters (max_loras 4) at "
              f"{target / base:.2f} x base (>= 0.85)")
    print("kernel check skipped" if ok is None else f"{'PASS' if ok else 'FAIL'} kernel check")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"shape": args.shape, "table": table, "kernels_ok": ok},
                                                     indent=2))


if __name__ == "__main__":
    main()
