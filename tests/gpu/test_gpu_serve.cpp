// `kiln serve` on the GPU: the OpenAI server over the engine on the CUDA backend, with the
// bundled trained model. Greedy answers equal the CPU server's (streamed and not, with
// MTP and without); 200 concurrent streams each equal the same request sent alone; and
// afterwards nothing is running, waiting or holding a slot.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/model/linear_source.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#include "server/server_fixture.h"

namespace kiln {
namespace {

using json = nlohmann::json;

std::unique_ptr<runtime::Backend> gpu_backend(int slots, int rows) {
  auto m = runtime::load_model(KILN_BUNDLED_MODEL, 2, nullptr);
  model::cuda::GpuOptions go;
  go.max_slots = slots;
  go.max_rows = rows;
  go.max_context = m->config.max_position_embeddings;
  auto w = model::cuda::upload_weights(m->weights, model::checkpoint_linears(m->checkpoint, m->plan), go.max_rows,
                                       nullptr);
  return std::make_unique<runtime::cuda::GpuBackend>(std::make_unique<model::cuda::GpuForward>(std::move(w), go));
}

std::string complete(const test::Fixture& f, const json& req, bool stream) {
  auto c = f.client();
  json r = req;
  r["stream"] = stream;
  auto res = c.Post("/v1/completions", r.dump(), "application/json");
  EXPECT_TRUE(res);
  if (!res) return "";
  EXPECT_EQ(res->status, 200) << res->body;
  return stream ? test::sse_text(res->body, false) : json::parse(res->body)["choices"][0]["text"].get<std::string>();
}

TEST(GpuServe, GreedyAnswersEqualTheCpuServers) {
  runtime::EngineOptions eo;
  eo.max_batch = 8;
  test::Fixture cpu(eo);
  test::Fixture gpu(eo, {}, true, gpu_backend(8, 8 * 5 + 256));
  for (const char* prompt : {"def parse_args(argv):\n    ", "class Stack:\n", "import numpy as np\n"}) {
    for (int mtp : {0, 2}) {
      const json req = {{"prompt", prompt}, {"max_tokens", 32}, {"temperature", 0}, {"mtp", mtp}, {"ignore_eos", true}};
      const std::string want = complete(cpu, req, false);
      EXPECT_EQ(complete(gpu, req, false), want) << prompt << " mtp " << mtp;
      EXPECT_EQ(complete(gpu, req, true), want) << prompt << " mtp " << mtp << " streamed";
      EXPECT_GT(want.size(), 10u);
    }
  }
  json chat = {{"messages", {{{"role", "user"}, {"content", "A function that adds two numbers."}}}},
               {"max_tokens", 24},
               {"temperature", 0}};
  auto a = cpu.client().Post("/v1/chat/completions", chat.dump(), "application/json");
  auto b = gpu.client().Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(json::parse(b->body)["choices"][0]["message"], json::parse(a->body)["choices"][0]["message"]);
  EXPECT_GT(gpu.engine->metrics().mtp_proposed[0].load(), 0u);
}

TEST(GpuServe, TwoHundredConcurrentStreamsEachEqualTheRequestAlone) {
  runtime::EngineOptions eo;
  eo.max_batch = 64;
  test::Fixture f(eo, {}, true, gpu_backend(64, 64 * 5 + 256));
  constexpr int kN = 200;
  const char* heads[] = {"def ", "import ", "class ", "return ", "for i in ", "if x == ", "print(", "    self."};
  std::vector<json> reqs(kN);
  std::vector<std::string> alone(kN), got(kN);
  for (int i = 0; i < kN; ++i) {
    reqs[i] = {{"prompt", std::string(heads[i % 8]) + "v" + std::to_string(i) + (i % 3 ? "(" : "\n")},
               {"max_tokens", 24 + i % 8},
               {"temperature", 0},
               {"mtp", i % 5 == 0 ? 2 : 0}};
    alone[i] = complete(f, reqs[i], false);
  }
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kN; ++i) threads.emplace_back([&, i] { got[i] = complete(f, reqs[i], true); });
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (int i = 0; i < kN; ++i) EXPECT_EQ(got[i], alone[i]) << "request " << i;
  const auto& m = f.engine->metrics();
  std::printf("[ measured ] GPU server: %d concurrent streams in %.2f s, %llu engine steps\n", kN, wall,
              static_cast<unsigned long long>(m.steps.load()));
  for (int i = 0; i < 100 && m.running.load() != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(m.running.load(), 0);
  EXPECT_EQ(m.waiting.load(), 0);
  // Every slot is free again (the engine is idle, so the test may take them).
  for (int s = 0; s < f.backend->max_slots(); ++s) EXPECT_GE(f.backend->acquire(), 0) << "slot " << s << " still held";
}

}  // namespace
}  // namespace kiln
