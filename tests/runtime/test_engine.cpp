// The engine over the CPU backend: plain greedy equals a hand loop over Forward::step;
// every request gets the tokens it gets alone, whatever the prefill chunking and whatever
// runs beside it (plain and speculative, greedy and sampled); the backend contract's
// rules (rows, rollback bound, slots) are enforced; bad requests are refused.
#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/core/error.h"
#include "engine_fixture.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/generate.h"
#include "kiln/runtime/loaded_model.h"

namespace {

namespace fs = std::filesystem;
using namespace kiln::runtime;

const fs::path kModel = kiln::test::kEngineModel;

std::vector<int32_t> prompt_of(int n, int salt) { return kiln::test::engine_prompt(n, salt); }

std::vector<int32_t> run_alone(CpuBackend& b, const GenerationRequest& r, int64_t chunk) {
  EngineOptions eo;
  eo.max_batch = 1;
  eo.prefill_chunk = chunk;
  eo.mtp = r.mtp;
  Engine engine(b, eo);
  auto h = engine.submit(r);
  while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
  EXPECT_EQ(h->finish_reason(), FinishReason::Length) << h->error();
  return h->tokens();
}

TEST(Engine, PlainGreedyEqualsAHandLoopOverTheForward) {
  auto m = load_model(kModel, 1, nullptr);
  const auto prompt = prompt_of(17, 3);
  const auto got = generate_plain(*m->forward, prompt, 20, {}, -1).tokens;
  auto st = m->forward->new_state();
  std::vector<float> logits(static_cast<size_t>(m->config.vocab_size));
  std::vector<int32_t> want;
  m->forward->step(st, std::span(prompt).first(prompt.size() - 1), nullptr, nullptr);
  int32_t tok = prompt.back();
  while (want.size() < 20) {
    const int32_t t[1] = {tok};
    m->forward->step(st, t, logits.data(), nullptr);
    tok = argmax(logits);
    want.push_back(tok);
  }
  EXPECT_EQ(got, want);
}

TEST(Engine, ChunkedPrefillGivesTheSameTokens) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 2});
  GenerationRequest r;
  r.prompt = prompt_of(29, 1);
  r.max_tokens = 24;
  for (const float temperature : {0.0f, 0.9f}) {
    r.sampling.temperature = temperature;
    r.sampling.seed = 42;
    for (int mtp : {0, 2}) {
      r.mtp = mtp;
      const auto ref = run_alone(b, r, 1000);
      if (temperature == 0.0f && mtp) {
        EXPECT_EQ(ref, (r.mtp = 0, run_alone(b, r, 1000))) << "speculative != plain";
      }
      r.mtp = mtp;
      for (int64_t chunk : {1, 3, 7, 29}) {
        EXPECT_EQ(run_alone(b, r, chunk), ref) << "mtp " << mtp << " chunk " << chunk << " temperature " << temperature;
      }
    }
  }
}

TEST(Engine, InterleavedRequestsEachGetTheirOwnTokens) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 3});
  EngineOptions eo;
  eo.max_batch = 3;      // forces waiting and joining mid-run
  eo.prefill_chunk = 5;  // forces chunked prefill across steps, beside decode rows
  Engine engine(b, eo);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 8; ++i) {
    GenerationRequest r;
    r.prompt = prompt_of(3 + 4 * i, i);
    r.max_tokens = 6 + i;
    r.sampling.temperature = i % 2 ? 0.7f : 0.0f;
    r.sampling.seed = static_cast<uint64_t>(i);
    r.mtp = i % 3 == 0 ? 2 : 0;
    expected.push_back(r.mtp ? generate_speculative(*m->forward, r.prompt, r.max_tokens, r.sampling, r.mtp, -1).tokens
                             : generate_plain(*m->forward, r.prompt, r.max_tokens, r.sampling, -1).tokens);
    handles.push_back(engine.submit(r));
    ASSERT_TRUE(handles.back());
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    while (!handles[i]->finished()) handles[i]->wait_tokens(0, std::chrono::milliseconds(50));
    EXPECT_EQ(handles[i]->finish_reason(), FinishReason::Length) << handles[i]->error();
    EXPECT_EQ(handles[i]->tokens(), expected[i]) << "request " << i;
  }
  EXPECT_GT(engine.metrics().mtp_proposed[0].load(), 0u);
}

TEST(Engine, RejectsBadRequestsAndFullQueues) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 1, .max_context = 64});
  EngineOptions eo;
  eo.max_batch = 1;
  eo.max_waiting = 0;
  Engine engine(b, eo);
  GenerationRequest bad;
  EXPECT_THROW(engine.submit(bad), kiln::Error);  // empty prompt
  bad.prompt = {1, 400};
  EXPECT_THROW(engine.submit(bad), kiln::Error);  // outside the vocabulary
  bad.prompt = prompt_of(40, 0);
  bad.max_tokens = 25;
  try {
    engine.submit(bad);
    ADD_FAILURE() << "no error past the context";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the context of 64"), std::string::npos) << e.what();
  }
  GenerationRequest r;
  r.prompt = prompt_of(4, 0);
  r.max_tokens = 50;
  auto a = engine.submit(r);
  ASSERT_TRUE(a);
  // The slot is taken (or about to be) and nothing may wait: some submission must be refused.
  bool refused = false;
  for (int i = 0; i < 5 && !refused; ++i) refused = engine.submit(r) == nullptr;
  EXPECT_TRUE(refused);
  a->cancel();
  while (!a->finished()) a->wait_tokens(0, std::chrono::milliseconds(50));
  EXPECT_EQ(a->finish_reason(), FinishReason::Cancelled);
  // The cancelled request's slot is free again.
  for (int i = 0; i < 100 && b.acquire() < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

TEST(CpuBackend, EnforcesTheRowRules) {
  auto m = load_model(kModel, 1, nullptr);
  CpuBackend b(*m->forward, {.max_slots = 2, .max_rows = 16, .max_context = 40});
  const int s0 = b.acquire(), s1 = b.acquire();
  EXPECT_EQ(b.acquire(), -1);
  PassRows r;
  auto expect_error = [&](const char* what) {
    try {
      b.main(r, {}, nullptr);
      ADD_FAILURE() << "no error: " << what;
    } catch (const kiln::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  r.add(5, s0, 1);
  expect_error("has 0 positions fed");  // a gap
  r.clear();
  r.add(5, s0, 0);
  r.add(6, s0, 2);
  expect_error("expected 1 (consecutive)");
  r.clear();
  r.add(5, s0, 0);
  r.add(6, s1, 0);
  r.add(7, s0, 1);
  expect_error("not consecutive in the pass");
  r.clear();
  r.add(5, 7, 0);
  expect_error("not held");
  r.clear();
  for (int i = 0; i < 17; ++i) r.add(5, s0, i);
  expect_error("17 rows in one pass");
  // Feed 12 positions, then roll back: 4 (within 8) works, 3 does not.
  r.clear();
  for (int i = 0; i < 12; ++i) r.add(5 + i, s0, i);
  b.main(r, {}, nullptr);
  r.clear();
  r.add(9, s0, 4);
  b.main(r, {}, nullptr);
  EXPECT_EQ(b.state(s0).length(), 5);
  r.clear();
  r.add(9, s0, 3);
  expect_error("can go back to 4 at the earliest");
  for (int from : {0, 16}) {
    r.clear();
    for (int i = 0; i < 16; ++i) r.add(5, s1, from + i);
    b.main(r, {}, nullptr);
  }
  r.clear();
  for (int i = 0; i < 9; ++i) r.add(5, s1, 32 + i);
  expect_error("beyond the context of 40 positions");
  b.release(s0);
  EXPECT_THROW(b.release(s0), kiln::Error);
  EXPECT_EQ(b.acquire(), s0);
  EXPECT_EQ(b.state(s0).length(), 0);  // a new sequence starts empty
}

TEST(CpuBackend, BatchedPassEqualsEachSlotAlone) {
  auto m = load_model(kModel, 1, nullptr);
  const int64_t V = m->config.vocab_size;
  CpuBackend together(*m->forward, {.max_slots = 3}), alone(*m->forward, {.max_slots = 1});
  const int a = together.acquire(), b = together.acquire(), c = together.acquire();
  PassRows r;
  const std::vector<std::vector<int32_t>> p = {prompt_of(7, 1), prompt_of(2, 2), prompt_of(11, 3)};
  const int slots[3] = {a, b, c};
  std::vector<int32_t> outs;
  for (int i = 0; i < 3; ++i) {
    for (size_t t = 0; t < p[static_cast<size_t>(i)].size(); ++t) {
      outs.push_back(r.size());
      r.add(p[static_cast<size_t>(i)][t], slots[i], static_cast<int64_t>(t));
    }
  }
  std::vector<float> logits(outs.size() * static_cast<size_t>(V));
  together.main(r, outs, logits.data());
  size_t row = 0;
  for (int i = 0; i < 3; ++i) {
    const int s = alone.acquire();
    PassRows q;
    std::vector<int32_t> o;
    for (size_t t = 0; t < p[static_cast<size_t>(i)].size(); ++t) {
      o.push_back(q.size());
      q.add(p[static_cast<size_t>(i)][t], s, static_cast<int64_t>(t));
    }
    std::vector<float> l(o.size() * static_cast<size_t>(V));
    alone.main(q, o, l.data());
    EXPECT_TRUE(std::equal(l.begin(), l.end(), logits.begin() + static_cast<int64_t>(row) * V)) << "sequence " << i;
    row += o.size();
    alone.release(s);
  }
}

}  // namespace
