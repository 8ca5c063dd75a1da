// W4A16 GEMM for decode batches (M = 1..8 rows of bf16 or fp16 activations) on mma.sync tensor-core
// steps, over pagedlm's internal 4-bit layout (pagedlm/kernels/wna16_reference.py): qweight
// int32 [K / 8, N], N contiguous, packed rows interleaved in tiles of 16 (field j of packed row
// r holds input (r / 16) * 128 + j * 16 + r % 16); scales and zeros [K / group_size, N] in the
// activations' dtype;
// group_size a multiple of 128, so each K tile of 128 inputs lies in one group.
//
// D^T = W^T x^T per 16-column MMA tile: the weight is the A operand (16 output columns x 16
// inputs), the activations the B operand (16 inputs x 8 rows of x, rows past M zero). What
// makes it cheap per weight:
//
//   * one 16-byte load per lane gives 4 adjacent columns of one packed row, and the lane owns
//     exactly those 4 columns in two MMA tiles (A rows g and g + 8 of tile 0 are columns
//     4g and 4g + 1, of tile 1 columns 4g + 2 and 4g + 3), so no shuffles and no shared memory
//     for the weights;
//   * the K slots of a step are assigned so that its B fragment is four adjacent inputs of x
//     (one 8-byte load, straight from global memory: x is a few KB that every block reads, so
//     it stays in L1/L2, and no block spends a prologue arranging it): K slots (2t, 2t + 1) are
//     packed rows 4t and 4t + 1, whose words one PRMT puts side by side, so per step a shift and
//     a LOP3 ((p >> 4i) & 0x000F000F | 0x43004300) give both codes as 128 + code in bf16
//     (| 0x64006400: 1024 + code in fp16, whose unit in the last place is 1 from 1024 up);
//   * the zero point is not subtracted per weight: the MMA sums (128 + code) * x in float32
//     (products exact), a second MMA chain with an all-ones A sums x itself, and per group and
//     column the result is scale * (D - (128 + zero) * sum(x)). So two words (16 weights) cost
//     2 PRMT + 8 LOP3 + 6 shifts, and every multiply-add runs on the tensor cores.
//
// Block: WARPS warps over one 32-column slice; warp w takes K tiles w, w + WARPS, ... of the
// block's K slice (grid.y is split-K), loading UNROLL tiles ahead of the ones it computes.
// Every weight load is issued before waiting for the kernel ahead (programmatic dependent
// launch: weights are never written during a step). Warps reduce through shared memory in a
// fixed order; split-K partials in float32 are summed in slice order by the block that takes
// the last ticket of its column slice (pagedlm/kernels/tickets.py).
//
// Built at first use by pagedlm/kernels/cuda_build.py; pagedlm/kernels/cuda_w4a16.py is the
// host side.

#include "common.cuh"

namespace {

using namespace pagedlm;

constexpr int kBlockN = 32;
constexpr int kMaxM = 8;


// The 16-bit type's constants: the code's base (exact base + code for codes 0..15), that base
// and 1.0 in both halves of a word, and its conversions.
template <bool FP16>
struct Half;

template <>
struct Half<false> {  // bf16
  static constexpr float kBase = 128.f;
  static constexpr uint32_t kBase2 = 0x43004300u, kOne2 = 0x3F803F80u;
  __device__ __forceinline__ static float lo(uint32_t v) { return bf16_lo(v); }
  __device__ __forceinline__ static float hi(uint32_t v) { return bf16_hi(v); }
  __device__ __forceinline__ static uint16_t from_float(float f) { return to_bf16(f); }
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

template <>
struct Half<true> {  // fp16
  static constexpr float kBase = 1024.f;
  static constexpr uint32_t kBase2 = 0x64006400u, kOne2 = 0x3C003C00u;
  __device__ __forceinline__ static float lo(uint32_t v) { return fp16_to_float((uint16_t)(v & 0xFFFFu)); }
  __device__ __forceinline__ static float hi(uint32_t v) { return fp16_to_float((uint16_t)(v >> 16)); }
  __device__ __forceinline__ static uint16_t from_float(float f) { return to_fp16(f); }
  __device__ __forceinline__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

template <bool FP16>
__device__ __forceinline__ uint32_t codes(uint32_t q, int i) {  // fields i, i + 4 as base + code
  uint32_t r;
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(r) : "r"(q >> (4 * i)), "n"(Half<FP16>::kBase2));
  return r;
}

// One K tile of a lane: packed rows 4t .. 4t + 3 of the tile, columns 4g .. 4g + 3; the
// group's scales and zeros of those columns.
struct Tile {
  uint4 w[4];
  uint2 s, z;
};

__device__ __forceinline__ void load_tile(Tile& d, const int32_t* __restrict__ qweight,
                                          const uint16_t* __restrict__ scales, const uint16_t* __restrict__ zeros,
                                          int n, int kt, int t, int col, int group_tiles) {
  if (col < n) {
    const int32_t* base = qweight + (size_t)(kt * 16 + 4 * t) * n + col;
#pragma unroll
    for (int j = 0; j < 4; ++j) d.w[j] = load_stream(base + (size_t)j * n);
    const size_t g = (size_t)(kt / group_tiles) * n + col;
    d.s = load_nc2(scales + g);
    d.z = load_nc2(zeros + g);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) d.w[j] = make_uint4(0, 0, 0, 0);
    d.s = d.z = make_uint2(0, 0);
  }
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// One K tile (8 steps of 16 inputs) of a lane into acc[T][e] (tile T's D element e: column
// 4g + 2T + e / 2, x rows 2t + e % 2). Step s takes field s of the lane's packed rows: K slots
// (2t, 2t + 1) are rows 4t, 4t + 1 (inputs 16s + 4t, + 1: one PRMT puts the two words' halves
// side by side, a shift and a LOP3 give both codes) and slots (2t + 8, 2t + 9) rows 4t + 2,
// 4t + 3; the B fragment is x[16s + 4t .. 16s + 4t + 3] of x row g, one 8-byte load (xg;
// lanes past M read the last row, whose products land in D columns nobody writes out). A
// second MMA chain with an all-ones A sums the same B: sum(x) of the tile for the lane's D
// columns (x rows 2t, 2t + 1), which takes the zero point out per group.
template <bool FP16>
__device__ __forceinline__ void use_tile(const Tile& d, const uint16_t* xg, float (&acc)[2][4]) {
  using H = Half<FP16>;
  uint2 b[8];
#pragma unroll
  for (int st = 0; st < 8; ++st) b[st] = load_nc2(xg + 16 * st);
  const uint32_t* w = &d.w[0].x;  // w[4 * j + c]: packed row 4t + j, column 4g + c
  float dd[2][2][4] = {};  // [tile][step half][element]: four independent chains
  float ones[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t sel = half ? 0x7632u : 0x5410u;
    uint32_t p[2][4];  // [rows 4t,4t+1 | 4t+2,4t+3][column c]
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      p[0][c] = prmt(w[c], w[4 + c], sel);
      p[1][c] = prmt(w[8 + c], w[12 + c], sel);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int st = 4 * half + i;
#pragma unroll
      for (int tt = 0; tt < 2; ++tt)
        H::mma(dd[tt][half], codes<FP16>(p[0][2 * tt], i), codes<FP16>(p[0][2 * tt + 1], i),
               codes<FP16>(p[1][2 * tt], i), codes<FP16>(p[1][2 * tt + 1], i), b[st].x, b[st].y);
      H::mma(ones, H::kOne2, H::kOne2, H::kOne2, H::kOne2, b[st].x, b[st].y);
    }
  }
#pragma unroll
  for (int tt = 0; tt < 2; ++tt) {
    // columns 4g + 2tt (elements 0, 1) and 4g + 2tt + 1 (elements 2, 3)
    const uint32_t s = tt ? d.s.y : d.s.x, z = tt ? d.z.y : d.z.x;
    const float s0 = H::lo(s), s1 = H::hi(s);
    const float zz0 = H::kBase + H::lo(z), zz1 = H::kBase + H::hi(z);
    acc[tt][0] += s0 * (dd[tt][0][0] + dd[tt][1][0] - zz0 * ones[0]);
    acc[tt][1] += s0 * (dd[tt][0][1] + dd[tt][1][1] - zz0 * ones[1]);
    acc[tt][2] += s1 * (dd[tt][0][2] + dd[tt][1][2] - zz1 * ones[2]);
    acc[tt][3] += s1 * (dd[tt][0][3] + dd[tt][1][3] - zz1 * ones[3]);
  }
}

// grid (ceil(N / 32), split); dynamic shared memory: WARPS * m * 32 floats for the reduction.
template <int WARPS, int UNROLL, bool FP16>
__global__ void __launch_bounds__(WARPS * 32) w4a16_mma_kernel(
    const uint16_t* __restrict__ x, const int32_t* __restrict__ qweight, const uint16_t* __restrict__ scales,
    const uint16_t* __restrict__ zeros, const uint16_t* __restrict__ bias, float* __restrict__ part,
    int* __restrict__ counters, uint16_t* __restrict__ out, int m, int n, int k, int x_stride, int group_size,
    int tiles_per_split) {
  extern __shared__ float red[];
  const int k_tiles = k / 128;
  const int group_tiles = group_size / 128;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kBlockN;
  const int col = n0 + 4 * g;
  const int tile0 = blockIdx.y * tiles_per_split;
  const int block_tiles = min(tiles_per_split, k_tiles - tile0);
  const int my_tiles = block_tiles > warp ? (block_tiles - warp + WARPS - 1) / WARPS : 0;

  // The weights first: constant during a step, so loaded before waiting for the kernel ahead.
  Tile cur[UNROLL], nxt[UNROLL];
  auto tile_of = [&](int j) { return tile0 + warp + j * WARPS; };  // the warp's j-th tile
#pragma unroll
  for (int u = 0; u < UNROLL; ++u)
    if (u < my_tiles) load_tile(cur[u], qweight, scales, zeros, n, tile_of(u), t, col, group_tiles);
  pdl_wait();
  pdl_launch_dependents();

  // x row g from input 4t on (the B fragments of every tile are 16-input steps from there)
  const uint16_t* xg = x + (size_t)min(g, m - 1) * x_stride + 4 * t;
  float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  auto compute = [&](const Tile& d, int j) {  // the warp's j-th tile
    use_tile<FP16>(d, xg + (size_t)tile_of(j) * 128, acc);
  };
  for (int it = 0; it < my_tiles; it += 2 * UNROLL) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + UNROLL + u < my_tiles)
        load_tile(nxt[u], qweight, scales, zeros, n, tile_of(it + UNROLL + u), t, col, group_tiles);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + u < my_tiles) compute(cur[u], it + u);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + 2 * UNROLL + u < my_tiles)
        load_tile(cur[u], qweight, scales, zeros, n, tile_of(it + 2 * UNROLL + u), t, col, group_tiles);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (it + UNROLL + u < my_tiles) compute(nxt[u], it + UNROLL + u);
  }

  // Warps -> one sum per (row, column) of the slice, in a fixed order.
#pragma unroll
  for (int tt = 0; tt < 2; ++tt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = 2 * t + (e & 1);
      if (row < m) red[(warp * m + row) * kBlockN + 4 * g + 2 * tt + e / 2] = acc[tt][e];
    }
  finish_block<kBlockN>(red, WARPS, m, n, n0, part, counters, [&](int row, int cc, float v) {
    if (bias != nullptr) v += Half<FP16>::lo(bias[cc]);
    out[(size_t)row * n + cc] = Half<FP16>::from_float(v);
  });
}

template <int WARPS, int UNROLL, bool FP16>
cudaError_t launch(const void* x, const void* qweight, const void* scales, const void* zeros, const void* bias,
                   float* part, int* counters, void* out, int m, int n, int k, int x_stride, int group_size,
                   int split, int tiles_per_split, int pdl, cudaStream_t stream) {
  auto kernel = w4a16_mma_kernel<WARPS, UNROLL, FP16>;
  const size_t smem = (size_t)WARPS * m * kBlockN * sizeof(float);
  static bool attr_set = false;  // the limit for dynamic shared memory above the default 48 KB
  if (!attr_set) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
    if (err != cudaSuccess) return err;
    attr_set = true;
  }
  return launch_pdl(kernel, dim3((n + kBlockN - 1) / kBlockN, split, 1), dim3(WARPS * 32, 1, 1), smem, pdl, stream,
                    static_cast<const uint16_t*>(x), static_cast<const int32_t*>(qweight),
                    static_cast<const uint16_t*>(scales), static_cast<const uint16_t*>(zeros),
                    static_cast<const uint16_t*>(bias), part, counters, static_cast<uint16_t*>(out), m, n, k, x_stride,
                    group_size, tiles_per_split);
}

}  // namespace

// The entry point the host side calls through ctypes; returns a cudaError_t (0: launched).
// warps in {4, 8}, unroll in {1, 2, 4}; fp16: 1 for fp16 activations, scales, zeros, bias and
// output, 0 for bf16; m in 1..8; n % 4 == 0; k and group_size multiples of 128; bias may be
// null; part and counters are used when split > 1.
extern "C" int pagedlm_w4a16_mma(const void* x, const void* qweight, const void* scales, const void* zeros,
                                 const void* bias, void* part, void* counters, void* out, int m, int n, int k,
                                 int x_stride, int group_size, int split, int tiles_per_split, int warps, int unroll,
                                 int fp16, int pdl, void* stream) {
  if (m < 1 || m > kMaxM) return (int)cudaErrorInvalidValue;
  auto s = static_cast<cudaStream_t>(stream);
  float* p = static_cast<float*>(part);
  int* c = static_cast<int*>(counters);
#define PAGEDLM_W4A16_CASE(WARPS, UNROLL)                                                                          \
  if (warps == WARPS && unroll == UNROLL)                                                                       \
    return (int)(fp16 ? launch<WARPS, UNROLL, true>(x, qweight, scales, zeros, bias, p, c, out, m, n, k, x_stride,  \
                                                    group_size, split, tiles_per_split, pdl, s)                   \
                      : launch<WARPS, UNROLL, false>(x, qweight, scales, zeros, bias, p, c, out, m, n, k, x_stride, \
                                                     group_size, split, tiles_per_split, pdl, s));
  PAGEDLM_W4A16_CASE(4, 1) PAGEDLM_W4A16_CASE(4, 2) PAGEDLM_W4A16_CASE(4, 4)
  PAGEDLM_W4A16_CASE(8, 1) PAGEDLM_W4A16_CASE(8, 2) PAGEDLM_W4A16_CASE(8, 4)
#undef PAGEDLM_W4A16_CASE
  return (int)cudaErrorInvalidValue;
}

// The message of a cudaError_t the entry point returned (for the host side's exception).
extern "C" const char* pagedlm_w4a16_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }
