"""``pagedlm chat`` / ``pagedlm complete`` (vLLM's interactive clients) against a real server,
and that server started the way vLLM users start theirs: ``python -m
pagedlm.entrypoints.openai.api_server --model MODEL [flags]``.

The server answers greedily with at most 8 new tokens (--override-generation-config), so each
reply the client prints can be checked exactly against the same request sent through the
``openai`` client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from e2e_helpers import API_KEY, MODEL_NAME, REPO_ROOT, Server, free_port, stop, wait_healthy

API_SERVER_MODULE = "pagedlm.entrypoints.openai.api_server"
GENERATION = '{"temperature": 0, "max_new_tokens": 8}'


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**env, **extra}


@pytest.fixture(scope="module")
def cli_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", API_SERVER_MODULE, "--model", str(checkpoint), "--served-model-name", MODEL_NAME,
           "--max-model-len", "256", "--num-gpu-blocks-override", "256", "--device", "cpu", "--api-key", API_KEY,
           "--override-generation-config", GENERATION, "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path_factory.mktemp("cli_server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO_ROOT)
    srv = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_healthy(srv, 120)
        yield srv
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def ref(cli_server: Server):
    import openai

    return openai.OpenAI(base_url=f"{cli_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def pagedlm(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Bytes, decoded here: text mode would turn a "\r" in a random model's reply into "\n".
    done = subprocess.run([sys.executable, "-m", "pagedlm", *args], input=stdin.encode(), capture_output=True,
                          env={**(env or _env()), "PYTHONIOENCODING": "utf-8"}, cwd=REPO_ROOT, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def chat_reply(ref, messages: list[dict[str, str]]) -> str:
    return ref.chat.completions.create(model=MODEL_NAME, messages=messages).choices[0].message.content


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_api_server_module_serves_like_pagedlm_serve(cli_server: Server) -> None:
    models = httpx.get(f"{cli_server.url}/v1/models", headers=cli_server.headers, timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL_NAME]
    # --api-key and --override-generation-config reached the server: no key is a 401.
    assert httpx.get(f"{cli_server.url}/v1/models", timeout=10).status_code == 401
    assert "Serving model 'tiny'" in cli_server.log_path.read_text()


def test_chat_quick_uses_the_servers_first_model(cli_server: Server, ref) -> None:
    done = pagedlm("chat", "--url", f"{cli_server.url}/v1", "--api-key", API_KEY, "-q", "Hello there")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Using model: {MODEL_NAME}\n{chat_reply(ref, [user('Hello there')])}\n"


def test_chat_system_prompt_with_key_from_environment(cli_server: Server, ref) -> None:
    system = {"role": "system", "content": "Answer in one word."}
    done = pagedlm("chat", "--url", f"{cli_server.url}/v1", "--model-name", MODEL_NAME, "--system-prompt",
                   system["content"], "--quick", "Hi", env=_env(OPENAI_API_KEY=API_KEY))
    assert done.returncode == 0, done.stderr
    expected = chat_reply(ref, [system, user("Hi")])
    assert expected != chat_reply(ref, [user("Hi")])  # else the check below could not see the system prompt
    assert done.stdout == f"Using model: {MODEL_NAME}\n{expected}\n"


def test_chat_loop_sends_the_history_without_a_refused_turn(cli_server: Server, ref) -> None:
    too_long = "word " * 400  # over --max-model-len 256: the server answers 400
    done = pagedlm("chat", "--url", f"{cli_server.url}/v1", "--api-key", API_KEY,
                   stdin=f"{too_long}\nfirst question\nsecond question\n")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"error: the server at \S+ answered 400: .+\n", done.stderr), done.stderr
    # The refused turn left the conversation (else every later turn would be refused too); the
    # second turn is answered with the first one's question and reply before it.
    first = chat_reply(ref, [user("first question")])
    second = chat_reply(ref, [user("first question"), {"role": "assistant", "content": first},
                              user("second question")])
    assert second != chat_reply(ref, [user("second question")])  # the history changes the answer
    assert done.stdout == (f"Using model: {MODEL_NAME}\nPlease enter a message for the chat model:\n"
                           f"> > {first}\n> {second}\n> ")


def test_complete_quick_with_max_tokens_and_stats(cli_server: Server, ref) -> None:
    done = pagedlm("complete", "--url", f"{cli_server.url}/v1", "--api-key", API_KEY, "--max-tokens", "3",
                   "--stats", "-q", "The quick brown")
    assert done.returncode == 0, done.stderr
    expected = ref.completions.create(model=MODEL_NAME, prompt="The quick brown", max_tokens=3)
    assert expected.usage.completion_tokens == 3
    ttft, tps = done.stdout.splitlines()[-2:]
    assert done.stdout == f"Using model: {MODEL_NAME}\n{expected.choices[0].text}\n{ttft}\n{tps}\n"
    assert re.fullmatch(r"TTFT: \d+\.\d\d ms", ttft), done.stdout
    assert re.fullmatch(r"TPS:  \d+\.\d\d tokens/s \(3 tokens in \d+\.\d\ds\)", tps), done.stdout


def test_complete_loop_one_completion_per_line(cli_server: Server, ref) -> None:
    done = pagedlm("complete", "--url", f"{cli_server.url}/v1", "--api-key", API_KEY, stdin="one\ntwo\n")
    assert done.returncode == 0, done.stderr
    texts = [ref.completions.create(model=MODEL_NAME, prompt=p).choices[0].text for p in ("one", "two")]
    assert done.stdout == f"Using model: {MODEL_NAME}\nPlease enter prompt to complete:\n> {texts[0]}\n> {texts[1]}\n> "


def test_unreachable_server_is_one_error_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = pagedlm("chat", "--url", url, "-q", "hi")
    assert done.returncode == 1
    assert re.fullmatch(rf"pagedlm chat: error: cannot reach the server at {re.escape(url)}: .*Connection "
                        r"refused.*; is it running\? \(--url\)\n", done.stderr), done.stderr
    assert done.stdout == ""


def test_wrong_api_key_is_one_error_line(cli_server: Server) -> None:
    done = pagedlm("complete", "--url", f"{cli_server.url}/v1", "--api-key", "wrong", "-q", "hi")
    assert done.returncode == 1
    assert re.fullmatch(r"pagedlm complete: error: the server at \S+ refused the API key \(401\); pass "
                        r"--api-key KEY or set OPENAI_API_KEY \(.+\)\n", done.stderr), done.stderr


def test_flags_vllm_lacks_are_refused() -> None:
    done = pagedlm("chat", "--max-tokens", "5", "-q", "hi")  # complete has --max-tokens, chat does not (vLLM)
    assert done.returncode == 2
    assert "unrecognized arguments: --max-tokens" in done.stderr
