"""The two ceilings on this card: device-to-device copy bandwidth and bf16 matmul rate."""

from __future__ import annotations

import torch


def measure_floors() -> dict:
    from triton.testing import do_bench

    n = 1 << 30  # 1 GiB of bf16 read, 1 GiB written
    src = torch.randn(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    copy_bw = 2 * src.numel() * 2 / (ms * 1e-3)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    tflops = 2 * 8192**3 / (ms * 1e-3) / 1e12
    del src, dst, a, b
    torch.cuda.empty_cache()
    return {"copy_bytes_per_s": copy_bw, "bf16_tflops": tflops, "card": torch.cuda.get_device_name()}


if __name__ == "__main__":
    f = measure_floors()
    print(f"{f['card']}: copy {f['copy_bytes_per_s'] / 1e12:.2f} TB/s (read+write), bf16 matmul {f['bf16_tflops']:.0f} TFLOP/s")
