"""IncrementalDetokenizer: incremental == full decode, split characters, special tokens, stop strings."""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from pagedlm.demo import build_tokenizer  # noqa: E402
from pagedlm.engine.detokenizer import IncrementalDetokenizer  # noqa: E402
from pagedlm.sampling_params import SamplingParams  # noqa: E402

UNICODE_TEXT = "café 東京 🙂🚀 naïve Straße, 日本語 ← arrows →"
REPL = "\ufffd"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


def enc(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def run(
    tok: Any,
    ids: list[int],
    params: SamplingParams | None = None,
    prompt: list[int] | None = None,
    chunk: int = 1,
    stop_terminated: bool = False,
) -> tuple[IncrementalDetokenizer, list[str], str | None]:
    """Feed ids `chunk` at a time; collect the streamed deltas; finish. Returns (detok, deltas, stop)."""
    detok = IncrementalDetokenizer(tok, prompt or [], params or SamplingParams())
    deltas: list[str] = []
    stop = None
    for i in range(0, len(ids), chunk):
        last = i + chunk >= len(ids)
        stop = detok.update(ids[i : i + chunk], stop_terminated and last)
        deltas.append(detok.get_next_output_text(finished=stop is not None, delta=True))
        if stop is not None:
            break
    deltas.append(detok.get_next_output_text(finished=True, delta=True))
    return detok, deltas, stop


# ---------------------------------------------------------------- incremental == full decode


@pytest.mark.parametrize("skip", [True, False])
def test_random_sequences_match_full_decode(tok: Any, skip: bool) -> None:
    rng = random.Random(1234 + skip)
    vocab = len(tok)
    for trial in range(150):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randrange(0, 10))]
        params = SamplingParams(skip_special_tokens=skip)
        detok, deltas, _ = run(tok, ids, params, prompt=prompt, chunk=rng.randrange(1, 4))
        expected = tok.decode(ids, skip_special_tokens=skip)
        assert detok.output_text == expected, (trial, ids, prompt)
        assert "".join(deltas) == expected


def test_unicode_text_streams_without_replacement_chars(tok: Any) -> None:
    ids = enc(tok, UNICODE_TEXT)
    prompt = enc(tok, "Unicode text: ")
    assert REPL in "".join(tok.decode([i]) for i in ids)  # the tokens really split characters
    detok, deltas, _ = run(tok, ids, prompt=prompt)
    assert all(REPL not in d for d in deltas), deltas
    assert "".join(deltas) == UNICODE_TEXT == detok.output_text


def test_random_slices_of_unicode_text(tok: Any) -> None:
    rng = random.Random(7)
    ids = enc(tok, UNICODE_TEXT * 3)
    for _ in range(100):
        a = rng.randrange(len(ids))
        piece = ids[a : a + rng.randrange(1, 25)]
        detok, deltas, _ = run(tok, piece, chunk=rng.randrange(1, 3))
        assert detok.output_text == tok.decode(piece) == "".join(deltas)


def test_split_character_withheld_until_complete(tok: Any) -> None:
    ids = enc(tok, "café")
    pieces = [tok.decode([i]) for i in ids]
    split = next(k for k, p in enumerate(pieces) if p.endswith(REPL))  # e.g. "f" + first byte of é
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    for k, token_id in enumerate(ids):
        detok.update([token_id], False)
        delta = detok.get_next_output_text(finished=False, delta=True)
        assert REPL not in delta
        if k == split:
            assert delta == "" and detok.output_text == tok.decode(ids[:k])
    assert detok.output_text == "café"


def test_incomplete_last_character_flushed_at_finish(tok: Any) -> None:
    ids = enc(tok, "ok 🙂")
    cut = ids[:-1]  # the emoji's last bytes never come (e.g. max_tokens reached)
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    detok.update(cut, False)
    assert REPL not in detok.get_next_output_text(finished=False, delta=True)
    rest = detok.get_next_output_text(finished=True, delta=True)
    assert REPL in rest
    assert detok.output_text == tok.decode(cut)


def test_prompt_context_gives_leading_space() -> None:
    vocab = {"<unk>": 0, "▁The": 1, "▁capital": 2, "▁is": 3, "▁Paris": 4, ".": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.decoder = decoders.Metaspace()
    sp_tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert sp_tok.decode([4, 5]) == "Paris."  # on its own the first "▁" is stripped
    detok, deltas, _ = run(sp_tok, [4, 5], prompt=[1, 2, 3])
    assert detok.output_text == " Paris." == "".join(deltas)


def test_work_per_token_is_bounded(tok: Any) -> None:
    class CountingBackend:
        def __init__(self, inner: Any) -> None:
            self.inner, self.max_len = inner, 0

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            self.max_len = max(self.max_len, len(ids))
            return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Wrapped:
        def __init__(self, inner: Any) -> None:
            self.backend_tokenizer = CountingBackend(inner.backend_tokenizer)

    ids = enc(tok, UNICODE_TEXT * 30) + [tok.eos_token_id] * 200 + enc(tok, UNICODE_TEXT * 30)
    wrapped = Wrapped(tok)
    detok, _, _ = run(wrapped, ids, prompt=enc(tok, "The quick brown fox"))
    assert detok.output_text == tok.decode(ids, skip_special_tokens=True)
    assert len(ids) > 500 and wrapped.backend_tokenizer.max_len <= 30


def test_detokenize_false_gives_no_text(tok: Any) -> None:
    ids = enc(tok, "Hello world")
    detok, deltas, stop = run(tok, ids, SamplingParams(detokenize=False))
    assert detok.output_text == "" and deltas == [""] * len(deltas) and stop is None
    assert detok.output_token_ids == ids


# ---------------------------------------------------------------- special tokens


def test_special_tokens_skipped_or_kept(tok: Any) -> None:
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    ids = enc(tok, "Hello") + [eot] + enc(tok, " world")
    skipped, _, _ = run(tok, ids)
    kept, deltas, _ = run(tok, ids, SamplingParams(skip_special_tokens=False))
    assert skipped.output_text == "Hello world"
    assert kept.output_text == "Hello<|eot_id|> world" == "".join(deltas)


def _wordpiece_tokenizer() -> Any:
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "##s": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(cleanup=False)  # joins tokens with spaces
    backend.add_special_tokens(["<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_spaces_between_special_tokens() -> None:
    wp = _wordpiece_tokenizer()
    s, e = wp.convert_tokens_to_ids(["<s>", "</s>"])
    ids = [1, s, e, 3, 2]
    spaced, _, _ = run(wp, ids, SamplingParams(skip_special_tokens=False))
    assert spaced.output_text == wp.decode(ids, skip_special_tokens=False) == "hello <s> </s>s world"
    params = SamplingParams(skip_special_tokens=False, spaces_between_special_tokens=False)
    tight, deltas, _ = run(wp, ids, params)
    assert tight.output_text == "hello <s></s>s world" == "".join(deltas)
    skipped, _, _ = run(wp, ids, SamplingParams(spaces_between_special_tokens=False))
    assert skipped.output_text == wp.decode(ids, skip_special_tokens=True) == "hellos world"


def test_decode_token_matches_convert_tokens_to_string(tok: Any) -> None:
    detok = IncrementalDetokenizer(tok, [], SamplingParams())
    for token_id in range(len(tok)):
        expected = tok.convert_tokens_to_string(tok.convert_ids_to_tokens([token_id]))
        assert detok.decode_token(token_id) == expected
    assert detok.decode_token(tok.eos_token_id) == "<|eot_id|>"



# ---------------------------------------------------------------- stop strings


TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("um", "The quick brown fox j"),  # strictly inside one token (" jum")
        ("brown fox", "The quick "),  # across tokens
        ("Th", ""),  # at the very start
        ("lazy dog.", "The quick brown fox jumps over the "),  # at the very end
    ],
)
def test_stop_string_cuts_text(tok: Any, stop: str, expected: str, chunk: int) -> None:
    ids = enc(tok, TEXT)
    pieces = [tok.decode([i]) for i in ids]
    if stop == "um":
        assert any(stop in p and p != stop for p in pieces)
    if stop == "brown fox":
        assert all(stop not in p for p in pieces)
    detok, deltas, matched = run(tok, ids, SamplingParams(stop=[stop]), chunk=chunk)
    assert matched == stop
    assert detok.output_text == expected == "".join(deltas)


def test_stop_string_included_in_output(tok: Any) -> None:
    ids = enc(tok, TEXT)
    params = SamplingParams(stop=["brown fox"], include_stop_str_in_output=True)
    detok, deltas, matched = run(tok, ids, params)
    assert matched == "brown fox"
    assert detok.output_text == "The quick brown fox" == "".join(deltas)


def test_earliest_stop_string_wins(tok: Any) -> None:
    ids = enc(tok, TEXT)
    detok, _, matched = run(tok, ids, SamplingParams(stop=["dog", "quick"]), chunk=len(ids))
    assert matched == "quick" and detok.output_text == "The "


def test_no_stop_string_no_cut(tok: Any) -> None:
    ids = enc(tok, TEXT)
    detok, deltas, matched = run(tok, ids, SamplingParams(stop=["cat", "xyz"]))
    assert matched is None and detok.output_text == TEXT == "".join(deltas)


def test_updates_after_stop_are_ignored(tok: Any) -> None:
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["fox"]))
    assert detok.update(enc(tok, "The quick brown fox"), False) == "fox"
    assert detok.update(enc(tok, " jumps"), False) is None
    assert detok.output_text == "The quick brown "


def test_stop_string_ignored_within_min_tokens(tok: Any) -> None:
    ids = enc(tok, "The fox and the fox")
    first_fox_tokens = len(enc(tok, "The fox"))
    params = SamplingParams(stop=["fox"], min_tokens=first_fox_tokens, max_tokens=50)
    detok, _, matched = run(tok, ids, params)
    assert matched == "fox" and detok.output_text == "The fox and the "


# ---------------------------------------------------------------- stop tokens


def test_stop_terminated_skips_eos(tok: Any) -> None:
    eot = tok.eos_token_id
    ids = enc(tok, "Hello world") + [eot]
    params = SamplingParams(skip_special_tokens=False)
    detok, deltas, _ = run(tok, ids, params, stop_terminated=True)
    assert detok.output_text == "Hello world" == "".join(deltas)
    params = SamplingParams(skip_special_tokens=False, include_stop_str_in_output=True)
    detok, _, _ = run(tok, ids, params, stop_terminated=True)
    assert detok.output_text == "Hello world<|eot_id|>"


def test_stop_terminated_on_ordinary_stop_token(tok: Any) -> None:
    ids = enc(tok, "Hello world.")
    period = ids[-1]
    assert tok.decode([period]) == "."
    params = SamplingParams(stop_token_ids=[period])
    detok, _, _ = run(tok, ids, params, chunk=2, stop_terminated=True)
    assert detok.output_text == "Hello world"
    assert detok.output_token_ids == ids


# ---------------------------------------------------------------- hold-back of partial stop strings


def test_partial_stop_string_held_back(tok: Any) -> None:
    detok = IncrementalDetokenizer(tok, [], SamplingParams(stop=["STOP!", "ab"]))
    assert detok.update(enc(tok, "Hello world"), False) is None
    # max stop length 5: the last 4 chars might begin a stop string
    assert detok.get_next_output_text(finished=False, delta=True) == "Hello w"
    assert detok.get_next_output_text(finished=False, delta=False) == "Hello w"
    assert detok.get_next_output_text(finished=False, delta=True) == ""
    assert detok.update(enc(tok, " ST"), False) is None
    assert detok.get_next_output_text(finished=False, delta=True) == "orl"  # " ST" + 1 more held
    assert detok.get_next_output_text(finished=True, delta=True) == "d ST"
    assert detok.output_text == "Hello world ST"


def test_partial_stop_then_match_never_leaks(tok: Any) -> None:
    ids = enc(tok, "Hello world STOP! more")
    detok, deltas, matched = run(tok, ids, SamplingParams(stop=["STOP!"]))
    assert matched == "STOP!"
    assert "".join(deltas) == "Hello world "
    assert all("S" not in d for d in deltas)


def test_no_hold_back_with_include_stop_str(tok: Any) -> None:
    params = SamplingParams(stop=["STOP!"], include_stop_str_in_output=True)
    detok = IncrementalDetokenizer(tok, [], params)
    detok.update(enc(tok, "Hello world"), False)
    assert detok.get_next_output_text(finished=False, delta=True) == "Hello world"
