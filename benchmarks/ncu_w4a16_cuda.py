"""A driver for Nsight Compute on the CUDA W4A16 kernel: a few launches of one Llama-3.1-8B layer.

    ncu --kernel-name regex:w4a16_mma --launch-skip 3 --launch-count 1 --section ... \
        python3 benchmarks/ncu_w4a16_cuda.py gate_up 1 4 1 1     # layer, M, warps, unroll, split
"""
import sys

import torch

from pagedlm.kernels import cuda_w4a16
from pagedlm.kernels.tickets import ticket_counters

shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
name, m, warps, unroll, split = sys.argv[1], *map(int, sys.argv[2:6])
k, n = shapes[name]
dev = torch.device("cuda")
q = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
s = (torch.rand(k // 128, n, device=dev) * 0.01).bfloat16()
z = torch.randint(0, 16, (k // 128, n), device=dev).bfloat16()
x = torch.randn(m, k, device=dev).bfloat16()
c = ticket_counters(dev, "wna16")
for _ in range(6):
    cuda_w4a16.mma(x, q, s, z, 128, warps, unroll, split, c)
torch.cuda.synchronize()
