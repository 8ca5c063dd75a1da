"""skip_tokenizer_init=True (vLLM's): no tokenizer anywhere; token-id prompts give the same
tokens as a normal engine, with empty text; what needs a tokenizer is refused clearly."""

from __future__ import annotations

import json

import pytest

from pagedlm.sampling_params import SamplingParams

PROMPTS = [[1, 5, 9, 14, 3], [2, 8, 8, 30]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("notok"))


@pytest.fixture(scope="module")
def llms(ckpt):
    from pagedlm import LLM

    kwargs = dict(device="cpu", dtype="float32", max_model_len=128)
    return LLM(str(ckpt), **kwargs), LLM(str(ckpt), skip_tokenizer_init=True, **kwargs)


def _run(llm, params):
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=8, temperature=0.0, logprobs=2),
    SamplingParams(max_tokens=8, temperature=0.9, top_k=10, seed=3, logprobs=2),
])
def test_token_id_prompts_give_the_same_tokens_with_empty_text(llms, params):
    normal, bare = llms
    want, got = _run(normal, params), _run(bare, params)
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        assert w.outputs[0].text  # the normal engine detokenizes
        assert g.outputs[0].text == ""
        assert g.prompt is None and g.prompt_token_ids == w.prompt_token_ids
        for ws, gs in zip(w.outputs[0].logprobs, g.outputs[0].logprobs):
            assert gs.keys() == ws.keys()
            assert all(lp.decoded_token is None for lp in gs.values())
            assert [lp.logprob for lp in gs.values()] == pytest.approx([lp.logprob for lp in ws.values()])


def test_list_of_ints_prompt_and_stop_token_ids_work(llms):
    normal, bare = llms
    want = normal.generate([PROMPTS[0]], SamplingParams(max_tokens=6, temperature=0.0), use_tqdm=False)[0]
    stop = want.outputs[0].token_ids[2]
    got = bare.generate([PROMPTS[0]], SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=[stop]),
                        use_tqdm=False)[0].outputs[0]
    assert got.finish_reason == "stop" and got.stop_reason == stop
    assert got.token_ids == want.outputs[0].token_ids[:got.token_ids.index(stop) + 1]


def test_text_prompts_are_refused(llms):
    bare = llms[1]
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        bare.generate("Hello there", SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        bare.generate({"prompt": "Hello there"}, SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="skip_tokenizer_init"):
        bare.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2), use_tqdm=False)


@pytest.mark.parametrize("params, match", [
    (SamplingParams(max_tokens=2, stop=["x"]), "stop strings"),
    (SamplingParams(max_tokens=2, bad_words=["hello"]), "bad_words"),
])
def test_what_needs_a_tokenizer_is_refused(llms, params, match):
    with pytest.raises(ValueError, match=match):
        _run(llms[1], params)


def test_structured_outputs_are_refused(llms):
    from pagedlm.sampling_params import StructuredOutputsParams

    params = SamplingParams(max_tokens=2, structured_outputs=StructuredOutputsParams(choice=["a", "b"]))
    with pytest.raises(ValueError, match="Structured outputs requires a tokenizer"):
        _run(llms[1], params)


def test_detokenize_true_is_ignored_and_tokenizer_is_none(llms):
    bare = llms[1]
    assert bare.get_tokenizer() is None
    out = _run(bare, SamplingParams(max_tokens=3, detokenize=True, temperature=0.0))
    assert all(o.outputs[0].text == "" and len(o.outputs[0].token_ids) == 3 for o in out)


def test_server_without_a_tokenizer(ckpt):
    """`pagedlm serve --skip-tokenizer-init` (vLLM's): completions take token-id prompts and give
    ids (return_token_ids) with empty text and token-id logprob names, the same ids as a server
    with its tokenizer; what needs text is a 400 that says so."""
    from fastapi.testclient import TestClient

    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.engine_args import ServerEngineArgs
    from pagedlm.entrypoints.openai.api_server import build_app
    from pagedlm.metrics import PrometheusStatLogger

    def client(**kwargs):
        engine = AsyncLLM.from_engine_args(ServerEngineArgs(model=str(ckpt), device="cpu", max_model_len=64,
                                                            num_gpu_blocks_override=32, **kwargs))
        engine.stat_logger = PrometheusStatLogger("notok")
        return TestClient(build_app(engine, engine.stat_logger, served_model_names=["m"]))

    body = {"model": "m", "prompt": [1, 5, 9, 14], "max_tokens": 5, "temperature": 0, "ignore_eos": True,
            "return_token_ids": True, "logprobs": 1}
    with client() as full:
        expected = full.post("/v1/completions", json=body).json()["choices"][0]["token_ids"]
    with client(skip_tokenizer_init=True) as bare:
        choice = bare.post("/v1/completions", json=body).json()["choices"][0]
        assert choice["token_ids"] == expected and choice["text"] == ""
        assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in expected]
        events = [json.loads(line[6:]) for line in bare.post("/v1/completions", json={**body, "stream": True}).text
                  .split("\n") if line.startswith("data: {")]
        assert [t for e in events for c in e["choices"] for t in c["token_ids"]] == expected
        for path, payload, needle in (
                ("/v1/completions", {**body, "prompt": "hello"}, "text prompts"),
                ("/v1/completions", {**body, "echo": True, "return_token_ids": False}, "echo"),
                ("/v1/completions", {**body, "stop": ["x"]}, "stop strings"),
                ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "Chat"),
                ("/v1/responses", {"model": "m", "input": "hi"}, "Responses"),
                ("/tokenize", {"model": "m", "prompt": "hi"}, "/tokenize"),
                ("/detokenize", {"model": "m", "tokens": [1, 2]}, "/detokenize")):
            resp = bare.post(path, json=payload)
            assert resp.status_code == 400 and needle in resp.json()["error"]["message"], (path, resp.text)
