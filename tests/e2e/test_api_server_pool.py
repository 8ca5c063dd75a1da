"""``pagedlm serve --api-server-count 2``: two API server processes on one port, one engine
core. Each stream gets its own tokens, connections spread over both processes, /metrics sums
them, and the pool starts, fails and stops as one server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_helpers import (
    API_KEY,
    MAX_MODEL_LEN,
    MODEL_NAME,
    NUM_BLOCKS,
    REPO_ROOT,
    Server,
    alive,
    child_pids,
    core_pids,
    descendant_pids,
    free_port,
    launch,
    metric_values,
    private_tmpdir,
    sockets_dirs,
    stop,
    wait_healthy,
    wait_until,
)


def _start(checkpoint: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--num-gpu-blocks-override", str(NUM_BLOCKS), "--device", "cpu", "--api-key", API_KEY,
            "--api-server-count", "2", *extra]
    return launch(args, tmp_path / f"pool-{len(list(tmp_path.glob('pool-*')))}.log", env)


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])




def _tcp_inodes(port: int, state: str) -> set[str]:
    """Socket inodes of IPv4 TCP sockets on local ``port`` in ``state`` (0A listen, 01 established)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _sockets_of(pid: int, inodes: set[str]) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        count += bool(match and match.group(1) in inodes)
    return count


def _api_servers(server: Server) -> list[int]:
    """The launcher's children that listen on the port."""
    listening = _tcp_inodes(_port(server), "0A")
    return [pid for pid in child_pids(server.proc.pid) if _sockets_of(pid, listening)]




@pytest.fixture(scope="module")
def pool(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    # a flag with no effect here: its notice is logged once, by the launcher
    server = _start(checkpoint, tmp_path_factory.mktemp("pool"), "--disable-frontend-multiprocessing")
    try:
        wait_healthy(server, 120)  # one API server answers; the other may still be starting
        assert wait_until(lambda: len(_api_servers(server)) == 2, timeout=60), server.log_tail()
        yield server
    finally:
        stop(server.proc)


def test_connections_spread_over_both_api_servers(pool: Server) -> None:
    servers = _api_servers(pool)
    assert len(servers) == 2
    assert _sockets_of(pool.proc.pid, _tcp_inodes(_port(pool), "0A")) == 0  # the launcher only holds the port
    clients = [socket.create_connection(("127.0.0.1", _port(pool))) for _ in range(24)]
    try:
        def counts() -> list[int]:
            established = _tcp_inodes(_port(pool), "01")
            return [_sockets_of(pid, established) for pid in servers]

        assert wait_until(lambda: sum(counts()) == 24, timeout=10), counts()
        # SO_REUSEPORT hashes each connection to one listener: both get some of 24
        # (all on one: probability 2 ** -23).
        assert min(counts()) > 0, counts()
    finally:
        for c in clients:
            c.close()


def test_a_flag_notice_is_logged_once(pool: Server) -> None:
    assert pool.log_tail(400).count("--disable-frontend-multiprocessing has no effect") == 1


def test_each_stream_gets_its_own_tokens(pool: Server, offline_llm) -> None:
    """Concurrent greedy streams through both processes: each equals the offline engine."""
    from pagedlm import SamplingParams

    prompts = [f"Story number {i} begins" for i in range(16)]
    expected = [o.outputs[0].text for o in offline_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8))]

    async def one(prompt: str) -> str:
        # a client (a connection) per stream, so the kernel spreads them over both processes
        async with httpx.AsyncClient(base_url=pool.url, headers=pool.headers, timeout=60) as c:
            body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0, "stream": True}
            text = []
            async with c.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text += [ch["text"] for ch in json.loads(line[6:])["choices"]]
            return "".join(text)

    async def run() -> list[str]:
        return await asyncio.gather(*(one(p) for p in prompts))

    assert asyncio.run(run()) == expected


def test_metrics_sum_over_both_processes(pool: Server) -> None:
    def scrape() -> dict[str, float]:
        resp = httpx.get(f"{pool.url}/metrics", timeout=30)
        assert resp.status_code == 200
        return metric_values(resp.text)

    before = scrape()
    for i in range(6):  # a new connection each: both processes serve some
        resp = httpx.post(f"{pool.url}/v1/completions", headers=pool.headers, timeout=60,
                          json={"model": MODEL_NAME, "prompt": f"metrics {i}", "max_tokens": 5, "ignore_eos": True})
        assert resp.status_code == 200
    after = scrape()
    success = 'pagedlm:request_success_total{engine="0",finished_reason="length",model_name="tiny"}'
    assert after[success] - before.get(success, 0.0) == 6
    generated = 'pagedlm:generation_tokens_total{engine="0",model_name="tiny"}'
    assert after[generated] - before.get(generated, 0.0) == 30
    # the engine's gauges come from one process, not summed over two
    assert after['pagedlm:num_requests_running{engine="0",model_name="tiny"}'] == 0
    assert after['pagedlm:cache_config_info'] == 1


def test_sigterm_stops_the_whole_pool(pool: Server) -> None:
    children = descendant_pids(pool.proc.pid)
    assert len(core_pids(pool.proc.pid)) == 1 and len(children) >= 3  # two API servers and the engine core
    pool.proc.send_signal(signal.SIGTERM)
    assert pool.proc.wait(timeout=30) == 0
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=10)


def test_core_killed_mid_stream_stops_the_pool(checkpoint: Path, tmp_path: Path) -> None:
    server = _start(checkpoint, tmp_path)
    try:
        wait_healthy(server, 120)
        assert wait_until(lambda: len(_api_servers(server)) == 2, timeout=60), server.log_tail()
        api_servers = _api_servers(server)
        [core] = core_pids(server.proc.pid)
        body = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 200, "ignore_eos": True, "stream": True}
        events = []
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 2:
                            os.kill(core, signal.SIGKILL)
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 500
        assert server.proc.wait(timeout=30) == 1
        assert "engine core 0 exited unexpectedly" in server.log_tail(200)
        assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in api_servers), timeout=10)
    finally:
        stop(server.proc)


def test_launcher_killed_leaves_no_process_and_no_sockets(checkpoint: Path, tmp_path: Path) -> None:
    server = _start(checkpoint, tmp_path, env=private_tmpdir(tmp_path))
    try:
        wait_healthy(server, 120)
        assert wait_until(lambda: len(_api_servers(server)) == 2, timeout=60), server.log_tail()
        children = descendant_pids(server.proc.pid)
        assert sockets_dirs(tmp_path)  # the cores' ipc:// sockets and the metrics files
        server.proc.kill()  # and left unreaped while its children notice
        assert wait_until(lambda: not any(alive(pid) for pid in children), timeout=15)
        assert sockets_dirs(tmp_path) == []
    finally:
        stop(server.proc)


def _serve_error(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pagedlm", "serve", *args, "--port", str(free_port()), "--device", "cpu",
           "--max-model-len", str(MAX_MODEL_LEN)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)


def test_core_startup_error_is_one_line(checkpoint: Path) -> None:
    result = _serve_error(str(checkpoint), "--api-server-count", "2", "--num-gpu-blocks-override", "2")
    assert result.returncode == 1
    assert "pagedlm serve: error:" in result.stderr and "max_model_len" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--api-server-count", "0"], None, "--api-server-count must be at least 1"),
    (["--api-server-count", "2", "--enable-lora"], {"PAGEDLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
     "runtime LoRA updating"),
])
def test_settings_a_pool_cannot_honour_are_refused(checkpoint: Path, args: list[str], env: dict[str, str] | None,
                                                  message: str) -> None:
    result = _serve_error(str(checkpoint), *args, env=env)
    assert result.returncode == 1 and message in result.stderr, result.stderr
