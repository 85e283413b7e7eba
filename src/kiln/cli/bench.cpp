#include "kiln/cli/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/cli/text_tokens.h"
#include "kiln/core/error.h"

#ifdef KILN_HAVE_CUDA
#include <chrono>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/model/cuda/synthetic.h"
#include "kiln/ops/cuda/read_bandwidth.h"
#include "kiln/runtime/cuda/gpu_generate.h"
#include "kiln/runtime/loaded_model.h"
#endif

namespace kiln::cli {

#ifndef KILN_HAVE_CUDA

int run_bench(const BenchOptions&, std::ostream&, std::ostream& err) {
  err << "kiln: error: `kiln bench` measures the CUDA backend, and this kiln was built without it (configure with "
         "nvcc on the PATH, or -DKILN_CUDA=ON)\n";
  return 1;
}

#else

namespace {

using model::cuda::GpuForward;
using model::cuda::GpuOptions;
using model::cuda::GpuWeights;

std::vector<int> parse_batches(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v < 1) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      fail(ErrorKind::Usage, "--batches: '{}' is not a positive integer", item);
    }
  }
  if (out.empty()) fail(ErrorKind::Usage, "--batches: no batch size given");
  return out;
}

ops::LinearScheme parse_scheme(const std::string& s) {
  for (auto v : {ops::LinearScheme::BF16, ops::LinearScheme::FP8Block, ops::LinearScheme::Int4Group,
                 ops::LinearScheme::MXFP4, ops::LinearScheme::NVFP4}) {
    if (s == ops::linear_scheme_name(v)) return v;
  }
  fail(ErrorKind::Usage, "--experts {}: one of bf16, fp8_block, int4_group, mxfp4, nvfp4", s);
}

// Weight bytes one main pass of B rows reads: every dense linear once, the routed
// experts the rows pick (B = 1: exactly top-k; otherwise the expected number of distinct
// experts under uniform routing, E (1 - (1 - k/E)^B)).
double pass_weight_bytes(const GpuWeights& w, int B) {
  const ModelConfig& c = w.config;
  double bytes = static_cast<double>(w.head.weight_bytes());
  const double E = static_cast<double>(c.n_routed_experts), K = static_cast<double>(c.num_experts_per_tok);
  const double distinct = B == 1 ? K : E * (1.0 - std::pow(1.0 - K / E, B));
  for (const auto& b : w.layers) {
    const auto& a = b.attn;
    for (const auto* l : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b, &b.ffn.gate}) bytes += static_cast<double>(l->weight_bytes());
    if (a.compressor) bytes += static_cast<double>(a.compressor->wkv.weight_bytes() + a.compressor->wgate.weight_bytes());
    if (a.indexer) {
      const auto& ix = *a.indexer;
      bytes += static_cast<double>(ix.wq_b.weight_bytes() + ix.weights_proj.weight_bytes() +
                                   ix.compressor.wkv.weight_bytes() + ix.compressor.wgate.weight_bytes());
    }
    if (b.ffn.shared) {
      const auto& s = *b.ffn.shared;
      bytes += static_cast<double>(s.w1.weight_bytes() + s.w2.weight_bytes() + s.w3.weight_bytes());
    }
    bytes += distinct * static_cast<double>(b.ffn.w1.expert_bytes() + b.ffn.w2.expert_bytes() + b.ffn.w3.expert_bytes());
  }
  return bytes;
}

}  // namespace

int run_bench(const BenchOptions& o, std::ostream& out, std::ostream& err) {
  const std::vector<int> batches = parse_batches(o.batches);
  int maxB = 0;
  for (int b : batches) maxB = std::max(maxB, b);
  if (o.steps < 1 || o.context < 1) fail(ErrorKind::Usage, "--steps and --context must be >= 1");
  if (o.mtp < 0 || o.mtp > runtime::kMaxDrafts) fail(ErrorKind::Usage, "--mtp {}: 0..{}", o.mtp, runtime::kMaxDrafts);
  if (o.synthetic == !o.model.empty()) fail(ErrorKind::Usage, "give exactly one of --model DIR and --synthetic");
  if (o.text && o.synthetic) fail(ErrorKind::Usage, "--text needs --model DIR (its tokenizer.json); the synthetic model has none");
  // Before any loading, so a bad --text fails at once.
  const std::vector<int32_t> text_ids = o.text ? tokenize_text_file(o.model, *o.text) : std::vector<int32_t>{};

  int dev = 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  err << fmt::format("bench: {} ({:.0f} GiB)\n", prop.name, static_cast<double>(prop.totalGlobalMem) / (1u << 30));
  err << "bench: measuring device-memory read bandwidth\n";
  const auto bw = ops::cuda::measure_read_bandwidth(size_t{4} << 30, 10);

  GpuOptions go;
  go.max_slots = maxB;
  go.max_rows = std::max({64, maxB * (o.mtp + 1), o.context});
  go.max_context = o.context + o.steps + 2 * (runtime::kMaxDrafts + 2) + 8;
  std::string label;
  std::unique_ptr<runtime::LoadedModel> loaded;
  std::unique_ptr<model::cuda::SyntheticModel> synth;
  std::unique_ptr<GpuForward> f;
  {
    const auto t0 = std::chrono::steady_clock::now();
    GpuWeights w;
    if (o.synthetic) {
      model::cuda::SyntheticSpec spec;
      spec.layers = o.layers;
      spec.all_bf16 = o.experts == "bf16";
      if (!spec.all_bf16) spec.experts = parse_scheme(o.experts);
      spec.mtp = o.mtp > 0;
      err << "bench: building the synthetic model\n";
      synth = std::make_unique<model::cuda::SyntheticModel>(spec);
      label = synth->describe();
      w = model::cuda::upload_weights(synth->weights(), synth->linears(), go.max_rows, &err);
    } else {
      loaded = runtime::load_model(o.model, 0, &err);
      if (o.mtp > 0 && loaded->weights.mtp.empty()) {
        fail_invalid("--mtp {}: {} {}", o.mtp, o.model.string(), model::mtp_unavailable(loaded->config, 0));
      }
      label = o.model.string();
      w = model::cuda::upload_weights(loaded->weights, model::cuda::checkpoint_linears(loaded->checkpoint, loaded->plan),
                                      go.max_rows, &err);
    }
    f = std::make_unique<GpuForward>(std::move(w), go);
    err << fmt::format("bench: loaded in {:.1f} s; {:.2f} GB of linear data, {:.2f} GB of decode state\n",
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                       static_cast<double>(f->weights().linear_bytes) / 1e9, static_cast<double>(f->state_bytes()) / 1e9);
  }
  const int64_t V = f->config().vocab_size;
  auto prompts_for = [&](int B) {
    std::vector<std::vector<int32_t>> p(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < o.context; ++t) {
        const size_t i = static_cast<size_t>(b) * static_cast<size_t>(o.context) + static_cast<size_t>(t);
        p[static_cast<size_t>(b)].push_back(text_ids.empty() ? static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(V))
                                                              : text_ids[i % text_ids.size()]);
      }
    }
    return p;
  };

  nlohmann::json rows = nlohmann::json::array();
  out << fmt::format("# kiln bench: {}\n# GPU {}; measured read bandwidth {:.0f} GB/s; prompt {} tokens, {} decode steps\n\n",
                     label, prop.name, bw.bytes_per_s / 1e9, o.context, o.steps);
  out << "| batch | tok/s (graphs, wall) | step ms (wall) | pass ms graph | pass ms eager | graph speedup | weight MB/pass | "
         "fraction of HBM |\n|---|---|---|---|---|---|---|---|\n";
  for (int B : batches) {
    const auto prompts = prompts_for(B);
    f->set_graphs(true);
    runtime::cuda::gpu_generate_greedy(*f, prompts, 3, 0);  // warm-up: captures the decode graph
    const auto res = runtime::cuda::gpu_generate_greedy(*f, prompts, o.steps + 1, 0);
    const double step_wall = res.decode_s / static_cast<double>(std::max<int64_t>(res.decode_passes, 1));
    std::vector<int32_t> tok(static_cast<size_t>(B)), slot(static_cast<size_t>(B)), pos(static_cast<size_t>(B));
    for (int b = 0; b < B; ++b) {
      tok[static_cast<size_t>(b)] = res.tokens[static_cast<size_t>(b)].back();
      slot[static_cast<size_t>(b)] = b;
      pos[static_cast<size_t>(b)] = o.context + o.steps;
    }
    const double g_ms = f->time_main(tok, slot, pos, 20);
    f->set_graphs(false);
    const double e_ms = f->time_main(tok, slot, pos, 20);
    f->set_graphs(true);
    std::vector<std::pair<std::string, double>> prof;
    if (B == batches.front() || B == maxB) prof = f->profile_main(tok, slot, pos, 5);
    const double bytes = pass_weight_bytes(f->weights(), B);
    const double frac = bytes / (g_ms * 1e-3) / bw.bytes_per_s;
    out << fmt::format("| {} | {:.1f} | {:.3f} | {:.3f} | {:.3f} | {:.2f}x | {:.1f} | {:.2f} |\n", B,
                       res.decode_tokens_per_s(), step_wall * 1e3, g_ms, e_ms, e_ms / g_ms, bytes / 1e6, frac);
    nlohmann::json r = {{"batch", B},          {"tokens_per_s", res.decode_tokens_per_s()}, {"step_ms_wall", step_wall * 1e3},
                        {"pass_ms_graph", g_ms}, {"pass_ms_eager", e_ms}, {"weight_bytes_per_pass", bytes},
                        {"hbm_fraction", frac}};
    if (!prof.empty()) {
      double sum = 0;
      for (const auto& [label, ms] : prof) sum += ms;
      std::string line;
      nlohmann::json pj = nlohmann::json::object();
      for (const auto& [label, ms] : prof) {
        line += fmt::format("{} {:.3f} ({:.0f}%); ", label, ms, 100.0 * ms / sum);
        pj[label] = ms;
      }
      out << fmt::format("|   ops (eager, ms per pass, all layers) | sum {:.3f} vs graph pass {:.3f} | {} |\n", sum, g_ms, line);
      r["ops_ms_eager"] = pj;
      r["ops_ms_sum"] = sum;
    }
    if (o.mtp > 0) {
      nlohmann::json spec = nlohmann::json::array();
      for (int k = 1; k <= o.mtp; ++k) {
        runtime::cuda::gpu_generate_greedy(*f, prompts, 3, k);  // warm-up
        const auto s = runtime::cuda::gpu_generate_greedy(*f, prompts, o.steps + 1, k);
        const bool same = s.tokens == res.tokens;
        std::vector<double> acc;
        for (int i = 0; i < k; ++i) acc.push_back(s.stats.acceptance_rate(static_cast<size_t>(i)));
        out << fmt::format("|   mtp {} | {:.1f} ({:.2f}x) | accepted per round {:.2f}; acceptance {} | tokens {} plain |\n",
                           k, s.decode_tokens_per_s(), s.decode_tokens_per_s() / res.decode_tokens_per_s(),
                           s.stats.mean_accepted_length(), fmt::join(acc, " / "), same ? "==" : "!=");
        spec.push_back({{"k", k}, {"tokens_per_s", s.decode_tokens_per_s()},
                        {"speedup", s.decode_tokens_per_s() / res.decode_tokens_per_s()},
                        {"mean_accepted_length", s.stats.mean_accepted_length()}, {"acceptance", acc},
                        {"same_tokens_as_plain", same}});
      }
      r["mtp"] = spec;
    }
    rows.push_back(r);
    out.flush();
  }
  if (o.json) {
    out << nlohmann::json{{"model", label},
                          {"gpu", prop.name},
                          {"read_bandwidth_bytes_per_s", bw.bytes_per_s},
                          {"context", o.context},
                          {"steps", o.steps},
                          {"rows", rows}}
               .dump()
        << "\n";
  }
  return 0;
}

#endif

}  // namespace kiln::cli
