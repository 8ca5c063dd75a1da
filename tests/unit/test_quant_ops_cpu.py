"""The CUDA-path GEMM wrappers (row padding, scale broadcasting, bias, output dtype) run on CPU
too, where torch provides ``_scaled_mm`` / ``_int_mm``: each against its reference; and the
start-up probes accept the references, so a healthy kernel is never dropped by a broken probe."""

from __future__ import annotations

import pytest
import torch

from pagedlm.kernels import quant_cuda, quant_reference as ref
from pagedlm.kernels.quant_ops import REFERENCE_OPS, _probe_gemm, _probe_quant, gemm_for, quant_ops

CPU = torch.device("cpu")
FP8 = ref.FP8_DTYPE


def problem(m: int, dtype: torch.dtype, static: bool):
    g = torch.Generator().manual_seed(m)
    x, w = torch.randn(m, 64, generator=g), torch.randn(48, 64, generator=g) * 0.1
    a, sa = ref.per_tensor_quant(x, dtype) if static else ref.per_token_quant(x, dtype)
    wq, sw = ref.per_token_quant(w, dtype)
    return a, wq.t(), sa, sw.reshape(1, -1), torch.randn(48, generator=g)


@pytest.mark.parametrize("m", [1, 16, 17, 40])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("kernel,dtype", [(quant_cuda.int8_scaled_mm, torch.int8),
                                          (quant_cuda.fp8_scaled_mm_rowwise, FP8),
                                          (quant_cuda.fp8_scaled_mm_unit, FP8)],
                         ids=["int8", "fp8_rowwise", "fp8_unit"])
def test_cuda_path_wrappers_match_reference_on_cpu(kernel, dtype, m: int, static: bool) -> None:
    a, b, sa, sb, bias = problem(m, dtype, static)
    try:
        out = kernel(a, b, sa, sb, torch.float32, bias)
    except (RuntimeError, NotImplementedError) as exc:  # this torch build lacks the CPU kernel
        pytest.skip(f"{kernel.__name__} not on CPU here: {exc}")
    expect = ref.scaled_mm(a, b, sa, sb, torch.float32, bias)
    assert out.shape == (m, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, expect, rtol=2e-2, atol=2e-2 * expect.abs().max().item())


def test_probes_accept_the_references_and_reject_a_wrong_kernel() -> None:
    assert _probe_gemm(ref.scaled_mm, FP8, CPU) and _probe_gemm(ref.scaled_mm, torch.int8, CPU)
    assert _probe_quant(ref.per_token_quant, torch.int8, CPU) and _probe_quant(ref.per_token_quant, FP8, CPU)
    assert not _probe_gemm(lambda *args: ref.scaled_mm(*args) * 1.1, torch.int8, CPU)

    def off_by_two(x, dtype):
        q, s = ref.per_token_quant(x, dtype)
        return (q.to(torch.int16) + 2).clamp(-128, 127).to(dtype), s
    assert not _probe_quant(off_by_two, torch.int8, CPU)


def test_cpu_uses_the_references_and_unaligned_layers_fall_back() -> None:
    assert quant_ops(CPU) is REFERENCE_OPS
    fast = REFERENCE_OPS.__class__(*[getattr(REFERENCE_OPS, f) for f in ("per_token_quant", "per_tensor_quant")],
                                   quant_cuda.fp8_scaled_mm_rowwise, quant_cuda.int8_scaled_mm,
                                   quant_cuda.weight_only_mm, True)
    assert gemm_for(fast, True, 4096, 6144) is quant_cuda.fp8_scaled_mm_rowwise
    assert gemm_for(fast, False, 4096, 6144) is quant_cuda.int8_scaled_mm
    assert gemm_for(fast, True, 4096, 6152) is ref.scaled_mm  # N not a multiple of 16
    assert gemm_for(fast, False, 4100, 6144) is ref.scaled_mm
