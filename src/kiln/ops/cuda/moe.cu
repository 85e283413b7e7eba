// MoE routing, SwiGLU and the weighted combine on the GPU, the maths of ops/cpu/moe_route.h
// and ops/cpu/moe.h (moe_experts, moe_combine). Routing is one warp per row: the scores live
// in shared memory and the top-K is K rounds of a warp arg-max (ties to the lowest
// expert id, already chosen experts skipped), which gives the CPU partial_sort's order.
#include <algorithm>

#include <cuda_bf16.h>

#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/cuda/row_reduce.cuh"

namespace kiln::ops::cuda {
namespace {

constexpr int kMaxExperts = 512;
constexpr int kMaxTopK = 8;
constexpr int kRouteWarps = 4;  // rows per routing block

// a is preferred over b: a real candidate (id >= 0) with a larger value, or an equal value
// and a lower id. A NaN value never wins against a held candidate, as with the CPU's >.
__device__ __forceinline__ bool route_better(float av, int ai, float bv, int bi) {
  if (ai < 0) return false;
  if (bi < 0) return true;
  return av > bv || (av == bv && ai < bi);
}

__global__ void moe_route_kernel(const int32_t* __restrict__ tok, int R, ScoringFunc f, const float* __restrict__ logits,
                                 int64_t ldl, int E, int K, const float* __restrict__ bias,
                                 const int32_t* __restrict__ tid2eid, float routed_scaling, int32_t* __restrict__ idx,
                                 float* __restrict__ wt) {
  await_previous_grid();
  __shared__ float scores[kRouteWarps][kMaxExperts];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * kRouteWarps + warp;
  if (r >= R) return;  // whole warps leave together; no block barrier below
  float* s = scores[warp];
  const float* lr = logits + static_cast<int64_t>(r) * ldl;
  if (f == ScoringFunc::Softmax) {
    // exp(x - max) / sum over the row; every lane ends with lane 0's sum (a butterfly
    // sum may round differently per lane).
    float m = lr[0];  // E >= 1
    for (int e = lane; e < E; e += 32) m = fmaxf(m, lr[e]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float part = 0.0f;
    for (int e = lane; e < E; e += 32) {
      s[e] = expf(lr[e] - m);
      part += s[e];
    }
    const float sum = __shfl_sync(0xffffffffu, warp_sum(part), 0);
    for (int e = lane; e < E; e += 32) s[e] = s[e] / sum;
  } else if (f == ScoringFunc::Sigmoid) {
    for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-lr[e]));  // cpu::sigmoid
  } else {
    for (int e = lane; e < E; e += 32) {
      const float x = lr[e];
      s[e] = sqrtf(x > 20.0f ? x : log1pf(expf(x)));  // sqrt(softplus), cpu::softplus
    }
  }
  __syncwarp();
  int chosen[kMaxTopK];
  if (tid2eid != nullptr) {
    const int64_t t = tok[r];
    for (int k = 0; k < K; ++k) chosen[k] = tid2eid[t * K + k];
  } else {
    for (int k = 0; k < K; ++k) {
      float bv = 0.0f;
      int bi = -1;
      for (int e = lane; e < E; e += 32) {
        bool taken = false;
        for (int q = 0; q < k; ++q) taken |= chosen[q] == e;
        const float v = s[e] + bias[e];
        if (!taken && route_better(v, e, bv, bi)) {
          bv = v;
          bi = e;
        }
      }
      warp_best(bv, bi, [](float v, int i, float b, int j) { return route_better(v, i, b, j); });
      // With a strict total order every lane already holds the same winner; lane 0's is
      // broadcast so NaN scores (no total order) cannot leave the lanes disagreeing.
      chosen[k] = __shfl_sync(0xffffffffu, bi, 0);
    }
  }
  if (lane == 0) {
    const bool renormalise = scoring_renormalises(f);
    float sum = 0.0f;
    for (int k = 0; k < K; ++k) sum += s[chosen[k]];
    sum += 1e-20f;
    for (int k = 0; k < K; ++k) {
      idx[static_cast<int64_t>(r) * K + k] = chosen[k];
      const float w = renormalise ? s[chosen[k]] / sum : s[chosen[k]];
      wt[static_cast<int64_t>(r) * K + k] = __fmul_rn(w, routed_scaling);
    }
  }
}

__global__ void swiglu_kernel(const float* g, const float* u, int64_t ld, int rows, int I, float limit,
                              const float* row_weight, bool bf16_out, float* out, int64_t ldo) {
  await_previous_grid();
  const int64_t total = static_cast<int64_t>(rows) * I;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / I, c = e % I;
    float gv = g[r * ld + c], uv = u[r * ld + c];
    if (limit > 0.0f) {
      gv = limit < gv ? limit : gv;                          // std::min(gv, limit)
      uv = uv < -limit ? -limit : (limit < uv ? limit : uv);  // std::clamp(uv, -limit, limit)
    }
    float v = __fmul_rn(gv / (1.0f + expf(-gv)), uv);
    if (row_weight != nullptr) v = __fmul_rn(v, row_weight[r]);
    v = bf16_round_if(v, bf16_out);
    out[r * ldo + c] = v;
  }
}

// grid (R, column chunks). The K terms are summed in ascending expert id (equal ids in k
// order), the order in which the CPU's expert loop adds them into a zeroed row.
__global__ void moe_combine_kernel(const float* __restrict__ y, int64_t ldy, const int32_t* __restrict__ idx,
                                   const float* __restrict__ wt, int K, int H, const float* __restrict__ shared,
                                   float* __restrict__ out, bool bf16_out) {
  await_previous_grid();
  __shared__ int order[kMaxTopK];
  const int64_t r = blockIdx.x;
  if (threadIdx.x == 0) {
    // stable insertion sort of k by idx[r, k]
    for (int k = 0; k < K; ++k) {
      int q = k;
      while (q > 0 && idx[r * K + order[q - 1]] > idx[r * K + k]) {
        order[q] = order[q - 1];
        --q;
      }
      order[q] = k;
    }
  }
  __syncthreads();
  const int d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= H) return;
  float acc = 0.0f;
  for (int q = 0; q < K; ++q) {
    const int k = order[q];
    const float yv = y[(r * K + k) * ldy + d];
    acc = __fadd_rn(acc, wt != nullptr ? __fmul_rn(yv, wt[r * K + k]) : yv);
  }
  if (shared != nullptr) acc = __fadd_rn(acc, shared[r * H + d]);
  out[r * H + d] = bf16_round_if(acc, bf16_out);
}

}  // namespace

void moe_route(const StepRows& rows, ScoringFunc f, const float* logits, int64_t ldl, int E, int K, const float* bias,
               const int32_t* tid2eid, float routed_scaling, int32_t* idx, float* wt, cudaStream_t stream) {
  if (rows.R < 0) fail(ErrorKind::Usage, "cuda::moe_route: {} rows; expected >= 0", rows.R);
  if (E < 1 || E > kMaxExperts) fail(ErrorKind::Usage, "cuda::moe_route: {} experts; expected 1..{}", E, kMaxExperts);
  if (K < 1 || K > kMaxTopK || K > E) {
    fail(ErrorKind::Usage, "cuda::moe_route: top-{} of {} experts; expected 1 <= K <= min({}, E)", K, E, kMaxTopK);
  }
  if (rows.R == 0) return;
  if (logits == nullptr || idx == nullptr || wt == nullptr) fail(ErrorKind::Usage, "cuda::moe_route: null logits, idx or wt");
  if (ldl < E) fail(ErrorKind::Usage, "cuda::moe_route: logits row stride {} is below the {} experts", ldl, E);
  if (tid2eid == nullptr && bias == nullptr) {
    fail(ErrorKind::Usage, "cuda::moe_route: neither tid2eid (hash routing) nor bias (score routing) given");
  }
  if (tid2eid != nullptr && rows.tok == nullptr) fail(ErrorKind::Usage, "cuda::moe_route: hash routing needs rows.tok");
  const unsigned blocks = static_cast<unsigned>((rows.R + kRouteWarps - 1) / kRouteWarps);
  launch_kernel(moe_route_kernel, blocks, 32 * kRouteWarps, 0, stream,
                rows.tok, rows.R, f, logits, ldl, E, K, bias, tid2eid, routed_scaling, idx, wt);
}

void swiglu(const float* g, const float* u, int64_t ld, int rows, int I, float limit, float* out, int64_t ldo,
            cudaStream_t stream, const float* row_weight, bool bf16_out) {
  if (rows < 0 || I < 0) fail(ErrorKind::Usage, "cuda::swiglu: {} rows of {} values; expected >= 0", rows, I);
  if (rows == 0 || I == 0) return;
  if (g == nullptr || u == nullptr || out == nullptr) fail(ErrorKind::Usage, "cuda::swiglu: null g, u or out");
  if (ld < I || ldo < I) fail(ErrorKind::Usage, "cuda::swiglu: row strides {} / {} are below the row length {}", ld, ldo, I);
  const int64_t total = static_cast<int64_t>(rows) * I;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  launch_kernel(swiglu_kernel, static_cast<unsigned>(blocks), threads, 0, stream,
                g, u, ld, rows, I, limit, row_weight, bf16_out, out, ldo);
}

void moe_combine(const float* y, int64_t ldy, const int32_t* idx, const float* wt, int R, int K, int H,
                 const float* shared, float* out, cudaStream_t stream, bool bf16_out) {
  if (R < 0 || H < 1) fail(ErrorKind::Usage, "cuda::moe_combine: {} rows of {} values; expected R >= 0, H > 0", R, H);
  if (K < 1 || K > kMaxTopK) fail(ErrorKind::Usage, "cuda::moe_combine: K = {}; expected 1..{}", K, kMaxTopK);
  if (R == 0) return;
  if (y == nullptr || idx == nullptr || out == nullptr) {
    fail(ErrorKind::Usage, "cuda::moe_combine: null y, idx or out");  // wt null: a plain sum
  }
  if (ldy < H) fail(ErrorKind::Usage, "cuda::moe_combine: y row stride {} is below H = {}", ldy, H);
  const int threads = 256;
  const unsigned chunks = static_cast<unsigned>((H + threads - 1) / threads);
  if (chunks > 65535) fail(ErrorKind::Usage, "cuda::moe_combine: H = {} is too large", H);
  launch_kernel(moe_combine_kernel, dim3(static_cast<unsigned>(R), chunks), threads, 0, stream,
                y, ldy, idx, wt, K, H, shared, out, bf16_out);
}

}  // namespace kiln::ops::cuda
