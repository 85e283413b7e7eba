// Tensor parallelism on the CPU backend (model/tensor_parallel.h): N ranks in one process,
// each on its own thread with its shard, meeting in the in-process communicator. For every
// fixture flavour (the fixtures as transformers wrote them, and every `kiln quantize` recipe
// of them), N = 2 and 4, with the routed experts split or held whole (expert parallel):
// prefill logits, the streams, a decode step's logits, the MTP block's logits and a
// rollback equal one rank's within 1e-6 (relative to the largest logit; only the order of
// the sums over the ranks differs), and greedy tokens agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>

#include "kiln/artifact/plan.h"
#include "kiln/cli/quantize.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/model/forward.h"
#include "kiln/model/tensor_parallel.h"
#include "kiln/model/weights.h"
#include "support/artifacts.h"
#include "support/compare.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(KILN_TEST_DATA_DIR) + "/fixtures";

using test::rel_err;

int argmax(const float* v, int64_t n) { return static_cast<int>(std::max_element(v, v + n) - v); }

struct Outputs {
  std::vector<float> prefill, streams, decode, mtp, after_rollback;
  std::vector<int> greedy;
};

// Prefill 19 tokens, one decode step, the MTP block over the prefill's streams, then roll
// the main model back 2 tokens and feed 2 others; greedy argmax of each prefill row.
Outputs run(const model::Weights& w, model::ParallelLayout p) {
  model::Forward f(w, 4, true, p);
  const auto& c = w.config;
  const int64_t V = c.vocab_size, nH = c.hc_mult * c.hidden_size;
  std::vector<int32_t> tok(21);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 37 + 5) % static_cast<size_t>(V));
  const int64_t T = 19;
  Outputs o;
  o.prefill.resize(static_cast<size_t>(T * V));
  o.streams.resize(static_cast<size_t>(T * nH));
  auto st = f.new_state();
  f.step(st, std::span(tok.data(), static_cast<size_t>(T)), o.prefill.data(), o.streams.data());
  for (int64_t t = 0; t < T; ++t) o.greedy.push_back(argmax(o.prefill.data() + t * V, V));
  o.decode.resize(static_cast<size_t>(V));
  f.step(st, std::span(tok.data() + T, 1), o.decode.data(), nullptr);
  if (!w.mtp.empty()) {
    o.mtp.resize(static_cast<size_t>((T - 1) * V));
    f.mtp_step(st, 0, std::span(o.streams.data(), static_cast<size_t>((T - 1) * nH)),
               std::span(tok.data() + 1, static_cast<size_t>(T - 1)), o.mtp.data(), nullptr);
  }
  f.truncate(st, T - 1);
  const int32_t other[2] = {7, 11};
  o.after_rollback.resize(static_cast<size_t>(2 * V));
  f.step(st, other, o.after_rollback.data(), nullptr);
  return o;
}

void expect_close(const Outputs& a, const Outputs& ref, const std::string& what) {
  constexpr double kTol = 1e-6;
  EXPECT_LE(rel_err(a.prefill, ref.prefill), kTol) << what << " prefill logits";
  EXPECT_LE(rel_err(a.streams, ref.streams), kTol) << what << " streams";
  EXPECT_LE(rel_err(a.decode, ref.decode), kTol) << what << " decode logits";
  EXPECT_LE(rel_err(a.mtp, ref.mtp), kTol) << what << " MTP logits";
  EXPECT_LE(rel_err(a.after_rollback, ref.after_rollback), kTol) << what << " logits after a rollback";
  EXPECT_EQ(a.greedy, ref.greedy) << what << " greedy tokens";
}

model::Weights load(const fs::path& dir) {
  auto ckpt = Checkpoint::open(dir);
  auto plan = build_plan(ckpt, load_model_config(dir));
  if (!plan.loadable()) fail(ErrorKind::Usage, "{} does not load", dir.string());
  return model::load_weights(ckpt, plan);
}

void check_flavour(const model::Weights& w, const std::string& name) {
  const Outputs one = run(w, {});
  ASSERT_FALSE(one.prefill.empty());
  for (int N : {2, 4}) {
    for (bool ep : {false, true}) {
      const std::string what = fmt::format("{} N={}{}", name, N, ep ? " expert parallel" : "");
      SCOPED_TRACE(what);
      expect_close(run(w, {N, ep}), one, what);
    }
  }
}

TEST(TensorParallelForward, EveryFixtureAsWrittenMatchesOneRank) {
  for (const char* fx : {"tiny_a/native", "tiny_a/hf", "tiny_b/native", "tiny_b/hf", "tiny_dspark/native"}) {
    check_flavour(load(kFixtures + "/" + fx), fx);
  }
}

TEST(TensorParallelForward, EveryQuantizeRecipeMatchesOneRank) {
  for (const char* fx : {"tiny_a", "tiny_b"}) {
    for (const char* recipe : {"deepseek-native", "deepseek-native-nvfp4", "w4a16-fp8-mtp", "nvfp4-fp8-mtp", "fp8-v3-style"}) {
      test::TempDir d;
      cli::QuantizeOptions o;
      o.model = kFixtures + "/" + fx + "/native";
      o.recipe = recipe;
      o.out = d.path() / "q";
      std::ostringstream so, se;
      ASSERT_EQ(cli::run_quantize(o, so, se), 0) << se.str();
      check_flavour(load(o.out), fmt::format("{} {}", fx, recipe));
    }
  }
}

// Passes from several threads (each its own state) run one at a time and give what each
// gives alone.
TEST(TensorParallelForward, PassesFromSeveralThreadsGiveWhatEachGivesAlone) {
  const model::Weights w = load(kFixtures + "/tiny_b/native");
  model::Forward f(w, 4, true, {2, false});
  const int64_t V = w.config.vocab_size;
  std::vector<int32_t> tok(12);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 53 + 3) % static_cast<size_t>(V));
  auto st0 = f.new_state();
  std::vector<float> alone(tok.size() * static_cast<size_t>(V));
  f.step(st0, tok, alone.data(), nullptr);
  std::vector<std::vector<float>> got(4, std::vector<float>(alone.size()));
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto st = f.new_state();
      f.step(st, tok, got[static_cast<size_t>(i)].data(), nullptr);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, alone);
}

TEST(TensorParallelForward, ShardsHoldTheirPartOnly) {
  const model::Weights w = load(kFixtures + "/tiny_b/native");
  const auto& c = w.config;  // 8 heads, 4 groups, 8 experts, vocab 384
  const model::Weights s = model::shard_weights(w, 1, {4, true});
  EXPECT_EQ(s.config.num_heads, 2);
  EXPECT_EQ(s.config.o_groups, 1);
  EXPECT_EQ(s.embed.data.size(), static_cast<size_t>(c.vocab_size / 4 * c.hidden_size));
  EXPECT_EQ(s.head.out, c.vocab_size / 4);
  EXPECT_EQ(s.layers[0].attn.wq_b.out, 2 * c.head_dim);
  EXPECT_EQ(s.layers[0].attn.wo_b.in, c.o_lora_rank);
  EXPECT_EQ(s.layers[0].ffn.shared->w2.in, c.moe_intermediate_size / 4);
  int held = 0;
  for (const auto& e : s.layers[0].ffn.experts) held += e.w1.out > 0;
  EXPECT_EQ(held, 2);
  EXPECT_EQ(s.shard.expert_begin, 2);
  EXPECT_EQ(s.shard.expert_end, 4);
  EXPECT_LT(model::linear_weight_bytes(s) * 2, model::linear_weight_bytes(w));
}

TEST(TensorParallelForward, IndivisibleLayoutsAreRefusedNamingTheNumbers) {
  const model::Weights w = load(kFixtures + "/tiny_b/native");  // 8 heads, 4 groups, 8 experts, I 16
  auto message = [&](model::ParallelLayout p) -> std::string {
    try {
      model::Forward f(w, 1, true, p);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2) << e.what();
      return e.what();
    }
    return "(accepted)";
  };
  EXPECT_EQ(message({3, false}), "tensor parallel 3: num_attention_heads 8 is not divisible by 3 ranks");
  EXPECT_EQ(message({5, false}), "tensor parallel 5: vocab_size 384 is not divisible by 5 ranks");
  EXPECT_EQ(message({16, true}), "tensor parallel 16: num_attention_heads 8 is not divisible by 16 ranks");
  auto config_message = [](ModelConfig c, model::ParallelLayout p) -> std::string {
    try {
      model::check_parallel_layout(c, p);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2) << e.what();
      return e.what();
    }
    return "(accepted)";
  };
  ModelConfig c = w.config;
  c.o_groups = 3;
  EXPECT_EQ(config_message(c, {2, false}), "tensor parallel 2: o_groups 3 is neither a multiple nor a divisor of 2 ranks");
  c = w.config;
  c.n_routed_experts = 6;
  EXPECT_EQ(config_message(c, {4, true}), "tensor parallel 4: n_routed_experts (expert parallel) 6 is not divisible by 4 ranks");
  EXPECT_EQ(config_message(c, {4, false}), "(accepted)");
  c.moe_intermediate_size = 18;
  EXPECT_EQ(config_message(c, {4, false}), "tensor parallel 4: moe_intermediate_size 18 is not divisible by 4 ranks");
}

}  // namespace
}  // namespace kiln
