// How far the `deepseek` precision's logits are from `exact`'s (docs/precision.md): the
// model over the first P tokens of a text, in windows of W tokens each fed in one pass,
// loaded once per precision. Per position: the largest logit difference relative to the
// row's largest |exact| logit, whether the argmax agrees, and KL(exact || deepseek). Not a
// test: it prints the table docs/precision.md records.
//   kiln_bench_precision_distance MODEL_DIR TEXT_FILE [POSITIONS=1024] [WINDOW=512] [THREADS=0]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kiln/cli/text_tokens.h"
#include "kiln/core/error.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/loaded_model.h"

namespace {

using namespace kiln;

std::vector<float> logits_in(const std::string& dir, ops::Precision p, const std::vector<int32_t>& tokens, int64_t window,
                             int threads, int64_t& vocab) {
  auto m = runtime::load_model(dir, threads, nullptr, {});
  model::set_precision(m->weights, p);
  vocab = m->config.vocab_size;
  std::vector<float> out(tokens.size() * static_cast<size_t>(vocab));
  for (size_t b = 0; b < tokens.size(); b += static_cast<size_t>(window)) {
    const size_t e = std::min(tokens.size(), b + static_cast<size_t>(window));
    auto st = m->forward->new_state();
    m->forward->step(st, std::span(tokens.data() + b, e - b), out.data() + b * static_cast<size_t>(vocab), nullptr);
  }
  return out;
}

double log_softmax_at(const float* row, int64_t V, int64_t i, double& lse) {
  double mx = row[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(row[v] - mx);
  lse = mx + std::log(s);
  return row[i] - lse;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE [POSITIONS=1024] [WINDOW=512] [THREADS=0]\n", argv[0]);
    return 1;
  }
  try {
    const std::string dir = argv[1];
    const int64_t P = argc > 3 ? std::stoll(argv[3]) : 1024, W = argc > 4 ? std::stoll(argv[4]) : 512;
    const int threads = argc > 5 ? std::stoi(argv[5]) : 0;
    std::vector<int32_t> tokens = cli::tokenize_text_file(dir, argv[2]);
    if (static_cast<int64_t>(tokens.size()) < P) fail(ErrorKind::Usage, "the text has {} tokens; {} asked", tokens.size(), P);
    tokens.resize(static_cast<size_t>(P));
    int64_t V = 0;
    const auto ex = logits_in(dir, ops::Precision::Exact, tokens, W, threads, V);
    const auto ds = logits_in(dir, ops::Precision::DeepSeek, tokens, W, threads, V);
    std::vector<double> rel(static_cast<size_t>(P));
    int64_t agree = 0;
    double kl_sum = 0;
    for (int64_t t = 0; t < P; ++t) {
      const float* a = ex.data() + t * V;
      const float* b = ds.data() + t * V;
      double diff = 0, scale = 0;
      for (int64_t v = 0; v < V; ++v) {
        diff = std::max(diff, std::abs(static_cast<double>(a[v]) - b[v]));
        scale = std::max(scale, std::abs(static_cast<double>(a[v])));
      }
      rel[static_cast<size_t>(t)] = diff / scale;
      agree += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
      double la = 0, lb = 0;
      log_softmax_at(a, V, 0, la);
      log_softmax_at(b, V, 0, lb);
      double kl = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double pa = a[v] - la, pb = b[v] - lb;
        kl += std::exp(pa) * (pa - pb);
      }
      kl_sum += kl;
    }
    std::vector<double> sorted = rel;
    std::sort(sorted.begin(), sorted.end());
    double mean = 0;
    for (double r : rel) mean += r;
    mean /= static_cast<double>(P);
    std::printf("| %s | %lld | %.2e | %.2e | %.2e | %.2e | %.4f | %.2e |\n", dir.c_str(), static_cast<long long>(P), mean,
                sorted[sorted.size() / 2], sorted[sorted.size() * 99 / 100], sorted.back(),
                static_cast<double>(agree) / static_cast<double>(P), kl_sum / static_cast<double>(P));
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  }
  return 0;
}
