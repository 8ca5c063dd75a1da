"""The offline API as a vLLM user writes it: every SamplingParams field walked (each changes
the output or is refused), a vLLM-style script unchanged but for the import, beam search,
output kinds, prompts as TextPrompt/TokensPrompt, and the offline extras."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import CompletionOutput
from pagedlm.sampling_params import VLLM_ONLY_FIELDS, RequestOutputKind, StructuredOutputsParams

PROMPT = "Hello world, this is"


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    from pagedlm.demo import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("dropin_ckpt"))
    return LLM(str(path), max_model_len=256, num_gpu_blocks_override=256, device="cpu")


class Gen:
    """Greedy, 12 tokens, unless told otherwise; ``base`` is the default-params output."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.tok = llm.get_tokenizer()
        self.base = self(temperature=0)

    def __call__(self, **kw: Any) -> CompletionOutput:
        return self.all(**kw).outputs[0]

    def all(self, **kw: Any):
        params = {"temperature": 0.0, "max_tokens": 12, **kw}
        return self.llm.generate(PROMPT, SamplingParams(**params), use_tqdm=False)[0]


def _sampled(g: Gen, **kw: Any) -> list[int]:
    return g(temperature=1.0, seed=7, **kw).token_ids


def _clean_word(g: Gen) -> tuple[int, str]:
    """(position, text) of the first generated token that is a plain word on its own."""
    for i, t in enumerate(g.base.token_ids):
        text = g.tok.decode([t]).strip()
        if text.isalnum() and g.tok.encode(text, add_special_tokens=False) == [t]:
            return i, text
    pytest.skip("no plain-word token in the greedy output")


def _stop_string(g: Gen) -> str:
    return g.base.text[4:6]


def _check_stop(g: Gen) -> bool:
    stop = _stop_string(g)
    return g(stop=[stop]).text == g.base.text[: g.base.text.index(stop)]


def _check_output_kind(g: Gen) -> bool:
    engine = g.llm.llm_engine
    seen: dict[RequestOutputKind, list] = {}
    for kind in RequestOutputKind:
        engine.add_request(f"kind-{kind.name}", PROMPT, SamplingParams(temperature=0, max_tokens=5, output_kind=kind))
        outs = []
        while engine.has_unfinished_requests():
            outs += engine.step()
        seen[kind] = outs
    cumulative, delta, final = (seen[k] for k in RequestOutputKind)
    return (len(final) == 1 and final[0].finished and len(cumulative) == len(delta) > 1
            and [len(o.outputs[0].token_ids) for o in cumulative] == list(range(1, len(cumulative) + 1))
            and all(len(o.outputs[0].token_ids) == 1 for o in delta))


def _refused(fn: Callable[[], Any], needle: str) -> bool:
    try:
        fn()
    except ValueError as e:
        return needle in str(e)
    return False


# field -> check(g) that is True only if the field did what it says. One entry per field.
SAMPLING_FIELDS: dict[str, Callable[[Gen], bool] | str | None] = {
    "n": lambda g: len(g.all(n=2, temperature=1.0, seed=1).outputs) == 2,
    "presence_penalty": lambda g: g(presence_penalty=2.0).token_ids != g.base.token_ids,
    "frequency_penalty": lambda g: g(frequency_penalty=2.0).token_ids != g.base.token_ids,
    "repetition_penalty": lambda g: g(repetition_penalty=3.0).token_ids != g.base.token_ids,
    "temperature": lambda g: _sampled(g) != g.base.token_ids,
    "top_p": lambda g: _sampled(g, top_p=0.3) != _sampled(g),
    "top_k": lambda g: _sampled(g, top_k=3) != _sampled(g),
    "min_p": lambda g: _sampled(g, min_p=0.3) != _sampled(g),
    "seed": lambda g: _sampled(g) != g(temperature=1.0, seed=8).token_ids,
    "stop": _check_stop,
    "stop_token_ids": lambda g: g(stop_token_ids=[g.base.token_ids[2]]).token_ids == g.base.token_ids[:3],
    "bad_words": lambda g: g(bad_words=[_clean_word(g)[1]]).token_ids[_clean_word(g)[0]]
    != g.base.token_ids[_clean_word(g)[0]],
    "ignore_eos": lambda g: len(g(logit_bias={g.tok.eos_token_id: 100}, ignore_eos=True).token_ids) == 12
    and len(g(logit_bias={g.tok.eos_token_id: 100}).token_ids) == 1,
    "max_tokens": lambda g: len(g(max_tokens=3).token_ids) == 3,
    "min_tokens": lambda g: len(g(logit_bias={g.tok.eos_token_id: 100}, min_tokens=4).token_ids) == 5,
    "logprobs": lambda g: g.base.logprobs is None and len(g(logprobs=2).logprobs) == 12
    and g(logprobs=True).logprobs == g(logprobs=1).logprobs,  # True is 1, as vLLM's
    "prompt_logprobs": lambda g: g.all(prompt_logprobs=1).prompt_logprobs is not None
    and g.all(prompt_logprobs=True).prompt_logprobs == g.all(prompt_logprobs=1).prompt_logprobs,
    "detokenize": lambda g: g(detokenize=False).text == "" and g.base.text != "",
    "skip_special_tokens": lambda g: "<|begin_of_text|>" in g(allowed_token_ids=[g.tok.bos_token_id], max_tokens=3,
                                                              skip_special_tokens=False).text,
    # Byte-level BPE decoders add no spaces, so this needs a WordPiece tokenizer: shown there.
    "spaces_between_special_tokens": "tests/unit/test_detokenizer.py::test_spaces_between_special_tokens",
    "include_stop_str_in_output": lambda g: g(stop=[_stop_string(g)], include_stop_str_in_output=True).text.endswith(
        _stop_string(g)),
    "logit_bias": lambda g: set(g(logit_bias={65: 100}).token_ids) == {65},
    "allowed_token_ids": lambda g: set(g(allowed_token_ids=[65, 66]).token_ids) <= {65, 66},
    "structured_outputs": lambda g: g(structured_outputs=StructuredOutputsParams(choice=["yes", "no"])).text
    in ("yes", "no"),
    "output_kind": _check_output_kind,
    "truncate_prompt_tokens": lambda g: len(g.all(truncate_prompt_tokens=2).prompt_token_ids) == 2
    and g.all(truncate_prompt_tokens=2).prompt_token_ids == g.all().prompt_token_ids[-2:]
    and g(truncate_prompt_tokens=2).token_ids != g.base.token_ids
    and _refused(lambda: g(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
    # vLLM's: clone() is the params themselves, and the outputs are as without it (n choices still
    # get their own seeds).
    "skip_clone": lambda g: (lambda sp: sp.clone() is sp)(SamplingParams(skip_clone=True))
    and [o.token_ids for o in g.all(n=2, temperature=1.0, seed=1, skip_clone=True).outputs]
    == [o.token_ids for o in g.all(n=2, temperature=1.0, seed=1).outputs],
    # The listed ids' logprobs at each position, with the sampled token's, in place of the top-k
    # (values and ranks: tests/unit/test_logprob_token_ids.py).
    "logprob_token_ids": lambda g: (lambda out: out.token_ids == g.base.token_ids and all(
        set(step) == {t, 65, 66} for t, step in zip(out.token_ids, out.logprobs)))(g(logprob_token_ids=[65, 66]))
    and _refused(lambda: SamplingParams(logprob_token_ids=[]), "logprob_token_ids"),
    # vLLM's fields for features pagedlm lacks: the default changes nothing, another value is refused.
    **{name: (lambda g, name=name, value=value: g(**{name: VLLM_ONLY_FIELDS[name][0][0]}).token_ids
              == g.base.token_ids and _refused(lambda: SamplingParams(**{name: value}), name))
       for name, value in (("prompt_logprob_token_ids", [1]),
                           ("prompt_logprob_start", 2),
                           ("thinking_token_budget", 64),
                           ("routed_experts_prompt_start", 1), ("trace_decode_token_ids", [1, 2]))},
    # The same logprobs in vLLM's FlatLogprobs (tests/unit/test_flat_logprobs.py).
    "flat_logprobs": lambda g: [dict(p) for p in g(flat_logprobs=True, logprobs=2).logprobs]
    == g(logprobs=2).logprobs and _refused(lambda: SamplingParams(flat_logprobs=1), "flat_logprobs"),
    # No prefix-cache hits for the request (test_skip_reading_prefix_cache); the same tokens.
    "skip_reading_prefix_cache": lambda g: g(skip_reading_prefix_cache=True).token_ids == g.base.token_ids
    and _refused(lambda: SamplingParams(skip_reading_prefix_cache=False, prompt_logprobs=1),
                 "skip_reading_prefix_cache"),
    # Ends a request that repeats itself (tests/unit/test_repetition_detection.py); off, the same.
    "repetition_detection": lambda g: g(repetition_detection={"max_pattern_size": 0}).token_ids == g.base.token_ids
    and _refused(lambda: SamplingParams(repetition_detection={"max_pattern_size": 2}), "min_count"),
    # Outputs of a streamed request every k tokens (tests/unit/test_stream_interval.py); a final
    # answer is the same.
    "stream_interval": lambda g: g(stream_interval=4).token_ids == g.base.token_ids
    and _refused(lambda: SamplingParams(stream_interval=0), "stream_interval"),
    # Read by custom logits processors: refused by an engine that loads none (the processors
    # themselves: tests/unit/test_custom_logits_processors.py).
    "extra_args": lambda g: g(extra_args={}).token_ids == g.base.token_ids
    and _refused(lambda: g(extra_args={"k": 1}), "extra_args"),
    # Filled in by the engine, not user settings (repr=False).
    "all_stop_token_ids": None,
    "bad_words_token_ids": None,
}


def test_every_sampling_field_has_an_entry() -> None:
    assert {f.name for f in dataclasses.fields(SamplingParams)} == set(SAMPLING_FIELDS)
    assert set(VLLM_ONLY_FIELDS) <= set(SAMPLING_FIELDS)


@pytest.fixture(scope="module")
def gen(llm: LLM) -> Gen:
    return Gen(llm)


@pytest.mark.parametrize("field", [k for k, v in SAMPLING_FIELDS.items() if v is not None])
def test_sampling_field(gen: Gen, field: str) -> None:
    check = SAMPLING_FIELDS[field]
    if isinstance(check, str):  # shown by the named test
        path, name = check.split("::")
        assert f"def {name}(" in (Path(__file__).resolve().parents[2] / path).read_text()
        return
    assert check(gen), field


def test_vllm_style_offline_script(llm: LLM) -> None:
    # As in vLLM's docs, with `vllm` replaced by `pagedlm`.
    from pagedlm import BeamSearchParams, RequestOutputKind  # noqa: F401
    from pagedlm.inputs import TextPrompt, TokensPrompt

    prompts = ["Hello, my name is", "The capital of France is", TextPrompt(prompt="The future of AI is"),
               TokensPrompt(prompt_token_ids=[1, 2, 3])]
    sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8, seed=0)
    outputs = llm.generate(prompts, sampling_params)
    for output in outputs:
        assert isinstance(output.outputs[0].text, str) and len(output.outputs[0].token_ids) == 8
    assert outputs[0].prompt == "Hello, my name is" and outputs[3].prompt_token_ids == [1, 2, 3]
    conversation = [{"role": "system", "content": "You are a helpful assistant"},
                    {"role": "user", "content": "Hello"}]
    chat_out = llm.chat(conversation, sampling_params, use_tqdm=False)[0]
    assert chat_out.prompt is not None and "You are a helpful assistant" in chat_out.prompt
    assert llm.chat(conversation, sampling_params, use_tqdm=False, mm_processor_kwargs=None)[0].prompt == chat_out.prompt
    with pytest.raises(ValueError, match="mm_processor_kwargs"):
        llm.chat(conversation, sampling_params, use_tqdm=False, mm_processor_kwargs={"num_crops": 4})
    defaults = llm.get_default_sampling_params()
    defaults.max_tokens = 4
    assert len(llm.generate("Hi", defaults, use_tqdm=False)[0].outputs[0].token_ids) == 4
    assert llm.reset_prefix_cache() is True
    names = {m.name for m in llm.get_metrics()}
    assert {"vllm:generation_tokens", "vllm:num_requests_running", "vllm:iteration_tokens_total"} <= names
    generated = next(m for m in llm.get_metrics() if m.name == "vllm:generation_tokens")
    assert generated.value >= 8 * 4


def test_use_tqdm_may_be_the_progress_bar_factory(llm: LLM) -> None:
    """vLLM's use_tqdm takes a callable that makes the bar (functools.partial(tqdm, ...)); it
    was only tested for truth, and the default tqdm bar shown instead."""
    from tqdm import tqdm

    from pagedlm import BeamSearchParams

    made: list[dict[str, Any]] = []

    def factory(**kwargs: Any) -> tqdm:
        made.append(kwargs)
        return tqdm(disable=True, **kwargs)

    llm.generate(["a", "b"], SamplingParams(max_tokens=2), use_tqdm=factory)
    llm.beam_search(["a"], BeamSearchParams(beam_width=2, max_tokens=2), use_tqdm=factory)
    assert [m["total"] for m in made] == [2, 2]


def test_beam_search_keeps_the_best_beams(llm: LLM, capsys: pytest.CaptureFixture) -> None:
    from pagedlm import BeamSearchParams
    from pagedlm.inputs import TokensPrompt

    width, steps = 3, 4
    out = llm.beam_search([TokensPrompt(prompt_token_ids=[5, 6, 7]), "Hello"],
                          BeamSearchParams(beam_width=width, max_tokens=steps), use_tqdm=True)
    assert "Beam search" in capsys.readouterr().err
    assert len(out) == 2
    seqs = out[0].sequences
    assert len(seqs) == width and seqs[0].tokens[:3] == [5, 6, 7]
    scores = [s.cum_logprob / len(s.tokens) for s in seqs]
    assert scores == sorted(scores, reverse=True)
    # The best beam's score beats greedy decoding's (beam search explores more).
    greedy = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=steps,
                                                                          logprobs=0), use_tqdm=False)[0]
    greedy_lp = greedy.outputs[0].cumulative_logprob
    if len(greedy.outputs[0].token_ids) == steps:
        assert seqs[0].cum_logprob >= greedy_lp - 1e-4
    assert seqs[0].text == llm.get_tokenizer().decode(seqs[0].tokens)
    with pytest.raises(ValueError, match="beam_width"):
        BeamSearchParams(beam_width=0, max_tokens=2)


def test_beam_search_vllm_signature(llm: LLM) -> None:
    """vLLM's beam_search(prompts, params, lora_request, use_tqdm, concurrency_limit): searching
    the prompts two at a time gives what searching them together gives."""
    from pagedlm.sampling_params import BeamSearchParams  # where vLLM's is: vllm.sampling_params

    params = BeamSearchParams(beam_width=2, max_tokens=3)
    prompts = ["Hello", "The sky", {"prompt": "A cat", "cache_salt": "tenant"}]
    together = llm.beam_search(prompts, params, None, False)
    chunked = llm.beam_search(prompts, params, lora_request=None, use_tqdm=False, concurrency_limit=2)
    assert [[s.tokens for s in o.sequences] for o in chunked] == [[s.tokens for s in o.sequences] for o in together]
    with pytest.raises(ValueError, match="concurrency_limit"):
        llm.beam_search(prompts, params, concurrency_limit=0)
    with pytest.raises(ValueError, match="lora requests"):
        llm.beam_search(prompts, params, lora_request=[None])


def test_cache_salt_separates_prefix_cache_hits(llm: LLM) -> None:
    """A prompt dict's cache_salt (vLLM's): the same prompt under another salt misses the prefix
    cache; under the same salt it hits."""
    prompt = {"prompt_token_ids": list(range(10, 60)), "cache_salt": "alice"}
    params = SamplingParams(temperature=0, max_tokens=2)
    llm.reset_prefix_cache()
    first = llm.generate(prompt, params, use_tqdm=False)[0]
    same = llm.generate(prompt, params, use_tqdm=False)[0]
    other = llm.generate({**prompt, "cache_salt": "bob"}, params, use_tqdm=False)[0]
    unsalted = llm.generate({"prompt_token_ids": prompt["prompt_token_ids"]}, params, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0 and same.num_cached_tokens >= 32
    assert other.num_cached_tokens == 0 and unsalted.num_cached_tokens == 0
    assert same.outputs[0].token_ids == other.outputs[0].token_ids == first.outputs[0].token_ids
    with pytest.raises(ValueError, match="cache_salt"):
        llm.generate({**prompt, "cache_salt": ""}, params, use_tqdm=False)


def test_prompt_dict_with_unknown_keys_is_refused(llm: LLM) -> None:
    with pytest.raises(ValueError, match="multi_modal_data"):
        llm.generate({"prompt": "hi", "multi_modal_data": {"image": None}}, use_tqdm=False)


def test_max_logprobs_is_enforced(tmp_path: Path, llm: LLM) -> None:
    with pytest.raises(ValueError, match="max-logprobs=20"):
        llm.generate("hi", SamplingParams(logprobs=21), use_tqdm=False)
    with pytest.raises(ValueError, match="max-logprobs"):  # -1: the whole vocabulary, above the cap
        llm.generate("hi", SamplingParams(logprobs=-1), use_tqdm=False)


def test_max_logprobs_minus_one_is_no_cap(tmp_path: Path) -> None:
    """vLLM's --max-logprobs -1 (LLM(max_logprobs=-1)): any number of logprobs up to the
    vocabulary, beam search of any width; it was refused as negative."""
    from pagedlm.beam_search import BeamSearchParams
    from pagedlm.demo import build_tiny_checkpoint

    uncapped = LLM(str(build_tiny_checkpoint(tmp_path)), max_model_len=64, num_gpu_blocks_override=32,
                   max_logprobs=-1, device="cpu")
    params = SamplingParams(temperature=0, max_tokens=2, logprobs=100, prompt_logprobs=50)
    out = uncapped.generate("hi", params, use_tqdm=False)[0]
    assert [len(step) for step in out.outputs[0].logprobs] == [100, 100]  # greedy: the sampled token is the top one
    assert all(len(step) >= 50 for step in out.prompt_logprobs[1:])
    assert len(uncapped.beam_search(["hi"], BeamSearchParams(beam_width=12, max_tokens=2))[0].sequences) == 12
    # logprobs=-1 (vLLM's): the whole vocabulary, under no cap; refused under the default cap of 20.
    vocab = uncapped.llm_engine.model_config.vocab_size
    every = uncapped.generate("hi", SamplingParams(temperature=0, max_tokens=2, logprobs=-1, prompt_logprobs=-1),
                              use_tqdm=False)[0]
    assert [len(step) for step in every.outputs[0].logprobs] == [vocab, vocab]
    assert all(len(step) == vocab for step in every.prompt_logprobs[1:])
    with pytest.raises(ValueError, match="max_logprobs must be non-negative"):
        EngineArgs(model=str(tmp_path), max_logprobs=-2, device="cpu").create_engine_config()


def test_logprobs_beyond_the_vocabulary_are_refused_not_a_crash(tmp_path: Path) -> None:
    """With a --max-logprobs above the vocabulary, asking for more logprobs than there are
    tokens was a RuntimeError in the engine's step (torch.topk), not a request error."""
    from pagedlm.demo import build_tiny_checkpoint

    big = LLM(str(build_tiny_checkpoint(tmp_path)), max_model_len=64, num_gpu_blocks_override=32,
              max_logprobs=100_000, device="cpu")
    vocab = big.llm_engine.model_config.vocab_size
    for name in ("logprobs", "prompt_logprobs"):
        with pytest.raises(ValueError, match=f"{name}: requested {vocab + 1} logprobs, more than the {vocab} tokens"):
            big.generate("hi", SamplingParams(max_tokens=2, **{name: vocab + 1}), use_tqdm=False)
    out = big.generate("hi", SamplingParams(max_tokens=2, logprobs=vocab), use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 2 and all(len(step) == vocab for step in out.logprobs)


def test_prompt_tokens_counter_counts_every_sequence_of_n(llm: LLM) -> None:
    """vLLM's prompt_tokens counter ("prefill tokens processed") counts the prompt once per
    sequence: n = 3 adds 3 x its length, as the engine prefills it for each."""
    def prompt_tokens() -> float:
        return next(m.value for m in llm.get_metrics() if m.name == "vllm:prompt_tokens")

    before = prompt_tokens()
    llm.generate({"prompt_token_ids": list(range(5, 17))}, SamplingParams(n=3, max_tokens=2, seed=0),
                 use_tqdm=False)
    assert prompt_tokens() - before == 3 * 12


def test_time_per_output_token_series_have_vllms_names_and_meanings(llm: LLM) -> None:
    """vLLM: request_time_per_output_token_seconds is one mean per request;
    time_per_output_token_seconds is its older name for the per-token inter_token_latency."""
    def counts() -> dict[str, float]:
        return {m.name: m.count for m in llm.get_metrics() if m.name.endswith("_seconds")}

    before = counts()
    llm.generate({"prompt_token_ids": [7, 8, 9]}, SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False)
    after = counts()
    delta = {name: after[name] - before.get(name, 0.0) for name in after}
    assert delta["vllm:request_time_per_output_token_seconds"] == 1
    assert delta["vllm:time_per_output_token_seconds"] == delta["vllm:inter_token_latency_seconds"] == 4


def test_skip_reading_prefix_cache(llm: LLM) -> None:
    """vLLM's skip_reading_prefix_cache: the request computes its whole prompt (its blocks still
    go into the cache for others); on by default with prompt_logprobs, off otherwise."""
    prompt = {"prompt_token_ids": list(range(70, 120))}
    params = dict(temperature=0, max_tokens=2)
    llm.reset_prefix_cache()
    first = llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0]
    skipped = llm.generate(prompt, SamplingParams(**params, skip_reading_prefix_cache=True), use_tqdm=False)[0]
    again = llm.generate(prompt, SamplingParams(**params), use_tqdm=False)[0]
    assert first.num_cached_tokens == 0 and skipped.num_cached_tokens == 0 and again.num_cached_tokens >= 32
    assert first.outputs[0].token_ids == skipped.outputs[0].token_ids == again.outputs[0].token_ids
    assert SamplingParams(prompt_logprobs=1).skip_reading_prefix_cache
    assert not SamplingParams().skip_reading_prefix_cache
    with_lp = llm.generate(prompt, SamplingParams(**params, prompt_logprobs=1), use_tqdm=False)[0]
    assert with_lp.num_cached_tokens == 0 and len(with_lp.prompt_logprobs) == 50
