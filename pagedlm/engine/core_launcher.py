"""Engine-core processes: where their sockets are, how they start, how they stop.

One engine core per data-parallel rank, each in its own process (``core_proc.run_engine_core``),
serving one or more frontends (API server processes; the offline LLM and a one-process
server are a single frontend). All sockets are ZMQ ``ipc://`` paths in one private (0700)
directory:

- ``input{e}``: engine core e binds a PULL socket; every frontend connects a PUSH to it, so
  the core takes requests from all of them;
- ``output{c}``: frontend c binds a PULL socket; every engine core connects a PUSH to it and
  sends frontend c the outputs of the requests it sent (``EngineCoreRequest.client_index``).

Connecting sides queue what they send until the peer binds, so start-up order does not
matter. A core reports ready (or why it failed to start) on a pipe to the process that
spawned it, which waits for every core before anything is served.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from pagedlm import process_context
from pagedlm.engine.messages import EngineFailed, EngineReady, Shutdown

logger = logging.getLogger(__name__)

STARTUP_POLL_S = 0.5
SHUTDOWN_TIMEOUT_S = 5.0
PARENT_POLL_S = 0.5


class EngineStartupError(RuntimeError):
    """An engine core could not start. ``user_error``: the message says which setting to change."""

    def __init__(self, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


@dataclass(frozen=True)
class CoreAddresses:
    """The socket paths of one set of engine cores and their frontends (picklable: API server
    processes get it as an argument)."""

    ipc_dir: str
    num_engines: int
    num_clients: int
    num_blocks: tuple[int, ...] = ()  # per engine core, once they are ready
    core_pids: tuple[int, ...] = ()  # a frontend that did not start the cores watches these

    def input(self, engine_index: int) -> str:
        return f"ipc://{self.ipc_dir}/input{engine_index}"

    def output(self, client_index: int) -> str:
        return f"ipc://{self.ipc_dir}/output{client_index}"


class EngineCores:
    """Spawns the engine-core processes, waits until they are ready, stops them."""

    def __init__(self, engine_args: Any, num_engines: int = 1, num_clients: int = 1) -> None:
        if num_clients < 1:
            raise ValueError(f"the engine cores need at least one frontend, got {num_clients}")
        ipc_dir = tempfile.mkdtemp(prefix="pagedlm-")  # mode 0700: only this user connects
        self.addresses = CoreAddresses(ipc_dir, num_engines, num_clients)
        self._ready_pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.Process] = []
        self._closed = False
        try:
            for index in range(num_engines):
                self.processes.append(self._spawn(engine_args, index))
            self.addresses = CoreAddresses(ipc_dir, num_engines, num_clients, tuple(self._wait_ready()),
                                           tuple(p.pid for p in self.processes))
        except BaseException:
            self.shutdown()
            raise

    def _spawn(self, engine_args: Any, index: int) -> multiprocessing.Process:
        from pagedlm.config import resolve_device
        from pagedlm.engine.core_proc import run_engine_core

        ctx = process_context.context(resolve_device(getattr(engine_args, "device", "auto")))
        reader, writer = ctx.Pipe(duplex=False)
        outputs = [self.addresses.output(c) for c in range(self.addresses.num_clients)]
        process = ctx.Process(
            target=run_engine_core, name=f"pagedlm-engine-core-{index}", daemon=True,
            args=(engine_args, index, self.addresses.input(index), outputs, writer, os.getpid(),
                  process_context.child_env(_device_env(engine_args, index, self.addresses.num_engines))))
        process.start()
        writer.close()  # the child holds its copy; EOF on the reader means the child is gone
        self._ready_pipes.append(reader)
        return process

    def _wait_ready(self) -> list[int]:
        """Every core's block count once all are ready; a failure or an early exit raises."""
        decoder = msgspec.msgpack.Decoder(EngineReady | EngineFailed)
        num_blocks = [0] * len(self.processes)
        waiting = dict(enumerate(self._ready_pipes))
        while waiting:
            for index, pipe in list(waiting.items()):
                if not pipe.poll(STARTUP_POLL_S / len(waiting)):
                    continue
                try:
                    event = decoder.decode(pipe.recv_bytes())
                except EOFError:
                    self.processes[index].join(STARTUP_POLL_S)
                    raise EngineStartupError(f"engine core {index} exited during start-up with code "
                                             f"{self.processes[index].exitcode}; see the log above",
                                             user_error=False) from None
                if isinstance(event, EngineFailed):
                    raise EngineStartupError(event.message, event.user_error)
                num_blocks[index] = event.num_blocks
                del waiting[index]
        return num_blocks

    def dead_core(self) -> int | None:
        """The index of a core process that has exited, if any."""
        return next((i for i, p in enumerate(self.processes) if not p.is_alive()), None)

    def shutdown(self) -> None:
        """Ask every core to stop, wait, then kill what is left; removes the socket directory."""
        if self._closed:
            return
        self._closed = True
        context = zmq.Context()
        try:
            encoded = msgspec.msgpack.encode(Shutdown())
            for index, process in enumerate(self.processes):
                if not process.is_alive():
                    continue
                socket = context.socket(zmq.PUSH)
                socket.setsockopt(zmq.LINGER, 1000)
                socket.connect(self.addresses.input(index))
                socket.send(encoded, zmq.NOBLOCK)
                socket.close()
        except zmq.ZMQError:
            pass
        finally:
            context.destroy(linger=1000)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(2)
        for pipe in self._ready_pipes:
            pipe.close()
        shutil.rmtree(self.addresses.ipc_dir, ignore_errors=True)


def _device_env(engine_args: Any, index: int, num_engines: int) -> dict[str, str]:
    """Data-parallel rank ``index`` gets its own GPUs (tensor_parallel_size of them)."""
    if num_engines == 1 or getattr(engine_args, "device", "auto") == "cpu":
        return {}
    # Each core's executor runs tp x pp ranks, one GPU each.
    per_engine = getattr(engine_args, "tensor_parallel_size", 1) * getattr(engine_args, "pipeline_parallel_size", 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(num_engines * per_engine)]
    mine = devices[index * per_engine:(index + 1) * per_engine]
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}


def exit_with_parent(parent_pid: int, what: str, leftovers: tuple[str, ...] = ()) -> None:
    """A watchdog thread that ends this process when ``parent_pid`` is gone, so a killed
    server never leaves an orphan holding the GPU or the port. ``parent_pid`` need not be the
    parent the OS knows (a forkserver's child: process_context.py); either one going ends it.
    ``leftovers``: the dead parent's private directories (its ipc:// sockets), removed on the
    way out."""
    os_parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != os_parent or not process_exists(parent_pid):
                logger.warning("The process %d that started %s is gone; %s exits", parent_pid, what, what)
                for path in leftovers:
                    shutil.rmtree(path, ignore_errors=True)
                os._exit(1)

    threading.Thread(target=watch, name="pagedlm-parent-watchdog", daemon=True).start()


def process_exists(pid: int) -> bool:
    """``pid`` runs. A zombie does not: it has died and waits for its parent to collect its exit
    status, which a supervisor may not do at once (a killed server would otherwise keep its
    engine core, and the GPU, until then)."""
    try:
        os.kill(pid, 0)
    except OSError:  # no such process, or someone else's took the number: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc here: the signal test alone
        return True
