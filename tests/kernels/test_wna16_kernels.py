"""The W4A16 / W8A16 Triton GEMM against its PyTorch reference (float32 oracle).

Runs on CUDA; skipped elsewhere, or through Triton's CPU interpreter with TRITON_INTERPRET=1
(small shapes only there). Every kernel kind is covered (the FMA gemv, the tensor-core dot and
its swapped form dot_t, their wide-K forms wide and wide_t, dequantize + cuBLAS), with even and
uneven split-K, unrolled K loops, both dequant forms, fused and split-K bias, group-aligned and per-row group loads, act-order
permutation, 4 and 8 bits, and layers whose interleave is too short for the dot kinds.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import triton_wna16, wna16_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes tl.dot on bf16 wrongly (see test_triton_kernels.py): fp16 there.
DTYPES = [torch.float16] if DEVICE == "cpu" else [torch.float16, torch.bfloat16]
TOL = 1e-2  # ||out - ref|| / ||ref||, bf16 / fp16 against float32

# Llama-3.1-8B per-layer shapes (K, N): qkv, o, gate_up, down.
MODEL_SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
SMALL_SHAPES = [(256, 96), (512, 192)]
M_VALUES = [1, 4, 16, 64, 256] if DEVICE == "cuda" else [1, 16, 64]


def make_weights(k: int, n: int, bits: int, group_size: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (k, n), generator=g)
    num_groups = k // group_size
    scales = (torch.rand(num_groups, n, generator=g) * 0.5 + 0.5) * (0.05 / 2 ** (bits - 1))
    zeros = torch.randint(0, 2**bits, (num_groups, n), generator=g).float()
    qweight = wna16_reference.pack_internal(codes, bits, group_size)
    return qweight.to(DEVICE), scales.to(DEVICE, dtype), zeros.to(DEVICE, dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float().cpu(), ref.float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def reference(x, qweight, scales, zeros, perm, row_groups, group_size, bits):
    return wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), perm, row_groups,
                                      group_size, bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", M_VALUES)
def test_gemm_small_shapes(dtype, bits, m):
    for (k, n), group_size in zip(SMALL_SHAPES, (32, 128)):
        qweight, scales, zeros = make_weights(k, n, bits, group_size, dtype, seed=m)
        x = torch.randn(m, k, device=DEVICE, dtype=dtype)
        out = triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits)
        assert out.dtype == dtype and out.shape == (m, n)
        assert rel_err(out, reference(x, qweight, scales, zeros, None, None, group_size, bits)) < TOL


def kind_configs(split: int) -> list:
    KC = triton_wna16.KernelConfig  # noqa: N806
    return [KC("gemv", 1, 32, split, 4, 2), KC("gemv", 1, 64, split, 4, 2, unroll=2),
            KC("gemv", 1, 32, split, 4, 2, dequant="int"), KC("dot", 16, 32, split, 4, 2),
            KC("dot", 16, 32, split, 4, 2, dequant="f32"), KC("dot_t", 16, 64, split, 4, 2, dequant="f32"),
            KC("dot_t", 16, 64, split, 4, 2),
            KC("dot_t", 32, 32, split, 4, 2, dequant="int"), KC("wide", 16, 32, split, 4, 2),
            KC("wide_t", 16, 64, split, 4, 2), KC("wide", 32, 32, split, 4, 2, dequant="int")]


@pytest.mark.parametrize("m", [1, 5] if DEVICE == "cpu" else [1, 16, 64, 256])
def test_act_order_and_row_groups(m):
    k, n, group_size, bits, dtype = 256, 64, 32, 4, torch.float16
    qweight, scales, zeros = make_weights(k, n, bits, group_size, dtype)
    x = torch.randn(m, k, device=DEVICE, dtype=dtype)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.int32)
    row_groups = torch.randint(0, k // group_size, (k,), generator=torch.Generator().manual_seed(2))
    row_groups = row_groups.sort().values.to(DEVICE, torch.int32)
    for p, rg in ((perm, None), (perm, row_groups), (None, row_groups)):
        ref = reference(x, qweight, scales, zeros, p, rg, group_size, bits)
        out = triton_wna16.wna16_gemm(x, qweight, scales, zeros, p, rg, group_size, bits)
        assert rel_err(out, ref) < TOL
    # Per-row groups in every kernel kind (x already in kernel order).
    ref = reference(x, qweight, scales, zeros, None, row_groups, group_size, bits)
    for cfg in kind_configs(split=3):
        out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, row_groups, group_size, bits, cfg)
        assert rel_err(out, ref) < TOL, cfg


@pytest.mark.parametrize("bits", [4, 8])
def test_every_kernel_config_and_bias(bits):
    """Each kind at forced configs: no split, an uneven split (3 of 6 or 12 K tiles, and 5 of
    6: one tile per split plus an empty one), unroll past a split's end, bias fused and after
    a split; then the dequantizer and the public entry with a bias."""
    k, n, group_size, dtype = 384, 96, 64, torch.float16
    qweight, scales, zeros = make_weights(k, n, bits, group_size, dtype)
    x = torch.randn(5, k, device=DEVICE, dtype=dtype)
    bias = torch.randn(n, device=DEVICE, dtype=dtype)
    ref = reference(x, qweight, scales, zeros, None, None, group_size, bits)
    for split in (1, 3, 5):
        for cfg in kind_configs(split):
            out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, bits, cfg)
            assert out.dtype == dtype and out.shape == (5, n) and rel_err(out, ref) < TOL, cfg
            if split != 3:  # bias fused into the kernel (1) and added by the split-K reduction (5)
                out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, bits, cfg,
                                                          bias)
                assert rel_err(out, ref + bias.float()) < TOL, cfg
    dense = triton_wna16.wna16_dequantize(qweight, scales, zeros, None, group_size, bits)
    torch.testing.assert_close(dense.cpu(), wna16_reference.wna16_dequantize(
        qweight, scales, zeros, None, group_size, bits).cpu())
    out = triton_wna16.wna16_gemm(x[None], qweight, scales, zeros, None, None, group_size, bits, bias)
    assert out.shape == (1, 5, n) and rel_err(out[0], ref + bias.float()) < TOL


def test_short_interleave_runs_gemv_and_refuses_dot():
    """A layer whose width allows only R = 4 (K = 96, one group): the gemv kind and the
    default path run it, the tensor-core kinds say why they cannot."""
    k, n, group_size, bits, dtype = 96, 40, 96, 4, torch.float16
    assert wna16_reference.interleave_rows(k, group_size, bits) == 4
    qweight, scales, zeros = make_weights(k, n, bits, group_size, dtype)
    for m in (1, 3, 20):
        x = torch.randn(m, k, device=DEVICE, dtype=dtype)
        ref = reference(x, qweight, scales, zeros, None, None, group_size, bits)
        assert rel_err(triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits), ref) < TOL
        cfg = triton_wna16.KernelConfig("gemv", 1, 64, 2, 4, 2)
        out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, bits, cfg)
        assert rel_err(out, ref) < TOL
    with pytest.raises(ValueError, match="cannot run this layer"):
        triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, bits,
                                            triton_wna16.KernelConfig("dot", 16, 32, 1, 4, 2))
    with pytest.raises(ValueError, match="block_m"):
        triton_wna16.KernelConfig("dot_t", 8, 32, 1, 4, 2)
    with pytest.raises(ValueError, match="block_m 1"):
        triton_wna16.KernelConfig("gemv", 2, 32, 1, 4, 2)
    with pytest.raises(ValueError, match="dequant"):
        triton_wna16.KernelConfig("gemv", 1, 32, 1, 4, 2, dequant="half")


def test_wide_kinds_step_over_two_tiles_and_refuse_what_they_cannot_run():
    """The wide kinds with two packed K tiles per tensor-core step (unroll 2) and a split of
    K, against the reference; a layer with an odd number of K tiles cannot take unroll 2, and
    the wide kinds have no float32 dequant form."""
    KC = triton_wna16.KernelConfig  # noqa: N806
    for k, bits in ((512, 4), (256, 8)):
        qweight, scales, zeros = make_weights(k, 64, bits, 128, torch.float16)
        x = torch.randn(19, k, device=DEVICE, dtype=torch.float16)
        ref = reference(x, qweight, scales, zeros, None, None, 128, bits)
        for cfg in (KC("wide", 16, 32, 2, 4, 2, unroll=2), KC("wide_t", 32, 64, 1, 4, 2, unroll=2)):
            out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, 128, bits, cfg)
            assert rel_err(out, ref) < TOL, (k, bits, cfg)
    qweight, scales, zeros = make_weights(384, 64, 4, 128, torch.float16)  # 3 K tiles of 128 inputs
    with pytest.raises(ValueError, match="cannot run this layer"):
        triton_wna16.wna16_gemm_with_config(torch.randn(4, 384, device=DEVICE, dtype=torch.float16), qweight,
                                            scales, zeros, None, 128, 4, KC("wide", 16, 32, 1, 4, 2, unroll=2))
    with pytest.raises(ValueError, match="dequant"):
        KC("wide", 16, 32, 1, 4, 2, dequant="f32")


def test_default_configs_cover_every_m():
    """Without a measured table: gemv for one row, tensor cores up to 255, then dequant; a
    layer too narrow for tensor cores: gemv up to 4 rows, then dequant."""
    kinds = [getattr(triton_wna16.default_config(m, 4096, 4096, 4, 128, 132), "kind", None)
             for m in (1, 2, 16, 17, 255, 256)]
    assert kinds == ["gemv", "dot_t", "dot_t", "dot", "dot", None]
    kinds = [getattr(triton_wna16.default_config(m, 40, 96, 4, 96, 132), "kind", None) for m in (1, 4, 5)]
    assert kinds == ["gemv", "gemv", None]
    gemv = triton_wna16.default_config(1, 4096, 14336, 4, 128, 132)
    assert gemv.split_k > 1  # 32 column tiles fill 132 SMs only with K split


@pytest.mark.skipif(DEVICE != "cuda", reason="8B shapes are too slow for the interpreter")
@pytest.mark.parametrize("k,n", MODEL_SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_gemm_model_shapes(k, n, bits):
    group_size = 128
    qweight, scales, zeros = make_weights(k, n, bits, group_size, torch.bfloat16)
    for m in M_VALUES + [1024]:
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        out = triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits)
        assert rel_err(out, reference(x, qweight, scales, zeros, None, None, group_size, bits)) < TOL, m


@pytest.mark.skipif(DEVICE != "cuda", reason="compiles every load-time candidate (GPU compiler, not the interpreter)")
@pytest.mark.parametrize("bits", [4, 8])
def test_every_load_time_candidate_on_gpu(bits):
    """What the loader may pick, compiled for the card: each candidate of each M bucket, bf16,
    a K long enough for several splits, and per-row groups for the small-M kinds."""
    from pagedlm.kernels import wna16_tuning

    k, n, group_size = 2048, 1536, 128
    qweight, scales, zeros = make_weights(k, n, bits, group_size, torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    row_groups = (torch.arange(k, device=DEVICE, dtype=torch.int32) // group_size)
    for m in (1, 2, 8, 16, 64, 256):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        ref = reference(x, qweight, scales, zeros, None, None, group_size, bits)
        for cand in wna16_tuning.candidates(m, n, k, bits, group_size, sms):
            out = wna16_tuning.run_choice(cand, x, qweight, scales, zeros, None, group_size, bits)
            assert rel_err(out, ref) < TOL, (m, wna16_tuning.describe(cand))
        if m > 16:
            continue
        for cand in wna16_tuning.candidates(m, n, k, bits, group_size, sms, row_groups=True)[:-1]:
            assert cand.dequant != "pair"
            out = wna16_tuning.run_choice(cand, x, qweight, scales, zeros, row_groups, group_size, bits)
            assert rel_err(out, ref) < TOL, (m, wna16_tuning.describe(cand), "row groups")


@pytest.mark.skipif(DEVICE != "cuda", reason="inline PTX (not under the interpreter)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_paired_gemv(dtype):
    """The paired bf16 GEMV against the float32 reference: column counts that are not a
    multiple of the tile (masked), split-K through the tickets, unrolled K tiles past a
    split's end, bias, one and three rows (a program per row), activations in the thousands
    (fp16 ones too: rounded to bf16, no fp16 products to overflow)."""
    KC = triton_wna16.KernelConfig  # noqa: N806
    for k, n, group_size in ((4096, 1536, 128), (2048, 1000, 256), (1024, 4096, 128)):
        qweight, scales, zeros = make_weights(k, n, 4, group_size, dtype, seed=k + n)
        bias = torch.randn(n, device=DEVICE, dtype=dtype)
        for m, amp in ((1, 1.0), (3, 2000.0 if dtype == torch.bfloat16 else 200.0)):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype) * amp
            ref = reference(x, qweight, scales, zeros, None, None, group_size, 4) + bias.float()
            for cfg in (KC("gemv", 1, 256, 1, 4, 3, dequant="pair"), KC("gemv", 1, 128, 5, 8, 2, 2, "pair"),
                        KC("gemv", 1, 512, 3, 8, 4, dequant="pair")):
                assert triton_wna16.config_fits(cfg, k, group_size, 4)
                out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, 4, cfg, bias)
                assert out.dtype == dtype and rel_err(out, ref) < TOL, (k, n, m, cfg)


@pytest.mark.skipif(DEVICE != "cuda", reason="inline PTX (not under the interpreter)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_kind(dtype):
    """The tensor-core decode kind (each lane dequantizes its own MMA fragment) against the
    float32 reference: 1, 3 and 8 rows (the MMA's B columns), column counts that leave part of
    a warp's 16-column tile or of a program's tiles empty, split-K through the tickets (even
    and uneven), bias, groups of 128 and 256, activations in the thousands (fp16: hundreds)."""
    KC = triton_wna16.KernelConfig  # noqa: N806
    for k, n, group_size in ((4096, 1536, 128), (2048, 1000, 256), (1024, 4104, 128)):
        qweight, scales, zeros = make_weights(k, n, 4, group_size, dtype, seed=k + n)
        bias = torch.randn(n, device=DEVICE, dtype=dtype)
        for m, amp in ((1, 1.0), (3, 2000.0 if dtype == torch.bfloat16 else 200.0), (8, 1.0)):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype) * amp
            ref = reference(x, qweight, scales, zeros, None, None, group_size, 4)
            for cfg in (KC("mma", 8, 64, 1, 4, 1), KC("mma", 8, 64, 3, 4, 2, 2), KC("mma", 8, 128, 5, 8, 3)):
                assert triton_wna16.config_fits(cfg, k, group_size, 4)
                out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, 4, cfg)
                assert out.dtype == dtype and rel_err(out, ref) < TOL, (k, n, m, cfg)
                out = triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, group_size, 4, cfg, bias)
                assert rel_err(out, ref + bias.float()) < TOL, (k, n, m, cfg, "bias")


def test_mma_kind_refuses_what_it_cannot_run():
    cfg = triton_wna16.KernelConfig("mma", 8, 64, 1, 4, 1)
    on_gpu = DEVICE == "cuda"
    assert triton_wna16.config_fits(cfg, 4096, 128, 4) == on_gpu
    assert not triton_wna16.config_fits(cfg, 4096, 128, 8)  # 8-bit codes
    assert not triton_wna16.config_fits(cfg, 4096, 64, 4)  # a K tile spans two groups
    assert not triton_wna16.config_fits(cfg, 4096, 128, 4, row_groups=True)  # act-order shard
    with pytest.raises(ValueError, match="16 columns a warp"):
        triton_wna16.KernelConfig("mma", 8, 128, 1, 4, 1)
    if on_gpu:
        qweight, scales, zeros = make_weights(512, 64, 4, 128, torch.float16)
        with pytest.raises(ValueError, match="up to 8 rows"):
            triton_wna16.wna16_gemm_with_config(torch.randn(9, 512, device=DEVICE, dtype=torch.float16), qweight,
                                                scales, zeros, None, 128, 4, cfg)


def test_paired_gemv_takes_only_whole_groups_of_4_bit_codes():
    """Where the pairs cannot apply the config does not fit (the tuner never offers it)."""
    cfg = triton_wna16.KernelConfig("gemv", 1, 256, 1, 4, 3, dequant="pair")
    on_gpu = DEVICE == "cuda"
    assert triton_wna16.config_fits(cfg, 4096, 128, 4) == on_gpu
    assert not triton_wna16.config_fits(cfg, 4096, 128, 8)  # 8-bit codes
    assert not triton_wna16.config_fits(cfg, 4096, 64, 4)  # a K tile (128 inputs) spans two groups
    assert not triton_wna16.config_fits(cfg, 4096, 128, 4, row_groups=True)  # act-order shard
    with pytest.raises(ValueError, match="cannot run this layer"):
        qweight, scales, zeros = make_weights(512, 64, 8, 128, torch.float16)
        x = torch.randn(1, 512, device=DEVICE, dtype=torch.float16)
        triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, None, 128, 8, cfg)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
def test_graph_capture():
    k, n, group_size, bits = 4096, 4096, 128, 4
    qweight, scales, zeros = make_weights(k, n, bits, group_size, torch.bfloat16)
    x = torch.randn(8, k, device=DEVICE, dtype=torch.bfloat16)
    eager = triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits)
    graph.replay()
    torch.testing.assert_close(captured, eager)


@pytest.mark.skipif(DEVICE != "cuda", reason="tuning times kernels on the device")
def test_a_second_start_reads_the_tuned_table_from_disk(tmp_path, monkeypatch):
    from pagedlm.kernels import tuning_cache, wna16_tuning

    monkeypatch.setenv("PAGEDLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PAGEDLM_TUNING_CACHE", "1")
    monkeypatch.setattr(tuning_cache, "_loaded", {})
    monkeypatch.setattr(wna16_tuning, "_TABLE", {})
    k, n, group_size, bits = 1024, 384, 128, 4
    qweight, scales, zeros = make_weights(k, n, bits, group_size, torch.bfloat16)
    wna16_tuning.tune(qweight, scales, zeros, None, group_size, bits)
    first = wna16_tuning._TABLE[(n, k, bits, group_size, False)]
    monkeypatch.setattr(tuning_cache, "_loaded", {})  # a new process
    monkeypatch.setattr(wna16_tuning, "_TABLE", {})
    monkeypatch.setattr(wna16_tuning, "_measure", lambda *a: pytest.fail("timed again"))
    wna16_tuning.tune(qweight, scales, zeros, None, group_size, bits)
    assert wna16_tuning._TABLE[(n, k, bits, group_size, False)] == first


@pytest.mark.skipif(DEVICE != "cuda", reason="tuning times kernels on the device")
def test_tuned_table_is_used_and_correct():
    from pagedlm.kernels import wna16_tuning

    k, n, group_size, bits = 2048, 1536, 128, 4
    qweight, scales, zeros = make_weights(k, n, bits, group_size, torch.bfloat16)
    wna16_tuning.tune(qweight, scales, zeros, None, group_size, bits)
    assert wna16_tuning.lookup(1, n, k, bits, group_size) is not wna16_tuning.NOT_TUNED
    assert wna16_tuning.lookup(4096, n, k, bits, group_size) is None  # past the buckets: dequant + cuBLAS
    for m in (1, 3, 16, 17, 100, 512, 700):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16)
        out = triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, group_size, bits)
        assert rel_err(out, reference(x, qweight, scales, zeros, None, None, group_size, bits)) < TOL, m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_is_exact(dtype, bits):
    """The dequantizer equals the reference bit for bit: the float-bits trick and the int
    conversion give the same (code - zero). (The interpreter also mishandles bitcasts to
    bf16, so bf16 runs on CUDA only.)"""
    k, n, group_size = 256, 128, 32
    qweight, scales, zeros = make_weights(k, n, bits, group_size, dtype)
    zeros[0, :4] = 2**bits  # GPTQ v1's corrupt zero-point (stored -1, read back as 2**bits)
    rg = torch.arange(k, device=DEVICE, dtype=torch.int32).flip(0) // group_size
    for row_groups in (None, rg):
        out = triton_wna16.wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits)
        ref = wna16_reference.wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits)
        assert out.dtype == dtype and torch.equal(out.cpu(), ref.cpu())
