// Next-token choice from logits. Temperature 0 is argmax with ties to the lowest id;
// otherwise softmax(logits / temperature) restricted by top-k and top-p (nucleus),
// drawn with a seeded generator so a seed reproduces a run.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kiln::runtime {

struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;       // 0 = all
  float top_p = 1.0f;  // 1 = all
  uint64_t seed = 0;
};

int32_t argmax(std::span<const float> logits);  // lowest index among equal maxima

// The distribution Sampler::next draws from, over the whole vocabulary: softmax of
// logits / temperature over the top-k, cut to the top-p nucleus, renormalised; 0
// elsewhere. Temperature 0: one-hot at argmax. Speculative sampling applies it to both
// the target (p) and the draft (q) logits, so top-k / top-p act the same on both.
std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& p);

// A draw from probabilities (summing to ~1; the last non-zero entry absorbs rounding).
int32_t sample_from(std::span<const double> probs, std::mt19937_64& rng);

class Sampler {
 public:
  explicit Sampler(SamplingParams p) : p_(p), rng_(p.seed) {}
  int32_t next(std::span<const float> logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace kiln::runtime
