"""Helpers shared by the end-to-end tests (constants, the server handle, metrics parsing)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

API_KEY = "test-key-123"
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 256
NUM_BLOCKS = 1024
STARTUP_TIMEOUT_S = 120.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT (https with TLS)
    proc: subprocess.Popen
    log_path: Path
    verify: ssl.SSLContext | bool = True  # httpx's verify (a context trusting a self-signed certificate)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2, verify=server.verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{server.log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} and, summed over labels, {'name': value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
        name = key.split("{", 1)[0]
        if name != key:
            values[name] = values.get(name, 0.0) + float(value)
    return values


def launch(args: list[str], log_path: Path, env: dict[str, str] | None = None,
           tls: ssl.SSLContext | None = None) -> Server:
    """Start ``pagedlm serve ARGS`` on a free loopback port, its output going to ``log_path``
    (``tls``: ARGS serve https, and this client context trusts them)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pagedlm", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    full_env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT)
    return Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}", proc, log_path, verify=tls or True)


@contextlib.contextmanager
def running_server(args: list[str], log_path: Path, env: dict[str, str] | None = None,
                   timeout: float = STARTUP_TIMEOUT_S, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """``launch``, wait until healthy, and stop it (SIGINT, then kill) on the way out."""
    srv = launch(args, log_path, env, tls)
    try:
        wait_healthy(srv, timeout)
        yield srv
    finally:
        stop(srv.proc)


def private_tmpdir(tmp_path: Path) -> dict[str, str]:
    """The environment that gives a server ``tmp_path/tmp`` as its temporary directory (where
    it makes its private ipc:// socket directories), for ``sockets_dirs``."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp_path / "tmp")}


def sockets_dirs(tmp_path: Path) -> list[str]:
    """pagedlm's socket directories left in a ``private_tmpdir``."""
    return sorted(p.name for p in (tmp_path / "tmp").glob("pagedlm-*"))


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def descendant_pids(pid: int) -> list[int]:
    """The live processes below ``pid``: its children, theirs, and so on (engine cores are
    children of a forkserver the server started)."""
    out, todo = [], [pid]
    while todo:
        children = child_pids(todo.pop())
        out += children
        todo += children
    return out


def named_pids(pid: int, prefix: str) -> list[int]:
    """The processes below ``pid`` whose name (``/proc/<pid>/comm``) starts with ``prefix``:
    engine cores name themselves pagedlm-core<index>, CPU workers pagedlm-worker<rank>."""
    pids = []
    for child in descendant_pids(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().startswith(prefix):
                pids.append(child)
        except OSError:
            continue
    return pids


def core_pids(pid: int) -> list[int]:
    """The engine-core processes below ``pid``."""
    return named_pids(pid, "pagedlm-core")


def worker_pids(pid: int) -> list[int]:
    """The CPU tensor / pipeline-parallel workers below ``pid`` (under its engine core)."""
    return named_pids(pid, "pagedlm-worker")


def wait_until(predicate, timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
