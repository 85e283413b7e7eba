// The batch-invariant tensor-core linear kernels (quant_linear_mma.h): mma.sync with the
// weight's rows on the M side (16 per tile) and tokens on the N side (8 per group).
//
// Input order inside a tile: a chunk of CK inputs (64 for bf16 weights, 128 = one scale
// block for fp8 ones; 128 weight bytes per row either way) is read by lane (g, q) = (lane
// / 4, lane % 4) as two 16-byte pieces of rows g and g + 8 (and of its token's input row):
// bytes [16q, 16q + 16) and [64 + 16q, 64 + 16q + 16) of the chunk, so each load
// instruction of a warp reads 64 contiguous bytes of every row it touches. The fragment's k
// indices are mapped onto those pieces, the same map for the weight (A) and the input (B),
// so every mma still multiplies matching inputs. With E = inputs per 16 bytes (8 bf16, 16
// e4m3), word w of a lane's 32 bytes holds inputs (w / 4) * CK / 2 + q * E + (w % 4) * E / 4
// .. + E / 4 - 1, and
//   m16n8k16 (bf16 weight), step j: A/B registers 0 and 1 are words 2j and 2j + 1;
//   m16n8k16 (fp8 weight as bf16), step j (8 per chunk): word j, its codes 0-1 and 2-3;
//   m16n8k32 (e4m3), step j: words 2j and 2j + 1.
// Every input of the chunk is used exactly once per tile; the order of the steps is fixed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/cp_async.cuh"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/mma_sync.cuh"
#include "kiln/ops/cuda/quant_linear_mma.h"
#include "kiln/ops/cuda/row_tile.cuh"

namespace kiln::ops::cuda::detail {
namespace {

constexpr int kMaxKWarps = 16;

struct KernelArgs {
  const uint8_t* w;
  int64_t row_bytes;
  const float* ws;  // fp8: fp32 block scales [ceil(n / block_n), ws_ld]
  int ws_ld, block_n, n, k;
  const float* x;
  int64_t ldx;
  const uint8_t* xq;
  const float* xs;
  int64_t xs_ld;
  int64_t group_rows, x_group_stride;
  int M;
  float* y;
  int64_t ldy;
  bool round;
  int kwarps;  // the plan's input ranges (the row-tile kernel walks them in one warp)
};

__device__ __forceinline__ uint4 ld_weight(const uint8_t* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// Two e4m3 codes (the low or high half of v) as a bf16 pair, exactly.
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t v, int half) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(v >> (16 * half)), __NV_E4M3);
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
  return bf16x2(f.x, f.y);
}

// One 128-input chunk of an FP8 weight (the lane's 8 words of rows g and g + 8) times one
// token group's e4m3 codes (the lane's 8 words), added into acc with the chunk's scales:
// the block's sum of four m16n8k32 steps, times (activation scale x weight scale).
__device__ __forceinline__ void chunk_fp8x(const uint32_t (&r0w)[8], const uint32_t (&r1w)[8], const uint32_t (&xw)[8],
                                           float sa0, float sa1, float ws, float (&acc)[4]) {
  float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 4; ++j)
    mma_e4m3(r0w[2 * j], r1w[2 * j], r0w[2 * j + 1], r1w[2 * j + 1], xw[2 * j], xw[2 * j + 1], blk);
  const float s0 = __fmul_rn(sa0, ws), s1 = __fmul_rn(sa1, ws);
  acc[0] = __fmaf_rn(blk[0], s0, acc[0]);
  acc[1] = __fmaf_rn(blk[1], s1, acc[1]);
  acc[2] = __fmaf_rn(blk[2], s0, acc[2]);
  acc[3] = __fmaf_rn(blk[3], s1, acc[3]);
}

// One 128-input chunk of an FP8 weight as bf16 pairs (a0..a3 per m16n8k16 step) times one
// token group's fp32 inputs in three bf16 terms (xv[j]: step j's four inputs), the chunk's
// sum scaled by the weight's block scale into acc.
__device__ __forceinline__ void chunk_fp8w_split(const uint32_t (&a0)[8], const uint32_t (&a1)[8], const uint32_t (&a2)[8],
                                                 const uint32_t (&a3)[8], const float4 (&xv)[8], float ws,
                                                 float (&acc)[4]) {
  float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 8; ++j) mma_bf16_split3(a0[j], a1[j], a2[j], a3[j], xv[j].x, xv[j].y, xv[j].z, xv[j].w, blk);
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = __fmaf_rn(blk[i], ws, acc[i]);
}

// The same chunk times one token group's inputs rounded to bf16, one term each (b0[j], b1[j]:
// step j's inputs as bf16 pairs).
__device__ __forceinline__ void chunk_fp8w_bf16(const uint32_t (&a0)[8], const uint32_t (&a1)[8], const uint32_t (&a2)[8],
                                                const uint32_t (&a3)[8], const uint32_t (&b0)[8], const uint32_t (&b1)[8],
                                                float ws, float (&acc)[4]) {
  float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 8; ++j) mma_bf16(a0[j], a1[j], a2[j], a3[j], b0[j], b1[j], blk);
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = __fmaf_rn(blk[i], ws, acc[i]);
}

// An FP8 chunk's e4m3 codes of rows g (r0w) and g + 8 (r1w) as bf16 pairs, exactly.
__device__ __forceinline__ void fp8_chunk_as_bf16(const uint32_t (&r0w)[8], const uint32_t (&r1w)[8], uint32_t (&a0)[8],
                                                  uint32_t (&a1)[8], uint32_t (&a2)[8], uint32_t (&a3)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    a0[j] = e4m3x2_to_bf16x2(r0w[j], 0);
    a2[j] = e4m3x2_to_bf16x2(r0w[j], 1);
    a1[j] = e4m3x2_to_bf16x2(r1w[j], 0);
    a3[j] = e4m3x2_to_bf16x2(r1w[j], 1);
  }
}

// One 128-input chunk of an FP8 weight (as bf16 pairs) times one token group's fp32 inputs,
// xin(j) giving step j's four: one bf16 term each (Fp8W_Bf16X) or three (Fp8W_SplitX).
template <MmaOperands OPS, class XIn>
__device__ __forceinline__ void chunk_fp8w_fp32x(const uint32_t (&a0)[8], const uint32_t (&a1)[8], const uint32_t (&a2)[8],
                                                 const uint32_t (&a3)[8], XIn&& xin, float ws, float (&acc)[4]) {
  if constexpr (OPS == MmaOperands::Fp8W_Bf16X) {
    uint32_t b0[8], b1[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float4 v = xin(j);
      b0[j] = bf16x2(v.x, v.y), b1[j] = bf16x2(v.z, v.w);
    }
    chunk_fp8w_bf16(a0, a1, a2, a3, b0, b1, ws, acc);
  } else {
    float4 xv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) xv[j] = xin(j);
    chunk_fp8w_split(a0, a1, a2, a3, xv, ws, acc);
  }
}

// A lane's accumulator (rows row0, row1 x tokens tc0, tc0 + 1) into y, inside M x n.
__device__ __forceinline__ void write_outputs(const KernelArgs& a, const float (&v)[4], int tc0, int row0, int row1) {
  if (tc0 < a.M) {
    float* yr = a.y + static_cast<int64_t>(tc0) * a.ldy;
    if (row0 < a.n) yr[row0] = v[0];
    if (row1 < a.n) yr[row1] = v[2];
  }
  if (tc0 + 1 < a.M) {
    float* yr = a.y + static_cast<int64_t>(tc0 + 1) * a.ldy;
    if (row0 < a.n) yr[row0] = v[1];
    if (row1 < a.n) yr[row1] = v[3];
  }
}

// Inputs per chunk; a chunk is 128 weight bytes per row either way.
template <MmaOperands OPS>
struct Chunk {
  static constexpr int kInputs = mma_bf16_weight(OPS) ? 64 : 128;
  static constexpr int kBytes = 128;
};

// grid (token passes, 16-row tiles), kwarps x 32 threads. TG token groups of 8 per pass.
template <MmaOperands OPS, int TG>
__global__ void __launch_bounds__(kMaxKWarps * 32) mma_linear_kernel(KernelArgs a) {
  constexpr int CK = Chunk<OPS>::kInputs;
  const int kw = static_cast<int>(blockDim.x >> 5);
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int g = lane >> 2, q = lane & 3;
  const int tile = static_cast<int>(blockIdx.y);
  const int tok0 = static_cast<int>(blockIdx.x) * TG * 8;
  const int row0 = tile * 16 + g, row1 = row0 + 8;
  // Rows past n load row n - 1 (their results are not written).
  const uint8_t* w0 = a.w + static_cast<int64_t>(min(row0, a.n - 1)) * a.row_bytes + q * 16;
  const uint8_t* w1 = a.w + static_cast<int64_t>(min(row1, a.n - 1)) * a.row_bytes + q * 16;
  const int64_t group = static_cast<int64_t>(tile) * 16 / a.group_rows;
  const int nc = a.k / CK;
  const int c0 = warp * nc / kw, c1 = (warp + 1) * nc / kw;
  // Groups holding at least one token (uniform over the block).
  const int groups = min(TG, (a.M - tok0 + 7) / 8);

  // This lane's B column (token tok0 + 8t + g) of each group.
  const float* xr[TG];
  const uint8_t* xqr[TG];
#pragma unroll
  for (int t = 0; t < TG; ++t) {
    const int tb = tok0 + t * 8 + g;
    xr[t] = nullptr;
    xqr[t] = nullptr;
    if (tb < a.M) {
      if constexpr (OPS == MmaOperands::Fp8W_Fp8X) {
        xqr[t] = a.xq + static_cast<int64_t>(tb) * a.k + q * 16;
      } else {
        xr[t] = a.x + static_cast<int64_t>(tb) * a.ldx + group * a.x_group_stride + q * (CK / 8);
      }
    }
  }

  float acc[TG][4];
#pragma unroll
  for (int t = 0; t < TG; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;

  // Weight chunks in flight: kDepth ahead of the one being multiplied, a ring of registers
  // (the loop is unrolled by kDepth so every index is static). Two for steps of up to 16
  // tokens (H200, 4-layer V4-Flash synthetic: batch 1 +5.6% over one, batch 8 +6%); one
  // above, where the accumulators of 4-8 token groups need the registers (depth 2 cost 13%
  // of prefill, depth 3 23%). The chunks are multiplied in the same order either way.
  constexpr int kDepth = TG <= 2 ? 2 : 1;
  auto load = [&](uint4 (&w)[4], int c) {
    const int64_t off = static_cast<int64_t>(c) * Chunk<OPS>::kBytes;
    w[0] = ld_weight(w0 + off), w[1] = ld_weight(w0 + off + 64);
    w[2] = ld_weight(w1 + off), w[3] = ld_weight(w1 + off + 64);
  };
  auto multiply = [&](const uint4 (&w)[4], int c) {
    const uint32_t r0w[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
    const uint32_t r1w[8] = {w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w};
    if constexpr (mma_bf16_weight(OPS)) {
#pragma unroll
      for (int t = 0; t < TG; ++t) {
        if (t >= groups) break;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float* xp = xr[t] + c * CK + (j / 2) * 32 + (j % 2) * 4;
          const float4 xv = xr[t] ? __ldg(reinterpret_cast<const float4*>(xp)) : make_float4(0, 0, 0, 0);
          if constexpr (OPS == MmaOperands::Bf16W_Bf16X)
            mma_bf16(r0w[2 * j], r1w[2 * j], r0w[2 * j + 1], r1w[2 * j + 1], bf16x2(xv.x, xv.y), bf16x2(xv.z, xv.w), acc[t]);
          else
            mma_bf16_split3(r0w[2 * j], r1w[2 * j], r0w[2 * j + 1], r1w[2 * j + 1], xv.x, xv.y, xv.z, xv.w, acc[t]);
        }
      }
    } else if constexpr (OPS == MmaOperands::Fp8W_SplitX || OPS == MmaOperands::Fp8W_Bf16X) {
      uint32_t a0[8], a1[8], a2[8], a3[8];
      fp8_chunk_as_bf16(r0w, r1w, a0, a1, a2, a3);
      const float ws = a.ws[static_cast<int64_t>(tile * 16 / a.block_n) * a.ws_ld + c];
#pragma unroll
      for (int t = 0; t < TG; ++t) {
        if (t >= groups) break;
        auto xin = [&](int j) {
          const float* xp = xr[t] + c * CK + (j / 4) * 64 + (j % 4) * 4;
          return xr[t] ? __ldg(reinterpret_cast<const float4*>(xp)) : make_float4(0, 0, 0, 0);
        };
        chunk_fp8w_fp32x<OPS>(a0, a1, a2, a3, xin, ws, acc[t]);
      }
    } else {  // Fp8W_Fp8X
      const float ws = a.ws[static_cast<int64_t>(tile * 16 / a.block_n) * a.ws_ld + c];
#pragma unroll
      for (int t = 0; t < TG; ++t) {
        if (t >= groups) break;
        uint4 xa = make_uint4(0, 0, 0, 0), xb = make_uint4(0, 0, 0, 0);
        if (xqr[t]) {
          xa = __ldg(reinterpret_cast<const uint4*>(xqr[t] + c * CK));
          xb = __ldg(reinterpret_cast<const uint4*>(xqr[t] + c * CK + 64));
        }
        const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        // Columns 2q, 2q + 1 of the group: their tokens' activation scales of this block.
        const int tc0 = tok0 + t * 8 + 2 * q, tc1 = tc0 + 1;
        const float sa0 = tc0 < a.M ? a.xs[static_cast<int64_t>(c) * a.xs_ld + tc0] : 0.0f;
        const float sa1 = tc1 < a.M ? a.xs[static_cast<int64_t>(c) * a.xs_ld + tc1] : 0.0f;
        chunk_fp8x(r0w, r1w, xw, sa0, sa1, ws, acc[t]);
      }
    }
  };
  uint4 ring[kDepth][4];
#pragma unroll
  for (int d = 0; d < kDepth; ++d)
    if (c0 + d < c1) load(ring[d], c0 + d);
  // The first weight chunks (immutable) are loaded before the wait for the kernel before,
  // so that their latency overlaps its tail (launch.cuh); the activations are read after.
  await_previous_grid();
  for (int cb = c0; cb < c1; cb += kDepth) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int c = cb + d;
      if (c < c1) {
        const uint4 w[4] = {ring[d][0], ring[d][1], ring[d][2], ring[d][3]};
        if (c + kDepth < c1) load(ring[d], c + kDepth);
        multiply(w, c);
      }
    }
  }

  // The warps' partial sums, added in warp order by warp 0, group by group.
  __shared__ float part[kMaxKWarps - 1][4][32];
#pragma unroll
  for (int t = 0; t < TG; ++t) {
    if (t >= groups) break;
    float v[4] = {acc[t][0], acc[t][1], acc[t][2], acc[t][3]};
    if (kw > 1) {
      if (warp > 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) part[warp - 1][i][lane] = v[i];
      }
      __syncthreads();
      if (warp == 0) {
        for (int w = 1; w < kw; ++w) {
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = __fadd_rn(v[i], part[w - 1][i][lane]);
        }
      }
      __syncthreads();
    }
    if (warp == 0) {
      if (a.round) {
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = bf16_round(v[i]);
      }
      write_outputs(a, v, tok0 + t * 8 + 2 * q, row0, row1);
    }
  }
}

// ---- The row-tile kernel: many tokens ----
//
// grid (64-token passes, 128-row tiles), 8 warps; warp w multiplies the 16-row tile 8 y + w
// by the pass's 64 tokens over all inputs. A chunk's inputs for the 64 tokens (and their
// activation scales) are staged in shared memory by cp.async, double-buffered, so all 8 warps
// read one copy. Each warp walks the plan's kwarps input ranges in order and keeps a finished
// range's sum aside (a lane-private shared slot), added to the earlier ones when the range
// ends: ((range 0 + range 1) + range 2) ..., the order in which mma_linear_kernel's warp 0
// adds its warps' sums. Every output is therefore the same bits as in mma_linear_kernel.
constexpr int kRowTileTokens = 64;

// Bytes of one staged chunk: e4m3 codes [64][128] and scales [64], or fp32 inputs [64][CK]
// (CK = 128 on FP8 weights, 64 on bf16 ones).
template <MmaOperands OPS>
struct RowStage {
  static constexpr int kRowBytes = OPS == MmaOperands::Fp8W_Fp8X ? 128 : Chunk<OPS>::kInputs * 4;
  static constexpr int kXBytes = kRowTileTokens * kRowBytes;
  static constexpr int kBytes = kXBytes + (OPS == MmaOperands::Fp8W_Fp8X ? kRowTileTokens * 4 : 0);
  static constexpr int kDoneBytes = kRowTileDoneFloats * 4;
  static constexpr int kSmem = 2 * kBytes + kDoneBytes;
};

// The 16-byte unit where unit u of a staged token row lives, XOR-swizzled so that the
// quarter-warps' 16-byte reads (tokens g and g + 1, lanes q = 0..3) hit distinct banks.
__device__ __forceinline__ int fp8x_unit(int row, int u) { return u ^ ((row & 1) << 2); }
__device__ __forceinline__ int split_unit(int row, int u) { return u ^ ((((u >> 3) & 1) << 1) | (row & 1)); }
__device__ __forceinline__ int bf16w_unit(int row, int u) { return u ^ (row & 1); }  // 16 units a row
// Unit u of a staged fp32 row of a chunk of CK inputs.
template <int CK>
__device__ __forceinline__ int fp32_unit(int row, int u) {
  return CK == 128 ? split_unit(row, u) : bf16w_unit(row, u);
}

template <MmaOperands OPS>
__global__ void __launch_bounds__(kRowTileWarps * 32, 2) mma_linear_rows_kernel(KernelArgs a) {
  await_previous_grid();
  using St = RowStage<OPS>;
  constexpr int CK = Chunk<OPS>::kInputs;
  constexpr int kUnits = CK / 4;  // 16-byte units of a staged fp32 row
  extern __shared__ __align__(16) uint8_t smem[];
  float* done = reinterpret_cast<float*>(smem + 2 * St::kBytes);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, q = lane & 3;
  const int tile = static_cast<int>(blockIdx.y) * kRowTileWarps + warp;
  const bool active = tile * 16 < a.n;  // every warp stages and waits; only these multiply
  const int tok0 = static_cast<int>(blockIdx.x) * kRowTileTokens;
  const int row0 = tile * 16 + g, row1 = row0 + 8;
  const uint8_t* w0 = a.w + static_cast<int64_t>(min(row0, a.n - 1)) * a.row_bytes + q * 16;
  const uint8_t* w1 = a.w + static_cast<int64_t>(min(row1, a.n - 1)) * a.row_bytes + q * 16;
  const int64_t group = static_cast<int64_t>(blockIdx.y) * kRowTileWarps * 16 / a.group_rows;
  const int nc = a.k / CK, kw = a.kwarps;
  const int groups = min(kRowTileTokens / 8, (a.M - tok0 + 7) / 8);
  const float* wsr = mma_bf16_weight(OPS) ? nullptr : a.ws + static_cast<int64_t>(min(tile * 16, a.n - 1) / a.block_n) * a.ws_ld;

  auto stage = [&](int c, int buf) {
    uint8_t* st = smem + buf * St::kBytes;
    if constexpr (OPS == MmaOperands::Fp8W_Fp8X) {
      for (int i = tid; i < kRowTileTokens * 8; i += kRowTileWarps * 32) {
        const int row = i >> 3, u = i & 7, tok = tok0 + row;
        const bool ok = tok < a.M;
        const uint8_t* src = ok ? a.xq + static_cast<int64_t>(tok) * a.k + static_cast<int64_t>(c) * CK + u * 16 : a.xq;
        cp_async16(st + row * St::kRowBytes + fp8x_unit(row, u) * 16, src, ok);
      }
      if (tid < kRowTileTokens) {
        const bool ok = tok0 + tid < a.M;
        cp_async4(st + St::kXBytes + tid * 4, ok ? a.xs + static_cast<int64_t>(c) * a.xs_ld + tok0 + tid : a.xs, ok);
      }
    } else {
      for (int i = tid; i < kRowTileTokens * kUnits; i += kRowTileWarps * 32) {
        const int row = i / kUnits, u = i % kUnits, tok = tok0 + row;
        const bool ok = tok < a.M;
        const float* src =
            ok ? a.x + static_cast<int64_t>(tok) * a.ldx + group * a.x_group_stride + static_cast<int64_t>(c) * CK + u * 4 : a.x;
        cp_async16(st + row * St::kRowBytes + fp32_unit<CK>(row, u) * 16, src, ok);
      }
    }
    cp_async_commit();
  };

  float acc[kRowTileGroups][4];
#pragma unroll
  for (int t = 0; t < 8; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  int range = 0, range_end = nc / kw;
  auto end_range = [&]() {
    fold_range(done, warp, lane, acc, groups, range == 0);
    ++range;
    range_end = (range + 1) * nc / kw;
  };
  auto load = [&](uint4 (&w)[4], int c) {
    const int64_t off = static_cast<int64_t>(c) * 128;
    w[0] = ld_weight(w0 + off), w[1] = ld_weight(w0 + off + 64);
    w[2] = ld_weight(w1 + off), w[3] = ld_weight(w1 + off + 64);
  };
  auto multiply = [&](const uint4 (&w)[4], int c, const uint8_t* st) {
    const uint32_t r0w[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
    const uint32_t r1w[8] = {w[2].x, w[2].y, w[2].z, w[2].w, w[3].x, w[3].y, w[3].z, w[3].w};
    if constexpr (mma_bf16_weight(OPS)) {
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (t >= groups) break;
        const int row = t * 8 + g;
        const uint8_t* xr = st + row * St::kRowBytes;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 xv = *reinterpret_cast<const float4*>(xr + bf16w_unit(row, (j / 2) * 8 + 2 * q + (j % 2)) * 16);
          if constexpr (OPS == MmaOperands::Bf16W_Bf16X)
            mma_bf16(r0w[2 * j], r1w[2 * j], r0w[2 * j + 1], r1w[2 * j + 1], bf16x2(xv.x, xv.y), bf16x2(xv.z, xv.w), acc[t]);
          else
            mma_bf16_split3(r0w[2 * j], r1w[2 * j], r0w[2 * j + 1], r1w[2 * j + 1], xv.x, xv.y, xv.z, xv.w, acc[t]);
        }
      }
      return;
    }
    const float ws = wsr[c];
    if constexpr (OPS == MmaOperands::Fp8W_Fp8X) {
      const float* sc = reinterpret_cast<const float*>(st + St::kXBytes);
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (t >= groups) break;
        const int row = t * 8 + g;
        const uint8_t* xr = st + row * St::kRowBytes;
        const uint4 xa = *reinterpret_cast<const uint4*>(xr + fp8x_unit(row, q) * 16);
        const uint4 xb = *reinterpret_cast<const uint4*>(xr + fp8x_unit(row, 4 + q) * 16);
        const uint32_t xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        chunk_fp8x(r0w, r1w, xw, sc[t * 8 + 2 * q], sc[t * 8 + 2 * q + 1], ws, acc[t]);
      }
    } else {
      uint32_t a0[8], a1[8], a2[8], a3[8];
      fp8_chunk_as_bf16(r0w, r1w, a0, a1, a2, a3);
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (t >= groups) break;
        const int row = t * 8 + g;
        const uint8_t* xr = st + row * St::kRowBytes;
        auto xin = [&](int j) {
          return *reinterpret_cast<const float4*>(xr + split_unit(row, (j / 4) * 16 + 4 * q + (j % 4)) * 16);
        };
        chunk_fp8w_fp32x<OPS>(a0, a1, a2, a3, xin, ws, acc[t]);
      }
    }
  };

  // Weights two chunks ahead in registers (static ring indices: the loop is unrolled by 2),
  // inputs one chunk ahead in shared memory.
  uint4 ring[2][4];
  if (active) {
    load(ring[0], 0);
    if (nc > 1) load(ring[1], 1);
  }
  stage(0, 0);
  for (int cb = 0; cb < nc; cb += 2) {
#pragma unroll
    for (int d = 0; d < 2; ++d) {
      const int c = cb + d;
      if (c < nc) {
        if (c + 1 < nc) {
          stage(c + 1, d ^ 1);
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();
        if (active) {
          const uint4 w[4] = {ring[d][0], ring[d][1], ring[d][2], ring[d][3]};
          if (c + 2 < nc) load(ring[d], c + 2);
          multiply(w, c, smem + d * St::kBytes);
          if (c + 1 == range_end) end_range();
        }
        __syncthreads();  // buffer d is staged again two chunks on
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    if (t >= groups) break;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float s = done[row_tile_slot(warp, t, i, lane)];
      v[i] = a.round ? bf16_round(s) : s;
    }
    write_outputs(a, v, tok0 + t * 8 + 2 * q, row0, row1);
  }
}

template <MmaOperands OPS>
void allow_rows_smem() {
  KILN_CUDA_CHECK(cudaFuncSetAttribute(mma_linear_rows_kernel<OPS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       RowStage<OPS>::kSmem));
}

template <MmaOperands OPS>
void launch_rows(int M, int64_t n, const KernelArgs& k, cudaStream_t st) {
  constexpr int smem = RowStage<OPS>::kSmem;
  const dim3 grid(static_cast<unsigned>((M + kRowTileTokens - 1) / kRowTileTokens),
                  static_cast<unsigned>((n + 16 * kRowTileWarps - 1) / (16 * kRowTileWarps)));
  launch_kernel(mma_linear_rows_kernel<OPS>, grid, kRowTileWarps * 32, smem, st, k);
}

template <MmaOperands OPS>
void launch_ops(int tg, dim3 grid, dim3 block, const KernelArgs& k, cudaStream_t st) {
  switch (tg) {
    case 1: launch_kernel(mma_linear_kernel<OPS, 1>, grid, block, 0, st, k); break;
    case 2: launch_kernel(mma_linear_kernel<OPS, 2>, grid, block, 0, st, k); break;
    case 4: launch_kernel(mma_linear_kernel<OPS, 4>, grid, block, 0, st, k); break;
    default: launch_kernel(mma_linear_kernel<OPS, 8>, grid, block, 0, st, k); break;
  }
}

}  // namespace

bool mma_supported(SchemeKind scheme, int64_t n, int64_t k, int block_n, int block_k, LinearInput input, MmaOperands* ops) {
  if (n < 1 || n > int64_t{65535} * 16 || k < 1 || k >= (int64_t{1} << 30)) return false;
  const bool bf16_input = input == LinearInput::Bf16;
  if (scheme == SchemeKind::BF16) {
    if (k % 64 != 0) return false;
    *ops = bf16_input ? MmaOperands::Bf16W_Bf16X : MmaOperands::Bf16W_SplitX;
    return true;
  }
  if (scheme == SchemeKind::FP8Block) {
    if (block_k != 128 || block_n < 16 || block_n % 16 != 0 || k % 128 != 0) return false;
    *ops = input == LinearInput::Fp8Block ? MmaOperands::Fp8W_Fp8X
           : bf16_input                   ? MmaOperands::Fp8W_Bf16X
                                          : MmaOperands::Fp8W_SplitX;
    return true;
  }
  return false;
}

void mma_allow_row_tiles() {
  static OncePerDevice once;
  once([] {
    allow_rows_smem<MmaOperands::Fp8W_Fp8X>();
    allow_rows_smem<MmaOperands::Fp8W_Bf16X>();
    allow_rows_smem<MmaOperands::Fp8W_SplitX>();
    allow_rows_smem<MmaOperands::Bf16W_Bf16X>();
    allow_rows_smem<MmaOperands::Bf16W_SplitX>();
  });
}

MmaPlan mma_plan(MmaOperands ops, int64_t n, int64_t k, int sms, bool round_bf16) {
  MmaPlan p;
  p.ops = ops;
  p.round_bf16 = round_bf16;
  const int64_t tiles = (n + 15) / 16, chunks = k / (mma_bf16_weight(ops) ? 64 : 128);
  const int64_t want = int64_t{16} * std::max(sms, 1);
  while (p.kwarps < kMaxKWarps && tiles * p.kwarps < want && chunks >= 4 * p.kwarps) p.kwarps *= 2;
  const int64_t row_tiles = (n + 16 * kRowTileWarps - 1) / (16 * kRowTileWarps);
  p.row_tile_min_rows = row_tiles >= int64_t{2} * std::max(sms, 1) ? kMmaWideRowTileMinRows : kMmaRowTileMinRows;
  return p;
}

std::string mma_describe(const MmaPlan& p) {
  const char* what = mma_bf16_weight(p.ops)           ? "bf16 w x bf16"
                     : p.ops == MmaOperands::Fp8W_Fp8X ? "e4m3 w x e4m3 act_quant"
                                                       : "e4m3 w (as bf16) x bf16";
  const bool split = p.ops == MmaOperands::Bf16W_SplitX || p.ops == MmaOperands::Fp8W_SplitX;
  return fmt::format("mma.sync {}{} kwarps={}{} row tiles from {} rows", what, split ? " x3 terms" : "", p.kwarps,
                     p.round_bf16 ? " bf16 out" : "", p.row_tile_min_rows);
}

void launch_mma_linear(const MmaPlan& plan, const MmaArgs& a, cudaStream_t stream) {
  const LinearParams& p = *a.p;
  if (a.M < 1 || !(a.group_rows == p.n || (a.group_rows > 0 && a.group_rows % 16 == 0)))
    fail(ErrorKind::Usage, "mma linear: M = {} or group rows {} out of range", a.M, a.group_rows);
  KernelArgs k{};
  k.w = static_cast<const uint8_t*>(p.w);
  k.row_bytes = int64_t{p.kc} * 16;
  k.ws = static_cast<const float*>(p.scale);
  k.ws_ld = p.scale_ld;
  k.block_n = p.block_n;
  k.n = static_cast<int>(p.n);
  k.k = static_cast<int>(a.k);
  k.x = a.x;
  k.ldx = a.ldx;
  k.xq = a.xq;
  k.xs = a.xs;
  k.xs_ld = a.xs_ld;
  k.group_rows = a.group_rows;
  k.x_group_stride = a.x_group_stride;
  k.M = a.M;
  k.y = a.y;
  k.ldy = a.ldy;
  k.round = plan.round_bf16;
  k.kwarps = plan.kwarps;
  // Many tokens: the row-tile kernel (the same bits), when its 128-row tiles stay inside
  // one group of rows.
  if (a.M >= plan.row_tile_min_rows && (a.group_rows == p.n || a.group_rows % (16 * kRowTileWarps) == 0)) {
    switch (plan.ops) {
      case MmaOperands::Fp8W_Fp8X: launch_rows<MmaOperands::Fp8W_Fp8X>(a.M, p.n, k, stream); break;
      case MmaOperands::Fp8W_Bf16X: launch_rows<MmaOperands::Fp8W_Bf16X>(a.M, p.n, k, stream); break;
      case MmaOperands::Fp8W_SplitX: launch_rows<MmaOperands::Fp8W_SplitX>(a.M, p.n, k, stream); break;
      case MmaOperands::Bf16W_Bf16X: launch_rows<MmaOperands::Bf16W_Bf16X>(a.M, p.n, k, stream); break;
      case MmaOperands::Bf16W_SplitX: launch_rows<MmaOperands::Bf16W_SplitX>(a.M, p.n, k, stream); break;
    }
    return;
  }
  const int tg = a.M <= 8 ? 1 : a.M <= 16 ? 2 : a.M <= 32 ? 4 : 8;
  const dim3 grid(static_cast<unsigned>((a.M + tg * 8 - 1) / (tg * 8)), static_cast<unsigned>((p.n + 15) / 16));
  const dim3 block(static_cast<unsigned>(plan.kwarps * 32));
  switch (plan.ops) {
    case MmaOperands::Bf16W_SplitX: launch_ops<MmaOperands::Bf16W_SplitX>(tg, grid, block, k, stream); break;
    case MmaOperands::Fp8W_SplitX: launch_ops<MmaOperands::Fp8W_SplitX>(tg, grid, block, k, stream); break;
    case MmaOperands::Fp8W_Fp8X: launch_ops<MmaOperands::Fp8W_Fp8X>(tg, grid, block, k, stream); break;
    case MmaOperands::Bf16W_Bf16X: launch_ops<MmaOperands::Bf16W_Bf16X>(tg, grid, block, k, stream); break;
    case MmaOperands::Fp8W_Bf16X: launch_ops<MmaOperands::Fp8W_Bf16X>(tg, grid, block, k, stream); break;
  }
}

}  // namespace kiln::ops::cuda::detail
