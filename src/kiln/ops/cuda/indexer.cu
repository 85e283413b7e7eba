// indexer_select (attention.h): the GPU twin of ops/cpu/indexer.cpp (indexer_select).
// One block per row:
//  1. scores of the visible entries into scratch (one warp per entry, lanes over the
//     head_dim channels; the per-head terms are added in ascending head order exactly as
//     acc += (max(dot, 0) * softmax_scale) * w_h);
//  2. exact top-k by a 4-pass, 8-bit radix select over the scores made order-preserving
//     as uint32: it finds the k-th largest key T and how many entries equal to T are
//     still needed;
//  3. one ascending sweep over the entries with block-wide prefix sums keeps every key
//     > T and the first `need` keys == T (so exact ties go to the lowest index) and
//     writes them in ascending index order.
// O(vis) work per pass, no sort of the whole list.
#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/attention_detail.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"

namespace kiln::ops::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kMaxHeadDim = 128;           // key channels a warp holds in registers
constexpr int kKeyRegs = kMaxHeadDim / 32;  // per lane
constexpr int kEntriesPerWarp = 4;
// q row and w in dynamic shared memory: 40 KiB, leaving room under the 48 KiB default
// for the static histogram and scan storage (V4: 64 * 128 + 64 floats = 33 KiB).
constexpr int kMaxQFloats = 10 * 1024;

// Larger float -> larger key. -0 is folded into +0 first, since the CPU's comparison
// treats them as equal (a tie broken by index), so they must get the same key.
__device__ __forceinline__ uint32_t order_key(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

using Scan = cub::BlockScan<int, kThreads>;

__global__ void __launch_bounds__(kThreads) indexer_kernel(StepRows rows, const float* __restrict__ q, int64_t ldq,
                                                           const float* __restrict__ w, int64_t ldw, int heads,
                                                           int head_dim, float softmax_scale, CompressorRing ic,
                                                           int topk, int32_t* __restrict__ sel,
                                                           int32_t* __restrict__ nsel, float* __restrict__ scratch) {
  await_previous_grid();
  extern __shared__ float qs[];  // [heads * head_dim] then w [heads]
  __shared__ unsigned hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_need;
  __shared__ typename Scan::TempStorage scan_tmp;

  const int r = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const int64_t slot = rows.slot[r];
  const int64_t pos = rows.pos[r];
  const int64_t vis64 = (pos + 1) / ic.ratio;
  const int vis = (int)(vis64 < ic.max_entries ? vis64 : ic.max_entries);
  const int k = vis < topk ? vis : topk;
  if (tid == 0) nsel[r] = k;
  if (k <= 0) return;

  float* ws = qs + heads * head_dim;
  for (int i = tid; i < heads * head_dim; i += blockDim.x) qs[i] = q[r * ldq + i];
  for (int i = tid; i < heads; i += blockDim.x) ws[i] = w[r * ldw + i];
  __syncthreads();

  // 1. scores: a warp takes kEntriesPerWarp entries at once so each q value read from
  // shared memory serves all of them and their reductions overlap; each entry's dot
  // and sum follow exactly the same operations as one entry alone.
  float* sc = scratch + (int64_t)r * ic.max_entries;
  const float* ent = ic.entries + slot * ic.entry_slot_stride;
  for (int j0 = warp * kEntriesPerWarp; j0 < vis; j0 += nwarps * kEntriesPerWarp) {
    float kr[kEntriesPerWarp][kKeyRegs];
#pragma unroll
    for (int e = 0; e < kEntriesPerWarp; ++e) {
      const float* kj = ent + (int64_t)(j0 + e) * head_dim;
#pragma unroll
      for (int t = 0; t < kKeyRegs; ++t) {
        const int c = lane + 32 * t;
        kr[e][t] = (j0 + e < vis && c < head_dim) ? kj[c] : 0.0f;
      }
    }
    float acc[kEntriesPerWarp];
#pragma unroll
    for (int e = 0; e < kEntriesPerWarp; ++e) acc[e] = 0.0f;
    for (int h = 0; h < heads; ++h) {
      const float* qh = qs + h * head_dim;
      float qr[kKeyRegs];
#pragma unroll
      for (int t = 0; t < kKeyRegs; ++t) {
        const int c = lane + 32 * t;
        qr[t] = c < head_dim ? qh[c] : 0.0f;
      }
      const float wh = ws[h];
#pragma unroll
      for (int e = 0; e < kEntriesPerWarp; ++e) {
        float d = 0.0f;
#pragma unroll
        for (int t = 0; t < kKeyRegs; ++t)
          if (lane + 32 * t < head_dim) d += qr[t] * kr[e][t];
        d = attn_detail::warp_sum(d);  // every lane holds the head's dot: acc stays uniform
        acc[e] += (fmaxf(d, 0.0f) * softmax_scale) * wh;
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int e = 0; e < kEntriesPerWarp; ++e)
        if (j0 + e < vis) sc[j0 + e] = acc[e];
    }
  }
  __syncthreads();  // scratch writes of this block are visible to the whole block

  // 2. radix select of the k-th largest key, 8 bits per pass from the top.
  if (tid == 0) {
    s_prefix = 0;
    s_need = k;
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = s_prefix;
    for (int j = tid; j < vis; j += blockDim.x) {
      const uint32_t u = order_key(sc[j]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      int need = s_need;
      int b = 255;
      for (; b > 0; --b) {
        if ((int)hist[b] >= need) break;
        need -= (int)hist[b];
      }
      s_prefix = prefix | ((uint32_t)b << shift);
      s_need = need;
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const uint32_t T = s_prefix;
  const int need_eq = s_need;  // entries with key == T to keep (the lowest indices)

  // 3. ascending sweep: keep key > T, and key == T while fewer than need_eq were taken.
  int32_t* out = sel + (int64_t)r * topk;
  int eq_base = 0, out_base = 0;
  for (int j0 = 0; j0 < vis; j0 += blockDim.x) {
    const int j = j0 + tid;
    uint32_t u = 0;
    if (j < vis) u = order_key(sc[j]);
    const int gt = (j < vis && u > T) ? 1 : 0;
    const int eq = (j < vis && u == T) ? 1 : 0;
    int eq_rank, eq_total;
    Scan(scan_tmp).ExclusiveSum(eq, eq_rank, eq_total);
    __syncthreads();
    const int take = gt || (eq && eq_base + eq_rank < need_eq) ? 1 : 0;
    int out_rank, out_total;
    Scan(scan_tmp).ExclusiveSum(take, out_rank, out_total);
    __syncthreads();
    if (take) out[out_base + out_rank] = j;
    eq_base += eq_total;
    out_base += out_total;
  }
}

}  // namespace

void indexer_select(const StepRows& rows, const float* q, int64_t ldq, const float* w, int64_t ldw, int heads,
                    int head_dim, float softmax_scale, const CompressorRing& ic, int topk, int32_t* sel, int32_t* nsel,
                    float* scratch, cudaStream_t stream) {
  if (rows.R < 0) fail(ErrorKind::Usage, "indexer_select: rows.R is {}, expected >= 0", rows.R);
  if (rows.R == 0) return;
  if (!rows.slot || !rows.pos) fail(ErrorKind::Usage, "indexer_select: rows.slot / rows.pos must be non-null");
  if (!q || !w || !sel || !nsel || !scratch) fail(ErrorKind::Usage, "indexer_select: q, w, sel, nsel and scratch must be non-null");
  if (!ic.entries) fail(ErrorKind::Usage, "indexer_select: indexer compressor entries are null");
  if (heads <= 0) fail(ErrorKind::Usage, "indexer_select: heads {} must be positive", heads);
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    fail(ErrorKind::Usage, "indexer_select: head_dim {} outside [1, {}]", head_dim, kMaxHeadDim);
  if (ic.dim != head_dim) fail(ErrorKind::Usage, "indexer_select: compressor dim {} != head_dim {}", ic.dim, head_dim);
  if (int64_t{heads} * head_dim + heads > kMaxQFloats)
    fail(ErrorKind::Usage, "indexer_select: heads * head_dim + heads = {} exceeds {} floats of shared memory",
         int64_t{heads} * head_dim + heads, kMaxQFloats);
  if (ldq < int64_t{heads} * head_dim) fail(ErrorKind::Usage, "indexer_select: ldq {} < heads * head_dim = {}", ldq, int64_t{heads} * head_dim);
  if (ldw < heads) fail(ErrorKind::Usage, "indexer_select: ldw {} < heads {}", ldw, heads);
  if (ic.ratio <= 0) fail(ErrorKind::Usage, "indexer_select: compressor ratio {} must be positive", ic.ratio);
  if (ic.max_entries < 0) fail(ErrorKind::Usage, "indexer_select: max_entries {} < 0", ic.max_entries);
  if (topk <= 0) fail(ErrorKind::Usage, "indexer_select: topk {} must be positive", topk);
  const size_t smem = sizeof(float) * (static_cast<size_t>(heads) * head_dim + heads);
  launch_kernel(indexer_kernel, rows.R, kThreads, smem, stream,
                rows, q, ldq, w, ldw, heads, head_dim, softmax_scale, ic, topk, sel, nsel, scratch);
}

}  // namespace kiln::ops::cuda
