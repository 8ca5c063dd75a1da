"""precompile.warm: the tuners' candidates run once on a pool of threads before they are timed
(the compile side of it needs CUDA: tests/kernels/test_precompile_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from pagedlm.kernels import precompile


def test_thread_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEDLM_COMPILE_THREADS", "3")
    assert precompile.threads() == 3
    monkeypatch.delenv("PAGEDLM_COMPILE_THREADS")
    assert 1 <= precompile.threads() <= precompile.MAX_THREADS
    for bad in ("0", "-2", "four"):
        monkeypatch.setenv("PAGEDLM_COMPILE_THREADS", bad)
        with pytest.raises(ValueError, match="PAGEDLM_COMPILE_THREADS"):
            precompile.threads()


def test_nothing_runs_off_cuda_or_with_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = []
    calls = [lambda i=i: ran.append(i) for i in range(4)]
    assert precompile.warm(calls, torch.device("cpu")) == 0
    monkeypatch.setenv("PAGEDLM_COMPILE_THREADS", "1")
    assert precompile.warm(calls, torch.device("cuda", 0)) == 0  # returns before touching the device
    assert ran == []
