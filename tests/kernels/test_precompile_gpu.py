"""precompile.warm on a GPU: every candidate runs once on the pool's threads, on the caller's
device, failures counted and swallowed, and a Triton kernel compiled there is built for the
caller's next call (Triton's in-process cache)."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from pagedlm.kernels import precompile  # noqa: E402


@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, FACTOR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * FACTOR, mask=mask)


def _scale(x: torch.Tensor, factor: int) -> torch.Tensor:
    y = torch.empty_like(x)
    _scale_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), FACTOR=factor, BLOCK=256)
    return y


def test_candidates_compile_on_threads_and_are_built_afterwards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGEDLM_COMPILE_THREADS", "4")
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.arange(1000, device=device, dtype=torch.float32)
    seen = []

    def candidate(factor: int):
        def run():
            seen.append((threading.current_thread().name, torch.cuda.current_device()))
            if factor == 0:
                raise RuntimeError("a candidate the card cannot run")
            return _scale(x, factor)
        return run

    factors = [0, 3, 5, 7, 9]
    assert precompile.warm([candidate(f) for f in factors], device) == 1
    assert len(seen) == len(factors)
    assert all(name.startswith("pagedlm-compile") and dev == device.index for name, dev in seen)
    cache = _scale_kernel.device_caches[device.index][0]
    built = len(cache)
    assert built >= len(factors) - 1  # one specialisation per factor that ran
    for f in factors[1:]:
        assert torch.equal(_scale(x, f), x * f)
    assert len(cache) == built  # nothing compiled again on this thread
