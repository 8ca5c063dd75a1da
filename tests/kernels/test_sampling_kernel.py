"""One-pass greedy / temperature sampling (pagedlm.kernels.triton_sampling) against the
reference (CUDA, or TRITON_INTERPRET=1 on CPU): the same token for the same uniform draws,
greedy rows exactly torch.argmax, and Philox draws that follow softmax(logits / t)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import reference  # noqa: E402
from pagedlm.kernels.triton_sampling import sample_argmax  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _scores(logits: torch.Tensor, temperature: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """The reference's per-token scores for the draws u (what the argmax is taken over)."""
    x = logits.float()
    if temperature is not None:
        greedy = (temperature < 1e-5).unsqueeze(1)
        x = x / torch.where(greedy, 1.0, temperature.unsqueeze(1))
        return x - torch.where(greedy, 0.0, (-u.log()).log())
    return x - (-u.log()).log()


@pytest.mark.parametrize("vocab", [300, 4096, 9001])  # one chunk; exactly one; three with a tail
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_temperature", [True, False])
def test_same_draws_same_tokens_as_the_reference(vocab: int, dtype: torch.dtype, with_temperature: bool) -> None:
    g = torch.Generator().manual_seed(vocab)
    rows = 6
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(DEVICE, dtype)
    u = torch.rand(rows, vocab, generator=g).clamp_(1e-12, 1 - 1e-7).to(DEVICE)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3, 0.0, 2.0], device=DEVICE) if with_temperature else None
    got = sample_argmax(logits, temperature, uniforms=u)
    want = reference.sample_argmax(logits.clone(), temperature, uniforms=u)
    scores = _scores(logits, temperature, u)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    # The kernel's log is not torch's to the last bit: a different token only on a near-tie.
    best = scores.max(dim=1).values
    assert torch.all(scores.gather(1, got.unsqueeze(1)).squeeze(1) >= best - 1e-4 * best.abs().clamp(min=1))
    assert (got == want).float().mean() >= 5 / 6
    if with_temperature:  # greedy rows: exactly the argmax, no noise
        assert got[0] == logits[0].float().argmax() and got[4] == logits[4].float().argmax()


def test_greedy_ties_take_the_first_index_across_chunks() -> None:
    vocab = 9001
    logits = torch.zeros(3, vocab, device=DEVICE)
    logits[0, [5000, 8999]] = 2.0  # tie in two later chunks
    logits[1, [17, 4096 + 17]] = 1.0  # tie in the first and second chunk
    logits[2, [4097, 4098]] = 3.0  # tie inside one chunk
    got = sample_argmax(logits, torch.zeros(3, device=DEVICE))
    assert got.tolist() == [5000, 17, 4097] == logits.argmax(dim=1).tolist()


def test_philox_draws_follow_softmax_and_repeat_with_the_seed() -> None:
    rows, vocab = 2048, 4
    logits = torch.tensor([0.0, 1.0, 2.0, 0.5], device=DEVICE).repeat(rows, 1)
    temperature = torch.full((rows,), 0.8, device=DEVICE)
    torch.manual_seed(0)
    got = sample_argmax(logits, temperature)
    freq = torch.bincount(got.cpu(), minlength=vocab).float() / rows
    want = torch.softmax(logits[0].cpu() / 0.8, dim=0)
    assert torch.allclose(freq, want, atol=0.035), (freq, want)
    torch.manual_seed(0)
    assert torch.equal(sample_argmax(logits, temperature), got)  # torch's seed fixes the draws
    assert not torch.equal(sample_argmax(logits, temperature), got)  # and every call draws anew


def test_empty_batch() -> None:
    assert sample_argmax(torch.zeros(0, 10, device=DEVICE), None).shape == (0,)
