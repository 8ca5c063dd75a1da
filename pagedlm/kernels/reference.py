"""PyTorch reference implementations of every custom op.

These are the CPU path and the oracle for the Triton kernels, which keep the same
signatures (see ``pagedlm.kernels.ops``). Shapes use T = tokens in the step, B = sequences,
Hq / Hkv = query / KV heads, D = head dim, NB = KV blocks, BS = block size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedlm.attention.kv_cache_dtype import fp8_max, is_fp8
from pagedlm.kernels.step_prep import prepare_step  # noqa: F401 - the op table's reference entry
from pagedlm.sampling_params import SAMPLING_EPS


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [T, H]
    orig_dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf.to(orig_dtype) * weight) if orig_dtype == torch.float32 else (xf * weight.float()).to(orig_dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual)."""
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2 * I] -> [T, I]
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm, then dynamic per-token quantization of its output: (codes [T, H], scale [T, 1]).
    What an 8-bit linear layer after the norm would do to its input first thing (the Triton
    op does both in one launch)."""
    from pagedlm.kernels import quant_reference  # noqa: PLC0415

    normed = rms_norm(x, weight, eps)
    return quant_reference.per_token_quant(normed.reshape(-1, normed.shape[-1]), code_dtype)


def fused_add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                             code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fused_add_rms_norm with its normalised output quantized per token: (codes, scale, x + residual)."""
    from pagedlm.kernels import quant_reference  # noqa: PLC0415

    normed, new_residual = fused_add_rms_norm(x, residual, weight, eps)
    return (*quant_reference.per_token_quant(normed.reshape(-1, normed.shape[-1]), code_dtype), new_residual)


def rotary_embedding(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq * D]
    key: torch.Tensor,  # [T, Hkv * D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D] float32: cos in the first half, sin in the second
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style (rotate-half) RoPE, as Llama/Qwen/Mistral checkpoints use."""
    cos_sin = cos_sin_cache.index_select(0, positions)
    cos, sin = cos_sin.chunk(2, dim=-1)  # [T, D/2] each
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(shape[0], -1, head_dim).float()
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out.to(query.dtype).view(shape)

    return rotate(query), rotate(key)


def quantize_kv(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """fp8(x / scale), clamped to the format's range (e4m3fn has no inf: an overflow would be
    NaN). Float32 math, round to nearest even, as the Triton write does."""
    xf = x.float() if scale is None else x.float() / scale.float()
    limit = fp8_max(dtype)
    return xf.clamp(-limit, limit).to(dtype)


def dequantize_kv(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """x * scale in ``dtype``; a non-fp8 cache passes through unchanged."""
    if not is_fp8(x.dtype):
        return x.to(dtype)
    xf = x.float() if scale is None else x.float() * scale.float()
    return xf.to(dtype)


def write_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64, block_id * BS + offset; -1 = padding, not written
    k_scale: torch.Tensor | None = None,  # [1] float32: an fp8 cache stores fp8(key / k_scale)
    v_scale: torch.Tensor | None = None,  # [1] float32; None = 1.0; ignored by non-fp8 caches
) -> None:
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    flat = kv_cache.view(2, -1, kv_cache.shape[-2], kv_cache.shape[-1])
    if is_fp8(kv_cache.dtype):
        # index_copy_ has no fp8 kernel on CPU: copy the bytes.
        key = quantize_kv(key, k_scale, kv_cache.dtype).view(torch.uint8)
        value = quantize_kv(value, v_scale, kv_cache.dtype).view(torch.uint8)
        flat = flat.view(torch.uint8)
    flat[0].index_copy_(0, slot_mapping, key.to(flat.dtype))
    flat[1].index_copy_(0, slot_mapping, value.to(flat.dtype))


def rotary_write_kv_cache(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq * D]
    key: torch.Tensor,  # [T, Hkv * D]
    value: torch.Tensor,  # [T, Hkv * D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D] float32
    head_dim: int,
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T]; -1 = not written
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    return_key: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RoPE on query and key, then key and value into the cache; returns the rotated query
    (with ``return_key``, the rotated query and key [T, Hkv * D], for an attention that reads
    this step's keys directly). The Triton op does it in one launch; this is
    ``rotary_embedding`` then ``write_kv_cache``."""
    query, key = rotary_embedding(positions, query, key, cos_sin_cache, head_dim)
    num_kv_heads = kv_cache.shape[-2]
    write_kv_cache(key.view(key.shape[0], num_kv_heads, head_dim), value.reshape(value.shape[0], num_kv_heads, head_dim),
                   kv_cache, slot_mapping, k_scale, v_scale)
    return (query, key) if return_key else query


_Scales = tuple[torch.Tensor | None, torch.Tensor | None]  # (k_scale, v_scale) of an fp8 cache


def _gather_blocks(kv_cache: torch.Tensor, block_ids: torch.Tensor, scales: _Scales,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the given blocks, each [*block_ids.shape, BS, Hkv, D], in ``dtype`` (an
    fp8 cache dequantized with ``scales``). index_select on a 2-D view copies whole blocks at
    memory speed (advanced indexing of the 5-D cache is several times slower on CPU)."""
    num_blocks = kv_cache.shape[1]
    shape = (*block_ids.shape, *kv_cache.shape[2:])
    flat_ids = block_ids.reshape(-1)
    k = kv_cache[0].view(num_blocks, -1).index_select(0, flat_ids).view(shape)
    v = kv_cache[1].view(num_blocks, -1).index_select(0, flat_ids).view(shape)
    return dequantize_kv(k, scales[0], dtype), dequantize_kv(v, scales[1], dtype)


def _gather_kv(kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int, scales: _Scales,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # -> K, V each [seq_len, Hkv, D]
    k, v = _gather_blocks(kv_cache, block_ids, scales, dtype)
    return k.flatten(0, 1)[:seq_len], v.flatten(0, 1)[:seq_len]


def _attend_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                     softcap: float | None, sinks: torch.Tensor | None) -> torch.Tensor:
    """What SDPA cannot express: Gemma 2's capped logits, softcap * tanh(s / softcap), and
    gpt-oss's attention sinks, one learned logit per query head in each softmax's
    denominator that contributes no value (the sink's share of the probability is dropped)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is None:
        probs = scores.softmax(-1)
    else:  # [B, Hq, Q, L] + the sink column [B, Hq, Q, 1]; its probability dropped after the softmax
        sink = sinks.float().reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]
    return torch.matmul(probs, v.float()).to(q.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
            softcap: float | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    # q [B, Hq, Q, D], k/v [B, Hkv, L, D], mask [B, 1, Q, L] bool (True = attend), sinks [Hq] or None
    group = q.shape[1] // k.shape[1]
    k, v = k.to(q.dtype), v.to(q.dtype)
    if softcap or sinks is not None:
        return _attend_explicit(q, k, v, mask, scale, softcap, sinks)
    if group > 1 and q.shape[2] == 1:
        # Decode: the group's query heads become a length-`group` query over their shared
        # K/V head, so K/V are read once and never copied per query head.
        b, hq, _, d = q.shape
        out = F.scaled_dot_product_attention(q.view(b, hq // group, group, d), k, v, attn_mask=mask, scale=scale)
        return out.reshape(b, hq, 1, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=group > 1)


def paged_attention(
    query: torch.Tensor,  # [T, Hq, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32: context length including this step's tokens
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    k_scale: torch.Tensor | None = None,  # [1] float32: an fp8 cache holds K / k_scale (None = 1.0)
    v_scale: torch.Tensor | None = None,  # [1] float32: likewise V / v_scale
    key: torch.Tensor | None = None,  # [T, Hkv * D]: this step's keys as written to the cache
    value: torch.Tensor | None = None,  # [T, Hkv * D]: likewise its values
    sinks: torch.Tensor | None = None,  # [Hq]: attention-sink logits (gpt-oss), None = none
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its whole context, read through
    the block table. Covers decode (1 query token), prefill and prefill after a prefix hit
    (query tokens start at seq_len - query_len), in one call for a mixed batch.
    ``key`` / ``value`` are what this step wrote into the cache (before any fp8 rounding); a
    kernel may read this step's positions from them instead (the Triton prefill kernel does,
    for caches in the model's dtype); this reference reads the cache for every position.
    max_query_len / max_seq_len are the batch maxima (the GPU kernels size their grid by them).
    ``softcap`` (Gemma 2) caps the scaled logits: softcap * tanh(s / softcap); None or 0 = off.
    ``sinks`` (gpt-oss): per query head, one extra logit in the softmax's denominator with no
    value, so a row's weights sum to less than 1 (the sink is not scaled or capped).
    An fp8 cache is read as fp8 * scale in the query's dtype."""
    out = torch.empty_like(query)
    scales = (k_scale, v_scale)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    block_size = kv_cache.shape[2]
    decode_rows = [b for b in range(len(lens)) if starts[b + 1] - starts[b] == 1]
    if decode_rows:
        _decode_batch(query, kv_cache, starts, lens, block_tables, decode_rows, block_size, scale, sliding_window,
                      softcap, out, scales, sinks)
    for b in range(len(lens)):
        q_len = starts[b + 1] - starts[b]
        if q_len <= 1:
            continue
        seq_len = lens[b]
        num_blocks = (seq_len + block_size - 1) // block_size
        k, v = _gather_kv(kv_cache, block_tables[b, :num_blocks].long(), seq_len, scales, query.dtype)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device).unsqueeze(1)  # [Q, 1]
        k_pos = torch.arange(seq_len, device=query.device).unsqueeze(0)  # [1, L]
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
        q = query[starts[b] : starts[b + 1]].transpose(0, 1).unsqueeze(0)
        o = _attend(q, k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), mask[None, None], scale,
                    softcap, sinks)
        out[starts[b] : starts[b + 1]] = o[0].transpose(0, 1)
    return out


def _decode_batch(query, kv_cache, starts, lens, block_tables, rows, block_size, scale, sliding_window, softcap,
                  out, scales: _Scales, sinks: torch.Tensor | None = None) -> None:
    """All single-token queries at once: K/V gathered padded to the longest context."""
    max_len = max(lens[b] for b in rows)
    num_blocks = (max_len + block_size - 1) // block_size
    device = query.device
    row_idx = torch.tensor(rows, device=device)
    tables = block_tables[row_idx, :num_blocks].long()  # [R, nb]
    k, v = _gather_blocks(kv_cache, tables, scales, query.dtype)  # [R, nb, BS, Hkv, D] each
    k, v = k.flatten(1, 2)[:, :max_len], v.flatten(1, 2)[:, :max_len]  # [R, L, Hkv, D]
    seq_lens = torch.tensor([lens[b] for b in rows], device=device)
    k_pos = torch.arange(max_len, device=device).unsqueeze(0)
    mask = k_pos < seq_lens.unsqueeze(1)  # [R, L]
    if sliding_window is not None:
        mask &= k_pos > (seq_lens.unsqueeze(1) - 1 - sliding_window)
    token_idx = torch.tensor([starts[b] for b in rows], device=device)
    q = query[token_idx].unsqueeze(2)  # [R, Hq, 1, D]
    o = _attend(q, k.transpose(1, 2), v.transpose(1, 2), mask[:, None, None, :], scale, softcap, sinks)
    out[token_idx] = o.squeeze(2)


# ---- sampling ---------------------------------------------------------------------------------


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """x [B, V] -> the first index of each row's maximum [B], as ``x.argmax(-1)``.

    At a few rows one reduction over a 128k vocabulary runs on a handful of blocks (27 us
    on an H200 at batch 1); splitting each row into chunks reduces B x chunks rows in
    parallel, then the chunk maxima (the first chunk among equal maxima: first index kept)."""
    b, v = x.shape
    chunks = _CHUNKS.get(v)
    if chunks is None:
        chunks = _CHUNKS[v] = next((c for c in range(256, 15, -1) if v % c == 0), 1)
    if b >= 32 or chunks == 1 or not x.is_contiguous():
        return x.argmax(dim=-1)
    values, indices = x.view(b, chunks, v // chunks).max(dim=-1)  # [B, C]
    best = values.argmax(dim=-1, keepdim=True)  # [B, 1]
    return (indices.gather(1, best) + best * (v // chunks)).squeeze(1)


_CHUNKS: dict[int, int] = {}


def exponential_noise(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """q ~ Exp(1) of ``shape``, from torch's generator: -log(U), several times faster than
    exponential_() on CPU."""
    q = torch.empty(shape, dtype=torch.float32, device=device)
    return torch.rand(q.shape, out=q).log_().neg_()


def sample_argmax(logits: torch.Tensor, temperature: torch.Tensor | None,
                  uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy / temperature sampling by the exponential race: per row argmax(logits / t - log q),
    q ~ Exp(1) (the same argmax as p / q: log is monotonic and softmax's normaliser is one
    constant per row), a draw from softmax(logits / t) with no softmax, cumsum or sync.
    logits [B, V]; temperature [B] float32, rows below 1e-5 greedy (no noise), or None: every row
    sampled as it is (float32 logits are then modified in place). ``uniforms`` [B, V]: q = -log(u)
    from these draws instead of torch's generator (tests). -> token ids [B] int64."""
    x = logits.to(torch.float32)
    greedy = None
    if temperature is not None:
        greedy = (temperature < SAMPLING_EPS).unsqueeze(1)
        x = x / torch.where(greedy, 1.0, temperature.unsqueeze(1))
    q = exponential_noise(x.shape, x.device) if uniforms is None else uniforms.to(torch.float32).log().neg_()
    log_q = q.log_()
    if greedy is not None:
        log_q.masked_fill_(greedy, 0.0)
    return row_argmax(x.sub_(log_q))
