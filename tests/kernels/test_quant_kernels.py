"""8-bit GEMM and activation-quantization kernels against their PyTorch references
(pagedlm.kernels.quant_reference), and the start-up selection picking the fast kernels on
this card. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from pagedlm.kernels import quant_cuda, quant_reference as ref  # noqa: E402
from pagedlm.kernels.quant_ops import fp8_gemm_supported, quant_ops  # noqa: E402

DEVICE = torch.device("cuda")
CAPABILITY = torch.cuda.get_device_capability()
FP8 = ref.FP8_DTYPE
ROWS = [1, 5, 16, 17, 64, 300]


def rel_err(out: torch.Tensor, expect: torch.Tensor) -> float:
    out, expect = out.float(), expect.float()
    return ((out - expect).norm() / expect.norm().clamp_min(1e-12)).item()


def problem(m: int, k: int, n: int, dtype: torch.dtype, static: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * 0.05).to(DEVICE, torch.bfloat16)
    if static:
        a, scale_a = ref.per_tensor_quant(x, dtype)
    else:
        a, scale_a = ref.per_token_quant(x, dtype)
    wq, w_scale = ref.per_token_quant(w, dtype)  # per output channel
    bias = torch.randn(n, generator=g).to(DEVICE, torch.bfloat16)
    return a, wq.t(), scale_a, w_scale.reshape(1, -1).contiguous(), bias


@pytest.mark.skipif(CAPABILITY < (9, 0), reason="row-wise fp8 scaling needs Hopper")
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("static", [False, True])
def test_fp8_rowwise_matches_reference(m: int, static: bool) -> None:
    a, b, sa, sb, bias = problem(m, 4096, 1536, FP8, static)
    for with_bias in (None, bias):
        out = quant_cuda.fp8_scaled_mm_rowwise(a, b, sa, sb, torch.bfloat16, with_bias)
        assert out.dtype == torch.bfloat16 and out.shape == (m, 1536)
        assert rel_err(out, ref.scaled_mm(a, b, sa, sb, torch.float32, with_bias)) < 1e-2


@pytest.mark.skipif(CAPABILITY < (8, 9), reason="fp8 GEMM needs compute capability 8.9")
@pytest.mark.parametrize("m", [1, 33])
def test_fp8_unit_scales_matches_reference(m: int) -> None:
    a, b, sa, sb, bias = problem(m, 1024, 512, FP8)
    out = quant_cuda.fp8_scaled_mm_unit(a, b, sa, sb, torch.float16, bias)
    assert out.dtype == torch.float16
    assert rel_err(out, ref.scaled_mm(a, b, sa, sb, torch.float32, bias)) < 1e-2


@pytest.mark.parametrize("m", ROWS)
def test_int8_matches_reference(m: int) -> None:
    a, b, sa, sb, bias = problem(m, 4096, 1536, torch.int8)
    out = quant_cuda.int8_scaled_mm(a, b, sa, sb, torch.bfloat16, bias)
    assert out.shape == (m, 1536)
    assert rel_err(out, ref.scaled_mm(a, b, sa, sb, torch.float32, bias)) < 1e-2


@pytest.mark.parametrize("dtype", [FP8, torch.int8])
def test_weight_only_matches_reference(dtype: torch.dtype) -> None:
    _, b, _, sb, bias = problem(3, 1024, 512, dtype)
    x = torch.randn(3, 1024, device=DEVICE, dtype=torch.bfloat16)
    assert rel_err(quant_cuda.weight_only_mm(x, b, sb, bias), ref.weight_only_mm(x.float(), b, sb, bias)) < 1e-2


@pytest.mark.parametrize("dtype", [FP8, torch.int8])
@pytest.mark.parametrize("shape", [(1, 4096), (37, 14336), (300, 64), (4, 4097)])
def test_triton_per_token_quant(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    from pagedlm.kernels import triton_quant

    x = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16) * 3
    x[0] = 0  # an all-zero row: the minimum scale, zero codes
    q, scale = triton_quant.per_token_quant(x, dtype)
    rq, rscale = ref.per_token_quant(x, dtype)
    assert q.dtype == dtype and scale.shape == (shape[0], 1)
    torch.testing.assert_close(scale, rscale, rtol=1e-6, atol=0)
    if dtype == torch.int8:
        assert (q.int() - rq.int()).abs().max().item() <= 1  # ties of x / scale computed two ways
    else:
        assert rel_err(q.float() * scale, rq.float() * rscale) < 1e-3


def test_start_up_selection_picks_the_fast_kernels() -> None:
    from pagedlm.kernels import triton_quant

    ops = quant_ops(DEVICE)
    assert ops.fp8_gemm == fp8_gemm_supported(DEVICE)
    assert ops.int8_scaled_mm is quant_cuda.int8_scaled_mm
    assert ops.per_token_impl[torch.int8] is triton_quant.per_token_quant
    if ops.fp8_gemm:
        assert ops.per_token_impl[FP8] is triton_quant.per_token_quant
    if CAPABILITY >= (9, 0):
        assert ops.fp8_scaled_mm is quant_cuda.fp8_scaled_mm_rowwise
