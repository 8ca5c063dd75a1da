"""The Triton kernels that the CPU suite would otherwise skip (they need a GPU), run through
Triton's interpreter on the CPU: the block-wise fp8 GEMV and GEMM, the bitsandbytes 4-bit GEMM
and the one-launch GEMV they build on, each against its PyTorch reference. One child pytest
with TRITON_INTERPRET=1 (the variable must be set before Triton is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FILES = ["tests/kernels/test_block_fp8.py", "tests/kernels/test_nf4_kernel.py", "tests/kernels/test_gemv_fused.py"]


def test_kernels_match_their_references_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES], cwd=root,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary, summary
