// What the GPU tests share: the artifact flavours every GPU test runs (the fixtures in both
// namings, every quantize recipe, the router score functions), their model directories,
// the load through the CPU model (runtime::load_model, then upload_weights from its
// Weights: the path the straight-to-device loader is compared with), and prompts.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/cli/quantize.h"
#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/model/linear_source.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#include "support/artifacts.h"

namespace kiln::gpu_test {

namespace fs = std::filesystem;
using model::cuda::GpuForward;
using model::cuda::GpuOptions;

inline const std::string kFixtures = std::string(KILN_TEST_DATA_DIR) + "/fixtures";

struct Flavour {
  std::string label;
  std::string fixture;  // tiny_a / tiny_b
  std::string layout;   // native / hf
  std::string recipe;   // "" = as stored (BF16)
  std::string scoring;  // "" = the fixture's scoring_func (sqrtsoftplus), else config.json's rewritten
};

inline std::vector<Flavour> flavours() {
  return {{"tiny_a native bf16", "tiny_a", "native", "", ""},
          {"tiny_a hf bf16", "tiny_a", "hf", "", ""},
          {"tiny_b native bf16", "tiny_b", "native", "", ""},
          {"tiny_a deepseek-native (fp8 + mxfp4)", "tiny_a", "native", "deepseek-native", ""},
          {"tiny_a deepseek-native-nvfp4", "tiny_a", "native", "deepseek-native-nvfp4", ""},
          {"tiny_a w4a16-fp8-mtp", "tiny_a", "native", "w4a16-fp8-mtp", ""},
          {"tiny_a nvfp4-fp8-mtp", "tiny_a", "native", "nvfp4-fp8-mtp", ""},
          {"tiny_a fp8-v3-style", "tiny_a", "native", "fp8-v3-style", ""},
          {"tiny_b fp8-v3-style", "tiny_b", "native", "fp8-v3-style", ""},
          {"tiny_a native bf16, scoring softmax", "tiny_a", "native", "", "softmax"},
          {"tiny_b native bf16, scoring sigmoid", "tiny_b", "native", "", "sigmoid"}};
}

// The flavour's model directory (quantized into `tmp` when it has a recipe; copied with
// its scoring_func rewritten when it has one).
inline fs::path model_dir(const Flavour& f, const test::TempDir& tmp) {
  const fs::path src = kFixtures + "/" + f.fixture + "/" + f.layout;
  if (!f.scoring.empty()) {
    const fs::path dst = tmp.path() / "s";
    fs::create_directories(dst);
    for (const auto& e : fs::directory_iterator(src)) fs::copy_file(e.path(), dst / e.path().filename());
    std::ifstream in(src / "config.json");
    nlohmann::json cfg = nlohmann::json::parse(in);
    cfg["scoring_func"] = f.scoring;
    std::ofstream(dst / "config.json", std::ios::trunc) << cfg.dump(2);
    return dst;
  }
  if (f.recipe.empty()) return src;
  cli::QuantizeOptions o;
  o.model = src;
  o.recipe = f.recipe;
  o.out = tmp.path() / "q";
  std::ostringstream so, se;
  if (cli::run_quantize(o, so, se) != 0) ADD_FAILURE() << se.str();
  return o.out;
}

struct Loaded {
  std::unique_ptr<runtime::LoadedModel> cpu;
  std::unique_ptr<runtime::cuda::GpuBackend> backend;  // owns the GPU forward
  GpuForward* gpu = nullptr;
};

// precision: both the CPU forward and the GPU weights run in it (model::set_precision).
inline Loaded load(const fs::path& dir, GpuOptions opt = {}, ops::Precision precision = ops::Precision::Exact) {
  Loaded l;
  l.cpu = runtime::load_model(dir, 2, nullptr);
  model::set_precision(l.cpu->weights, precision);
  if (opt.max_context == GpuOptions{}.max_context) opt.max_context = 1024;
  auto w = model::cuda::upload_weights(l.cpu->weights, model::checkpoint_linears(l.cpu->checkpoint, l.cpu->plan),
                                       opt.max_rows, nullptr);
  l.backend = std::make_unique<runtime::cuda::GpuBackend>(std::make_unique<GpuForward>(std::move(w), opt));
  l.gpu = &l.backend->forward();
  return l;
}

inline std::vector<int32_t> prompt_tokens(int64_t vocab, int T, int salt = 0) {
  std::vector<int32_t> t(static_cast<size_t>(T));
  for (int i = 0; i < T; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 5 + salt * 11) % vocab);
  return t;
}

inline std::vector<int32_t> iota_vec(int n, int from = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

// Greedy decoding of every prompt (each in its own slot, all in one engine) on the GPU
// backend: the engine that `kiln serve` and `kiln generate --device cuda` run.
struct EngineRun {
  std::vector<std::vector<int32_t>> tokens;
  int64_t rounds = 0;
};
inline EngineRun decode_greedy(runtime::Backend& b, const std::vector<std::vector<int32_t>>& prompts, int max_tokens, int k) {
  runtime::EngineOptions eo;
  eo.max_batch = static_cast<int>(prompts.size());
  eo.mtp = k;
  runtime::Engine engine(b, eo);
  std::vector<std::shared_ptr<runtime::RequestHandle>> hs;
  for (const auto& p : prompts) {
    runtime::GenerationRequest r;
    r.prompt = p;
    r.max_tokens = max_tokens;
    r.mtp = k;
    hs.push_back(engine.submit(r));
  }
  EngineRun out;
  for (const auto& h : hs) {
    while (!h->finished()) h->wait_tokens(0, std::chrono::milliseconds(50));
    EXPECT_EQ(h->finish_reason(), runtime::FinishReason::Length) << h->error();
    out.tokens.push_back(h->tokens());
    out.rounds += h->draft_stats().rounds;
  }
  return out;
}

// Largest |a - b| over a row, relative to the row's largest |b|, maximised over rows.
inline double max_rel_row_error(const std::vector<float>& a, const std::vector<float>& b, int64_t width) {
  double worst = 0;
  for (size_t r = 0; r * static_cast<size_t>(width) < b.size(); ++r) {
    double scale = 1e-30, err = 0;
    for (int64_t i = 0; i < width; ++i) {
      const size_t k = r * static_cast<size_t>(width) + static_cast<size_t>(i);
      scale = std::max(scale, std::fabs(static_cast<double>(b[k])));
      err = std::max(err, std::fabs(static_cast<double>(a[k]) - static_cast<double>(b[k])));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

}  // namespace kiln::gpu_test
