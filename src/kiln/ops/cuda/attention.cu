// window_write and attention (attention.h): the GPU twin of the window ring update and the
// sink softmax of ops/cpu/attention.cpp (attention).
//
// attention: one block per (row, group of 8 heads, or 2 for steps of few rows), or per
// (row, head group, key chunk) when a step's blocks do not fill the GPU. The row's keys
// (window rows, then compressed entries) are staged kKeyTile at a time in shared memory
// and used by every head of the group, so each key row is read from global memory once
// per block. The keys are cut into chunks of a length fixed by the layer's key capacity
// (ops/device_sizes.h): within a chunk the softmax is online (running max m, denominator
// l, output o rescaled by exp(m_old - m_new)) from m = -inf; the chunks' (m, l, o) are then
// merged in order into a state started with the sink (m = sink, l = 1, o = 0), by the same
// rounded operations whether one block walks the chunks or each chunk has a block and
// attention_combine merges them. A row's output is therefore the same bits in every step,
// at any row count, which the batch-invariant (deepseek) forward needs; it is the CPU's
// exp(s - M) / (sum exp(s - M) + exp(sink - M)) up to the rounding of the rescalings.
// AttnNumerics::Bf16 runs the tensor-core kernel of attention_mma.cu where the head dim and
// the buffers' alignment allow, else this kernel with the probabilities rounded to bf16 in
// the value sum; both chunk the keys and merge the chunks as above, in base 2 against
// integer references (attn_detail::Softmax<true>), so the rescalings are exact.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/attention_detail.cuh"
#include "kiln/ops/cuda/attention_mma.h"
#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/device_sizes.h"

namespace kiln::ops::cuda {
namespace {

using attn_detail::KeySource;
using attn_detail::merge_terms;

constexpr int kWriteThreads = 128;

__global__ void window_write_kernel(StepRows rows, const float* __restrict__ kv, int64_t ldkv, WindowRing ring) {
  await_previous_grid();
  const int r = blockIdx.x;
  const int64_t slot = rows.slot[r];
  const int64_t pos = rows.pos[r];
  float* dst = ring.data + slot * ring.slot_stride + (pos % ring.cap) * ring.dim;
  const float* src = kv + r * ldkv;
  for (int c = threadIdx.x; c < ring.dim; c += blockDim.x) dst[c] = src[c];
}

constexpr int kAttnThreads = 256;
// Heads sharing one block's staged keys: 8 when there are enough rows to fill the GPU,
// 2 for small (decode) steps so that more blocks run; the grouping changes only which
// block computes a head, not any head's arithmetic.
// (ops/device_sizes.h, which also sizes the split workspace from them)
constexpr int kHeadGroupWide = device::kAttnHeadGroupWide;
constexpr int kHeadGroupNarrow = device::kAttnHeadGroupNarrow;
constexpr int kMaxAttnDim = 512;
constexpr int kChanPerThread = kMaxAttnDim / kAttnThreads;  // output channels a thread owns

// Dynamic shared memory: q [kHeadGroup][dim], keys [kKeyTile][dim], p [kHeadGroup][kKeyTile],
// then [kHeadGroup] each: corr / m / l (the chunk's), rm / rl (the row's running state) and
// the merge factors fa / fb.
template <int kHeadGroup, bool kBf16P>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(StepRows rows, const float* __restrict__ q, int64_t ldq,
                                                                 int heads, float scale, const float* __restrict__ sink,
                                                                 WindowRing ring, int window, AttnKeys keys, CompressorRing comp,
                                                                 const int32_t* __restrict__ sel,
                                                                 const int32_t* __restrict__ nsel, int topk, int chunk,
                                                                 float* o, int64_t ldo, float* __restrict__ part) {
  await_previous_grid();
  extern __shared__ float smem[];
  const int kKeyTile = device::attention_key_tile(ring.dim);
  const int dim = ring.dim;
  float* qs = smem;
  float* ks = qs + kHeadGroup * dim;
  float* ps = ks + kKeyTile * dim;
  float* corr = ps + kHeadGroup * kKeyTile;
  float* ms = corr + kHeadGroup;
  float* ls = ms + kHeadGroup;
  float* rm = ls + kHeadGroup;
  float* rl = rm + kHeadGroup;
  float* fa = rl + kHeadGroup;
  float* fb = fa + kHeadGroup;

  const int r = blockIdx.x;
  const int h0 = blockIdx.y * kHeadGroup;
  const int hn = min(kHeadGroup, heads - h0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  const KeySource src = attn_detail::key_source(rows, r, ring, window, keys, comp, sel, nsel, topk);
  const int nk_all = src.count();
  // Split (gridDim.z > 1): this block takes chunk blockIdx.z alone and writes its (m, l, o)
  // to `part` (m = -inf: the row has no such chunk); attention_combine merges them.
  const bool split = gridDim.z > 1;
  const int c_first = split ? static_cast<int>(blockIdx.z) * chunk : 0;
  const int c_end = split ? min(nk_all, c_first + chunk) : nk_all;
  if (split && c_first >= nk_all) {
    if (tid < hn)
      part[((static_cast<int64_t>(r) * heads + h0 + tid) * gridDim.z + blockIdx.z) * (dim + 2)] = -INFINITY;
    return;
  }

  using Sm = attn_detail::Softmax<kBf16P>;
  for (int i = tid; i < hn * dim; i += blockDim.x) qs[i] = q[r * ldq + (int64_t)h0 * dim + i];
  if (tid < kHeadGroup) Sm::sink_state(tid < hn ? sink[h0 + tid] : 0.0f, rm[tid], rl[tid]);
  float run[kHeadGroup][kChanPerThread];
#pragma unroll
  for (int h = 0; h < kHeadGroup; ++h)
#pragma unroll
    for (int t = 0; t < kChanPerThread; ++t) run[h][t] = 0.0f;

  for (int cb = c_first; cb < c_end; cb += chunk) {
    const int nk = min(chunk, c_end - cb);
    __syncthreads();  // the previous chunk's merge factors used
    if (tid < kHeadGroup) {
      ms[tid] = -INFINITY;
      ls[tid] = 0.0f;
    }
    float acc[kHeadGroup][kChanPerThread];
#pragma unroll
    for (int h = 0; h < kHeadGroup; ++h)
#pragma unroll
      for (int t = 0; t < kChanPerThread; ++t) acc[h][t] = 0.0f;

    for (int k0 = 0; k0 < nk; k0 += kKeyTile) {
      const int kn = min(kKeyTile, nk - k0);
      __syncthreads();  // previous tile's keys and p fully used (and q / m / l written)
      // A warp per key row: the row's address (ring modulo or selected index) is worked out
      // once per row, and the lanes read it coalesced.
      for (int kk = warp; kk < kn; kk += nwarps) {
        const float* kr = src.key(cb + k0 + kk);
        for (int c = lane; c < dim; c += 32) ks[kk * dim + c] = kr[c];
      }
      __syncthreads();
      // Scores: one warp per (head, key) pair, lanes over the channels.
      for (int pr = warp; pr < hn * kn; pr += nwarps) {
        const int h = pr / kn, kk = pr - h * kn;
        const float* qh = qs + h * dim;
        const float* kr = ks + kk * dim;
        float d = 0.0f;
        for (int c = lane; c < dim; c += 32) d += qh[c] * kr[c];
        d = attn_detail::warp_sum(d);
        if (lane == 0) ps[h * kKeyTile + kk] = Sm::logit(d * scale);
      }
      __syncthreads();
      // One thread per head: new running max, rescale factor, probabilities, denominator.
      if (tid < hn) {
        const int h = tid;
        float tmax = -INFINITY;
        for (int kk = 0; kk < kn; ++kk) tmax = fmaxf(tmax, ps[h * kKeyTile + kk]);
        const float mx = fmaxf(ms[h], Sm::reference(tmax));
        const float cf = Sm::factor(ms[h], mx);
        float l = ls[h] * cf;
        for (int kk = 0; kk < kn; ++kk) {
          const float e = Sm::weight(ps[h * kKeyTile + kk], mx);
          ps[h * kKeyTile + kk] = kBf16P ? bf16_round(e) : e;  // the value sum's weight
          l += e;
        }
        ms[h] = mx;
        ls[h] = l;
        corr[h] = cf;
      }
      __syncthreads();
#pragma unroll
      for (int t = 0; t < kChanPerThread; ++t) {
        const int c = tid + t * kAttnThreads;
        if (c < dim) {
#pragma unroll
          for (int h = 0; h < kHeadGroup; ++h) {
            if (h < hn) {
              float v = acc[h][t] * corr[h];
              for (int kk = 0; kk < kn; ++kk) v += ps[h * kKeyTile + kk] * ks[kk * dim + c];
              acc[h][t] = v;
            }
          }
        }
      }
    }
    __syncthreads();
    if (split) {
      // part[((r * heads + h) * chunks + chunk) * (dim + 2) + {0: m, 1: l, 2..: o}]
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h) {
        if (h >= hn) continue;
        float* pp = part + ((static_cast<int64_t>(r) * heads + h0 + h) * gridDim.z + blockIdx.z) * (dim + 2);
        if (tid == 0) pp[0] = ms[h], pp[1] = ls[h];
#pragma unroll
        for (int t = 0; t < kChanPerThread; ++t) {
          const int c = tid + t * kAttnThreads;
          if (c < dim) pp[2 + c] = acc[h][t];
        }
      }
      return;
    }
    // Merge the chunk into the row's state (as attention_combine does).
    if (tid < hn) {
      const int h = tid;
      const float mx = fmaxf(rm[h], ms[h]);
      const float a = Sm::factor(rm[h], mx), b = Sm::factor(ms[h], mx);
      rl[h] = merge_terms(rl[h], a, ls[h], b);
      rm[h] = mx;
      fa[h] = a;
      fb[h] = b;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kChanPerThread; ++t)
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h) run[h][t] = merge_terms(run[h][t], fa[h], acc[h][t], fb[h]);
  }
#pragma unroll
  for (int t = 0; t < kChanPerThread; ++t) {
    const int c = tid + t * kAttnThreads;
    if (c < dim) {
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h)
        if (h < hn) o[r * ldo + (int64_t)(h0 + h) * dim + c] = run[h][t] / rl[h];
    }
  }
}

// Merges the chunks of every (row, head) in order into the sink-started state, with the
// attention kernel's merge step: m' = max(m, m_c), a = exp(m - m'), b = exp(m_c - m'),
// l = l a + l_c b, o = o a + o_c b; then o / l (kPow2: in base 2, Softmax<true>).
template <bool kPow2>
__global__ void attention_combine_kernel(const float* __restrict__ part, int heads, int chunks, int dim,
                                         const float* __restrict__ sink, float* __restrict__ o, int64_t ldo) {
  await_previous_grid();
  const int r = blockIdx.x, h = blockIdx.y;
  const float* pp = part + (static_cast<int64_t>(r) * heads + h) * chunks * (dim + 2);
  int n = 0;
  while (n < chunks && pp[n * (dim + 2)] != -INFINITY) ++n;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    using Sm = attn_detail::Softmax<kPow2>;
    float m, l, v = 0.0f;
    Sm::sink_state(sink[h], m, l);
    for (int s = 0; s < n; ++s) {
      const float mc = pp[s * (dim + 2)];
      const float mx = fmaxf(m, mc);
      const float a = Sm::factor(m, mx), b = Sm::factor(mc, mx);
      l = merge_terms(l, a, pp[s * (dim + 2) + 1], b);
      v = merge_terms(v, a, pp[s * (dim + 2) + 2 + c], b);
      m = mx;
    }
    o[r * ldo + static_cast<int64_t>(h) * dim + c] = v / l;
  }
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&dev));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}


}  // namespace

void window_write(const StepRows& rows, const float* kv, int64_t ldkv, const WindowRing& ring, cudaStream_t stream) {
  if (rows.R < 0) fail(ErrorKind::Usage, "window_write: rows.R is {}, expected >= 0", rows.R);
  if (rows.R == 0) return;
  if (!rows.slot || !rows.pos) fail(ErrorKind::Usage, "window_write: rows.slot / rows.pos must be non-null");
  if (!kv || !ring.data) fail(ErrorKind::Usage, "window_write: kv and ring.data must be non-null");
  if (ring.cap <= 0 || ring.dim <= 0) fail(ErrorKind::Usage, "window_write: ring cap {} / dim {} must be positive", ring.cap, ring.dim);
  if (ldkv < ring.dim) fail(ErrorKind::Usage, "window_write: ldkv {} < ring dim {}", ldkv, ring.dim);
  if (ring.slot_stride < int64_t{ring.cap} * ring.dim)
    fail(ErrorKind::Usage, "window_write: slot_stride {} < cap * dim = {}", ring.slot_stride, int64_t{ring.cap} * ring.dim);
  launch_kernel(window_write_kernel, rows.R, kWriteThreads, 0, stream, rows, kv, ldkv, ring);
}

void attention(const StepRows& rows, const float* q, int64_t ldq, int heads, float scale, const float* sink,
               const WindowRing& ring, int window, AttnKeys keys, const CompressorRing* comp, const int32_t* sel,
               const int32_t* nsel, int topk, float* o, int64_t ldo, cudaStream_t stream, float* workspace,
               AttnNumerics num) {
  if (rows.R < 0) fail(ErrorKind::Usage, "attention: rows.R is {}, expected >= 0", rows.R);
  if (rows.R == 0) return;
  if (!rows.slot || !rows.pos) fail(ErrorKind::Usage, "attention: rows.slot / rows.pos must be non-null");
  if (!q || !o || !sink || !ring.data) fail(ErrorKind::Usage, "attention: q, o, sink and ring.data must be non-null");
  if (heads <= 0) fail(ErrorKind::Usage, "attention: heads {} must be positive", heads);
  const int dim = ring.dim;
  if (dim <= 0 || dim > kMaxAttnDim) fail(ErrorKind::Usage, "attention: dim {} outside [1, {}]", dim, kMaxAttnDim);
  if (ring.cap <= 0) fail(ErrorKind::Usage, "attention: ring cap {} must be positive", ring.cap);
  if (window <= 0 || window > ring.cap)
    fail(ErrorKind::Usage, "attention: window {} must be in [1, ring cap {}]", window, ring.cap);
  if (ldq < int64_t{heads} * dim || ldo < int64_t{heads} * dim)
    fail(ErrorKind::Usage, "attention: ldq {} / ldo {} must be >= heads * dim = {}", ldq, ldo, int64_t{heads} * dim);
  CompressorRing c{};
  if (keys != AttnKeys::Window) {
    if (!comp || !comp->entries) fail(ErrorKind::Usage, "attention: compressed keys requested but the compressor (or its entries) is null");
    if (comp->dim != dim) fail(ErrorKind::Usage, "attention: compressor dim {} != window dim {}", comp->dim, dim);
    if (comp->ratio <= 0) fail(ErrorKind::Usage, "attention: compressor ratio {} must be positive", comp->ratio);
    c = *comp;
  }
  if (keys == AttnKeys::WindowAndSelected) {
    if (!sel || !nsel) fail(ErrorKind::Usage, "attention: WindowAndSelected needs sel and nsel, got null");
    if (topk <= 0) fail(ErrorKind::Usage, "attention: topk {} must be positive with WindowAndSelected", topk);
  }
  // Key capacity of a row: the window plus the selected (CSA) or all (HCA) entries.
  const int64_t capacity = int64_t{window} + (keys == AttnKeys::WindowAndSelected ? topk
                                              : keys == AttnKeys::WindowAndAll    ? c.max_entries
                                                                                  : 0);
  // The tensor-core kernel for DeepSeek's numerics where its layout holds (16-byte rows);
  // otherwise the CUDA-core kernel, which rounds the probabilities alike in Bf16.
  const bool bf16 = num == AttnNumerics::Bf16;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool mma = bf16 && device::attention_mma_fits(dim) && aligned(q) && ldq % 4 == 0 && aligned(ring.data) &&
                   ring.slot_stride % 4 == 0 &&
                   (keys == AttnKeys::Window || (aligned(c.entries) && c.entry_slot_stride % 4 == 0));
  const int chunk = mma ? device::attention_chunk_keys_of_tile(capacity, device::kAttnMmaKeyTile)
                        : device::attention_chunk_keys(capacity, dim);
  const int chunks = static_cast<int>((capacity + chunk - 1) / chunk);
  const int splits =
      workspace && chunks > 1 && device::attention_splits_chunks(rows.R, heads, sm_count(), mma) ? chunks : 1;
  if (mma) {
    attn_detail::launch_attention_mma(rows, q, ldq, heads, scale, sink, ring, window, keys, c, sel, nsel, topk, chunk,
                                      splits, o, ldo, workspace, stream);
  } else {
    auto launch = [&](auto group, auto round_p) {
      constexpr int hg = decltype(group)::value;
      const dim3 grid(static_cast<unsigned>(rows.R), static_cast<unsigned>((heads + hg - 1) / hg),
                      static_cast<unsigned>(splits));
      const int kKeyTile = device::attention_key_tile(dim);
      const size_t smem = sizeof(float) * (static_cast<size_t>(hg + kKeyTile) * dim + hg * kKeyTile + 7 * hg);
      launch_kernel(attention_kernel<hg, decltype(round_p)::value>, grid, kAttnThreads, smem, stream,
                    rows, q, ldq, heads, scale, sink, ring, window, keys, c, sel, nsel, topk, chunk, o, ldo, workspace);
    };
    auto with_group = [&](auto round_p) {
      if (device::attention_head_group(rows.R, false) == kHeadGroupNarrow)
        launch(std::integral_constant<int, kHeadGroupNarrow>{}, round_p);
      else
        launch(std::integral_constant<int, kHeadGroupWide>{}, round_p);
    };
    if (bf16)
      with_group(std::true_type{});
    else
      with_group(std::false_type{});
  }
  if (splits > 1) {
    const dim3 grid(static_cast<unsigned>(rows.R), static_cast<unsigned>(heads));
    if (bf16)
      launch_kernel(attention_combine_kernel<true>, grid, 128, 0, stream, workspace, heads, splits, dim, sink, o, ldo);
    else
      launch_kernel(attention_combine_kernel<false>, grid, 128, 0, stream, workspace, heads, splits, dim, sink, o, ldo);
  }
}

int64_t attention_workspace_floats(int max_rows, int heads, int dim) {
  return device::attention_workspace_floats(max_rows, heads, dim, sm_count());
}

}  // namespace kiln::ops::cuda
