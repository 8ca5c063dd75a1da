"""The CPU linear (oneDNN's float32 GEMM) against F.linear, and when it is taken."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedlm.kernels import cpu_linear as cl
from pagedlm.kernels.gemv import unquantized_linear

pytestmark = pytest.mark.skipif(not cl._ONEDNN, reason="this torch build has no oneDNN")


@pytest.mark.parametrize("shape", [(0, 48), (1, 48), (7, 48), (3, 5, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_linear_equals_f_linear(shape, with_bias, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=g), torch.randn(80, 48, generator=g)
    bias = torch.randn(80, generator=g) if with_bias else None
    expect = F.linear(x, w, bias)
    monkeypatch.setattr(cl.F, "linear", lambda *a: pytest.fail("took F.linear"))
    with torch.inference_mode():
        out = unquantized_linear(x, w, bias)
        sliced = cl.cpu_linear(x, w[16:48], None if bias is None else bias[16:48])  # a row shard: a view
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sliced, expect[..., 16:48], rtol=1e-5, atol=1e-5)


def test_cpu_linear_non_contiguous_input() -> None:
    x, w = torch.randn(6, 96)[:, ::2], torch.randn(10, 48)
    with torch.inference_mode():
        torch.testing.assert_close(cl.cpu_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_cpu_linear_leaves_other_cases_to_f_linear() -> None:
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    assert not cl.applies(x, w, None)  # autograd on: F.linear (oneDNN's op has no backward here)
    with torch.inference_mode():
        assert cl.applies(x, w, None)
        assert not cl.applies(x.bfloat16(), w.bfloat16(), None)
        assert not cl.applies(x[0], w, None)  # 1-D input
        torch.testing.assert_close(unquantized_linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))
