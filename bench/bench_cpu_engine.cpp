// The CPU engine's aggregate decode throughput with N concurrent streams, against the
// same N requests decoded one at a time (what an engine that runs one Forward::step per
// sequence costs: every weight read once per sequence). The batched engine reads every
// weight once per step for all sequences. Greedy, so both give the same tokens (checked).
//   kiln_bench_cpu_engine [MODEL_DIR|-] [STREAMS=16] [PROMPT_TOKENS=64] [OUTPUT_TOKENS=32] [THREADS=0]
// "-": the mid-size synthetic model of bench/mid_model.h.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#include "mid_model.h"

namespace {

using namespace kiln::runtime;

struct Run {
  std::vector<std::vector<int32_t>> tokens;
  double seconds = 0.0;
  uint64_t steps = 0;
};

Run decode(CpuBackend& b, const std::vector<std::vector<int32_t>>& prompts, int output, int batch) {
  EngineOptions eo;
  eo.max_batch = batch;
  eo.max_waiting = static_cast<int>(prompts.size());
  eo.prefill_chunk = 4096;
  Engine engine(b, eo);
  Run r;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (const auto& p : prompts) {
    GenerationRequest q;
    q.prompt = p;
    q.max_tokens = output;
    hs.push_back(engine.submit(q));
  }
  for (const auto& h : hs) {
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(20));
    r.tokens.push_back(h->tokens());
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.steps = engine.metrics().steps.load();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 && std::string(argv[1]) != "-" ? std::filesystem::path(argv[1])
                                                                              : kiln::bench::mid_model_dir();
  const int streams = argc > 2 ? std::atoi(argv[2]) : 16;
  const int prompt = argc > 3 ? std::atoi(argv[3]) : 64;
  const int output = argc > 4 ? std::atoi(argv[4]) : 32;
  const int threads = argc > 5 ? std::atoi(argv[5]) : 0;
  auto m = load_model(dir, threads, nullptr);
  std::mt19937 rng(11);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(streams));
  for (auto& p : prompts) {
    for (int i = 0; i < prompt; ++i) p.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(m->config.vocab_size)));
  }
  CpuBackend backend(*m->forward, {.max_slots = streams});
  const Run one = decode(backend, prompts, output, 1);
  const Run all = decode(backend, prompts, output, streams);
  const double tokens = static_cast<double>(streams) * output;
  std::printf("| model | streams | prompt | output | one at a time tok/s | batched tok/s | ratio | same tokens |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  std::printf("| %s | %d | %d | %d | %.1f (%.2f s) | %.1f (%.2f s, %llu steps) | %.2fx | %s |\n", dir.filename().c_str(),
              streams, prompt, output, tokens / one.seconds, one.seconds, tokens / all.seconds, all.seconds,
              static_cast<unsigned long long>(all.steps), one.seconds / all.seconds, one.tokens == all.tokens ? "yes" : "NO");
  return one.tokens == all.tokens ? 0 : 1;
}
