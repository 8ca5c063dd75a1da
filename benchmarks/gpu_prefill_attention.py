"""Prefill attention: the step's prefill rows through ``triton_prefill_attention`` (this step's
keys read by TMA from the layer's dense K/V) against the one mixed launch of the paged kernel,
and cuDNN on the equal-length cases.

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_prefill_attention.py

Llama-3.1-8B heads (32 query, 8 KV, head dim 128, bf16), 16-token blocks scattered over the
cache (``kernels_bench.make_batch``); this step's K/V are the cache's rows for the new
positions, the values as a column slice of a fused-QKV-wide buffer (the engine's layout).
Times: one call replayed from a CUDA graph with L2 flushed (``kernels/timing.py``); TFLOP/s
counts the causal half; "% mm" is against a bf16 8192^3 matmul timed in the same run. The
"engine" column is what ``triton_attention.paged_attention`` picks for the case (the prefill
kernel from ``PREFILL_KERNEL_MIN_*`` on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from benchmarks.kernels_bench import make_batch, rel_err
from pagedlm.kernels import triton_attention, triton_prefill_attention
from pagedlm.kernels.timing import decode_time_ms

HQ, HKV, D = 32, 8, 128


def cases() -> list[tuple[str, list[int], list[int]]]:
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(500, 701, (128,), generator=g).tolist()
    ragged = torch.randint(256, 769, (32,), generator=g).tolist()
    return [("1 x 128", [128], [128]), ("1 x 512", [512], [512]), ("4 x 128", [128] * 4, [128] * 4),
            ("2 x 1024", [1024] * 2, [1024] * 2), ("32 x 512", [512] * 32, [512] * 32),
            ("32 x 256-768", ragged, ragged), ("4 x 4096", [4096] * 4, [4096] * 4),
            ("1 x 16384", [16384], [16384]), ("chunk 2048 @ 6144", [2048], [8192]),
            ("8 x 1024 @ 1024", [1024] * 8, [2048] * 8),
            ("128 dec + 512 @ 512", [1] * 128 + [512], ctx + [1024]),
            ("128 dec + 2048", [1] * 128 + [2048], ctx + [2048])]


def step_kv(batch) -> tuple[torch.Tensor, torch.Tensor]:
    query, kv, qsl, lens, tables = batch[:5]
    bs = kv.shape[2]
    q_lens = (qsl[1:] - qsl[:-1]).tolist()
    rows = []
    for b, (q_len, seq_len) in enumerate(zip(q_lens, lens.tolist())):
        pos = torch.arange(seq_len - q_len, seq_len, device=kv.device)
        rows.append(tables[b, pos // bs].long() * bs + pos % bs)
    slots = torch.cat(rows)
    flat = kv.view(2, -1, HKV * D)
    key = flat[0][slots].contiguous()
    wide = torch.empty(key.shape[0], (HQ + 2 * HKV) * D, dtype=key.dtype, device=key.device)
    value = wide[:, (HQ + HKV) * D:]
    value.copy_(flat[1][slots])
    return key, value


def bench_us(fn) -> float:
    fn()
    return decode_time_ms(fn, torch.device("cuda")) * 1e3


def main() -> None:
    mm = measure_floors()["bf16_tflops"]
    dev = torch.device("cuda")
    rows = []
    for name, q_lens, seq_lens in cases():
        torch.manual_seed(0)
        batch = make_batch(q_lens, seq_lens, HQ, HKV, D, "cuda")
        key, value = step_kv(batch)
        query, kv, qsl, lens, tables, max_q, max_s, scale = batch
        flops = sum(4.0 * D * HQ * sum(s - q + i + 1 for i in range(q)) for q, s in zip(q_lens, seq_lens) if q > 1)
        config = triton_attention.default_config(len(seq_lens), HQ, HKV, D, max_q, max_s, dev, num_tokens=sum(q_lens))
        paged = lambda: triton_attention.paged_attention_with_config(*batch, None, config)  # noqa: E731
        decode = triton_attention.default_config(len(seq_lens), HQ, HKV, D, 1, max_s, dev, num_tokens=len(seq_lens))

        def tma():
            out = triton_attention.paged_attention_with_config(query, kv, qsl, lens, tables, 1, max_s, scale, None,
                                                               decode)
            triton_prefill_attention.prefill_attention(out, query, key, value, kv, qsl, lens, tables, scale)
            return out

        engine = lambda: triton_attention.paged_attention(*batch, key=key, value=value)  # noqa: E731
        ref = paged()
        err = rel_err(tma(), ref)
        t_paged, t_tma, t_engine = bench_us(paged), bench_us(tma), bench_us(engine)
        t_cudnn = float("nan")
        if len(set(q_lens)) == 1 and q_lens == seq_lens:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            n, s = len(q_lens), q_lens[0]
            k = kv[0][tables.long()].reshape(n, -1, HKV, D)[:, :s].transpose(1, 2).contiguous()
            v = kv[1][tables.long()].reshape(n, -1, HKV, D)[:, :s].transpose(1, 2).contiguous()
            q = query.view(n, s, HQ, D).transpose(1, 2)

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            try:
                t_cudnn = bench_us(cudnn)
            except RuntimeError:
                pass
        rows.append((name, flops, t_paged, t_tma, t_engine, t_cudnn, err))
        print(rows[-1], flush=True)
        del batch, key, value, kv
        torch.cuda.empty_cache()
    tf = lambda flops, us: flops / us / 1e6  # noqa: E731
    print(f"\nbf16 matmul {mm:.0f} TFLOP/s (same run); TFLOP/s (% mm) counts the prefill rows' causal half")
    print(f"{'case':22} {'paged µs':>9} {'TF (%mm)':>11} {'prefill µs':>10} {'TF (%mm)':>11} {'× paged':>7} "
          f"{'engine µs':>9} {'cuDNN µs':>9} {'TF (%mm)':>11} {'err':>8}")
    for name, flops, tp, tt, te, tc, err in rows:
        cud = f"{'-':>9} {'-':>11}"
        if tc == tc:  # not NaN: cuDNN ran
            cud = f"{tc:9.1f} {tf(flops, tc):5.0f} ({100 * tf(flops, tc) / mm:2.0f}%)"
        print(f"{name:22} {tp:9.1f} {tf(flops, tp):5.0f} ({100 * tf(flops, tp) / mm:2.0f}%) {tt:10.1f} "
              f"{tf(flops, tt):5.0f} ({100 * tf(flops, tt) / mm:2.0f}%) {tp / tt:7.2f} {te:9.1f} {cud} {err:8.1e}")


if __name__ == "__main__":
    main()
