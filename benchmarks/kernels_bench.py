"""Correctness and speed of the Triton kernels against the PyTorch references, at
Llama-3.1-8B shapes (32 query heads, 8 KV heads, head_dim 128, hidden 4096, intermediate
14336, bf16, block size 16).

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/kernels_bench.py [--no-sweep] [--json PATH]
Each kernel's output is checked against the reference computed in float32 from the same
inputs (rel err = ||out - ref|| / ||ref||). Times are medians of triton.testing.do_bench
(CUDA events; L2 flushed before every call), in microseconds. "bytes" is the least the
kernel must move (each input read once, each output written once); GB/s is bytes / time and
"%copy" compares that with a large device-to-device copy measured in the same run. The
attention sweep (printed first) times other tile configurations of the same kernel; the
summary table comes last.

--device cpu --small runs the same script on tiny shapes through Triton's interpreter
(TRITON_INTERPRET=1), to check the script itself without a GPU; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
import triton

from pagedlm.kernels import reference, triton_ops
from pagedlm.kernels.triton_attention import AttentionConfig, default_config, paged_attention_with_config

HQ, HKV, D, HIDDEN, INTER, BS = 32, 8, 128, 4096, 14336, 16
DTYPE = torch.bfloat16


@dataclass
class Row:
    kernel: str
    case: str
    triton_us: float
    torch_us: float | None
    bytes: int
    flops: float
    rel_err: float
    note: str = ""
    graph_us: float | None = None  # per call, replayed from a CUDA graph (no host launch cost)


class Bench:
    def __init__(self, device: str, small: bool) -> None:
        self.device = device
        self.small = small
        self.rows: list[Row] = []
        self.sweep: list[tuple[str, str, float, float]] = []
        self.copy_gbps = float("nan")

    # ------------------------------------------------------------- timing helpers
    def time_us(self, fn: Callable[[], object]) -> float:
        if self.device != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e6
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3

    def graph_us(self, fns: list[Callable[[], object]]) -> float | None:
        """Per-call time of fns captured back to back in one CUDA graph (L2 flushed before each
        replay); passing calls on distinct inputs keeps repeats from being served by L2."""
        if self.device != "cuda":
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for fn in fns:
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for fn in fns:
                fn()
        us = self.time_us(graph.replay) / len(fns)
        del graph
        return us

    def measure_copy(self) -> None:
        n = (1 << 28) if self.device == "cuda" else (1 << 16)  # 512 MiB of bf16 each way
        src = torch.empty(n, dtype=DTYPE, device=self.device).normal_()
        dst = torch.empty_like(src)
        t = self.time_us(lambda: dst.copy_(src))  # one 512 MiB copy: no graph needed
        self.copy_gbps = 2 * src.numel() * src.element_size() / (t * 1e-6) / 1e9
        self.rows.append(Row("copy (d2d)", f"{src.numel() * 2 >> 20} MiB", t, None, 2 * src.numel() * 2, 0, 0.0))
        del src, dst

    def add(self, kernel: str, case: str, fast: Callable, slow: Callable | None, ref_out, nbytes: int,
            flops: float = 0.0, note: str = "", view: Callable = lambda out: out,
            graph_fns: list[Callable] | None = None) -> None:
        err = rel_err(view(fast()), ref_out)
        graph = self.graph_us(graph_fns or [fast])
        self.rows.append(Row(kernel, case, self.time_us(fast), self.time_us(slow) if slow else None, nbytes, flops,
                             err, note, graph))

    # ------------------------------------------------------------- kernels
    def token_counts(self) -> list[int]:
        return [1, 16] if self.small else [1, 256, 512]

    @staticmethod
    def rotation(make: Callable[[], tuple], nbytes: int) -> list[tuple]:
        """Independent input sets, >= 128 MB together (at most 32), for the graph timing."""
        return [make() for _ in range(max(1, min(32, (128 << 20) // max(nbytes, 1))))]

    def norms(self) -> None:
        hidden = 256 if self.small else HIDDEN
        w = (1 + 0.1 * torch.randn(hidden, device=self.device)).to(DTYPE)
        for t in self.token_counts():
            make = lambda: tuple(torch.randn(t, hidden, device=self.device, dtype=DTYPE) for _ in range(2))  # noqa: E731
            sets = self.rotation(make, 4 * t * hidden * 2)
            x, res = sets[0]
            ref = reference.rms_norm(x.float(), w.float(), 1e-5)
            self.add("rms_norm", f"T={t} H={hidden}", lambda: triton_ops.rms_norm(x, w, 1e-5),
                     lambda: reference.rms_norm(x, w, 1e-5), ref, 2 * t * hidden * 2 + hidden * 2,
                     graph_fns=[lambda a=a: triton_ops.rms_norm(a[0], w, 1e-5) for a in sets])
            ref = torch.cat(reference.fused_add_rms_norm(x.float(), res.float(), w.float(), 1e-5))
            self.add("fused_add_rms_norm", f"T={t} H={hidden}",
                     lambda: triton_ops.fused_add_rms_norm(x, res, w, 1e-5),
                     lambda: reference.fused_add_rms_norm(x, res, w, 1e-5), ref, 4 * t * hidden * 2 + hidden * 2,
                     view=torch.cat, graph_fns=[lambda a=a: triton_ops.fused_add_rms_norm(*a, w, 1e-5) for a in sets])

    def silu(self) -> None:
        inter = 512 if self.small else INTER
        for t in self.token_counts():
            sets = self.rotation(lambda: (torch.randn(t, 2 * inter, device=self.device, dtype=DTYPE),),
                                 3 * t * inter * 2)
            x = sets[0][0]
            self.add("silu_and_mul", f"T={t} I={inter}", lambda: triton_ops.silu_and_mul(x),
                     lambda: reference.silu_and_mul(x), reference.silu_and_mul(x.float()), 3 * t * inter * 2,
                     graph_fns=[lambda a=a: triton_ops.silu_and_mul(a[0]) for a in sets])

    def quant(self) -> None:
        """Per-token activation quantization (W8A8's dynamic scales), fp8 and int8, the widths
        of o_proj's and down_proj's inputs. rel err compares the codes (as numbers) with the
        reference's; the note counts codes that differ at all (0: the same bytes)."""
        from pagedlm.kernels import quant_reference as qref
        from pagedlm.kernels.triton_quant import per_token_quant

        widths = [256] if self.small else [HIDDEN, INTER]
        # (Triton's CPU interpreter casts some floats to fp8 wrongly, 32.0 to 16.0: int8 only there.)
        for code in (torch.int8, qref.FP8_DTYPE) if self.device == "cuda" else (torch.int8,):
            for hidden in widths:
                for t in self.token_counts():
                    sets = self.rotation(lambda: (torch.randn(t, hidden, device=self.device, dtype=DTYPE),),
                                         3 * t * hidden)
                    x = sets[0][0]
                    want = qref.per_token_quant(x, code)[0]
                    differ = int((per_token_quant(x, code)[0].view(torch.uint8) != want.view(torch.uint8)).sum())
                    self.add(f"per_token_quant {'int8' if code == torch.int8 else 'fp8'}", f"T={t} H={hidden}",
                             lambda: per_token_quant(x, code), lambda: qref.per_token_quant(x, code),
                             want.float(), 3 * t * hidden, note=f"{differ} codes differ",
                             view=lambda out: out[0].float(),
                             graph_fns=[lambda a=a: per_token_quant(a[0], code) for a in sets])

    def rotary(self) -> None:
        hq, hkv, d = (8, 2, 64) if self.small else (HQ, HKV, D)
        cache = torch.randn(8192, d, device=self.device)  # values need not be real cos/sin
        for t in self.token_counts():
            def make():
                qkv = torch.randn(t, (hq + 2 * hkv) * d, device=self.device, dtype=DTYPE)
                pos = torch.randint(0, 8192, (t,), device=self.device)
                return pos, qkv[:, : hq * d], qkv[:, hq * d : (hq + hkv) * d]  # q, k: slices of qkv
            nbytes = 2 * t * (hq + hkv) * d * 2 + t * d * 4 + t * 8
            sets = self.rotation(make, nbytes)
            pos, q, k = sets[0]
            ref = torch.cat(reference.rotary_embedding(pos, q.float(), k.float(), cache, d), dim=1)
            self.add("rotary_embedding", f"T={t} {hq}q/{hkv}kv x{d}",
                     lambda: triton_ops.rotary_embedding(pos, q, k, cache, d),
                     lambda: reference.rotary_embedding(pos, q, k, cache, d), ref, nbytes,
                     note="q,k = slices of qkv", view=lambda out: torch.cat(out, dim=1),
                     graph_fns=[lambda a=a: triton_ops.rotary_embedding(*a, cache, d) for a in sets])

    def kv_write(self) -> None:
        hkv, d = (2, 64) if self.small else (HKV, D)
        num_blocks = 64 if self.small else 4096
        kv = torch.randn(2, num_blocks, BS, hkv, d, device=self.device, dtype=DTYPE)
        for t in self.token_counts():
            def make():
                qkv = torch.randn(t, 3 * hkv * d, device=self.device, dtype=DTYPE)
                key = qkv[:, hkv * d : 2 * hkv * d].view(t, hkv, d)  # views of a fused qkv output
                value = qkv[:, 2 * hkv * d :].view(t, hkv, d)
                return key, value, torch.randperm(num_blocks * BS, device=self.device)[:t]
            nbytes = 2 * 2 * t * hkv * d * 2 + t * 8
            sets = self.rotation(make, nbytes)
            key, value, slots = sets[0]
            expected = kv.clone()
            reference.write_kv_cache(key, value, expected, slots)
            self.add("write_kv_cache", f"T={t} {hkv}kv x{d}",
                     lambda: triton_ops.write_kv_cache(key, value, kv, slots),
                     lambda: reference.write_kv_cache(key, value, kv, slots), expected,
                     nbytes, note="torch ref syncs (valid.all())", view=lambda _: kv,
                     graph_fns=[lambda a=a: triton_ops.write_kv_cache(a[0], a[1], kv, a[2]) for a in sets[1:] or sets])

    # ------------------------------------------------------------- attention
    def attention_cases(self) -> list[tuple[str, list[int], list[int]]]:
        g = torch.Generator().manual_seed(0)
        if self.small:
            return [("decode B=1 ctx=100", [1], [100]), ("mixed", [1, 1, 40], [50, 70, 90])]
        b256 = torch.randint(500, 701, (256,), generator=g).tolist()
        mixed = [1] * 128 + [512], torch.randint(500, 701, (128,), generator=g).tolist() + [1024]
        return [
            ("decode B=1 ctx=768", [1], [768]),
            ("decode B=16 ctx=2048", [1] * 16, [2048] * 16),
            ("decode B=256 ctx=500-700", [1] * 256, b256),
            ("prefill 1x512", [512], [512]),
            ("prefill 32x512", [512] * 32, [512] * 32),
            ("prefill 4x4096", [4096] * 4, [4096] * 4),
            ("mixed 128 dec + 512 chunk@512", mixed[0], mixed[1]),
        ]

    def attention(self, sweep: bool) -> None:
        hq, hkv, d = (8, 2, 64) if self.small else (HQ, HKV, D)
        for name, q_lens, seq_lens in self.attention_cases():
            batch = make_batch(q_lens, seq_lens, hq, hkv, d, self.device)
            query, kv, qsl, lens, tables, max_q, max_s, scale = batch
            config = default_config(len(seq_lens), hq, hkv, d, max_q, max_s, query.device, num_tokens=sum(q_lens))
            dec_config = None  # as paged_attention does: one launch
            plan = torch_attention_plan(q_lens, seq_lens, tables, BS)
            # Oracle: the torch baseline in float32 on the device (reference.paged_attention builds
            # its masks on the CPU, so it runs on CPU tensors only; --small checks the two agree).
            ref = torch_attention(query.float(), kv.float(), plan, scale)
            if self.small:
                cpu_ref = reference.paged_attention(query.float().cpu(), kv.float().cpu(), qsl.cpu(), lens.cpu(),
                                                    tables.cpu(), max_q, max_s, scale)
                assert rel_err(ref, cpu_ref) < 1e-5, "torch baseline disagrees with reference.paged_attention"
            nbytes = 2 * query.numel() * 2 + sum(seq_lens) * hkv * d * 2 * 2 + tables.numel() * 4
            flops = sum(4.0 * d * hq * sum(s - q + i + 1 for i in range(q)) for q, s in zip(q_lens, seq_lens))
            # Independent copies of the batch (>= 128 MB in all) for the graph timing.
            copies = [batch] + [make_batch(q_lens, seq_lens, hq, hkv, d, self.device)
                                for _ in range(min(31, (128 << 20) // nbytes))]
            calls = lambda cfg, dcfg: [  # noqa: E731
                lambda b=b: paged_attention_with_config(*b, None, cfg, dcfg) for b in copies]
            self.add("paged_attention", name,
                     lambda: paged_attention_with_config(*batch, None, config, dec_config),
                     lambda: torch_attention(query, kv, plan, scale), ref, nbytes, flops,
                     note=f"{pair_str(config, dec_config)}; torch = gather+SDPA", graph_fns=calls(config, dec_config))
            if sweep:
                for cfg, dcfg in config_variants(config, dec_config, max_q):
                    err = rel_err(paged_attention_with_config(*batch, None, cfg, dcfg), ref)
                    fns = calls(cfg, dcfg)
                    us = self.graph_us(fns) if self.device == "cuda" else self.time_us(fns[0])
                    label = pair_str(cfg, dcfg) + (" (default)" if (cfg, dcfg) == (config, dec_config) else "")
                    self.sweep.append((name, label, us, err))
            del batch, kv, copies

    # ------------------------------------------------------------- report
    def report(self) -> None:
        if self.sweep:
            print("\n## attention config sweep (median us per call from CUDA-graph replay; default marked *)")
            by_case: dict[str, list] = {}
            for case, cfg, us, err in self.sweep:
                by_case.setdefault(case, []).append((us, cfg, err))
            for case, entries in by_case.items():
                best = min(entries)[0]
                print(f"{case}:")
                for us, cfg, err in sorted(entries):
                    mark = "*" if cfg.endswith("(default)") else " "
                    print(f"  {mark} {us:9.1f} us  x{us / best:4.2f}  err {err:.1e}  {cfg}")
        print(f"\n## kernels vs torch reference ({device_name(self.device)}; copy bandwidth {self.copy_gbps:.0f} GB/s)")
        print("triton/torch us: one eager call (do_bench median, L2 flushed; includes host launch time where the GPU\n"
              "work is shorter). graph us: the triton call replayed from a CUDA graph, rotating over independent\n"
              "input sets (>= 128 MB in all) so L2 can't serve repeats. GB/s, %copy, TFLOP/s use the graph time.")
        print(f"{'kernel':<20} {'case':<30} {'triton us':>9} {'graph us':>8} {'torch us':>9} {'speedup':>8} {'MB':>8} "
              f"{'GB/s':>6} {'%copy':>6} {'TFLOP/s':>7} {'rel err':>8}")
        for r in self.rows:
            t = r.graph_us or r.triton_us
            gbps = r.bytes / (t * 1e-6) / 1e9
            torch_s = f"{r.torch_us:9.1f}" if r.torch_us else f"{'-':>9}"
            graph_s = f"{r.graph_us:8.1f}" if r.graph_us else f"{'-':>8}"
            speed = f"{r.torch_us / r.triton_us:7.1f}x" if r.torch_us else f"{'-':>8}"
            tflops = f"{r.flops / (t * 1e-6) / 1e12:7.1f}" if r.flops else f"{'-':>7}"
            print(f"{r.kernel:<20} {r.case:<30} {r.triton_us:9.1f} {graph_s} {torch_s} {speed} {r.bytes / 1e6:8.2f} "
                  f"{gbps:6.0f} {100 * gbps / self.copy_gbps:5.0f}% {tflops} {r.rel_err:8.1e}"
                  + (f"  {r.note}" if r.note else ""))
        bad = [f"{r.kernel} {r.case}" for r in self.rows if not r.rel_err < 1e-2]
        bad += [f"{case} {cfg}" for case, cfg, _, err in self.sweep if not err < 1e-2]
        print(f"\ncorrectness ({DTYPE}): {'ALL OK (rel err < 1e-2)' if not bad else f'{len(bad)} FAILED: {bad}'}")


# ----------------------------------------------------------------- helpers


def rel_err(out, ref) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def device_name(device: str) -> str:
    if device != "cuda":
        return "CPU interpreter"
    return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"


def config_str(c: AttentionConfig) -> str:
    return f"M{c.block_m} N{c.tile_n} w{c.num_warps} s{c.num_stages} seg{c.num_segments}"


def pair_str(c: AttentionConfig, dc: AttentionConfig | None) -> str:
    return config_str(c) + (f" + decodes[{config_str(dc)}]" if dc else "")


def config_variants(base: AttentionConfig, dec: AttentionConfig | None, max_query_len: int):
    """(config, decode_config) pairs to time, the default first."""
    if max_query_len <= 1:
        return [(c, None) for c in _variants(base, max_query_len)]
    pairs = [(c, dec) for c in _variants(base, max_query_len)]
    # Two launches for a mixed batch: decode rows with decode tiles, then the multi-token rows.
    pairs += [(AttentionConfig(64, 64, 4, 2), AttentionConfig(16, 64, 4, 2)),
              (AttentionConfig(64, 64, 4, 2), AttentionConfig(16, 32, 4, 3, num_segments=2))]
    return pairs


def _variants(base: AttentionConfig, max_query_len: int) -> list[AttentionConfig]:
    out = [base]
    if max_query_len <= 1:
        if base.num_segments > 1:
            half = max(2, base.num_segments // 2)
            out += [replace(base, num_stages=2), replace(base, num_stages=4), replace(base, num_warps=8),
                    replace(base, tile_n=64, num_segments=half), replace(base, tile_n=64),
                    replace(base, num_segments=half), replace(base, num_segments=min(64, 2 * base.num_segments)),
                    AttentionConfig(base.block_m, 64, 4, 2)]  # no split
        else:
            out += [replace(base, tile_n=32), replace(base, tile_n=128), replace(base, num_stages=3),
                    replace(base, num_stages=4), replace(base, num_warps=8),
                    replace(base, tile_n=32, num_stages=3, num_segments=2)]
    else:
        out += [replace(base, num_stages=3), replace(base, tile_n=32), AttentionConfig(64, 64, 4, 2),
                AttentionConfig(128, 64, 8, 2), AttentionConfig(128, 64, 8, 3), AttentionConfig(16, 64, 4, 2),
                AttentionConfig(16, 32, 4, 3), AttentionConfig(32, 64, 4, 2)]
    # Keep the default first; drop duplicates.
    seen, result = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            result.append(c)
    return result


def make_batch(q_lens, seq_lens, hq, hkv, d, device):
    """Random scattered block tables over a cache just large enough; random K/V and queries."""
    blocks = [math.ceil(s / BS) for s in seq_lens]
    num_blocks = sum(blocks) + 1
    perm = torch.randperm(num_blocks, device=device).int()
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=device)
    used = 0
    for b, n in enumerate(blocks):
        tables[b, :n] = perm[used : used + n]
        used += n
    kv = torch.randn(2, num_blocks, BS, hkv, d, device=device, dtype=DTYPE)
    query = torch.randn(sum(q_lens), hq, d, device=device, dtype=DTYPE)
    qsl = torch.tensor([0] + list(torch.cumsum(torch.tensor(q_lens), 0).tolist()), dtype=torch.int32, device=device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return query, kv, qsl, lens, tables, max(q_lens), max(seq_lens), d**-0.5


def torch_attention_plan(q_lens, seq_lens, tables, block_size) -> dict:
    """Index tensors for the torch baseline, built outside the timed region (no syncs inside)."""
    device = tables.device
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    dec = [b for b, q in enumerate(q_lens) if q == 1]
    plan: dict = {"prefills": []}
    if dec:
        max_len = max(seq_lens[b] for b in dec)
        nb = math.ceil(max_len / block_size)
        rows = torch.tensor(dec, device=device)
        lens = torch.tensor([seq_lens[b] for b in dec], device=device)
        plan["decode"] = (tables[rows, :nb].long(), max_len,
                          (torch.arange(max_len, device=device)[None, :] < lens[:, None])[:, None, None, :],
                          torch.tensor([starts[b] for b in dec], device=device))
    for b, q in enumerate(q_lens):
        if q > 1:
            s = seq_lens[b]
            nb = math.ceil(s / block_size)
            mask = torch.arange(s, device=device)[None, :] <= torch.arange(s - q, s, device=device)[:, None]
            plan["prefills"].append((starts[b], starts[b] + q, tables[b, :nb].long(), s, mask))
    return plan


def torch_attention(query, kv, plan, scale):
    """Eager PyTorch paged attention on the GPU (gather the pages, then SDPA): the peer."""
    out = torch.empty_like(query)
    if "decode" in plan:
        tables, max_len, mask, token_idx = plan["decode"]
        k, v = kv[:, tables].flatten(2, 3)[:, :, :max_len].transpose(2, 3).unbind(0)  # [R, Hkv, L, D]
        q = query[token_idx].unsqueeze(2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
        out[token_idx] = o.squeeze(2)
    for start, end, table, s, mask in plan["prefills"]:
        k, v = kv[:, table].flatten(1, 2)[:, :s].transpose(1, 2).unbind(0)  # [Hkv, L, D]
        q = query[start:end].transpose(0, 1)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes (with --device cpu)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the attention config sweep")
    parser.add_argument("--only", default="", help="comma list: copy,norm,silu,quant,rotary,kv,attn")
    parser.add_argument("--json", default="", help="also write every number to this file")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = parser.parse_args()
    global DTYPE
    DTYPE = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    torch.manual_seed(0)
    bench = Bench(args.device, args.small)
    parts = {"copy": bench.measure_copy, "norm": bench.norms, "silu": bench.silu, "quant": bench.quant,
             "rotary": bench.rotary,
             "kv": bench.kv_write, "attn": lambda: bench.attention(not args.no_sweep)}
    wanted = args.only.split(",") if args.only else list(parts)
    if "copy" not in wanted:
        wanted = ["copy", *wanted]
    for name in wanted:
        t0 = time.perf_counter()
        parts[name]()
        print(f"[{name} done in {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    bench.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(args.device), "copy_gbps": bench.copy_gbps,
                       "rows": [asdict(r) for r in bench.rows], "sweep": bench.sweep}, f, indent=1)
    ok = all(r.rel_err < 1e-2 for r in bench.rows) and all(s[3] < 1e-2 for s in bench.sweep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
