"""GPU tests build many engines in one process: free each test's engines (CUDA graphs, their
memory pools, cuBLAS workspaces) before the next test captures its own."""

from __future__ import annotations

import gc

import pytest
import torch


@pytest.fixture(autouse=True)
def _release_engines():
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
