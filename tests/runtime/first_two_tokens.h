// The speculative sampling tests (MTP and DSpark): many seeded requests of one prompt on an
// engine, their first two tokens counted against the main model's exact joint distribution
// p(t1) p(t2 | t1), and the drafts proposed and accepted along the way.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "kiln/model/forward.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/sampler.h"
#include "runtime/chi_square.h"

namespace kiln::runtime::test_stats {

using Joint = std::map<std::pair<int32_t, int32_t>, double>;

struct FirstTwo {
  Fit fit;
  int64_t outside = 0;  // first-two pairs the joint gives probability 0
  int64_t accepted = 0, proposed = 0;
};

// The main model's joint distribution of the first two sampled tokens after `prompt`:
// p(t1) p(t2 | t1) under `params`, pairs of probability 0 left out.
inline Joint first_two_joint(const model::Forward& f, const std::vector<int32_t>& prompt, const SamplingParams& params,
                             int64_t V) {
  std::vector<float> logits(static_cast<size_t>(V));
  model::DecodeState pre = f.new_state();
  if (prompt.size() > 1) f.step(pre, std::span(prompt).first(prompt.size() - 1), nullptr, nullptr);
  f.step(pre, std::span(prompt).last(1), logits.data(), nullptr);
  const auto p1 = sampling_distribution(logits, params);
  Joint joint;
  for (int32_t a = 0; a < V; ++a) {
    if (p1[static_cast<size_t>(a)] == 0.0) continue;
    model::DecodeState s2(pre);
    const int32_t t[1] = {a};
    f.step(s2, t, logits.data(), nullptr);
    const auto p2 = sampling_distribution(logits, params);
    for (int32_t b = 0; b < V; ++b)
      if (p2[static_cast<size_t>(b)] > 0.0) joint[{a, b}] = p1[static_cast<size_t>(a)] * p2[static_cast<size_t>(b)];
  }
  return joint;
}

// `samples` requests with seeds seed0, seed0 + 1, ...; each must produce max_tokens tokens.
inline FirstTwo sample_first_two(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params,
                                 int samples, int max_tokens, uint64_t seed0, const Joint& joint) {
  FirstTwo r;
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int s = 0; s < samples; ++s) {
    GenerationRequest q;
    q.prompt = prompt;
    q.max_tokens = max_tokens;
    q.sampling = params;
    q.sampling.seed = seed0 + static_cast<uint64_t>(s);
    hs.push_back(engine.submit(q));
    if (!hs.back()) {
      ADD_FAILURE() << "the engine refused request " << s;
      return r;
    }
  }
  std::map<std::pair<int32_t, int32_t>, int64_t> seen;
  for (const auto& h : hs) {
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
    const auto out = h->tokens();
    if (out.size() != static_cast<size_t>(max_tokens)) {
      ADD_FAILURE() << "a request gave " << out.size() << " tokens, expected " << max_tokens << ": " << h->error();
      continue;
    }
    const std::pair<int32_t, int32_t> key{out[0], out[1]};
    if (joint.count(key)) ++seen[key];
    else ++r.outside;
    const auto st = h->draft_stats();
    r.accepted += st.accepted_drafts;
    for (int64_t x : st.proposed) r.proposed += x;
  }
  std::vector<int64_t> counts;
  std::vector<double> probs;
  for (const auto& [key, pr] : joint) {
    counts.push_back(seen[key]);
    probs.push_back(pr);
  }
  r.fit = chi_square(counts, probs);
  return r;
}

}  // namespace kiln::runtime::test_stats
