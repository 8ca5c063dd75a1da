"""One-launch GEMV (pagedlm.kernels.triton_gemv_fused) against the references (CUDA, or
TRITON_INTERPRET=1 on CPU): 16-bit and 8-bit weights, scales, bias, split-K with the in-kernel
reduction (the same bits launch after launch and inside a CUDA graph)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import quant_reference as ref  # noqa: E402
from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig, fused_gemv, quick_configs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 is wrong
CONFIGS = [FusedGemvConfig(16, 128, 1), FusedGemvConfig(8, 128, 4), FusedGemvConfig(4, 256, 2, 8),
           FusedGemvConfig(32, 128, 2, dot=True)]


def _rel(out: torch.Tensor, expect: torch.Tensor) -> float:
    return ((out.float() - expect.float()).norm() / expect.float().norm()).item()


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("config", CONFIGS)
def test_16bit_weights_match_linear(m: int, config: FusedGemvConfig) -> None:
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, 1024, generator=g).to(DEVICE, DTYPE)
    w = torch.randn(90, 1024, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(90, generator=g).to(DEVICE, DTYPE)
    out = fused_gemv(x, w, None, None, DTYPE, bias, config)
    assert out.shape == (m, 90) and out.dtype == DTYPE
    assert _rel(out, torch.nn.functional.linear(x.float(), w.float(), bias.float())) < 1e-2
    again = fused_gemv(x, w, None, None, DTYPE, bias, config)  # the counters were reset by the last launch
    assert torch.equal(out, again)


@pytest.mark.parametrize("code", [torch.int8, ref.FP8_DTYPE])
@pytest.mark.parametrize("config", CONFIGS)
def test_8bit_codes_match_scaled_mm(code: torch.dtype, config: FusedGemvConfig) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 512, generator=g).to(DEVICE, DTYPE)
    wq, w_scale = ref.per_token_quant(torch.randn(70, 512, generator=g).to(DEVICE), code)
    w_scale = w_scale.reshape(1, -1)
    a, a_scale = ref.per_token_quant(x, code)
    out = fused_gemv(a, wq, a_scale, w_scale, DTYPE, None, config)
    assert _rel(out, ref.scaled_mm(a, wq.t(), a_scale, w_scale, DTYPE)) < 1e-2
    # W8A16: 16-bit activations against the 8-bit weight
    assert _rel(fused_gemv(x, wq, None, w_scale, DTYPE, None, config),
                ref.weight_only_mm(x, wq.t(), w_scale)) < 1e-2


@pytest.mark.skipif(DEVICE != "cuda", reason="8-bit tensor-core dots need a GPU")
@pytest.mark.parametrize("code", [torch.int8, ref.FP8_DTYPE])
def test_native_8bit_dots_match_scaled_mm(code: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 512, generator=g).to(DEVICE, DTYPE)
    wq, w_scale = ref.per_token_quant(torch.randn(40, 512, generator=g).to(DEVICE), code)
    a, a_scale = ref.per_token_quant(x, code)
    for config in (FusedGemvConfig(32, 128, 1, dot=True, native=True), FusedGemvConfig(16, 256, 2, dot=True, native=True)):
        out = fused_gemv(a, wq, a_scale, w_scale.reshape(1, -1), DTYPE, None, config)
        assert _rel(out, ref.scaled_mm(a, wq.t(), a_scale, w_scale.reshape(1, -1), DTYPE)) < 1e-2


@pytest.mark.parametrize("config", [FusedGemvConfig(4, 256, 1, chunk=8), FusedGemvConfig(8, 128, 4, chunk=16)])
def test_one_row_chunked_sums_match_the_references(config: FusedGemvConfig) -> None:
    """The chunked tiles (runs of products summed inside each thread) give the references'
    results for 16-bit weights with a bias, 8-bit codes (W8A8) and 8-bit weights on 16-bit
    activations (W8A16); split-K through the tickets."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 1024, generator=g).to(DEVICE, DTYPE)
    w = torch.randn(90, 1024, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(90, generator=g).to(DEVICE, DTYPE)
    out = fused_gemv(x, w, None, None, DTYPE, bias, config)
    assert _rel(out, torch.nn.functional.linear(x.float(), w.float(), bias.float())) < 1e-2
    for code in (torch.int8, ref.FP8_DTYPE):
        wq, w_scale = ref.per_token_quant(torch.randn(70, 1024, generator=g).to(DEVICE), code)
        w_scale = w_scale.reshape(1, -1)
        a, a_scale = ref.per_token_quant(x, code)
        assert _rel(fused_gemv(a, wq, a_scale, w_scale, DTYPE, None, config),
                    ref.scaled_mm(a, wq.t(), a_scale, w_scale, DTYPE)) < 1e-2
        assert _rel(fused_gemv(x, wq, None, w_scale, DTYPE, None, config),
                    ref.weight_only_mm(x, wq.t(), w_scale)) < 1e-2


def test_refuses_what_it_cannot_do() -> None:
    x, w = torch.zeros(9, 512, device=DEVICE, dtype=DTYPE), torch.zeros(16, 512, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="M <= 8"):
        fused_gemv(x, w, None, None, DTYPE)
    with pytest.raises(ValueError, match="native config"):
        fused_gemv(x[:1], w, None, None, DTYPE, config=FusedGemvConfig(32, 128, 1, dot=True, native=True))
    with pytest.raises(ValueError, match="multiple of 1024"):
        fused_gemv(x[:1], w, None, None, DTYPE, config=FusedGemvConfig(16, 256, 4))
    with pytest.raises(ValueError, match="chunk config"):
        fused_gemv(x[:2], w, None, None, DTYPE, config=FusedGemvConfig(4, 256, 1, chunk=8))
    with pytest.raises(ValueError, match="chunk config"):
        fused_gemv(x[:1], w, None, None, DTYPE, config=FusedGemvConfig(32, 128, 1, dot=True, chunk=8))


def test_quick_configs_fit_every_bucket() -> None:
    for m in range(1, 9):
        for eight_bit in (False, True):
            configs = quick_configs(m, eight_bit)
            assert configs and all(c.block_k * c.split_k <= 4096 for c in configs)
            # chunked tiles only for one row, and sized to one 16-byte load per run
            assert all(c.chunk == 0 for c in configs) if m > 1 else \
                {c.chunk for c in configs if c.chunk} == {16 if eight_bit else 8}
            assert all(not c.native for c in configs) or eight_bit


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
def test_split_k_in_a_cuda_graph_replays_exactly() -> None:
    """The ticket counters are left at zero by every launch, so replays agree bit for bit."""
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    config = FusedGemvConfig(16, 256, 8)
    expect = fused_gemv(x, w, None, None, torch.bfloat16, None, config)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_gemv(x, w, None, None, torch.bfloat16, None, config)
    for _ in range(5):
        graph.replay()
        assert torch.equal(out, expect)
