"""Triton kernels against the PyTorch references (float32 on CPU as the oracle).

Runs on a CUDA machine with Triton; skipped elsewhere (CI has neither). With
TRITON_INTERPRET=1 and Triton installed it also runs on CPU through Triton's interpreter
(slow; a debugging aid). Every case draws fresh random inputs; the paged KV cache is
poisoned with NaN outside the positions a sequence owns, so a kernel that reads past a
sequence's context (or through an unused block-table entry) fails loudly.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import reference, triton_ops  # noqa: E402
from pagedlm.kernels.triton_attention import AttentionConfig, paged_attention_with_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-2  # ||out - ref|| / ||ref|| against a float32 reference, for bf16 and fp16 kernels
# Triton's CPU interpreter computes tl.dot on bf16 wrongly (seen with Triton 3.6), so the
# attention tests that use bf16 run in fp16 there.
ATTN_DTYPE = torch.float16 if DEVICE == "cpu" else torch.bfloat16


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out.float()).all(), "non-finite values in the output"
    err = rel_err(out, ref)
    assert err < tol, f"relative error {err:.3e} >= {tol}"


def poison_allocator(num_bytes: int) -> None:
    """Leave NaN in the memory the next allocation of this size will likely get, so an
    output element the kernel forgets to write shows up."""
    if DEVICE == "cuda":
        torch.full((num_bytes // 4 + 1,), float("nan"), device=DEVICE)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- norms and activation

NORM_SHAPES = [(1, 4096), (37, 1000), (5, 64)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    g = gen(1)
    wide = torch.randn(shape[0], shape[1] + 8, generator=g).to(dtype)
    x = wide[:, 3 : 3 + shape[1]]  # a strided view, as a slice of a fused output would be
    w = (1 + 0.1 * torch.randn(shape[1], generator=g)).to(dtype)
    ref = reference.rms_norm(x.float(), w.float(), 1e-6)
    poison_allocator(x.numel() * x.element_size())
    out = triton_ops.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-6)
    assert out.dtype == dtype
    assert_close(out, ref)


def test_rms_norm_3d_head_norm() -> None:
    # Qwen3-style q/k norm: [T, H, D] with a [D] weight.
    g = gen(2)
    x = torch.randn(7, 8, 128, generator=g).to(torch.bfloat16)
    w = torch.randn(128, generator=g).to(torch.bfloat16)
    out = triton_ops.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-5)
    assert out.shape == x.shape
    assert_close(out, reference.rms_norm(x.float(), w.float(), 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_fused_add_rms_norm(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    g = gen(3)
    x = torch.randn(*shape, generator=g).to(dtype).to(DEVICE)
    res = torch.randn(*shape, generator=g).to(dtype).to(DEVICE)
    w = (1 + 0.1 * torch.randn(shape[1], generator=g)).to(dtype).to(DEVICE)
    x_before, res_before = x.clone(), res.clone()
    ref_out, ref_res = reference.fused_add_rms_norm(x.float().cpu(), res.float().cpu(), w.float().cpu(), 1e-6)
    out, new_res = triton_ops.fused_add_rms_norm(x, res, w, 1e-6)
    assert out.dtype == dtype and new_res.dtype == dtype
    assert_close(out, ref_out)
    assert_close(new_res, ref_res)
    assert torch.equal(x, x_before) and torch.equal(res, res_before), "inputs must be left untouched"
    if DEVICE == "cuda":  # (Triton's CPU interpreter truncates where the GPU rounds to nearest)
        # The residual is rounded exactly as torch's bf16/fp16 add rounds it.
        assert torch.equal(new_res, x + res)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2 * 14336), (17, 2 * 100), (3, 4, 2 * 64)])
def test_silu_and_mul(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = (2 * torch.randn(*shape, generator=gen(4))).to(dtype)
    ref = reference.silu_and_mul(x.float())
    poison_allocator(x.numel() * x.element_size() // 2)
    out = triton_ops.silu_and_mul(x.to(DEVICE))
    assert out.dtype == dtype
    assert_close(out, ref)


# ---------------------------------------------------------------- rotary embedding


def _cos_sin_cache(max_pos: int, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens,num_q_heads,num_kv_heads,head_dim", [
    (1, 32, 8, 128), (37, 8, 8, 64), (5, 16, 2, 128), (9, 12, 4, 96),
])
def test_rotary_embedding(dtype, num_tokens, num_q_heads, num_kv_heads, head_dim) -> None:
    g = gen(5)
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, generator=g).to(dtype)
    positions = torch.randint(0, 4000, (num_tokens,), generator=g)
    cache = _cos_sin_cache(4096, head_dim)
    q, k = qkv[:, :q_size], qkv[:, q_size : q_size + kv_size]
    ref_q, ref_k = reference.rotary_embedding(positions, q.float(), k.float(), cache, head_dim)
    qkv_d = qkv.to(DEVICE)
    q_d, k_d = qkv_d[:, :q_size], qkv_d[:, q_size : q_size + kv_size]
    out_q, out_k = triton_ops.rotary_embedding(positions.to(DEVICE), q_d, k_d, cache.to(DEVICE), head_dim)
    assert out_q.shape == q.shape and out_k.shape == k.shape and out_q.dtype == dtype
    assert_close(out_q, ref_q)
    assert_close(out_k, ref_k)
    # 3-D views [T, H, D] work too.
    out_q3, _ = triton_ops.rotary_embedding(
        positions.to(DEVICE), q_d.view(num_tokens, num_q_heads, head_dim),
        k_d.view(num_tokens, num_kv_heads, head_dim), cache.to(DEVICE), head_dim,
    )
    assert_close(out_q3.reshape(num_tokens, -1), ref_q)


# ---------------------------------------------------------------- KV cache write


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(8, 128), (2, 64), (4, 192)])
def test_write_kv_cache(dtype, block_size, num_kv_heads, head_dim) -> None:
    g = gen(6)
    num_tokens, num_blocks, q_size = 50, 12, 4 * head_dim
    kv_size = num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, generator=g).to(dtype)
    key = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=g)[:7]] = -1  # padding tokens
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    expected = cache.clone()
    reference.write_kv_cache(key, value, expected, slots)
    cache_d = cache.to(DEVICE)
    qkv_d = qkv.to(DEVICE)
    key_d = qkv_d[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    value_d = qkv_d[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    triton_ops.write_kv_cache(key_d, value_d, cache_d, slots.to(DEVICE))
    assert torch.equal(cache_d.cpu(), expected)
    # int32 slot mappings work too.
    cache_d = cache.to(DEVICE)
    triton_ops.write_kv_cache(key_d, value_d, cache_d, slots.to(torch.int32).to(DEVICE))
    assert torch.equal(cache_d.cpu(), expected)


# ---------------------------------------------------------------- paged attention


def make_paged_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, seed,
                     strided_query=False):
    """A batch whose blocks are scattered over the cache; block 0 and every position a
    sequence does not own hold NaN. Returns device tensors and the float32 CPU reference."""
    g = gen(seed)
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
    kv = kv.to(dtype)
    num_tokens = sum(q_lens)
    query = torch.randn(num_tokens, num_q_heads, head_dim, generator=g).to(dtype)
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    scale = head_dim**-0.5
    ref = lambda window, softcap=None: reference.paged_attention(  # noqa: E731
        query.float(), torch.nan_to_num(kv.float()), qsl, seq_lens_t, block_tables,
        max(q_lens), max(seq_lens), scale, window, softcap,
    )
    query_d = query.to(DEVICE)
    if strided_query:  # a view into a wider fused-QKV buffer
        wide = torch.randn(num_tokens, num_q_heads + 3, head_dim).to(dtype).to(DEVICE)
        wide[:, :num_q_heads] = query_d
        query_d = wide[:, :num_q_heads]
    args = (query_d, kv.to(DEVICE), qsl.to(DEVICE), seq_lens_t.to(DEVICE), block_tables.to(DEVICE),
            max(q_lens), max(seq_lens), scale)
    return args, ref


SCENARIOS = {
    # name: (q_lens, seq_lens)
    "decode_small": ([1] * 5, [1, 17, 100, 513, 1000]),
    "decode_batch": ([1] * 40, [1 + (37 * i) % 300 for i in range(40)]),
    "mixed": ([37, 50, 1, 1, 130, 1], [37, 120, 33, 1, 330, 700]),
    "prefill": ([300, 64, 3], [300, 564, 20]),
}
HEAD_CONFIGS = [
    # dtype, block_size, num_q_heads, num_kv_heads, head_dim
    (torch.bfloat16, 16, 32, 8, 128),  # Llama-3.1-8B, GQA 4
    (torch.bfloat16, 32, 32, 4, 128),  # GQA 8
    (torch.bfloat16, 16, 8, 8, 64),  # MHA
    (torch.float16, 32, 16, 4, 64),  # GQA 4, fp16
    (torch.float16, 16, 16, 2, 128),  # GQA 8, fp16
    (torch.bfloat16, 32, 4, 4, 128),  # MHA, block 32
    (torch.bfloat16, 16, 4, 4, 192),  # DeepSeek MLA's decompressed heads: 128 + 64, masked in a 256 tile
]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("head_config", HEAD_CONFIGS, ids=lambda c: f"{str(c[0])[6:]}-bs{c[1]}-{c[2]}q{c[3]}kv-d{c[4]}")
def test_paged_attention(scenario, head_config) -> None:
    dtype, block_size, num_q_heads, num_kv_heads, head_dim = head_config
    dtype = ATTN_DTYPE if dtype == torch.bfloat16 else dtype
    q_lens, seq_lens = SCENARIOS[scenario]
    seed = sum(map(ord, scenario)) + 100 * HEAD_CONFIGS.index(head_config)
    args, ref = make_paged_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, seed,
                                 strided_query=scenario == "mixed")
    poison_allocator(args[0].numel() * args[0].element_size())
    out = triton_ops.paged_attention(*args)
    assert out.dtype == dtype
    assert_close(out, ref(None))


@pytest.mark.parametrize("scenario", ["decode_small", "mixed", "prefill"])
@pytest.mark.parametrize("window", [1, 40])
def test_paged_attention_sliding_window(scenario, window) -> None:
    q_lens, seq_lens = SCENARIOS[scenario]
    args, ref = make_paged_batch(q_lens, seq_lens, 16, 4, 128, 16, ATTN_DTYPE, seed=window)
    out = triton_ops.paged_attention(*args, sliding_window=window)
    assert_close(out, ref(window))


@pytest.mark.parametrize("scenario", ["decode_small", "decode_batch", "mixed", "prefill"])
@pytest.mark.parametrize("softcap, window", [(0.5, None), (2.0, None), (1.0, 40)])
def test_paged_attention_softcap(scenario, softcap, window) -> None:
    """Gemma 2 logit soft-capping; caps of 0.5-2 bite hard on N(0, 1) logits (the uncapped
    output differs), with and without a sliding window, decode and split-K included."""
    q_lens, seq_lens = SCENARIOS[scenario]
    args, ref = make_paged_batch(q_lens, seq_lens, 8, 4, 256, 16, ATTN_DTYPE, seed=int(softcap * 10))
    out = triton_ops.paged_attention(*args, sliding_window=window, softcap=softcap)
    expected = ref(window, softcap)
    assert_close(out, expected)
    assert rel_err(ref(window), expected) > 0.05  # the cap changes the result


@pytest.mark.parametrize("config", [
    AttentionConfig(block_m=16, tile_n=64, num_warps=4, num_stages=3, num_segments=1),
    AttentionConfig(block_m=16, tile_n=32, num_warps=4, num_stages=2, num_segments=3),
    AttentionConfig(block_m=16, tile_n=16, num_warps=4, num_stages=2, num_segments=64),
    AttentionConfig(block_m=64, tile_n=64, num_warps=4, num_stages=2),  # the mixed-batch kernel on decodes
], ids=["nosplit", "split3", "split64", "general"])
def test_paged_attention_decode_configs(config) -> None:
    q_lens, seq_lens = SCENARIOS["decode_small"]
    args, ref = make_paged_batch(q_lens, seq_lens, 32, 8, 128, 16, ATTN_DTYPE, seed=7)
    query, kv, qsl, lens, tables, max_q, max_s, scale = args
    if config.block_m == 64:
        max_q = 2  # not "decode only": take the general path
    out = paged_attention_with_config(query, kv, qsl, lens, tables, max_q, max_s, scale, None, config)
    assert_close(out, ref(None))


@pytest.mark.parametrize("config,decode_config", [
    (AttentionConfig(block_m=16, tile_n=64, num_warps=4, num_stages=2), None),
    (AttentionConfig(block_m=128, tile_n=32, num_warps=8, num_stages=2), None),
    (AttentionConfig(block_m=64, tile_n=64, num_warps=4, num_stages=2),
     AttentionConfig(block_m=16, tile_n=32, num_warps=4, num_stages=2, num_segments=4)),
], ids=["one-launch-m16", "one-launch-m128", "two-launch-split"])
def test_paged_attention_prefill_configs(config, decode_config) -> None:
    q_lens, seq_lens = SCENARIOS["mixed"]
    args, ref = make_paged_batch(q_lens, seq_lens, 32, 8, 128, 16, ATTN_DTYPE, seed=8)
    out = paged_attention_with_config(*args, None, config, decode_config)
    assert_close(out, ref(None))


@pytest.mark.parametrize("config", [AttentionConfig(block_m=16, tile_n=16, num_warps=4, num_stages=2),
                                    AttentionConfig(block_m=64, tile_n=64, num_warps=4, num_stages=2)],
                         ids=["m16-n16", "m64-n64"])
def test_paged_attention_whole_tiles_sharp_logits(config) -> None:
    """Chunks and a decode after cached prefixes several tiles long, so most KV tiles run in
    the unmasked form; logits scaled 8x make each row's running max jump from tile to tile
    (the online rescale), against the float32 reference at the same scale."""
    q_lens, seq_lens = [40, 1, 7], [300, 200, 150]
    args, _ = make_paged_batch(q_lens, seq_lens, 32, 8, 128, 16, ATTN_DTYPE, seed=21)
    query, kv, qsl, lens, tables, max_q, max_s, scale = args
    expected = reference.paged_attention(query.float().cpu(), torch.nan_to_num(kv.float().cpu()), qsl.cpu(),
                                         lens.cpu(), tables.cpu(), max_q, max_s, 8 * scale)
    out = paged_attention_with_config(query, kv, qsl, lens, tables, max_q, max_s, 8 * scale, None, config)
    assert_close(out, expected)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_paged_attention_in_cuda_graph() -> None:
    """The decode path (split-K included) never syncs, so it captures and replays."""
    q_lens, seq_lens = SCENARIOS["decode_small"]
    args, ref = make_paged_batch(q_lens, seq_lens, 32, 8, 128, 16, ATTN_DTYPE, seed=9)
    query, kv, qsl, lens, tables, _, _, scale = args
    max_seq_len = 2048  # captured once for the longest context it will replay with
    triton_ops.paged_attention(query, kv, qsl, lens, tables, 1, max_seq_len, scale)  # compile first
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.paged_attention(query, kv, qsl, lens, tables, 1, max_seq_len, scale)
    new_query = torch.randn_like(query)
    query.copy_(new_query)
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.paged_attention(
        new_query.float().cpu(), torch.nan_to_num(kv.float().cpu()), qsl.cpu(), lens.cpu(), tables.cpu(),
        1, max(seq_lens), scale,
    )
    assert_close(out, expected)


# ---------------------------------------------------------------- prefill rows through TMA

PREFILL_SCENARIOS = {
    # name: (q_lens, seq_lens); every case has enough prefill work for the prefill kernel
    "fresh": ([300, 129, 2, 700], [300, 129, 2, 700]),
    "after_prefix": ([256, 540, 330], [320, 640, 337]),  # cached 64 (whole tiles), 100, 7 (partial)
    "mixed": ([1, 300, 1, 1, 850], [50, 300, 700, 1, 1183]),  # decodes ride along
}


def step_kv(kv: torch.Tensor, tables: torch.Tensor, q_lens, seq_lens, strided: bool):
    """This step's keys and values ([T, Hkv * D], token order) as the cache holds them; the
    values as a column slice of a wider buffer, as a fused QKV projection hands them over."""
    block_size = kv.shape[2]
    keys, values = [], []
    for b, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):
        pos = torch.arange(seq_len - q_len, seq_len)
        blocks, offs = tables[b, pos // block_size].long().cpu(), pos % block_size
        keys.append(kv[0].cpu()[blocks, offs])
        values.append(kv[1].cpu()[blocks, offs])
    key = torch.cat(keys).flatten(1).to(DEVICE)
    value = torch.cat(values).flatten(1)
    if strided:
        wide = torch.zeros(value.shape[0], 3 * value.shape[1], dtype=value.dtype)
        wide[:, value.shape[1] : 2 * value.shape[1]] = value
        value = wide.to(DEVICE)[:, value.shape[1] : 2 * value.shape[1]]
    return key, value.to(DEVICE)


@pytest.mark.parametrize("scenario", list(PREFILL_SCENARIOS))
@pytest.mark.parametrize("heads", [(32, 8, 128, 16), (8, 8, 64, 32), (16, 2, 128, 16)],
                         ids=lambda h: f"{h[0]}q{h[1]}kv-d{h[2]}-bs{h[3]}")
def test_prefill_rows_read_this_steps_keys(scenario, heads) -> None:
    """With this step's K/V handed over, the prefill rows read their own positions from them
    (the cache holds NaN there, so a read through the block table would show) and the cached
    prefix through the block table; decode rows read the cache. Against the float32 reference
    on the clean cache."""
    from pagedlm.kernels import triton_prefill_attention

    num_q_heads, num_kv_heads, head_dim, block_size = heads
    q_lens, seq_lens = PREFILL_SCENARIOS[scenario]
    args, ref = make_paged_batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, ATTN_DTYPE,
                                 seed=31 + len(scenario), strided_query=scenario == "mixed")
    query, kv, qsl, lens, tables, max_q, max_s, scale = args
    key, value = step_kv(kv, tables, q_lens, seq_lens, strided=scenario != "fresh")
    assert triton_prefill_attention.supports(query, key, value, kv, None, None)
    expected = ref(None)  # before the poisoning (on CPU the reference shares the cache)
    for b, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):  # poison the prefill rows' own positions
        if q_len > 1:
            pos = torch.arange(seq_len - q_len, seq_len)
            kv[:, tables[b, pos // block_size].long(), (pos % block_size).to(DEVICE)] = float("nan")
    poison_allocator(query.numel() * query.element_size())
    out = triton_ops.paged_attention(query, kv, qsl, lens, tables, max_q, max_s, scale, key=key, value=value)
    assert_close(out, expected)


@pytest.mark.skipif(DEVICE != "cuda", reason="measures CUDA allocations")
def test_split_decodes_beside_a_prefill_keep_partials_per_sequence() -> None:
    """A step with prefill work runs its decode rows in a launch that splits their contexts
    into segments; the segments' partial sums are kept per sequence, not per token of the
    step (per token, the engine's 16,384-token profile run held 16 GiB of them on an 8B
    model, and the KV cache lost that much)."""
    from pagedlm.kernels.triton_attention import default_config

    q_lens, seq_lens = PREFILL_SCENARIOS["mixed"]
    args, ref = make_paged_batch(q_lens, seq_lens, 32, 8, 128, 16, ATTN_DTYPE, seed=5)
    query, kv, qsl, lens, tables, max_q, max_s, scale = args
    assert default_config(len(q_lens), 32, 8, 128, 1, max_s, query.device, len(q_lens)).num_segments > 1
    key, value = step_kv(kv, tables, q_lens, seq_lens, strided=False)
    call = lambda: triton_ops.paged_attention(query, kv, qsl, lens, tables, max_q, max_s, scale,  # noqa: E731
                                              key=key, value=value)
    call()  # compiles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    scratch = torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()
    assert scratch < query.shape[0] * 32 * 128 * 4  # less than one float32 row per token and head
    assert_close(out, ref(None))


@pytest.mark.parametrize("tile", [(128, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)],
                         ids=lambda t: "M{}-N{}-w{}-s{}".format(*t))
def test_prefill_kernel_tile_configs(tile) -> None:
    """Each tile config on chunks after cached prefixes (whole and partial tiles) and a fresh
    prompt, decode rows left alone."""
    from pagedlm.kernels import triton_prefill_attention

    q_lens, seq_lens = [200, 1, 70, 133], [264, 30, 170, 133]
    args, ref = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, ATTN_DTYPE, seed=tile[0] + tile[1])
    query, kv, qsl, lens, tables, _, _, scale = args
    key, value = step_kv(kv, tables, q_lens, seq_lens, strided=True)
    expected = ref(None)
    out = torch.full_like(query, 5.0)
    triton_prefill_attention.prefill_attention(out, query, key, value, kv, qsl, lens, tables, scale,
                                               triton_prefill_attention.PrefillConfig(*tile))
    prefill_rows = torch.ones(query.shape[0], dtype=torch.bool)
    prefill_rows[200] = False  # the decode row
    assert (out[200].float() == 5.0).all()
    assert_close(out[prefill_rows.to(out.device)], expected[prefill_rows])


def test_prefill_config_needs_whole_tiles_per_block() -> None:
    from pagedlm.kernels.triton_prefill_attention import PrefillConfig, default_config

    with pytest.raises(ValueError, match="multiple of tile_n"):
        PrefillConfig(block_m=64, tile_n=128)
    assert default_config(1024).block_m == 64 and default_config(1025).block_m == 128


def test_prefill_kernel_declines_what_it_does_not_cover(monkeypatch) -> None:
    """Windows, soft-capping, an fp8 cache, other head sizes, missing K/V and
    PAGEDLM_PREFILL_ATTENTION=0 stay on the paged kernel."""
    from pagedlm.kernels import triton_prefill_attention

    q_lens, seq_lens = PREFILL_SCENARIOS["fresh"]
    args, _ = make_paged_batch(q_lens, seq_lens, 8, 2, 128, 16, ATTN_DTYPE, seed=3)
    query, kv, _, _, tables, _, _, _ = args
    key, value = step_kv(kv, tables, q_lens, seq_lens, strided=False)
    supports = triton_prefill_attention.supports
    assert supports(query, key, value, kv, None, None)
    assert not supports(query, None, None, kv, None, None)
    assert not supports(query, key, value, kv, 40, None)
    assert not supports(query, key, value, kv, None, 30.0)
    assert not supports(query, key, value, kv.to(torch.float8_e4m3fn), None, None)
    assert not supports(query.float(), key.float(), value.float(), kv.float(), None, None)
    monkeypatch.setenv("PAGEDLM_PREFILL_ATTENTION", "0")
    assert not supports(query, key, value, kv, None, None)
    monkeypatch.delenv("PAGEDLM_PREFILL_ATTENTION")
    args, _ = make_paged_batch(q_lens, seq_lens, 8, 2, 256, 16, ATTN_DTYPE, seed=3)
    key, value = step_kv(args[1], args[4], q_lens, seq_lens, strided=False)
    assert not supports(args[0], key, value, args[1], None, None)
