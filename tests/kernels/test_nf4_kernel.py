"""bitsandbytes 4-bit GEMM (pagedlm.kernels.triton_nf4) against the PyTorch dequantization
(CUDA, or TRITON_INTERPRET=1 on CPU), and the dispatch that picks it per bucket of rows."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import bnb_linear as dispatch  # noqa: E402
from pagedlm.kernels.triton_nf4 import Nf4GemmConfig, nf4_gemm  # noqa: E402
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


def test_gemm_refuses_what_it_cannot_do() -> None:
    packed, absmax, _, table = _layer(64, 256, "nf4", 64, 0)
    x = torch.zeros(4, 256, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="16-bit x"):
        nf4_gemm(x.float(), packed, absmax, table)
    with pytest.raises(ValueError, match="absmax"):
        nf4_gemm(x, packed, absmax[:, :3].contiguous(), table)
    with pytest.raises(ValueError, match="table"):
        nf4_gemm(x, packed, absmax, table[:8])


def test_dispatch() -> None:
    """On CUDA: decided once per bucket of rows and, where the kernel won, equal to the
    layer's product; one row of an 8B gate_up layer must take the kernel (it reads 59 MB of
    codes; the dequantization writes a 235 MB copy first). CPU tensors, float32 activations
    and batches past 1,024 rows take the layer's own product."""
    packed, absmax, pairs, table = _layer(28672 if DEVICE == "cuda" else 256, 4096 if DEVICE == "cuda" else 256,
                                          "nf4", 64, 3)
    k = packed.shape[1] * 2
    calls = []

    def baseline(a):
        calls.append(a.shape[0])
        return torch.nn.functional.linear(a, dequantize_4bit(packed, absmax, pairs, a.dtype))

    x = torch.randn(1025, k, generator=torch.Generator().manual_seed(1)).to(DEVICE, DTYPE)
    assert dispatch.bnb_linear(x, packed, absmax, table, None, baseline) is None
    assert dispatch.bnb_linear(x[:2].float(), packed, absmax, table, None, baseline) is None
    if DEVICE != "cuda":
        assert dispatch.bnb_linear(x[:1], packed, absmax, table, None, baseline) is None
        return
    dispatch._choice.clear()
    out = dispatch.bnb_linear(x[:3], packed, absmax, table, None, baseline)
    assert list(dispatch._choice) == [(4, 28672, 4096, DTYPE, 64)]
    if out is not None:
        assert _rel(out, baseline(x[:3])) < 1e-2
    n_calls = len(calls)
    dispatch.bnb_linear(x[:3], packed, absmax, table, None, baseline)
    assert len(calls) == n_calls
    assert dispatch.bnb_linear(x[:1], packed, absmax, table, None, baseline) is not None
