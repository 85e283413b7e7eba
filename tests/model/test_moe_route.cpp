// MoE routing (ops/cpu/moe_route.h) against DeepSeek-V4's Gate (inference/model.py, class
// Gate) restated here in double precision, for every score function, on score-routed and
// hash-routed rows: which experts (in descending order of score + bias, exact ties to the
// lowest id), and how the weights are normalised and scaled. And the CPU forward routes
// with the config's score function (the logits change with it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kiln/model/forward.h"
#include "kiln/ops/cpu/moe_route.h"
#include "random_weights.h"

namespace kiln {
namespace {

// Gate.forward, restated:
//   scores = linear(x, weight)                                   (given: logits)
//   scores = softmax(scores) | sigmoid(scores) | sqrt(softplus(scores))
//   original_scores = scores; scores += bias                      (score layers only)
//   indices = tid2eid[input_ids] (hash layers) | scores.topk(K)
//   weights = original_scores.gather(indices)
//   if score_func != "softmax": weights /= weights.sum()
//   weights *= route_scale
// torch's softplus has threshold 20 (x > 20 gives x). torch.topk's order among exact ties
// is unspecified; kiln takes the lowest expert id first, and so does this restatement.
struct GateOut {
  std::vector<int64_t> idx;
  std::vector<double> wt;
};

GateOut deepseek_gate(ScoringFunc f, const float* logits, int64_t E, int64_t K, const float* bias,
                      const int32_t* tid2eid_row, double route_scale) {
  std::vector<double> s(static_cast<size_t>(E));
  if (f == ScoringFunc::Softmax) {
    double m = logits[0], sum = 0.0;
    for (int64_t e = 0; e < E; ++e) m = std::max(m, static_cast<double>(logits[e]));
    for (int64_t e = 0; e < E; ++e) sum += std::exp(logits[e] - m);
    for (int64_t e = 0; e < E; ++e) s[static_cast<size_t>(e)] = std::exp(logits[e] - m) / sum;
  } else {
    for (int64_t e = 0; e < E; ++e) {
      const double x = logits[e];
      s[static_cast<size_t>(e)] = f == ScoringFunc::Sigmoid ? 1.0 / (1.0 + std::exp(-x))
                                                            : std::sqrt(x > 20.0 ? x : std::log1p(std::exp(x)));
    }
  }
  GateOut g;
  if (tid2eid_row != nullptr) {
    for (int64_t k = 0; k < K; ++k) g.idx.push_back(tid2eid_row[k]);
  } else {
    std::vector<double> biased(s);
    for (int64_t e = 0; e < E; ++e) biased[static_cast<size_t>(e)] += bias[e];
    std::vector<int64_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return biased[static_cast<size_t>(a)] > biased[static_cast<size_t>(b)]; });
    g.idx.assign(order.begin(), order.begin() + K);
  }
  double sum = 0.0;
  for (int64_t e : g.idx) {
    g.wt.push_back(s[static_cast<size_t>(e)]);
    sum += s[static_cast<size_t>(e)];
  }
  for (double& w : g.wt) {
    if (f != ScoringFunc::Softmax) w /= sum;
    w *= route_scale;
  }
  return g;
}

std::vector<float> uniform(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

constexpr ScoringFunc kFuncs[] = {ScoringFunc::SqrtSoftplus, ScoringFunc::Softmax, ScoringFunc::Sigmoid};

TEST(MoeRoute, ScoreRoutingIsDeepSeeksGate) {
  const int64_t E = 24, K = 6, T = 7;
  const float rsf = 2.5f;
  std::vector<float> logits = uniform(static_cast<size_t>(T * E), -6.0f, 6.0f, 1);
  std::vector<float> bias = uniform(static_cast<size_t>(E), -0.3f, 0.3f, 2);
  // Row 0: equal logits, bias equal on the even ids -> an exact tie, broken to the lowest
  // even ids. Row 1: softplus' x > 20 branch on one expert, the others low.
  for (int64_t e = 0; e < E; ++e) logits[static_cast<size_t>(e)] = 0.7f;
  for (int64_t e = 0; e < E; e += 2) bias[static_cast<size_t>(e)] = 0.5f;
  for (int64_t e = 0; e < E; ++e) logits[static_cast<size_t>(E + e)] = e == 5 ? 23.0f : -6.0f;
  for (ScoringFunc f : kFuncs) {
    SCOPED_TRACE(std::string(scoring_func_name(f)));
    std::vector<int64_t> idx(static_cast<size_t>(T * K), -1);
    std::vector<float> wt(static_cast<size_t>(T * K), -1.0f);
    ops::cpu::moe_route(f, logits.data(), T, E, K, bias.data(), nullptr, nullptr, rsf, idx.data(), wt.data());
    for (int64_t t = 0; t < T; ++t) {
      const GateOut want = deepseek_gate(f, logits.data() + t * E, E, K, bias.data(), nullptr, rsf);
      double wsum = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t * K + k);
        EXPECT_EQ(idx[i], want.idx[static_cast<size_t>(k)]) << "row " << t << " slot " << k;
        EXPECT_NEAR(wt[i], want.wt[static_cast<size_t>(k)], 1e-6 * want.wt[static_cast<size_t>(k)]) << "row " << t;
        wsum += wt[i];
      }
      // Renormalised weights sum to route_scale; softmax probabilities of K of 24 experts do
      // not (except in row 1, where one expert holds almost all the mass).
      if (f == ScoringFunc::Softmax) {
        if (t != 1) EXPECT_LT(wsum, rsf * 0.999) << "row " << t;
      } else {
        EXPECT_NEAR(wsum, rsf, 1e-5) << "row " << t;
      }
    }
    for (int64_t k = 0; k < K; ++k) EXPECT_EQ(idx[static_cast<size_t>(k)], 2 * k);  // the tie row
    EXPECT_EQ(idx[static_cast<size_t>(K)], 5);                                     // the x > 20 row
  }
}

TEST(MoeRoute, HashRoutingIsDeepSeeksGate) {
  const int64_t E = 16, K = 4, T = 6, vocab = 11;
  const float rsf = 1.5f;
  const std::vector<float> logits = uniform(static_cast<size_t>(T * E), -5.0f, 5.0f, 3);
  std::vector<int32_t> tid2eid(static_cast<size_t>(vocab * K));
  std::mt19937 g(4);
  for (int32_t& e : tid2eid) e = static_cast<int32_t>(g() % E);
  const std::vector<int32_t> tokens = {3, 10, 0, 3, 7, 1};
  for (ScoringFunc f : kFuncs) {
    SCOPED_TRACE(std::string(scoring_func_name(f)));
    std::vector<int64_t> idx(static_cast<size_t>(T * K), -1);
    std::vector<float> wt(static_cast<size_t>(T * K), -1.0f);
    ops::cpu::moe_route(f, logits.data(), T, E, K, nullptr, tid2eid.data(), tokens.data(), rsf, idx.data(), wt.data());
    for (int64_t t = 0; t < T; ++t) {
      const int32_t* row = tid2eid.data() + tokens[static_cast<size_t>(t)] * K;
      const GateOut want = deepseek_gate(f, logits.data() + t * E, E, K, nullptr, row, rsf);
      for (int64_t k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t * K + k);
        EXPECT_EQ(idx[i], want.idx[static_cast<size_t>(k)]) << "row " << t;
        EXPECT_NEAR(wt[i], want.wt[static_cast<size_t>(k)], 1e-6 * want.wt[static_cast<size_t>(k)]) << "row " << t;
      }
    }
  }
}

// The forward takes the score function from the config: each gives other logits (on a
// model with a hash layer and score layers, and an MTP block).
TEST(MoeRoute, TheForwardRoutesWithTheConfiguredScoreFunction) {
  ModelConfig c = test::tiny_forward_config({0, 4, 16}, /*num_hash_layers=*/1);
  std::vector<int32_t> tok(12);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 29 + 3) % static_cast<size_t>(c.vocab_size));
  std::vector<std::vector<float>> out;
  for (ScoringFunc f : kFuncs) {
    c.scoring_func = f;
    const model::Weights w = test::random_weights(c, 7);
    model::Forward fw(w, 1);
    auto st = fw.new_state();
    std::vector<float> logits(tok.size() * static_cast<size_t>(c.vocab_size));
    fw.step(st, tok, logits.data(), nullptr);
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
    out.push_back(std::move(logits));
  }
  EXPECT_NE(out[0], out[1]);
  EXPECT_NE(out[0], out[2]);
  EXPECT_NE(out[1], out[2]);
}

}  // namespace
}  // namespace kiln
