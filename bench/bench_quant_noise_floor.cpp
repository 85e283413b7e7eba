// The noise floor of the quantization distances (docs/quantization.md): how far the
// fixtures' logits move when every linear weight gets Gaussian relative noise of a given
// size and nothing is quantized. The fixtures are tiny random models whose routing (hash /
// score top-k experts, indexer top-k) flips under noise as small as 1e-4 relative, which is
// why the max relative logit error of every recipe saturates near 0.5 while the RMS error
// and top-1 agreement still order the flavours. Not a test: it asserts nothing, it prints
// the reference table next to the one tests/cli/test_quantize_cli.cpp prints.
//   kiln_bench_quant_noise_floor [FIXTURE ...]     (default: tiny_a tiny_b)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/io/npy.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/loaded_model.h"
#include "support/artifacts.h"

namespace {

namespace fs = std::filesystem;
using namespace kiln;

// Main logits [T, vocab] of the model in `dir` over `tokens`, fed in one step.
std::vector<float> logits_of(const fs::path& dir, const std::vector<int32_t>& tokens, int64_t& vocab) {
  auto m = runtime::load_model(dir, 1, nullptr, {});
  vocab = m->config.vocab_size;
  std::vector<float> out(tokens.size() * static_cast<size_t>(vocab));
  auto st = m->forward->new_state();
  m->forward->step(st, tokens, out.data(), nullptr);
  return out;
}

// `src` with every linear dequantized to F32 and multiplied by (1 + eps * N(0, 1)),
// element by element in plan order (seed 1); plain tensors copied as stored.
void write_noisy(const fs::path& src, const fs::path& dst, double eps) {
  const Checkpoint ckpt = Checkpoint::open(src);
  const Plan plan = build_plan(ckpt, load_model_config(src));
  std::vector<SafetensorsWriter::Tensor> ts;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (const auto& l : plan.linears) {
    auto w = model::dequantize_linear(ckpt, l).w;
    for (auto& v : w) v *= 1.0f + static_cast<float>(eps) * nd(rng);
    std::vector<std::byte> b(w.size() * 4);
    std::memcpy(b.data(), w.data(), b.size());
    ts.push_back({l.path + ".weight", DType::F32, {l.n, l.k}, b});
  }
  for (const auto& p : plan.tensors) {
    auto by = ckpt.shards()[static_cast<size_t>(p.tensor.shard)].data(*p.tensor.info);
    ts.push_back({p.path, p.tensor.dtype(), p.tensor.shape(), std::vector<std::byte>(by.begin(), by.end())});
  }
  fs::create_directories(dst);
  SafetensorsWriter::write_file(dst / "model.safetensors", ts);
  std::ifstream in(src / "config.json");
  nlohmann::json c = nlohmann::json::parse(in);
  c.erase("quantization_config");
  c.erase("expert_dtype");
  std::ofstream(dst / "config.json") << c.dump(2);
}

struct Dist {
  double max_rel = 0, rms_rel = 0, top1 = 0;
};

// max |a - b| / max |b|, ||a - b|| / ||b||, and the share of rows whose argmax agrees.
Dist distance(const std::vector<float>& a, const std::vector<float>& b, int64_t cols) {
  double num = 0, den = 0, ss_d = 0, ss_b = 0;
  const int64_t rows = static_cast<int64_t>(b.size()) / cols;
  int64_t agree = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a.data() + r * cols;
    const float* br = b.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const double d = static_cast<double>(ar[c]) - br[c];
      num = std::max(num, std::fabs(d));
      den = std::max(den, std::fabs(static_cast<double>(br[c])));
      ss_d += d * d;
      ss_b += static_cast<double>(br[c]) * br[c];
    }
    agree += std::max_element(ar, ar + cols) - ar == std::max_element(br, br + cols) - br;
  }
  return {num / den, std::sqrt(ss_d / ss_b), static_cast<double>(agree) / static_cast<double>(rows)};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> fixtures(argv + 1, argv + argc);
  if (fixtures.empty()) fixtures = {"tiny_a", "tiny_b"};
  std::printf("| fixture | relative weight noise | logits max rel | logits rms rel | top-1 agree |\n"
              "|---|---|---|---|---|\n");
  for (const auto& fx : fixtures) {
    const fs::path dir = fs::path(KILN_TEST_DATA_DIR) / "fixtures" / fx;
    std::vector<int32_t> tokens;
    for (int64_t t : read_npy(dir / "tokens.npy").as_ints()) tokens.push_back(static_cast<int32_t>(t));
    int64_t vocab = 0;
    const std::vector<float> ref = logits_of(dir / "native", tokens, vocab);
    for (double eps : {1e-4, 1e-3, 1e-2, 3e-2}) {
      test::TempDir d("kiln-noise");
      write_noisy(dir / "native", d.path() / "noisy", eps);
      const Dist m = distance(logits_of(d.path() / "noisy", tokens, vocab), ref, vocab);
      std::printf("| %s | %g | %.3f | %.3f | %.3f |\n", fx.c_str(), eps, m.max_rel, m.rms_rel, m.top1);
    }
  }
  return 0;
}
