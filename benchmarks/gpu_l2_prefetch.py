"""Does an L2 bulk prefetch of the next GEMV's weight, issued before a latency-bound kernel
(the batch-1 split-K decode attention), make that GEMV faster? Chains of kernels timed as the
tuners time them (graph replay, L2 flushed). Hopper or later (``cp.async.bulk.prefetch``).

    PYTHONPATH=. python3 benchmarks/gpu_l2_prefetch.py
"""

import torch
import triton
import triton.language as tl

from benchmarks.kernels_bench import make_batch
from pagedlm.kernels import triton_attention as ta
from pagedlm.kernels.gemv import unquantized_linear
from pagedlm.kernels.timing import decode_time_ms

CHUNK = 128 << 10


@triton.jit
def _prefetch_l2(ptr, nbytes, CHUNK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * CHUNK
    size = tl.minimum(nbytes - start, CHUNK).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr + start, size], dtype=tl.int32, is_pure=False, pack=1)


def prefetch(t: torch.Tensor) -> None:
    nbytes = t.numel() * t.element_size()
    _prefetch_l2[(triton.cdiv(nbytes, CHUNK),)](t, nbytes, CHUNK=CHUNK, num_warps=1)


def main() -> None:
    dev = torch.device("cuda")
    batch = make_batch([1], [768], 32, 8, 128, "cuda")
    cfg = ta.default_config(1, 32, 8, 128, 1, 768, dev, num_tokens=1)
    attn = lambda: ta.paged_attention_with_config(*batch, None, cfg, None)  # noqa: E731
    rows = []
    for name, (n, k), dtype in (("o-sized bf16 2048x4096 (16.8 MB)", (2048, 4096), torch.bfloat16),
                                ("o bf16 4096x4096 (33.5 MB)", (4096, 4096), torch.bfloat16)):
        w = torch.randn(n, k, device=dev, dtype=dtype) * 0.02
        x = torch.randn(1, k, device=dev, dtype=dtype)
        ref = unquantized_linear(x, w)  # tunes the GEMV once
        assert torch.equal(unquantized_linear(x, w), ref)
        prefetch(w)
        torch.cuda.synchronize()
        t = {
            "attn": decode_time_ms(attn, dev),
            "gemv": decode_time_ms(lambda: unquantized_linear(x, w), dev),
            "prefetch": decode_time_ms(lambda: prefetch(w), dev),
            "prefetch+gemv": decode_time_ms(lambda: (prefetch(w), unquantized_linear(x, w)), dev),
            "attn+gemv": decode_time_ms(lambda: (attn(), unquantized_linear(x, w)), dev),
            "prefetch+attn+gemv": decode_time_ms(lambda: (prefetch(w), attn(), unquantized_linear(x, w)), dev),
        }
        floor = n * k * 2 / 4.24e12 * 1e6
        row = f"{name}: floor {floor:.1f} us | " + " | ".join(f"{a} {v * 1e3:.1f}" for a, v in t.items())
        print(row, flush=True)
        rows.append(row)
    print("\nTABLE\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
