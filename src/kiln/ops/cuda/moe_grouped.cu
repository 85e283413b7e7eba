// The kernels of GroupedExperts (moe_grouped.h; host side in moe_grouped.cpp): MXFP4 or FP8
// experts x FP8 activations, and NVFP4 or int4 experts x bf16 activations, on mma.sync tensor
// cores, pairs grouped by expert on the device. The FP8-input kernels hold their operands in
// the layout of mma.m16n8k32.e4m3's fragments but, sm_90 having no FP8 mma.sync, convert them
// to f16 (exactly) and run two m16n8k16 f16 mmas per 32-input step (step_to_f16, step_pairs).
//
// Repacked layouts (per expert; the same byte counts as QuantLinear's layouts):
//   MXFP4 weights  [n / 16 tiles][k / 32 steps][32 lanes] x 8 bytes: lane (g, t) = (lane / 4,
//            lane % 4) holds the e2m1 codes of mma's A fragment for rows g and g + 8 of the
//            tile: bytes 0-1 row g, inputs 32 s + 4 t .. + 3; bytes 2-3 row g + 8, the same
//            inputs; bytes 4-5 row g, inputs 32 s + 16 + 4 t .. + 3; bytes 6-7 row g + 8,
//            those (element j of four in nibble j, as on disk);
//   MXFP4 scales   [n / 16][k / 128 blocks][16 rows] 32-bit words: the 4 steps' E8M0 bytes, or,
//            folded, a reference exponent and 4 shifts (ops/grouped_expert_layout.h);
//   FP8 weights    [n / 16][k / 32][32 lanes] x 16 bytes: the e4m3 codes of the A fragment,
//            a0 a1 a2 a3 (rows g, g + 8, g, g + 8; inputs 4t.., 4t.., 16 + 4t.., 16 + 4t..);
//   FP8 scales     fp32 [n / 128][k / 128], as on disk (128 x 128 blocks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/cp_async.cuh"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/mma_sync.cuh"
#include "kiln/ops/cuda/moe_grouped.h"
#include "kiln/ops/cuda/row_tile.cuh"
#include "kiln/ops/cuda/wgmma.cuh"
#include "kiln/ops/grouped_expert_layout.h"

namespace kiln::ops::cuda {
namespace {

constexpr int kSlices = 4;  // warps per CTA, each a contiguous K-slice of the same 16 rows
constexpr int kMaxExperts = GroupedExperts::kMaxExperts;

// Four e2m1 codes (nibbles 0-3 of v) as four e4m3 bytes: magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}
// (times 2^-d with shift d's table, grouped_layout::kMxfp4FoldTable) by a byte permute of a
// table, the sign bit moved from bit 3 of each nibble to bit 7.
__device__ __forceinline__ uint32_t e2m1x4_to_e4m3x4(uint32_t v, uint32_t lo = 0x3C383000u, uint32_t hi = 0x4C484440u) {
  uint32_t r = __byte_perm(lo, hi, v & 0x7777u);
  const uint32_t s = v & 0x8888u;
  r |= ((s & 0x8u) << 4) | ((s & 0x80u) << 8) | ((s & 0x800u) << 12) | ((s & 0x8000u) << 16);
  return r;
}

// The folded decode's tables (grouped_layout::kMxfp4FoldTable), copied into each block's
// shared memory: lanes index them by their rows' shifts.
constexpr int kFoldTables = 16;  // shifts are 4-bit fields; those past kMxfp4FoldMaxShift never occur
__constant__ uint2 kFoldTable[grouped_layout::kMxfp4FoldMaxShift + 1] = {
#define KILN_FOLD_ROW(d) {grouped_layout::kMxfp4FoldTable[d][0], grouped_layout::kMxfp4FoldTable[d][1]}
    KILN_FOLD_ROW(0), KILN_FOLD_ROW(1), KILN_FOLD_ROW(2), KILN_FOLD_ROW(3), KILN_FOLD_ROW(4),
    KILN_FOLD_ROW(5), KILN_FOLD_ROW(6), KILN_FOLD_ROW(7), KILN_FOLD_ROW(8)};
#undef KILN_FOLD_ROW
__device__ __forceinline__ void load_fold_tables(uint2* lut) {
  if (threadIdx.x < kFoldTables)
    lut[threadIdx.x] = kFoldTable[min(static_cast<int>(threadIdx.x), static_cast<int>(grouped_layout::kMxfp4FoldMaxShift))];
}

// 2^(e - 127) (E8M0; e = 0 is the subnormal 2^-127, e = 255 the NaN code).
__device__ __forceinline__ float e8m0_value(uint32_t e) {
  return e == 0 ? __uint_as_float(0x00400000u) : (e == 255 ? __uint_as_float(0x7FC00000u) : __uint_as_float(e << 23));
}

// A lane's results (rows r0, r0 + 8 x pairs qc0, qc1, those below p1) into y.
__device__ __forceinline__ void store_pairs(const float (&v)[4], int r0, int qc0, int qc1, int p1,
                                            const int32_t* __restrict__ order, float* __restrict__ y, int64_t ldy) {
  if (qc0 < p1) {
    float* yr = y + static_cast<int64_t>(order[qc0]) * ldy;
    yr[r0] = v[0];
    yr[r0 + 8] = v[2];
  }
  if (qc1 < p1) {
    float* yr = y + static_cast<int64_t>(order[qc1]) * ldy;
    yr[r0] = v[1];
    yr[r0 + 8] = v[3];
  }
}

// The end of one group of 8 pairs in a grouped kernel: the K-slices' sums added in warp
// order by warp 0, times `mult` (NVFP4's global; 1 is exact), rounded to bf16 and written to
// rows r0 and r0 + 8 of pairs order[qc0] and order[qc1] (those below p1).
__device__ __forceinline__ void write_pairs(float (&part)[kSlices][32][4], const float (&acc)[4], int warp, int lane,
                                            int r0, int qc0, int qc1, int p1, const int32_t* __restrict__ order,
                                            float mult, float* __restrict__ y, int64_t ldy) {
#pragma unroll
  for (int i = 0; i < 4; ++i) part[warp][lane][i] = acc[i];
  __syncthreads();
  if (warp == 0) {
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = part[0][lane][i];
#pragma unroll
      for (int w = 1; w < kSlices; ++w) v[i] = __fadd_rn(v[i], part[w][lane][i]);
      v[i] = bf16_round(__fmul_rn(v[i], mult));
    }
    store_pairs(v, r0, qc0, qc1, p1, order, y, ldy);
  }
  __syncthreads();
}

struct Params {
  const uint8_t* w = nullptr;   // [count] x expert_w bytes
  const uint8_t* sc = nullptr;  // [count] x expert_s bytes
  int64_t expert_w = 0, expert_s = 0;
  int n = 0, k = 0;
};

// One 32-input step's A fragment and the step's weight scale for rows g and g + 8
// (MXFP4: 2^(e - 127) per row and step; FP8: 1, the block scale comes after the block).
template <bool kFp4>
struct WeightStep;

// (raw: the lane's stored bytes of a step; decode: them as the fragment.)
template <>
struct WeightStep<true> {
  static constexpr int kLaneBytes = 8;
  using Raw = uint2;
  __device__ static Raw raw(const uint8_t* tile_w, int s, int lane) {
    return reinterpret_cast<const uint2*>(tile_w)[static_cast<int64_t>(s) * 32 + lane];
  }
  __device__ static void decode(const Raw& v, uint32_t (&a)[4]) {
    a[0] = e2m1x4_to_e4m3x4(v.x & 0xFFFFu);
    a[1] = e2m1x4_to_e4m3x4(v.x >> 16);
    a[2] = e2m1x4_to_e4m3x4(v.y & 0xFFFFu);
    a[3] = e2m1x4_to_e4m3x4(v.y >> 16);
  }
  // Folded scales: rows g and g + 8 with their shifts' tables (t_lo, t_hi).
  __device__ static void decode(const Raw& v, uint2 t_lo, uint2 t_hi, uint32_t (&a)[4]) {
    a[0] = e2m1x4_to_e4m3x4(v.x & 0xFFFFu, t_lo.x, t_lo.y);
    a[1] = e2m1x4_to_e4m3x4(v.x >> 16, t_hi.x, t_hi.y);
    a[2] = e2m1x4_to_e4m3x4(v.y & 0xFFFFu, t_lo.x, t_lo.y);
    a[3] = e2m1x4_to_e4m3x4(v.y >> 16, t_hi.x, t_hi.y);
  }
};

template <>
struct WeightStep<false> {
  static constexpr int kLaneBytes = 16;
  using Raw = uint4;
  __device__ static Raw raw(const uint8_t* tile_w, int s, int lane) {
    return reinterpret_cast<const uint4*>(tile_w)[static_cast<int64_t>(s) * 32 + lane];
  }
  __device__ static void decode(const Raw& v, uint32_t (&a)[4]) { a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w; }
};

// A step's weight fragment as f16 pairs for two m16n8k16 f16 mmas. sm_90 has no FP8
// mma.sync (ptxas would turn each mma_e4m3 into conversions of both operands, two f16 mmas
// from zero and four adds, per group of pairs); the weight is converted once per step here
// and reused by every group. The e4m3 words a[0..3] hold inputs 4t..4t+3 (rows g, g + 8) and
// 16 + 4t.. (rows g, g + 8); an f16 mma's k slots (2t, 2t+1) take a word's first two inputs
// and (2t+8, 2t+9) its last two, the pair inputs the same (step_pairs), so the products
// summed are the step's 32 products.
__device__ __forceinline__ void step_to_f16(const uint32_t (&a)[4], uint32_t (&h)[8]) {
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    e4m3x4_to_f16x4(a[2 * m], h[4 * m + 0], h[4 * m + 2]);
    e4m3x4_to_f16x4(a[2 * m + 1], h[4 * m + 1], h[4 * m + 3]);
  }
}

// One 32-input step of one group of 8 pairs into the block's sum: two f16 mmas on the
// step's weight (step_to_f16) and the pairs' e4m3 inputs x0 (inputs 4t..4t+3 of pair g) and
// x1 (16 + 4t..), converted to f16 (exactly). kStepScale (MXFP4 with per-step scales): the
// step's product from zero, times the rows' scales, fused into the sum (one FFMA per element:
// the scale is a power of two, so the product is exact and only the add rounds). Otherwise
// (FP8, or MXFP4 with the scales folded into the codes: no per-step scale) the tensor core
// accumulates the block's four steps itself, as DeepSeek's FP8 GEMMs do within a 128-input
// block before scaling.
template <bool kStepScale>
__device__ __forceinline__ void step_pairs(const uint32_t (&h)[8], uint32_t x0, uint32_t x1, float w_lo, float w_hi,
                                           float (&blk)[4]) {
  uint32_t b0, b1, b2, b3;
  e4m3x4_to_f16x4(x0, b0, b1);
  e4m3x4_to_f16x4(x1, b2, b3);
  if (kStepScale) {
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_f16(h[0], h[1], h[2], h[3], b0, b1, d);
    mma_f16(h[4], h[5], h[6], h[7], b2, b3, d);
    blk[0] = __fmaf_rn(d[0], w_lo, blk[0]);
    blk[1] = __fmaf_rn(d[1], w_lo, blk[1]);
    blk[2] = __fmaf_rn(d[2], w_hi, blk[2]);
    blk[3] = __fmaf_rn(d[3], w_hi, blk[3]);
  } else {
    mma_f16(h[0], h[1], h[2], h[3], b0, b1, blk);
    mma_f16(h[4], h[5], h[6], h[7], b2, b3, blk);
  }
}

// The end of a 128-input block: its sum times the pairs' (activation x weight) scales, with
// the folded MXFP4 reference 2^(e_ref - 127) of rows g (w_lo) and g + 8 (w_hi) (1 otherwise:
// exact).
__device__ __forceinline__ void end_block(const float (&blk)[4], float sa0, float sa1, float w_lo, float w_hi,
                                          float (&acc)[4]) {
  acc[0] = __fmaf_rn(blk[0], __fmul_rn(sa0, w_lo), acc[0]);
  acc[1] = __fmaf_rn(blk[1], __fmul_rn(sa1, w_lo), acc[1]);
  acc[2] = __fmaf_rn(blk[2], __fmul_rn(sa0, w_hi), acc[2]);
  acc[3] = __fmaf_rn(blk[3], __fmul_rn(sa1, w_hi), acc[3]);
}

// Step j's weight fragment as step_to_f16's f16 pairs: kFold decodes with the lane's two
// rows' shift tables (e_lo, e_hi: the block's folded words of rows g and g + 8), else as stored.
template <bool kFp4, bool kFold>
__device__ __forceinline__ void decode_step(const typename WeightStep<kFp4>::Raw& raw, uint32_t e_lo, uint32_t e_hi, int j,
                                            const uint2* lut, uint32_t (&h)[8]) {
  uint32_t a[4];
  if constexpr (kFold) {
    WeightStep<kFp4>::decode(raw, lut[(e_lo >> (8 + 4 * j)) & 0xFu], lut[(e_hi >> (8 + 4 * j)) & 0xFu], a);
  } else {
    WeightStep<kFp4>::decode(raw, a);
  }
  step_to_f16(a, h);
}

// The pairs sorted by expert: start [E + 1], the active experts in ascending id and their
// count, order [P] (within an expert in no particular order: a pair's result does not
// depend on its place).
__global__ void sort_pairs_kernel(const int32_t* __restrict__ expert, int P, int E, int32_t* __restrict__ order,
                                  int32_t* __restrict__ start, int32_t* __restrict__ active, int32_t* __restrict__ nactive) {
  await_previous_grid();
  __shared__ int cnt[kMaxExperts];
  __shared__ int fill[kMaxExperts];
  for (int i = threadIdx.x; i < E; i += blockDim.x) cnt[i] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int e = expert[i];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  // Thread e (one per expert: blockDim.x == kMaxExperts) takes its start and its place in the
  // active list from block-wide exclusive scans of the counts and of (count > 0), where one
  // thread used to walk the experts (several microseconds of a batch-1 step per call).
  {
    __shared__ int warp_c[32], warp_a[32];
    const int e = static_cast<int>(threadIdx.x), lane = e & 31, warp = e >> 5;
    const int c = e < E ? cnt[e] : 0, a = c > 0 ? 1 : 0;
    int sc = c, sa = a;  // inclusive within the warp
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int tc = __shfl_up_sync(0xFFFFFFFFu, sc, o), ta = __shfl_up_sync(0xFFFFFFFFu, sa, o);
      if (lane >= o) sc += tc, sa += ta;
    }
    if (lane == 31) warp_c[warp] = sc, warp_a[warp] = sa;
    __syncthreads();
    if (warp == 0) {
      int xc = lane < static_cast<int>(blockDim.x >> 5) ? warp_c[lane] : 0;
      int xa = lane < static_cast<int>(blockDim.x >> 5) ? warp_a[lane] : 0;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int tc = __shfl_up_sync(0xFFFFFFFFu, xc, o), ta = __shfl_up_sync(0xFFFFFFFFu, xa, o);
        if (lane >= o) xc += tc, xa += ta;
      }
      warp_c[lane] = xc, warp_a[lane] = xa;
    }
    __syncthreads();
    const int s0 = (warp > 0 ? warp_c[warp - 1] : 0) + sc - c, a0 = (warp > 0 ? warp_a[warp - 1] : 0) + sa - a;
    if (e < E) {
      start[e] = s0;
      fill[e] = s0;
      if (a) active[a0] = e;
    }
    if (e == E - 1) start[E] = s0 + c, *nactive = a0 + a;
    if (E == 0 && e == 0) start[0] = 0, *nactive = 0;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int e = expert[i];
    if (e >= 0 && e < E) order[atomicAdd(&fill[e], 1)] = i;
  }
}

// grid (n / 16, active-expert slots), kSlices warps. kFold: MXFP4 with folded scales.
template <bool kFp4, bool kFold>
__global__ void __launch_bounds__(kSlices * 32) grouped_kernel(Params p, const uint8_t* __restrict__ xq,
                                                               const float* __restrict__ xs, int x_div,
                                                               const int32_t* __restrict__ order,
                                                               const int32_t* __restrict__ start,
                                                               const int32_t* __restrict__ active,
                                                               const int32_t* __restrict__ nactive, float* __restrict__ y,
                                                               int64_t ldy) {
  await_previous_grid();
  if (static_cast<int>(blockIdx.y) >= *nactive) return;
  const int e = active[blockIdx.y];
  const int p0 = start[e], p1 = start[e + 1];
  const int tile = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int S = p.k / 32, NB = p.k / 128;
  const int b0 = warp * NB / kSlices, b1 = (warp + 1) * NB / kSlices;
  using W = WeightStep<kFp4>;
  const uint8_t* wt = p.w + e * p.expert_w + static_cast<int64_t>(tile) * S * 32 * W::kLaneBytes;
  // MXFP4: E8M0 [tile][block][16 rows] x 4 steps; FP8: fp32 [n / 128][k / 128].
  const uint32_t* sc4 = reinterpret_cast<const uint32_t*>(p.sc + e * p.expert_s) + static_cast<int64_t>(tile) * NB * 16;
  const float* sc8 = reinterpret_cast<const float*>(p.sc + e * p.expert_s) + static_cast<int64_t>(tile * 16 / 128) * NB;
  __shared__ float part[kSlices][32][4];
  __shared__ uint2 lut[kFoldTables];
  if (kFold) {
    load_fold_tables(lut);
    __syncthreads();
  }
  for (int q0 = p0; q0 < p1; q0 += 8) {
    // B column g: pair q0 + g; accumulator columns 2t, 2t + 1: pairs q0 + 2t, q0 + 2t + 1.
    const int qb = q0 + g, qc0 = q0 + 2 * t, qc1 = qc0 + 1;
    const uint8_t* xrow = qb < p1 ? xq + static_cast<int64_t>(order[qb] / x_div) * p.k : nullptr;
    const float* s0 = qc0 < p1 ? xs + static_cast<int64_t>(order[qc0] / x_div) * NB : nullptr;
    const float* s1 = qc1 < p1 ? xs + static_cast<int64_t>(order[qc1] / x_div) * NB : nullptr;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int b = b0; b < b1; ++b) {
      const uint32_t e_lo = kFp4 ? sc4[b * 16 + g] : 0u, e_hi = kFp4 ? sc4[b * 16 + g + 8] : 0u;
      float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int s = b * 4 + j;
        uint32_t h[8];
        decode_step<kFp4, kFold>(W::raw(wt, s, lane), e_lo, e_hi, j, lut, h);
        uint32_t x0 = 0, x1 = 0;
        if (xrow) {
          x0 = *reinterpret_cast<const uint32_t*>(xrow + s * 32 + 4 * t);
          x1 = *reinterpret_cast<const uint32_t*>(xrow + s * 32 + 16 + 4 * t);
        }
        constexpr bool kStep = kFp4 && !kFold;
        const float w_lo = kStep ? e8m0_value((e_lo >> (8 * j)) & 0xFFu) : 1.0f;
        const float w_hi = kStep ? e8m0_value((e_hi >> (8 * j)) & 0xFFu) : 1.0f;
        step_pairs<kStep>(h, x0, x1, w_lo, w_hi, blk);
      }
      // FP8: the weight's 128 x 128 block scale joins the activation scale; folded MXFP4: the
      // rows' reference exponents.
      const float ws = kFp4 ? 1.0f : sc8[b];
      const float sa0 = s0 ? __fmul_rn(s0[b], ws) : 0.0f, sa1 = s1 ? __fmul_rn(s1[b], ws) : 0.0f;
      const float r_lo = kFold ? e8m0_value(e_lo & 0xFFu) : 1.0f, r_hi = kFold ? e8m0_value(e_hi & 0xFFu) : 1.0f;
      end_block(blk, sa0, sa1, r_lo, r_hi, acc);
    }
    write_pairs(part, acc, warp, lane, tile * 16 + g, qc0, qc1, p1, order, 1.0f, y, ldy);
  }
}

// ---- Many pairs per expert (a prompt): the row-tile form of grouped_kernel ----
//
// grid (n / 128 row tiles, active-expert slots), 8 warps; warp w multiplies the 16-row tile
// 8 x + w by its expert's pairs, 64 at a time (8 groups), over all inputs. A 128-input
// block of the 64 pairs' e4m3 inputs and their scales is staged in shared memory by
// cp.async, several blocks ahead with the warps' weight steps (RowStages), so the 8 warps
// read one copy of the inputs, and each weight step is loaded and decoded once per 64 pairs.
// The inputs are walked in grouped_kernel's kSlices ranges, in order; a finished range's sum
// waits in a lane-private shared slot and is added to the earlier ones as the range ends,
// the order in which write_pairs adds the warps' sums. Every pair's output is therefore the
// same bits as grouped_kernel's.
constexpr int kRoundPairs = 64;

// The 16-byte unit where unit u of a staged pair row lives: XOR-swizzled by the row, so the
// 8 rows a warp's 4-byte reads touch (pairs g = 0..7) fall in distinct banks.
__device__ __forceinline__ int pair_unit(int row, int u) { return u ^ (row & 7); }

// The row-tile kernel's pipeline: a stage holds one 128-input block, the round's 64 pair
// inputs (e4m3 [64][128], pair_unit-swizzled) and their scales, and each warp's weight
// steps and scale words, all copied by cp.async kStages - 1 blocks ahead of the multiply.
// The weights stream from device memory once per expert (a prompt's experts have a few
// dozen pairs each). Measured on an H200: FP8 experts gained 7% over one block ahead; the
// MXFP4 kernel did not change, being bound by issuing its instructions (docs/performance.md).
// kWg: the warpgroup form (below), which also holds the block's inputs as f16 for wgmma.
template <bool kFp4, bool kWg>
struct RowStages {
  static constexpr int kStages = kWg ? (kFp4 ? 3 : 2) : (kFp4 ? 4 : 3);  // two blocks per SM fit
  static constexpr int kWarpW = 4 * 32 * WeightStep<kFp4>::kLaneBytes;  // a tile's 4 steps: 1 or 2 KB
  static constexpr int kWarpS = 64;  // MXFP4: the tile's 16 scale words; FP8: the block scale
  static constexpr int kX = kRoundPairs * 128;
  static constexpr int kXs = kRoundPairs * 4;
  static constexpr int kW = kX + kXs;                          // offset of the warps' weights
  static constexpr int kS = kW + kRowTileWarps * kWarpW;       // offset of their scale words
  static constexpr int kBytes = kS + kRowTileWarps * kWarpS;
  static constexpr int kHalf = kWg ? kRoundPairs * 128 * 2 : 0;
  static constexpr int kSmem = kStages * kBytes + kHalf + kRowTileDoneFloats * 4 + kRoundPairs * 4;
};

// The warpgroup form's B operand: a block's 64 pair inputs as f16 in wgmma's 8 x 8 core
// matrices, [16 k chunks][8 pair chunks][8 pairs][8 k] (wgmma.cuh), the k slots of each
// 16-input half-step permuted as step_to_f16 permutes the weight's: slots (2t, 2t + 1) hold
// inputs 4t, 4t + 1 and slots (2t + 8, 2t + 9) inputs 4t + 2, 4t + 3. The pair inputs' unit u
// (16 e4m3 inputs) becomes k chunks 2u and 2u + 1.
constexpr uint32_t kHalfKStride = 8 * 128;  // bytes between k chunks
constexpr uint32_t kHalfNStride = 128;      // between pair chunks
__device__ __forceinline__ void stage_half_inputs(const uint8_t* st, uint8_t* bh, int tid) {
  for (int i = tid; i < kRoundPairs * 8; i += kRowTileWarps * 32) {
    const int r8 = i & 7, nc = (i >> 3) & 7, u = i >> 6, row = nc * 8 + r8;
    const uint4 v = *reinterpret_cast<const uint4*>(st + row * 128 + pair_unit(row, u) * 16);
    uint4 lo, hi;
    e4m3x4_to_f16x4(v.x, lo.x, hi.x);
    e4m3x4_to_f16x4(v.y, lo.y, hi.y);
    e4m3x4_to_f16x4(v.z, lo.z, hi.z);
    e4m3x4_to_f16x4(v.w, lo.w, hi.w);
    *reinterpret_cast<uint4*>(bh + (2 * u) * kHalfKStride + nc * kHalfNStride + r8 * 16) = lo;
    *reinterpret_cast<uint4*>(bh + (2 * u + 1) * kHalfKStride + nc * kHalfNStride + r8 * 16) = hi;
  }
}

// kWg (FP8, and MXFP4 with folded scales): each warpgroup of 4 warps multiplies its 64 rows
// by the 64 pairs with wgmma (A, the weight steps, from the warps' registers as before; B, the
// pair inputs, as f16 from shared memory), 8 k16 steps per block chained in one accumulator:
// the same bits as the warps' mma.sync chains (wgmma.cuh), a fraction of the instructions.
template <bool kFp4, bool kFold, bool kWg>
__global__ void __launch_bounds__(kRowTileWarps * 32, 2)
    grouped_rows_kernel(Params p, const uint8_t* __restrict__ xq, const float* __restrict__ xs, int x_div,
                        const int32_t* __restrict__ order, const int32_t* __restrict__ start,
                        const int32_t* __restrict__ active, const int32_t* __restrict__ nactive, float* __restrict__ y,
                        int64_t ldy) {
  await_previous_grid();
  using R = RowStages<kFp4, kWg>;
  using W = WeightStep<kFp4>;
  static_assert(!kWg || kFold || !kFp4, "the warpgroup form has no per-step scales");
  if (static_cast<int>(blockIdx.y) >= *nactive) return;
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* bh = smem + R::kStages * R::kBytes;  // kWg: the block's inputs as f16
  float* done = reinterpret_cast<float*>(bh + R::kHalf);
  int* prow = reinterpret_cast<int*>(done + kRowTileDoneFloats);  // the round's x rows (-1: none)
  const int e = active[blockIdx.y];
  const int p0 = start[e], p1 = start[e + 1];
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int tile = static_cast<int>(blockIdx.x) * kRowTileWarps + warp;
  const bool on = tile * 16 < p.n;
  const int S = p.k / 32, NB = p.k / 128;
  const uint8_t* wt = p.w + e * p.expert_w + static_cast<int64_t>(on ? tile : 0) * S * 32 * W::kLaneBytes;
  const uint32_t* sc4 = reinterpret_cast<const uint32_t*>(p.sc + e * p.expert_s) + static_cast<int64_t>(on ? tile : 0) * NB * 16;
  const float* sc8 = reinterpret_cast<const float*>(p.sc + e * p.expert_s) + static_cast<int64_t>((on ? tile : 0) * 16 / 128) * NB;
  __shared__ uint2 lut[kFoldTables];
  if (kFold) load_fold_tables(lut);  // read after the round's first barrier

  for (int q0 = p0; q0 < p1; q0 += kRoundPairs) {
    const int ng = min(8, (p1 - q0 + 7) / 8);
    __syncthreads();  // the previous round's buffers and rows are used
    if (tid < kRoundPairs) prow[tid] = q0 + tid < p1 ? order[q0 + tid] / x_div : -1;
    __syncthreads();
    // Block b into stage b % kStages (one commit group per call, empty past the last block).
    auto stage = [&](int b) {
      if (b < NB) {
        uint8_t* st = smem + (b % R::kStages) * R::kBytes;
        for (int i = tid; i < kRoundPairs * 8; i += kRowTileWarps * 32) {
          const int row = i >> 3, u = i & 7, xr = prow[row];
          cp_async16(st + row * 128 + pair_unit(row, u) * 16,
                     xr >= 0 ? xq + static_cast<int64_t>(xr) * p.k + static_cast<int64_t>(b) * 128 + u * 16 : xq, xr >= 0);
        }
        if (tid < kRoundPairs) {
          const int xr = prow[tid];
          cp_async4(st + R::kX + tid * 4, xr >= 0 ? xs + static_cast<int64_t>(xr) * NB + b : xs, xr >= 0);
        }
        if (on) {
          // The tile's steps 4b..4b+3 are kWarpW contiguous bytes; its block scale words 64.
          uint8_t* sw = st + R::kW + warp * R::kWarpW;
          const uint8_t* src = wt + static_cast<int64_t>(b) * R::kWarpW;
#pragma unroll
          for (int i = lane; i < R::kWarpW / 16; i += 32) cp_async16(sw + i * 16, src + i * 16, true);
          uint8_t* ss = st + R::kS + warp * R::kWarpS;
          if (kFp4) {
            if (lane < 4) cp_async16(ss + lane * 16, sc4 + static_cast<int64_t>(b) * 16 + lane * 4, true);
          } else if (lane == 0) {
            cp_async4(ss, sc8 + b, true);
          }
        }
      }
      cp_async_commit();
    };
    float acc[kRowTileGroups][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    // Ranges r = [r NB / kSlices, (r + 1) NB / kSlices), some possibly empty, each folded
    // into `done` at its end.
    int range = 0;
    auto fold_ended = [&](int blocks_done) {
      while (range < kSlices && (range + 1) * NB / kSlices == blocks_done) {
        fold_range(done, warp, lane, acc, ng, range == 0);
        ++range;
      }
    };
    if (on) fold_ended(0);
#pragma unroll
    for (int b = 0; b < R::kStages - 1; ++b) stage(b);
    for (int b = 0; b < NB; ++b) {
      cp_async_wait<R::kStages - 2>();
      __syncthreads();  // block b is staged for all; block b - 1's stage is no longer read
      stage(b + R::kStages - 1);
      if constexpr (kWg) {
        stage_half_inputs(smem + (b % R::kStages) * R::kBytes, bh, tid);
        fence_proxy_async_smem();
        __syncthreads();  // bh is written (the previous block's wgmma were waited for)
      }
      if (on) {
        const uint8_t* st = smem + (b % R::kStages) * R::kBytes;
        const typename W::Raw* sw = reinterpret_cast<const typename W::Raw*>(st + R::kW + warp * R::kWarpW);
        const uint32_t* ss = reinterpret_cast<const uint32_t*>(st + R::kS + warp * R::kWarpS);
        const uint32_t e_lo = kFp4 ? ss[g] : 0u, e_hi = kFp4 ? ss[g + 8] : 0u;
        const float ws = kFp4 ? 1.0f : __uint_as_float(ss[0]);
        float blk[8][4];
#pragma unroll
        for (int i = 0; i < 8; ++i) blk[i][0] = blk[i][1] = blk[i][2] = blk[i][3] = 0.0f;
        if constexpr (kWg) {
          float d[32];
          uint32_t h[4][8];
#pragma unroll
          for (int i = 0; i < 32; ++i) d[i] = 0.0f;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            decode_step<kFp4, kFold>(sw[j * 32 + lane], e_lo, e_hi, j, lut, h[j]);
          }
          wgmma_fence();
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            wgmma_m64n64k16_f16(d, h[j][0], h[j][1], h[j][2], h[j][3], wgmma_desc(bh + (2 * j) * 2 * kHalfKStride, kHalfKStride, kHalfNStride));
            wgmma_m64n64k16_f16(d, h[j][4], h[j][5], h[j][6], h[j][7], wgmma_desc(bh + (2 * j + 1) * 2 * kHalfKStride, kHalfKStride, kHalfNStride));
          }
          wgmma_commit_wait(d, h);
#pragma unroll
          for (int i = 0; i < 32; ++i) blk[i / 4][i % 4] = d[i];
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t h[8];
            decode_step<kFp4, kFold>(sw[j * 32 + lane], e_lo, e_hi, j, lut, h);
            constexpr bool kStep = kFp4 && !kFold;
            const float w_lo = kStep ? e8m0_value((e_lo >> (8 * j)) & 0xFFu) : 1.0f;
            const float w_hi = kStep ? e8m0_value((e_hi >> (8 * j)) & 0xFFu) : 1.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              if (i >= ng) break;
              const int row = i * 8 + g;
              const uint8_t* xr = st + row * 128;
              const uint32_t x0 = *reinterpret_cast<const uint32_t*>(xr + pair_unit(row, 2 * j) * 16 + 4 * t);
              const uint32_t x1 = *reinterpret_cast<const uint32_t*>(xr + pair_unit(row, 2 * j + 1) * 16 + 4 * t);
              step_pairs<kStep>(h, x0, x1, w_lo, w_hi, blk[i]);
            }
          }
        }
        const float* sc = reinterpret_cast<const float*>(st + R::kX);
        const float r_lo = kFold ? e8m0_value(e_lo & 0xFFu) : 1.0f, r_hi = kFold ? e8m0_value(e_hi & 0xFFu) : 1.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (i >= ng) break;
          const int c0 = i * 8 + 2 * t;
          const float sa0 = prow[c0] >= 0 ? __fmul_rn(sc[c0], ws) : 0.0f;
          const float sa1 = prow[c0 + 1] >= 0 ? __fmul_rn(sc[c0 + 1], ws) : 0.0f;
          end_block(blk[i], sa0, sa1, r_lo, r_hi, acc[i]);
        }
        fold_ended(b + 1);
      }
    }
    if (on) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (i >= ng) break;
        float v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = bf16_round(__fmul_rn(done[row_tile_slot(warp, i, r, lane)], 1.0f));
        const int qc0 = q0 + i * 8 + 2 * t;
        store_pairs(v, tile * 16 + g, qc0, qc0 + 1, p1, order, y, ldy);
      }
    }
  }
}

// ---- NVFP4 and int4 experts x bf16 activations (the input as it is, three bf16 terms) ----
//
// Repacked weights (per expert): [n / 16 tiles][k / 64 chunks][32 lanes] x 16 bytes; word j of
// a lane's record is the 16-input step 4c + j of mma.m16n8k16's A fragment as 8 nibbles:
// a0 (row g, inputs 2t, 2t + 1), a1 (row g + 8, the same), a2 (row g, 2t + 8, 2t + 9), a3
// (row g + 8, those), two nibbles each, lower input first. NVFP4 nibbles are e2m1 codes;
// int4 nibbles are the stored u (value (u - z) * s, z = 8 without zero points).
// NVFP4 scales: E4M3 bytes [tiles][k / 16 steps][16 rows]; the expert's global multiplier in
// `global`. int4: fp32 scales [tiles][groups][16 rows] and zero points u8 [tiles][groups][16
// rows] (none when the weight is symmetric); a group holds a whole number of steps. x rows
// must be 8-byte aligned (the host stages them otherwise).
struct Bf16Params {
  const uint8_t* w = nullptr;
  const uint8_t* sc = nullptr;
  const uint8_t* zp = nullptr;
  const float* global = nullptr;
  int64_t expert_w = 0, expert_s = 0, expert_z = 0;
  int n = 0, k = 0, group = 16;
};

// An e2m1 code's value: exponent field e > 0 is (1 + m / 2) 2^(e - 1), e = 0 is m / 2.
__device__ __forceinline__ float e2m1_value(uint32_t c) {
  const uint32_t e = (c >> 1) & 3u, m = c & 1u;
  const uint32_t mag = e == 0u ? m * 0x3F000000u : ((e + 126u) << 23) | (m << 22);
  return __uint_as_float(mag | ((c & 8u) << 28));
}

__device__ __forceinline__ float e4m3_value(uint32_t b) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b), __NV_E4M3);
  return __half2float(*reinterpret_cast<const __half*>(&h));
}

// grid (n / 16, active-expert slots), kSlices warps, each a contiguous range of 64-input chunks.
template <bool kNv>
__global__ void __launch_bounds__(kSlices * 32) grouped_bf16_kernel(Bf16Params p, const float* __restrict__ x,
                                                                    int64_t ldx, int x_div,
                                                                    const int32_t* __restrict__ order,
                                                                    const int32_t* __restrict__ start,
                                                                    const int32_t* __restrict__ active,
                                                                    const int32_t* __restrict__ nactive,
                                                                    float* __restrict__ y, int64_t ldy) {
  await_previous_grid();
  if (static_cast<int>(blockIdx.y) >= *nactive) return;
  const int e = active[blockIdx.y];
  const int p0 = start[e], p1 = start[e + 1];
  const int tile = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int C = p.k / 64, steps = p.k / 16, groups = p.k / p.group;
  const int c0 = warp * C / kSlices, c1 = (warp + 1) * C / kSlices;
  const uint4* wt = reinterpret_cast<const uint4*>(p.w + e * p.expert_w) + static_cast<int64_t>(tile) * C * 32;
  const uint8_t* s8 = p.sc + e * p.expert_s + static_cast<int64_t>(tile) * steps * 16;  // NVFP4
  const float* sf = reinterpret_cast<const float*>(p.sc + e * p.expert_s) + static_cast<int64_t>(tile) * groups * 16;
  const uint8_t* zt = kNv || !p.zp ? nullptr : p.zp + e * p.expert_z + static_cast<int64_t>(tile) * groups * 16;
  const float glob = kNv ? p.global[e] : 1.0f;
  __shared__ float part[kSlices][32][4];
  for (int q0 = p0; q0 < p1; q0 += 8) {
    const int qb = q0 + g, qc0 = q0 + 2 * t, qc1 = qc0 + 1;
    const float* xrow = qb < p1 ? x + static_cast<int64_t>(order[qb] / x_div) * ldx : nullptr;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int c = c0; c < c1; ++c) {
      const uint4 wv = wt[static_cast<int64_t>(c) * 32 + lane];
      const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int s = c * 4 + j;
        float s_lo, s_hi, z_lo = 0.0f, z_hi = 0.0f;
        if (kNv) {
          s_lo = e4m3_value(s8[s * 16 + g]);
          s_hi = e4m3_value(s8[s * 16 + g + 8]);
        } else {
          const int gi = s * 16 / p.group;
          s_lo = sf[gi * 16 + g];
          s_hi = sf[gi * 16 + g + 8];
          z_lo = zt ? static_cast<float>(zt[gi * 16 + g]) : 8.0f;
          z_hi = zt ? static_cast<float>(zt[gi * 16 + g + 8]) : 8.0f;
        }
        const uint32_t w = words[j];
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const uint32_t nib = (w >> (4 * i)) & 0xFu;
          // nibbles 2-3 and 6-7 are row g + 8 (a1, a3)
          v[i] = kNv ? e2m1_value(nib) : static_cast<float>(nib) - (((i >> 1) & 1) ? z_hi : z_lo);
        }
        const uint32_t a0 = bf16x2(v[0], v[1]), a1 = bf16x2(v[2], v[3]), a2 = bf16x2(v[4], v[5]),
                       a3 = bf16x2(v[6], v[7]);
        float2 xa = make_float2(0.0f, 0.0f), xb = make_float2(0.0f, 0.0f);
        if (xrow) {
          xa = *reinterpret_cast<const float2*>(xrow + s * 16 + 2 * t);
          xb = *reinterpret_cast<const float2*>(xrow + s * 16 + 8 + 2 * t);
        }
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_bf16_split3(a0, a1, a2, a3, xa.x, xa.y, xb.x, xb.y, d);
        acc[0] = __fmaf_rn(d[0], s_lo, acc[0]);
        acc[1] = __fmaf_rn(d[1], s_lo, acc[1]);
        acc[2] = __fmaf_rn(d[2], s_hi, acc[2]);
        acc[3] = __fmaf_rn(d[3], s_hi, acc[3]);
      }
    }
    write_pairs(part, acc, warp, lane, tile * 16 + g, qc0, qc1, p1, order, glob, y, ldy);
  }
}

}  // namespace

namespace {

// The pairs sorted by expert (sort_pairs_kernel, one block) and where its outputs sit in
// the caller's meta scratch: start [count + 1], active [count], nactive [1].
struct PairOrder {
  int32_t *start, *active, *nactive;
};
PairOrder sort_pairs(const int32_t* expert, int P, int count, int32_t* order, int32_t* meta, cudaStream_t stream) {
  const PairOrder po{meta, meta + count + 1, meta + 2 * count + 1};
  launch_kernel(sort_pairs_kernel, 1, kMaxExperts, 0, stream, expert, P, count, order, po.start, po.active, po.nactive);
  return po;
}

}  // namespace

namespace detail {

void allow_grouped_row_tiles() {
  static OncePerDevice once;
  once([] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(grouped_rows_kernel<true, true, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         RowStages<true, true>::kSmem));
    KILN_CUDA_CHECK(cudaFuncSetAttribute(grouped_rows_kernel<true, false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         RowStages<true, false>::kSmem));
    KILN_CUDA_CHECK(cudaFuncSetAttribute(grouped_rows_kernel<false, false, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         RowStages<false, true>::kSmem));
  });
}

void launch_grouped_experts(bool fp4, bool fold, const uint8_t* w, const uint8_t* sc, int count, int n, int k,
                            const uint8_t* xq, const float* xs, int x_div, const int32_t* expert, int P, float* y,
                            int64_t ldy, int32_t* order, int32_t* meta, cudaStream_t stream) {
  const PairOrder po = sort_pairs(expert, P, count, order, meta, stream);
  Params p;
  p.w = w;
  p.sc = sc;
  p.expert_w = fp4 ? int64_t{n} * k / 2 : int64_t{n} * k;
  p.expert_s = fp4 ? int64_t{n} * k / 32 : int64_t{n} / 128 * (k / 128) * 4;
  p.n = n;
  p.k = k;
  const unsigned slots = static_cast<unsigned>(P < count ? P : count);
  // The kernel of the weights' kind: FP8, MXFP4 with folded scales, MXFP4 per step.
  auto by_kind = [&](auto launch) {
    if (!fp4)
      launch(std::false_type{}, std::false_type{});
    else if (fold)
      launch(std::true_type{}, std::true_type{});
    else
      launch(std::true_type{}, std::false_type{});
  };
  if (P >= GroupedExperts::kRowTilesMinPairsPerExpert * count && n % (16 * kRowTileWarps) == 0) {
    const dim3 rgrid(static_cast<unsigned>(n / (16 * kRowTileWarps)), slots);
    by_kind([&](auto f4, auto fo) {
      constexpr bool kFp4 = decltype(f4)::value, kWg = decltype(fo)::value || !kFp4;  // no per-step scales
      launch_kernel(grouped_rows_kernel<kFp4, decltype(fo)::value, kWg>, rgrid, kRowTileWarps * 32,
                    RowStages<kFp4, kWg>::kSmem, stream, p, xq, xs, x_div, order, po.start, po.active, po.nactive, y,
                    ldy);
    });
    return;
  }
  const dim3 grid(static_cast<unsigned>(n / 16), slots);
  by_kind([&](auto f4, auto fo) {
    launch_kernel(grouped_kernel<decltype(f4)::value, decltype(fo)::value>, grid, kSlices * 32, 0, stream,
                  p, xq, xs, x_div, order, po.start, po.active, po.nactive, y, ldy);
  });
}

void launch_grouped_experts_bf16(bool nvfp4, const uint8_t* w, const uint8_t* sc, const uint8_t* zp, const float* global,
                                 int count, int n, int k, int group, const float* x, int64_t ldx, int x_div,
                                 const int32_t* expert, int P, float* y, int64_t ldy, int32_t* order, int32_t* meta,
                                 cudaStream_t stream) {
  const PairOrder po = sort_pairs(expert, P, count, order, meta, stream);
  Bf16Params p;
  p.w = w;
  p.sc = sc;
  p.zp = zp;
  p.global = global;
  p.expert_w = int64_t{n} * k / 2;
  p.expert_s = nvfp4 ? int64_t{n} * k / 16 : int64_t{n} * (k / group) * 4;
  p.expert_z = nvfp4 ? 0 : int64_t{n} * (k / group);
  p.n = n;
  p.k = k;
  p.group = nvfp4 ? 16 : group;
  const dim3 grid(static_cast<unsigned>(n / 16), static_cast<unsigned>(P < count ? P : count));
  if (nvfp4) {
    launch_kernel(grouped_bf16_kernel<true>, grid, kSlices * 32, 0, stream,
                  p, x, ldx, x_div, order, po.start, po.active, po.nactive, y, ldy);
  } else {
    launch_kernel(grouped_bf16_kernel<false>, grid, kSlices * 32, 0, stream,
                  p, x, ldx, x_div, order, po.start, po.active, po.nactive, y, ldy);
  }
}

}  // namespace detail
}  // namespace kiln::ops::cuda
