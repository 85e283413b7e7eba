#include "kiln/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kiln::runtime {

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

namespace {

// The candidates Sampler::next draws from: ids sorted by logit (highest first, ties by
// lowest id, so top-k/top-p cut deterministically), cut by top-k and top-p, with their
// unnormalised weights exp((logit - max) / temperature). Returns the weights' sum.
double candidates(std::span<const float> logits, const SamplingParams& p, std::vector<int32_t>& ids,
                  std::vector<double>& prob) {
  const size_t n = logits.size();
  ids.resize(n);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  size_t keep = n;
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  prob.assign(keep, 0.0);
  const double mx = logits[static_cast<size_t>(ids[0])];
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((logits[static_cast<size_t>(ids[i])] - mx) / p.temperature);
    sum += prob[i];
  }
  if (p.top_p < 1.0f) {
    double acc = 0.0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      acc += prob[i] / sum;
      if (acc >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    prob.resize(keep);
    sum = std::accumulate(prob.begin(), prob.end(), 0.0);
  }
  ids.resize(keep);
  return sum;
}

}  // namespace

int32_t Sampler::next(std::span<const float> logits) {
  if (p_.temperature <= 0.0f) return argmax(logits);
  std::vector<int32_t> ids;
  std::vector<double> prob;
  const double sum = candidates(logits, p_, ids, prob);
  const size_t keep = ids.size();
  std::uniform_real_distribution<double> u(0.0, sum);
  double r = u(rng_), acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (r < acc) return ids[i];
  }
  return ids[keep - 1];
}

std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& p) {
  std::vector<double> out(logits.size(), 0.0);
  if (logits.empty()) return out;
  if (p.temperature <= 0.0f) {
    out[static_cast<size_t>(argmax(logits))] = 1.0;
    return out;
  }
  std::vector<int32_t> ids;
  std::vector<double> prob;
  const double sum = candidates(logits, p, ids, prob);
  for (size_t i = 0; i < ids.size(); ++i) out[static_cast<size_t>(ids[i])] = prob[i] / sum;
  return out;
}

int32_t sample_from(std::span<const double> probs, std::mt19937_64& rng) {
  double sum = 0.0;
  for (double v : probs) sum += v;
  std::uniform_real_distribution<double> u(0.0, sum);
  const double r = u(rng);
  double acc = 0.0;
  int32_t last = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0.0) continue;
    acc += probs[i];
    last = static_cast<int32_t>(i);
    if (r < acc) return last;
  }
  return last;
}

}  // namespace kiln::runtime
