// n > 1 choices and logprobs on the CUDA backend: GpuForward::copy_slot (through the
// backend's copy_slot) against feeding the same tokens, and the server on the GPU: the
// choices of a sampled request equal one-choice requests with consecutive seeds (plain
// and MTP), greedy choices equal the CPU server's answer, echo logprobs near the CPU
// server's (the difference is printed: docs/server.md), and every slot free afterwards.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "kiln/cli/backend_session.h"
#include "server/server_fixture.h"

namespace kiln {
namespace {

using json = nlohmann::json;

// A backend loaded by the CLI's session (the bundled model on the GPU), owned as a Backend.
class SessionBackend final : public runtime::Backend {
 public:
  SessionBackend(int slots, int rows) : s_(options(slots, rows)), b_(s_.backend()) {}
  const ModelConfig& config() const override { return b_.config(); }
  std::string describe() const override { return b_.describe(); }
  int mtp_blocks() const override { return b_.mtp_blocks(); }
  int max_slots() const override { return b_.max_slots(); }
  int max_rows() const override { return b_.max_rows(); }
  int64_t max_context() const override { return b_.max_context(); }
  int64_t weight_bytes() const override { return b_.weight_bytes(); }
  int acquire() override { return b_.acquire(); }
  void release(int slot) override { b_.release(slot); }
  void copy_slot(int src, int dst) override { b_.copy_slot(src, dst); }
  using Backend::main;
  using Backend::mtp;
  void main(const runtime::PassRows& rows, const Outputs& out) override { b_.main(rows, out); }
  void mtp(int m, const runtime::PassRows& rows, runtime::MtpInput input, const Outputs& out) override {
    b_.mtp(m, rows, input, out);
  }

 private:
  static cli::SessionOptions options(int slots, int rows) {
    cli::SessionOptions o;
    o.model = KILN_BUNDLED_MODEL;
    o.device = "cuda";
    o.precision = "exact";  // compared with the CPU server's (exact) answers
    o.threads = 2;
    o.max_slots = slots;
    o.max_rows = rows;
    return o;
  }
  cli::BackendSession s_;
  runtime::Backend& b_;
};

TEST(GpuChoices, CopySlotEqualsFeedingTheSameTokens) {
  SessionBackend b(3, 256);
  const int64_t V = b.config().vocab_size;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 45; ++i) prompt.push_back((i * 131 + 7) % static_cast<int32_t>(V));  // past a 16-block compressor
  const int a = b.acquire(), c = b.acquire(), fresh = b.acquire();
  runtime::PassRows rows, mrows;
  for (size_t i = 0; i < prompt.size(); ++i) rows.add(prompt[i], a, static_cast<int64_t>(i));
  b.main(rows, {}, nullptr);
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    mrows.add(prompt[i + 1], a, static_cast<int64_t>(i));
    mrows.src.push_back(static_cast<int32_t>(i));
  }
  b.mtp(0, mrows, runtime::MtpInput::MainStreams, {}, nullptr);
  b.copy_slot(a, c);
  // The same continuation on the original and the copy (rolled back by two positions),
  // and the whole sequence on a fresh slot, in one pass.
  const std::vector<int32_t> more = {7, 99, 250, 1000};
  const int64_t from = static_cast<int64_t>(prompt.size()) - 2;
  rows.clear();
  for (int s : {a, c}) {
    rows.add(prompt[static_cast<size_t>(from)], s, from);
    rows.add(prompt[static_cast<size_t>(from + 1)], s, from + 1);
    for (size_t i = 0; i < more.size(); ++i) rows.add(more[i], s, from + 2 + static_cast<int64_t>(i));
  }
  for (size_t i = 0; i < prompt.size(); ++i) rows.add(prompt[i], fresh, static_cast<int64_t>(i));
  for (size_t i = 0; i < more.size(); ++i) rows.add(more[i], fresh, static_cast<int64_t>(prompt.size() + i));
  const int n = 2 + static_cast<int>(more.size());
  std::vector<int32_t> want;
  for (int i = 0; i < 2 * n; ++i) want.push_back(i);
  for (int i = 0; i < n; ++i) want.push_back(2 * n + static_cast<int>(prompt.size()) - 2 + i);
  std::vector<float> logits(want.size() * static_cast<size_t>(V));
  b.main(rows, want, logits.data());
  const size_t block = static_cast<size_t>(n) * static_cast<size_t>(V);
  double fresh_diff = 0.0;
  for (size_t i = 0; i < block; ++i) {
    ASSERT_EQ(logits[i], logits[block + i]) << "copy differs at value " << i;
    fresh_diff = std::max(fresh_diff, std::fabs(static_cast<double>(logits[i]) - logits[2 * block + i]));
  }
  std::printf("[ measured ] copied slot vs fresh slot fed the same tokens: max |logit difference| %.3g\n", fresh_diff);
  EXPECT_LE(fresh_diff, 1e-3);
  // The MTP block's state was copied too: the same MTP rows on both give the same logits.
  mrows.clear();
  for (int s : {a, c}) {
    for (int i = 0; i < n - 1; ++i) {
      mrows.add(rows.tok[static_cast<size_t>(i + 1)], s, from + i);
      mrows.src.push_back(static_cast<int32_t>((s == a ? 0 : n) + i));
    }
  }
  std::vector<int32_t> mwant;
  for (int i = 0; i < 2 * (n - 1); ++i) mwant.push_back(i);
  std::vector<float> mlogits(mwant.size() * static_cast<size_t>(V));
  b.mtp(0, mrows, runtime::MtpInput::MainStreams, mwant, mlogits.data());
  const size_t mblock = static_cast<size_t>(n - 1) * static_cast<size_t>(V);
  for (size_t i = 0; i < mblock; ++i) ASSERT_EQ(mlogits[i], mlogits[mblock + i]) << "MTP copy differs at value " << i;
}

json complete(const test::Fixture& f, const json& req) {
  auto r = f.client().Post("/v1/completions", req.dump(), "application/json");
  EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
  return r ? json::parse(r->body) : json();
}

TEST(GpuChoices, ServerChoicesFollowTheirSeedsAndLogprobsMatchTheCpu) {
  runtime::EngineOptions eo;
  eo.max_batch = 8;
  test::Fixture cpu(eo);
  test::Fixture gpu(eo, {}, true, std::make_unique<SessionBackend>(8, 8 * 5 + 256));
  const std::string prompt = "def parse_args(argv):\n    ";
  for (int mtp : {0, 2}) {
    const json req = {{"prompt", prompt}, {"n", 3}, {"max_tokens", 24}, {"temperature", 1.0}, {"seed", 123},
                      {"mtp", mtp}, {"ignore_eos", true}};
    const json many = complete(gpu, req);
    ASSERT_EQ(many["choices"].size(), 3u);
    for (int i = 0; i < 3; ++i) {
      json one = req;
      one["n"] = 1;
      one["seed"] = 123 + i;
      EXPECT_EQ(many["choices"][i]["text"], complete(gpu, one)["choices"][0]["text"]) << "choice " << i << " mtp " << mtp;
    }
    // Greedy choices: all equal the CPU server's answer.
    const json greedy = {{"prompt", prompt}, {"n", 3}, {"max_tokens", 24}, {"temperature", 0}, {"mtp", mtp}};
    const json g = complete(gpu, greedy);
    const json want = complete(cpu, greedy);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(g["choices"][i]["text"], want["choices"][0]["text"]) << "mtp " << mtp;
  }
  // Echo logprobs against the CPU server's (whose own are within 1e-5 of kiln score's).
  const json echo = {{"prompt", prompt}, {"echo", true}, {"logprobs", 5}, {"max_tokens", 8}, {"temperature", 0}};
  const json a = complete(cpu, echo)["choices"][0]["logprobs"];
  const json b = complete(gpu, echo)["choices"][0]["logprobs"];
  ASSERT_EQ(a["tokens"], b["tokens"]);
  double worst = 0.0;
  for (size_t i = 1; i < a["token_logprobs"].size(); ++i) {
    worst = std::max(worst, std::fabs(a["token_logprobs"][i].get<double>() - b["token_logprobs"][i].get<double>()));
  }
  std::printf("[ measured ] echo logprobs, GPU vs CPU server: max |difference| %.3g over %zu tokens\n", worst,
              a["token_logprobs"].size() - 1);
  EXPECT_LE(worst, 1e-3);
  for (int i = 0; i < 200 && gpu.engine->metrics().running.load() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(gpu.engine->metrics().running.load(), 0);
  for (int s = 0; s < gpu.backend->max_slots(); ++s) ASSERT_GE(gpu.backend->acquire(), 0) << "slot " << s << " still held";
}

}  // namespace
}  // namespace kiln
