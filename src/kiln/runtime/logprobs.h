// Log-probabilities of tokens under one row of logits, as OpenAI's `logprobs` report them:
// the log-softmax of the raw logits (the model's distribution before temperature, top-k
// and top-p; vLLM's default "raw_logprobs"), computed on the host in double precision,
// with the top-N alternatives in the order a sort by logit gives (highest first, ties to
// the lowest id, as argmax).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kiln::runtime {

// The most alternatives a request may ask for (OpenAI's and vLLM's default limit).
inline constexpr int kMaxLogprobs = 20;

struct TopLogprob {
  int32_t id = 0;
  double logprob = 0.0;
};

// One token's entry: its own log-probability and the top-N of the row it was drawn from.
struct TokenLogprob {
  int32_t id = 0;
  double logprob = 0.0;
  std::vector<TopLogprob> top;
};

// log(sum(exp(logits))): the maximum plus the log of a double sum of exp(x - max).
double log_sum_exp(std::span<const float> logits);

// The N ids of highest logit, highest first, ties to the lowest id (N <= logits.size()).
std::vector<int32_t> top_ids(std::span<const float> logits, int n);

// Token `id`'s entry under `logits`, with the top `top_n` (0: none) alternatives.
TokenLogprob token_logprob(std::span<const float> logits, int32_t id, int top_n);

}  // namespace kiln::runtime
