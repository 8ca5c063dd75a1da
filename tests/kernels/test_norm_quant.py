"""RMSNorm / fused add + RMSNorm with per-token 8-bit output in one launch, against
the two launches they replace (CUDA, or TRITON_INTERPRET=1 on CPU): the same bytes."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import quant_reference as ref  # noqa: E402
from pagedlm.kernels import reference  # noqa: E402
from pagedlm.kernels.triton_norm import (  # noqa: E402
    fused_add_rms_norm,
    fused_add_rms_norm_quant,
    rms_norm,
    rms_norm_quant,
)
from pagedlm.kernels.triton_quant import per_token_quant  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 is wrong
CODES = [torch.int8, ref.FP8_DTYPE]


def _inputs(rows: int, hidden: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=g).to(DEVICE, DTYPE)
    residual = torch.randn(rows, hidden, generator=g).to(DEVICE, DTYPE)
    weight = (torch.rand(hidden, generator=g) + 0.5).to(DEVICE, DTYPE)
    x[0, 3] = 30.0  # one outlier sets row 0's scale
    return x, residual, weight


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.element_size() == 1 else torch.equal(a, b)


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("rows", [1, 5])
def test_norms_quantize_as_the_two_launches(code: torch.dtype, rows: int) -> None:
    x, residual, weight = _inputs(rows, 320, rows)
    codes, scale = rms_norm_quant(x, weight, 1e-6, code)
    want_codes, want_scale = per_token_quant(rms_norm(x, weight, 1e-6), code)
    assert _same(codes, want_codes) and torch.equal(scale, want_scale)
    codes, scale, new_residual = fused_add_rms_norm_quant(x, residual, weight, 1e-6, code)
    normed, want_residual = fused_add_rms_norm(x, residual, weight, 1e-6)
    want_codes, want_scale = per_token_quant(normed, code)
    assert _same(codes, want_codes) and torch.equal(scale, want_scale) and torch.equal(new_residual, want_residual)


def test_reference_ops_are_the_op_then_the_quantizer() -> None:
    x, residual, weight = _inputs(2, 64, 1)
    x, residual, weight = x.float().cpu(), residual.float().cpu(), weight.float().cpu()
    codes, scale, new_residual = reference.fused_add_rms_norm_quant(x, residual, weight, 1e-6, torch.int8)
    normed, want_residual = reference.fused_add_rms_norm(x, residual, weight, 1e-6)
    want_codes, want_scale = ref.per_token_quant(normed, torch.int8)
    assert torch.equal(codes, want_codes) and torch.equal(scale, want_scale) and torch.equal(new_residual, want_residual)


@pytest.mark.parametrize("code", [torch.int8, pytest.param(ref.FP8_DTYPE, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="the interpreter's float -> fp8 cast is wrong for some values (32.0 becomes 16.0)"))])
@pytest.mark.parametrize("dtype", [DTYPE, torch.float32])
def test_per_token_quant_codes_are_the_ieee_quotients(code: torch.dtype, dtype: torch.dtype) -> None:
    """The Triton quantizer divides by the row's scale without a division per element (a
    reciprocal and a Markstein correction): the codes must still be exactly torch's x / scale,
    rounded, over rows whose magnitudes span six decades."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 1000, generator=g) * 10 ** (torch.rand(64, 1, generator=g) * 6 - 3)
    x = x.to(DEVICE, dtype)
    codes, scale = per_token_quant(x, code)
    want_codes, want_scale = ref.per_token_quant(x, code)
    assert torch.equal(scale, want_scale) and _same(codes, want_codes)
