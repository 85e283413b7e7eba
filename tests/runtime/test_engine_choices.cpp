// Requests of several choices (n > 1: one prefill, copied into each choice's slot),
// logprobs (the log-softmax of the main model's logits, before temperature) and prompt
// logprobs on the engine over the CPU backend, against the forward run directly; the
// backend's copy_slot against feeding the same tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "kiln/core/error.h"
#include "engine_fixture.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/logprobs.h"

namespace {

namespace fs = std::filesystem;
using namespace kiln::runtime;

const fs::path kModel = kiln::test::kEngineModel;

std::vector<int32_t> prompt_of(int n, int salt) { return kiln::test::engine_prompt(n, salt); }

void wait(RequestHandle& h) {
  while (!h.finished()) h.wait_tokens(h.tokens().size(), std::chrono::milliseconds(50));
}

// The logits of every position of `ids`, fed in one step from a fresh state (what
// `kiln score` computes).
std::vector<float> all_logits(const LoadedModel& m, const std::vector<int32_t>& ids) {
  auto st = m.forward->new_state();
  std::vector<float> logits(ids.size() * static_cast<size_t>(m.config.vocab_size));
  m.forward->step(st, ids, logits.data(), nullptr);
  return logits;
}

// log-softmax of row r, exactly.
double reference_logprob(const std::vector<float>& logits, int64_t V, size_t r, int32_t id) {
  const float* row = logits.data() + r * static_cast<size_t>(V);
  double mx = row[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, static_cast<double>(row[i]));
  long double sum = 0.0L;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<long double>(row[i]) - mx);
  return static_cast<double>(row[id]) - (mx + static_cast<double>(std::log(sum)));
}

// Every slot of the backend can be taken: nothing leaked.
void expect_all_slots_free(CpuBackend& b) {
  std::vector<int> got;
  for (int s = 0; s < b.max_slots(); ++s) got.push_back(b.acquire());
  for (int s : got) {
    EXPECT_GE(s, 0) << "a slot is still held";
    if (s >= 0) b.release(s);
  }
}

TEST(Logprobs, TopIdsAreSortedByLogitTiesToTheLowestId) {
  const std::vector<float> l = {1.0f, 3.0f, 3.0f, -2.0f, 5.0f, 3.0f};
  EXPECT_EQ(top_ids(l, 4), (std::vector<int32_t>{4, 1, 2, 5}));
  EXPECT_EQ(top_ids(l, 0), std::vector<int32_t>{});
  EXPECT_EQ(top_ids(l, 99).size(), l.size());
  const TokenLogprob t = token_logprob(l, 3, 2);
  double z = 0;
  for (float x : l) z += std::exp(static_cast<double>(x));
  EXPECT_NEAR(t.logprob, -2.0 - std::log(z), 1e-12);
  ASSERT_EQ(t.top.size(), 2u);
  EXPECT_EQ(t.top[0].id, 4);
  EXPECT_NEAR(t.top[0].logprob, 5.0 - std::log(z), 1e-12);
  // No overflow far from 0.
  const std::vector<float> big = {1000.0f, 999.0f};
  EXPECT_NEAR(token_logprob(big, 1, 0).logprob, -1.0 - std::log1p(std::exp(-1.0)), 1e-12);
}

TEST(CpuBackend, CopySlotEqualsFeedingTheSameTokens) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 3});
  const int64_t V = m->config.vocab_size;
  const auto prompt = prompt_of(23, 4);
  const int a = b.acquire(), c = b.acquire(), fresh = b.acquire();
  PassRows rows, mrows;
  for (size_t i = 0; i < prompt.size(); ++i) rows.add(prompt[i], a, static_cast<int64_t>(i));
  b.main(rows, {}, nullptr);
  // The MTP block's rows too (main streams at p, token p + 1).
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    mrows.add(prompt[i + 1], a, static_cast<int64_t>(i));
    mrows.src.push_back(static_cast<int32_t>(i));
  }
  b.mtp(0, mrows, MtpInput::MainStreams, {}, nullptr);
  b.copy_slot(a, c);
  EXPECT_EQ(b.state(c).difference(b.state(a)), "");
  // The same continuation on both (and the whole sequence on a fresh slot) in one pass,
  // after rolling both back by two positions: bitwise the same rows.
  const std::vector<int32_t> more = {7, 99, 250};
  rows.clear();
  const int64_t from = static_cast<int64_t>(prompt.size()) - 2;
  for (int s : {a, c}) {
    rows.add(prompt[static_cast<size_t>(from)], s, from);
    rows.add(prompt[static_cast<size_t>(from + 1)], s, from + 1);
    for (size_t i = 0; i < more.size(); ++i) rows.add(more[i], s, from + 2 + static_cast<int64_t>(i));
  }
  for (size_t i = 0; i < prompt.size(); ++i) rows.add(prompt[i], fresh, static_cast<int64_t>(i));
  for (size_t i = 0; i < more.size(); ++i) rows.add(more[i], fresh, static_cast<int64_t>(prompt.size() + i));
  const int n = 2 + static_cast<int>(more.size());
  std::vector<int32_t> want;
  for (int i = 0; i < n; ++i) want.push_back(i);
  for (int i = 0; i < n; ++i) want.push_back(n + i);
  for (int i = 0; i < n; ++i) want.push_back(2 * n + static_cast<int>(prompt.size()) - 2 + i);
  std::vector<float> logits(want.size() * static_cast<size_t>(V));
  b.main(rows, want, logits.data());
  for (size_t i = 0; i < static_cast<size_t>(n) * static_cast<size_t>(V); ++i) {
    ASSERT_EQ(logits[i], logits[static_cast<size_t>(n) * static_cast<size_t>(V) + i]) << "copy, value " << i;
    ASSERT_EQ(logits[i], logits[2 * static_cast<size_t>(n) * static_cast<size_t>(V) + i]) << "fresh, value " << i;
  }
  EXPECT_THROW(b.copy_slot(a, a), kiln::Error);
  b.release(c);
  EXPECT_THROW(b.copy_slot(a, c), kiln::Error);
}

TEST(EngineChoices, ChoicesEqualOneChoiceRequestsWithConsecutiveSeeds) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 4});
  EngineOptions eo;
  eo.max_batch = 4;
  eo.prefill_chunk = 7;  // the prompt takes several steps before the fork
  Engine engine(b, eo);
  for (const float temperature : {0.0f, 0.9f}) {
    for (int mtp : {0, 2}) {
      GenerationRequest r;
      r.prompt = prompt_of(19, 2);
      r.max_tokens = 12;
      r.sampling.temperature = temperature;
      r.sampling.seed = 1000;
      r.mtp = mtp;
      r.n = 3;
      auto h = engine.submit(r);
      ASSERT_TRUE(h);
      wait(*h);
      ASSERT_EQ(h->choices(), 3);
      for (int c = 0; c < 3; ++c) {
        ASSERT_EQ(h->finish_reason(c), FinishReason::Length) << h->error();
        SamplingParams sp = r.sampling;
        sp.seed = 1000 + static_cast<uint64_t>(c);
        const auto want = mtp ? generate_speculative(*m->forward, r.prompt, r.max_tokens, sp, mtp, -1).tokens
                              : generate_plain(*m->forward, r.prompt, r.max_tokens, sp, -1).tokens;
        EXPECT_EQ(h->tokens(c), want) << "choice " << c << " temperature " << temperature << " mtp " << mtp;
      }
      if (temperature == 0.0f) {
        EXPECT_EQ(h->tokens(1), h->tokens(0));
        EXPECT_EQ(h->tokens(2), h->tokens(0));
      } else {
        EXPECT_NE(h->tokens(1), h->tokens(0)) << "choices drew the same tokens";
      }
    }
  }
  // Counted once per request; every slot free.
  EXPECT_EQ(engine.metrics().requests_finished.load(), 4u);
  EXPECT_EQ(engine.metrics().prompt_tokens.load(), 4u * 19u);
  for (int i = 0; i < 100 && engine.metrics().running.load() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  expect_all_slots_free(b);
}

TEST(EngineChoices, ManyChoicesWaitForRoomAndCancelTogether) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 3, .max_context = 4096});
  EngineOptions eo;
  eo.max_batch = 3;
  Engine engine(b, eo);
  GenerationRequest r;
  r.prompt = prompt_of(9, 5);
  r.max_tokens = 4;
  r.n = 4;
  EXPECT_THROW(engine.submit(r), kiln::Error);  // more choices than the batch
  r.n = 2;
  r.max_tokens = 2000;
  auto a = engine.submit(r);  // takes two of the three slots
  r.max_tokens = 4;
  auto c = engine.submit(r);  // waits for two free slots
  ASSERT_TRUE(a && c);
  while (a->tokens(1).empty()) a->wait_tokens(0, std::chrono::milliseconds(20));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(c->tokens(0).empty() && c->tokens(1).empty()) << "joined without room for both choices";
  a->cancel();
  wait(*a);
  EXPECT_EQ(a->finish_reason(0), FinishReason::Cancelled);
  EXPECT_EQ(a->finish_reason(1), FinishReason::Cancelled);
  wait(*c);
  EXPECT_EQ(c->tokens(0).size(), 4u);
  EXPECT_EQ(c->tokens(1), c->tokens(0));
  // The counters move right after the handles are told (the scheduler's next statements).
  for (int i = 0; i < 100 && (engine.metrics().running.load() != 0 || engine.metrics().requests_finished.load() != 1); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(engine.metrics().requests_cancelled.load(), 1u);
  EXPECT_EQ(engine.metrics().requests_finished.load(), 1u);
  expect_all_slots_free(b);
}

// Logprobs of generated tokens: the log-softmax of the main model's logits at their
// positions (plain and speculative, greedy and sampled: before temperature).
TEST(EngineLogprobs, GeneratedTokensScoreAsTheForward) {
  auto m = load_model(kModel, 1, nullptr);
  const int64_t V = m->config.vocab_size;
  CpuBackend b(*m->forward, {.max_slots = 2});
  EngineOptions eo;
  eo.max_batch = 2;
  eo.prefill_chunk = 6;
  Engine engine(b, eo);
  for (const float temperature : {0.0f, 1.3f}) {
    for (int mtp : {0, 3}) {
      GenerationRequest r;
      r.prompt = prompt_of(14, 7);
      r.max_tokens = 10;
      r.sampling.temperature = temperature;
      r.sampling.seed = 5;
      r.mtp = mtp;
      r.logprobs = 4;
      r.n = 2;
      auto h = engine.submit(r);
      ASSERT_TRUE(h);
      wait(*h);
      for (int c = 0; c < 2; ++c) {
        const auto u = h->take(c, 0);
        ASSERT_EQ(u.tokens.size(), 10u);
        ASSERT_EQ(u.logprobs.size(), u.tokens.size()) << "a logprob for every emitted token";
        // The tokens are those of the request without logprobs.
        SamplingParams sp = r.sampling;
        sp.seed += static_cast<uint64_t>(c);
        EXPECT_EQ(u.tokens, (mtp ? generate_speculative(*m->forward, r.prompt, r.max_tokens, sp, mtp, -1)
                                 : generate_plain(*m->forward, r.prompt, r.max_tokens, sp, -1)).tokens);
        std::vector<int32_t> ids = r.prompt;
        ids.insert(ids.end(), u.tokens.begin(), u.tokens.end());
        const auto logits = all_logits(*m, ids);
        for (size_t t = 0; t < u.tokens.size(); ++t) {
          const size_t row = r.prompt.size() - 1 + t;
          const TokenLogprob& e = u.logprobs[t];
          EXPECT_EQ(e.id, u.tokens[t]);
          EXPECT_NEAR(e.logprob, reference_logprob(logits, V, row, u.tokens[t]), 1e-5) << "token " << t;
          const auto top = top_ids(std::span<const float>(logits).subspan(row * static_cast<size_t>(V), static_cast<size_t>(V)), 4);
          ASSERT_EQ(e.top.size(), 4u);
          for (size_t j = 0; j < 4; ++j) {
            EXPECT_EQ(e.top[j].id, top[j]) << "token " << t << " alternative " << j;
            EXPECT_NEAR(e.top[j].logprob, reference_logprob(logits, V, row, top[j]), 1e-5);
          }
          if (temperature == 0.0f) {
            EXPECT_EQ(e.top[0].id, e.id);
          }
        }
      }
    }
  }
}

// Echo: the prompt's tokens 1..P-1 scored, chunk by chunk; max_tokens 0 generates nothing.
TEST(EngineLogprobs, PromptLogprobsScoreEveryPromptToken) {
  auto m = load_model(kModel, 1, nullptr);
  const int64_t V = m->config.vocab_size;
  CpuBackend b(*m->forward, {.max_slots = 2});
  EngineOptions eo;
  eo.max_batch = 2;
  eo.prefill_chunk = 5;
  Engine engine(b, eo);
  GenerationRequest r;
  r.prompt = prompt_of(17, 3);
  r.max_tokens = 0;
  r.logprobs = 2;
  EXPECT_THROW(engine.submit(r), kiln::Error);  // max_tokens 0 without prompt logprobs
  r.prompt_logprobs = true;
  const auto logits = all_logits(*m, r.prompt);
  for (int max_tokens : {0, 1}) {
    for (int n : {1, 2}) {
      r.max_tokens = max_tokens;
      r.n = n;
      auto h = engine.submit(r);
      ASSERT_TRUE(h);
      wait(*h);
      ASSERT_TRUE(h->prompt_done());
      const auto p = h->prompt_logprobs();
      ASSERT_EQ(p.size(), r.prompt.size() - 1);
      for (size_t i = 0; i < p.size(); ++i) {
        EXPECT_EQ(p[i].id, r.prompt[i + 1]);
        EXPECT_NEAR(p[i].logprob, reference_logprob(logits, V, i, r.prompt[i + 1]), 1e-5) << "prompt token " << i + 1;
        ASSERT_EQ(p[i].top.size(), 2u);
      }
      for (int c = 0; c < n; ++c) {
        EXPECT_EQ(h->finish_reason(c), FinishReason::Length);
        EXPECT_EQ(h->tokens(c).size(), static_cast<size_t>(max_tokens));
      }
    }
  }
  for (int i = 0; i < 100 && engine.metrics().running.load() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  expect_all_slots_free(b);
}

}  // namespace
