#include "kiln/runtime/speculative.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln::runtime {

namespace {

std::span<const float> row(std::span<const float> m, int64_t i, int64_t width) {
  return m.subspan(static_cast<size_t>(i * width), static_cast<size_t>(width));
}

}  // namespace

Verdict verify_greedy(std::span<const float> target_logits, int64_t vocab, std::span<const int32_t> drafts) {
  const int K = static_cast<int>(drafts.size());
  if (static_cast<int64_t>(target_logits.size()) != (K + 1) * vocab) {
    fail(ErrorKind::Usage, "verify_greedy: {} logits for {} drafts of vocabulary {}", target_logits.size(), K, vocab);
  }
  Verdict v;
  while (v.accepted < K && argmax(row(target_logits, v.accepted, vocab)) == drafts[static_cast<size_t>(v.accepted)]) {
    ++v.accepted;
  }
  v.next = argmax(row(target_logits, v.accepted, vocab));
  return v;
}

Verdict verify_greedy(std::span<const int32_t> target_argmax, std::span<const int32_t> drafts) {
  const int K = static_cast<int>(drafts.size());
  if (static_cast<int>(target_argmax.size()) != K + 1) {
    fail(ErrorKind::Usage, "verify_greedy: {} target rows for {} drafts", target_argmax.size(), K);
  }
  Verdict v;
  while (v.accepted < K && target_argmax[static_cast<size_t>(v.accepted)] == drafts[static_cast<size_t>(v.accepted)]) ++v.accepted;
  v.next = target_argmax[static_cast<size_t>(v.accepted)];
  return v;
}

Verdict verify_sampled(std::span<const float> target_logits, int64_t vocab, const std::vector<std::vector<double>>& q,
                       std::span<const int32_t> drafts, const SamplingParams& params, std::mt19937_64& rng) {
  const int K = static_cast<int>(drafts.size());
  const bool point = q.empty();
  if (static_cast<int64_t>(target_logits.size()) != (K + 1) * vocab || (!point && static_cast<int>(q.size()) != K)) {
    fail(ErrorKind::Usage, "verify_sampled: {} logits and {} draft distributions for {} drafts of vocabulary {}",
         target_logits.size(), q.size(), K, vocab);
  }
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Verdict v;
  for (int i = 0; i < K; ++i) {
    const std::vector<double> p = sampling_distribution(row(target_logits, i, vocab), params);
    const size_t d = static_cast<size_t>(drafts[static_cast<size_t>(i)]);
    // q(d): 1 for a point mass, else > 0 since d was drawn from q.
    const double qd = point ? 1.0 : q[static_cast<size_t>(i)][d];
    // Accept with probability min(1, p(d) / q(d)).
    if (unit(rng) * qd < p[d]) {
      ++v.accepted;
      continue;
    }
    // Rejected: draw from the residual max(0, p - q), normalised (a point mass at d leaves
    // p with d removed).
    std::vector<double> r(p.size());
    double sum = 0.0;
    for (size_t x = 0; x < p.size(); ++x) {
      r[x] = point ? (x == d ? 0.0 : p[x]) : std::max(0.0, p[x] - q[static_cast<size_t>(i)][x]);
      sum += r[x];
    }
    // sum == 0 means p == q up to rounding, where a rejection has probability ~0; p
    // itself is then the residual's limit.
    v.next = sample_from(sum > 0.0 ? std::span<const double>(r) : std::span<const double>(p), rng);
    return v;
  }
  v.next = sample_from(sampling_distribution(row(target_logits, K, vocab), params), rng);
  return v;
}

}  // namespace kiln::runtime
