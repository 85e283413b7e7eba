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
// Dequantization in registers, all exact:
//  - e4m3 byte -> fp16 by moving its bits (value * 2^-8), e2m1 nibble -> fp16 (value *
//    2^-14), int4 nibble u -> fp16 1024 + u, minus 1024 + zero point;
//  - each group of 8 products is summed in fp32, then multiplied by the unit factor
//    (2^8, 2^14) and the chunk's scale and added to the fp32 accumulator.
#pragma once

#include <cuda_fp16.h>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_detail.h"

namespace kiln::ops::cuda::detail {
namespace kernels {

constexpr int kUnroll = 2;  // chunks per row in flight per thread

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

__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, 4);
  return __half22float2(h);
}

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
// chunk as "unit" values; the true weight is unit * kUnit * scale (scale per group of 8).

template <LinearScheme S>
struct Codec;

template <>
struct Codec<LinearScheme::BF16> {
  static constexpr int E = 8;
  static constexpr float kUnit = 1.0f;
  __device__ static void decode8(const uint4& q, int, float* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = word(q, i);
      w[2 * i] = __uint_as_float(v << 16);
      w[2 * i + 1] = __uint_as_float(v & 0xFFFF0000u);
    }
  }
};

template <>
struct Codec<LinearScheme::FP8Block> {
  static constexpr int E = 16;
  static constexpr float kUnit = 256.0f;  // e4m3 bits placed in an fp16 read 2^-8 of the value
  __device__ static void decode8(const uint4& q, int j, float* w) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t v = word(q, 2 * j + i);
      const uint32_t h02 = ((v << 7) & 0x3F803F80u) | ((v << 8) & 0x80008000u);  // bytes 0 and 2
      const uint32_t h13 = ((v >> 1) & 0x3F803F80u) | (v & 0x80008000u);         // bytes 1 and 3
      const float2 a = half2_bits_to_float2(h02), b = half2_bits_to_float2(h13);
      w[4 * i + 0] = a.x;
      w[4 * i + 1] = b.x;
      w[4 * i + 2] = a.y;
      w[4 * i + 3] = b.y;
    }
  }
};

// e2m1 nibbles of one word -> 8 units (value * 2^-14): nibble p and p + 4 share an fp16 pair.
__device__ __forceinline__ void decode_e2m1_word(uint32_t v, float* w) {
  const uint32_t m = 0x0E000E00u, s = 0x80008000u;
  const uint32_t h0 = ((v << 9) & m) | ((v << 12) & s);
  const uint32_t h1 = ((v << 5) & m) | ((v << 8) & s);
  const uint32_t h2 = ((v << 1) & m) | ((v << 4) & s);
  const uint32_t h3 = ((v >> 3) & m) | (v & s);
  const float2 a = half2_bits_to_float2(h0), b = half2_bits_to_float2(h1);
  const float2 c = half2_bits_to_float2(h2), d = half2_bits_to_float2(h3);
  w[0] = a.x, w[4] = a.y, w[1] = b.x, w[5] = b.y, w[2] = c.x, w[6] = c.y, w[3] = d.x, w[7] = d.y;
}

template <>
struct Codec<LinearScheme::MXFP4> {
  static constexpr int E = 32;
  static constexpr float kUnit = 16384.0f;
  __device__ static void decode8(const uint4& q, int j, float* w) { decode_e2m1_word(word(q, j), w); }
};

template <>
struct Codec<LinearScheme::NVFP4> {
  static constexpr int E = 32;
  static constexpr float kUnit = 16384.0f;
  __device__ static void decode8(const uint4& q, int j, float* w) { decode_e2m1_word(word(q, j), w); }
};

// int4: units are u - z exactly (1024 + u and 1024 + z are exact in fp16).
template <>
struct Codec<LinearScheme::Int4Group> {
  static constexpr int E = 32;
  static constexpr float kUnit = 1.0f;
  __device__ static void decode8(const uint4& q, int j, __half2 zero, float* w) {
    const uint32_t v = word(q, j);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const uint32_t bits = ((v >> (4 * p)) & 0x000F000Fu) | 0x64006400u;
      __half2 h;
      memcpy(&h, &bits, 4);
      const float2 f = __half22float2(__hsub2(h, zero));
      w[p] = f.x;
      w[p + 4] = f.y;
    }
  }
};

// Per-chunk scales of one row: one float per group of 8 elements (E/8 of them).
template <LinearScheme S>
struct ChunkScales {
  float s[Codec<S>::E / 8 > 0 ? Codec<S>::E / 8 : 1];
  __half2 zero;
};

template <LinearScheme S>
__device__ __forceinline__ void load_scales(const LinearParams& p, int64_t row, int64_t srow, int c,
                                            ChunkScales<S>& out) {
  constexpr int G = Codec<S>::E / 8;
  if constexpr (S == LinearScheme::FP8Block) {
    const float s = __ldg(static_cast<const float*>(p.scale) + srow + (c >> p.grp_shift));
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
  } else if constexpr (S == LinearScheme::Int4Group) {
    const int64_t i = row * p.scale_ld + (c >> p.grp_shift);
    const float s = __ldg(static_cast<const float*>(p.scale) + i);
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
    const float z = 1024.0f + (p.zp ? static_cast<float>(__ldg(p.zp + i)) : 8.0f);
    out.zero = __float2half2_rn(z);
  } else if constexpr (S == LinearScheme::MXFP4) {
    const float s = e8m0_scale(__ldg(static_cast<const uint8_t*>(p.scale) + row * p.kc + c));
#pragma unroll
    for (int g = 0; g < G; ++g) out.s[g] = s;
  } else if constexpr (S == LinearScheme::NVFP4) {
    const uint16_t two = __ldg(reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(p.scale) + row * 2 * p.kc) + c);
    const float s0 = e4m3_scale(two & 0xFFu), s1 = e4m3_scale(two >> 8);
    out.s[0] = s0, out.s[1] = s0, out.s[2] = s1, out.s[3] = s1;
  } else {
    (void)p, (void)row, (void)srow, (void)c, (void)out;
  }
}

template <LinearScheme S, int MT, int RW>
__global__ void __launch_bounds__(kThreads) linear_kernel(const LinearParams p, const int lk_log2,
                                                          const float* __restrict__ x, const int64_t ldx, int M,
                                                          float* __restrict__ y, const int64_t ldy) {
  using C = Codec<S>;
  constexpr int E = C::E, G = E / 8;
  const int lk = 1 << lk_log2;
  const int kl = threadIdx.x & (lk - 1);
  const int group = threadIdx.x >> lk_log2;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * (kThreads >> lk_log2) + group) * RW;
  const int m0 = blockIdx.y * MT;
  x += m0 * ldx;
  y += m0 * ldy;
  M = min(M - m0, MT);

  int64_t rows[RW], srow[RW];
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    rows[r] = min(row0 + r, p.n - 1);  // rows past n load row n-1 and are not stored
    srow[r] = (rows[r] / p.block_n) * p.scale_ld;
  }
  const uint8_t* wbase = static_cast<const uint8_t*>(p.w);

  float acc[MT][RW];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;

  for (int c0 = kl; c0 < p.kc; c0 += lk * kUnroll) {
    uint4 q[kUnroll][RW];
    ChunkScales<S> sc[kUnroll][RW];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * lk;
      if (c < p.kc) {
#pragma unroll
        for (int r = 0; r < RW; ++r) {
          q[u][r] = load_stream(wbase + (rows[r] * p.kc + c) * 16);
          load_scales<S>(p, rows[r], srow[r], c, sc[u][r]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * lk;
      if (c >= p.kc) break;
#pragma unroll
      for (int j = 0; j < G; ++j) {
        float w[RW][8];
#pragma unroll
        for (int r = 0; r < RW; ++r) {
          if constexpr (S == LinearScheme::Int4Group)
            C::decode8(q[u][r], j, sc[u][r].zero, w[r]);
          else
            C::decode8(q[u][r], j, w[r]);
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
              if constexpr (S == LinearScheme::BF16)
                acc[m][r] += t;
              else
                acc[m][r] = fmaf(t * C::kUnit, sc[u][r].s[j], acc[m][r]);
            }
          }
        }
      }
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
    if (row0 + r >= p.n) break;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < M) {
        float v = acc[m][r];
        if constexpr (S == LinearScheme::NVFP4) v *= p.global;
        y[m * ldy + row0 + r] = v;
      }
    }
  }
}

template <LinearScheme S, int MT>
void launch(const LinearParams& p, const LaunchShape& s, const float* x, int64_t ldx, int M, float* y, int64_t ldy,
            cudaStream_t stream) {
  constexpr int RW = rows_per_thread(MT);
  static_assert(Codec<S>::E == chunk_elems(S));
  linear_kernel<S, MT, RW><<<dim3(s.blocks, s.mtiles), kThreads, 0, stream>>>(p, s.lk_log2, x, ldx, M, y, ldy);
  KILN_CUDA_CHECK_LAUNCH();
}

template <LinearScheme S>
LaunchFn launcher_for_tile(int mt) {
  switch (mt) {
    case 1: return &launch<S, 1>;
    case 2: return &launch<S, 2>;
    case 4: return &launch<S, 4>;
    case 8: return &launch<S, 8>;
    case 16: return &launch<S, 16>;
    case 32: return &launch<S, 32>;
    default: return nullptr;
  }
}

}  // namespace kernels
}  // namespace kiln::ops::cuda::detail
