// mHC on the GPU, one block per row for the mixes: the rms of the flattened row X[t]
// (n*H values), the (2+n)*n (or n) dot products of the normalised row with fn, then the
// tiny sigmoid / softmax / Sinkhorn work in one thread in exactly the CPU's order
// (ops/cpu/hyper_connection.cpp), then the collapse over streams. Products and sums that
// the CPU rounds separately are written __fmul_rn / __fadd_rn so nvcc cannot fuse them.
#include <algorithm>

#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/hyper_connection.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/row_reduce.cuh"
#include "kiln/ops/device_sizes.h"

namespace kiln::ops::cuda {
namespace {

constexpr int kMaxStreams = device::kHcMaxStreams;  // hc_mult of DeepSeek-V4
constexpr int kMaxMixes = device::kHcMaxMixes;      // 24 fn rows
constexpr int kThreads = 512;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// m[k] = fn[k] . (x / rms(x)) for k < rows (rows <= MaxRows), x of W floats; m in shared
// memory, valid for every thread on return. scratch: 32 * MaxRows shared floats.
template <int MaxRows>
__device__ void row_mixes(const float* x, int W, const float* __restrict__ fn, int rows, float eps, float* m,
                          float* scratch) {
  float ss = 0.0f;
  for (int i = threadIdx.x; i < W; i += blockDim.x) ss = __fadd_rn(ss, __fmul_rn(x[i], x[i]));
  ss = block_sum(ss, scratch);
  const float s = 1.0f / sqrtf(ss / static_cast<float>(W) + eps);
  float acc[MaxRows];
#pragma unroll
  for (int k = 0; k < MaxRows; ++k) acc[k] = 0.0f;
  // Thread i reads column i of every fn row: consecutive threads, consecutive addresses.
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    const float f = __fmul_rn(x[i], s);  // the CPU's normalised value, rounded alone
#pragma unroll
    for (int k = 0; k < MaxRows; ++k) {
      if (k < rows) acc[k] = __fadd_rn(acc[k], __fmul_rn(f, fn[static_cast<int64_t>(k) * W + i]));
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < MaxRows; ++k) acc[k] = warp_sum(acc[k]);
  __syncthreads();  // scratch was last read by block_sum
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < MaxRows; ++k) scratch[warp * MaxRows + k] = acc[k];
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    float t = 0.0f;
    for (int w = 0; w < nw; ++w) t += scratch[w * MaxRows + threadIdx.x];
    m[threadIdx.x] = t;
  }
  __syncthreads();
}

// out[d] = sum_i pre[i] * X[i, d] in stream order from 0 (the CPU's collapse).
// bf16_out: each value rounded to bf16 as it is written.
__device__ __forceinline__ void collapse(int n, int H, const float* X, const float* pre, float* out, bool bf16_out = false) {
  for (int d = threadIdx.x; d < H; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, __fmul_rn(pre[i], X[static_cast<int64_t>(i) * H + d]));
    out[d] = bf16_round_if(acc, bf16_out);
  }
}

constexpr int kPartThreads = 256;
constexpr int kPartWarps = kPartThreads / 32;
// Rows per block of mix_partial_kernel: each thread reads its columns of fn once for all of
// them (a prompt's rows used to read all of fn, 24 x 16,384 floats on V4, from L2 each: 3 GB
// per call at 2,048 rows). Every row's sums are the same whether it is alone or not.
constexpr int kPartRows = 8;
// Column passes per thread whose fn values stay in registers (columns past them, only where
// a split is wider than kPartThreads * kPartCached, are read per row).
constexpr int kPartCached = 2;
static_assert(device::kHcMaxMixes + 1 <= 32, "mix_partial_kernel reduces one value per lane");

// One step of a warp's butterfly reduce-scatter over v[0 .. 2 O): a lane keeps the half its
// lane bit O names (upper if set) in v[0 .. O) and adds its partner's copy of that half.
template <int O>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[32], int lane) {
  const bool up = (lane & O) != 0;
#pragma unroll
  for (int i = 0; i < O; ++i) {
    const float send = up ? v[i] : v[i + O], keep = up ? v[i + O] : v[i];
    v[i] = __fadd_rn(keep, __shfl_xor_sync(0xFFFFFFFFu, send, O));
  }
}

// Block (s, g): columns [s * cols, (s + 1) * cols) of rows [g * kPartRows, +kPartRows) (those
// < R): per row, the partial sum of squares and the partial products fn[k] . x (unnormalised)
// for k < rows, written to part[(t * splits + s) * (MaxRows + 1) + (k | MaxRows for the sum of
// squares)]. A thread sums its columns in ascending order, each warp's lanes are added by a
// fixed butterfly, then the warps' sums in warp order: the same for every row, however many
// share the block.
template <int MaxRows>
__global__ void __launch_bounds__(kPartThreads) mix_partial_kernel(const float* __restrict__ X, int W, int cols,
                                                                   const float* __restrict__ fn, int rows, int R,
                                                                   float* __restrict__ part) {
  await_previous_grid();
  constexpr int L = MaxRows + 1;
  __shared__ float scratch[kPartRows * kPartWarps * L];
  const int s = blockIdx.x, splits = gridDim.x, t0 = static_cast<int>(blockIdx.y) * kPartRows;
  const int nt = min(kPartRows, R - t0);
  const int c0 = s * cols, c1 = min(W, c0 + cols);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float f[kPartCached][MaxRows];
#pragma unroll
  for (int j = 0; j < kPartCached; ++j) {
    const int i = c0 + static_cast<int>(threadIdx.x) + j * kPartThreads;
#pragma unroll
    for (int k = 0; k < MaxRows; ++k) f[j][k] = (i < c1 && k < rows) ? __ldg(fn + static_cast<int64_t>(k) * W + i) : 0.0f;
  }
  for (int r = 0; r < nt; ++r) {
    const float* x = X + static_cast<int64_t>(t0 + r) * W;
    float acc[L];
#pragma unroll
    for (int k = 0; k < L; ++k) acc[k] = 0.0f;
    auto add = [&](float v, const float* fk, int64_t stride) {
      acc[MaxRows] = __fadd_rn(acc[MaxRows], __fmul_rn(v, v));
#pragma unroll
      for (int k = 0; k < MaxRows; ++k) {
        if (k < rows) acc[k] = __fadd_rn(acc[k], __fmul_rn(v, fk[k * stride]));
      }
    };
#pragma unroll
    for (int j = 0; j < kPartCached; ++j) {
      const int i = c0 + static_cast<int>(threadIdx.x) + j * kPartThreads;
      if (i < c1) add(x[i], f[j], 1);
    }
    for (int i = c0 + static_cast<int>(threadIdx.x) + kPartCached * kPartThreads; i < c1; i += kPartThreads)
      add(x[i], fn + i, W);
    // The warp's sums of the L values by a butterfly reduce-scatter: at each of the five
    // steps a lane keeps half of its values (the half its lane bit names) and adds its
    // partner's copy of that half, so lane k ends with the warp's sum of value k (31
    // shuffles where one warp_sum per value took 5 L; the tree is the same for every row).
    float v[32];
#pragma unroll
    for (int k = 0; k < 32; ++k) v[k] = k < L ? acc[k] : 0.0f;
    reduce_scatter_step<16>(v, lane);
    reduce_scatter_step<8>(v, lane);
    reduce_scatter_step<4>(v, lane);
    reduce_scatter_step<2>(v, lane);
    reduce_scatter_step<1>(v, lane);
    if (lane < L) scratch[(r * kPartWarps + warp) * L + lane] = v[0];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nt * L; e += kPartThreads) {
    const int r = e / L, k = e - r * L;
    float v = 0.0f;
    for (int w = 0; w < kPartWarps; ++w) v += scratch[(r * kPartWarps + w) * L + k];
    part[(static_cast<int64_t>(t0 + r) * splits + s) * L + k] = v;
  }
}

// m[k] for k < rows from the partials of row t (splits added in order), in shared memory.
// The block first copies row t's partials into shared memory, all threads at once (one
// round trip to L2 where thread 0 used to walk the splits one load after another), then
// the sums run in the same order as before.
template <int MaxRows>
__device__ void mixes_from_partials(const float* part, int t, int splits, int W, int rows, float eps, float* m) {
  constexpr int L = MaxRows + 1;
  __shared__ float p[device::kHcMaxSplits * L];
  __shared__ float scale;
  const float* row = part + static_cast<int64_t>(t) * splits * L;
  for (int i = threadIdx.x; i < splits * L; i += blockDim.x) p[i] = row[i];
  __syncthreads();
  if (threadIdx.x == rows) {
    float ss = 0.0f;
    for (int s = 0; s < splits; ++s) ss += p[s * L + MaxRows];
    scale = 1.0f / sqrtf(ss / static_cast<float>(W) + eps);
  }
  float v = 0.0f;
  if (threadIdx.x < rows)
    for (int s = 0; s < splits; ++s) v += p[s * L + threadIdx.x];
  __syncthreads();
  if (threadIdx.x < rows) m[threadIdx.x] = v * scale;
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) hc_pre_kernel(HcParams p, const float* __restrict__ X, float* collapsed,
                                                          float* post, float* comb, int splits, bool bf16_out) {
  await_previous_grid();
  __shared__ float m[kMaxMixes];
  __shared__ float pre[kMaxStreams];
  const int n = p.n, H = p.hidden, W = n * H, t = blockIdx.x;
  const float* Xt = X + static_cast<int64_t>(t) * W;
  mixes_from_partials<kMaxMixes>(p.workspace, t, splits, W, (2 + n) * n, p.norm_eps, m);
  // Warp 0: lane e < n*n owns comb element (i, j) = (e / n, e % n); every row / column sum
  // is gathered with shuffles in the CPU's order (i or j ascending from 0), so each lane
  // computes exactly the CPU's sum, and the whole Sinkhorn runs in lock step (a single
  // thread doing it serially cost tens of microseconds per call).
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const float s0 = p.scale[0], s1 = p.scale[1], s2 = p.scale[2], eps = p.hc_eps;
    if (lane < n) {
      pre[lane] = sigmoid(__fadd_rn(__fmul_rn(m[lane], s0), p.base[lane])) + eps;
      post[t * n + lane] = 2.0f * sigmoid(__fadd_rn(__fmul_rn(m[n + lane], s1), p.base[n + lane]));
    }
    const int e = min(lane, n * n - 1), i = e / n, j = e - i * n;
    const unsigned full = 0xFFFFFFFFu;
    float v = __fadd_rn(__fmul_rn(m[2 * n + e], s2), p.base[2 * n + e]);
    // Loops unrolled to kMaxStreams, the terms past n skipped: the same sums in the same
    // order, the shuffles of one sum issued together. Term k of a row or column is lane
    // first + k * step (row i: i * n, 1; column j: j, n).
    auto lanes = [&](int first, int step, float (&o)[kMaxStreams]) {
#pragma unroll
      for (int k = 0; k < kMaxStreams; ++k) o[k] = __shfl_sync(full, v, first + min(k, n - 1) * step);
    };
    auto sum_of = [&](int first, int step) {
      float o[kMaxStreams];
      lanes(first, step, o);
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < kMaxStreams; ++k)
        if (k < n) s += o[k];
      return s;
    };
    float mx = -INFINITY;
    {
      float o[kMaxStreams];
      lanes(i * n, 1, o);
#pragma unroll
      for (int k = 0; k < kMaxStreams; ++k)
        if (k < n) mx = fmaxf(mx, o[k]);
    }
    v = expf(v - mx);
    v = v / sum_of(i * n, 1) + eps;
    auto norm_col = [&] {
      const float cs = sum_of(j, n) + eps;
      v = v / cs;
    };
    auto norm_row = [&] {
      const float rs = sum_of(i * n, 1) + eps;
      v = v / rs;
    };
    norm_col();
    for (int it = 1; it < p.sinkhorn_iters; ++it) {
      norm_row();
      norm_col();
    }
    if (lane < n * n) comb[static_cast<int64_t>(t) * n * n + lane] = v;
  }
  __syncthreads();
  collapse(n, H, Xt, pre, collapsed + static_cast<int64_t>(t) * H, bf16_out);
}

__global__ void __launch_bounds__(kThreads) hc_head_kernel(int n, int H, const float* __restrict__ fn,
                                                           const float* __restrict__ base, float scale, float hc_eps,
                                                           float norm_eps, const float* __restrict__ X, float* h,
                                                           bool bf16_out) {
  await_previous_grid();
  __shared__ float scratch[32 * kMaxStreams];
  __shared__ float m[kMaxStreams];
  __shared__ float pre[kMaxStreams];
  const int W = n * H, t = blockIdx.x;
  const float* Xt = X + static_cast<int64_t>(t) * W;
  row_mixes<kMaxStreams>(Xt, W, fn, n, norm_eps, m, scratch);
  if (threadIdx.x < n) pre[threadIdx.x] = sigmoid(__fadd_rn(__fmul_rn(m[threadIdx.x], scale), base[threadIdx.x])) + hc_eps;
  __syncthreads();
  collapse(n, H, Xt, pre, h + static_cast<int64_t>(t) * H, bf16_out);
}

// One thread per (t, d), for every stream j: out[t, j, d] = post[t, j] * y[t, d] +
// sum_i comb[t, i, j] * X[t, i, d] (i ascending, the CPU's order). The n values X[t, :, d] are
// read once for the n outputs (one thread per output read each n times).
__global__ void hc_post_kernel(int n, int H, const float* __restrict__ X, int64_t total, const float* __restrict__ y,
                               const float* __restrict__ post, const float* __restrict__ comb, float* __restrict__ out,
                               bool bf16_out) {
  await_previous_grid();
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % H, t = e / H;
    const float* c = comb + t * n * n;
    const float* Xt = X + t * n * H + d;
    float x[kMaxStreams];
#pragma unroll
    for (int i = 0; i < kMaxStreams; ++i) x[i] = i < n ? Xt[static_cast<int64_t>(i) * H] : 0.0f;
    const float yv = y[t * H + d];
    for (int j = 0; j < n; ++j) {
      float acc = __fmul_rn(post[t * n + j], yv);
#pragma unroll
      for (int i = 0; i < kMaxStreams; ++i)
        if (i < n) acc = __fadd_rn(acc, __fmul_rn(c[i * n + j], x[i]));
      out[(t * n + j) * H + d] = bf16_round_if(acc, bf16_out);
    }
  }
}

// One thread per output value: the streams in ascending order, then / n.
__global__ void hc_stream_mean_kernel(int n, int H, const float* __restrict__ X, int64_t total, float* __restrict__ out,
                                      int64_t ld_out) {
  await_previous_grid();
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % H, t = e / H;
    const float* Xt = X + t * n * H + d;
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, Xt[static_cast<int64_t>(i) * H]);
    out[t * ld_out + d] = __fdiv_rn(acc, static_cast<float>(n));
  }
}

void check_shape(const char* what, int n, int H, int R) {
  if (n < 1 || n > kMaxStreams) fail(ErrorKind::Usage, "cuda::{}: hc_mult {} is outside [1, {}]", what, n, kMaxStreams);
  if (H < 1) fail(ErrorKind::Usage, "cuda::{}: hidden size {} must be positive", what, H);
  if (R < 0) fail(ErrorKind::Usage, "cuda::{}: {} rows; expected >= 0", what, R);
}

}  // namespace

int hc_mix_splits(int width) { return device::hc_mix_splits(width); }

int64_t hc_pre_workspace_floats(int R, int n, int hidden) { return device::hc_pre_workspace_floats(R, n, hidden); }

void hc_pre(const HcParams& p, const float* X, int R, float* collapsed, float* post, float* comb, cudaStream_t stream,
            bool bf16_out) {
  check_shape("hc_pre", p.n, p.hidden, R);
  if (R == 0) return;
  if (p.fn == nullptr || p.base == nullptr || p.scale == nullptr) fail(ErrorKind::Usage, "cuda::hc_pre: null fn, base or scale");
  if (X == nullptr || collapsed == nullptr || post == nullptr || comb == nullptr) {
    fail(ErrorKind::Usage, "cuda::hc_pre: null X, collapsed, post or comb");
  }
  if (p.workspace == nullptr) fail(ErrorKind::Usage, "cuda::hc_pre: null workspace (hc_pre_workspace_floats)");
  const int W = p.n * p.hidden, splits = hc_mix_splits(W);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>((R + kPartRows - 1) / kPartRows));
  launch_kernel(mix_partial_kernel<kMaxMixes>, grid, kPartThreads, 0, stream,
                X, W, (W + splits - 1) / splits, p.fn, (2 + p.n) * p.n, R, p.workspace);
  launch_kernel(hc_pre_kernel, static_cast<unsigned>(R), kThreads, 0, stream,
                p, X, collapsed, post, comb, splits, bf16_out);
}

void hc_post(int n, int H, const float* X, int R, const float* y, const float* post, const float* comb, float* out,
             cudaStream_t stream, bool bf16_out) {
  check_shape("hc_post", n, H, R);
  if (R == 0) return;
  if (X == nullptr || y == nullptr || post == nullptr || comb == nullptr || out == nullptr) {
    fail(ErrorKind::Usage, "cuda::hc_post: null X, y, post, comb or out");
  }
  if (out == X) fail(ErrorKind::Usage, "cuda::hc_post: out must not alias X (every output reads all streams)");
  const int64_t total = static_cast<int64_t>(R) * H;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  launch_kernel(hc_post_kernel, static_cast<unsigned>(blocks), threads, 0, stream,
                n, H, X, total, y, post, comb, out, bf16_out);
}

void hc_head(int n, int H, const float* fn, const float* base, float scale, float hc_eps, float norm_eps, const float* X,
             int R, float* h, cudaStream_t stream, bool bf16_out) {
  check_shape("hc_head", n, H, R);
  if (R == 0) return;
  if (fn == nullptr || base == nullptr || X == nullptr || h == nullptr) fail(ErrorKind::Usage, "cuda::hc_head: null fn, base, X or h");
  launch_kernel(hc_head_kernel, static_cast<unsigned>(R), kThreads, 0, stream,
                n, H, fn, base, scale, hc_eps, norm_eps, X, h, bf16_out);
}

void hc_stream_mean(int n, int H, const float* X, int R, float* out, int64_t ld_out, cudaStream_t stream) {
  check_shape("hc_stream_mean", n, H, R);
  if (R == 0) return;
  if (X == nullptr || out == nullptr) fail(ErrorKind::Usage, "cuda::hc_stream_mean: null X or out");
  if (ld_out < H) fail(ErrorKind::Usage, "cuda::hc_stream_mean: ld_out {} < hidden size {}", ld_out, H);
  const int64_t total = static_cast<int64_t>(R) * H;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  launch_kernel(hc_stream_mean_kernel, static_cast<unsigned>(blocks), threads, 0, stream, n, H, X, total, out, ld_out);
}

}  // namespace kiln::ops::cuda
