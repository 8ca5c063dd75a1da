"""Prefill attention: the step's prefill rows through ``triton_prefill_attention`` (this step's
keys read by TMA from the layer's dense K/V) against the one mixed launch of the paged kernel,
and cuDNN on the equal-length cases.

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_prefill_attention.py

Llama-3.1-8B heads (32 query, 8 KV, head dim 128, bf16), 16-token blocks scattered over the
cache (``kernels_bench.make_batch``); this step's K/V are the cache's rows for the new
positions, the values as a column slice of a fused-QKV-wide buffer (the engine's layout).
``--sweep`` times the prefill kernel's tile configs on a few of the cases instead.
Times: one call replayed from a CUDA graph with L2 flushed (``kernels/timing.py``); TFLOP/s
counts the causal half; "% mm" is against a bf16 8192^3 matmul timed in the same run. The
"engine" column is what ``triton_attention.paged_attention`` picks for the case (the prefill
kernel from ``PREFILL_KERNEL_MIN_*`` on).
"""

from __future__ import annotations

import argparse

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
    return [("1 x 128", [128], [128]), ("4 x 128", [128] * 4, [128] * 4), ("1 x 256", [256], [256]),
            ("4 x 256", [256] * 4, [256] * 4), ("1 x 512", [512], [512]), ("1 x 1024", [1024], [1024]),
            ("2 x 1024", [1024] * 2, [1024] * 2), ("32 x 512", [512] * 32, [512] * 32),
            ("32 x 256-768", ragged, ragged), ("4 x 4096", [4096] * 4, [4096] * 4),
            ("1 x 16384", [16384], [16384]), ("chunk 2048 @ 6144", [2048], [8192]),
            ("8 x 1024 @ 1024", [1024] * 8, [2048] * 8),
            ("128 dec + 256", [1] * 128 + [256], ctx + [256]),
            ("128 dec + 512 @ 512", [1] * 128 + [512], ctx + [1024]),
            ("128 dec + 1024 @ 512", [1] * 128 + [1024], ctx + [1536]),
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


SWEEP = ((64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 4, 2), (128, 64, 4, 2), (128, 64, 4, 3),
         (128, 64, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (256, 64, 8, 2), (256, 128, 8, 2))


def sweep(mm: float) -> None:
    """Every PrefillConfig of SWEEP on a few cases (µs, TFLOP/s)."""
    from pagedlm.kernels.triton_prefill_attention import PrefillConfig, default_config

    wanted = {"1 x 512", "2 x 1024", "32 x 512", "4 x 4096", "chunk 2048 @ 6144"}
    for name, q_lens, seq_lens in cases():
        if name not in wanted:
            continue
        batch = make_batch(q_lens, seq_lens, HQ, HKV, D, "cuda")
        key, value = step_kv(batch)
        query, kv, qsl, lens, tables, _, _, scale = batch
        flops = sum(4.0 * D * HQ * sum(s - q + i + 1 for i in range(q)) for q, s in zip(q_lens, seq_lens))
        out = torch.empty_like(query)
        ref = None
        for tile in SWEEP:
            cfg = PrefillConfig(*tile)
            try:
                run = lambda c=cfg: triton_prefill_attention.prefill_attention(  # noqa: E731
                    out, query, key, value, kv, qsl, lens, tables, scale, c)
                run()
                ref = out.clone() if ref is None else ref
                err = rel_err(out, ref)
                us = bench_us(run)
                mark = " (default)" if cfg == default_config(max(seq_lens)) else ""
                tflops = flops / us / 1e6
                print(f"sweep {name:20} M{tile[0]} N{tile[1]} w{tile[2]} s{tile[3]}{mark:10} {us:9.1f} µs "
                      f"{tflops:5.0f} TFLOP/s ({100 * tflops / mm:2.0f}%) err {err:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a config this Triton cannot compile
                print(f"sweep {name:20} {tile}: {type(exc).__name__} {str(exc)[-120:]}", flush=True)
        del batch, key, value, kv
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="time the prefill kernel's tile configs instead")
    args = parser.parse_args()
    mm = measure_floors()["bf16_tflops"]
    if args.sweep:
        sweep(mm)
        return
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
            triton_prefill_attention.prefill_attention(out, query, key, value, kv, qsl, lens, tables, scale,
                                                       triton_prefill_attention.default_config(max_s))
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
