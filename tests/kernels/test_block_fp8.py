"""Block-wise fp8 (W8A16) kernels against the dequantized product (CUDA, or TRITON_INTERPRET=1
on CPU): the one-launch GEMV with block scales, the tiled block-scaled GEMM, and the dispatch
that picks one of them or the layer's dequantize + GEMM per M bucket."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import block_fp8_linear as dispatch  # noqa: E402
from pagedlm.kernels import quant_reference as ref  # noqa: E402
from pagedlm.kernels.triton_block_fp8 import BlockFp8GemmConfig, block_fp8_gemm  # noqa: E402
from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig, fits_block, fused_gemv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 is wrong


def _problem(n: int, k: int, block: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp8 codes over the e4m3 range, one positive scale per block (partial last blocks
    included), and the dequantized float32 weight."""
    g = torch.Generator().manual_seed(seed)
    codes = (torch.rand(n, k, generator=g) * 400 - 200).to(ref.FP8_DTYPE)
    scale = torch.rand(-(-n // block[0]), -(-k // block[1]), generator=g) * 1e-3 + 1e-4
    weight = codes.float() * scale.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]
    return codes.to(DEVICE), scale.to(DEVICE), weight.to(DEVICE)


def _rel(out: torch.Tensor, expect: torch.Tensor) -> float:
    return ((out.float() - expect.float()).norm() / expect.float().norm()).item()


@pytest.mark.parametrize("m,config", [(1, FusedGemvConfig(4, 256, 1, chunk=16)),
                                      (1, FusedGemvConfig(2, 256, 2, chunk=16)), (3, FusedGemvConfig(8, 128, 2)),
                                      (5, FusedGemvConfig(16, 128, 1, dot=True))])
def test_gemv_matches_the_dequantized_product(m: int, config: FusedGemvConfig) -> None:
    """The one-launch GEMV folds each program's block row of scales into the activations;
    64 x 128 blocks, a partial last block row (N = 150), split-K, a bias."""
    block = (64, 128)
    codes, scale, weight = _problem(150, 512, block, m)
    g = torch.Generator().manual_seed(m + 1)
    x = torch.randn(m, 512, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(150, generator=g).to(DEVICE, DTYPE)
    out = fused_gemv(x, codes, None, None, DTYPE, bias, config, block_scale=scale, block=block)
    expect = torch.nn.functional.linear(x.float(), weight, bias.float())
    assert out.shape == (m, 150) and _rel(out, expect) < 1e-2
    # the block scales matter: the same codes under per-row scales give another product
    row_scales = scale[:, :1].repeat_interleave(64, 0)[:150].reshape(1, -1)
    assert _rel(fused_gemv(x, codes, None, row_scales, DTYPE, bias, config), expect) > 0.05


def test_gemv_refuses_configs_that_straddle_block_rows() -> None:
    codes, scale, _ = _problem(128, 512, (32, 128), 3)
    x = torch.zeros(1, 512, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="block-wise fp8"):
        fused_gemv(x, codes, None, None, DTYPE, None, FusedGemvConfig(64, 128, 1), block_scale=scale, block=(32, 128))
    # one row's runs of products are scaled per run: a run must not cross a block boundary
    assert fits_block(FusedGemvConfig(2, 256, chunk=16), (32, 128))
    assert not fits_block(FusedGemvConfig(2, 256, chunk=16), (32, 8))


@pytest.mark.parametrize("m,config", [(16, BlockFp8GemmConfig(16, 64, 4, 2)), (37, BlockFp8GemmConfig(32, 128, 4, 3)),
                                      (70, BlockFp8GemmConfig(64, 64, 4, 2))])
def test_tiled_gemm_matches_the_dequantized_product(m: int, config: BlockFp8GemmConfig) -> None:
    """Ragged M, N (150: a partial 64-row block) and K (320: two and a half 128-wide blocks),
    with a bias; every block's own scale applied (per-row scales give another product)."""
    block = (64, 128)
    codes, scale, weight = _problem(150, 320, block, m)
    g = torch.Generator().manual_seed(m + 1)
    x = torch.randn(m, 320, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(150, generator=g).to(DEVICE, DTYPE)
    out = block_fp8_gemm(x, codes, scale, block, bias, config)
    expect = torch.nn.functional.linear(x.float(), weight, bias.float())
    assert out.shape == (m, 150) and out.dtype == DTYPE
    assert _rel(out, expect) < 1e-2
    first_column_scales = scale[:, :1].expand_as(scale).contiguous()
    assert _rel(block_fp8_gemm(x, codes, first_column_scales, block, bias, config), expect) > 0.05


def test_tiled_gemm_refuses_what_it_cannot_do() -> None:
    codes, scale, _ = _problem(128, 256, (128, 128), 0)
    x = torch.zeros(16, 256, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="16-bit x"):
        block_fp8_gemm(x.float(), codes, scale, (128, 128))
    with pytest.raises(ValueError, match="scales"):
        block_fp8_gemm(x, codes, scale[:, :1].contiguous(), (128, 128))
    with pytest.raises(ValueError, match="power of two"):
        block_fp8_gemm(x, codes, torch.ones(1, 256 // 96 + 1, device=DEVICE), (128, 96))


def test_dispatch_by_bucket() -> None:
    """On CUDA the choice is made once per bucket of rows (3 -> 4 through the GEMV candidates,
    20 -> 32 through the tiled ones) and, where a kernel won, agrees with dequantize + GEMM;
    one row of an 8B qkv layer must take a kernel (it reads 25 MB of fp8 codes against the
    baseline's 126 MB). CPU tensors and batches past 1,024 rows take the layer's own product."""
    block = (128, 128)
    codes, scale, weight = _problem(6144, 4096, block, 9)
    calls = []

    def baseline(a):
        calls.append(a.shape[0])
        return torch.nn.functional.linear(a, weight.to(a.dtype))

    x = torch.randn(1025, 4096, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
    assert dispatch.block_fp8_linear(x, codes, scale, block, None, baseline) is None  # past the buckets
    if DEVICE != "cuda":
        assert dispatch.block_fp8_linear(x[:1], codes, scale, block, None, baseline) is None
        return
    dispatch._choice.clear()
    for m, bucket in ((3, 4), (20, 32)):
        out = dispatch.block_fp8_linear(x[:m], codes, scale, block, None, baseline)
        assert (bucket, 6144, 4096, DTYPE, 128, 128) in dispatch._choice
        if out is not None:
            assert _rel(out, torch.nn.functional.linear(x[:m].float(), weight)) < 1e-2
        n_calls = len(calls)
        dispatch.block_fp8_linear(x[:m], codes, scale, block, None, baseline)
        assert len(calls) == n_calls  # decided: no second timing
    assert dispatch.block_fp8_linear(x[:1], codes, scale, block, None, baseline) is not None
