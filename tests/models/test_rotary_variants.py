"""RoPE options of the rotary layer against transformers' own functions: partial rotary
(GPT-NeoX's rotate-half on the first features), GPT-J-style rotation of adjacent pairs
(whole head and partial), and the plain case still going through the fused op."""

from __future__ import annotations

import pytest
import torch

from pagedlm.layers.rotary import RotaryEmbedding

HEAD_DIM, NUM_Q, NUM_KV, MAX_POS = 16, 4, 2, 64


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    positions = torch.tensor([0, 1, 5, 17, 63, 2])
    q = torch.randn(len(positions), NUM_Q * HEAD_DIM, generator=gen)
    k = torch.randn(len(positions), NUM_KV * HEAD_DIM, generator=gen)
    return positions, q, k


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.view(1, -1, num_heads, HEAD_DIM).transpose(1, 2)  # [1, H, T, D] as transformers holds it


@pytest.mark.parametrize("rotary_dim", [4, 8, 16])
def test_partial_neox_matches_gpt_neox(rotary_dim):
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    positions, q, k = _inputs()
    rope = RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=rotary_dim)
    got_q, got_k = rope(positions, q, k)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    freqs = torch.outer(positions.double(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    ref_q, ref_k = apply_rotary_pos_emb(_heads(q, NUM_Q), _heads(k, NUM_KV), emb.cos()[None].float(),
                                        emb.sin()[None].float())
    assert torch.allclose(_heads(got_q, NUM_Q), ref_q, atol=1e-5)
    assert torch.allclose(_heads(got_k, NUM_KV), ref_k, atol=1e-5)
    if rotary_dim < HEAD_DIM:  # the features past rotary_dim pass through untouched
        assert torch.equal(_heads(got_q, NUM_Q)[..., rotary_dim:], _heads(q, NUM_Q)[..., rotary_dim:])
        assert not torch.allclose(got_q, RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0)(positions, q, k)[0], atol=1e-3)


@pytest.mark.parametrize("rotary_dim", [8, 16])
def test_interleaved_matches_gptj(rotary_dim):
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb, create_sinusoidal_positions

    positions, q, k = _inputs(1)
    rope = RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=rotary_dim, is_neox_style=False)
    got_q, got_k = rope(positions, q, k)
    sin, cos = create_sinusoidal_positions(MAX_POS, rotary_dim)[positions].chunk(2, dim=-1)
    for got, x, num_heads in ((got_q, q, NUM_Q), (got_k, k, NUM_KV)):
        heads = x.view(1, -1, num_heads, HEAD_DIM)  # [1, T, H, D]: GPT-J rotates before the transpose
        ref_rot = apply_rotary_pos_emb(heads[..., :rotary_dim], sin[None], cos[None])
        ref = torch.cat((ref_rot, heads[..., rotary_dim:]), dim=-1)
        assert torch.allclose(got.view(1, -1, num_heads, HEAD_DIM), ref, atol=1e-5)
    neox = RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=rotary_dim)(positions, q, k)[0]
    assert not torch.allclose(got_q, neox, atol=1e-3)


def test_plain_rope_still_fuses_with_the_cache_write():
    assert RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0).fuses_with_cache_write
    assert RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=HEAD_DIM).fuses_with_cache_write
    assert not RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=8).fuses_with_cache_write
    assert not RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, is_neox_style=False).fuses_with_cache_write
    with pytest.raises(ValueError, match="rotary_dim"):
        RotaryEmbedding(HEAD_DIM, MAX_POS, 10000.0, rotary_dim=7)
