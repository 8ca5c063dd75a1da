"""The CUTLASS W4A16 GEMM (``csrc/w4a16_cutlass.cu``, the "cutlass" kind of ``triton_wna16``).

On any machine: the operand packing against hand-made vectors, the tile and config checks,
which layers fit, the memory budget, how the library is built (CUTLASS's include flags) and
when the kind is offered. On an sm_90 GPU with the nvidia-cutlass package and an nvcc: every
built tile against the float32 reference over ragged M and N, per-channel and 64-input groups,
bias, fp16 activations, CUDA-graph replay, and an AWQ layer that keeps the operands running them through the
tuner's table (and one that does not falling back).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from pagedlm.kernels import cuda_build, cutlass_w4a16, triton_wna16, wna16_reference, wna16_tuning  # noqa: E402
from pagedlm.kernels.triton_wna16 import KernelConfig  # noqa: E402
from tests.kernels.w4a16_helpers import int4_layer, rel_err  # noqa: E402

GPU = torch.cuda.is_available() and cutlass_w4a16.available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs an sm_90 GPU, nvcc and the nvidia-cutlass package")


def test_codes_pack_two_per_byte_lower_input_low():
    codes = torch.tensor([[1, 7], [2, 8], [3, 15], [4, 0]])  # [K=4, N=2]
    packed = cutlass_w4a16.pack_codes_nk(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 2)
    assert packed.tolist() == [[0x21, 0x43], [0x87, 0x0F]]


def test_tiles_and_config_checks():
    assert cutlass_w4a16.tile_of(128, 256) == (128, 256, 0)
    assert cutlass_w4a16.tile_of(64, 64) == (64, 64, 1)
    with pytest.raises(ValueError, match="no CUTLASS W4A16 tile"):
        cutlass_w4a16.tile_of(128, 48)
    cfg = KernelConfig("cutlass", 256, 128, 1, 4, 1)
    assert wna16_tuning.describe(cfg) == "cutlass:128x256"
    with pytest.raises(ValueError, match="no CUTLASS W4A16 tile"):
        KernelConfig("cutlass", 48, 128, 1, 4, 1)
    fits = triton_wna16.config_fits
    assert fits(cfg, 4096, 128, 4) and fits(cfg, 4096, 4096, 4)
    assert not fits(cfg, 4096, 128, 8)
    assert not fits(cfg, 4096, 32, 4)  # groups shorter than a K step
    assert not fits(cfg, 4096, 128, 4, row_groups=True)
    with pytest.raises(ValueError, match="own operands"):
        triton_wna16.wna16_gemm_with_config(torch.zeros(16, 4096), torch.zeros(512, 64, dtype=torch.int32),
                                            torch.zeros(32, 64), torch.zeros(32, 64), None, 128, 4, cfg)


def test_layer_fits():
    fits = cutlass_w4a16.layer_fits
    assert fits(4096, 6144, 128, 4, False) and fits(768, 384, 768, 4, False) and fits(1024, 256, 64, 4, False)
    assert not fits(4096, 6144, 128, 8, False)  # 8-bit
    assert not fits(4096, 6200, 128, 4, False)  # N not whole 128-row tiles
    assert not fits(4032, 6144, 96, 4, False)  # groups not whole K steps
    assert not fits(4096, 6144, 128, 4, True)  # act-order row groups


def test_build_command_adds_the_header_library():
    plain = cuda_build.build_command("nvcc", "k.cu", "k.so", "sm_90a", ("A=1",))
    assert "--expt-relaxed-constexpr" not in plain
    cmd = cuda_build.build_command("nvcc", "k.cu", "k.so", "sm_90a", ("A=1",), ("/inc/a", "/inc/b"))
    assert "-I/inc/a" in cmd and "-I/inc/b" in cmd and "--expt-relaxed-constexpr" in cmd and "-DNDEBUG" in cmd
    assert cmd.index("-I/inc/a") < cmd.index("-o")


def test_defines_carry_the_tile_the_dtype_and_the_headers_version():
    defines = cutlass_w4a16._defines((64, 128, 1))
    assert defines[:3] == ("TILE_N=64", "TILE_M=128", "PINGPONG=1") and defines[3].startswith("PAGEDLM_CUTLASS_PKG=")
    assert len(defines) == 4  # bf16: the source's default element type
    assert cutlass_w4a16._defines((64, 128, 1), torch.float16) == (*defines, "PAGEDLM_FP16=1")
    with pytest.raises(ValueError, match="activations"):
        cutlass_w4a16._defines((64, 128, 1), torch.float32)
    assert cutlass_w4a16.built_tiles(torch.device("cuda", 0), dtype=torch.float32) == []


def test_no_headers_no_kind(monkeypatch):
    monkeypatch.setattr(cutlass_w4a16, "include_dirs", lambda: None)
    assert not cutlass_w4a16._supported(torch.device("cuda", 0))
    assert cutlass_w4a16.built_tiles(torch.device("cuda", 0)) == []
    monkeypatch.setattr(cutlass_w4a16, "built_tiles", lambda device, tiles=(), dtype=None: [])
    assert wna16_tuning.cutlass_candidates(64, torch.device("cuda", 0)) == []


def test_candidates(monkeypatch):
    monkeypatch.setattr(cutlass_w4a16, "built_tiles", lambda device, tiles=(), dtype=None: [(128, 16, 0), (64, 256, 1)])
    dev = torch.device("cuda", 0)
    assert wna16_tuning.cutlass_candidates(8, dev) == []
    offered = wna16_tuning.cutlass_candidates(16, dev)
    assert [(c.kind, c.block_n, c.block_m) for c in offered] == [("cutlass", 128, 16), ("cutlass", 64, 256)]
    # above the Triton tiles' buckets only dequantize + cuBLAS competes with the cutlass kind
    assert wna16_tuning.candidates(1024, 4096, 4096, 4, 128, 132) == [None]


def test_budget_counts_each_layer_once(monkeypatch):
    class Props:
        total_memory = 1000

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(cutlass_w4a16, "_copies", {})
    dev = torch.device("cuda", 0)

    class Layer:
        pass

    a, b = Layer(), Layer()
    assert cutlass_w4a16.reserve(a, dev, 60)
    assert cutlass_w4a16.reserve(a, dev, 60)  # processed again: replaces its own entry
    assert not cutlass_w4a16.reserve(b, dev, 41)  # 60 + 41 > 10% of 1000
    assert cutlass_w4a16.reserve(b, dev, 40)
    c = Layer()
    assert not cutlass_w4a16.reserve(c, dev, 61)
    del a  # a layer freed gives its share back
    assert cutlass_w4a16.reserve(c, dev, 60)


def test_tuner_drops_a_candidate_that_computes_wrong_sums(monkeypatch):
    """The load-time tuner checks every candidate against dequantize + cuBLAS before timing it:
    a wrong kernel (here a fast one) is never picked."""
    good = KernelConfig("cutlass", 64, 128, 1, 4, 1)
    wrong = KernelConfig("cutlass", 16, 128, 1, 4, 1)

    class Props:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(wna16_tuning, "SMALL_M_BUCKETS", (16,))
    monkeypatch.setattr(wna16_tuning, "TILED_M_BUCKETS", (32,))
    monkeypatch.setattr(wna16_tuning, "candidates", lambda *a, **kw: [None])
    monkeypatch.setattr(wna16_tuning, "cutlass_candidates", lambda m, device, dtype: [wrong, good])
    times = {None: 3.0, good: 2.0, wrong: 1.0}
    ran = []  # the choices run_choice was called with, last one last
    monkeypatch.setattr(wna16_tuning, "decode_time_ms", lambda run, device: (run(), times[ran[-1]])[1])

    def run_choice(choice, x, *args):
        ran.append(choice)
        y = x @ torch.ones(x.shape[1], 8)
        return -y if choice is wrong else y

    monkeypatch.setattr(wna16_tuning, "run_choice", run_choice)
    qweight = torch.zeros(8, 8, dtype=torch.int32)  # K = 64 at 4 bits
    entries = wna16_tuning._measure(qweight, torch.ones(1, 8), torch.zeros(1, 8), None, 64, 4, (8, 64, 4, 64, False),
                                    cutlass_ops=("ops",))
    assert [m for m, _ in entries][:2] == [16, 32]
    assert all(choice is good for _, choice in entries)


# ---- on the GPU ----


@needs_gpu
@pytest.mark.parametrize("k,n,group_size", [(4096, 6144, 128), (1024, 384, 64), (768, 256, 768), (14336, 256, 128)])
def test_every_tile_matches_reference(k, n, group_size):
    qweight, scales, zeros = int4_layer(k, n, group_size, seed=k + n)
    ops = cutlass_w4a16.prepare(qweight, scales, zeros, group_size, 4)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    tiles = cutlass_w4a16.built_tiles()
    assert tiles
    for m in (1, 16, 17, 300):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for b in (None, bias):
            ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None,
                                             group_size, 4, None if b is None else b.float())
            for tile in tiles:
                out = cutlass_w4a16.gemm(x, *ops, group_size, tile, b)
                assert out.shape == (m, n) and out.dtype == torch.bfloat16
                assert rel_err(out, ref) < 1e-2, (m, tile, b is not None)


@needs_gpu
def test_fp16_tiles_match_reference():
    """fp16 activations (AutoAWQ's checkpoints are fp16): the fp16 build of every tile."""
    k, n, gs = 4096, 768, 128
    qweight, scales, zeros = int4_layer(k, n, gs, seed=21)
    ops = cutlass_w4a16.prepare(qweight, scales.half(), zeros.half(), gs, 4)
    assert all(t.dtype == torch.float16 for t in ops[1:])
    tiles = cutlass_w4a16.built_tiles(dtype=torch.float16)
    assert tiles
    for m in (16, 300):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, 4)
        for tile in tiles:
            out = cutlass_w4a16.gemm(x, *ops, gs, tile)
            assert out.dtype == torch.float16 and rel_err(out, ref) < 1e-2, (m, tile)
    with pytest.raises(ValueError, match="operands' dtype"):
        cutlass_w4a16.gemm(x.bfloat16(), *ops, gs, tiles[0])


@needs_gpu
def test_graph_replay():
    k, n, gs = 1024, 512, 128
    qweight, scales, zeros = int4_layer(k, n, gs, seed=5)
    ops = cutlass_w4a16.prepare(qweight, scales, zeros, gs, 4)
    x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16)
    tile = cutlass_w4a16.built_tiles()[0]
    cutlass_w4a16.gemm(x, *ops, gs, tile)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cutlass_w4a16.gemm(x, *ops, gs, tile)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, 4)
    assert rel_err(out, ref) < 1e-2


@needs_gpu
def test_awq_layer_keeps_operands_and_the_table_routes_to_them(monkeypatch):
    from pagedlm.kernels import ops
    from pagedlm.layers.quantization.wna16 import WNA16LinearMethod

    monkeypatch.setattr(ops, "current_backend", lambda: "triton")
    monkeypatch.setattr(wna16_tuning, "_TABLE", {})
    k, n, gs = 1024, 768, 128
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (k, n), generator=g).cuda()
    scales = (torch.rand(k // gs, n, generator=g) * 0.01 + 0.001).to(torch.bfloat16).cuda()
    zeros = torch.randint(0, 16, (k // gs, n), generator=g).to(torch.bfloat16).cuda()
    layer = torch.nn.Module()
    class Method(WNA16LinearMethod):  # the repack and apply halves; no checkpoint tensors
        def create_weights(self, *args, **kwargs):
            raise NotImplementedError

    method = Method(4, gs)
    method.finish_repack(layer, codes, scales, zeros, None, None, gs, ())
    assert layer.wna16_cutlass_codes is not None and layer.wna16_cutlass_codes.shape == (n, k // 2)
    assert "wna16_cutlass_codes" not in layer.state_dict()  # never part of a checkpoint
    x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16)
    ref = wna16_reference.wna16_gemm(x.float(), layer.qweight, layer.scales.float(), layer.zeros.float(), None, None,
                                     gs, 4)
    key = (n, k, 4, gs, False)
    tile = cutlass_w4a16.built_tiles()[0]
    wna16_tuning._TABLE[key] = [(128, KernelConfig("cutlass", tile[1], tile[0], 1, 4, 1))]
    calls = []
    real = cutlass_w4a16.gemm
    monkeypatch.setattr(cutlass_w4a16, "gemm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = method.apply(layer, x)
    assert calls and rel_err(out, ref) < 1e-2
    # a layer of the same shape without the operands (over the budget) runs the defaults
    for name in ("wna16_cutlass_codes", "wna16_cutlass_scales", "wna16_cutlass_zeros"):
        setattr(layer, name, None)
    calls.clear()
    out = method.apply(layer, x)
    assert not calls and rel_err(out, ref) < 1e-2
