// Next-token choice from logits. Temperature 0 is argmax with ties to the lowest id;
// otherwise softmax(logits / temperature) restricted by top-k and top-p (nucleus),
// drawn with a seeded generator so a seed reproduces a run.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace kiln::runtime {

struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;       // 0 = all
  float top_p = 1.0f;  // 1 = all
  uint64_t seed = 0;
};

int32_t argmax(std::span<const float> logits);  // lowest index among equal maxima

class Sampler {
 public:
  explicit Sampler(SamplingParams p) : p_(p), rng_(p.seed) {}
  int32_t next(std::span<const float> logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace kiln::runtime
