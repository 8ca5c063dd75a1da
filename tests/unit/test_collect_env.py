"""``pagedlm collect-env``: vLLM's report sections, GPU facts read from nvidia-smi/nvcc (here a
fake command runner, so the GPU section is checked on CPU), the variables it shows and the
secrets it never shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from pagedlm.entrypoints import collect_env
from pagedlm.version import __version__

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["System Info", "PyTorch Info", "Python Environment", "CUDA / GPU Info", "CPU Info",
            "Versions of relevant libraries", "pagedlm Info", "Environment Variables"]
GPU_MACHINE = {
    "nvidia-smi -L": "GPU 0: NVIDIA H200 (UUID: GPU-1111)\nGPU 1: NVIDIA H200 (UUID: GPU-2222)",
    "nvidia-smi": "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |",
    "nvcc --version": "Cuda compilation tools, release 12.8, V12.8.93",
    "nvidia-smi topo -m": "\tGPU0\tGPU1\nGPU0\t X \tNV18\nGPU1\tNV18\t X ",
    "gcc --version": "gcc (Debian 12.2.0-14) 12.2.0",
    "lscpu": "Architecture: x86_64\nModel name: Test CPU",
}
ENVIRON = {"PAGEDLM_CACHE_DIR": "/c", "VLLM_USE_V1": "1", "CUDA_VISIBLE_DEVICES": "0,1", "NCCL_DEBUG": "INFO",
           "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret", "PAGEDLM_API_KEY": "s3cret", "VLLM_API_KEY": "s3cret",
           "AWS_SECRET_ACCESS_KEY": "s3cret", "HOME": "/root", "PATH": "/usr/bin"}


def fake_runner(answers: dict[str, str]):
    def run(command: str) -> tuple[int, str]:
        return (0, answers[command]) if command in answers else (127, "")

    return run


def field(report: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)} *: (.*)$", report, re.M)
    assert match, f"no {name!r} line in:\n{report}"
    return match.group(1)


def titles(report: str) -> list[str]:
    return re.findall(r"^={30}\n(.+)\n={30}$", report, re.M)


def test_gpu_machine_report() -> None:
    report = collect_env.get_pretty_env_info(fake_runner(GPU_MACHINE), ENVIRON)
    assert [t.strip() for t in titles(report)] == SECTIONS
    assert field(report, "GCC version") == "(Debian 12.2.0-14) 12.2.0"
    assert field(report, "Clang version") == "Could not collect"
    assert field(report, "PyTorch version") == torch.__version__
    assert field(report, "CUDA runtime version") == "12.8.93"
    assert field(report, "Nvidia driver version") == "570.86.15"
    assert "\nGPU 0: NVIDIA H200\nGPU 1: NVIDIA H200\n" in report and "UUID" not in report  # anonymised
    assert "GPU0\t X \tNV18" in report  # the topology
    assert field(report, "pagedlm Version") == __version__
    assert "Model name: Test CPU" in report
    assert f"[pip3] torch=={torch.__version__}" in report


def test_environment_variables_shown_and_secrets_not() -> None:
    report = collect_env.get_pretty_env_info(fake_runner({}), ENVIRON)
    shown = report.split("Environment Variables\n" + "=" * 30 + "\n", 1)[1].split()
    assert shown == ["CUDA_VISIBLE_DEVICES=0,1", "HF_HUB_OFFLINE=1", "NCCL_DEBUG=INFO", "PAGEDLM_CACHE_DIR=/c",
                     "VLLM_USE_V1=1"]
    assert "s3cret" not in report and "hf_secret" not in report


def test_cpu_machine_has_no_gpu_section() -> None:
    report = collect_env.get_pretty_env_info(fake_runner({}), {})
    if torch.version.cuda or torch.cuda.is_available():
        return  # a CUDA build of torch reports its CUDA section (the case above)
    assert "CUDA / GPU Info" not in titles(report)
    assert field(report, "CUDA used to build PyTorch") == "None"
    assert field(report, "GCC version") == "Could not collect"
    assert field(report, "GPU Topology") == "Could not collect"


def test_packages_match_by_name_prefix() -> None:
    names = [line.split("==")[0].removeprefix("[pip3] ") for line in collect_env.package_versions(("torch", "ray"))]
    assert "torch" in names
    assert all(n.lower().startswith(("torch", "ray")) for n in names)  # not aws-xray-sdk


def test_cli_subcommand() -> None:
    done = subprocess.run([sys.executable, "-m", "pagedlm", "collect-env"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PAGEDLM_TEST_MARK": "on"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Collecting environment information...\n" + "=" * 30 + "\n")
    assert "pagedlm Info" in done.stdout and "PAGEDLM_TEST_MARK=on" in done.stdout
