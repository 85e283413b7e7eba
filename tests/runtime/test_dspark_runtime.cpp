// A DSpark checkpoint (V4-Flash-0731 layout, tiny) in the runtime: it loads for plain
// decoding with no drafter weights in memory, the engine (what `kiln serve` runs) serves
// it, and MTP drafting, asked of the engine, a request or the speculative decoder, is a
// clear error saying the drafter is DSpark, not a classic MTP block, and how to draft with it.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>

#include "kiln/core/error.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/generate.h"
#include "support/artifacts.h"

namespace kiln::runtime {
namespace {

std::unique_ptr<LoadedModel> tiny_0731(const test::TempDir& dir) {
  test::write_spec(test::make_spec(test::Layout::Native, test::tiny_dspark_config(), 5), dir.path());
  return load_model(dir.path(), 1, nullptr);
}

void expect_dspark_error(const std::function<void()>& f) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("has a DSpark drafter (3 stages, block size 5), not a classic MTP block"), std::string::npos) << m;
    EXPECT_NE(m.find("kiln drafts with it under --spec dspark"), std::string::npos) << m;
  }
}

TEST(DSparkRuntime, LoadsTheMainModelOnly) {
  test::TempDir dir;
  auto m = tiny_0731(dir);
  EXPECT_TRUE(m->weights.mtp.empty());
  EXPECT_EQ(m->weights.layers.size(), 4u);
  ASSERT_TRUE(m->plan.dspark);
  EXPECT_EQ(m->plan.dspark->stages_found.size(), 3u);
  EXPECT_TRUE(m->weights.config.dspark);

  // The resident linear bytes are the main model's: the same checkpoint without the
  // drafter holds exactly as many.
  test::TempDir plain_dir;
  auto spec = test::make_spec(test::Layout::Native, test::tiny_dspark_config(), 1);
  std::erase_if(spec.tensors, [](const test::PendingTensor& t) { return t.name.rfind("mtp.", 0) == 0; });
  test::write_spec(spec, plain_dir.path());
  auto plain = load_model(plain_dir.path(), 1, nullptr);
  EXPECT_EQ(model::linear_weight_bytes(m->weights), model::linear_weight_bytes(plain->weights));
}

TEST(DSparkRuntime, EngineServesPlainDecodingAndRefusesMtp) {
  test::TempDir dir;
  auto m = tiny_0731(dir);
  const std::vector<int32_t> prompt{5, 17, 42};
  const auto want = generate_plain(*m->forward, prompt, 8, SamplingParams{}, -1).tokens;
  ASSERT_EQ(want.size(), 8u);

  CpuBackend backend(*m->forward);
  expect_dspark_error([&] {
    EngineOptions o;
    o.mtp = 1;
    Engine e(backend, o);
  });
  Engine e(backend, EngineOptions{});
  EXPECT_FALSE(e.has_mtp());
  GenerationRequest bad;
  bad.prompt = prompt;
  bad.mtp = 2;
  expect_dspark_error([&] { e.submit(bad); });

  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = 8;
  auto h = e.submit(r);
  ASSERT_TRUE(h);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!h->finished() && std::chrono::steady_clock::now() < deadline) h->wait_tokens(0, std::chrono::milliseconds(50));
  ASSERT_TRUE(h->finished());
  EXPECT_EQ(h->tokens(), want);

  expect_dspark_error([&] { generate_speculative(*m->forward, prompt, 4, SamplingParams{}, 1, -1); });
}

}  // namespace
}  // namespace kiln::runtime
