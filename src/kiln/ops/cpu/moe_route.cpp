#include "kiln/ops/cpu/moe_route.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {
namespace {

// The scores of one row, in place: exp(x - max) / sum in expert order for softmax.
void score_row(ScoringFunc f, float* s, int64_t E) {
  switch (f) {
    case ScoringFunc::SqrtSoftplus:
      for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(softplus(s[e]));
      break;
    case ScoringFunc::Sigmoid:
      for (int64_t e = 0; e < E; ++e) s[e] = sigmoid(s[e]);
      break;
    case ScoringFunc::Softmax: {
      float m = s[0];
      for (int64_t e = 1; e < E; ++e) m = std::max(m, s[e]);
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) {
        s[e] = std::exp(s[e] - m);
        sum += s[e];
      }
      for (int64_t e = 0; e < E; ++e) s[e] /= sum;
      break;
    }
  }
}

}  // namespace

void moe_route(ScoringFunc f, const float* logits, int64_t T, int64_t E, int64_t K, const float* bias,
               const int32_t* tid2eid, const int32_t* tokens, float routed_scaling, int64_t* idx, float* wt) {
  std::vector<float> s(static_cast<size_t>(E)), biased(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    std::copy(logits + t * E, logits + (t + 1) * E, s.begin());
    score_row(f, s.data(), E);
    int64_t* it = idx + t * K;
    if (tid2eid != nullptr) {
      for (int64_t k = 0; k < K; ++k) it[k] = tid2eid[static_cast<int64_t>(tokens[t]) * K + k];
    } else {
      // top-K of score + bias (selection only), exact ties to the lowest expert id
      for (int64_t e = 0; e < E; ++e) biased[static_cast<size_t>(e)] = s[static_cast<size_t>(e)] + bias[e];
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        const float va = biased[static_cast<size_t>(a)], vb = biased[static_cast<size_t>(b)];
        return va > vb || (va == vb && a < b);
      });
      std::copy(order.begin(), order.begin() + K, it);
    }
    float* w = wt + t * K;
    if (scoring_renormalises(f)) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += s[static_cast<size_t>(it[k])];
      sum += 1e-20f;
      for (int64_t k = 0; k < K; ++k) w[k] = (s[static_cast<size_t>(it[k])] / sum) * routed_scaling;
    } else {
      for (int64_t k = 0; k < K; ++k) w[k] = s[static_cast<size_t>(it[k])] * routed_scaling;
    }
  }
}

}  // namespace kiln::ops::cpu
