// W8A8 GEMM for decode batches (M = 1..8 rows) on mma.sync tensor-core steps: 8-bit codes of
// the activations (int8 or fp8 e4m3, per-token or per-tensor float32 scales) times 8-bit codes
// of the weight [N, K] (K contiguous; per-channel or per-tensor float32 scales), the layout the
// 8-bit linear methods keep (pagedlm/layers/quantization). y = (x_codes . w_codes) * sx * sw
// (+ bias), written in bf16, fp16 or float32.
//
// D^T = W^T x^T per m16n8k32 step: the weight is the A operand (16 output columns x 32 inputs),
// the activations the B operand (32 inputs x 8 rows of x; lanes past M read the last row, whose
// products land in D columns nobody writes out). The codes go to the tensor cores as they are:
// nothing is converted per weight, so the kernel is a stream of 16-byte loads and MMAs. The
// step's K slots are assigned so that both operands come from contiguous bytes: lane (g, t)
// owns columns g and g + 8 of the warp's 16 and, in each 128-input chunk, inputs 32t .. 32t + 31
// (two 16-byte loads per column, the four lanes of a column covering one 128-byte line); step
// s takes bytes 8s .. 8s + 3 of that run into A slots 4t .. 4t + 3 and bytes 8s + 4 .. 8s + 7
// into slots 16 + 4t .., and the B fragment is the same 8 bytes of x (one 8-byte piece of the
// lane's two 16-byte activation loads).
//
// Block: WARPS warps over one 16-column slice; warp w takes chunks w, w + WARPS, ... of the
// block's K slice (grid.y is split-K), loading UNROLL chunks ahead of the ones it computes, the
// first before waiting for the kernel ahead (programmatic dependent launch). Warps reduce
// through shared memory in a fixed order; split-K partials in float32 are summed in slice order
// by the block that takes the last ticket of its slice (pagedlm/kernels/tickets.py). int8 steps
// accumulate in int32 (exact: |code| <= 127, K < 2^17).
//
// Built at first use by pagedlm/kernels/cuda_build.py; pagedlm/kernels/cuda_w8a8.py is the
// host side.

#include "common.cuh"

namespace {

using namespace pagedlm;

constexpr int kBlockN = 16;
constexpr int kMaxM = 8;

template <bool FP8>
struct Acc;

template <>
struct Acc<true> {  // e4m3 x e4m3 -> float32
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  __device__ __forceinline__ void mma(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ float get(int e) const { return d[e]; }
};

template <>
struct Acc<false> {  // s8 x s8 -> int32
  int d[4] = {0, 0, 0, 0};
  __device__ __forceinline__ void mma(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ float get(int e) const { return (float)d[e]; }
};

__device__ __forceinline__ float from_16(uint16_t h, int kind) {  // kind 0: bf16, 1: fp16
  return kind == 0 ? __uint_as_float((uint32_t)h << 16) : fp16_to_float(h);
}

// A lane's weights of one 128-input chunk: 32 bytes of column g (w0) and of column g + 8 (w1).
struct Chunk {
  uint4 w0[2], w1[2];
};

__device__ __forceinline__ void load_chunk(Chunk& c, const uint8_t* col0, const uint8_t* col1, int kc) {
  const size_t off = (size_t)kc * 128;
  c.w0[0] = col0 != nullptr ? load_stream(col0 + off) : make_uint4(0, 0, 0, 0);
  c.w0[1] = col0 != nullptr ? load_stream(col0 + off + 16) : make_uint4(0, 0, 0, 0);
  c.w1[0] = col1 != nullptr ? load_stream(col1 + off) : make_uint4(0, 0, 0, 0);
  c.w1[1] = col1 != nullptr ? load_stream(col1 + off + 16) : make_uint4(0, 0, 0, 0);
}

template <bool FP8>
__device__ __forceinline__ void use_chunk(const Chunk& c, const uint8_t* xr, int kc, Acc<FP8>& acc) {
  const uint4 xa = load_nc4(xr + (size_t)kc * 128), xb = load_nc4(xr + (size_t)kc * 128 + 16);
  const uint32_t x[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
  const uint32_t* w0 = &c.w0[0].x;
  const uint32_t* w1 = &c.w1[0].x;
#pragma unroll
  for (int s = 0; s < 4; ++s) acc.mma(w0[2 * s], w1[2 * s], w0[2 * s + 1], w1[2 * s + 1], x[2 * s], x[2 * s + 1]);
}

// grid (ceil(N / 16), split); dynamic shared memory: WARPS * m * 16 floats.
template <int WARPS, int UNROLL, bool FP8>
__global__ void __launch_bounds__(WARPS * 32) w8a8_mma_kernel(
    const uint8_t* __restrict__ x, const uint8_t* __restrict__ w, const float* __restrict__ sx,
    const float* __restrict__ sw, const uint16_t* __restrict__ bias, float* __restrict__ part,
    int* __restrict__ counters, void* __restrict__ out, int m, int n, int k, int x_stride, int w_stride,
    int sx_per_row, int sw_per_col, int chunks_per_split, int out_kind) {
  extern __shared__ float red[];
  const int k_chunks = k / 128;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kBlockN;
  const int chunk0 = blockIdx.y * chunks_per_split;
  const int block_chunks = min(chunks_per_split, k_chunks - chunk0);
  const int my_chunks = block_chunks > warp ? (block_chunks - warp + WARPS - 1) / WARPS : 0;
  // the lane's 32-byte runs (inputs 32t ..) of its two columns, null past N
  const uint8_t* col0 = n0 + g < n ? w + (size_t)(n0 + g) * w_stride + 32 * t : nullptr;
  const uint8_t* col1 = n0 + g + 8 < n ? w + (size_t)(n0 + g + 8) * w_stride + 32 * t : nullptr;
  auto chunk_of = [&](int j) { return chunk0 + warp + j * WARPS; };  // the warp's j-th chunk

  // The weights first: constant during a step, so loaded before waiting for the kernel ahead.
  Chunk cur[UNROLL], nxt[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u)
    if (u < my_chunks) load_chunk(cur[u], col0, col1, chunk_of(u));
  pdl_wait();
  pdl_launch_dependents();

  const uint8_t* xr = x + (size_t)min(g, m - 1) * x_stride + 32 * t;
  Acc<FP8> acc;
  for (int it = 0; it < my_chunks; it += 2 * UNROLL) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + UNROLL + u < my_chunks) load_chunk(nxt[u], col0, col1, chunk_of(it + UNROLL + u));
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + u < my_chunks) use_chunk<FP8>(cur[u], xr, chunk_of(it + u), acc);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + 2 * UNROLL + u < my_chunks) load_chunk(cur[u], col0, col1, chunk_of(it + 2 * UNROLL + u));
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + UNROLL + u < my_chunks) use_chunk<FP8>(nxt[u], xr, chunk_of(it + UNROLL + u), acc);
  }

  // Warps -> one sum per (row, column) of the slice, in a fixed order. D element e: column
  // g + 8 * (e / 2), x row 2t + e % 2.
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int row = 2 * t + (e & 1);
    if (row < m) red[(warp * m + row) * kBlockN + g + 8 * (e / 2)] = acc.get(e);
  }
  finish_block<kBlockN>(red, WARPS, m, n, n0, part, counters, [&](int row, int cc, float v) {
    v *= sx[sx_per_row ? row : 0] * sw[sw_per_col ? cc : 0];
    if (bias != nullptr) v += from_16(bias[cc], out_kind == 1 ? 1 : 0);
    const size_t o = (size_t)row * n + cc;
    if (out_kind == 2) static_cast<float*>(out)[o] = v;
    else static_cast<uint16_t*>(out)[o] = out_kind == 1 ? to_fp16(v) : to_bf16(v);
  });
}

template <int WARPS, int UNROLL, bool FP8>
cudaError_t launch(const void* x, const void* w, const float* sx, const float* sw, const void* bias, float* part,
                   int* counters, void* out, int m, int n, int k, int x_stride, int w_stride, int sx_per_row,
                   int sw_per_col, int split, int chunks_per_split, int out_kind, int pdl, cudaStream_t stream) {
  auto kernel = w8a8_mma_kernel<WARPS, UNROLL, FP8>;
  return launch_pdl(kernel, dim3((n + kBlockN - 1) / kBlockN, split, 1), dim3(WARPS * 32, 1, 1),
                    (size_t)WARPS * m * kBlockN * sizeof(float), pdl, stream, static_cast<const uint8_t*>(x),
                    static_cast<const uint8_t*>(w), sx, sw, static_cast<const uint16_t*>(bias), part, counters, out, m,
                    n, k, x_stride, w_stride, sx_per_row, sw_per_col, chunks_per_split, out_kind);
}

}  // namespace

// The entry point the host side calls through ctypes; returns a cudaError_t (0: launched).
// fp8: e4m3 codes (else int8); warps in {4, 8}; unroll in {1, 2}; m in 1..8; k % 128 == 0; rows
// of x and w 16-byte aligned; sx / sw float32 with one value per row / column or one in all;
// bias (16-bit, the output's type, or bf16 for a float32 output) may be null; out_kind 0 bf16,
// 1 fp16, 2 float32; part and counters are used when split > 1.
extern "C" int pagedlm_w8a8_mma(const void* x, const void* w, const void* sx, const void* sw, const void* bias,
                                void* part, void* counters, void* out, int m, int n, int k, int x_stride,
                                int w_stride, int sx_per_row, int sw_per_col, int split, int chunks_per_split,
                                int warps, int unroll, int fp8, int out_kind, int pdl, void* stream) {
  if (m < 1 || m > kMaxM) return (int)cudaErrorInvalidValue;
  auto s = static_cast<cudaStream_t>(stream);
  const float* fx = static_cast<const float*>(sx);
  const float* fw = static_cast<const float*>(sw);
  float* p = static_cast<float*>(part);
  int* c = static_cast<int*>(counters);
#define PAGEDLM_W8A8_CASE(WARPS, UNROLL, FP8)                                                                   \
  if (warps == WARPS && unroll == UNROLL && (fp8 != 0) == FP8)                                               \
    return (int)launch<WARPS, UNROLL, FP8>(x, w, fx, fw, bias, p, c, out, m, n, k, x_stride, w_stride, sx_per_row, \
                                           sw_per_col, split, chunks_per_split, out_kind, pdl, s);
  PAGEDLM_W8A8_CASE(4, 1, true) PAGEDLM_W8A8_CASE(4, 2, true) PAGEDLM_W8A8_CASE(8, 1, true)
  PAGEDLM_W8A8_CASE(8, 2, true) PAGEDLM_W8A8_CASE(4, 1, false) PAGEDLM_W8A8_CASE(4, 2, false)
  PAGEDLM_W8A8_CASE(8, 1, false) PAGEDLM_W8A8_CASE(8, 2, false)
#undef PAGEDLM_W8A8_CASE
  return (int)cudaErrorInvalidValue;
}

// The message of a cudaError_t the entry point returned (for the host side's exception).
extern "C" const char* pagedlm_w8a8_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }
