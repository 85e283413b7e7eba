// Exact speculative decoding with the DSpark drafter on the CPU backend, on the fixture of
// tools/make_dspark_fixture.py (tiny V4 in the 0731 layout, a 3-stage drafter, block 5):
// greedy tokens equal plain greedy at every k; after every round the main model's state
// and the drafter's rings equal sequential feeding of the committed tokens, for every
// accept length; sampled tokens follow the main model's joint distribution.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/io/npy.h"
#include "kiln/model/dspark.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"
#include "runtime/chi_square.h"
#include "runtime/first_two_tokens.h"

namespace kiln::runtime {
namespace {

using namespace test_stats;

struct Fixture {
  std::unique_ptr<LoadedModel> m;
  model::DSparkWeights d;
};

const Fixture& fx() {
  static const Fixture* F = [] {
    auto* f = new Fixture;
    f->m = load_model(std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_dspark/native", 1, nullptr);
    f->d = model::load_dspark_weights(f->m->checkpoint, f->m->plan);
    return f;
  }();
  return *F;
}

std::vector<int32_t> prompt_of(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> p(n);
  for (auto& t : p) t = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(2, 254)(g));
  return p;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr int kGenerate = 96;
#else
constexpr int kGenerate = 256;
#endif

TEST(DSparkSpec, GreedySameTokensAsPlainForEveryK) {
  const auto& F = fx();
  const auto& f = *F.m->forward;
  const auto prompt = prompt_of(9, 1);
  const GenerateResult plain = generate_plain(f, prompt, kGenerate, {}, -1);
  ASSERT_EQ(plain.tokens.size(), static_cast<size_t>(kGenerate));
  EXPECT_GE(std::set<int32_t>(plain.tokens.begin(), plain.tokens.end()).size(), 8u);
  for (int k = 1; k <= 5; ++k) {
    CpuBackend b(f, {.max_slots = 1, .max_context = 1024}, &F.d);
    const GenerateResult spec = generate(b, prompt, kGenerate, {}, k, -1);
    EXPECT_EQ(spec.tokens, plain.tokens) << "k=" << k;
    const DraftStats& s = spec.stats;
    EXPECT_EQ(s.emitted + 1, kGenerate);
    std::string rates;
    for (size_t i = 0; i < s.proposed.size(); ++i) rates += fmt::format(" {}/{}", s.accepted[i], s.proposed[i]);
    std::printf("[ measured ] tiny_dspark k=%d: accepted/proposed per position:%s; mean accepted length %.3f\n", k,
                rates.c_str(), s.mean_accepted_length());
  }
}

// The bundled model with its trained drafter (models/kiln-dsv4-mini-dspark,
// tools/train/train_dspark.py): most drafts are accepted, so long accepted runs, full
// blocks and their rollbacks are what runs here. Greedy tokens equal plain greedy at every
// k on held-out prompts, and the drafter does agree with the model.
TEST(DSparkSpec, TrainedDrafterOnTheBundledModelIsExactForEveryK) {
  const std::string models = std::string(KILN_TEST_DATA_DIR) + "/../../models";
  const auto m = load_model(models + "/kiln-dsv4-mini-dspark", 2, nullptr);
  const model::DSparkWeights d = model::load_dspark_weights(m->checkpoint, m->plan);
  const auto ids = read_npy(std::string(KILN_TEST_DATA_DIR) + "/trained/kiln-dsv4-mini/heldout_ids.npy").as_ints();
  constexpr int kTokens = kGenerate / 2;
  for (size_t off : {size_t{0}, size_t{16000}}) {
    const std::vector<int32_t> prompt(ids.begin() + static_cast<std::ptrdiff_t>(off), ids.begin() + static_cast<std::ptrdiff_t>(off) + 64);
    const GenerateResult plain = generate_plain(*m->forward, prompt, kTokens, {}, -1);
    ASSERT_EQ(plain.tokens.size(), static_cast<size_t>(kTokens));
    for (int k = 1; k <= 5; ++k) {
      CpuBackend b(*m->forward, {.max_slots = 1, .max_context = 512}, &d);
      const GenerateResult spec = generate(b, prompt, kTokens, {}, k, -1);
      EXPECT_EQ(spec.tokens, plain.tokens) << "prompt at " << off << ", k=" << k;
      const DraftStats& s = spec.stats;
      std::string rates;
      for (size_t i = 0; i < s.proposed.size(); ++i) rates += fmt::format(" {}/{}", s.accepted[i], s.proposed[i]);
      std::printf("[ measured ] kiln-dsv4-mini-dspark prompt %zu k=%d: accepted/proposed per position:%s; mean accepted "
                  "length %.3f\n", off, k, rates.c_str(), s.mean_accepted_length());
      EXPECT_GT(s.accepted[0] * 2, s.proposed[0]) << "the trained drafter's first draft is accepted less than half the time";
    }
  }
}

// Confidence-based verify length (EngineOptions::dspark_min_survival): a round verifies only
// its leading drafts whose survival reaches the bound, chosen from the drafter's outputs
// alone, so fewer drafts are verified as the bound rises and the tokens stay plain's.
TEST(DSparkSpec, SurvivalBoundVerifiesFewerDraftsAndStaysExact) {
  const auto& F = fx();
  const auto& f = *F.m->forward;
  const auto prompt = prompt_of(9, 1);
  const GenerateResult plain = generate_plain(f, prompt, kGenerate, {}, -1);
  int64_t last = -1;
  for (double bound : {0.0, 0.3, 0.6, 0.9, 1.0}) {
    CpuBackend b(f, {.max_slots = 1, .max_context = 1024}, &F.d);
    const GenerateResult spec = generate(b, prompt, kGenerate, {}, 5, -1, bound);
    EXPECT_EQ(spec.tokens, plain.tokens) << "bound " << bound;
    int64_t proposed = 0;
    for (int64_t p : spec.stats.proposed) proposed += p;
    std::printf("[ measured ] tiny_dspark K=5 survival >= %.1f: %lld drafts verified in %lld rounds\n", bound,
                static_cast<long long>(proposed), static_cast<long long>(spec.stats.rounds));
    if (bound == 1.0) {
      EXPECT_EQ(proposed, 0) << "no confidence reaches 1 exactly";
    }
    if (last >= 0) {
      EXPECT_LT(proposed, last) << "bound " << bound;
    }
    last = proposed;
  }
}

// Drafts forced to accept exactly r of K (r cycling over 0..K): at the start of every round the main
// model's state equals token-by-token feeding and the drafter's rings equal committing
// each position's features one by one.
TEST(DSparkSpec, StateAfterEachRoundEqualsSequentialFeeding) {
  const auto& F = fx();
  const auto& f = *F.m->forward;
  const auto prompt = prompt_of(6, 2);
  const int total = kGenerate / 2;
  const GenerateResult plain = generate_plain(f, prompt, total + 8, {}, -1);
  std::vector<int32_t> truth(prompt);
  truth.insert(truth.end(), plain.tokens.begin(), plain.tokens.end());
  for (int k : {2, 5}) {
    CpuBackend backend(f, {.max_slots = 1, .max_context = 1024}, &F.d);
    model::DSparkDrafter ref_drafter(f, F.d, 1);
    auto ref = f.new_state();
    auto ref_d = ref_drafter.new_state();
    std::vector<float> feat(static_cast<size_t>(ref_drafter.feature_width()));
    auto extend_ref = [&](int64_t n) {
      while (ref.length() < n) {
        const int64_t p = ref.length();
        const model::Forward::StepSeq one{&ref, std::span(truth).subspan(static_cast<size_t>(p), 1)};
        f.step(std::span(&one, 1), {}, nullptr, nullptr, feat.data());
        const model::DSparkDrafter::CommitSeq c{&ref_d, feat};
        ref_drafter.commit(std::span(&c, 1));
      }
    };
    std::vector<int> forced(static_cast<size_t>(k + 1), 0);
    int rounds = 0;
    EngineOptions eo;
    eo.max_batch = 1;
    eo.mtp = k;
    eo.round_hook = [&](int slot, int64_t n) {
      model::DecodeState st(backend.state(slot));
      ASSERT_GE(st.length(), n);
      f.truncate(st, n);
      extend_ref(n);
      ASSERT_EQ(st.difference(ref), "") << "k=" << k << " at " << n;
      ASSERT_EQ(backend.dspark_state(slot).difference(ref_d), "") << "k=" << k << " at " << n;
      ++rounds;
    };
    // Accept lengths cycle 0, 1, ..., K so that every one occurs even in the short ASan run
    // (a random pick missed length 2 in 48 tokens at K = 5).
    int calls = 0;
    eo.draft_hook = [&](int64_t first, std::span<int32_t> drafts) {
      const int r = calls++ % (static_cast<int>(drafts.size()) + 1);
      ++forced[static_cast<size_t>(r)];
      for (size_t i = 0; i < drafts.size(); ++i) {
        const int32_t want = truth[static_cast<size_t>(first) + i];
        drafts[i] = static_cast<int>(i) < r ? want : static_cast<int32_t>((want + 1 + i) % 256);
      }
    };
    Engine engine(backend, eo);
    EXPECT_EQ(engine.drafter(), DrafterKind::DSpark);
    GenerationRequest req;
    req.prompt = prompt;
    req.max_tokens = total;
    auto h = engine.submit(req);
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
    EXPECT_EQ(h->tokens(), std::vector<int32_t>(truth.begin() + static_cast<int64_t>(prompt.size()),
                                                truth.begin() + static_cast<int64_t>(prompt.size()) + total));
    EXPECT_GT(rounds, total / (k + 1));
    for (int r = 0; r <= k; ++r) EXPECT_GT(forced[static_cast<size_t>(r)], 0) << "accept length " << r;
  }
}

TEST(DSparkSpec, RefusesKBeyondTheBlockAndDSparkWithoutADrafter) {
  const auto& F = fx();
  const auto& f = *F.m->forward;
  CpuBackend b(f, {.max_slots = 1, .max_context = 1024}, &F.d);
  try {
    generate(b, std::vector<int32_t>{5, 6}, 4, {}, 6, -1);
    ADD_FAILURE() << "k = 6 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("6 drafts per round; expected 0..5 (the DSpark block size)"), std::string::npos)
        << e.what();
  }
  EngineOptions eo;
  eo.mtp = 6;
  eo.max_batch = 1;
  EXPECT_THROW(Engine(b, eo), Error);
  CpuBackend none(f, {.max_slots = 1, .max_context = 1024});
  eo.mtp = 2;
  eo.drafter = DrafterKind::DSpark;
  try {
    Engine e(none, eo);
    ADD_FAILURE() << "DSpark without a drafter accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs no DSpark drafter"), std::string::npos) << e.what();
  }
}

// The first two sampled tokens (the prefill's, then the first of a DSpark round) follow
// the main model's exact joint distribution p(t1) p(t2 | t1), with every draft verified and
// under a survival bound (rounds then verify fewer drafts).
TEST(DSparkSpec, SampledTokensFollowTheMainModelsDistribution) {
  const auto& F = fx();
  const auto& f = *F.m->forward;
  const int64_t V = F.m->config.vocab_size;
  SamplingParams params;
  params.temperature = 1.5f;
  params.top_k = 6;
  const auto prompt = prompt_of(7, 4);
  const auto joint = first_two_joint(f, prompt, params, V);
  ASSERT_EQ(joint.size(), 36u);
#if defined(__SANITIZE_ADDRESS__)
  constexpr int kSamples = 1000;
#else
  constexpr int kSamples = 2500;
#endif
  int64_t all_proposed = 0;
  // Drafts drawn from the Markov loop's distributions, with and without the bound; then
  // the argmax drafts as point masses (EngineOptions::sampled_drafts_by_argmax).
  for (const auto& [bound, point] : {std::pair{0.0, false}, std::pair{0.4, false}, std::pair{0.0, true}}) {
    SCOPED_TRACE(fmt::format("bound {} point drafts {}", bound, point));
    CpuBackend backend(f, {.max_slots = 64, .max_context = 1024}, &F.d);
    EngineOptions eo;
    eo.max_batch = 64;
    eo.max_waiting = kSamples;
    eo.mtp = 4;
    eo.dspark_min_survival = bound;
    eo.sampled_drafts_by_argmax = point;
    Engine engine(backend, eo);
    // 6 tokens each: the first round drafts K = 4.
    const FirstTwo got = sample_first_two(engine, prompt, params, kSamples, 6, 2000, joint);
    std::printf("[ measured ] tiny_dspark t=1.5 top-k 6 K=4 survival >= %.1f%s: chi2=%.2f df=%d p=%.4f; drafts accepted "
                "%lld/%lld\n", bound, point ? " point drafts" : "", got.fit.chi2, got.fit.df, got.fit.p_value, static_cast<long long>(got.accepted),
                static_cast<long long>(got.proposed));
    EXPECT_EQ(got.outside, 0);
    EXPECT_GE(got.fit.df, 20);
    EXPECT_GT(got.fit.p_value, kAlpha);
    EXPECT_GT(got.proposed, 0);
    if (bound == 0.0 && !point) {
      all_proposed = got.proposed;
    } else if (bound > 0.0) {
      EXPECT_LT(got.proposed, all_proposed) << "the bound dropped no draft";
    }
  }
}

}  // namespace
}  // namespace kiln::runtime
