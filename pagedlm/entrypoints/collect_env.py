"""``pagedlm collect-env``: the environment report to paste into a bug report, in the sections
and ``name : value`` layout of ``vllm collect-env`` (itself PyTorch's ``collect_env``).

Facts come from Python (``platform``, ``importlib.metadata``, torch) and from a few commands
(``gcc``, ``nvcc``, ``nvidia-smi``, ``lscpu``); a command that is missing or fails reads
``Could not collect``. Each command runs with a timeout, so a hung driver cannot hang the report.
Environment variables whose names look like secrets (key, token, password...) are never shown.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from typing import Any, Callable

NOT_COLLECTED = "Could not collect"
COMMAND_TIMEOUT_S = 10.0

# Distributions whose versions the report lists (a name starting with one of these).
PACKAGE_PATTERNS = ("torch", "numpy", "triton", "transformers", "tokenizers", "safetensors", "accelerate",
                    "huggingface-hub", "gguf", "xgrammar", "fastapi", "uvicorn", "openai", "pydantic", "msgspec",
                    "pyzmq", "nvidia", "nccl", "flashinfer", "pynvml", "ray", "vllm", "pagedlm")
# Environment variables the report shows: pagedlm's and vLLM's own, and the prefixes vLLM's
# report shows (torch, CUDA, NCCL, threading libraries), plus the Hugging Face Hub switches.
ENV_PREFIXES = ("PAGEDLM_", "VLLM_", "TORCH", "PYTORCH", "CUDA", "CUBLAS", "CUDNN", "NCCL", "NVIDIA", "OMP_",
                "MKL_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
SECRET_TERMS = ("secret", "token", "api", "access", "password", "key", "credential")

Runner = Callable[[str], tuple[int, str]]


def run_command(command: str) -> tuple[int, str]:
    """-> (exit code, stdout stripped of trailing whitespace); 127 when the program is missing."""
    try:
        done = subprocess.run(command, shell=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, ""
    return done.returncode, done.stdout.decode(errors="replace").rstrip()


def _first_match(run: Runner, command: str, pattern: str) -> str | None:
    rc, out = run(command)
    match = re.search(pattern, out) if rc == 0 else None
    return match.group(1) if match else None


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        try:
            release = platform.freedesktop_os_release()
            name = release.get("PRETTY_NAME") or release.get("NAME", "Linux")
        except OSError:
            name = "Linux"
        return f"{name} ({platform.machine()})"
    return f"{platform.system()} {platform.release()} ({platform.machine()})"


def system_info(run: Runner) -> dict[str, str | None]:
    libc = " ".join(part for part in platform.libc_ver() if part)
    return {
        "OS": _os_name(),
        "GCC version": _first_match(run, "gcc --version", r"gcc (.*)"),
        "Clang version": _first_match(run, "clang --version", r"clang version (.*)"),
        "CMake version": _first_match(run, "cmake --version", r"cmake (.*)"),
        "Libc version": libc or None,
    }


def torch_info() -> tuple[dict[str, str | None], Any]:
    """-> (the PyTorch section, the torch module or None when it does not import)."""
    try:
        import torch
    except Exception:  # noqa: BLE001 (a broken torch install is what the report is for)
        return {"PyTorch version": "N/A (torch does not import)"}, None
    hip = getattr(torch.version, "hip", None)
    return {
        "PyTorch version": torch.__version__,
        "Is debug build": str(torch.version.debug),
        "CUDA used to build PyTorch": "N/A" if hip else (torch.version.cuda or "None"),
        "ROCM used to build PyTorch": hip or "N/A",
    }, torch


def python_info() -> dict[str, str | None]:
    version = sys.version.replace("\n", " ")
    return {
        "Python version": f"{version} ({sys.maxsize.bit_length() + 1}-bit runtime)",
        "Python platform": platform.platform(),
    }


def gpu_info(run: Runner, torch: Any) -> dict[str, str | None] | None:
    """The CUDA / GPU section; None when neither torch was built with CUDA nor a GPU answers."""
    cuda_available = bool(torch is not None and torch.cuda.is_available())
    rc, gpu_list = run("nvidia-smi -L")
    gpus = re.sub(r" \(UUID: .+?\)", "", gpu_list) if rc == 0 and gpu_list else None
    if gpus is None and cuda_available:
        gpus = "\n".join(f"GPU {i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
    built_with_cuda = torch is not None and bool(torch.version.cuda or getattr(torch.version, "hip", None))
    if not (cuda_available or gpus or built_with_cuda):
        return None
    cudnn = torch.backends.cudnn.version() if cuda_available else None
    return {
        "Is CUDA available": "Yes" if cuda_available else "No",
        "CUDA runtime version": _first_match(run, "nvcc --version", r"release .+ V(.*)"),
        "CUDA_MODULE_LOADING set to": os.environ.get("CUDA_MODULE_LOADING", "") if cuda_available else "N/A",
        "GPU models and configuration": f"\n{gpus}\n" if gpus and "\n" in gpus else gpus,
        "Nvidia driver version": _first_match(run, "nvidia-smi", r"Driver Version: (\S+)"),
        "cuDNN version": str(cudnn) if cudnn else None,
    }


def cpu_info(run: Runner) -> str:
    rc, out = run("lscpu")
    if rc == 0 and out:
        return out
    return platform.processor() or NOT_COLLECTED


def package_versions(patterns: tuple[str, ...] = PACKAGE_PATTERNS) -> list[str]:
    """``[pip3] name==version`` for the installed distributions matching ``patterns``, sorted."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().startswith(patterns):
            found.setdefault(name, dist.version)
    return [f"[pip3] {name}=={version}" for name, version in sorted(found.items(), key=lambda kv: kv[0].lower())]


def pagedlm_info(run: Runner) -> dict[str, str | None]:
    from pagedlm.version import __version__

    rc, topo = run("nvidia-smi topo -m")
    return {
        "pagedlm Version": __version__,
        "pagedlm install": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "GPU Topology": f"\n{topo}" if rc == 0 and topo else None,
    }


def env_vars(environ: dict[str, str] | None = None) -> list[str]:
    environ = dict(os.environ if environ is None else environ)
    return [f"{k}={v}" for k, v in sorted(environ.items())
            if k.startswith(ENV_PREFIXES) and not any(term in k.lower() for term in SECRET_TERMS)]


def _section(title: str, body: str) -> str:
    rule = "=" * 30
    return f"{rule}\n{title.center(30).rstrip()}\n{rule}\n{body}\n"


def _fields(fields: dict[str, str | None]) -> str:
    return "\n".join(f"{name:<29}: {NOT_COLLECTED if value is None else value}" for name, value in fields.items())


def get_pretty_env_info(run: Runner = run_command, environ: dict[str, str] | None = None) -> str:
    torch_fields, torch = torch_info()
    sections = [
        _section("System Info", _fields(system_info(run))),
        _section("PyTorch Info", _fields(torch_fields)),
        _section("Python Environment", _fields(python_info())),
    ]
    gpu = gpu_info(run, torch)
    if gpu is not None:
        sections.append(_section("CUDA / GPU Info", _fields(gpu)))
    sections += [
        _section("CPU Info", cpu_info(run)),
        _section("Versions of relevant libraries", "\n".join(package_versions()) or "No relevant packages"),
        _section("pagedlm Info", _fields(pagedlm_info(run))),
        _section("Environment Variables", "\n".join(env_vars(environ)) or "None set"),
    ]
    return "\n".join(sections)


def main() -> None:
    print("Collecting environment information...", flush=True)
    print(get_pretty_env_info())


if __name__ == "__main__":
    main()
