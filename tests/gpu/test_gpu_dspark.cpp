// The DSpark drafter on the GPU (model/cuda/gpu_dspark.h) on the oracle fixture
// tests/data/fixtures/tiny_dspark (0731 layout, window 8, block 5, Markov rank 16):
// (a) its base logits, Markov-adjusted logits, drafts and confidences against the CPU
//     drafter (model/dspark.h, itself checked against the oracle in tests/model), for two
//     slots drafted together at many anchors (before, at and past the window, across the
//     ring's wrap), committed in uneven pieces;
// (b) greedy decoding with DSpark drafts on the GPU engine gives the plain greedy tokens
//     over 256 tokens at k = 1..5, in both precisions;
// (c) the same through the real binary: `kiln generate --device cuda --spec dspark`
//     prints the tokens of `--spec off`;
// and bad configurations are errors that say what is wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/kiln_process.h"
#include "kiln/core/error.h"
#include "kiln/model/cuda/gpu_dspark.h"
#include "kiln/model/dspark.h"
#include "kiln/model/forward.h"
#include "support/compare.h"
#include "kiln/model/linear_source.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"
#include "gpu_fixtures.h"

namespace kiln {
namespace {

using namespace gpu_test;  // load helpers, prompt_tokens, decode_greedy (gpu_fixtures.h)
using model::cuda::GpuDSpark;

const std::string kDSparkDir = kFixtures + "/tiny_dspark/native";

// The fixture on the CPU (main model and a resident drafter) and on the GPU (main model and
// drafter uploaded from the same checkpoint) in one precision.
struct DSparkLoaded {
  std::unique_ptr<runtime::LoadedModel> cpu;
  model::DSparkWeights drafter;  // CPU, resident
  std::unique_ptr<runtime::cuda::GpuBackend> backend;
  GpuDSpark* gpu = nullptr;
};

DSparkLoaded load_dspark(ops::Precision precision, GpuOptions opt = {}) {
  DSparkLoaded l;
  l.cpu = runtime::load_model(kDSparkDir, 2, nullptr);
  model::set_precision(l.cpu->weights, precision);
  l.drafter = model::load_dspark_weights(l.cpu->checkpoint, l.cpu->plan);
  opt.max_context = 1024;
  auto w = model::cuda::upload_weights(l.cpu->weights, model::checkpoint_linears(l.cpu->checkpoint, l.cpu->plan),
                                       opt.max_rows, nullptr);
  auto d = model::cuda::upload_dspark_weights(l.drafter, l.cpu->config, precision,
                                              model::checkpoint_dspark_linears(l.cpu->checkpoint, l.cpu->plan),
                                              opt.max_rows);
  l.backend = std::make_unique<runtime::cuda::GpuBackend>(std::make_unique<GpuForward>(std::move(w), opt), std::move(d));
  l.gpu = l.backend->dspark();
  return l;
}

using test::argmax_low;
using test::rel_err;  // tests/support/compare.h

// graphs: the draft passes captured and replayed (GpuOptions::graphs), or eager.
void draft_against_cpu(bool graphs) {
  GpuOptions opt;
  opt.graphs = graphs;
  DSparkLoaded L = load_dspark(ops::Precision::Exact, opt);
  ASSERT_NE(L.gpu, nullptr);
  const model::Forward& f = *L.cpu->forward;
  const model::DSparkDrafter cpu(f, L.drafter, 2);
  const int64_t V = L.cpu->config.vocab_size, B = cpu.block_size(), F = cpu.feature_width();
  ASSERT_EQ(L.gpu->block_size(), B);
  ASSERT_EQ(L.gpu->feature_width(), F);
  ASSERT_EQ(L.backend->dspark_block(), B);

  // Two sequences, fed to the target in one GPU main pass (slot 0's rows, then slot 1's).
  const std::vector<std::vector<int32_t>> prompts = {prompt_tokens(V, 34), prompt_tokens(V, 27, 3)};
  runtime::PassRows rows;
  std::vector<std::vector<float>> feats(2);
  std::vector<model::DSparkState> cpu_state;
  std::vector<int32_t> row0;
  for (int s = 0; s < 2; ++s) {
    ASSERT_EQ(L.backend->acquire(), s);
    row0.push_back(rows.size());
    for (size_t p = 0; p < prompts[s].size(); ++p) rows.add(prompts[s][p], s, static_cast<int64_t>(p));
    model::DecodeState st = f.new_state();
    const model::Forward::StepSeq seq{&st, prompts[s]};
    feats[s].resize(prompts[s].size() * static_cast<size_t>(F));
    f.step(std::span(&seq, 1), {}, nullptr, nullptr, feats[s].data());
    cpu_state.push_back(cpu.new_state());
  }
  L.backend->main(rows, {}, nullptr);
  // The target features the GPU main pass recorded (the drafter's only input from it).
  {
    std::vector<float> got(static_cast<size_t>(rows.size() * F));
    L.backend->forward().synchronize();
    ASSERT_EQ(cudaMemcpy(got.data(), L.backend->forward().dspark_features(), got.size() * sizeof(float),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (int s = 0; s < 2; ++s) {
      const auto part = std::span<const float>(got).subspan(static_cast<size_t>(row0[static_cast<size_t>(s)] * F),
                                                            feats[static_cast<size_t>(s)].size());
      EXPECT_LT(rel_err(part, feats[static_cast<size_t>(s)]), 1e-4)
          << "slot " << s << ": target features (mean over hc of layers 2-4) GPU vs CPU, max relative error";
    }
  }

  // Anchors per slot: before the window fills (8), at it, past it and past the GPU ring's
  // wrap (window + block = 13 rows).
  const std::vector<std::vector<int64_t>> anchors = {{1, 4, 8, 9, 12, 14, 19, 26, 33}, {2, 3, 7, 10, 13, 15, 21, 26}};
  double worst_base = 0, worst_adj = 0, worst_conf = 0;
  int compared = 0;
  for (size_t a = 0; a < anchors[0].size(); ++a) {
    std::vector<model::cuda::GpuDSpark::Round> gq;
    std::vector<int64_t> N(2);
    for (int s = 0; s < 2; ++s) {
      N[s] = anchors[s][std::min(a, anchors[s].size() - 1)];
      // Commit up to N in uneven pieces, the same pieces on both sides.
      model::DSparkState& cs = cpu_state[static_cast<size_t>(s)];
      while (cs.length() < N[s]) {
        const int64_t from = cs.length(), n = std::min<int64_t>(N[s] - from, 1 + (from % 3));
        const model::DSparkDrafter::CommitSeq c{&cs, std::span<const float>(feats[s]).subspan(static_cast<size_t>(from * F),
                                                                                              static_cast<size_t>(n * F))};
        cpu.commit(std::span(&c, 1));
        runtime::PassRows cr;
        for (int64_t p = from; p < from + n; ++p) {
          cr.add(0, s, p);
          cr.src.push_back(static_cast<int32_t>(row0[static_cast<size_t>(s)] + p));
        }
        L.backend->dspark_commit(cr);
      }
      ASSERT_EQ(L.gpu->length(s), N[s]);
      gq.push_back({s, prompts[s][static_cast<size_t>(N[s])], static_cast<int>(B)});
    }
    // Teacher-forced Markov loop (the prompt's next tokens: the same prev on both sides
    // whatever either side's argmax), then greedy (drafts compared).
    for (const bool forced : {true, false}) {
      // Round i drafts the sequence of prompt ps[i] at anchor position at[i].
      auto chooser = [forced](std::vector<const std::vector<int32_t>*> ps, std::vector<int64_t> at) {
        return [forced, ps, at](size_t i, int k, std::span<const float> row) {
          const std::vector<int32_t>& p = *ps[i];
          return forced ? p[static_cast<size_t>(at[i] + 1 + k) % p.size()] : argmax_low(row);
        };
      };
      const auto gout = L.gpu->draft(gq, chooser({&prompts[0], &prompts[1]}, N), /*keep_logits=*/true);
      ASSERT_EQ(gout.size(), 2u);
      if (!forced) {
        // The same rounds marked by_argmax: the loop stays on the device (one graph with
        // graphs on) and must draft the host choice's tokens with the same confidences.
        auto dq = gq;
        for (auto& r : dq) r.by_argmax = true;
        const auto dout = L.gpu->draft(dq, [](size_t, int, std::span<const float>) -> int32_t {
          ADD_FAILURE() << "choose called for a by_argmax round";
          return 0;
        });
        ASSERT_EQ(dout.size(), 2u);
        for (int s = 0; s < 2; ++s) {
          EXPECT_EQ(dout[static_cast<size_t>(s)].tokens, gout[static_cast<size_t>(s)].tokens)
              << "slot " << s << " anchor " << N[s] << ": device argmax loop vs the host's argmax";
          EXPECT_EQ(dout[static_cast<size_t>(s)].confidence, gout[static_cast<size_t>(s)].confidence)
              << "slot " << s << " anchor " << N[s] << ": confidences of the device loop";
        }
      }
      for (int s = 0; s < 2; ++s) {
        SCOPED_TRACE(fmt::format("slot {} anchor {} ({} Markov loop)", s, N[s], forced ? "teacher-forced" : "greedy"));
        const model::DSparkDrafter::DraftSeq q{&cpu_state[static_cast<size_t>(s)], gq[s].anchor, static_cast<int>(B)};
        const auto cout = cpu.draft(std::span(&q, 1), chooser({&prompts[s]}, {N[s]}));
        const auto& g = gout[static_cast<size_t>(s)];
        const auto& c = cout[0];
        const double eb = rel_err(g.base, c.base), ea = rel_err(g.adjusted, c.adjusted);
        EXPECT_EQ(g.base.size(), static_cast<size_t>(B * V)) << "base logits: one row per block row";
        EXPECT_EQ(g.adjusted.size(), static_cast<size_t>(B * V)) << "adjusted logits: one row per draft";
        EXPECT_LT(eb, 1e-4) << "base logits U_k (GPU vs CPU), max relative error";
        EXPECT_LT(ea, 1e-4) << "Markov-adjusted logits (GPU vs CPU), max relative error";
        EXPECT_EQ(g.tokens, c.tokens) << "drafted tokens (GPU vs CPU)";
        ASSERT_EQ(g.confidence.size(), c.confidence.size()) << "confidences (GPU vs CPU)";
        EXPECT_FALSE(c.confidence.empty()) << "the fixture has a confidence head";
        for (size_t k = 0; k < g.confidence.size(); ++k) {
          EXPECT_NEAR(g.confidence[k], c.confidence[k], 1e-5) << "confidence of draft " << k + 1;
          worst_conf = std::max(worst_conf, static_cast<double>(std::abs(g.confidence[k] - c.confidence[k])));
        }
        worst_base = std::max(worst_base, eb);
        worst_adj = std::max(worst_adj, ea);
        ++compared;
      }
    }
  }
  // One commit of a whole prompt (34 rows: more than the GPU ring holds, only the last
  // window's rows matter), then a draft: the CPU's, committed the same way.
  {
    ASSERT_EQ(L.backend->acquire(), 2);
    runtime::PassRows all;
    for (size_t p = 0; p < prompts[0].size(); ++p) {
      all.add(0, 2, static_cast<int64_t>(p));
      all.src.push_back(row0[0] + static_cast<int32_t>(p));
    }
    L.backend->dspark_commit(all);
    ASSERT_EQ(L.gpu->length(2), static_cast<int64_t>(prompts[0].size()));
    model::DSparkState whole = cpu.new_state();
    const model::DSparkDrafter::CommitSeq c{&whole, feats[0]};
    cpu.commit(std::span(&c, 1));
    const std::vector<GpuDSpark::Round> q = {{2, 7, static_cast<int>(B)}};
    const model::DSparkDrafter::DraftSeq cq{&whole, 7, static_cast<int>(B)};
    const auto greedy = [](size_t, int, std::span<const float> row) { return argmax_low(row); };
    const auto g = L.gpu->draft(q, greedy, true);
    const auto cd = cpu.draft(std::span(&cq, 1), greedy);
    SCOPED_TRACE("slot 2: the whole prompt committed at once, anchor position 34");
    EXPECT_LT(rel_err(g[0].base, cd[0].base), 1e-4) << "base logits U_k (GPU vs CPU), max relative error";
    EXPECT_LT(rel_err(g[0].adjusted, cd[0].adjusted), 1e-4) << "Markov-adjusted logits (GPU vs CPU), max relative error";
    EXPECT_EQ(g[0].tokens, cd[0].tokens) << "drafted tokens (GPU vs CPU)";
  }
  std::printf("[gpu-dspark] %s: %d drafts vs the CPU drafter: max relative error base %.2e, Markov-adjusted %.2e; "
              "confidence max |diff| %.2e\n",
              graphs ? "graphs" : "eager", compared, worst_base, worst_adj, worst_conf);
}

TEST(GpuDSpark, DraftLogitsAndConfidencesMatchTheCpuDrafterEager) { draft_against_cpu(false); }
TEST(GpuDSpark, DraftLogitsAndConfidencesMatchTheCpuDrafterWithGraphs) { draft_against_cpu(true); }

TEST(GpuDSpark, GreedyWithDSparkDraftsEqualsPlainGreedyForEveryK) {
  for (const auto precision : {ops::Precision::Exact, ops::Precision::DeepSeek}) {
    SCOPED_TRACE(std::string(ops::precision_name(precision)) + " precision");
    DSparkLoaded L = load_dspark(precision);
    const int64_t V = L.cpu->config.vocab_size;
    const std::vector<std::vector<int32_t>> prompts = {prompt_tokens(V, 9), prompt_tokens(V, 14, 1), prompt_tokens(V, 5, 2)};
    // Plain greedy on the same backend (the engine drafts nothing at k = 0).
    const auto plain = decode_greedy(*L.backend, prompts, 256, 0);
    if (precision == ops::Precision::Exact) {  // the GPU's plain greedy is the CPU's
      runtime::SamplingParams sp;
      sp.temperature = 0;
      const auto cpu = runtime::generate_plain(*L.cpu->forward, prompts[0], 256, sp, -1);
      EXPECT_EQ(plain.tokens[0], cpu.tokens) << "GPU plain greedy differs from the CPU's";
    }
    for (int k = 1; k <= 5; ++k) {
      const auto spec = decode_greedy(*L.backend, prompts, 256, k);
      for (size_t p = 0; p < prompts.size(); ++p) {
        ASSERT_EQ(spec.tokens[p].size(), 256u) << "k=" << k << " prompt " << p;
        const auto diff = std::mismatch(spec.tokens[p].begin(), spec.tokens[p].end(), plain.tokens[p].begin());
        EXPECT_EQ(spec.tokens[p], plain.tokens[p])
            << "k=" << k << " prompt " << p << ": DSpark greedy differs from plain greedy first at token "
            << (diff.first - spec.tokens[p].begin());
      }
      EXPECT_GT(spec.rounds, 0) << "k=" << k << ": no DSpark round ran";
    }
  }
}

// Through the binary: --spec dspark on the GPU prints plain's tokens, and says it drafted
// with the DSpark drafter.
TEST(GpuDSpark, GenerateCudaSpecDSparkEqualsSpecOff) {
  const std::string base = "generate --device cuda --precision exact --model '" + kDSparkDir +
                           "' --tokens 5,17,42,100,3,9,200 --max-tokens 256 --ignore-eos --json";
  auto json_of = [](const test::Out& r) {
    const auto brace = r.text.find('{');
    return nlohmann::json::parse(r.text.substr(brace == std::string::npos ? 0 : brace));
  };
  const test::Out off = test::kiln_run(base + " --spec off");
  ASSERT_EQ(off.code, 0) << off.text;
  const auto plain = json_of(off)["tokens"].get<std::vector<int32_t>>();
  ASSERT_EQ(plain.size(), 256u);
  for (int k : {1, 3, 5}) {
    const test::Out r = test::kiln_run(base + fmt::format(" --spec dspark --mtp {}", k));
    ASSERT_EQ(r.code, 0) << "k=" << k << ": " << r.text;
    const auto j = json_of(r);
    EXPECT_EQ(j["tokens"].get<std::vector<int32_t>>(), plain) << "k=" << k << ": --spec dspark tokens differ from --spec off";
    EXPECT_EQ(j["mtp"]["drafter"], "dspark") << r.text;
    EXPECT_EQ(j["mtp"]["k"], k) << r.text;
    EXPECT_GT(j["mtp"]["rounds"].get<int64_t>(), 0) << r.text;
  }
  // --spec dspark alone drafts the whole block.
  const test::Out whole = test::kiln_run(base + " --spec dspark");
  ASSERT_EQ(whole.code, 0) << whole.text;
  EXPECT_EQ(json_of(whole)["mtp"]["k"], 5) << whole.text;
  // A k beyond the block is an error naming the value, before any GPU work.
  const test::Out bad = test::kiln_run(base + " --spec dspark --mtp 6");
  EXPECT_NE(bad.code, 0) << bad.text;
  EXPECT_NE(bad.text.find("--mtp 6: expected 1..5 draft tokens per round (the DSpark block size)"), std::string::npos)
      << bad.text;
  EXPECT_EQ(bad.text.find("CUDA error"), std::string::npos) << bad.text;
}

TEST(GpuDSpark, BadUseIsAClearError) {
  DSparkLoaded L = load_dspark(ops::Precision::Exact);
  GpuDSpark& g = *L.gpu;
  const int slot = L.backend->acquire();
  ASSERT_EQ(slot, 0);
  const auto pick = [](size_t, int, std::span<const float> row) { return argmax_low(row); };
  // Too many drafts, a token outside the vocabulary, a slot out of range.
  const std::vector<GpuDSpark::Round> too_many = {{slot, 3, 6}}, bad_tok = {{slot, 1 << 20, 1}}, bad_slot = {{99, 3, 1}};
  EXPECT_THROW(g.draft(too_many, pick), Error);
  EXPECT_THROW(g.draft(bad_tok, pick), Error);
  EXPECT_THROW(g.draft(bad_slot, pick), Error);
  const std::vector<GpuDSpark::Round> twice = {{slot, 3, 1}, {slot, 4, 1}};  // one block per slot
  EXPECT_THROW(g.draft(twice, pick), Error);
  // A commit that skips a position, or reads features of a row the last main pass lacked.
  runtime::PassRows rows;
  rows.add(3, slot, 0);
  L.backend->main(rows, {}, nullptr);
  runtime::PassRows skip;
  skip.add(0, slot, 1);
  skip.src.push_back(0);
  EXPECT_THROW(L.backend->dspark_commit(skip), Error);
  runtime::PassRows far;
  far.add(0, slot, 0);
  far.src.push_back(5);
  EXPECT_THROW(L.backend->dspark_commit(far), Error);
  EXPECT_EQ(g.length(slot), 0) << "a refused commit wrote nothing";
  // A GPU backend without a drafter refuses DSpark.
  Loaded plain = load(kDSparkDir);
  EXPECT_EQ(plain.backend->dspark_block(), 0);
  EXPECT_THROW(plain.backend->dspark_commit(skip), Error);
  // A forward whose passes cannot hold one draft block.
  GpuOptions tiny;
  tiny.max_rows = 4;
  EXPECT_THROW(load_dspark(ops::Precision::Exact, tiny), Error);
}

}  // namespace
}  // namespace kiln
