"""Shared by the CUDA C++ and CUTLASS int4 kernel tests: a random 4-bit layer in the internal
layout on the GPU, and the relative error of a product against its float32 reference."""

from __future__ import annotations

import torch

from pagedlm.kernels import wna16_reference


def int4_layer(k: int, n: int, group_size: int, seed: int):
    """(qweight, scales, zeros) on CUDA: random codes and zero points, small bf16 scales."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (k, n), generator=g)
    scales = (torch.rand(k // group_size, n, generator=g) * 0.01 + 0.001).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (k // group_size, n), generator=g).to(torch.bfloat16)
    qweight = wna16_reference.pack_internal(codes, 4, group_size)
    return qweight.cuda(), scales.cuda(), zeros.cuda()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()
