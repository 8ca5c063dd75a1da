"""A worker process that dies while the engine is idle (no request in flight) fails the engine
at once, as vLLM's worker monitor does: the server exits naming the dead rank, instead of
answering /health 200 until the next request happens to reach the dead worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from e2e_helpers import API_KEY, MAX_MODEL_LEN, MODEL_NAME, NUM_BLOCKS, launch, stop, wait_healthy, worker_pids


def test_worker_killed_while_idle_stops_the_server(checkpoint: Path, tmp_path: Path) -> None:
    args = [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--num-gpu-blocks-override", str(NUM_BLOCKS), "--device", "cpu", "--api-key", API_KEY,
            "--tensor-parallel-size", "2"]
    server = launch(args, tmp_path / "server.log")
    try:
        wait_healthy(server, 120)
        workers = worker_pids(server.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        start = time.monotonic()
        # No request is sent: the engine must notice on its own.
        server.proc.wait(timeout=15)
        assert time.monotonic() - start < 10
        assert server.proc.returncode != 0
        assert "worker process(es) died: rank 0" in server.log_tail(300)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        try:
            status = httpx.get(f"{server.url}/health", timeout=2).status_code
        except httpx.HTTPError:
            status = None
        assert status is None
    finally:
        stop(server.proc)
