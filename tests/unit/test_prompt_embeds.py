"""Prompts given as embeddings (vLLM's EmbedsPrompt, --enable-prompt-embeds): a prompt of
``embed_tokens(ids)`` gives exactly the tokens and logprobs of the ids; mixed batches, chunked
prefill, prefix caching kept apart from token prompts; what cannot work is refused clearly."""

from __future__ import annotations

import base64
import io

import pytest
import torch

from pagedlm.engine.input_processor import InvalidRequestError
from pagedlm.sampling_params import SamplingParams

IDS = [[1, 5, 9, 14, 3, 22, 7], [2, 8, 8, 30, 11], list(range(3, 43))]  # the last: longer than a chunk


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("embeds"))


@pytest.fixture(scope="module")
def table(ckpt) -> torch.Tensor:
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights["model.embed_tokens.weight"]


@pytest.fixture(scope="module")
def llm(ckpt):
    from pagedlm import LLM

    # Steps of 16 tokens: the 40-row prompt runs in three chunks, mixed with the others' decodes.
    return LLM(str(ckpt), device="cpu", dtype="float32", max_model_len=128, block_size=16,
               max_num_batched_tokens=16, enable_prompt_embeds=True, enable_prefix_caching=True)


PARAMS = SamplingParams(temperature=0.0, max_tokens=8, logprobs=3, ignore_eos=True)


def _tokens_and_logprobs(outputs):
    return [(o.outputs[0].token_ids, [{k: v.logprob for k, v in d.items()} for d in o.outputs[0].logprobs])
            for o in outputs]


def test_embeds_give_the_same_tokens_and_logprobs_as_the_ids(llm, table) -> None:
    by_ids = llm.generate([{"prompt_token_ids": ids} for ids in IDS], PARAMS, use_tqdm=False)
    llm.reset_prefix_cache()
    by_embeds = llm.generate([{"prompt_embeds": table[ids]} for ids in IDS], PARAMS, use_tqdm=False)
    assert _tokens_and_logprobs(by_embeds) == _tokens_and_logprobs(by_ids)
    for out, ids in zip(by_embeds, IDS):
        assert out.prompt_token_ids is None  # vLLM's: an embeds prompt has no token ids
        assert out.prompt is None
        assert out.outputs[0].text  # decoded from nothing (no placeholder ids in the text)
    assert [o.outputs[0].text for o in by_embeds] == [o.outputs[0].text for o in by_ids]


def test_a_batch_mixing_embeds_and_token_prompts(llm, table) -> None:
    llm.reset_prefix_cache()
    mixed = [{"prompt_embeds": table[IDS[0]]}, {"prompt_token_ids": IDS[1]}, {"prompt_embeds": table[IDS[2]]},
             {"prompt_token_ids": IDS[0]}]
    outs = llm.generate(mixed, PARAMS, use_tqdm=False)
    reference = llm.generate([{"prompt_token_ids": ids} for ids in (IDS[0], IDS[1], IDS[2], IDS[0])], PARAMS,
                             use_tqdm=False)
    assert _tokens_and_logprobs(outs) == _tokens_and_logprobs(reference)
    assert outs[1].prompt_token_ids == IDS[1] and outs[0].prompt_token_ids is None


def test_embeds_in_other_dtypes_and_with_a_batch_dimension_are_cast(llm, table) -> None:
    ref = llm.generate({"prompt_embeds": table[IDS[0]]}, PARAMS, use_tqdm=False)[0].outputs[0].token_ids
    out = llm.generate({"prompt_embeds": table[IDS[0]].unsqueeze(0)}, PARAMS, use_tqdm=False)
    assert out[0].outputs[0].token_ids == ref
    half = llm.generate({"prompt_embeds": table[IDS[0]].to(torch.bfloat16)}, SamplingParams(max_tokens=2),
                        use_tqdm=False)
    assert len(half[0].outputs[0].token_ids) == 2  # cast to the model's float32, runs


def test_prefix_cache_keeps_embeds_apart_from_token_prompts(llm, table) -> None:
    ids = list(range(50, 84))  # two full blocks of 16
    params = SamplingParams(temperature=0.0, max_tokens=1)
    llm.reset_prefix_cache()
    llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)
    # Same positions as a token prompt of placeholder ids (0) and as the ids themselves: no hit.
    llm.generate({"prompt_token_ids": [0] * len(ids)}, params, use_tqdm=False)
    first = llm.generate({"prompt_embeds": table[ids]}, params, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    # The identical embeddings share their blocks (vLLM keys them by the rows' bytes) ...
    again = llm.generate({"prompt_embeds": table[ids]}, params, use_tqdm=False)[0]
    assert again.num_cached_tokens == 32
    # ... other embeddings of the same length do not, and token prompts never see them.
    other = llm.generate({"prompt_embeds": table[ids] + 0.5}, params, use_tqdm=False)[0]
    assert other.num_cached_tokens == 0
    llm.reset_prefix_cache()
    llm.generate({"prompt_embeds": table[ids]}, params, use_tqdm=False)
    tokens = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0]
    zeros = llm.generate({"prompt_token_ids": [0] * len(ids)}, params, use_tqdm=False)[0]
    assert tokens.num_cached_tokens == 0 and zeros.num_cached_tokens == 0


def test_block_keys_differ_by_embedding_rows() -> None:
    from pagedlm.engine.prompt_embeds import to_wire
    from pagedlm.engine.request import Request

    a = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    b = a.clone()
    b[5] += 1
    ra = Request("a", [0] * 8, SamplingParams(), prompt_embeds=to_wire(a, torch.float32))
    rb = Request("b", [0] * 8, SamplingParams(), prompt_embeds=to_wire(b, torch.float32))
    plain = Request("c", [0] * 8, SamplingParams())
    assert ra.block_extra(0, 4) == rb.block_extra(0, 4) != plain.block_extra(0, 4)
    assert ra.block_extra(4, 8) != rb.block_extra(4, 8)
    assert ra.block_extra(8, 12) is None  # output tokens: only the chain (parent hash) tells them apart


@pytest.mark.parametrize("embeds, needle", [
    (torch.zeros(3, 7), "hidden size"),
    (torch.zeros(2, 3, 64), "shape"),
    (torch.zeros(0, 64), "cannot be empty"),
    (torch.zeros(3, 64, dtype=torch.int64), "float32, bfloat16 or float16"),
    ([[0.0] * 64], "torch.Tensor"),
    (torch.zeros(128, 64), "too long"),
])
def test_bad_embeds_are_refused(llm, embeds, needle) -> None:
    hidden = llm.llm_engine.model_config.hf_config.hidden_size
    if isinstance(embeds, torch.Tensor) and embeds.dim() >= 2 and embeds.shape[-1] == 64:
        embeds = torch.zeros(*embeds.shape[:-1], hidden, dtype=embeds.dtype)
    with pytest.raises(InvalidRequestError, match=needle):
        llm.generate({"prompt_embeds": embeds}, SamplingParams(max_tokens=1), use_tqdm=False)


def test_refused_combinations(llm, table) -> None:
    prompt = {"prompt_embeds": table[IDS[0]]}
    with pytest.raises(InvalidRequestError, match="prompt_logprobs is not supported with prompt_embeds"):
        llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="repetition_penalty"):
        llm.generate(prompt, SamplingParams(max_tokens=1, repetition_penalty=1.2), use_tqdm=False)
    with pytest.raises(InvalidRequestError, match="only, got also"):
        llm.generate({**prompt, "prompt_token_ids": IDS[0]}, SamplingParams(max_tokens=1), use_tqdm=False)


def test_truncate_prompt_tokens_keeps_the_last_rows(llm, table) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=4, truncate_prompt_tokens=5)
    cut = llm.generate({"prompt_embeds": table[IDS[2]]}, params, use_tqdm=False)[0]
    ref = llm.generate({"prompt_token_ids": IDS[2][-5:]}, SamplingParams(temperature=0.0, max_tokens=4),
                       use_tqdm=False)[0]
    assert cut.outputs[0].token_ids == ref.outputs[0].token_ids


def test_refused_without_the_option(ckpt, table) -> None:
    from pagedlm import LLM

    plain = LLM(str(ckpt), device="cpu", dtype="float32", max_model_len=64)
    with pytest.raises(InvalidRequestError, match="--enable-prompt-embeds"):
        plain.generate({"prompt_embeds": table[IDS[0]]}, SamplingParams(max_tokens=1), use_tqdm=False)


def test_engine_refuses_what_cannot_take_embeddings(ckpt, tmp_path) -> None:
    from pagedlm.config import ConfigError
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine_args import EngineArgs

    def config(model, **kw):
        return EngineArgs(model=str(model), device="cpu", enable_prompt_embeds=True, **kw).create_engine_config()

    assert config(ckpt).model_config.enable_prompt_embeds
    with pytest.raises(ConfigError, match="speculative decoding"):
        config(ckpt, speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                                         "prompt_lookup_max": 2})
    with pytest.raises(ConfigError, match="runner='pooling'"):
        config(ckpt, runner="pooling")
    gpt2 = build_tiny_checkpoint(tmp_path / "gpt2", arch="GPT2LMHeadModel")
    with pytest.raises(ConfigError, match="cannot take prompts given as embeddings"):
        config(gpt2)


def test_wire_round_trip_and_base64_loading() -> None:
    from pagedlm.engine.prompt_embeds import PromptEmbedsError, from_wire, load_base64, to_wire

    t = torch.randn(5, 8)
    wire = to_wire(t, torch.bfloat16)
    assert wire.dtype == "bfloat16" and wire.shape == [5, 8] and len(wire.data) == 5 * 8 * 2
    assert torch.equal(from_wire(wire), t.to(torch.bfloat16))
    buf = io.BytesIO()
    torch.save(t, buf)
    payload = base64.b64encode(buf.getvalue()).decode()
    assert torch.equal(load_base64(payload, 1 << 20), t)
    with pytest.raises(PromptEmbedsError, match="too large"):
        load_base64(payload, 16)
    with pytest.raises(PromptEmbedsError, match="base64"):
        load_base64("not base64!", 1 << 20)
    buf = io.BytesIO()
    torch.save({"not": "a tensor", "x": object.__name__}, buf)
    with pytest.raises(PromptEmbedsError, match="one tensor"):
        load_base64(base64.b64encode(buf.getvalue()).decode(), 1 << 20)


def test_moe_base_takes_embeddings_too(tmp_path) -> None:
    from safetensors.torch import load_file

    from pagedlm import LLM
    from pagedlm.demo import build_tiny_checkpoint

    ckpt = build_tiny_checkpoint(tmp_path / "mixtral", arch="MixtralForCausalLM", num_local_experts=4,
                                 num_experts_per_tok=2)
    weights = {}
    for path in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    table = weights["model.embed_tokens.weight"]
    llm = LLM(str(ckpt), device="cpu", dtype="float32", max_model_len=64, enable_prompt_embeds=True)
    by_ids = llm.generate([{"prompt_token_ids": ids} for ids in IDS[:2]], PARAMS, use_tqdm=False)
    by_embeds = llm.generate([{"prompt_embeds": table[ids]} for ids in IDS[:2]], PARAMS, use_tqdm=False)
    assert _tokens_and_logprobs(by_embeds) == _tokens_and_logprobs(by_ids)


def test_embeds_cross_the_worker_and_core_transports_as_bytes() -> None:
    """Scheduler -> workers (executor/serial.py) and frontend -> engine core (msgpack structs)."""
    import msgspec

    from pagedlm.engine.messages import EngineCoreRequest, NewRequestData, SchedulerOutput
    from pagedlm.engine.prompt_embeds import from_wire, to_wire
    from pagedlm.executor import serial

    t = torch.randn(3, 8)
    wire = to_wire(t, torch.float32)
    new = NewRequestData("r", [0, 0, 0], [], SamplingParams(max_tokens=2), [1], 0, prompt_embeds=wire)
    sched = SchedulerOutput([new], [], {"r": 3}, 3, set())
    back = serial.decode_scheduler_output(serial.encode(sched)).scheduled_new_reqs[0]
    assert back.prompt_embeds == wire and torch.equal(from_wire(back.prompt_embeds), t)
    req = EngineCoreRequest("r", [0, 0, 0], SamplingParams(max_tokens=2), None, 0.0, prompt_embeds=wire)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(req), type=EngineCoreRequest)
    assert torch.equal(from_wire(decoded.prompt_embeds), t)
