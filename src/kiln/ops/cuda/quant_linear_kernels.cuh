// GEMV / small-GEMM kernels for every weight scheme (decode sizes, M <= 64); included
// once per scheme by quant_linear_<scheme>.cu, which instantiate them.
//
// Mapping: a block of 256 threads covers 256 / lk row groups of RW rows; the lk threads
// of a group walk the row's 16-byte chunks c = kl, kl + lk, ... (two chunks per thread
// in flight for each of its RW rows), dequantize each chunk in registers and multiply it
// with the MT token rows of x, then the group sums its lanes (shuffles, and shared
// memory when lk > 32). Weights are streamed once (ld.global.nc, no L1 allocation); x is
// read through L1, where the row groups of a block share it.
//
// Dequantization in registers, all exact (see the Codec comment below); each group of 8
// products is summed in fp32, then multiplied by its scale and added to the fp32
// accumulator.
#pragma once

#include <cstdint>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/quant_linear_detail.h"

namespace kiln::ops::cuda::detail {
namespace kernels {

__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word(const uint4& q, int i) {
  return i == 0 ? q.x : i == 1 ? q.y : i == 2 ? q.z : q.w;
}

// The two bf16 halves of a word as floats: a shift and a mask, no conversion instruction
// (the fp16 -> fp32 conversions of an earlier version capped the 4- and 8-bit kernels at
// about 9.5 elements per clock per multiprocessor on an H100).
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

// e4m3fn scale byte -> float (exact; 0x7F/0xFF = NaN), as kiln's e4m3_to_f32.
__device__ __forceinline__ float e4m3_scale(uint32_t v) {
  const uint32_t sign = (v & 0x80u) << 24, exp = (v >> 3) & 0xFu, man = v & 0x7u;
  float mag;
  if ((v & 0x7Fu) == 0x7Fu) {
    mag = __int_as_float(0x7FC00000);
  } else if (exp == 0) {
    mag = static_cast<float>(man) * 0x1p-9f;
  } else {
    mag = __int_as_float(static_cast<int>(((exp + 120u) << 23) | (man << 20)));
  }
  return __int_as_float(__float_as_int(mag) | static_cast<int>(sign));
}

// E8M0 byte -> 2^(v - 127) (v = 0: 2^-127, v = 0xFF: NaN), as kiln's e8m0_to_f32.
__device__ __forceinline__ float e8m0_scale(uint32_t v) {
  if (v == 0xFFu) return __int_as_float(0x7FC00000);
  if (v == 0) return 0x1p-127f;
  return __int_as_float(static_cast<int>(v << 23));
}

// ---- Per-scheme chunk decoding. decode8(q, j, w) writes the 8 elements j*8 .. j*8+7 of the
// chunk as "unit" values (the integer u - z for int4, the element itself otherwise); the
// weight is unit * scale (scale per group of 8). Every step is exact: e4m3 and e2m1 bits
// are placed in the low exponent / high mantissa bits of a bf16 (so the fp32 read is the
// value times 2^-120 or 2^-126, denormal for the smallest codes), then multiplied back by
// that power of two in fp32; int4 is 128 + u in bf16 minus 128 + z in fp32.

template <SchemeKind S>
struct Codec;

template <>
struct Codec<SchemeKind::BF16> {
  static constexpr int E = 8;
  __device__ static void decode8(const uint4& q, int, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = word(q, i);
      w[2 * i] = bf16_lo(v);
      w[2 * i + 1] = bf16_hi(v);
    }
  }
};

template <>
struct Codec<SchemeKind::FP8Block> {
  static constexpr int E = 16;
  __device__ static void decode8(const uint4& q, int j, float* w) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t v = word(q, 2 * j + i);
      const uint32_t h02 = ((v << 4) & 0x07F007F0u) | ((v << 8) & 0x80008000u);  // bytes 0 and 2
      const uint32_t h13 = ((v >> 4) & 0x07F007F0u) | (v & 0x80008000u);         // bytes 1 and 3
      w[4 * i + 0] = bf16_lo(h02) * 0x1p120f;
      w[4 * i + 1] = bf16_lo(h13) * 0x1p120f;
      w[4 * i + 2] = bf16_hi(h02) * 0x1p120f;
      w[4 * i + 3] = bf16_hi(h13) * 0x1p120f;
    }
  }
};

// e2m1 nibbles of one word -> 8 values: nibble p and p + 4 share a bf16 pair, eem at bits
// 6-8 of each half, the sign at bit 15.
__device__ __forceinline__ void decode_e2m1_word(uint32_t v, float* w) {
  const uint32_t m = 0x01C001C0u, s = 0x80008000u;
  const uint32_t h0 = ((v << 6) & m) | ((v << 12) & s);
  const uint32_t h1 = ((v << 2) & m) | ((v << 8) & s);
  const uint32_t h2 = ((v >> 2) & m) | ((v << 4) & s);
  const uint32_t h3 = ((v >> 6) & m) | (v & s);
  w[0] = bf16_lo(h0) * 0x1p126f, w[4] = bf16_hi(h0) * 0x1p126f;
  w[1] = bf16_lo(h1) * 0x1p126f, w[5] = bf16_hi(h1) * 0x1p126f;
  w[2] = bf16_lo(h2) * 0x1p126f, w[6] = bf16_hi(h2) * 0x1p126f;
  w[3] = bf16_lo(h3) * 0x1p126f, w[7] = bf16_hi(h3) * 0x1p126f;
}

template <>
struct Codec<SchemeKind::MXFP4> {
  static constexpr int E = 32;
  __device__ static void decode8(const uint4& q, int j, float* w) { decode_e2m1_word(word(q, j), w); }
};

template <>
struct Codec<SchemeKind::NVFP4> {
  static constexpr int E = 32;
  __device__ static void decode8(const uint4& q, int j, float* w) { decode_e2m1_word(word(q, j), w); }
};

// int4: 128 + u is exact in bf16 (u < 16), minus 128 + z exactly in fp32.
template <>
struct Codec<SchemeKind::Int4Group> {
  static constexpr int E = 32;
  __device__ static void decode8(const uint4& q, int j, float zero, float* w) {
    const uint32_t v = word(q, j);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const uint32_t h = ((v >> (4 * p)) & 0x000F000Fu) | 0x43004300u;
      w[p] = bf16_lo(h) - zero;
      w[p + 4] = bf16_hi(h) - zero;
    }
  }
};

// Per-chunk scales of one row: one float per group of 8 elements (E/8 of them).
template <SchemeKind S>
struct ChunkScales {
  float s[Codec<S>::E / 8 > 0 ? Codec<S>::E / 8 : 1];
  float zero;  // int4: 128 + zero point
};

template <SchemeKind S>
__device__ __forceinline__ void load_scales(const LinearParams& p, int64_t row, int64_t srow, int c,
                                            ChunkScales<S>& out) {
  constexpr int G = Codec<S>::E / 8;
  if constexpr (S == SchemeKind::FP8Block) {
    const float s = __ldg(static_cast<const float*>(p.scale) + srow + (c >> p.grp_shift));
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
  } else if constexpr (S == SchemeKind::Int4Group) {
    const int64_t i = row * p.scale_ld + (c >> p.grp_shift);
    const float s = __ldg(static_cast<const float*>(p.scale) + i);
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
    out.zero = 128.0f + (p.zp ? static_cast<float>(__ldg(p.zp + i)) : 8.0f);
  } else if constexpr (S == SchemeKind::MXFP4) {
    const float s = e8m0_scale(__ldg(static_cast<const uint8_t*>(p.scale) + row * p.kc + c));
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
  } else if constexpr (S == SchemeKind::NVFP4) {
    const uint16_t two = __ldg(reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(p.scale) + row * 2 * p.kc) + c);
    const float s0 = e4m3_scale(two & 0xFFu), s1 = e4m3_scale(two >> 8);
    out.s[0] = s0, out.s[1] = s0, out.s[2] = s1, out.s[3] = s1;
  } else {
    (void)p, (void)row, (void)srow, (void)c, (void)out;
  }
}

// The body every linear kernel runs: rows [row_lo, row_end) of W (absolute row numbers,
// so scale blocks are found for any grouping; y columns are the same absolute numbers)
// times the token rows m0 .. min(M, m0 + MT) - 1 of x (x, y already offset to the group
// / pair), the row block blockIdx.x. The plain kernel passes row_lo = 0, row_end = n (its
// code is then the kernel's before grouping existed, statement for statement); the
// grouped one a group's rows; the indexed one an expert's params read from device
// memory. A block either runs this whole or not at all (it holds __syncthreads).
template <SchemeKind S, int MT, int RW>
__device__ __forceinline__ void linear_rows(const LinearParams& p, const int lk_log2, const float* __restrict__ x,
                                            const int64_t ldx, int M, float* __restrict__ y, const int64_t ldy,
                                            const int m0, const int64_t row_lo, const int64_t row_end) {
  using C = Codec<S>;
  constexpr int E = C::E, G = E / 8;
  const int lk = 1 << lk_log2;
  const int kl = threadIdx.x & (lk - 1);
  const int group = threadIdx.x >> lk_log2;
  const int64_t row0 = row_lo + (static_cast<int64_t>(blockIdx.x) * (kThreads >> lk_log2) + group) * RW;
  x += m0 * ldx;
  y += m0 * ldy;
  M = min(M - m0, MT);

  int64_t rows[RW], srow[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    rows[r] = min(row0 + r, row_end - 1);  // rows past the end load the last row and are not stored
    srow[r] = (rows[r] / p.block_n) * p.scale_ld;
  }
  const uint8_t* wbase = static_cast<const uint8_t*>(p.w);

  float acc[MT][RW];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;

  // One-deep software pipeline: the next chunk's weights and scales are in flight while
  // this chunk is dequantized and multiplied.
  uint4 q[RW];
  ChunkScales<S> sc[RW];
  int c = kl;
  if (c < p.kc) {
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      q[r] = load_stream(wbase + (rows[r] * p.kc + c) * 16);
      load_scales<S>(p, rows[r], srow[r], c, sc[r]);
    }
  }
  for (; c < p.kc; c += lk) {
    uint4 qn[RW];
    ChunkScales<S> sn[RW];
    const int cn = c + lk;
    if (cn < p.kc) {
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        qn[r] = load_stream(wbase + (rows[r] * p.kc + cn) * 16);
        load_scales<S>(p, rows[r], srow[r], cn, sn[r]);
      }
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      float w[RW][8];
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        if constexpr (S == SchemeKind::Int4Group)
          C::decode8(q[r], j, sc[r].zero, w[r]);
        else
          C::decode8(q[r], j, w[r]);
      }
      const float* xc = x + static_cast<int64_t>(c) * E + j * 8;
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m < M) {
          const float4 a = __ldg(reinterpret_cast<const float4*>(xc + m * ldx));
          const float4 b = __ldg(reinterpret_cast<const float4*>(xc + m * ldx + 4));
#pragma unroll
          for (int r = 0; r < RW; ++r) {
            float t = a.x * w[r][0];
            t = fmaf(a.y, w[r][1], t);
            t = fmaf(a.z, w[r][2], t);
            t = fmaf(a.w, w[r][3], t);
            t = fmaf(b.x, w[r][4], t);
            t = fmaf(b.y, w[r][5], t);
            t = fmaf(b.z, w[r][6], t);
            t = fmaf(b.w, w[r][7], t);
            if constexpr (S == SchemeKind::BF16)
              acc[m][r] += t;
            else
              acc[m][r] = fmaf(t, sc[r].s[j], acc[m][r]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      q[r] = qn[r];
      sc[r] = sn[r];
    }
  }

  // Sum the lk lanes of each row group.
  const int width = lk < 32 ? lk : 32;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r)
      for (int o = width >> 1; o > 0; o >>= 1) acc[m][r] += __shfl_xor_sync(0xFFFFFFFFu, acc[m][r], o);

  if (lk > 32) {
    __shared__ float part[kThreads / 32][MT * RW];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int r = 0; r < RW; ++r) part[warp][m * RW + r] = acc[m][r];
    }
    __syncthreads();
    if (kl != 0) return;
    const int w0 = warp, nw = lk >> 5;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        float v = part[w0][m * RW + r];
        for (int i = 1; i < nw; ++i) v += part[w0 + i][m * RW + r];
        acc[m][r] = v;
      }
  } else if (kl != 0) {
    return;
  }

#pragma unroll
  for (int r = 0; r < RW; ++r) {
    if (row0 + r >= row_end) break;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < M) {
        float v = acc[m][r];
        if constexpr (S == SchemeKind::NVFP4) v *= p.global;
        y[m * ldy + row0 + r] = v;
      }
    }
  }
}

// Token tile blockIdx.y. Grouped: group g.first + blockIdx.z, rows [g * g.rows,
// (g + 1) * g.rows), x offset by blockIdx.z * g.x_stride (x points at group g.first's
// slice). The plain product is its own instantiation with the bounds of the original
// kernel (0, p.n from the parameter bank): a runtime row range cost it up to 14 more
// registers per thread (ptxas -v), i.e. occupancy, on the path every other layer takes.
template <SchemeKind S, int MT, int RW, bool Grouped>
__global__ void __launch_bounds__(kThreads) linear_kernel(const LinearParams p, const int lk_log2,
                                                          const float* __restrict__ x, const int64_t ldx, const int M,
                                                          float* __restrict__ y, const int64_t ldy, const RowGroups g) {
  await_previous_grid();
  if constexpr (Grouped) {
    const int64_t row_lo = (g.first + static_cast<int64_t>(blockIdx.z)) * g.rows;
    linear_rows<S, MT, RW>(p, lk_log2, x + static_cast<int64_t>(blockIdx.z) * g.x_stride, ldx, M, y, ldy,
                           blockIdx.y * MT, row_lo, row_lo + g.rows);
  } else {
    (void)g;
    linear_rows<S, MT, RW>(p, lk_log2, x, ldx, M, y, ldy, blockIdx.y * MT, 0, p.n);
  }
}

// One block row-range of pair blockIdx.z: e = expert[pair]; the launch's scheme table
// holds a null weight for experts of other schemes, and ids outside [0, count) name
// nothing: such blocks return before touching y. Otherwise exactly linear_kernel's M = 1
// product of expert e on x row pair / x_div into y row pair.
template <SchemeKind S, int RW>
__global__ void __launch_bounds__(kThreads) linear_indexed_kernel(const LinearParams* __restrict__ table, const int count,
                                                                  const int lk_log2, const float* __restrict__ x,
                                                                  const int64_t ldx, const int x_div,
                                                                  const int32_t* __restrict__ expert,
                                                                  float* __restrict__ y, const int64_t ldy) {
  await_previous_grid();
  const int pair = blockIdx.z;
  const int e = __ldg(expert + pair);
  if (e < 0 || e >= count) return;
  const LinearParams p = table[e];
  if (p.w == nullptr) return;
  linear_rows<S, 1, RW>(p, lk_log2, x + static_cast<int64_t>(pair / x_div) * ldx, ldx, 1,
                        y + static_cast<int64_t>(pair) * ldy, ldy, 0, 0, p.n);
}

template <SchemeKind S, int MT, int RW>
void launch(const LinearParams& p, const LaunchShape& s, const float* x, int64_t ldx, int M, float* y, int64_t ldy,
            const RowGroups& g, cudaStream_t stream) {
  static_assert(Codec<S>::E == chunk_elems(S));
  const dim3 grid(s.blocks, s.mtiles, g.count);
  if (g.count == 1 && g.first == 0 && g.rows == p.n)
    launch_kernel(linear_kernel<S, MT, RW, false>, grid, kThreads, 0, stream, p, s.lk_log2, x, ldx, M, y, ldy, g);
  else
    launch_kernel(linear_kernel<S, MT, RW, true>, grid, kThreads, 0, stream, p, s.lk_log2, x, ldx, M, y, ldy, g);
}

template <SchemeKind S, int RW>
void launch_indexed(const LinearParams* table, int count, const LaunchShape& s, const float* x, int64_t ldx, int x_div,
                    const int32_t* expert, int P, float* y, int64_t ldy, cudaStream_t stream) {
  launch_kernel(linear_indexed_kernel<S, RW>, dim3(s.blocks, 1, static_cast<unsigned>(P)), kThreads, 0, stream,
                table, count, s.lk_log2, x, ldx, x_div, expert, y, ldy);
}

// The (token tile, rows per thread) pairs compiled: MT x RW accumulators stay <= 64.
template <SchemeKind S>
LaunchFn launcher_for(int mt, int rw) {
#define KILN_TILE(MT_, RW_) \
  if (mt == MT_ && rw == RW_) return &launch<S, MT_, RW_>;
  KILN_TILE(1, 1) KILN_TILE(1, 2) KILN_TILE(1, 4)
  KILN_TILE(2, 1) KILN_TILE(2, 2) KILN_TILE(2, 4)
  KILN_TILE(4, 1) KILN_TILE(4, 2) KILN_TILE(4, 4)
  KILN_TILE(8, 1) KILN_TILE(8, 2) KILN_TILE(8, 4)
  KILN_TILE(16, 1) KILN_TILE(16, 2) KILN_TILE(16, 4)
  KILN_TILE(32, 1) KILN_TILE(32, 2)
#undef KILN_TILE
  return nullptr;
}

// The indexed (M = 1) kernel for each rows-per-thread count the one-token plans use.
template <SchemeKind S>
IndexedLaunchFn indexed_launcher_for(int rw) {
  if (rw == 1) return &launch_indexed<S, 1>;
  if (rw == 2) return &launch_indexed<S, 2>;
  if (rw == 4) return &launch_indexed<S, 4>;
  return nullptr;
}

}  // namespace kernels
}  // namespace kiln::ops::cuda::detail
