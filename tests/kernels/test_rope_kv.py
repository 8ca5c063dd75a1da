"""RoPE + KV-cache write in one launch (pagedlm.kernels.triton_rope_kv) against the two
launches it replaces and against the reference (CUDA, or TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import reference  # noqa: E402
from pagedlm.kernels.triton_kv_cache import write_kv_cache  # noqa: E402
from pagedlm.kernels.triton_rope_kv import rotary_write_kv_cache  # noqa: E402
from pagedlm.kernels.triton_rotary import rotary_embedding  # noqa: E402
from pagedlm.layers.rotary import compute_cos_sin_cache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 is wrong
HQ, HKV, D, BS, NB = 8, 2, 64, 16, 6


def _problem(cache_dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    t = 5
    qkv = torch.randn(t, (HQ + 2 * HKV) * D, generator=g).to(DEVICE, DTYPE)  # one fused projection output
    q, k, v = qkv.split([HQ * D, HKV * D, HKV * D], dim=-1)  # column slices, as the models pass them
    positions = torch.tensor([0, 7, 3, 40, 41], device=DEVICE)
    slots = torch.tensor([0, 17, -1, 33, 94], device=DEVICE)  # -1: padding, not written
    cos_sin = compute_cos_sin_cache(D, 64, 10000.0, "default", {}, 64, None).to(DEVICE)
    cache = torch.zeros(2, NB, BS, HKV, D, device=DEVICE).to(cache_dtype)
    scale = torch.full((1,), 0.5, device=DEVICE)
    return positions, q, k, v, cos_sin, cache, slots, scale


@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
def test_one_launch_equals_rotary_then_write(cache_dtype: str) -> None:
    dtype = DTYPE if cache_dtype == "model" else torch.float8_e4m3fn
    positions, q, k, v, cos_sin, cache, slots, scale = _problem(dtype, 3)
    fused_cache = cache.clone()
    q_fused = rotary_write_kv_cache(positions, q, k, v, cos_sin, D, fused_cache, slots, scale, scale)
    q_rot, k_rot = rotary_embedding(positions, q, k, cos_sin, D)
    write_kv_cache(k_rot.view(-1, HKV, D), v.reshape(-1, HKV, D), cache, slots, scale, scale)
    assert torch.equal(q_fused, q_rot)
    assert torch.equal(fused_cache.view(torch.uint8), cache.view(torch.uint8))  # every byte, unwritten slots too


def test_matches_the_reference() -> None:
    positions, q, k, v, cos_sin, cache, slots, _ = _problem(DTYPE, 4)
    ref_cache = cache.clone()
    q_out = rotary_write_kv_cache(positions, q, k, v, cos_sin, D, cache, slots)
    q_ref = reference.rotary_write_kv_cache(positions, q, k, v, cos_sin, D, ref_cache, slots)
    torch.testing.assert_close(q_out, q_ref, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(cache.float(), ref_cache.float(), atol=1e-2, rtol=1e-2)
    assert cache[:, 0, 2].abs().sum() == 0  # slot -1 wrote nothing (slot 2 of block 0 is never mapped)


@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
def test_return_key_gives_the_rotated_keys(cache_dtype: str) -> None:
    """return_key: the rotated key of every token (padding slots too), equal to what the
    unfused rotation gives, with the same query and cache as without it."""
    dtype = DTYPE if cache_dtype == "model" else torch.float8_e4m3fn
    positions, q, k, v, cos_sin, cache, slots, scale = _problem(dtype, 5)
    plain_cache = cache.clone()
    q_out, k_out = rotary_write_kv_cache(positions, q, k, v, cos_sin, D, cache, slots, scale, scale, return_key=True)
    q_plain = rotary_write_kv_cache(positions, q, k, v, cos_sin, D, plain_cache, slots, scale, scale)
    q_rot, k_rot = rotary_embedding(positions, q, k, cos_sin, D)
    assert k_out.shape == (q.shape[0], HKV * D) and k_out.dtype == q.dtype
    assert torch.equal(k_out, k_rot.reshape(k_out.shape))
    assert torch.equal(q_out, q_plain) and torch.equal(q_out, q_rot)
    assert torch.equal(cache.view(torch.uint8), plain_cache.view(torch.uint8))
    if cache_dtype == "model":  # the keys read back from the cache are these keys
        flat = cache[0].view(-1, HKV * D)
        written = slots >= 0
        assert torch.equal(flat[slots[written]], k_out[written])
    ref_q, ref_k = reference.rotary_write_kv_cache(positions, q, k, v, cos_sin, D, cache.clone(), slots, scale, scale,
                                                   return_key=True)
    torch.testing.assert_close(k_out.float(), ref_k.float().reshape(k_out.shape), atol=1e-2, rtol=1e-2)
