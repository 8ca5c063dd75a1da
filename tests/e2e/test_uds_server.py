"""``--uds PATH``: the server listens on a Unix domain socket instead of --host/--port, an
OpenAI client reaches it through that socket, the socket file goes when the server stops,
and a path already taken is refused before the engine starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from e2e_helpers import API_KEY, MODEL_NAME, STARTUP_TIMEOUT_S, launch, stop


def test_serves_on_a_unix_socket(checkpoint: Path, tmp_path: Path) -> None:
    import openai

    path = tmp_path / "api.sock"
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", "256", "--device", "cpu",
            "--num-gpu-blocks-override", "256", "--api-key", API_KEY, "--uds", str(path)]
    srv = launch(args, tmp_path / "server.log")  # also given --host/--port, which --uds leaves unused
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://pagedlm", timeout=60)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert srv.proc.poll() is None, srv.log_tail()
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, srv.log_tail()
                time.sleep(0.25)
        client = openai.OpenAI(base_url="http://pagedlm/v1", api_key=API_KEY, max_retries=0, http_client=http)
        out = client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=3, temperature=0)
        assert out.usage.completion_tokens == 3
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.socket() as tcp:  # nothing listens on the TCP port it was also given
            assert tcp.connect_ex(("127.0.0.1", port)) != 0
        assert f"on unix:{path}" in srv.log_path.read_text()
    finally:
        http.close()
        stop(srv.proc)
    assert srv.proc.returncode == 0, srv.log_tail()
    assert not path.exists()


def test_a_taken_path_is_refused_before_the_engine_starts(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "taken.sock"
    path.write_text("")
    proc = subprocess.run([sys.executable, "-m", "pagedlm", "serve", str(checkpoint), "--device", "cpu",
                           "--uds", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"cannot listen on unix:{path}" in proc.stderr + proc.stdout
    assert "KV cache" not in proc.stderr + proc.stdout  # no engine was started
    assert path.read_text() == ""  # not replaced
