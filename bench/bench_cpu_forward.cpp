// CPU reference forward throughput: prefill and one-token decode, on a checkpoint
// directory (e.g. a fixture) or on a mid-size synthetic DeepSeek-V4 (hidden 1024,
// 8 layers, 32 experts top-4) written with the project's writer in the native layout
// (FP8 attention, MXFP4 experts).
//   kiln_bench_cpu_forward [MODEL_DIR|-] [PROMPT_TOKENS] [DECODE_TOKENS] [stored|fp32]
// stored (default): linear weights stay in their on-disk form and are decoded inside the
// kernels; fp32: dequantized at load. Prints tokens/s, the resident linear weight bytes,
// the weight bytes one decode token reads in that form, and the ratio of the decode step
// time to the floor bytes / measured memory bandwidth.
#include <algorithm>
#include <fstream>
#include <string>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kiln/runtime/loaded_model.h"
#include "mid_model.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Single-thread memcpy bandwidth over a buffer far larger than the caches (bytes/s).
double memory_bandwidth() {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1), b(n, 2);
  double best = 0.0;
  for (int i = 0; i < 3; ++i) {
    double t0 = now_s();
    std::memcpy(b.data(), a.data(), n);
    best = std::max(best, 2.0 * static_cast<double>(n) / (now_s() - t0));
  }
  return best + static_cast<double>(b[n / 2]) * 0.0;
}

// Resident set size of this process (bytes), from /proc/self/status.
double rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string k;
  while (f >> k) {
    if (k == "VmRSS:") {
      double kb = 0;
      f >> kb;
      return kb * 1024.0;
    }
  }
  return 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir;
  if (argc > 1 && std::string(argv[1]) != "-") {
    dir = argv[1];
  } else {
    dir = kiln::bench::mid_model_dir();
  }
  const int prompt = argc > 2 ? std::atoi(argv[2]) : 256;
  const int decode = argc > 3 ? std::atoi(argv[3]) : 32;
  kiln::model::LoadOptions opt;
  opt.dequantize = argc > 4 && std::string(argv[4]) == "fp32";

  double t0 = now_s();
  auto m = kiln::runtime::load_model(dir, 0, nullptr, opt);
  const double load_s = now_s() - t0;
  const double rss_loaded = rss_bytes();
  const auto& c = m->config;
  std::mt19937 rng(7);
  std::vector<int32_t> ids(static_cast<size_t>(prompt));
  for (auto& t : ids) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size));

  std::vector<float> logits(static_cast<size_t>(prompt) * static_cast<size_t>(c.vocab_size));
  auto st = m->forward->new_state();
  t0 = now_s();
  m->forward->step(st, ids, logits.data(), nullptr);
  const double prefill_s = now_s() - t0;

  std::vector<float> one(static_cast<size_t>(c.vocab_size));
  t0 = now_s();
  for (int i = 0; i < decode; ++i) {
    const int32_t tok[1] = {static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab_size))};
    m->forward->step(st, tok, one.data(), nullptr);
  }
  const double decode_s = now_s() - t0;

  // Weight bytes one decode token reads (in the form held): every dense linear + top-k
  // routed experts.
  double bytes = 0.0;
  auto lin = [&](const kiln::model::Linear& l) { bytes += static_cast<double>(l.bytes()); };
  for (const auto& b : m->weights.layers) {
    const auto& a = b.attn;
    for (const auto* l : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &b.ffn.gate}) lin(*l);
    if (a.compressor) { lin(a.compressor->wkv); lin(a.compressor->wgate); }
    if (a.indexer) {
      lin(a.indexer->wq_b); lin(a.indexer->weights_proj);
      lin(a.indexer->compressor.wkv); lin(a.indexer->compressor.wgate);
    }
    const auto& e = b.ffn.experts.at(0);
    bytes += static_cast<double>(c.num_experts_per_tok) * static_cast<double>(e.w1.bytes() + e.w2.bytes() + e.w3.bytes());
    if (b.ffn.shared) { lin(b.ffn.shared->w1); lin(b.ffn.shared->w2); lin(b.ffn.shared->w3); }
  }
  lin(m->weights.head);
  const double bw = memory_bandwidth();
  const double step = decode_s / decode, floor = bytes / bw;
  std::printf("model %s: hidden %ld, %ld layers, %ld experts top-%ld, vocab %ld (load %.2f s)\n", dir.c_str(),
              static_cast<long>(c.hidden_size), static_cast<long>(c.num_layers), static_cast<long>(c.n_routed_experts),
              static_cast<long>(c.num_experts_per_tok), static_cast<long>(c.vocab_size), load_s);
  std::printf("weights %s: %.1f MB of linear weights resident; process RSS after load %.1f MB\n",
              opt.dequantize ? "fp32 (dequantized at load)" : "stored form (decoded in the kernels)",
              static_cast<double>(kiln::model::linear_weight_bytes(m->weights)) / 1e6, rss_loaded / 1e6);
  std::printf("prefill: %d tokens in %.3f s = %.1f tokens/s\n", prompt, prefill_s, prompt / prefill_s);
  std::printf("decode:  %d tokens in %.3f s = %.1f tokens/s (%.2f ms/token)\n", decode, decode_s, decode / decode_s,
              1e3 * step);
  std::printf("decode bytes/token: %.1f MB weights; memcpy bandwidth %.1f GB/s -> floor %.2f ms; step/floor %.1fx\n",
              bytes / 1e6, bw / 1e9, 1e3 * floor, step / floor);
  return 0;
}
