"""The CUDA W4A16 decode kernel (``csrc/w4a16_mma.cu``, the "cuda" kind of ``triton_wna16``).

On any machine: how the library is built and when the kind is offered (nvcc found or not,
``PAGEDLM_CUDA_KERNELS=0``), the kind's config checks, and - where an nvcc is installed - that
the source compiles for sm_90a and exports its entry points. On CUDA: the kernel against the
float32 reference over rows, splits, warps, unroll, bias, ragged N, wider groups and bf16 / fp16
activations; its ticket
counters left at zero; CUDA-graph capture; and the tuner's dispatch through
``wna16_gemm_with_config``.
"""

from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from pagedlm.kernels import cuda_build, cuda_w4a16, triton_wna16, wna16_reference, wna16_tuning  # noqa: E402
from pagedlm.kernels.tickets import ticket_counters  # noqa: E402
from pagedlm.kernels.triton_wna16 import KernelConfig  # noqa: E402
from tests.kernels.w4a16_helpers import int4_layer, rel_err  # noqa: E402

GPU = torch.cuda.is_available() and cuda_w4a16.available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs CUDA and an nvcc to build the kernel")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache and no memory of earlier builds."""
    monkeypatch.setenv("PAGEDLM_CACHE_DIR", str(tmp_path))
    cuda_build._library_path.cache_clear()
    yield tmp_path
    cuda_build._library_path.cache_clear()


def test_arch_flag():
    assert cuda_build.arch_flag((9, 0)) == "sm_90a"
    assert cuda_build.arch_flag((8, 0)) == "sm_80"
    assert cuda_build.arch_flag((12, 0)) == "sm_120"


def test_build_command_passes_the_knobs(tmp_path):
    cmd = cuda_build.build_command("nvcc", tmp_path / "k.cu", tmp_path / "k.so", "sm_90a", ("A=1", "B"))
    assert "-arch=sm_90a" in cmd and "-shared" in cmd and cmd[-1].endswith("k.cu")
    assert cmd.index("-DA=1") < cmd.index("-o") and "-DB" in cmd


def test_no_nvcc_means_no_library(fresh_build, monkeypatch):
    monkeypatch.setattr(cuda_build, "nvcc_path", lambda: None)
    assert cuda_build._library_path("w4a16_mma", (9, 0)) is None


def test_switch_off_means_no_library(fresh_build, monkeypatch):
    monkeypatch.setenv("PAGEDLM_CUDA_KERNELS", "0")
    assert cuda_build._library_path("w4a16_mma", (9, 0)) is None


def test_failed_build_means_no_library(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'nvcc --version' >&2\n[ \"$1\" = --version ] && exit 0\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cuda_build, "nvcc_path", lambda: str(fake))
    assert cuda_build._library_path("w4a16_mma", (9, 0)) is None
    assert not list((fresh_build / "cuda").glob("*.so"))


@pytest.mark.skipif(cuda_build.nvcc_path() is None, reason="no nvcc on this machine")
def test_source_compiles_and_exports_its_entry_points(fresh_build):
    path = cuda_build._library_path("w4a16_mma", (9, 0))
    assert path is not None and path.is_file() and path.parent == fresh_build / "cuda"
    lib = ctypes.CDLL(str(path))
    lib.pagedlm_w4a16_error_string.restype = ctypes.c_char_p
    assert lib.pagedlm_w4a16_error_string(1) == b"invalid argument"
    assert hasattr(lib, "pagedlm_w4a16_mma")
    assert cuda_build._library_path.__wrapped__("w4a16_mma", (9, 0)) == path  # a second start reuses it


def test_kind_is_a_candidate_only_where_the_library_builds(monkeypatch):
    def cuda_configs(m):
        return [c for c in wna16_tuning.small_m_candidates(m, 4096, 4096, 4, 128, 132) if c.kind == "cuda"]
    monkeypatch.setattr(wna16_tuning, "cuda_enabled", lambda: False)
    assert not cuda_configs(1)
    monkeypatch.setattr(wna16_tuning, "cuda_enabled", lambda: True)
    if triton_wna16._interpreting():
        pytest.skip("the interpreter cannot run inline PTX")
    offered = cuda_configs(1)
    assert offered and all(c.block_m == 8 and c.block_n == 32 for c in offered)
    assert cuda_configs(8) and not cuda_configs(16)
    assert not [c for c in wna16_tuning.small_m_candidates(1, 4096, 4096, 8, 128, 132) if c.kind == "cuda"]


def test_config_checks():
    with pytest.raises(ValueError, match="cuda kind"):
        KernelConfig("cuda", 8, 32, 1, 2, 1, 1)  # warps
    with pytest.raises(ValueError, match="cuda kind"):
        KernelConfig("cuda", 8, 32, 1, 4, 1, 3)  # unroll
    with pytest.raises(ValueError, match="cuda kind"):
        KernelConfig("cuda", 16, 32, 1, 4, 1, 1)  # rows
    cfg = KernelConfig("cuda", 8, 32, 2, 4, 1, 1)
    fits = triton_wna16.config_fits
    if not triton_wna16._interpreting():
        assert fits(cfg, 4096, 128, 4)
    assert not fits(cfg, 4096, 64, 4)  # groups smaller than a K tile
    assert not fits(cfg, 4096, 128, 8)
    assert not fits(cfg, 4096, 128, 4, row_groups=True)
    assert not fits(cfg, 4032, 64, 4)


# ---- on the GPU ----


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n,group_size", [(4096, 6144, 128), (1280, 200, 128), (768, 132, 256), (14336, 256, 128)])
def test_kernel_matches_reference(k, n, group_size, dtype):
    qweight, scales, zeros = int4_layer(k, n, group_size, seed=k + n)
    scales, zeros = scales.to(dtype), zeros.to(dtype)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    counters = ticket_counters(torch.device("cuda"), "wna16")
    for m in (1, 2, 3, 5, 8):
        x = torch.randn(m, k, device="cuda", dtype=dtype) * 3
        for b in (None, bias):
            ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None,
                                             group_size, 4, None if b is None else b.float())
            for warps in cuda_w4a16.WARPS:
                for unroll in cuda_w4a16.UNROLL:
                    for split in (1, 3, 64):
                        out = cuda_w4a16.mma(x, qweight, scales, zeros, group_size, warps, unroll, split, counters, b)
                        assert out.shape == (m, n) and out.dtype == dtype
                        err = rel_err(out, ref)
                        assert err < 1e-2, (m, b is not None, warps, unroll, split, err)
    torch.cuda.synchronize()
    assert int(counters.abs().sum()) == 0  # every launch leaves its tickets at zero


@needs_gpu
def test_kernel_refuses_what_it_cannot_run():
    qweight, scales, zeros = int4_layer(256, 64, 128, seed=0)
    counters = ticket_counters(torch.device("cuda"), "wna16")
    x = torch.randn(9, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="1-8 rows"):
        cuda_w4a16.mma(x, qweight, scales, zeros, 128, 4, 1, 1, counters)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        cuda_w4a16.mma(x[:1].float(), qweight, scales, zeros, 128, 4, 1, 1, counters)
    with pytest.raises(ValueError, match="scales"):  # the operands in another dtype than the activations
        cuda_w4a16.mma(x[:1], qweight, scales.half(), zeros, 128, 4, 1, 1, counters)
    with pytest.raises(ValueError, match="scales"):
        cuda_w4a16.mma(x[:1].half(), qweight, scales, zeros, 128, 4, 1, 1, counters)


@needs_gpu
def test_kernel_in_a_cuda_graph_and_through_the_kind():
    k, n, gs = 4096, 4096, 128
    qweight, scales, zeros = int4_layer(k, n, gs, seed=1)
    x = torch.randn(4, k, device="cuda", dtype=torch.bfloat16)
    cfg = KernelConfig("cuda", 8, 32, 2, 4, 1, 1)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)  # cast to the activations' dtype
    eager = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, gs, 4, cfg, bias)
    ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, 4,
                                     bias.float())
    assert rel_err(eager, ref) < 1e-2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, gs, 4, cfg, bias)
    x.copy_(torch.randn_like(x))
    graph.replay()
    ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, 4,
                                     bias.float())
    assert rel_err(out, ref) < 1e-2


@needs_gpu
def test_dispatch_falls_back_where_operands_do_not_fit(monkeypatch):
    """A measured cuda choice for a weight shape, and a layer of that shape whose words are not
    16-byte aligned (a view): wna16_gemm runs a Triton kind instead, with the same result."""
    k, n, gs = 1024, 256, 128
    qweight, scales, zeros = int4_layer(k, n, gs, seed=2)
    backing = torch.empty(qweight.numel() + 1, dtype=torch.int32, device="cuda")
    shifted = backing[1:].view_as(qweight)
    shifted.copy_(qweight)
    assert shifted.data_ptr() % 16 and not cuda_w4a16.operands_fit(
        torch.empty(1, k, device="cuda", dtype=torch.bfloat16), shifted, scales, zeros)
    monkeypatch.setitem(wna16_tuning._TABLE, (n, k, 4, gs, False), [(8, KernelConfig("cuda", 8, 32, 1, 4, 1, 1))])
    x = torch.randn(2, k, device="cuda", dtype=torch.bfloat16)
    ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, 4)
    for w in (qweight, shifted):
        assert rel_err(triton_wna16.wna16_gemm(x, w, scales, zeros, None, None, gs, 4), ref) < 1e-2
