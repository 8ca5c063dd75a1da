"""``pagedlm serve --api-server-count N``: N API server processes on one port, one set of
engine cores.

One API server process does all the text work of every stream (detokenizing, building and
writing each SSE chunk) under one GIL; with a thousand concurrent streams that work, not the
GPU, sets the pace. With N > 1 this launcher process:

1. holds the port (bound, not listening) and starts the engine cores for N frontends
   (core_launcher), waiting until they are ready, so a busy port, a bad model or a KV cache
   that does not fit fails once, early;
2. spawns N API server processes, each listening on the port with SO_REUSEPORT: the kernel
   spreads new connections evenly over them (one shared listening socket would not: an
   idle process accepts a whole burst of connections in one wake-up). With --uds they share
   the launcher's socket. Each runs the usual app over an ``AsyncLLM`` that joins the cores
   as frontend i and gets back exactly the outputs of the requests it sent;
3. waits. SIGTERM (or Ctrl-C) drains every API server as one server would; when one exits
   on its own (an engine core died) or a core exits, the rest are stopped and the launcher
   exits 1, so a supervisor restarts the whole server.

Metrics: the API servers write Prometheus' multiprocess files into a private directory, and
/metrics (on whichever process answers it) reads them all: request and token counts summed
over the processes; the engine's gauges and counters come from API server 0 only.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any

from pagedlm.engine.core_launcher import CoreAddresses, EngineCores, EngineStartupError, exit_with_parent

logger = logging.getLogger("pagedlm.server")

STOP_TIMEOUT_S = 10.0  # beyond the drain grace period, before API servers are killed
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_api_server_pool(args: argparse.Namespace, setup: Any, sock: socket.socket) -> int:
    """Serve with ``setup.server_args.api_server_count`` API server processes; the exit code."""
    from pagedlm.entrypoints.openai.api_server import startup_error

    count = setup.server_args.api_server_count
    metrics_dir = tempfile.mkdtemp(prefix="pagedlm-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # the API servers inherit it (they are spawned)
    try:
        try:
            cores = EngineCores(setup.engine_args, setup.engine_args.data_parallel_size, num_clients=count)
        except (ValueError, EngineStartupError) as e:
            raise startup_error(e) from e
        try:
            return _supervise(args, setup, sock, cores)
        finally:
            cores.shutdown()
    finally:
        os.environ.pop(METRICS_DIR_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(args: argparse.Namespace, setup: Any, sock: socket.socket, cores: EngineCores) -> int:
    context = multiprocessing.get_context("spawn")
    shared = sock if setup.server_args.uds else None  # TCP: each API server listens on its own socket
    servers = [context.Process(target=run_api_server, name=f"pagedlm-api-server-{i}", daemon=False,
                               args=(args, shared, cores.addresses, i, os.getpid()))
               for i in range(setup.server_args.api_server_count)]
    stopping = False

    def stop(sig: int, _frame: Any) -> None:
        nonlocal stopping
        if sig == signal.SIGTERM:  # Ctrl-C reaches the whole process group on its own
            for server in servers:
                if server.pid is not None and server.is_alive():
                    os.kill(server.pid, signal.SIGTERM)
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for server in servers:
            server.start()
        a = setup.server_args
        where = f"unix:{a.uds}" if a.uds else f"{'https' if a.ssl_certfile else 'http'}://{a.host}:{a.port}"
        logger.info("Serving on %s with %d API server processes (OpenAI-compatible API under /v1)", where,
                    len(servers))
        exit_code = _wait(servers, cores, lambda: stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("Server stopped")
    return exit_code


def _wait(servers: list[multiprocessing.Process], cores: EngineCores, stopping: Any) -> int:
    """Until every API server has exited. The first exit that is not part of a requested stop
    (an API server ending on its own, or any engine core) stops the rest: exit code 1."""
    failed = False
    running = list(servers)
    while running:
        sentinels = [p.sentinel for p in running] + [p.sentinel for p in cores.processes if p.is_alive()]
        multiprocessing.connection.wait(sentinels, timeout=1.0)
        for process in list(running):
            if not process.is_alive():
                process.join()
                running.remove(process)
                if not stopping() and not failed:
                    logger.error("API server %s exited with code %s; stopping the server", process.name,
                                 process.exitcode)
                    failed = True
                failed = failed or bool(process.exitcode)
        dead = cores.dead_core()
        if dead is not None and not failed:
            cores.processes[dead].join()  # reaped: the API servers see it is gone and fail their requests
            logger.error("engine core %d exited unexpectedly (exit code %s); stopping the server", dead,
                         cores.processes[dead].exitcode)
            failed = True
        if failed:
            _stop(running)
            running = []
    return 1 if failed else 0


def _stop(servers: list[multiprocessing.Process]) -> None:
    """Let the API servers finish on their own for a moment (they fail their requests when a
    core is gone), then SIGTERM (a drain), then kill what is left."""
    deadline = time.monotonic() + 2.0
    for server in servers:
        server.join(max(0.0, deadline - time.monotonic()))
    for server in servers:
        if server.is_alive():
            server.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for server in servers:
        server.join(max(0.0, deadline - time.monotonic()))
        if server.is_alive():
            server.kill()
            server.join(2)


def run_api_server(args: argparse.Namespace, sock: socket.socket | None, cores: CoreAddresses, client_index: int,
                   launcher_pid: int) -> None:
    """Entry point of API server process ``client_index``: serves on ``sock`` (--uds) or on
    its own SO_REUSEPORT socket on the server's port."""
    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.entrypoints.openai.api_server import ServerSetup, serve_on
    from pagedlm.logger import configure_logging
    from pagedlm.metrics import PrometheusStatLogger

    configure_logging()
    exit_with_parent(launcher_pid, f"API server {client_index}", (os.environ[METRICS_DIR_ENV], cores.ipc_dir))
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    setup = ServerSetup.from_cli_args(args, notices=False)  # checked (and noticed) by the launcher already
    if sock is None:
        sock = setup.bind(pool=True)
    engine = AsyncLLM.from_engine_args(setup.engine_args, cores=cores, client_index=client_index)

    def metrics(model_name: str, **kwargs: Any) -> PrometheusStatLogger:
        return PrometheusStatLogger(model_name, multiprocess_dir=os.environ[METRICS_DIR_ENV],
                                    engine_stats=client_index == 0, **kwargs)

    serve_on(setup, engine, sock, metrics, owner=False)
