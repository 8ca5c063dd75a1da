"""A target for Nsight Compute: one W4A16 GEMV config on a Llama-3.1-8B layer, launched 20 times.

Run on the GPU machine from the repo root, e.g. the paired GEMV on gate_up (block_n 256,
4 warps, 1 stage, 4 programs per SM, no unroll) with its warp-stall breakdown:
    PYTHONPATH=. /usr/local/cuda/bin/ncu --kernel-name regex:_wna16_gemv --launch-skip 10 \\
        --launch-count 1 --section SpeedOfLight --section LaunchStats --section Occupancy \\
        --section WarpStateStats --section SchedulerStats \\
        --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio \\
        python3 benchmarks/ncu_w4a16_gemv.py gate_up 256 4 1 4.0 1 pair
Arguments: layer (qkv, o, gate_up, down), block_n, num_warps, num_stages, waves (programs per
SM, which sets split-K), unroll, dequant form (f32, int, pair).
"""

from __future__ import annotations

import sys

import torch

from benchmarks.gpu_w4a16 import SHAPES_8B, make_layer
from pagedlm.kernels import wna16_tuning


def main() -> None:
    layer, block_n, warps, stages, waves, unroll, dequant = sys.argv[1:8]
    k, n = SHAPES_8B[layer]
    qweight, scales, zeros = make_layer(k, n, 4, 128, "cuda")
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cfg = wna16_tuning.make_config("gemv", 1, int(block_n), 1, n, k, 4, 128, sms, int(warps), int(stages),
                                   float(waves), int(unroll), dequant)
    print(layer, wna16_tuning.describe(cfg), flush=True)
    for _ in range(20):
        wna16_tuning.run_choice(cfg, x, qweight, scales, zeros, None, 128, 4)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
