// Embedding gathers, the MTP block's broadcast add and the greedy arg-max. The gathers
// read the token ids from device memory (StepRows) so a captured graph replays them.
#include <algorithm>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/elementwise.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/row_reduce.cuh"

namespace kiln::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kArgmaxThreads = 1024;

// grid (R, column chunks): dst[r, i, d] = embed[tok[r], d] for i < n (n = 1: embed_rows).
__global__ void embed_kernel(const int32_t* __restrict__ tok, const float* __restrict__ embed, int H, int n,
                             float* __restrict__ dst) {
  await_previous_grid();
  const int64_t r = blockIdx.x;
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= H) return;
  const float v = embed[static_cast<int64_t>(tok[r]) * H + d];
  for (int i = 0; i < n; ++i) dst[(r * n + i) * H + d] = v;
}

__global__ void add_broadcast_kernel(const float* ep, const float* hp, int n, int H, int64_t total, float* X) {
  await_previous_grid();
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % H, r = e / (static_cast<int64_t>(n) * H);
    X[e] = ep[r * H + d] + hp[e];
  }
}

// a is preferred over b: a held candidate (id >= 0) beats none; a number beats NaN; a
// larger number wins; equal values (or both NaN) go to the lower id.
__device__ __forceinline__ bool argmax_better(float av, int ai, float bv, int bi) {
  if (ai < 0) return false;
  if (bi < 0) return true;
  const bool an = av != av, bn = bv != bv;
  if (an != bn) return bn;
  if (!an && av != bv) return av > bv;
  return ai < bi;
}

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const float* __restrict__ logits, int64_t ld,
                                                                const float* __restrict__ add, int64_t ld_add,
                                                                int V, int32_t* __restrict__ out) {
  await_previous_grid();
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* lr = logits + static_cast<int64_t>(blockIdx.x) * ld;
  const float* ar = add ? add + static_cast<int64_t>(blockIdx.x) * ld_add : nullptr;
  float bv = 0.0f;
  int bi = -1;
  // Each thread scans ascending indices, so among its own equal values it keeps the first.
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = ar ? lr[v] + ar[v] : lr[v];  // add: add_broadcast_kernel's one rounding
    if (argmax_better(x, v, bv, bi)) {
      bv = x;
      bi = v;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  warp_best(bv, bi, [](float v, int i, float b, int j) { return argmax_better(v, i, b, j); });
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (warp == 0) {
    bv = lane < nw ? sv[lane] : 0.0f;
    bi = lane < nw ? si[lane] : -1;
    warp_best(bv, bi, [](float v, int i, float b, int j) { return argmax_better(v, i, b, j); });
    if (lane == 0) out[blockIdx.x] = bi;
  }
}

void launch_embed(const char* what, const StepRows& rows, const float* embed, int H, int n, float* dst,
                  cudaStream_t stream) {
  if (rows.R < 0 || H < 1) fail(ErrorKind::Usage, "cuda::{}: {} rows of {} values; expected R >= 0, H > 0", what, rows.R, H);
  if (rows.R == 0) return;
  if (rows.tok == nullptr || embed == nullptr || dst == nullptr) fail(ErrorKind::Usage, "cuda::{}: null rows.tok, embed or output", what);
  const unsigned chunks = static_cast<unsigned>((H + kThreads - 1) / kThreads);
  if (chunks > 65535) fail(ErrorKind::Usage, "cuda::{}: H = {} is too large", what, H);
  launch_kernel(embed_kernel, dim3(static_cast<unsigned>(rows.R), chunks), kThreads, 0, stream,
                rows.tok, embed, H, n, dst);
}

}  // namespace

void embed_streams(const StepRows& rows, const float* embed, int H, int n, float* X, cudaStream_t stream) {
  if (n < 1) fail(ErrorKind::Usage, "cuda::embed_streams: {} streams; expected >= 1", n);
  launch_embed("embed_streams", rows, embed, H, n, X, stream);
}

void embed_rows(const StepRows& rows, const float* embed, int H, float* e, cudaStream_t stream) {
  launch_embed("embed_rows", rows, embed, H, 1, e, stream);
}

void add_broadcast_streams(const float* ep, const float* hp, int R, int n, int H, float* X, cudaStream_t stream) {
  if (R < 0 || n < 1 || H < 1) {
    fail(ErrorKind::Usage, "cuda::add_broadcast_streams: R = {}, n = {}, H = {}; expected R >= 0, n > 0, H > 0", R, n, H);
  }
  if (R == 0) return;
  if (ep == nullptr || hp == nullptr || X == nullptr) fail(ErrorKind::Usage, "cuda::add_broadcast_streams: null ep, hp or X");
  const int64_t total = static_cast<int64_t>(R) * n * H;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  launch_kernel(add_broadcast_kernel, static_cast<unsigned>(blocks), kThreads, 0, stream, ep, hp, n, H, total, X);
}

void argmax_rows(const float* logits, int64_t ld, int R, int V, int32_t* out, cudaStream_t stream) {
  if (R < 0 || V < 1) fail(ErrorKind::Usage, "cuda::argmax_rows: {} rows of {} logits; expected R >= 0, V > 0", R, V);
  if (R == 0) return;
  if (logits == nullptr || out == nullptr) fail(ErrorKind::Usage, "cuda::argmax_rows: null logits or out");
  if (ld < V) fail(ErrorKind::Usage, "cuda::argmax_rows: row stride {} is below V = {}", ld, V);
  launch_kernel(argmax_kernel, static_cast<unsigned>(R), kArgmaxThreads, 0, stream, logits, ld, nullptr, 0, V, out);
}

void argmax_rows_of_sum(const float* a, int64_t lda, const float* b, int64_t ldb, int R, int V, int32_t* out,
                        cudaStream_t stream) {
  if (R < 0 || V < 1) fail(ErrorKind::Usage, "cuda::argmax_rows_of_sum: {} rows of {} logits; expected R >= 0, V > 0", R, V);
  if (R == 0) return;
  if (a == nullptr || b == nullptr || out == nullptr) fail(ErrorKind::Usage, "cuda::argmax_rows_of_sum: null a, b or out");
  if (lda < V || ldb < V) fail(ErrorKind::Usage, "cuda::argmax_rows_of_sum: row strides {} and {}; V = {}", lda, ldb, V);
  launch_kernel(argmax_kernel, static_cast<unsigned>(R), kArgmaxThreads, 0, stream, a, lda, b, ldb, V, out);
}

}  // namespace kiln::ops::cuda
