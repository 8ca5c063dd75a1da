"""The server process's lifecycle around uvicorn: the listening socket (bound before the model
loads, so a busy port fails at once), and the graceful drain on SIGTERM / Ctrl-C or exit when
an engine core dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from fastapi import FastAPI

from pagedlm.engine.async_llm import AsyncLLM, RequestFailedError

logger = logging.getLogger("pagedlm.server")


def bind_socket(host: str, port: int, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """Bind before loading the model, so a busy port fails in a second, not after the load.
    ``reuse_port``: one of a pool's sockets on the same port (SO_REUSEPORT: the kernel spreads
    new connections evenly over the listening ones); the pool's launcher binds without
    listening, to hold the port and fail early, and takes no connections."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}. Give --host an address or name "
                               "of this machine (0.0.0.0 for all of them).") from e
    try:
        if not reuse_port:
            return socket.create_server((host, port), family=family)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            if listen:
                sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}. Pick another --port.") from e


def bind_unix_socket(path: str) -> socket.socket:
    """--uds: listen on a Unix domain socket (the file keeps the process umask's permissions);
    an existing file at the path is an error, not replaced."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ServerStartError(f"cannot listen on unix:{path}: {e.strerror or e}. Remove the stale socket file "
                               "or pick another --uds.") from e
    return sock


def close_socket(sock: socket.socket, uds: str | None) -> None:
    sock.close()
    if uds:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uds)


class ServerStartError(RuntimeError):
    """The server cannot start as configured; the message says what to change."""


class GracefulServer:
    """uvicorn, with vLLM-style lifecycle on top:

    - SIGTERM / Ctrl-C: refuse new requests (503), let unfinished ones run up to the grace
      period, then abort the rest (their clients get the error event and ``[DONE]``; the log
      gets one line per aborted request) and exit 0. A second signal exits at once.
    - An engine core that dies: in-flight requests have already failed; the server stops and
      the process exits 1, so a supervisor restarts it.
    """

    def __init__(self, config: Any, app: FastAPI, engine: AsyncLLM, grace_period_s: float) -> None:
        import uvicorn

        outer = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:  # runs in the signal handler
                loop = getattr(app.state, "loop", None)
                if outer.draining or loop is None:
                    super().handle_exit(sig, frame)
                else:
                    outer.draining = True
                    loop.call_soon_threadsafe(outer.start_drain)

        self.server = _Server(config)
        self.engine = engine
        self.grace_period_s = grace_period_s
        self.draining = False
        self.exit_code = 0
        engine.on_dead.append(self._on_engine_dead)

    def run(self, sock: socket.socket) -> int:
        self.server.run(sockets=[sock])
        return self.exit_code

    def start_drain(self) -> None:
        self.engine.draining = True
        logger.info("Shutting down: no new requests; waiting up to %.1fs for %d unfinished request(s)",
                    self.grace_period_s, self.engine.num_unfinished_requests)
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_period_s
        while self.engine.num_unfinished_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        error = RequestFailedError("The server is shutting down; the request was aborted.", status=503)
        for request_id in self.engine.abort_all(error):
            logger.warning("Aborted request %s: the server is shutting down", request_id)
        await asyncio.sleep(0)  # let the aborted streams write their last events
        self.server.should_exit = True

    def _on_engine_dead(self, error: BaseException) -> None:
        logger.error("The engine is dead (%s); the server exits", error)
        self.exit_code = 1
        self.server.should_exit = True
