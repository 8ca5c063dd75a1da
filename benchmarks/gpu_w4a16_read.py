"""How fast can the int4 decode kernels' load patterns read a Llama-3.1-8B layer's packed words
with no arithmetic? Read-only probes (``benchmarks/csrc/w4a16_read.cu``): the CUDA mma kernel's
tiles (lane rows 4t..4t+3 x 4 columns, 16 rows x 32 columns a warp) with CW column warps x KW K
warps per block and UNROLL tiles in flight, and the same bytes read as one flat array; each
timed as 32 launches over distinct weight copies in one CUDA graph (PDL chain), as
``gpu_w4a16_cuda.py`` times the real kernels.

    PYTHONPATH=. python3 benchmarks/gpu_w4a16_read.py
"""
import ctypes
import itertools
import subprocess
from pathlib import Path

import torch

from pagedlm.kernels.timing import graph_ms
from pagedlm.kernels import cuda_build, pdl

src = Path(__file__).parent / "csrc" / "w4a16_read.cu"
lib_path = Path("/tmp/pagedlm_w4a16_read.so")
subprocess.run(cuda_build.build_command(cuda_build.nvcc_path(), src, lib_path, "sm_90a"), check=True)
lib = ctypes.CDLL(str(lib_path))
lib.probe_tiles.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_void_p]
lib.probe_flat.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_int,
                           ctypes.c_void_p]
dev = torch.device("cuda")
L = 32
shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
W = {name: [torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev) for _ in range(L)]
     for name, (k, n) in shapes.items()}
out = torch.zeros(4, dtype=torch.int32, device=dev)
tiny = torch.empty(4096, device=dev, dtype=torch.bfloat16)


def time_graph(fn):  # µs per launch of the chain
    return graph_ms(fn) / L * 1e3


def stream():
    return torch.cuda.current_stream().cuda_stream


total = {}
for name, (k, n) in shapes.items():
    floor = (k // 8) * n * 4 / 4.24e12 * 1e6
    rows = []
    for (cw, kw), u in itertools.product(((1, 4), (1, 8), (2, 4), (4, 1), (4, 2), (8, 1), (16, 1)), (1, 2)):
        for split in (1, 2, 4, 8, 16):
            def fn(cw=cw, kw=kw, u=u, split=split):
                for q in W[name]:
                    pdl.zero_(tiny)
                    assert lib.probe_tiles(q.data_ptr(), out.data_ptr(), n, k // 128, split, cw, kw, u, stream()) == 0
            rows.append((time_graph(fn), f"tiles cw{cw} kw{kw} u{u} s{split}"))
    for blocks, u in itertools.product((132, 264, 528, 1056, 2112), (1, 2, 4, 8)):
        def fn(blocks=blocks, u=u):
            for q in W[name]:
                pdl.zero_(tiny)
                assert lib.probe_flat(q.data_ptr(), out.data_ptr(), q.numel() // 4, blocks, u, stream()) == 0
        rows.append((time_graph(fn), f"flat b{blocks} u{u}"))
    rows.sort()
    best_tiles = [r for r in rows if r[1].startswith("tiles")][0]
    best_flat = [r for r in rows if r[1].startswith("flat")][0]
    total[name] = (floor, best_tiles[0], best_flat[0])
    print(f"{name:8s} floor {floor:5.1f} us | best tiles {best_tiles[0]:5.1f} ({floor / best_tiles[0]:.0%}) "
          f"{best_tiles[1]} | best flat {best_flat[0]:5.1f} ({floor / best_flat[0]:.0%}) {best_flat[1]} | top: "
          + "  ".join(f"{lbl}:{t:.1f}" for t, lbl in rows[:5]), flush=True)
f, t, fl = (sum(v[i] for v in total.values()) for i in range(3))
print(f"RESULT one layer: floor {f:.1f} us, tiles {t:.1f} ({f / t:.0%}), flat {fl:.1f} ({f / fl:.0%})")
