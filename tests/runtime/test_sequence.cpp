// SequenceDecoder (what the continuous-batching engine drives) gives the tokens of
// generate_plain / generate_speculative whatever the prefill chunking, and the engine
// gives every request those tokens whatever runs beside it.
#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/sequence.h"
#include "kiln/runtime/speculative.h"

namespace {

namespace fs = std::filesystem;
using namespace kiln::runtime;

const fs::path kModel = fs::path(KILN_TEST_DATA_DIR) / "fixtures" / "tiny_b" / "native";

std::vector<int32_t> prompt_of(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 11 + 5) % 384);
  return p;
}

std::vector<int32_t> run_sequence(const kiln::model::Forward& f, const std::vector<int32_t>& prompt, SamplingParams sp,
                                  int mtp, int64_t chunk, int max_tokens) {
  SequenceDecoder d(f, prompt, sp, mtp);
  std::vector<int32_t> out;
  while (!d.prefilled()) d.prefill(chunk, out);
  while (static_cast<int>(out.size()) < max_tokens) d.decode(out, max_tokens - static_cast<int>(out.size()));
  return out;
}

TEST(SequenceDecoder, ChunkedPrefillGivesTheSameTokens) {
  auto m = load_model(kModel, 1, nullptr);
  const auto prompt = prompt_of(29, 1);
  for (const float temperature : {0.0f, 0.9f}) {
    SamplingParams sp;
    sp.temperature = temperature;
    sp.seed = 42;
    const auto plain = generate_plain(*m->forward, prompt, 24, sp, -1).tokens;
    for (int mtp : {0, 2}) {
      const auto ref = mtp ? generate_speculative(*m->forward, prompt, 24, sp, mtp, -1).tokens : plain;
      if (temperature == 0.0f) {
        EXPECT_EQ(ref, plain);
      }
      for (int64_t chunk : {1, 3, 7, 29, 100}) {
        EXPECT_EQ(run_sequence(*m->forward, prompt, sp, mtp, chunk, 24), ref)
            << "mtp " << mtp << " chunk " << chunk << " temperature " << temperature;
      }
    }
  }
}

TEST(Engine, InterleavedRequestsEachGetTheirOwnTokens) {
  auto m = load_model(kModel, 1, nullptr);
  EngineOptions eo;
  eo.max_batch = 3;       // forces waiting and joining mid-run
  eo.prefill_chunk = 5;   // forces chunked prefill across steps
  Engine engine(*m->forward, eo);
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
    EXPECT_EQ(handles[i]->finish_reason(), FinishReason::Length);
    EXPECT_EQ(handles[i]->tokens(), expected[i]) << "request " << i;
  }
  EXPECT_GT(engine.metrics().mtp_proposed[0].load(), 0u);
}

TEST(Engine, RejectsBadRequestsAndFullQueues) {
  auto m = load_model(kModel, 1, nullptr);
  EngineOptions eo;
  eo.max_batch = 1;
  eo.max_waiting = 0;
  Engine engine(*m->forward, eo);
  GenerationRequest bad;
  EXPECT_THROW(engine.submit(bad), kiln::Error);  // empty prompt
  bad.prompt = {1, 400};
  EXPECT_THROW(engine.submit(bad), kiln::Error);  // outside the vocabulary
  GenerationRequest r;
  r.prompt = prompt_of(4, 0);
  r.max_tokens = 200;
  auto a = engine.submit(r);
  ASSERT_TRUE(a);
  // The batch slot is taken (or about to be) and nothing may wait: some submission must be refused.
  bool refused = false;
  for (int i = 0; i < 5 && !refused; ++i) refused = engine.submit(r) == nullptr;
  EXPECT_TRUE(refused);
  a->cancel();
}

}  // namespace
