"""Triton split-K GEMV against F.linear (CUDA, or TRITON_INTERPRET=1 on CPU), and its dispatch."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels.gemv import gemv_linear, gemv_reference  # noqa: E402
from pagedlm.kernels.triton_gemv import GemvConfig, gemv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's CPU interpreter computes tl.dot on bf16 wrongly; fp16 there.
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16


@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("n,k,config", [(100, 300, GemvConfig(32, 128, 1)), (64, 1000, GemvConfig(16, 128, 4)),
                                        (257, 512, GemvConfig(64, 256, 2, 8)), (48, 96, GemvConfig(16, 128, 8))])
def test_gemv_matches_linear(m: int, n: int, k: int, config: GemvConfig) -> None:
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g).to(DEVICE, DTYPE)
    w = torch.randn(n, k, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(n, generator=g).to(DEVICE, DTYPE)
    ref = gemv_reference(x.float(), w.float(), bias.float())
    out = gemv(x, w, bias, config)
    assert out.shape == (m, n) and out.dtype == DTYPE
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


def test_gemv_refuses_wide_batches() -> None:
    with pytest.raises(ValueError, match="M <= 16"):
        gemv(torch.zeros(17, 32, device=DEVICE, dtype=DTYPE), torch.zeros(16, 32, device=DEVICE, dtype=DTYPE))


@pytest.mark.skipif(DEVICE != "cuda", reason="the dispatch times kernels on a GPU")
def test_dispatch_is_right_or_declines() -> None:
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16)
    out = gemv_linear(x, w)
    if out is not None:  # the GEMV won for this shape: it must agree with cuBLAS
        ref = torch.nn.functional.linear(x, w).float()
        assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    assert gemv_linear(torch.randn(32, 4096, device="cuda", dtype=torch.bfloat16), w) is None  # M > 8


def test_unquantized_linear_falls_back_off_gpu_or_for_wide_batches() -> None:
    from pagedlm.kernels.gemv import unquantized_linear

    x, w = torch.randn(12, 32, dtype=torch.float32), torch.randn(16, 32, dtype=torch.float32)
    torch.testing.assert_close(unquantized_linear(x, w), torch.nn.functional.linear(x, w))  # CPU/fp32: F.linear
