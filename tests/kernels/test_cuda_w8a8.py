"""The CUDA W8A8 decode kernel (``csrc/w8a8_mma.cu``, a candidate of the 8-bit GEMV tuner).

On any machine: where an nvcc is installed, the source compiles for sm_90a and exports its entry
points; the tuner offers it only with activation codes and where the library builds; a choice
that these operands do not fit, or that this machine cannot build, hands back to the GEMM. On
CUDA: int8 and fp8 codes against a float32 reference over rows, columns (ragged N), K, scale
shapes, bias, output dtypes, warps, unroll and split-K; counters back at zero; CUDA-graph replay.
"""

from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")

from pagedlm.kernels import cuda_build, cuda_w8a8, scaled_gemv  # noqa: E402
from pagedlm.kernels.tickets import ticket_counters  # noqa: E402

GPU = torch.cuda.is_available() and cuda_w8a8.available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs CUDA and an nvcc to build the kernel")


@pytest.mark.skipif(cuda_build.nvcc_path() is None, reason="no nvcc on this machine")
def test_source_compiles_and_exports_its_entry_points(monkeypatch, tmp_path):
    monkeypatch.setenv("PAGEDLM_CACHE_DIR", str(tmp_path))
    cuda_build._library_path.cache_clear()
    try:
        path = cuda_build._library_path("w8a8_mma", (9, 0))
    finally:
        cuda_build._library_path.cache_clear()
    assert path is not None and path.is_file()
    lib = ctypes.CDLL(str(path))
    fn = cuda_build.entry_point(lib, "pagedlm_w8a8_mma", 8, 14, "pagedlm_w8a8_error_string")
    assert fn.error_string(1) == b"invalid argument"


def test_offered_only_with_codes_and_a_library(monkeypatch):
    monkeypatch.setattr(cuda_w8a8, "available", lambda device=None: True)
    kinds = {type(c) for c in scaled_gemv._candidates(1, 4096, codes=True)}
    assert cuda_w8a8.CudaW8A8Config in kinds
    assert cuda_w8a8.CudaW8A8Config not in {type(c) for c in scaled_gemv._candidates(1, 4096, codes=False)}
    assert cuda_w8a8.CudaW8A8Config not in {type(c) for c in scaled_gemv._candidates(1, 4000, codes=True)}
    assert cuda_w8a8.CudaW8A8Config not in {type(c) for c in scaled_gemv._candidates(16, 4096, codes=True)}
    monkeypatch.setattr(cuda_w8a8, "available", lambda device=None: False)
    assert cuda_w8a8.CudaW8A8Config not in {type(c) for c in scaled_gemv._candidates(1, 4096, codes=True)}


def test_a_choice_that_cannot_run_hands_back_to_the_gemm(monkeypatch):
    x = torch.zeros(2, 256, dtype=torch.int8)
    w = torch.zeros(64, 256, dtype=torch.int8)
    sx, sw = torch.ones(2, 1), torch.ones(64)
    config = cuda_w8a8.CudaW8A8Config()
    monkeypatch.setattr(cuda_w8a8, "available", lambda device=None: False)
    assert not scaled_gemv._runs_here(config, x, w, sx, sw, torch.bfloat16)
    monkeypatch.setattr(cuda_w8a8, "available", lambda device=None: True)
    assert scaled_gemv._runs_here(config, x, w, sx, sw, torch.bfloat16) == cuda_w8a8.fits(x, w, sx, sw,
                                                                                         torch.bfloat16)
    assert not scaled_gemv._runs_here(config, x[:, 1:], w[:, 1:], sx, sw, torch.bfloat16)  # K 255, unaligned
    assert not cuda_w8a8.fits(x.float(), w, sx, sw, torch.bfloat16)
    assert scaled_gemv._runs_here(object(), x, w, sx, sw, torch.bfloat16)  # other kinds: unaffected


# ---- on the GPU ----


def _codes(shape, dtype, gen):
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)
    return (torch.randn(shape, generator=gen) * 60).clamp(-448, 448).to(torch.float8_e4m3fn)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("k,n", [(4096, 6144), (384, 200), (14336, 64)])
def test_kernel_matches_reference(dtype, k, n):
    gen = torch.Generator().manual_seed(k + n)
    w = _codes((n, k), dtype, gen).cuda()
    counters = ticket_counters(torch.device("cuda"), "w8a8")
    for m in (1, 3, 8):
        x = _codes((m, k), dtype, gen).cuda()
        for sx in (torch.rand(m, 1, generator=gen) * 0.01, torch.tensor([[0.004]])):
            for sw in (torch.rand(n, generator=gen) * 0.01, torch.tensor([0.003])):
                sx, sw = sx.cuda(), sw.cuda()
                for out_dtype in (torch.bfloat16, torch.float16, torch.float32):
                    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16 if out_dtype == torch.float32
                                       else out_dtype)
                    ref = (x.float() @ w.float().T) * sx * sw.reshape(1, -1) + bias.float()
                    for warps in cuda_w8a8.WARPS:
                        for unroll in cuda_w8a8.UNROLL:
                            for split in (1, 3, 64):
                                cfg = cuda_w8a8.CudaW8A8Config(warps, unroll, split)
                                out = cuda_w8a8.gemm(x, w, sx, sw, out_dtype, bias, cfg, counters)
                                assert out.shape == (m, n) and out.dtype == out_dtype
                                err = ((out.float() - ref).norm() / ref.norm()).item()
                                assert err < 5e-3, (m, out_dtype, cfg, err)
    torch.cuda.synchronize()
    assert int(counters.abs().sum()) == 0


@needs_gpu
def test_kernel_in_a_cuda_graph():
    gen = torch.Generator().manual_seed(0)
    w = _codes((4096, 4096), torch.float8_e4m3fn, gen).cuda()
    x = _codes((1, 4096), torch.float8_e4m3fn, gen).cuda()
    sx, sw = torch.full((1, 1), 0.01, device="cuda"), torch.rand(4096, device="cuda") * 0.01
    counters = ticket_counters(torch.device("cuda"), "w8a8")
    cfg = cuda_w8a8.CudaW8A8Config(8, 1, 2)
    cuda_w8a8.gemm(x, w, sx, sw, torch.bfloat16, None, cfg, counters)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_w8a8.gemm(x, w, sx, sw, torch.bfloat16, None, cfg, counters)
    x.copy_(_codes((1, 4096), torch.float8_e4m3fn, gen).cuda())
    graph.replay()
    ref = (x.float() @ w.float().T) * sx * sw
    assert ((out.float() - ref).norm() / ref.norm()).item() < 5e-3
