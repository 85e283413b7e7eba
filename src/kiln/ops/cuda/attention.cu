// window_write and attention (attention.h): the GPU twin of the window ring update and the
// sink softmax of ops/cpu/attention.cpp (attention).
//
// attention: one block per (row, group of 8 heads, or 2 for steps of few rows). The row's keys (window rows,
// then compressed entries) are staged kKeyTile at a time in shared memory and used by
// every head of the group, so each key row is read from global memory once per block.
// The softmax is online (running max m, denominator l, output o rescaled by
// exp(m_old - m_new)), started with the sink: m = sink, l = exp(sink - sink) = 1, o = 0,
// which gives exactly the CPU's form exp(s - M) / (sum exp(s - M) + exp(sink - M)) up to
// the rounding of the rescaling products.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/attention_detail.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/device_sizes.h"

namespace kiln::ops::cuda {
namespace {

constexpr int kWriteThreads = 128;

__global__ void window_write_kernel(StepRows rows, const float* __restrict__ kv, int64_t ldkv, WindowRing ring) {
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
constexpr int kNarrowBelowRows = device::kAttnNarrowBelowRows;
// Keys staged per round: as many as keep the block's shared memory under the 48 KB a
// launch gets without opting in (clamped to 8 .. 64). Every round is a global-load round
// trip plus four barriers, so fewer, larger rounds cut a decode row's latency.
__host__ __device__ constexpr int key_tile(int dim) {
  return 6144 / dim > 64 ? 64 : (6144 / dim < 8 ? 8 : 6144 / dim);
}
constexpr int kMaxAttnDim = 512;
constexpr int kChanPerThread = kMaxAttnDim / kAttnThreads;  // output channels a thread owns

struct KeySource {
  const float* ring;   // this slot's window ring
  int cap;
  int64_t first_pos;   // first window position
  int nwin;            // window keys
  const float* entries;  // this slot's compressed entries (null: none)
  const int32_t* sel;    // CSA: selected entry indices of this row (null: entries 0..)
  int ncomp;
  int dim;
  __device__ const float* key(int i) const {
    if (i < nwin) return ring + ((first_pos + i) % cap) * dim;
    const int e = i - nwin;
    const int64_t j = sel ? sel[e] : e;
    return entries + j * dim;
  }
};

// Dynamic shared memory: q [kHeadGroup][dim], keys [kKeyTile][dim], p [kHeadGroup][kKeyTile],
// corr / m / l [kHeadGroup].
template <int kHeadGroup>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(StepRows rows, const float* __restrict__ q, int64_t ldq,
                                                                 int heads, float scale, const float* __restrict__ sink,
                                                                 WindowRing ring, int window, AttnKeys keys, CompressorRing comp,
                                                                 const int32_t* __restrict__ sel,
                                                                 const int32_t* __restrict__ nsel, int topk, float* o,
                                                                 int64_t ldo, float* __restrict__ part) {
  extern __shared__ float smem[];
  const int kKeyTile = key_tile(ring.dim);
  const int dim = ring.dim;
  float* qs = smem;
  float* ks = qs + kHeadGroup * dim;
  float* ps = ks + kKeyTile * dim;
  float* corr = ps + kHeadGroup * kKeyTile;
  float* ms = corr + kHeadGroup;
  float* ls = ms + kHeadGroup;

  const int r = blockIdx.x;
  const int h0 = blockIdx.y * kHeadGroup;
  const int hn = min(kHeadGroup, heads - h0);
  const int64_t slot = rows.slot[r];
  const int64_t pos = rows.pos[r];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;

  KeySource src;
  src.ring = ring.data + slot * ring.slot_stride;
  src.cap = ring.cap;
  src.first_pos = pos - window + 1 > 0 ? pos - window + 1 : 0;
  src.nwin = (int)(pos - src.first_pos + 1);
  src.entries = nullptr;
  src.sel = nullptr;
  src.ncomp = 0;
  src.dim = dim;
  if (keys == AttnKeys::WindowAndSelected) {
    src.entries = comp.entries + slot * comp.entry_slot_stride;
    src.sel = sel + (int64_t)r * topk;
    src.ncomp = nsel[r];
  } else if (keys == AttnKeys::WindowAndAll) {
    src.entries = comp.entries + slot * comp.entry_slot_stride;
    const int64_t vis = (pos + 1) / comp.ratio;
    src.ncomp = (int)(vis < comp.max_entries ? vis : comp.max_entries);
  }
  const int nk_all = src.nwin + src.ncomp;
  // Split keys (gridDim.z > 1): this block takes keys [kb, ke) and writes its running max,
  // denominator and unnormalised output to `part`; attention_combine adds the sink and
  // merges the splits in order.
  const int splits = gridDim.z;
  const int chunk = (nk_all + splits - 1) / splits;
  const int kb = min(nk_all, static_cast<int>(blockIdx.z) * chunk), ke = min(nk_all, kb + chunk);
  const int nk = ke - kb;

  for (int i = tid; i < hn * dim; i += blockDim.x) qs[i] = q[r * ldq + (int64_t)h0 * dim + i];
  if (tid < kHeadGroup) {
    if (splits == 1) {
      const float sk = tid < hn ? sink[h0 + tid] : 0.0f;
      ms[tid] = sk;
      ls[tid] = 1.0f;  // exp(sink - m) with m = sink
    } else {
      ms[tid] = -INFINITY;  // the sink joins in attention_combine
      ls[tid] = 0.0f;
    }
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
      const float* kr = src.key(kb + k0 + kk);
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
      if (lane == 0) ps[h * kKeyTile + kk] = d * scale;
    }
    __syncthreads();
    // One thread per head: new running max, rescale factor, probabilities, denominator.
    if (tid < hn) {
      const int h = tid;
      float mx = ms[h];
      for (int kk = 0; kk < kn; ++kk) mx = fmaxf(mx, ps[h * kKeyTile + kk]);
      const float cf = mx == -INFINITY ? 1.0f : expf(ms[h] - mx);
      float l = ls[h] * cf;
      for (int kk = 0; kk < kn; ++kk) {
        const float e = expf(ps[h * kKeyTile + kk] - mx);
        ps[h * kKeyTile + kk] = e;
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
  if (splits > 1) {
    // part[((r * heads + h) * splits + split) * (dim + 2) + {0: m, 1: l, 2..: o}]
#pragma unroll
    for (int h = 0; h < kHeadGroup; ++h) {
      if (h >= hn) continue;
      float* pp = part + ((static_cast<int64_t>(r) * heads + h0 + h) * splits + blockIdx.z) * (dim + 2);
      if (tid == 0) pp[0] = ms[h], pp[1] = ls[h];
#pragma unroll
      for (int t = 0; t < kChanPerThread; ++t) {
        const int c = tid + t * kAttnThreads;
        if (c < dim) pp[2 + c] = acc[h][t];
      }
    }
    return;
  }
#pragma unroll
  for (int t = 0; t < kChanPerThread; ++t) {
    const int c = tid + t * kAttnThreads;
    if (c < dim) {
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h)
        if (h < hn) o[r * ldo + (int64_t)(h0 + h) * dim + c] = acc[h][t] / ls[h];
    }
  }
}

// Merges the splits of every (row, head): M = max(sink, m_s), L = exp(sink - M) +
// sum_s l_s exp(m_s - M), o = sum_s o_s exp(m_s - M) / L (splits in order).
__global__ void attention_combine_kernel(const float* __restrict__ part, int heads, int splits, int dim,
                                         const float* __restrict__ sink, float* __restrict__ o, int64_t ldo) {
  const int r = blockIdx.x, h = blockIdx.y;
  const float* pp = part + (static_cast<int64_t>(r) * heads + h) * splits * (dim + 2);
  const float sk = sink[h];
  float M = sk;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, pp[s * (dim + 2)]);
  float L = expf(sk - M);
  for (int s = 0; s < splits; ++s) {
    const float m = pp[s * (dim + 2)];
    if (m != -INFINITY) L += pp[s * (dim + 2) + 1] * expf(m - M);
  }
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float m = pp[s * (dim + 2)];
      if (m != -INFINITY) v += pp[s * (dim + 2) + 2 + c] * expf(m - M);
    }
    o[r * ldo + static_cast<int64_t>(h) * dim + c] = v / L;
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

// Key splits for R rows of `heads` heads (ops/device_sizes.h).
int attention_splits(int R, int heads) { return device::attention_splits(R, heads, sm_count()); }

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
  window_write_kernel<<<rows.R, kWriteThreads, 0, stream>>>(rows, kv, ldkv, ring);
  KILN_CUDA_CHECK_LAUNCH();
}

void attention(const StepRows& rows, const float* q, int64_t ldq, int heads, float scale, const float* sink,
               const WindowRing& ring, int window, AttnKeys keys, const CompressorRing* comp, const int32_t* sel,
               const int32_t* nsel, int topk, float* o, int64_t ldo, cudaStream_t stream, float* workspace) {
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
  const int splits = workspace ? attention_splits(rows.R, heads) : 1;
  auto launch = [&](auto group) {
    constexpr int hg = decltype(group)::value;
    const dim3 grid(static_cast<unsigned>(rows.R), static_cast<unsigned>((heads + hg - 1) / hg),
                    static_cast<unsigned>(splits));
    const int kKeyTile = key_tile(dim);
    const size_t smem = sizeof(float) * (static_cast<size_t>(hg + kKeyTile) * dim + hg * kKeyTile + 3 * hg);
    attention_kernel<hg><<<grid, kAttnThreads, smem, stream>>>(rows, q, ldq, heads, scale, sink, ring, window, keys, c, sel,
                                                               nsel, topk, o, ldo, workspace);
  };
  if (rows.R < kNarrowBelowRows)
    launch(std::integral_constant<int, kHeadGroupNarrow>{});
  else
    launch(std::integral_constant<int, kHeadGroupWide>{});
  KILN_CUDA_CHECK_LAUNCH();
  if (splits > 1) {
    attention_combine_kernel<<<dim3(static_cast<unsigned>(rows.R), static_cast<unsigned>(heads)), 128, 0, stream>>>(
        workspace, heads, splits, dim, sink, o, ldo);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

int64_t attention_workspace_floats(int max_rows, int heads, int dim) {
  return device::attention_workspace_floats(max_rows, heads, dim, sm_count());
}

}  // namespace kiln::ops::cuda
