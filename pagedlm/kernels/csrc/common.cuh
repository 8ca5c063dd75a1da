// Pieces the CUDA kernels of csrc/ share: streaming loads, bf16 and fp16 conversions, programmatic
// dependent launch, and the end of a split-K block (warps summed in a fixed order, slices summed
// in slice order by the block that takes the last ticket of its columns:
// pagedlm/kernels/tickets.py). Included by the .cu files; cuda_build.py hashes it with them.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace pagedlm {

// 16 bytes that are read once (the weights): not kept in L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint4 load_nc4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 load_nc2(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

__device__ __forceinline__ uint16_t to_bf16(float f) {  // round to nearest even
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7F800000u) == 0x7F800000u) return (uint16_t)((u >> 16) | ((u & 0xFFFFu) ? 0x40u : 0u));
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ uint16_t to_fp16(float f) {  // round to nearest even
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

__device__ __forceinline__ float fp16_to_float(uint16_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// The end of a block over columns n0 .. n0 + BLOCK_N - 1 of a split-K launch (grid.y slices):
// every warp has stored its sums in red[(warp * m + row) * BLOCK_N + column]; the warps' sums
// are added in warp order, and store(row, column, value) is called once per (row, column < n)
// with the whole sum: here when there is one slice, else in the block that takes the last
// ticket of blockIdx.x, which adds the slices' float32 partials in slice order (and leaves the
// counter at zero for the next launch).
template <int BLOCK_N, typename Store>
__device__ __forceinline__ void finish_block(float* red, int warps, int m, int n, int n0, float* __restrict__ part,
                                             int* __restrict__ counters, Store store) {
  __syncthreads();
  const int split = gridDim.y;
  __shared__ int last;
  for (int e = threadIdx.x; e < m * BLOCK_N; e += warps * 32) {
    float v = 0.f;
    for (int w = 0; w < warps; ++w) v += red[w * m * BLOCK_N + e];
    red[e] = v;  // warp 0's slot: read only by this thread
  }
  if (split > 1) {
    for (int e = threadIdx.x; e < m * BLOCK_N; e += warps * 32) {
      const int row = e / BLOCK_N, cc = n0 + e % BLOCK_N;
      if (cc < n) part[((size_t)blockIdx.y * m + row) * n + cc] = red[e];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[blockIdx.x], 1) == split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
  }
  for (int e = threadIdx.x; e < m * BLOCK_N; e += warps * 32) {
    const int row = e / BLOCK_N, cc = n0 + e % BLOCK_N;
    if (cc >= n) continue;
    float v = red[e];
    if (split > 1) {
      v = 0.f;
      for (int s = 0; s < split; ++s) v += __ldcg(part + ((size_t)s * m + row) * n + cc);
    }
    store(row, cc, v);
  }
  if (split > 1 && threadIdx.x == 0) counters[blockIdx.x] = 0;
}

// A launch with programmatic stream serialization where ``pdl`` (the kernel calls pdl_wait
// before touching what earlier kernels write).
template <typename Kernel, typename... Args>
cudaError_t launch_pdl(Kernel kernel, dim3 grid, dim3 block, size_t smem, int pdl, cudaStream_t stream,
                       Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

}  // namespace pagedlm
