"""Programmatic dependent launch (PDL, Hopper and later) for the Triton kernels of a step.

A decode step at small batch is a chain of several hundred short kernels, each of which
pays a ramp: the launch, the first wave of programs finding their SMs, the first loads
crossing the memory system, and at the end the wait for the slowest program. With PDL a
kernel is launched while its predecessor is still running:

- every PDL kernel calls ``gdc_wait()`` before it touches anything the kernels before it
  write (or read: it writes nothing before the wait either), so results are the same as
  with ordinary launches; the wait returns once the predecessor has finished and its
  memory is visible;
- right after its own wait it calls ``gdc_launch_dependents()``, which lets the next
  kernel's programs be scheduled onto the SMs this one leaves free;
- the GEMVs load their first weight tile before the wait (weights are never written during a
  step), so the next layer's weight stream starts while the previous kernel drains.

The chain stays safe with ordinary kernels in it (cuBLAS, torch ops): a kernel launched
without PDL waits for everything before it, and a PDL kernel after one waits for it. Every
program of a PDL kernel reaches ``gdc_wait`` (it is the prologue), so no kernel can finish
before the one ahead of it has.

Kernels take ``PDL: tl.constexpr`` and call ``pdl_prologue(PDL)``; launches pass
``**launch_kwargs()``. PDL is on where the GPU has it (NVIDIA, compute capability 9.0 or
later) unless ``PAGEDLM_PDL=0``; never under the Triton interpreter.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_enabled: bool | None = None


def enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = (os.environ.get("PAGEDLM_PDL", "1") != "0" and os.environ.get("TRITON_INTERPRET") != "1"
                    and torch.version.hip is None  # an NVIDIA feature (ROCm reports its own capabilities)
                    and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9)
    return _enabled


def set_enabled(flag: bool | None) -> None:
    """Force PDL on or off for later launches (None: decide from the device again); for
    benchmarks and tests that compare the two."""
    global _enabled
    _enabled = flag


def launch_kwargs() -> dict:
    """The keyword arguments a launch of a PDL-aware kernel adds: the kernel's PDL flag and
    Triton's launch option."""
    return {"PDL": True, "launch_pdl": True} if enabled() else {}


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    """Wait for the kernel ahead (its writes visible), then let the next one launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _zero_kernel(ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.zeros([BLOCK], dtype=ptr.dtype.element_ty), mask=offs < n)


def zero_(buf: torch.Tensor) -> None:
    """buf.zero_() as a PDL kernel where PDL is on (a stand-in for the PDL kernel that precedes
    a layer in a step, for the tuners' timing), else torch's."""
    if not enabled():
        buf.zero_()
        return
    block = 4096
    _zero_kernel[(triton.cdiv(buf.numel(), block),)](buf, buf.numel(), BLOCK=block, num_warps=4, **launch_kwargs())
