"""8-bit scaled GEMV against the quant references (CUDA, or TRITON_INTERPRET=1 on CPU), and its
dispatch from the W8 linear method."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import quant_reference as ref  # noqa: E402
from pagedlm.kernels import scaled_gemv as dispatch  # noqa: E402
from pagedlm.kernels.triton_gemv import GemvConfig
from pagedlm.kernels.triton_scaled_gemv import ScaledGemvConfig, scaled_gemv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's CPU interpreter computes on bf16 wrongly; fp16 activations there.
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16
# bf16 outputs: two accumulation orders may round a value to neighbouring bf16 numbers (2**-8).

CODES = [torch.int8, ref.FP8_DTYPE]
CONFIGS = [GemvConfig(32, 128, 1), GemvConfig(64, 128, 3), GemvConfig(16, 256, 2, 8),
           ScaledGemvConfig(16, 128, 1, fma=True), ScaledGemvConfig(8, 256, 2, fma=True)]


def _problem(m: int, n: int, k: int, code: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(DEVICE, DTYPE)
    wq, w_scale = ref.per_token_quant(torch.randn(n, k, generator=g).to(DEVICE), code)  # per output channel
    bias = torch.randn(n, generator=g).to(DEVICE, DTYPE)
    return x, wq, w_scale.reshape(1, -1), bias


def _rel(out: torch.Tensor, expect: torch.Tensor) -> float:
    return ((out.float() - expect.float()).norm() / expect.float().norm()).item()


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("config", CONFIGS)
def test_w8a8_per_token_and_static(code: torch.dtype, m: int, config: GemvConfig) -> None:
    """Quantized activations (per token, and a static per-tensor scale): the reference's math."""
    if getattr(config, "fma", False) and m > 4:
        pytest.skip("the FMA tiles take up to 4 rows")
    x, wq, w_scale, bias = _problem(m, 90, 512, code, m)
    a, a_scale = ref.per_token_quant(x, code)
    out = scaled_gemv(a, wq, a_scale, w_scale, DTYPE, bias, config)
    assert out.shape == (m, 90) and out.dtype == DTYPE
    assert _rel(out, ref.scaled_mm(a, wq.t(), a_scale, w_scale, DTYPE, bias)) < 1e-2
    static = torch.full((1, 1), 0.05, device=DEVICE)
    a, _ = ref.per_tensor_quant(x, code, static)
    assert _rel(scaled_gemv(a, wq, static, w_scale, DTYPE, None, config),
                ref.scaled_mm(a, wq.t(), static, w_scale, DTYPE)) < 1e-2


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("m,config", [(1, GemvConfig(32, 128, 2)), (5, GemvConfig(32, 128, 2)),
                                      (2, ScaledGemvConfig(16, 128, 2, fma=True))])
def test_weight_only(code: torch.dtype, m: int, config: GemvConfig) -> None:
    x, wq, w_scale, bias = _problem(m, 70, 256, code, 7 + m)
    out = scaled_gemv(x, wq, None, w_scale, DTYPE, bias, config)
    assert _rel(out, ref.weight_only_mm(x, wq.t(), w_scale, bias)) < 1e-2


def test_refusals() -> None:
    x, wq, w_scale, _ = _problem(17, 32, 256, torch.int8, 0)
    with pytest.raises(ValueError, match="M <= 16"):
        scaled_gemv(x, wq, None, w_scale, DTYPE)
    with pytest.raises(ValueError, match="at most 4 rows"):
        scaled_gemv(x[:5], wq, None, w_scale, DTYPE, None, ScaledGemvConfig(16, 128, 1, fma=True))
    with pytest.raises(ValueError, match="multiple of block_k"):
        scaled_gemv(x[:2, :200].contiguous(), wq[:, :200].contiguous(), None, w_scale, DTYPE)


@pytest.mark.skipif(DEVICE != "cuda", reason="the dispatch only runs on CUDA tensors")
def test_dispatch_decides_once_and_matches_the_gemm() -> None:
    x, wq, w_scale, bias = _problem(3, 4096, 4096, ref.FP8_DTYPE, 3)
    a, a_scale = ref.per_token_quant(x, ref.FP8_DTYPE)
    calls = []

    def gemm(a, a_scale, bias=None):
        calls.append(a.shape[0])
        return ref.scaled_mm(a, wq.t(), a_scale, w_scale, DTYPE, bias)

    dispatch._choice.clear()
    out = dispatch.scaled_gemv_or_none(a, wq, a_scale, w_scale, DTYPE, bias, gemm)
    key = next(iter(dispatch._choice))
    assert key[0] == 4 and len(dispatch._choice) == 1  # M=3 is decided for its bucket of 4 rows
    expect = gemm(a, a_scale, bias)
    if out is not None:  # the GEMV won: same numbers
        assert _rel(out, expect) < 1e-2
    n_calls = len(calls)
    dispatch.scaled_gemv_or_none(a, wq, a_scale, w_scale, DTYPE, bias, gemm)
    assert len(calls) == n_calls  # decided: no second timing


def test_native_dots_are_candidates_only_for_activation_codes() -> None:
    assert any(getattr(c, "native", False) for c in dispatch._candidates(4, 4096, True))
    assert not any(getattr(c, "native", False) for c in dispatch._candidates(4, 4096, False))
