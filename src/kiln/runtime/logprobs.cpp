#include "kiln/runtime/logprobs.h"

#include <algorithm>
#include <cmath>

namespace kiln::runtime {

double log_sum_exp(std::span<const float> logits) {
  if (logits.empty()) return -INFINITY;
  const double mx = *std::max_element(logits.begin(), logits.end());
  if (!std::isfinite(mx)) return mx;
  // Terms are in (0, 1] with at least one 1: the double sum loses nothing that matters
  // (relative error ~V * 2^-53).
  double sum = 0.0;
  for (const float x : logits) sum += std::exp(static_cast<double>(x) - mx);
  return mx + std::log(sum);
}

std::vector<int32_t> top_ids(std::span<const float> logits, int n) {
  const size_t k = std::min(static_cast<size_t>(std::max(n, 0)), logits.size());
  std::vector<int32_t> best;  // sorted, best first
  best.reserve(k + 1);
  if (k == 0) return best;
  // Better: higher logit, or the same logit and a lower id. Ids arrive ascending, so an
  // id only displaces entries of strictly lower logit.
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    if (best.size() == k && !(x > logits[static_cast<size_t>(best.back())])) continue;
    auto at = std::upper_bound(best.begin(), best.end(), x,
                               [&](float v, int32_t id) { return v > logits[static_cast<size_t>(id)]; });
    best.insert(at, static_cast<int32_t>(i));
    if (best.size() > k) best.pop_back();
  }
  return best;
}

TokenLogprob token_logprob(std::span<const float> logits, int32_t id, int top_n) {
  const double lse = log_sum_exp(logits);
  TokenLogprob t;
  t.id = id;
  t.logprob = static_cast<double>(logits[static_cast<size_t>(id)]) - lse;
  for (const int32_t j : top_ids(logits, top_n)) t.top.push_back({j, static_cast<double>(logits[static_cast<size_t>(j)]) - lse});
  return t;
}

}  // namespace kiln::runtime
