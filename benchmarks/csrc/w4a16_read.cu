// Read-only probes for benchmarks/gpu_w4a16_read.py: the int4 decode kernels' load patterns
// over qweight int32 [K / 8, N] with nothing computed (the words XOR-ed together), to separate
// what the access pattern costs from what the arithmetic costs.
#include <cuda_runtime.h>
#include <stdint.h>

__device__ __forceinline__ uint4 ld(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// The mma kernel's pattern with CW column warps x KW K warps per block: a warp reads K tiles
// (16 packed rows x 32 columns; lane (g, t) rows 4t..4t+3, columns 4g..4g+3), UNROLL at a time.
template <int CW, int KW, int UNROLL>
__global__ void __launch_bounds__(CW * KW * 32) read_tiles(const int32_t* __restrict__ q, int* out, int n, int k_tiles,
                                                          int tiles_per_split) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int cw = warp % CW, kw = warp / CW;
  const int col = blockIdx.x * CW * 32 + cw * 32 + 4 * g;
  const int tile0 = blockIdx.y * tiles_per_split;
  const int tiles = min(tiles_per_split, k_tiles - tile0);
  uint32_t acc = 0;
  for (int it = kw; it < tiles; it += KW * UNROLL) {
    uint4 w[UNROLL][4];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[u][j] = (it + u * KW < tiles) ? ld(q + (size_t)((tile0 + it + u * KW) * 16 + 4 * t + j) * n + col)
                                        : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc ^= w[u][j].x ^ w[u][j].y ^ w[u][j].z ^ w[u][j].w;
  }
  if (acc == 0x9E3779B9u) out[0] = acc;
}

// Contiguous: the same bytes as one flat array, each thread UNROLL 16-byte loads at a time.
template <int UNROLL>
__global__ void __launch_bounds__(256) read_flat(const uint4* __restrict__ q, int* out, size_t n16) {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" :::);
  uint32_t acc = 0;
  const size_t stride = (size_t)gridDim.x * 256;
  for (size_t i = (size_t)blockIdx.x * 256 + threadIdx.x; i < n16; i += stride * UNROLL) {
    uint4 w[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) w[u] = i + u * stride < n16 ? ld(q + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= w[u].x ^ w[u].y ^ w[u].z ^ w[u].w;
  }
  if (acc == 0x9E3779B9u) out[0] = acc;
}

static cudaError_t go(void* kernel_args[], const void* fn, dim3 grid, dim3 block, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid; cfg.blockDim = block; cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr; cfg.numAttrs = 1;
  return cudaLaunchKernelExC(&cfg, fn, kernel_args);
}

extern "C" int probe_tiles(const void* q, void* out, int n, int k_tiles, int split, int cw, int kw, int unroll,
                           void* stream) {
  int per = (k_tiles + split - 1) / split;
  void* args[] = {&q, &out, &n, &k_tiles, &per};
  dim3 grid((n + cw * 32 - 1) / (cw * 32), (k_tiles + per - 1) / per), block(cw * kw * 32);
  const void* fn = nullptr;
#define C(CW, KW, U) if (cw == CW && kw == KW && unroll == U) fn = (const void*)read_tiles<CW, KW, U>;
  C(1, 4, 1) C(1, 4, 2) C(1, 8, 1) C(1, 8, 2) C(4, 1, 1) C(4, 1, 2) C(4, 2, 1) C(4, 2, 2) C(8, 1, 1) C(8, 1, 2)
  C(2, 4, 1) C(2, 4, 2) C(16, 1, 1) C(16, 1, 2)
#undef C
  if (!fn) return 1;
  return (int)go(args, fn, grid, block, (cudaStream_t)stream);
}

extern "C" int probe_flat(const void* q, void* out, long long n16, int blocks, int unroll, void* stream) {
  size_t nn = (size_t)n16;
  void* args[] = {&q, &out, &nn};
  const void* fn = unroll == 1 ? (const void*)read_flat<1> : unroll == 2 ? (const void*)read_flat<2>
                 : unroll == 4 ? (const void*)read_flat<4> : (const void*)read_flat<8>;
  return (int)go(args, fn, dim3(blocks), dim3(256), (cudaStream_t)stream);
}
