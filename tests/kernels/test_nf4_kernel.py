"""bitsandbytes 4-bit kernels (pagedlm.kernels.triton_nf4: the tiled GEMM, the one-row GEMV,
the dequantization) against the PyTorch dequantization (CUDA, or TRITON_INTERPRET=1 on CPU),
and the dispatch that picks among them per bucket of rows."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import bnb_linear as dispatch  # noqa: E402
from pagedlm.kernels.triton_nf4 import Nf4GemmConfig, Nf4GemvConfig, nf4_dequantize, nf4_gemm, nf4_gemv  # noqa: E402
from pagedlm.layers.quantization.bitsandbytes import (  # noqa: E402
    TABLES,
    byte_table,
    dequantize_4bit,
    quantize_4bit_rows,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 is wrong


def _layer(n: int, k: int, quant_type: str, blocksize: int, seed: int):
    """(codes, absmax, the byte table the layer keeps, its 16 code values as the layer passes
    them): NF4 from a random weight by the reference quantizer, FP4 (whose table is not
    ascending) random codes and absmax."""
    g = torch.Generator().manual_seed(seed)
    table = torch.tensor(TABLES[quant_type])
    if quant_type == "nf4":
        packed, absmax = quantize_4bit_rows(torch.randn(n, k, generator=g) * 0.05, table, blocksize)
    else:
        packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.int32).to(torch.uint8)
        absmax = torch.rand(n, k // blocksize, generator=g) * 0.05 + 0.01
    pairs = byte_table(table).to(DEVICE)
    return packed.to(DEVICE), absmax.to(DEVICE), pairs, pairs[:16, 1]


def _rel(out: torch.Tensor, expect: torch.Tensor) -> float:
    return ((out.float() - expect.float()).norm() / expect.float().norm()).item()


@pytest.mark.parametrize("quant_type,blocksize", [("nf4", 64), ("fp4", 128)])
@pytest.mark.parametrize("m,config", [(1, Nf4GemmConfig(16, 32, 4, 2)), (19, Nf4GemmConfig(16, 64, 4, 3)),
                                      (40, Nf4GemmConfig(32, 32, 4, 2))])
def test_gemm_matches_the_dequantized_product(quant_type: str, blocksize: int, m: int, config: Nf4GemmConfig) -> None:
    """Ragged M and N (90 rows), K of several blocks, a bias; the table's values and each
    block's absmax land where the PyTorch dequantization puts them."""
    packed, absmax, pairs, table = _layer(90, 512, quant_type, blocksize, m)
    g = torch.Generator().manual_seed(m + 7)
    x = torch.randn(m, 512, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(90, generator=g).to(DEVICE, DTYPE)
    out = nf4_gemm(x, packed, absmax, table, bias, config)
    weight = dequantize_4bit(packed, absmax, pairs, torch.float32)
    expect = torch.nn.functional.linear(x.float(), weight, bias.float())
    assert out.shape == (m, 90) and out.dtype == DTYPE
    assert _rel(out, expect) < 1e-2
    # nibbles swapped (low first) give another product: the order is the checkpoint's
    swapped = ((packed & 15) << 4) | (packed >> 4)
    assert _rel(nf4_gemm(x, swapped, absmax, table, bias, config), expect) > 0.1


@pytest.mark.parametrize("quant_type,blocksize", [("nf4", 64), ("fp4", 32), ("nf4", 256)])
@pytest.mark.parametrize("config", [Nf4GemvConfig(2, 256, 2), Nf4GemvConfig(8, 128, 4)])
def test_gemv_matches_the_dequantized_product(quant_type: str, blocksize: int, config: Nf4GemvConfig) -> None:
    """One row, ragged N (90 columns: the last program's clamped columns), K of several tiles
    and blocks (blocks shorter and longer than a tile), a bias."""
    packed, absmax, pairs, table = _layer(90, 512, quant_type, blocksize, blocksize)
    g = torch.Generator().manual_seed(blocksize + 1)
    x = torch.randn(1, 512, generator=g).to(DEVICE, DTYPE)
    bias = torch.randn(90, generator=g).to(DEVICE, DTYPE)
    weight = dequantize_4bit(packed, absmax, pairs, torch.float32)
    expect = torch.nn.functional.linear(x.float(), weight, bias.float())
    out = nf4_gemv(x, packed, absmax, table, bias, config)
    assert out.shape == (1, 90) and out.dtype == DTYPE
    assert _rel(out, expect) < 1e-2
    assert _rel(nf4_gemv(x, packed, absmax, table, None, config), expect - bias.float()) < 1e-2
    # each block's own absmax: scaling one block of one column moves only that column
    scaled = absmax.clone()
    scaled[5, 1] *= 3
    moved = nf4_gemv(x, packed, scaled, table, bias, config)
    weight[5, blocksize:2 * blocksize] *= 3
    assert _rel(moved, torch.nn.functional.linear(x.float(), weight, bias.float())) < 1e-2
    others = torch.arange(90, device=DEVICE) != 5
    assert torch.equal(moved[:, others], out[:, others]) and abs(moved[0, 5] - out[0, 5]) > 1e-3


@pytest.mark.parametrize("dtype", [DTYPE, torch.float32])
@pytest.mark.parametrize("quant_type,blocksize", [("nf4", 64), ("fp4", 128)])
def test_dequantize_equals_the_pytorch_dequantization(quant_type: str, blocksize: int, dtype: torch.dtype) -> None:
    """Bit for bit (table value times absmax in float32, then rounded), rows of a length that
    is not a whole number of the kernel's blocks; a strided table (the layer's column view)."""
    packed, absmax, pairs, table = _layer(7, 3 * 1024 + 128, quant_type, blocksize, 5)
    assert table.stride(0) == 2
    assert torch.equal(nf4_dequantize(packed, absmax, table, dtype), dequantize_4bit(packed, absmax, pairs, dtype))


def test_kernels_refuse_what_they_cannot_do() -> None:
    packed, absmax, _, table = _layer(64, 256, "nf4", 64, 0)
    x = torch.zeros(4, 256, device=DEVICE, dtype=DTYPE)
    for run in (nf4_gemm, nf4_gemv):
        with pytest.raises(ValueError, match="16-bit x"):
            run(x[:1].float(), packed, absmax, table)
        with pytest.raises(ValueError, match="absmax"):
            run(x[:1], packed, absmax[:, :3].contiguous(), table)
        with pytest.raises(ValueError, match="table"):
            run(x[:1], packed, absmax, table[:8])
    with pytest.raises(ValueError, match="one row"):
        nf4_gemv(x, packed, absmax, table)
    with pytest.raises(ValueError, match="multiple of block_k"):
        nf4_gemv(x[:1], packed, absmax, table, config=Nf4GemvConfig(2, 512))
    with pytest.raises(ValueError, match="absmax"):
        nf4_dequantize(packed, absmax[:, :3].contiguous(), table, DTYPE)


def test_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA: decided once per bucket of rows and equal to the layer's product; one row of an
    8B gate_up layer must take a 4-bit kernel (it reads 59 MB of codes; the dequantization
    writes a 235 MB copy first). Batches past 1,024 rows, float32 activations and CPU tensors
    take the dequantize + GEMM, undecided."""
    n, k = (28672, 4096) if DEVICE == "cuda" else (256, 256)
    packed, absmax, pairs, table = _layer(n, k, "nf4", 64, 3)
    calls = []
    real = dispatch.dequantize
    monkeypatch.setattr(dispatch, "dequantize", lambda *a: calls.append(a[-1]) or real(*a))

    def expect(a):
        return torch.nn.functional.linear(a.float(), dequantize_4bit(packed, absmax, pairs, torch.float32))

    x = torch.randn(1025, k, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
    dispatch._choice.clear()
    assert _rel(dispatch.bnb_linear(x, packed, absmax, table, None), expect(x)) < 1e-2
    assert _rel(dispatch.bnb_linear(x[:2].float(), packed, absmax, table, None), expect(x[:2])) < 1e-5
    assert calls == [DTYPE, torch.float32] and not dispatch._choice
    if DEVICE != "cuda":
        assert _rel(dispatch.bnb_linear(x[:1], packed, absmax, table, None), expect(x[:1])) < 1e-2
        assert not dispatch._choice
        return
    out = dispatch.bnb_linear(x[:3], packed, absmax, table, None)
    assert list(dispatch._choice) == [(4, n, k, DTYPE, 64)]
    assert _rel(out, expect(x[:3])) < 1e-2
    n_calls = len(calls)
    dispatch.bnb_linear(x[:3], packed, absmax, table, None)
    assert len(calls) == n_calls + (dispatch._choice[(4, n, k, DTYPE, 64)] is None)
    assert _rel(dispatch.bnb_linear(x[:1], packed, absmax, table, None), expect(x[:1])) < 1e-2
    assert dispatch._choice[(1, n, k, DTYPE, 64)] is not None
