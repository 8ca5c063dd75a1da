"""Host side of the CUTLASS W4A16 GEMM (``csrc/w4a16_cutlass.cu``): 4-bit weights times bf16 or
fp16 activations for batched decode and prefill on Hopper, the weight dequantized in registers by
CUTLASS's mixed-input mainloop (no bf16 copy of the weight is ever written).

Same product as ``wna16_reference.wna16_gemm`` for 4-bit layers whose groups are whole
contiguous runs of at least 64 inputs, over a weight held in the kernel's own layout:
``prepare`` turns the internal layout's codes into it once at load (4-bit codes [N, K],
reordered on the device), with zeros folded as ``-zero * scale`` so that a weight is
``scale * code + zeros`` (the bf16 rounding of that product differs from the reference's
``(code - zero) * scale`` by a rounding step, as any two kernels' sums do).

Each tile configuration (``TILES``: weight rows x activation rows, two consumer warp groups on
one tile or alternating between two) and activation dtype (``DTYPES``: a model's dtype builds
only its own eight) is its own library, built at first use with the
device's nvcc against the headers of the ``nvidia-cutlass`` package (``cuda_build``; a minute or
two each, in parallel, then cached). Where the package, an nvcc or an sm_90 GPU is missing, or
``PAGEDLM_CUDA_KERNELS=0``, ``available`` is False and callers keep their other kernels.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pagedlm.kernels import cuda_build

logger = logging.getLogger(__name__)

NAME = "w4a16_cutlass"
# (tile_n: weight rows, tile_m: activation rows, pingpong)
TILES = ((128, 16, 0), (128, 32, 0), (128, 64, 0), (128, 128, 0), (128, 256, 0), (64, 64, 1), (64, 128, 1),
         (64, 256, 1))
TILE_K = 64  # 128 bytes of 16-bit activations: the mainloop's K step, so groups are whole multiples of it
DTYPES = (torch.bfloat16, torch.float16)  # the activations' (and scales', output's) dtype of a build


@functools.cache
def include_dirs() -> tuple[str, ...] | None:
    """CUTLASS's header directories from the ``nvidia-cutlass`` package, or None."""
    spec = importlib.util.find_spec("cutlass_library")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "source"
    dirs = (root / "include", root / "tools" / "util" / "include")
    if not ((dirs[0] / "cutlass" / "cutlass.h").is_file() and (dirs[1] / "cutlass" / "util").is_dir()):
        return None
    return tuple(str(d) for d in dirs)


@functools.cache
def _cutlass_version() -> str:
    try:
        return importlib.metadata.version("nvidia-cutlass")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _defines(tile: tuple[int, int, int], dtype: torch.dtype = torch.bfloat16) -> tuple[str, ...]:
    if dtype not in DTYPES:
        raise ValueError(f"the CUTLASS W4A16 kernel takes {DTYPES} activations, not {dtype}")
    tile_n, tile_m, pingpong = tile
    return (f"TILE_N={tile_n}", f"TILE_M={tile_m}", f"PINGPONG={pingpong}", f"PAGEDLM_CUTLASS_PKG={_cutlass_version()}",
            *(("PAGEDLM_FP16=1",) if dtype == torch.float16 else ()))


def _supported(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.version.hip is None and include_dirs() is not None
            and torch.cuda.get_device_capability(device) == (9, 0))


@functools.cache
def _functions(device: torch.device, tile: tuple[int, int, int], dtype: torch.dtype = torch.bfloat16):
    """(gemm, workspace, reorder) of ``tile``'s library for ``dtype`` on ``device``, or None."""
    lib = cuda_build.load(NAME, device, _defines(tile, dtype), include_dirs() or ())
    if lib is None:
        return None
    gemm = cuda_build.entry_point(lib, "pagedlm_w4a16_cutlass", 6, 5, "pagedlm_w4a16_cutlass_error_string")
    workspace = lib.pagedlm_w4a16_cutlass_workspace
    workspace.restype = ctypes.c_long
    workspace.argtypes = [ctypes.c_int] * 4
    reorder = cuda_build.entry_point(lib, "pagedlm_w4a16_cutlass_reorder", 2, 2, "pagedlm_w4a16_cutlass_error_string")
    return gemm, workspace, reorder


def built_tiles(device: torch.device | None = None, tiles: tuple = TILES,
                dtype: torch.dtype = torch.bfloat16) -> list[tuple[int, int, int]]:
    """The tiles whose libraries for ``dtype`` activations build on ``device`` (default: the
    current GPU), built in parallel; empty where the kernel is not available."""
    if device is None:
        if not torch.cuda.is_available():
            return []
        device = torch.device("cuda")
    device = cuda_build.indexed(device)
    if not cuda_build.enabled() or not _supported(device) or dtype not in DTYPES:
        return []
    return list(_build(device, tuple(tiles), dtype))


@functools.cache
def _build(device: torch.device, tiles: tuple, dtype: torch.dtype) -> tuple:
    # one nvcc per core at most (each takes a minute or two and a GB or two of memory)
    workers = max(1, min(len(tiles), os.cpu_count() or 1))
    logger.info("CUTLASS W4A16 kernels: loading %d %s tile libraries (built with nvcc on the first start: about "
                "%d minutes)", len(tiles), str(dtype).removeprefix("torch."), max(2, 2 * -(-len(tiles) // workers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(lambda t: _functions(device, t, dtype), tiles))
    return tuple(t for t, f in zip(tiles, found) if f is not None)


def available(device: torch.device | None = None, dtype: torch.dtype = torch.bfloat16) -> bool:
    return bool(built_tiles(device, dtype=dtype))


def layer_fits(k: int, n: int, group_size: int, bits: int, row_groups: bool) -> bool:
    """4-bit, groups of whole K steps (or one group over K), N in whole 128-row tiles (the
    reordered layout tiles the weight's rows; a ragged N gave wrong sums on an H200), no
    act-order row groups."""
    return (bits == 4 and k % TILE_K == 0 and n % 128 == 0 and not row_groups
            and (group_size % TILE_K == 0) and k % group_size == 0)


def tile_of(block_n: int, block_m: int) -> tuple[int, int, int]:
    """The tile of a tuner config (``KernelConfig`` kind "cutlass": block_n weight rows, block_m
    activation rows); 64-row tiles are the ping-pong ones."""
    tile = (block_n, block_m, int(block_n == 64))
    if tile not in TILES:
        raise ValueError(f"no CUTLASS W4A16 tile of {block_n} x {block_m}; the tiles are {TILES}")
    return tile


def pack_codes_nk(codes_kn: torch.Tensor) -> torch.Tensor:
    """int codes [K, N] in [0, 16) -> uint8 [N, K // 2]: K contiguous, input 2i in the low nibble."""
    codes = codes_kn.t().to(torch.uint8)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def prepare(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
            bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's operands from the internal layout (``wna16_reference``): (reordered
    codes uint8 [N, K // 2], scales [G, N], zeros [G, N] = -zero * scale), in the scales' dtype
    (bf16 or fp16: the activations' dtype the layer runs)."""
    from pagedlm.kernels import wna16_reference  # noqa: PLC0415

    k = qweight.shape[0] * (32 // bits)
    codes = wna16_reference.unpack_codes(qweight, bits, wna16_reference.interleave_rows(k, group_size, bits))
    return prepare_codes(codes, scales, zeros, group_size, bits)


def prepare_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                  bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``prepare`` from unsigned codes [K, N] (rows in kernel order) on the GPU. The reordered
    layout is the same for every tile, so any built library reorders."""
    k, n = codes.shape
    dtype = scales.dtype
    if not layer_fits(k, n, group_size, bits, False) or dtype not in DTYPES:
        raise ValueError(f"the CUTLASS W4A16 kernel cannot take K {k}, N {n}, {bits}-bit, group {group_size}, "
                         f"{dtype} scales")
    device = cuda_build.indexed(codes.device)
    tiles = built_tiles(device, dtype=dtype)  # every tile's library, built in parallel on first use
    if not tiles:
        raise RuntimeError("the CUTLASS W4A16 kernel is not available (no nvidia-cutlass, nvcc or sm_90 GPU)")
    plain = pack_codes_nk(codes)
    reordered = torch.empty_like(plain)
    reorder = _functions(device, tiles[0], dtype)[2]
    err = reorder(plain.data_ptr(), reordered.data_ptr(), n, k, torch.cuda.current_stream(device).cuda_stream)
    cuda_build.check_launch(reorder, err, "CUTLASS W4A16 reorder")
    folded = (-(zeros.float() * scales.float())).to(dtype).contiguous()
    _size_workspace(device, n, k, group_size, dtype)
    return reordered, scales.contiguous(), folded


BUDGET_FRACTION = 0.1  # of the GPU's memory, for the kernel's copies of the 4-bit weights
# bytes of operands each layer keeps, per device (a layer processed again replaces its entry)
_copies: dict[torch.device, weakref.WeakKeyDictionary] = {}


def reserve(owner: object, device: torch.device, nbytes: int) -> bool:
    """Whether ``owner`` (a layer) may keep ``nbytes`` of this kernel's operands beside its
    internal layout: up to ``BUDGET_FRACTION`` of the GPU's memory in all (an 8B model's copies
    take 3.7 GB; on a card where a model's 4-bit weights are much of the memory, the later layers
    keep only the internal layout and run the other kernels)."""
    device = cuda_build.indexed(device)
    held = _copies.setdefault(device, weakref.WeakKeyDictionary())
    held.pop(owner, None)
    budget = int(torch.cuda.get_device_properties(device).total_memory * BUDGET_FRACTION)
    if sum(held.values()) + nbytes > budget:
        return False
    held[owner] = nbytes
    return True


_workspaces: dict[torch.device, torch.Tensor] = {}


def _size_workspace(device: torch.device, n: int, k: int, group_size: int, dtype: torch.dtype,
                    max_m: int = 65536) -> None:
    """Allocate the largest workspace any tile needs for this layer up to ``max_m`` rows now,
    so that no launch inside a CUDA graph capture has to."""
    _workspace(device, max((_functions(device, tile, dtype)[1](max_m, n, k, group_size)
                            for tile in built_tiles(device, dtype=dtype)), default=0))


def _workspace(device: torch.device, need: int) -> torch.Tensor | None:
    """The device's workspace, grown to ``need`` bytes (never inside a graph capture); None
    when a launch needs none."""
    if need <= 0:
        return None
    ws = _workspaces.get(device)
    if ws is None or ws.numel() < need:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("the CUTLASS W4A16 workspace must be sized before graph capture")
        ws = _workspaces[device] = torch.empty(max(need, 1 << 20), device=device, dtype=torch.uint8)
    return ws


def gemm(x2d: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
         tile: tuple[int, int, int], bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x2d [M, K] @ W (+ bias) in x2d's dtype (that of ``prepare``'s operands)."""
    m, k = x2d.shape
    n = weight.shape[0]
    if (x2d.dtype != scales.dtype or not x2d.is_contiguous() or x2d.data_ptr() % 16 or weight.shape[1] * 2 != k):
        raise ValueError(f"the CUTLASS W4A16 kernel takes contiguous, 16-byte aligned activations of the weight's "
                         f"width in the operands' dtype ({scales.dtype}; got {x2d.dtype})")
    device = cuda_build.indexed(x2d.device)
    fns = _functions(device, tile, x2d.dtype)
    if fns is None:
        raise RuntimeError(f"the CUTLASS W4A16 kernel with tile {tile} is not available for {x2d.dtype}")
    fn, workspace_size, _ = fns
    out = torch.empty((m, n), device=x2d.device, dtype=x2d.dtype)
    need = workspace_size(m, n, k, group_size)
    ws = _workspace(device, need)
    err = fn(x2d.data_ptr(), weight.data_ptr(), scales.data_ptr(), zeros.data_ptr(), out.data_ptr(),
             ws.data_ptr() if ws is not None else None, m, n, k, group_size, int(need),
             torch.cuda.current_stream(device).cuda_stream)
    cuda_build.check_launch(fn, err, "CUTLASS W4A16 kernel")
    return out if bias is None else out.add_(bias.to(out.dtype))
