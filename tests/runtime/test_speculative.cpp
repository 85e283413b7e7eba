// Exact MTP speculative decoding (runtime/speculative.h):
//  * temperature 0: for K = 1..4, 256 tokens identical to plain greedy decoding on both
//    transformers fixtures (both checkpoint layouts) and on two artifact flavours (DeepSeek
//    native FP8 + MXFP4, and W4A16 + FP8 with a BF16 MTP block that here uses CSA
//    attention, so the MTP's own compressors are rolled back too), across many CSA / HCA
//    window closings (compress rates 4, 8, 16; windows 8 and 16);
//  * with drafts forced to every accept length 0..K, the decoder's main and MTP states
//    equal plain sequential feeding of the same tokens after every round, field by field;
//  * temperature > 0: chi-square goodness of fit of the rejection sampler on a tiny
//    vocabulary (every output position, with and without top-k / top-p), and of the first
//    two speculatively sampled tokens of a real model against its exact distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "kiln/core/error.h"
#include "kiln/io/npy.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/speculative.h"
#include "runtime/chi_square.h"
#include "runtime/first_two_tokens.h"
#include "support/artifacts.h"

namespace kiln::runtime {
namespace {

namespace fs = std::filesystem;
using namespace test_stats;
const fs::path kFixtures = fs::path(KILN_TEST_DATA_DIR) / "fixtures";


TEST(ChiSquare, CriticalValuesMatchTables) {
  // Standard table values: chi2_{0.95}(1) = 3.841, chi2_{0.95}(5) = 11.070,
  // chi2_{0.99}(10) = 23.209, chi2_{0.999}(8) = 26.124, chi2_{0.5}(2) = 1.386.
  EXPECT_NEAR(chi2_sf(3.841459, 1), 0.05, 1e-6);
  EXPECT_NEAR(chi2_sf(11.070498, 5), 0.05, 1e-6);
  EXPECT_NEAR(chi2_sf(23.209251, 10), 0.01, 1e-6);
  EXPECT_NEAR(chi2_sf(26.124482, 8), 0.001, 1e-7);
  EXPECT_NEAR(chi2_sf(1.386294, 2), 0.5, 1e-6);
  EXPECT_NEAR(chi2_sf(150.0, 100), 0.000894, 2e-5);
}

// ---- models -----------------------------------------------------------------------------

// Test artifacts store quantized weights with non-negative codes (finite e4m3 / e2m1 from
// masked random bytes); flipping sign bits at random gives the model varied outputs.
void randomise_signs(test::ArtifactSpec& spec) {
  std::mt19937_64 g(2026);
  for (auto& t : spec.tensors) {
    const bool weight = t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0;
    const bool packed = t.name.size() > 14 && t.name.compare(t.name.size() - 14, 14, ".weight_packed") == 0;
    uint8_t mask = 0;
    if (weight && t.dtype == DType::F8_E4M3) mask = 0x80;                              // FP8 sign
    if (weight && (t.dtype == DType::U8 || t.dtype == DType::I8)) mask = 0x88;         // FP4 nibble signs
    if (packed) mask = 0x88;                                                            // int4 nibble top bits
    if (!mask) continue;
    for (auto& b : t.bytes) b ^= static_cast<std::byte>(g() & mask);
  }
}

struct Models {
  test::TempDir dir{"kiln-spec"};
  std::map<std::string, std::unique_ptr<LoadedModel>> loaded;

  const LoadedModel& get(const std::string& name) {
    auto it = loaded.find(name);
    if (it != loaded.end()) return *it->second;
    fs::path path;
    if (name.rfind("tiny_", 0) == 0) {
      path = kFixtures / name;
    } else {
      auto cfg = test::tiny_config();
      test::Layout layout = test::Layout::Native;
      if (name == "w4a16-fp8-mtp-csa") {
        layout = test::Layout::W4A16Fp8Mtp;
        cfg["compress_ratios"] = {0, 4, 16, 4, 4};  // the MTP block with CSA attention
      } else if (name == "native-fp8-mxfp4") {
        cfg["compress_ratios"] = {4, 16, 0, 4, 0};
        cfg["sliding_window"] = 8;
      } else {
        ADD_FAILURE() << "unknown model " << name;
      }
      auto spec = test::make_spec(layout, cfg, 3);
      randomise_signs(spec);
      path = dir.path() / name;
      test::write_spec(spec, path);
    }
    auto m = load_model(path, 1, nullptr);
    return *(loaded[name] = std::move(m));
  }
};
Models* g_models = nullptr;

class Env : public ::testing::Environment {
 public:
  void SetUp() override { g_models = new Models; }
  void TearDown() override {
    delete g_models;
    g_models = nullptr;
  }
};
const auto* const g_env = ::testing::AddGlobalTestEnvironment(new Env);

std::vector<int32_t> prompt_of(const LoadedModel& m, size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> p(n);
  for (auto& t : p) t = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(2, m.config.vocab_size - 1)(g));
  return p;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr int kGenerate = 96;  // sanitizer builds: same checks, shorter runs
#else
constexpr int kGenerate = 256;
#endif

// ---- temperature 0 ----------------------------------------------------------------------

class GreedyExact : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyExact, SameTokensAsPlainGreedyForEveryK) {
  const LoadedModel& m = g_models->get(GetParam());
  const auto& f = *m.forward;
  const auto prompt = prompt_of(m, 7, 1);
  const SamplingParams greedy;
  const GenerateResult plain = generate_plain(f, prompt, kGenerate, greedy, -1);
  ASSERT_EQ(plain.tokens.size(), static_cast<size_t>(kGenerate));
  // The model is not degenerate, and its logits stay finite over the whole run.
  EXPECT_GE(std::set<int32_t>(plain.tokens.begin(), plain.tokens.end()).size(), 8u);
  {
    std::vector<int32_t> all(prompt);
    all.insert(all.end(), plain.tokens.begin(), plain.tokens.end());
    std::vector<float> logits(all.size() * static_cast<size_t>(m.config.vocab_size));
    auto st = f.new_state();
    f.step(st, all, logits.data(), nullptr);
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  }
  for (int k = 1; k <= kMaxDrafts; ++k) {
    const GenerateResult spec = generate_speculative(f, prompt, kGenerate, greedy, k, -1);
    EXPECT_EQ(spec.tokens, plain.tokens) << GetParam() << " k=" << k;
    const DraftStats& s = spec.stats;
    EXPECT_EQ(s.emitted + 1, kGenerate);
    std::string rates;
    for (size_t i = 0; i < s.proposed.size(); ++i) rates += fmt::format(" {}/{}", s.accepted[i], s.proposed[i]);
    std::printf("[ measured ] %s k=%d: accepted/proposed per position:%s; mean accepted length %.3f\n",
                GetParam().c_str(), k, rates.c_str(), s.mean_accepted_length());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GreedyExact,
                         ::testing::Values("tiny_a/native", "tiny_a/hf", "tiny_b/native", "tiny_b/hf",
                                           "native-fp8-mxfp4", "w4a16-fp8-mtp-csa"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// Drafts forced to accept exactly r of K (r random): at the start of every round the
// sequence's state (main model and MTP block) equals plain sequential feeding of the same
// tokens: the main model fed token by token, the MTP block fed row by row (main streams
// at p, token p+1). Emitted tokens equal plain greedy. Runs on the engine (the only
// implementation of the round) over the CPU backend, whose slot state the hooks read.
class EveryAcceptLength : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryAcceptLength, StateAfterEachRoundEqualsSequentialFeeding) {
  const LoadedModel& m = g_models->get(GetParam());
  const auto& f = *m.forward;
  const auto& c = m.config;
  const int64_t S = c.hc_mult * c.hidden_size;
  const auto prompt = prompt_of(m, 5, 2);
  const int total = kGenerate / 2;
  const GenerateResult plain = generate_plain(f, prompt, total + 8, {}, -1);
  std::vector<int32_t> truth(prompt);  // prompt + plain greedy continuation
  truth.insert(truth.end(), plain.tokens.begin(), plain.tokens.end());

  for (int k : {2, 4}) {
    std::mt19937_64 g(static_cast<uint64_t>(k));
    CpuBackend backend(f, {.max_slots = 1});
    std::vector<int> forced_counts(static_cast<size_t>(k + 1), 0);
    // Plain sequential reference, extended as the rounds go.
    auto ref = f.new_state();
    std::vector<float> h(static_cast<size_t>(S));
    auto extend_ref = [&](int64_t n) {  // main fed truth[0..n), MTP rows 0..n-1
      while (ref.length() < n) {
        const int64_t p = ref.length();
        f.step(ref, std::span(truth).subspan(static_cast<size_t>(p), 1), nullptr, h.data());
        f.mtp_step(ref, 0, h, std::span(truth).subspan(static_cast<size_t>(p + 1), 1), nullptr, nullptr);
      }
    };
    int rounds_checked = 0;
    EngineOptions eo;
    eo.max_batch = 1;
    eo.mtp = k;
    // Round start (drafts about to be made), N = tokens - 1 committed positions: the MTP
    // block has fed exactly N rows; the main model may still hold the last round's
    // rejected rows past N (the next pass feeds from N, which rolls them back), so the
    // comparison is of the state rolled back to N.
    eo.round_hook = [&](int slot, int64_t n) {
      model::DecodeState st(backend.state(slot));
      ASSERT_EQ(st.mtp_length(0), n);
      ASSERT_GE(st.length(), n);
      ASSERT_LE(st.length(), n + k);
      f.truncate(st, n);
      extend_ref(n);
      ASSERT_EQ(st.difference(ref), "") << GetParam() << " k=" << k << " at length " << n;
      ++rounds_checked;
    };
    eo.draft_hook = [&](int64_t first, std::span<int32_t> drafts) {
      const int r = static_cast<int>(std::uniform_int_distribution<int>(0, static_cast<int>(drafts.size()))(g));
      ++forced_counts[static_cast<size_t>(r)];
      for (size_t i = 0; i < drafts.size(); ++i) {
        const int32_t want = truth[static_cast<size_t>(first) + i];
        // the true continuation for r drafts, then a wrong token
        drafts[i] = static_cast<int>(i) < r ? want : static_cast<int32_t>((want + 1 + i) % c.vocab_size);
      }
    };
    Engine engine(backend, eo);
    GenerationRequest req;
    req.prompt = prompt;
    req.max_tokens = total;
    req.mtp = k;
    auto hd = engine.submit(req);
    while (!hd->finished()) hd->wait_tokens(0, std::chrono::milliseconds(50));
    EXPECT_EQ(hd->tokens(), std::vector<int32_t>(truth.begin() + static_cast<int64_t>(prompt.size()),
                                                 truth.begin() + static_cast<int64_t>(prompt.size()) + total))
        << GetParam() << " k=" << k;
    EXPECT_GT(rounds_checked, total / (k + 1));
    for (int r = 0; r <= k; ++r) EXPECT_GT(forced_counts[static_cast<size_t>(r)], 0) << "accept length " << r;
    // Accepted counts are at least what was forced (a wrong token may still match).
    EXPECT_GE(hd->draft_stats().accepted_drafts, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EveryAcceptLength, ::testing::Values("tiny_b/native", "w4a16-fp8-mtp-csa"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

TEST(Speculative, StopsLikePlainAtEosAndMaxTokens) {
  const LoadedModel& m = g_models->get("tiny_a/native");
  const auto& f = *m.forward;
  const auto prompt = prompt_of(m, 4, 3);
  const GenerateResult plain = generate_plain(f, prompt, 40, {}, -1);
  for (int n : {0, 1, 2, 3, 5, 9}) {
    for (int k : {1, 4}) {
      const GenerateResult s = generate_speculative(f, prompt, n, {}, k, -1);
      EXPECT_EQ(s.tokens, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + n)) << n << " " << k;
    }
  }
  // Stop at the first occurrence of a token seen mid-run.
  const int32_t eos = plain.tokens[17];
  const auto first = std::find(plain.tokens.begin(), plain.tokens.end(), eos);
  const std::vector<int32_t> want(plain.tokens.begin(), first + 1);
  const GenerateResult pe = generate_plain(f, prompt, 40, {}, eos);
  EXPECT_EQ(pe.tokens, want);
  EXPECT_EQ(pe.stop, "eos");
  for (int k = 1; k <= 4; ++k) {
    const GenerateResult se = generate_speculative(f, prompt, 40, {}, k, eos);
    EXPECT_EQ(se.tokens, want) << k;
    EXPECT_EQ(se.stop, "eos");
  }
}

TEST(Speculative, RejectsBadUse) {
  const LoadedModel& m = g_models->get("tiny_a/native");
  const auto prompt = prompt_of(m, 4, 1);
  EXPECT_THROW(generate_speculative(*m.forward, prompt, 4, {}, 0, -1), Error);
  EXPECT_THROW(generate_speculative(*m.forward, prompt, 4, {}, kMaxDrafts + 1, -1), Error);
  model::Weights no_mtp = m.weights;
  no_mtp.mtp.clear();
  model::Forward f(no_mtp, 1);
  try {
    generate_speculative(f, prompt, 4, {}, 2, -1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MTP block"), std::string::npos);
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
  }
}

// ---- temperature > 0 --------------------------------------------------------------------

// The rejection sampler alone on a 7-token vocabulary, context-independent target rows
// p_1..p_4 and draft rows q_1..q_3 (K = 3): the token emitted at output index i of a round
// (when the round gets that far) must follow p_{i+1}, whatever q is; and the same with
// point drafts (each draft the argmax of its p row, q not passed: verify_sampled's point
// masses, EngineOptions::sampled_drafts_by_argmax).
TEST(SpeculativeSampling, RejectionSamplerReproducesTheTargetDistribution) {
  constexpr int64_t V = 7;
  constexpr int K = 3;
  const std::vector<float> p_logits = {
      1.0f, 0.2f, -0.5f, 2.0f, 0.0f, -1.0f, 0.7f,   // p_1
      -0.3f, 1.5f, 0.1f, 0.4f, 1.4f, -2.0f, 0.0f,   // p_2
      0.5f, 0.5f, 0.5f, -0.2f, 1.0f, 0.3f, -0.1f,   // p_3
      2.5f, -1.0f, 0.0f, 0.9f, 0.3f, 1.1f, -0.4f};  // p_4 (bonus)
  const std::vector<float> q_logits = {
      0.1f, 1.2f, 0.3f, 0.8f, 0.0f, 0.9f, -1.0f,   // q_1: favours other tokens than p_1
      1.0f, 0.0f, 1.3f, -0.5f, 0.2f, 0.6f, 0.4f,   // q_2
      -1.0f, 2.0f, 0.0f, 0.7f, 0.2f, 1.5f, 0.1f};  // q_3
  struct Case {
    const char* name;
    SamplingParams params;
  };
  std::vector<Case> cases(3);
  cases[0] = {"t=1", {}};
  cases[0].params.temperature = 1.0f;
  cases[1] = {"t=0.8 top-k 5", {}};
  cases[1].params.temperature = 0.8f;
  cases[1].params.top_k = 5;
  cases[2] = {"t=1.3 top-k 6 top-p 0.85", {}};
  cases[2].params.temperature = 1.3f;
  cases[2].params.top_k = 6;
  cases[2].params.top_p = 0.85f;
  constexpr int kRounds = 80000;
  for (size_t ci = 0; ci < 2 * cases.size(); ++ci) {
    const Case& cs = cases[ci % cases.size()];
    const bool point = ci >= cases.size();
    SCOPED_TRACE(point ? "point drafts" : "drawn drafts");
    std::mt19937_64 rng(100 + ci);
    std::vector<std::vector<double>> q(K);
    for (int i = 0; i < K; ++i)
      q[static_cast<size_t>(i)] = sampling_distribution(std::span(q_logits).subspan(static_cast<size_t>(i * V), V), cs.params);
    std::vector<std::vector<int64_t>> counts(K + 1, std::vector<int64_t>(V, 0));
    std::vector<int64_t> first_draft(V, 0);
    std::vector<int32_t> drafts(K);
    for (int r = 0; r < kRounds; ++r) {
      for (int i = 0; i < K; ++i) {
        // A point draft: the argmax of the target's row (a drafter that agrees, so that
        // later output indices are reached often enough).
        const auto row = std::span(p_logits).subspan(static_cast<size_t>(i * V), V);
        drafts[static_cast<size_t>(i)] = point ? static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin())
                                               : sample_from(q[static_cast<size_t>(i)], rng);
      }
      ++first_draft[static_cast<size_t>(drafts[0])];
      const Verdict v = verify_sampled(p_logits, V, point ? std::vector<std::vector<double>>{} : q, drafts, cs.params, rng);
      for (int i = 0; i < v.accepted; ++i) ++counts[static_cast<size_t>(i)][static_cast<size_t>(drafts[static_cast<size_t>(i)])];
      ++counts[static_cast<size_t>(v.accepted)][static_cast<size_t>(v.next)];
    }
    for (int i = 0; i <= K; ++i) {
      const auto p = sampling_distribution(std::span(p_logits).subspan(static_cast<size_t>(i * V), V), cs.params);
      const Fit fit = chi_square(counts[static_cast<size_t>(i)], p);
      int64_t n = 0;
      for (int64_t x : counts[static_cast<size_t>(i)]) n += x;
      std::printf("[ measured ] %s%s, output index %d: n=%lld chi2=%.2f df=%d p=%.4f\n", cs.name, point ? " (point drafts)" : "", i,
                  static_cast<long long>(n), fit.chi2, fit.df, fit.p_value);
      EXPECT_EQ(fit.outside, 0) << cs.name << " index " << i << ": token outside top-k/top-p";
      EXPECT_GT(n, point ? 1000 : 2000) << cs.name << " index " << i;
      EXPECT_GT(fit.p_value, kAlpha) << cs.name << " index " << i << " chi2 " << fit.chi2 << " df " << fit.df;
    }
    if (point) continue;
    // Power: the drafts themselves (what a sampler that accepted everything would emit)
    // fail the same test against p_1.
    const auto p1 = sampling_distribution(std::span(p_logits).subspan(0, V), cs.params);
    int64_t draft_outside = 0;
    for (int64_t x = 0; x < V; ++x)
      if (p1[static_cast<size_t>(x)] == 0.0) draft_outside += first_draft[static_cast<size_t>(x)];
    EXPECT_TRUE(draft_outside > 0 || chi_square(first_draft, p1).p_value < 1e-9) << cs.name;
  }
}

// Sampled speculative decoding through the engine (many requests batched together, each
// with its own seed): the first two tokens (the first drawn at the end of the prefill,
// the second the first token of a speculative round) must follow the main model's exact
// joint distribution p(t1) p(t2 | t1) (36 cells), computed here with plain forward steps.
// The random MTP block rarely agrees with the main model, so most drafts take the
// residual path and some are accepted. (Later positions of a round are covered by
// RejectionSamplerReproducesTheTargetDistribution.)
TEST(SpeculativeSampling, ModelTokensFollowTheMainModelsDistribution) {
  const LoadedModel& m = g_models->get("tiny_a/native");
  const auto& f = *m.forward;
  const int64_t V = m.config.vocab_size;
  SamplingParams params;
  params.temperature = 1.5f;
  params.top_k = 6;
  const auto prompt = prompt_of(m, 6, 4);

  // Exact distributions from the main model.
  const auto joint = first_two_joint(f, prompt, params, V);
  ASSERT_EQ(joint.size(), 36u);

#if defined(__SANITIZE_ADDRESS__)
  constexpr int kSamples = 1000;
#else
  constexpr int kSamples = 2500;
#endif
  // Drafts drawn from the MTP block's distribution, then its argmax as point drafts.
  for (bool point : {false, true}) {
    SCOPED_TRACE(point ? "point drafts" : "drawn drafts");
    CpuBackend backend(f, {.max_slots = 64});
    EngineOptions eo;
    eo.max_batch = 64;
    eo.max_waiting = kSamples;
    eo.mtp = 3;
    eo.sampled_drafts_by_argmax = point;
    Engine engine(backend, eo);
    // 5 tokens each: the first round drafts K = 3 (no more than the tokens still wanted - 1).
    const FirstTwo got = sample_first_two(engine, prompt, params, kSamples, 5, 1000, joint);
    const Fit& fit = got.fit;
    const int64_t outside = got.outside, accepted = got.accepted, proposed = got.proposed;
    std::printf("[ measured ] tiny_a t=1.5 top-k 6 K=3%s: chi2=%.2f df=%d p=%.4f; drafts accepted %lld/%lld\n",
                point ? " point drafts" : "", fit.chi2, fit.df, fit.p_value, static_cast<long long>(accepted),
                static_cast<long long>(proposed));
    EXPECT_EQ(outside, 0);
    EXPECT_GE(fit.df, 20);
    EXPECT_GT(fit.p_value, kAlpha);
    // Both branches ran: some drafts accepted, many rejected (the residual path).
    EXPECT_GT(accepted, point ? 0 : kSamples / 100);
    EXPECT_LT(accepted, proposed / 2);
  }
}

// top-k 1 makes every distribution one-hot: sampling reduces to greedy, exactly.
TEST(SpeculativeSampling, TopKOneIsGreedy) {
  const LoadedModel& m = g_models->get("tiny_b/native");
  const auto prompt = prompt_of(m, 5, 5);
  const GenerateResult plain = generate_plain(*m.forward, prompt, 48, {}, -1);
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 1;
  p.seed = 3;
  for (int k : {1, 3}) EXPECT_EQ(generate_speculative(*m.forward, prompt, 48, p, k, -1).tokens, plain.tokens) << k;
}

}  // namespace
}  // namespace kiln::runtime
