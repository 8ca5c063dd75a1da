"""The offline LLM API end to end on a tiny checkpoint: sampling, stops, n > 1, errors."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.engine.input_processor import InvalidRequestError


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    return LLM(llama_checkpoint, max_model_len=256, block_size=8, device="cpu")


def ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_outputs_in_input_order_and_fields(llm):
    prompts = ["Hello, my name is", {"prompt_token_ids": [1, 2, 3]}, "The capital of France is"]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)
    assert [o.prompt for o in outs] == ["Hello, my name is", None, "The capital of France is"]
    assert outs[1].prompt_token_ids == [1, 2, 3]
    for o in outs:
        c = o.outputs[0]
        assert o.finished and c.finish_reason == "length" and len(c.token_ids) == 6
        assert c.text == llm.get_tokenizer().decode(c.token_ids, skip_special_tokens=True)
        assert c.logprobs is None and c.cumulative_logprob is None


@pytest.fixture(scope="module")
def async_llm(llama_checkpoint):
    return LLM(llama_checkpoint, max_model_len=256, block_size=8, async_scheduling=True, device="cpu")


def test_async_scheduling_gives_the_same_outputs(llm, async_llm):
    prompts = ["Hello, my name is", "Once upon a time", {"prompt_token_ids": [1, 2, 3]}, "x"]
    params = [SamplingParams(temperature=0, max_tokens=9, logprobs=2),
              SamplingParams(temperature=0.9, seed=11, max_tokens=12, presence_penalty=0.5),
              SamplingParams(n=3, temperature=1.0, seed=2, max_tokens=6, stop_token_ids=[7]),
              SamplingParams(temperature=0, max_tokens=30, stop=["e"])]
    sync = llm.generate(prompts, params, use_tqdm=False)
    overlapped = async_llm.generate(prompts, params, use_tqdm=False)
    for a, b in zip(sync, overlapped):
        assert [(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in a.outputs] == \
            [(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in b.outputs]
    assert [lp.keys() for lp in sync[0].outputs[0].logprobs] == [lp.keys() for lp in overlapped[0].outputs[0].logprobs]
    stats = async_llm.llm_engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and not async_llm.llm_engine.has_unfinished_requests()


def test_seeded_sampling_reproducible_alone_and_in_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = ids(llm.generate("Once upon a time", seeded, use_tqdm=False))[0]
    noisy = SamplingParams(temperature=1.3, max_tokens=12, ignore_eos=True)
    batch = llm.generate(["One, two", "Once upon a time", "Paged attention", "Once upon a time"],
                         [noisy, seeded, noisy, seeded], use_tqdm=False)
    assert ids(batch)[1] == alone and ids(batch)[3] == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=12, ignore_eos=True)
    assert ids(llm.generate("Once upon a time", other_seed, use_tqdm=False))[0] != alone


def test_n_choices_share_prompt_and_differ(llm):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    out = llm.generate("Hello", params, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    again = llm.generate("Hello", params, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    stats = llm.llm_engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_stop_string_cut_and_included(llm):
    base = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    text = base.text
    assert len(text) > 6
    stop = text[3:6]  # somewhere inside, likely across a token boundary
    cut = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=20, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    first = text.index(stop)
    assert cut.text == text[:first]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = llm.generate("The quick brown", SamplingParams(temperature=0, max_tokens=20, stop=[stop],
                                                           include_stop_str_in_output=True), use_tqdm=False)[0]
    assert kept.outputs[0].text == text[: first + len(stop)]


def test_stop_token_ids_and_eos(llm):
    base = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    target = base.token_ids[4]
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[target]),
                       use_tqdm=False)[0].outputs[0]
    stop_at = base.token_ids.index(target)
    assert out.token_ids == base.token_ids[: stop_at + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    # min_tokens suppresses the stop token until reached
    longer = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[target],
                                                  min_tokens=stop_at + 2), use_tqdm=False)[0].outputs[0]
    assert len(longer.token_ids) >= stop_at + 2
    assert target not in longer.token_ids[: stop_at + 2]


def test_logprobs_and_cumulative(llm):
    out = llm.generate("Hi", SamplingParams(temperature=0.8, seed=3, max_tokens=5, logprobs=3),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.logprobs) == 5
    total = 0.0
    for token_id, entry in zip(out.token_ids, out.logprobs):
        assert token_id in entry and len(entry) in (3, 4)
        ranks = sorted(lp.rank for t, lp in entry.items() if t != token_id or lp.rank <= 3)
        assert ranks[:3] == [1, 2, 3]
        assert isinstance(entry[token_id].decoded_token, str)
        total += entry[token_id].logprob
    assert out.cumulative_logprob == pytest.approx(total, abs=1e-4)


def test_chat_applies_template(llm):
    tok = llm.get_tokenizer()
    messages = [{"role": "user", "content": "hi there"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert out.prompt_token_ids == list(expected)


def test_chat_template_kwargs_override_the_arguments(llm):
    # As vLLM's LLM.chat: chat_template_kwargs go over add_generation_prompt & co. (a TypeError,
    # "got multiple values for keyword argument", before).
    messages = [{"role": "user", "content": "hi there"}]
    params = SamplingParams(temperature=0, max_tokens=1)

    def prompt(**kwargs) -> str:
        return llm.chat(messages, params, use_tqdm=False, **kwargs)[0].prompt

    assert prompt(chat_template_kwargs={"add_generation_prompt": False}) == prompt(add_generation_prompt=False)
    assert prompt(chat_template_kwargs={"chat_template": PLAIN_TEMPLATE}) == "<user>hi there"


# Loops over each message's content parts (so "auto" hands it the openai format) and lists tools.
LOOPING_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}[{{ p['text'] }}]{% endfor %}"
                    "{% endfor %}{% for t in tools or [] %}tool:{{ t['function']['name'] }};{% endfor %}")
PLAIN_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def test_chat_content_formats_and_tools(llm):
    params = SamplingParams(temperature=0, max_tokens=1)
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]

    def prompt(messages, template, **kwargs) -> str:
        return llm.chat(messages, params, use_tqdm=False, chat_template=template, **kwargs)[0].prompt

    assert prompt(parts, LOOPING_TEMPLATE) == "<user>[a][b]"  # auto: openai, the parts
    assert prompt([{"role": "user", "content": "hi"}], LOOPING_TEMPLATE) == "<user>[hi]"  # a string is one part
    assert prompt(parts, PLAIN_TEMPLATE) == "<user>a\nb"  # auto: string, the parts joined
    forced = prompt([{"role": "user", "content": "hi"}], PLAIN_TEMPLATE, chat_template_content_format="openai")
    assert forced == "<user>[{'type': 'text', 'text': 'hi'}]"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert prompt(parts, LOOPING_TEMPLATE, tools=tools) == "<user>[a][b]tool:get_weather;"
    with pytest.raises(ValueError, match="content format must be one of"):
        prompt(parts, PLAIN_TEMPLATE, chat_template_content_format="xml")


def test_chat_tool_call_history_reaches_the_template_as_objects(llm):
    # As the server's and vLLM's LLM.chat: a tool call's JSON-text arguments reach the template
    # parsed ("| tojson" double-encoded the text before) and an empty tool_calls list is
    # dropped; the caller's messages are left as they were.
    template = ("{% for m in messages %}<{{ m['role'] }}>{% if 'tool_calls' in m %}"
                "{% for c in m['tool_calls'] %}{{ c['function']['name'] }}{{ c['function']['arguments'] | tojson }}"
                "{% endfor %}{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    messages = [{"role": "user", "content": "add"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "2"},
                {"role": "assistant", "content": "It is 2.", "tool_calls": []}]
    out = llm.chat(messages, SamplingParams(max_tokens=1), use_tqdm=False, chat_template=template)[0]
    assert out.prompt == '<user>add<assistant>add{"a": 1}<tool>2<assistant>It is 2.'
    assert call["function"]["arguments"] == '{"a": 1}' and messages[3]["tool_calls"] == []


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(presence_penalty=3.0), "presence_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n"),
        (dict(logprobs=-2), "logprobs"),
        (dict(min_tokens=5, max_tokens=2), "min_tokens"),
        (dict(stop=[""]), "stop"),
        (dict(seed=2**64), "seed"),
        (dict(seed=-(2**63) - 1), "seed"),
        (dict(bad_words=[""]), "bad_words"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"),
        (dict(logit_bias={7: float("nan")}), "logit_bias"),
    ],
)
def test_invalid_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_seeds_at_the_ends_of_the_range_generate(llm):
    # A seed torch cannot take crashed the engine step and left the request and its blocks
    # behind (every later generate then failed); seed + i of an n > 1 child wraps instead.
    def run(**kwargs):
        params = SamplingParams(max_tokens=3, ignore_eos=True, **kwargs)
        return [c.token_ids for c in llm.generate("Hello", params, use_tqdm=False)[0].outputs]

    top = run(n=2, seed=2**64 - 1)
    assert [len(t) for t in top] == [3, 3]
    assert top[1] == run(seed=0)[0]  # choice 1: (2**64 - 1) + 1 wraps to 0
    assert len(run(seed=-(2**63))[0]) == 3
    stats = llm.llm_engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and not llm.llm_engine.has_unfinished_requests()


def test_whitespace_bad_word_is_refused_not_a_ban_on_spaces(llm):
    # " " (or "\n") has no word in it: its spaced form tokenized to the bare space token, which
    # was then never generated, silently.
    for word in (" ", "\n"):
        with pytest.raises(InvalidRequestError, match="bad_words"):
            llm.generate("hi", SamplingParams(bad_words=["fine", word]), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_masked_tokens_stay_masked_at_high_temperature(llm):
    # An infinite temperature was accepted and turned the masked logits (-inf) into NaN, which
    # the sampler picked: tokens outside allowed_token_ids came out.
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=float("inf"))
    params = SamplingParams(temperature=1e30, seed=0, max_tokens=8, ignore_eos=True, allowed_token_ids=[5, 6])
    out = llm.generate("hello", params, use_tqdm=False)[0].outputs[0]
    assert set(out.token_ids) <= {5, 6}


@pytest.mark.parametrize(("field", "value"), [("max_tokens", 0), ("n", 0), ("logprobs", -2), ("top_p", 0.0)])
def test_fields_set_after_construction_are_checked(llm, field, value):
    # vLLM scripts tune a SamplingParams in place (params = llm.get_default_sampling_params();
    # params.max_tokens = ...). A bad value set so was never checked: max_tokens=0 ran to
    # max_model_len, n=0 and logprobs=-2 crashed with an IndexError inside the engine.
    params = SamplingParams(max_tokens=3)
    setattr(params, field, value)
    with pytest.raises(InvalidRequestError, match=field):
        llm.generate("hi", params, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_stop_set_after_construction_is_one_string(llm):
    base = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0].text
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    params.stop = base[4:7]  # a str, as SamplingParams(stop=...) takes it: one stop string, not three characters
    out = llm.generate("Hello", params, use_tqdm=False)[0].outputs[0]
    assert out.stop_reason == base[4:7] and out.text == base[:base.index(base[4:7])]


def test_seed_minus_one_is_a_random_seed(llm):
    # vLLM (and OpenAI) read seed=-1 as "no seed"; it was a fixed seed, every answer the same.
    assert SamplingParams(seed=-1).seed is None
    params = SamplingParams(seed=-1, temperature=1.0, max_tokens=12, ignore_eos=True)
    assert ids(llm.generate("Hello", params, use_tqdm=False)) != ids(llm.generate("Hello", params, use_tqdm=False))


def test_prompt_token_ids_as_an_array(llm):
    # TokensPrompt(prompt_token_ids=tokenizer(..., return_tensors="np")["input_ids"][0]) was
    # refused as "out of vocabulary" (numpy ints are not ints); so was a tensor's row.
    import numpy as np
    import torch

    params = SamplingParams(temperature=0, max_tokens=3)
    expected = ids(llm.generate({"prompt_token_ids": [5, 6, 7]}, params, use_tqdm=False))
    for array in (np.array([5, 6, 7]), torch.tensor([5, 6, 7])):
        out = llm.generate({"prompt_token_ids": array}, params, use_tqdm=False)[0]
        assert out.prompt_token_ids == [5, 6, 7] and [out.outputs[0].token_ids] == expected
    with pytest.raises(InvalidRequestError, match="must be integers"):
        llm.generate({"prompt_token_ids": [5, 6.0]}, params, use_tqdm=False)


def test_bad_prompts_raise_and_leak_nothing(llm):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate({"prompt_token_ids": []}, use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [1, 10**6]}, use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="maximum model length"):
        llm.generate({"prompt_token_ids": [5] * 300}, use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="stop_token_ids"):
        llm.generate("hi", SamplingParams(stop_token_ids=[10**6]), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate("still works", SamplingParams(max_tokens=2), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 2


def test_unknown_architecture_and_missing_files(tmp_path, llama_checkpoint):
    import json
    import shutil

    from pagedlm.config import ConfigError

    bad = tmp_path / "bad"
    shutil.copytree(llama_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["FancyNewForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="FancyNewForCausalLM"):
        LLM(str(bad))
    with pytest.raises(ConfigError, match="config.json"):
        LLM(str(tmp_path))
    empty = tmp_path / "noweights"
    shutil.copytree(llama_checkpoint, empty)
    (empty / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="safetensors"):
        LLM(str(empty))


def test_dummy_load_format_runs(llama_checkpoint):
    llm = LLM(llama_checkpoint, load_format="dummy", max_model_len=64, device="cpu")
    out = llm.generate("x", SamplingParams(max_tokens=3, temperature=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3


@pytest.mark.parametrize("use_async", [False, True])
def test_abort_mid_generation_frees_blocks(llm, async_llm, use_async):
    engine = (async_llm if use_async else llm).llm_engine
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"abort-{i}", {"prompt_token_ids": list(range(10 + i, 40 + i))}, params)
    for _ in range(5):
        engine.step()
    engine.abort_request(["abort-1", "abort-3"])
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert set(finished) == {"abort-0", "abort-2"}
    assert all(len(o.outputs[0].token_ids) == 40 for o in finished.values())
    stats = engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and stats.num_running_reqs == 0


@pytest.mark.parametrize(("use_async", "method"), [(False, "execute_model"), (True, "launch"), (True, "take_output")])
def test_interrupted_generate_leaves_a_working_engine(llm, async_llm, monkeypatch, use_async, method):
    """Ctrl-C inside a step (the model's forward) left the step half done and the requests in
    the engine: their blocks stayed taken and every later generate failed in the runner."""
    target = async_llm if use_async else llm
    prompts = ["Hello there", {"prompt_token_ids": list(range(10, 40))}]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = ids(target.generate(prompts, params, use_tqdm=False))
    executor = target.llm_engine.engine_core.executor
    real, calls = getattr(executor, method), []

    def interrupted(*args):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(executor, method, interrupted)
    with pytest.raises(KeyboardInterrupt):
        target.generate(prompts, params, use_tqdm=False)
    assert ids(target.generate(prompts, params, use_tqdm=False)) == expected
    stats = target.llm_engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks and not target.llm_engine.has_unfinished_requests()


def test_generate_interrupted_while_adding_queues_nothing(llm, monkeypatch):
    processor = llm.llm_engine.input_processor
    real, calls = processor.process, []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(processor, "process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(["one", "two", "three"], SamplingParams(max_tokens=2), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_penalties_use_device_counts_sync_and_async(llm, async_llm):
    """presence_penalty 2.0 outweighs every logit of the tiny random model, so greedy output
    never repeats a token exactly when each sample reaches the on-device counts before the
    next step (with async scheduling too, where the host has not seen the last token yet)."""
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    penalised = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, presence_penalty=2.0)
    prompts = ["Once upon a time", "Hello, my name is"]
    base = ids(llm.generate(prompts, plain, use_tqdm=False))
    assert any(len(set(t)) < len(t) for t in base)  # without the penalty greedy output repeats
    for engine in (llm, async_llm):
        mixed = ids(engine.generate(prompts * 2, [plain, penalised, penalised, plain], use_tqdm=False))
        assert mixed[0] == base[0] and mixed[3] == base[1]
        assert len(set(mixed[1])) == 24 and len(set(mixed[2])) == 24


def test_device_step_preparation_gives_the_same_outputs(llm, llama_checkpoint):
    """The device path of step preparation (positions, slots and block tables derived from
    the persistent batch; on CUDA it is the default), run here through its PyTorch reference,
    under chunked prefill, prefix hits and async scheduling, equals the host path."""
    prep = LLM(llama_checkpoint, max_model_len=256, block_size=8, device="cpu", async_scheduling=True,
               max_num_batched_tokens=24, enable_prefix_caching=True)
    runner = prep.llm_engine.engine_core.executor.worker.runner
    runner.device_step_prep = True
    prompts = ["Once upon a time " * 4, "Hello, my name is", {"prompt_token_ids": list(range(1, 40))},
               "Once upon a time " * 4 + "there"]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    assert ids(prep.generate(prompts, params, use_tqdm=False)) == ids(llm.generate(prompts, params, use_tqdm=False))
    # Rows follow the runner's requests (the last finished ones leave with the next step).
    assert set(runner.batch.row_of) == set(runner.requests) and runner.batch.num_rows == len(runner.requests)


def test_generate_runs_with_the_startup_heap_frozen(llm, monkeypatch):
    """No full garbage collection walks the engine's start-up objects during generate
    (engine/gc_heap.py), and they are collectable again afterwards."""
    import gc

    counts = []
    step = llm.llm_engine.step
    monkeypatch.setattr(llm.llm_engine, "step", lambda: (counts.append(gc.get_freeze_count()), step())[1])
    out = llm.generate(["Hello"], SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3
    assert counts and min(counts) > 10_000  # the engine, torch, transformers: frozen
    assert gc.get_freeze_count() == 0
