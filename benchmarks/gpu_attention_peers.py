"""Causal prefill attention: pagedlm's paged Triton kernel against torch's own attention
kernels on the same shapes (Llama-3.1-8B: 32 query heads, 8 KV heads, head dim 128, bf16).

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_attention_peers.py

Peers (torch.nn.functional.scaled_dot_product_attention, dense [B, H, S, D] with GQA, so only
batches of equal-length prompts; no paging, no KV cache):
  flash  FlashAttention-2 as built into torch (SDPBackend.FLASH_ATTENTION)
  cudnn  cuDNN's fused attention (SDPBackend.CUDNN_ATTENTION; Hopper kernels)
pagedlm's kernel reads K/V through a block table of 16-token blocks (its default tile config
and the best of a few others). TFLOP/s counts the causal half; "% mm" compares with a bf16
8192^3 matmul timed in the same run. Times: one call replayed from a CUDA graph, L2 flushed
before it (``kernels/timing.py``), so Python's launch cost is not counted for any kernel.

Last, the ragged (variable-length) cuDNN entry point that a serving engine would need
(``aten._cudnn_attention_forward`` with cumulative sequence offsets): its time per call, the
same shapes twice, and its error against per-sequence SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from benchmarks.kernels_bench import make_batch, rel_err
from pagedlm.kernels.triton_attention import (
    AttentionConfig,
    default_config,
    paged_attention_with_config,
)

HQ, HKV, D = 32, 8, 128
CASES = ((1, 512), (32, 512), (4, 4096))
TILES = ((64, 32, 4, 2), (128, 64, 8, 2), (256, 64, 8, 2))  # block_m, tile_n, warps, stages


def bench_ms(fn) -> float:
    """Device time of one call, replayed from a CUDA graph with L2 flushed before it (no host
    launch cost: a 20 µs kernel launched from Python would otherwise be timed by its launch)."""
    from pagedlm.kernels.timing import decode_time_ms

    fn()
    return decode_time_ms(fn, torch.device("cuda"))


def sdpa_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend) -> tuple[float, torch.Tensor]:
    from torch.nn.attention import sdpa_kernel

    def fn() -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return bench_ms(fn), fn()


def prefill_rows(mm_tflops: float) -> list[tuple]:
    from torch.nn.attention import SDPBackend

    rows = []
    for n, s in CASES:
        batch = make_batch([s] * n, [s] * n, HQ, HKV, D, "cuda")
        query, kv = batch[0], batch[1]
        flops = n * 4.0 * D * HQ * s * (s + 1) / 2
        default = default_config(n, HQ, HKV, D, s, s, query.device, num_tokens=n * s)
        ours = {}
        for cfg in (default, *(AttentionConfig(*t) for t in TILES)):
            ours[cfg] = bench_ms(lambda c=cfg, b=batch: paged_attention_with_config(*b, None, c, None))
        best = min(ours, key=ours.get)
        out = paged_attention_with_config(*batch, None, default, None)
        # The same queries and keys as dense [B, H, S, D] tensors (the blocks gathered in order).
        tables = batch[4]
        k = kv[0][tables.long()].reshape(n, -1, HKV, D)[:, :s].contiguous().transpose(1, 2)
        v = kv[1][tables.long()].reshape(n, -1, HKV, D)[:, :s].contiguous().transpose(1, 2)
        q = query.view(n, s, HQ, D).transpose(1, 2)
        name = f"{n} x {s}"
        rows.append((name, "pagedlm (default " + _tile(default) + ")", ours[default], flops, 0.0))
        if best != default:
            rows.append((name, "pagedlm (best: " + _tile(best) + ")", ours[best], flops, 0.0))
        for label, backend in (("torch flash (FA2)", SDPBackend.FLASH_ATTENTION), ("torch cuDNN", SDPBackend.CUDNN_ATTENTION)):
            try:
                ms, ref = sdpa_ms(q, k, v, backend)
                rows.append((name, label, ms, flops, rel_err(out.view(n, s, HQ, D).transpose(1, 2), ref)))
            except RuntimeError as exc:  # a backend this build or card does not have
                rows.append((name, f"{label}: {str(exc)[:60]}", float("nan"), flops, float("nan")))
        del batch, kv, k, v, q
        torch.cuda.empty_cache()
    print(f"\n{'case':10} {'kernel':40} {'us':>9} {'TFLOP/s':>8} {'% mm':>5} {'err vs ours':>11}")
    for name, label, ms, flops, err in rows:
        tf = flops / ms / 1e9
        print(f"{name:10} {label:40} {ms * 1e3:9.1f} {tf:8.1f} {100 * tf / mm_tflops:5.0f} {err:11.1e}")
    return rows


def _tile(cfg: AttentionConfig) -> str:
    return f"M{cfg.block_m} N{cfg.tile_n} w{cfg.num_warps} s{cfg.num_stages}"


def ragged_cudnn() -> None:
    """aten._cudnn_attention_forward over 32 sequences of 256-768 tokens, packed [T, H, D]."""
    import time

    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(256, 769, (32,), generator=gen).tolist()
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens), HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(sum(lens), HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)

    def run() -> torch.Tensor:
        return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max(lens), max(lens), False, 0.0, True,
                                                       False, scale=D**-0.5)[0]

    try:
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    except RuntimeError as exc:
        print(f"\nragged cuDNN: not available ({str(exc)[:80]})")
        return
    refs = [F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           is_causal=True, enable_gqa=True).transpose(0, 1)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    flops = sum(4.0 * D * HQ * n * (n + 1) / 2 for n in lens)
    print(f"\nragged cuDNN (aten._cudnn_attention_forward, 32 sequences of 256-768 tokens, the same shapes each "
          f"call): {', '.join(f'{t:.1f}' for t in times)} ms per call ({flops / min(times) / 1e9:.1f} TFLOP/s at "
          f"best); err vs per-sequence SDPA {rel_err(out, torch.cat(refs)):.1e}")


def main() -> None:
    floors = measure_floors()
    print(f"{floors['card']}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}: "
          f"bf16 matmul {floors['bf16_tflops']:.0f} TFLOP/s")
    prefill_rows(floors["bf16_tflops"])
    ragged_cudnn()


if __name__ == "__main__":
    main()
