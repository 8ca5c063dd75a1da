"""fp8 KV cache in the Triton kernels (KV write, paged attention) against the PyTorch
reference, which stays the oracle: the write must produce the reference's bytes, attention
over an fp8 cache must equal float32 attention over the dequantized cache.

CUDA only (compute capability 8.9+ for Triton's fp8 casts); skipped elsewhere. Under
TRITON_INTERPRET=1 the attention tests also run on CPU (the interpreter widens fp8
correctly); the write test does not: the interpreter's fp32 -> fp8 cast neither rounds to
nearest even nor carries a rounded-up mantissa into the exponent.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
    pytest.skip("fp8 casts in Triton need compute capability 8.9+", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import reference, triton_ops  # noqa: E402
from pagedlm.kernels.triton_attention import AttentionConfig, paged_attention_with_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATTN_DTYPE = torch.float16 if DEVICE == "cpu" else torch.bfloat16  # the interpreter's bf16 tl.dot is wrong
FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2]
TOL = 1e-2  # ||out - ref|| / ||ref||, as for the 16-bit cache kernels


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out.float()).all(), "non-finite values in the output"
    err = rel_err(out, ref)
    assert err < tol, f"relative error {err:.3e} >= {tol}"


def scale_tensor(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float32, device=DEVICE)


# ---------------------------------------------------------------- KV write


@pytest.mark.skipif(_INTERPRET, reason="the Triton interpreter's fp32 -> fp8 cast does not round like the GPU")
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.37, 0.011)], ids=["unit", "scaled"])
def test_write_kv_cache_fp8(cache_dtype, in_dtype, scales) -> None:
    g = torch.Generator().manual_seed(11)
    num_tokens, num_blocks, block_size, num_kv_heads, head_dim = 300, 40, 16, 8, 128
    # Spread over the whole fp8 range and past it (clamped), subnormals included.
    key = (torch.randn(num_tokens, num_kv_heads, head_dim, generator=g) * 40).to(in_dtype)
    value = (torch.randn(num_tokens, num_kv_heads, head_dim, generator=g) * 0.5).to(in_dtype)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[::17] = -1  # padding tokens
    k_scale, v_scale = scale_tensor(scales[0]), scale_tensor(scales[1])
    expected = torch.zeros(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=cache_dtype)
    reference.write_kv_cache(key, value, expected, slots, k_scale.cpu(), v_scale.cpu())
    cache = torch.zeros_like(expected, device=DEVICE)
    triton_ops.write_kv_cache(key.to(DEVICE), value.to(DEVICE), cache, slots.to(DEVICE), k_scale, v_scale)
    got, want = cache.cpu().view(torch.uint8), expected.view(torch.uint8)
    # Both round x / scale (IEEE division, float32) to nearest even: the bytes should be
    # identical; allow a rare one-step tie difference rather than fail on it.
    differ = got != want
    assert differ.float().mean().item() <= 1e-3, f"{int(differ.sum())} of {got.numel()} bytes differ"
    assert ((got.int() - want.int()).abs()[differ] <= 1).all(), "a byte differs by more than one fp8 step"
    assert torch.isfinite(cache.float()).all()  # clamped, never NaN / inf
    # Padding slots are untouched.
    flat = cache.view(2, -1, num_kv_heads, head_dim).cpu().float()
    unused = torch.ones(num_blocks * block_size, dtype=torch.bool)
    unused[slots[slots >= 0]] = False
    assert (flat[:, unused] == 0).all()


# ---------------------------------------------------------------- paged attention


def make_fp8_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, cache_dtype, k_scale,
                   v_scale, seed):
    """Blocks scattered over an fp8 cache holding fp8(x / scale); block 0 and every slot a
    sequence does not own hold NaN. Returns device args and the float32 reference over the
    dequantized cache."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_seq) + 3
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 2, dtype=torch.int32)
    ids = torch.randperm(num_blocks - 1, generator=g) + 1
    kv = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    flat = kv.view(2, -1, num_kv_heads, head_dim)
    used = 0
    for b, (n, seq_len) in enumerate(zip(blocks_per_seq, seq_lens)):
        block_tables[b, :n] = ids[used : used + n].int()
        used += n
        pos = torch.arange(seq_len)
        slots = block_tables[b, pos // block_size].long() * block_size + pos % block_size
        flat[:, slots] = torch.randn(2, seq_len, num_kv_heads, head_dim, generator=g)
    ks, vs = torch.tensor([k_scale]), torch.tensor([v_scale])
    cache = torch.stack([reference.quantize_kv(kv[0], ks, cache_dtype), reference.quantize_kv(kv[1], vs, cache_dtype)])
    dequant = torch.stack([reference.dequantize_kv(cache[0], ks, torch.float32),
                           reference.dequantize_kv(cache[1], vs, torch.float32)])
    num_tokens = sum(q_lens)
    query = torch.randn(num_tokens, num_q_heads, head_dim, generator=g).to(ATTN_DTYPE)
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    scale = head_dim**-0.5
    ref = reference.paged_attention(query.float(), torch.nan_to_num(dequant), qsl, lens, block_tables, max(q_lens),
                                    max(seq_lens), scale)
    args = (query.to(DEVICE), cache.to(DEVICE), qsl.to(DEVICE), lens.to(DEVICE), block_tables.to(DEVICE),
            max(q_lens), max(seq_lens), scale)
    return args, (scale_tensor(k_scale), scale_tensor(v_scale)), ref


def clean_cache(cache: torch.Tensor) -> torch.Tensor:
    """The fp8 cache on the CPU with its NaN poison zeroed (masked keys still multiply V by
    0 in the reference, and 0 * NaN is NaN); the other values round-trip exactly."""
    return reference.quantize_kv(torch.nan_to_num(cache.float().cpu()), None, cache.dtype)


SCENARIOS = {
    "decode_small": ([1] * 5, [1, 17, 100, 513, 1000]),  # split-K decode
    "decode_batch": ([1] * 40, [1 + (37 * i) % 300 for i in range(40)]),
    "mixed": ([37, 50, 1, 1, 130, 1], [37, 120, 33, 1, 330, 700]),
    "prefill": ([300, 64, 3], [300, 564, 20]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cache_dtype", FP8_DTYPES, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.05, 0.02)], ids=["unit", "scaled"])
def test_paged_attention_fp8(scenario, cache_dtype, scales) -> None:
    q_lens, seq_lens = SCENARIOS[scenario]
    args, (k_scale, v_scale), ref = make_fp8_batch(q_lens, seq_lens, 32, 8, 128, 16, cache_dtype, *scales, seed=3)
    out = triton_ops.paged_attention(*args, k_scale=k_scale, v_scale=v_scale)
    assert out.dtype == ATTN_DTYPE
    assert_close(out, ref)


@pytest.mark.parametrize("head_config", [(8, 8, 64, 32), (16, 2, 128, 16), (8, 4, 256, 16)],
                         ids=["mha-d64-bs32", "gqa8-d128", "gqa2-d256"])
def test_paged_attention_fp8_head_shapes(head_config) -> None:
    num_q_heads, num_kv_heads, head_dim, block_size = head_config
    q_lens, seq_lens = SCENARIOS["mixed"]
    args, (k_scale, v_scale), ref = make_fp8_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim,
                                                   block_size, torch.float8_e4m3fn, 0.1, 0.3, seed=4)
    assert_close(triton_ops.paged_attention(*args, k_scale=k_scale, v_scale=v_scale), ref)


@pytest.mark.parametrize("config", [
    AttentionConfig(block_m=16, tile_n=64, num_warps=4, num_stages=3, num_segments=1),
    AttentionConfig(block_m=16, tile_n=16, num_warps=4, num_stages=2, num_segments=64),
], ids=["nosplit", "split64"])
def test_paged_attention_fp8_decode_configs(config) -> None:
    """v_scale must be applied to each split-K partial before the combine."""
    q_lens, seq_lens = SCENARIOS["decode_small"]
    args, (k_scale, v_scale), ref = make_fp8_batch(q_lens, seq_lens, 32, 8, 128, 16, torch.float8_e4m3fn, 0.05,
                                                   0.02, seed=5)
    out = paged_attention_with_config(*args, None, config, k_scale=k_scale, v_scale=v_scale)
    assert_close(out, ref)


def test_paged_attention_fp8_softcap_window() -> None:
    q_lens, seq_lens = SCENARIOS["mixed"]
    args, (k_scale, v_scale), _ = make_fp8_batch(q_lens, seq_lens, 8, 4, 128, 16, torch.float8_e4m3fn, 0.5, 0.5,
                                                 seed=6)
    query, cache, qsl, lens, tables, max_q, max_s, scale = args
    expected = reference.paged_attention(query.float().cpu(), clean_cache(cache), qsl.cpu(), lens.cpu(), tables.cpu(),
                                         max_q, max_s, scale, 40, 1.0, k_scale.cpu(), v_scale.cpu())
    out = triton_ops.paged_attention(*args, sliding_window=40, softcap=1.0, k_scale=k_scale, v_scale=v_scale)
    assert_close(out, expected)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_fp8_scales_are_read_at_run_time_in_a_cuda_graph() -> None:
    """Scales live in device memory: a graph captured with one value replays with the new one."""
    q_lens, seq_lens = SCENARIOS["decode_small"]
    args, (k_scale, v_scale), _ = make_fp8_batch(q_lens, seq_lens, 32, 8, 128, 16, torch.float8_e4m3fn, 1.0, 1.0,
                                                 seed=7)
    query, cache, qsl, lens, tables, _, _, scale = args
    run = lambda: triton_ops.paged_attention(query, cache, qsl, lens, tables, 1, 2048, scale,  # noqa: E731
                                             k_scale=k_scale, v_scale=v_scale)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    k_scale.fill_(0.25)
    v_scale.fill_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.paged_attention(query.float().cpu(), clean_cache(cache), qsl.cpu(), lens.cpu(), tables.cpu(),
                                         1, max(seq_lens), scale, None, None, k_scale.cpu(), v_scale.cpu())
    assert_close(out, expected)
