// The attention core on bf16 tensor cores (attention_mma.h), AttnNumerics::Bf16: DeepSeek's
// sparse_attn arithmetic, bf16 q and keys with fp32 accumulation, probabilities rounded to
// bf16 for the value sum and summed in fp32 for the denominator.
//
// A block is one row and 16 of its heads (one m16 tile; padded heads are zero rows), 4
// warps. The row's keys are walked in rounds of 16: each thread cp.async-copies its pieces
// of the next round's fp32 key rows into a staging area while the block computes on the
// current one, then turns its own pieces into bf16 rows of the round's K tile. Per round:
//   scores  S[16 heads x 16 keys] = Q K^T: warp w sums channels [w dim/4, (w+1) dim/4) on
//           mma.m16n8k16; the four partial sums are added in warp order, then scaled;
//   softmax 8 threads per head, in base 2 (attn_detail::Softmax<true>): the running
//           reference m (the ceiling of the largest logit), the exact rescale factor
//           2^(m_old - m), the probabilities exp2(t - m) and the denominator l = l * factor +
//           (their sum, a fixed tree), as the CUDA-core kernel's online softmax;
//   values  O[16 x dim] = O * factor + bf16(P) V: warp w owns channels [w dim/4, (w+1) dim/4).
// The keys are cut into chunks as in attention.cu (their length fixed by the key capacity,
// never by the step); a chunk starts from m = -inf, l = 0, O = 0, and its state is merged into
// the row's sink-started state with attention_combine's steps, or written for it when each
// chunk has its own block. A row's output is therefore the same bits in every step.
#include "kiln/ops/cuda/attention_mma.h"
#include "kiln/ops/cuda/launch.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kiln/ops/cuda/attention_detail.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/cp_async.cuh"
#include "kiln/ops/cuda/mma_sync.cuh"
#include "kiln/ops/cuda/row_tile.cuh"
#include "kiln/ops/device_sizes.h"

namespace kiln::ops::cuda::attn_detail {
namespace {

using Sm = Softmax<true>;  // base 2, integer references: rescaling keeps each bf16(p)
constexpr int kHeads = device::kAttnMmaHeads;
constexpr int kKeys = device::kAttnMmaKeyTile;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxNt = device::kAttnMmaMaxDim / (8 * kWarps);  // n8 tiles of a warp's output channels
constexpr int kLoaders = kThreads / kKeys;                     // threads copying one key row
constexpr int kPStride = kKeys + 8;  // halves per P row: 48 bytes, so ldmatrix rows hit distinct banks
static_assert(kHeads == 16 && kKeys == 16, "one m16 tile of heads, one k16 step of P . V per round");
static_assert(kThreads % kKeys == 0 && kLoaders == 8, "8 loaders per key row");

// Byte offsets in dynamic shared memory for head dim `dim`: Q and the K tile as bf16 rows
// of dim + 8 halves (rows 16 bytes apart modulo 128: conflict-free ldmatrix), the fp32
// staging of the next round, the warps' partial scores, P, and per head the rescale factor,
// the row's running state (m, l) and the merge factors.
struct Layout {
  int ds, k_off, stage_off, sp_off, p_off, st_off, total;
  __host__ __device__ explicit Layout(int dim)
      : ds(dim + 8),
        k_off(kHeads * ds * 2),
        stage_off(k_off + kKeys * ds * 2),
        sp_off(stage_off + kKeys * dim * 4),
        p_off(sp_off + kWarps * kHeads * kKeys * 4),
        st_off(p_off + kHeads * kPStride * 2),
        total(st_off + 5 * kHeads * 4) {}
};

__device__ __forceinline__ void store_bf16x4(__nv_bfloat16* d, float4 v) {
  uint2 w;
  w.x = bf16x2(v.x, v.y);
  w.y = bf16x2(v.z, v.w);
  *reinterpret_cast<uint2*>(d) = w;
}

__global__ void __launch_bounds__(kThreads, 3)
    attention_mma_kernel(StepRows rows, const float* __restrict__ q, int64_t ldq, int heads, float scale,
                         const float* __restrict__ sink, WindowRing ring, int window, AttnKeys keys, CompressorRing comp,
                         const int32_t* __restrict__ sel, const int32_t* __restrict__ nsel, int topk, int chunk, float* o,
                         int64_t ldo, float* __restrict__ part) {
  await_previous_grid();
  extern __shared__ __align__(16) unsigned char smem[];
  const int dim = ring.dim;
  const Layout L(dim);
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + L.k_off);
  float* stage = reinterpret_cast<float*>(smem + L.stage_off);
  float* sp = reinterpret_cast<float*>(smem + L.sp_off);
  __nv_bfloat16* ps = reinterpret_cast<__nv_bfloat16*>(smem + L.p_off);
  float* corr = reinterpret_cast<float*>(smem + L.st_off);
  float* rm = corr + kHeads;
  float* rl = rm + kHeads;
  float* fa = rl + kHeads;
  float* fb = fa + kHeads;

  const int r = blockIdx.x, h0 = blockIdx.y * kHeads, hn = min(kHeads, heads - h0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const KeySource src = key_source(rows, r, ring, window, keys, comp, sel, nsel, topk);
  const int nk_all = src.count();
  const bool split = gridDim.z > 1;
  const int c_first = split ? static_cast<int>(blockIdx.z) * chunk : 0;
  const int c_end = split ? min(nk_all, c_first + chunk) : nk_all;
  auto part_of = [&](int h) {
    return part + ((static_cast<int64_t>(r) * heads + h0 + h) * gridDim.z + blockIdx.z) * (dim + 2);
  };
  if (split && c_first >= nk_all) {
    if (tid < hn) part_of(tid)[0] = -INFINITY;  // the row has no such chunk
    return;
  }

  // Key rounds: thread tid copies pieces lsub, lsub + 8, ... (4 floats each) of key row lk.
  const int lk = tid / kLoaders, lsub = tid % kLoaders;
  const int pieces = dim / (4 * kLoaders);
  auto issue = [&](int first) {
    if (first + lk < c_end) {
      const float* g = src.key(first + lk);
      float* d = stage + lk * dim;
#pragma unroll 4
      for (int i = 0; i < pieces; ++i) {
        const int c = (lsub + i * kLoaders) * 4;
        cp_async16(d + c, g + c, true);
      }
    }
    cp_async_commit();
  };
  auto convert = [&](int first) {  // this thread's own pieces, so no barrier before it
    const bool valid = first + lk < c_end;
    const float* s = stage + lk * dim;
    __nv_bfloat16* d = ks + lk * L.ds;
#pragma unroll 4
    for (int i = 0; i < pieces; ++i) {
      const int c = (lsub + i * kLoaders) * 4;
      store_bf16x4(d + c, valid ? *reinterpret_cast<const float4*>(s + c) : make_float4(0.f, 0.f, 0.f, 0.f));
    }
  };

  issue(c_first);
  for (int i = tid; i < kHeads * dim / 4; i += kThreads) {
    const int h = i / (dim / 4), c = (i - h * (dim / 4)) * 4;
    const float4 v = h < hn ? *reinterpret_cast<const float4*>(q + r * ldq + static_cast<int64_t>(h0 + h) * dim + c)
                            : make_float4(0.f, 0.f, 0.f, 0.f);
    store_bf16x4(qs + h * L.ds + c, v);
  }
  if (tid < kHeads) Sm::sink_state(tid < hn ? sink[h0 + tid] : 0.0f, rm[tid], rl[tid]);

  const int sh = tid / 8, sj = (tid % 8) * 2;  // softmax: head, first of two keys
  float m = -INFINITY, l = 0.0f;
  const int g = lane >> 2, tq = lane & 3;  // fragment rows g and g + 8, column pair 2 tq
  const int dq = dim / kWarps, nt = dq / 8, c0 = warp * dq;
  float acc[kMaxNt][4], run[kMaxNt][4];
#pragma unroll
  for (int j = 0; j < kMaxNt; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = run[j][i] = 0.0f;

  const int rounds = (c_end - c_first + kKeys - 1) / kKeys;
  for (int t = 0; t < rounds; ++t) {
    const int first = c_first + t * kKeys;
    const int kn = min(kKeys, c_end - first);
    const bool chunk_begin = (first - c_first) % chunk == 0;
    const bool chunk_last = first + kKeys >= c_end || (first + kKeys - c_first) % chunk == 0;
    cp_async_wait<0>();
    convert(first);
    if (t + 1 < rounds) issue(first + kKeys);
    if (chunk_begin) {
      m = -INFINITY;
      l = 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxNt; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
    }
    __syncthreads();  // the K tile (and Q) complete

    // Scores: this warp's channel quarter for the 16 heads and 16 keys.
    {
      float s[2][4] = {};
      for (int kk = 0; kk < dq; kk += 16) {
        uint32_t a[4], b[4];
        ldmatrix_x4(a, qs + (lane & 15) * L.ds + c0 + kk + (lane >> 4) * 8);
        ldmatrix_x4(b, ks + ((lane & 7) + (lane >> 4) * 8) * L.ds + c0 + kk + ((lane >> 3) & 1) * 8);
        mma_bf16(a[0], a[1], a[2], a[3], b[0], b[1], s[0]);
        mma_bf16(a[0], a[1], a[2], a[3], b[2], b[3], s[1]);
      }
      float* w = sp + warp * kHeads * kKeys;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        w[g * kKeys + j * 8 + 2 * tq] = s[j][0];
        w[g * kKeys + j * 8 + 2 * tq + 1] = s[j][1];
        w[(g + 8) * kKeys + j * 8 + 2 * tq] = s[j][2];
        w[(g + 8) * kKeys + j * 8 + 2 * tq + 1] = s[j][3];
      }
    }
    __syncthreads();

    // Online softmax of head sh over the round (8 lanes per head, two keys each).
    {
      float sc[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float* p = sp + sh * kKeys + sj + i;
        const float v = __fadd_rn(__fadd_rn(__fadd_rn(p[0], p[kHeads * kKeys]), p[2 * kHeads * kKeys]),
                                  p[3 * kHeads * kKeys]);
        sc[i] = sj + i < kn ? Sm::logit(__fmul_rn(v, scale)) : -INFINITY;
      }
      float tmax = fmaxf(sc[0], sc[1]);
#pragma unroll
      for (int x = 1; x < 8; x <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, x));
      const float mx = fmaxf(m, Sm::reference(tmax));
      const float cf = Sm::factor(m, mx);
      const float p0 = sj < kn ? Sm::weight(sc[0], mx) : 0.0f;
      const float p1 = sj + 1 < kn ? Sm::weight(sc[1], mx) : 0.0f;
      float ls = __fadd_rn(p0, p1);
#pragma unroll
      for (int x = 1; x < 8; x <<= 1) ls = __fadd_rn(ls, __shfl_xor_sync(0xffffffffu, ls, x));
      l = __fadd_rn(__fmul_rn(l, cf), ls);
      m = mx;
      *reinterpret_cast<uint32_t*>(ps + sh * kPStride + sj) = bf16x2(p0, p1);
      if ((tid & 7) == 0) {
        corr[sh] = cf;
        if (chunk_last) {
          if (split) {
            if (sh < hn) {
              float* pp = part_of(sh);
              pp[0] = m;
              pp[1] = l;
            }
          } else {  // the chunk into the row's state (as attention_combine)
            const float rmx = fmaxf(rm[sh], m);
            const float a = Sm::factor(rm[sh], rmx), b = Sm::factor(m, rmx);
            rl[sh] = merge_terms(rl[sh], a, l, b);
            rm[sh] = rmx;
            fa[sh] = a;
            fb[sh] = b;
          }
        }
      }
    }
    __syncthreads();

    // Values: O = O * factor + P V over this warp's channels.
    {
      const float c_lo = corr[g], c_hi = corr[g + 8];
#pragma unroll
      for (int j = 0; j < kMaxNt; ++j) {
        if (j < nt) {
          acc[j][0] = __fmul_rn(acc[j][0], c_lo);
          acc[j][1] = __fmul_rn(acc[j][1], c_lo);
          acc[j][2] = __fmul_rn(acc[j][2], c_hi);
          acc[j][3] = __fmul_rn(acc[j][3], c_hi);
        }
      }
      uint32_t a[4];
      ldmatrix_x4(a, ps + (lane & 15) * kPStride + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < kMaxNt; j += 2) {
        if (j < nt) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, ks + ((lane & 7) + ((lane >> 3) & 1) * 8) * L.ds + c0 + j * 8 + (lane >> 4) * 8);
          mma_bf16(a[0], a[1], a[2], a[3], b[0], b[1], acc[j]);
          mma_bf16(a[0], a[1], a[2], a[3], b[2], b[3], acc[j + 1]);
        }
      }
      if (chunk_last) {
        if (split) {
#pragma unroll
          for (int j = 0; j < kMaxNt; ++j) {
            if (j >= nt) break;
            const int c = c0 + j * 8 + 2 * tq;
            if (g < hn) part_of(g)[2 + c] = acc[j][0], part_of(g)[3 + c] = acc[j][1];
            if (g + 8 < hn) part_of(g + 8)[2 + c] = acc[j][2], part_of(g + 8)[3 + c] = acc[j][3];
          }
        } else {
          const float a_lo = fa[g], b_lo = fb[g], a_hi = fa[g + 8], b_hi = fb[g + 8];
#pragma unroll
          for (int j = 0; j < kMaxNt; ++j) {
            if (j < nt) {
              run[j][0] = merge_terms(run[j][0], a_lo, acc[j][0], b_lo);
              run[j][1] = merge_terms(run[j][1], a_lo, acc[j][1], b_lo);
              run[j][2] = merge_terms(run[j][2], a_hi, acc[j][2], b_hi);
              run[j][3] = merge_terms(run[j][3], a_hi, acc[j][3], b_hi);
            }
          }
        }
      }
    }
    __syncthreads();  // K tile, P and the factors used before the next round writes them
  }
  if (split) return;
#pragma unroll
  for (int j = 0; j < kMaxNt; ++j) {
    if (j >= nt) break;
    const int c = c0 + j * 8 + 2 * tq;
    if (g < hn) {
      float* out = o + r * ldo + static_cast<int64_t>(h0 + g) * dim + c;
      out[0] = run[j][0] / rl[g];
      out[1] = run[j][1] / rl[g];
    }
    if (g + 8 < hn) {
      float* out = o + r * ldo + static_cast<int64_t>(h0 + g + 8) * dim + c;
      out[0] = run[j][2] / rl[g + 8];
      out[1] = run[j][3] / rl[g + 8];
    }
  }
}

}  // namespace

void launch_attention_mma(const StepRows& rows, const float* q, int64_t ldq, int heads, float scale, const float* sink,
                          const WindowRing& ring, int window, AttnKeys keys, const CompressorRing& comp,
                          const int32_t* sel, const int32_t* nsel, int topk, int chunk, int splits, float* o, int64_t ldo,
                          float* part, cudaStream_t stream) {
  const Layout L(ring.dim);
  // Over the 48 KB a launch gets by default: opted in once per device (a cudaGetDevice and a
  // lookup per call; graph replays do not call this at all).
  static OncePerDevice once;
  once([&] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         Layout(device::kAttnMmaMaxDim).total));
    // Three blocks of the largest layout per SM need the whole shared-memory carveout.
    KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         cudaSharedmemCarveoutMaxShared));
  });
  const dim3 grid(static_cast<unsigned>(rows.R), static_cast<unsigned>((heads + kHeads - 1) / kHeads),
                  static_cast<unsigned>(splits));
  launch_kernel(attention_mma_kernel, grid, kThreads, L.total, stream,
                rows, q, ldq, heads, scale, sink, ring, window, keys, comp, sel, nsel, topk, chunk, o, ldo, part);
}

}  // namespace kiln::ops::cuda::attn_detail
