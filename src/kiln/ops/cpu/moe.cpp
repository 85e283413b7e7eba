#include "kiln/ops/cpu/moe.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {

void swiglu(const float* g, const float* u, int64_t n, float limit, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float gv = g[i], uv = u[i];
    if (limit > 0.0f) {
      gv = std::min(gv, limit);
      uv = std::clamp(uv, -limit, limit);
    }
    out[i] = silu(gv) * uv;
  }
}

void moe_experts(const float* x, int64_t T, int64_t H, const int64_t* idx, int64_t K, int64_t E,
                 const ExpertFn& expert, float* ye) {
  std::vector<float> xg, yg;
  std::vector<std::pair<int64_t, int64_t>> hits;  // (token, slot)
  std::vector<int64_t> pairs;
  for (int64_t e = 0; e < E; ++e) {
    hits.clear();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        if (idx[t * K + k] == e) hits.emplace_back(t, k);
      }
    }
    if (hits.empty()) continue;
    const int64_t nrow = static_cast<int64_t>(hits.size());
    xg.resize(static_cast<size_t>(nrow * H));
    yg.resize(static_cast<size_t>(nrow * H));
    for (int64_t i = 0; i < nrow; ++i) {
      std::memcpy(xg.data() + i * H, x + hits[static_cast<size_t>(i)].first * H, static_cast<size_t>(H) * sizeof(float));
    }
    pairs.resize(hits.size());
    for (size_t i = 0; i < hits.size(); ++i) pairs[i] = hits[i].first * K + hits[i].second;
    expert(e, xg.data(), nrow, pairs.data(), yg.data());
    for (int64_t i = 0; i < nrow; ++i) {
      const auto [t, k] = hits[static_cast<size_t>(i)];
      std::memcpy(ye + (t * K + k) * H, yg.data() + i * H, static_cast<size_t>(H) * sizeof(float));
    }
  }
}

void moe_combine(const float* ye, const int64_t* idx, const float* wt, int64_t T, int64_t K, int64_t H,
                 const float* shared, float* out) {
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) order[static_cast<size_t>(k)] = k;
    const int64_t* it = idx + t * K;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return it[a] < it[b]; });
    float* o = out + t * H;
    std::fill(o, o + H, 0.0f);
    for (int64_t k : order) {
      const float* yr = ye + (t * K + k) * H;
      if (!wt) {
        for (int64_t d = 0; d < H; ++d) o[d] += yr[d];
        continue;
      }
      const float wv = wt[t * K + k];
      for (int64_t d = 0; d < H; ++d) o[d] += yr[d] * wv;
    }
  }
  if (shared) {
    for (int64_t i = 0; i < T * H; ++i) out[i] += shared[i];
  }
}

}  // namespace kiln::ops::cpu
