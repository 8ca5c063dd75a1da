"""CUDA C++ kernels built at first use with the CUDA toolkit's ``nvcc``, loaded through ctypes.

A few kernels need what Triton does not express (``csrc/*.cu``: the 4-bit decode GEMV). Each
is a plain ``extern "C"`` launcher over raw device pointers and a stream, so it needs neither
torch's headers nor a build system: ``nvcc -shared`` makes a small library in seconds, kept under
``$PAGEDLM_CACHE_DIR/cuda`` by a hash of the source (with ``csrc/*.cuh``, which the sources
include), the nvcc version and the GPU architecture,
and a later start loads it straight away. Several processes may build at once: each writes its
own temporary file and renames it into place.

Where there is no nvcc (``$CUDA_HOME/bin``, then ``PATH``), the build fails, or
``PAGEDLM_CUDA_KERNELS=0``, ``load`` returns None and callers keep their Triton kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from pagedlm.cache_dir import cache_root

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "csrc"


def enabled() -> bool:
    return os.environ.get("PAGEDLM_CUDA_KERNELS", "1") != "0"


def nvcc_path() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def arch_flag(capability: tuple[int, int]) -> str:
    """nvcc's -arch for a compute capability: the architecture-specific target (``sm_90a``)
    where one exists, since the kernels may use its instructions."""
    major, minor = capability
    return f"sm_{major}{minor}" + ("a" if major in (9, 10) else "")


def build_command(nvcc: str, source: Path, output: Path, arch: str, defines: tuple[str, ...] = (),
                  includes: tuple[str, ...] = ()) -> list[str]:
    """nvcc's command line; a source built against a header library (``includes``: CUTLASS)
    also gets the flags that library needs (constexpr host functions in device code)."""
    library = ["--expt-relaxed-constexpr", "-DNDEBUG", *(f"-I{i}" for i in includes)] if includes else []
    return [nvcc, "-O3", f"-arch={arch}", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo", *library,
            *(f"-D{d}" for d in defines), "-o", str(output), str(source)]


@functools.cache
def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout


def library_path(name: str, device: torch.device, defines: tuple[str, ...] = (),
                 includes: tuple[str, ...] = ()) -> Path | None:
    """The built library of ``csrc/<name>.cu`` for ``device`` (with ``-D`` ``defines``: a
    source's build-time knobs; ``includes``: a header library's directories, whose version
    the caller puts in ``defines``), building it if needed; None where it cannot be built (logged)."""
    return _library_path(name, torch.cuda.get_device_capability(device), tuple(defines), tuple(includes))


@functools.cache
def _library_path(name: str, capability: tuple[int, int], defines: tuple[str, ...] = (),
                  includes: tuple[str, ...] = ()) -> Path | None:
    nvcc = nvcc_path()
    if not enabled() or nvcc is None:
        logger.info("CUDA kernel %s not built: %s", name, "PAGEDLM_CUDA_KERNELS=0" if nvcc else "no nvcc found")
        return None
    source = SOURCE_DIR / f"{name}.cu"
    arch = arch_flag(capability)
    try:
        headers = b"".join(h.read_bytes() for h in sorted(SOURCE_DIR.glob("*.cuh")))  # what sources include
        digest = hashlib.sha256(source.read_bytes() + headers + _nvcc_version(nvcc).encode() + arch.encode()
                                + "\0".join(defines + includes).encode()).hexdigest()[:16]
        target = cache_root() / "cuda" / f"{name}-{arch}-{digest}.so"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run(build_command(nvcc, source, built, arch, defines, includes), capture_output=True,
                                      text=True, timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.strip()[-2000:])
                os.replace(built, target)
            logger.info("built CUDA kernel %s for %s (%s)", name, arch, target)
        return target
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        logger.warning("CUDA kernel %s could not be built (%s); using the Triton kernels", name, exc)
        return None


@functools.cache
def _load(path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))


def load(name: str, device: torch.device, defines: tuple[str, ...] = (),
         includes: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The loaded library of ``csrc/<name>.cu`` for ``device``, or None (see the module docstring)."""
    if device.type != "cuda" or torch.version.hip is not None:
        return None
    path = library_path(name, device, defines, includes)
    return _load(path) if path is not None else None


def entry_point(lib: ctypes.CDLL, name: str, pointers: int, ints: int, error_string: str):
    """``lib``'s launcher ``name`` taking ``pointers`` pointers, ``ints`` ints and a stream, returning
    a cudaError_t; its ``error_string`` attribute is the library's message function."""
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int] * ints + [ctypes.c_void_p]
    messages = getattr(lib, error_string)
    messages.restype = ctypes.c_char_p
    messages.argtypes = [ctypes.c_int]
    fn.error_string = messages
    return fn


def check_launch(fn, err: int, what: str) -> None:
    """Raise if a launcher returned a CUDA error."""
    if err:
        raise RuntimeError(f"{what} launch failed: {fn.error_string(err).decode()} (cudaError {err})")


def indexed(device: torch.device) -> torch.device:
    """``device`` with its index (the current GPU where it has none), as the kernels are keyed."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Kernel:
    """One launcher of ``csrc/<name>.cu``, bound per device on first use (``entry_point``'s
    arguments); ``None`` where the library cannot be built."""

    def __init__(self, name: str, entry: str, pointers: int, ints: int, error_string: str) -> None:
        self.name, self._signature = name, (entry, pointers, ints, error_string)
        self._bound: dict[torch.device, object] = {}

    def function(self, device: torch.device):
        device = indexed(device)
        if device not in self._bound:
            self.use_build(device, ())
        return self._bound[device]

    def use_build(self, device: torch.device, defines: tuple[str, ...]) -> None:
        """Launch the build with ``defines`` on ``device`` from now on (benchmarks compare a
        source's build-time knobs this way)."""
        device = indexed(device)
        lib = load(self.name, device, defines)
        self._bound[device] = entry_point(lib, *self._signature) if lib is not None else None

    def available(self, device: torch.device | None = None) -> bool:
        """Whether the kernel is built (or buildable) for ``device`` (default: the current GPU)."""
        if device is None:
            if not torch.cuda.is_available():
                return False
            device = torch.device("cuda")
        return device.type == "cuda" and self.function(device) is not None
