#include "kiln/cli/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "kiln/cli/text_tokens.h"
#include "kiln/cli/int_list.h"
#include "kiln/core/error.h"

#ifdef KILN_HAVE_CUDA
#include <chrono>
#include <thread>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/cli/backend_session.h"
#include "kiln/model/synthetic.h"
#include "kiln/runtime/cuda/device_model.h"
#include "kiln/ops/cuda/read_bandwidth.h"
#include "kiln/ops/cuda/fp8_gemm_peak.h"
#include "kiln/model/flops.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#include "kiln/runtime/engine.h"
#include "kiln/runtime/loaded_model.h"
#endif

namespace kiln::cli {

#ifndef KILN_HAVE_CUDA

int run_bench(const BenchOptions&, std::ostream&, std::ostream& err) {
  err << "kiln: error: `kiln bench` measures the CUDA backend, and this kiln was built without it (configure with "
         "nvcc on the PATH, or -DKILN_CUDA=ON); `kiln bench --serve` (the HTTP load generator) works in every build\n";
  return 1;
}

#else

namespace {

using model::cuda::GpuForward;
using model::cuda::GpuOptions;
using model::cuda::GpuWeights;

// "label ms (share%); ..." of a profile, its JSON object and the sum of its times.
std::tuple<std::string, nlohmann::json, double> profile_line(const std::vector<std::pair<std::string, double>>& prof) {
  double sum = 0;
  for (const auto& [label, ms] : prof) sum += ms;
  std::string line;
  nlohmann::json pj = nlohmann::json::object();
  for (const auto& [label, ms] : prof) {
    line += fmt::format("{} {:.3f} ({:.0f}%); ", label, ms, 100.0 * ms / sum);
    pj[label] = ms;
  }
  return {line, pj, sum};
}

SchemeKind parse_scheme(const std::string& s) {
  for (auto v : {SchemeKind::BF16, SchemeKind::FP8Block, SchemeKind::Int4Group,
                 SchemeKind::MXFP4, SchemeKind::NVFP4}) {
    if (s == scheme_kind_name(v)) return v;
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

// Greedy decoding of B prompts on the engine (every prompt in its own slot), timed while
// all B sequences decode: from the moment every one has its first token to the moment the
// first one finishes.
struct DecodeRun {
  std::vector<std::vector<int32_t>> tokens;
  double tokens_per_s = 0.0, step_ms = 0.0;
  std::array<double, runtime::EngineMetrics::kPhases> phase_ms{};  // per step, over the measured window
  runtime::DraftStats stats;  // summed over the batch
};

DecodeRun decode_on_engine(runtime::Backend& b, const std::vector<std::vector<int32_t>>& prompts, int steps, int k,
                           double dspark_min_survival = 0.0) {
  using Clock = std::chrono::steady_clock;
  const int B = static_cast<int>(prompts.size());
  runtime::EngineOptions eo;
  eo.max_batch = B;
  eo.mtp = k;
  eo.dspark_min_survival = dspark_min_survival;
  eo.prefill_chunk = std::max<int64_t>(1, b.max_rows() - int64_t{B} * (1 + k));
  runtime::Engine engine(b, eo);
  // Sequences whose prompts are fed early decode while later prompts are still being fed;
  // every request runs long enough that all B decode together for at least `steps` steps
  // (the same max_tokens for all and for every k, so greedy tokens stay comparable between
  // runs). A step's prefill budget holds at least one whole prompt (run_bench sizes the
  // passes so), so the prompts are fed within 2B + 1 steps.
  const int64_t feeding_steps = 2 * int64_t{B} + 1;
  std::vector<std::shared_ptr<runtime::RequestHandle>> hs;
  for (const auto& p : prompts) {
    runtime::GenerationRequest r;
    r.prompt = p;
    r.max_tokens = static_cast<int>(steps + 1 + feeding_steps);
    r.mtp = k;
    hs.push_back(engine.submit(std::move(r)));
    if (!hs.back()) fail(ErrorKind::Usage, "bench: the engine refused a request");
  }
  auto count = [&] {
    size_t n = 0;
    for (const auto& h : hs) n += h->tokens().size();
    return n;
  };
  auto all_started = [&] {
    return std::all_of(hs.begin(), hs.end(), [](const auto& h) { return !h->tokens().empty() || h->finished(); });
  };
  auto any_finished = [&] { return std::any_of(hs.begin(), hs.end(), [](const auto& h) { return h->finished(); }); };
  while (!all_started()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  const auto t0 = Clock::now();
  const size_t c0 = count();
  const uint64_t s0 = engine.metrics().steps.load();
  std::array<uint64_t, runtime::EngineMetrics::kPhases> ns0{}, ns1{};
  for (size_t i = 0; i < ns0.size(); ++i) ns0[i] = engine.metrics().step_ns[i].load();
  while (!any_finished()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  const auto t1 = Clock::now();
  const size_t c1 = count();
  const uint64_t s1 = engine.metrics().steps.load();
  for (size_t i = 0; i < ns1.size(); ++i) ns1[i] = engine.metrics().step_ns[i].load();
  DecodeRun r;
  for (size_t i = 0; i < ns1.size() && s1 > s0; ++i)
    r.phase_ms[i] = static_cast<double>(ns1[i] - ns0[i]) * 1e-6 / static_cast<double>(s1 - s0);
  for (const auto& h : hs) {
    while (!h->finished()) h->wait_tokens(h->tokens().size(), std::chrono::milliseconds(100));
    if (h->finish_reason() == runtime::FinishReason::Error) fail(ErrorKind::Usage, "bench: {}", h->error());
    r.tokens.push_back(h->tokens());
    const auto st = h->draft_stats();
    if (r.stats.proposed.size() < st.proposed.size()) {
      r.stats.k = st.k;
      r.stats.proposed.resize(st.proposed.size());
      r.stats.accepted.resize(st.accepted.size());
    }
    for (size_t i = 0; i < st.proposed.size(); ++i) {
      r.stats.proposed[i] += st.proposed[i];
      r.stats.accepted[i] += st.accepted[i];
    }
    r.stats.rounds += st.rounds;
    r.stats.accepted_drafts += st.accepted_drafts;
    r.stats.emitted += st.emitted;
  }
  const double dt = std::chrono::duration<double>(t1 - t0).count();
  r.tokens_per_s = dt > 0 ? static_cast<double>(c1 - c0) / dt : 0.0;
  r.step_ms = s1 > s0 ? dt * 1e3 / static_cast<double>(s1 - s0) : 0.0;
  if (c1 <= c0 || s1 - s0 < 4) {
    // No window with every sequence decoding (a prompt was still being fed when the first
    // sequence finished): the whole run from the first token to the last instead.
    Clock::time_point first = Clock::time_point::max(), last = Clock::time_point::min();
    size_t tokens = 0;
    for (const auto& h : hs) {
      const auto t = h->timing();
      first = std::min(first, t.first_token);
      last = std::max(last, t.finished);
      tokens += h->tokens().size() - 1;
    }
    const double all = std::chrono::duration<double>(last - first).count();
    r.tokens_per_s = all > 0 ? static_cast<double>(tokens) / all : 0.0;
    r.step_ms = 0.0;  // not measured
  }
  return r;
}

// "draft 0.412, main 0.550, ..." for the engine's step phases (ms per step).
std::string phase_text(const std::array<double, runtime::EngineMetrics::kPhases>& ms) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ms.size(); ++i) parts.push_back(fmt::format("{} {:.3f}", runtime::EngineMetrics::kPhaseNames[i], ms[i]));
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

int run_bench(const BenchOptions& o, std::ostream& out, std::ostream& err) {
  const std::vector<int> batches = parse_positive_list(o.batches, "--batches");
  int maxB = 0;
  for (int b : batches) maxB = std::max(maxB, b);
  if (o.steps < 1 || o.context < 1) fail(ErrorKind::Usage, "--steps and --context must be >= 1");
  if (o.mtp < 0 || o.mtp > runtime::kMaxDSparkDrafts)
    fail(ErrorKind::Usage, "--mtp {}: 0..{} (MTP 0..{}, a DSpark drafter up to its block size)", o.mtp,
         runtime::kMaxDSparkDrafts, runtime::kMaxDrafts);
  if (o.synthetic && o.mtp > runtime::kMaxDrafts) fail(ErrorKind::Usage, "--mtp {}: the synthetic MTP block takes 0..{}", o.mtp, runtime::kMaxDrafts);
  if (o.synthetic == !o.model.empty()) fail(ErrorKind::Usage, "give exactly one of --model DIR and --synthetic");
  if (o.text && o.synthetic) fail(ErrorKind::Usage, "--text needs --model DIR (its tokenizer.json); the synthetic model has none");
  const ops::Precision precision = resolve_precision(o.precision, "cuda");
  // Before any loading, so a bad --text fails at once.
  const std::vector<int32_t> text_ids = o.text ? tokenize_text_file(o.model, *o.text) : std::vector<int32_t>{};
  // --mtp K drafts with the checkpoint's drafter, checked as generate checks it (its DSpark
  // drafter when it has one, K up to the block size, else its MTP block), also before the
  // device is touched.
  const bool dspark = !o.synthetic && o.mtp > 0 && resolve_drafting(o.model, load_model_config(o.model), {"", o.mtp, true}).dspark;
  if (o.dspark_min_survival > 0 && !dspark) {
    fail(ErrorKind::Usage, "--dspark-min-survival {}: needs --mtp K and a checkpoint with a DSpark drafter ({})",
         o.dspark_min_survival, o.synthetic ? "the synthetic model has none" : o.model.string() + " with --mtp " + std::to_string(o.mtp));
  }

  int dev = 0;
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  err << fmt::format("bench: {} ({:.0f} GiB)\n", prop.name, static_cast<double>(prop.totalGlobalMem) / (1u << 30));
  err << "bench: measuring device-memory read bandwidth\n";
  const auto bw = ops::cuda::measure_read_bandwidth(size_t{4} << 30, 10);

  // Prefill shapes: S sequences of T tokens.
  std::vector<std::pair<int, int>> prefills;
  if (!o.prefill.empty()) {
    std::stringstream ss(o.prefill);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto x = item.find('x');
      int S = 0, T = 0;
      try {
        if (x != std::string::npos) S = std::stoi(item.substr(0, x)), T = std::stoi(item.substr(x + 1));
      } catch (const std::exception&) {
        S = 0;
      }
      if (S < 1 || T < 1) fail(ErrorKind::Usage, "--prefill {}: expected SxT entries such as 1x8192", o.prefill);
      prefills.emplace_back(S, T);
    }
    if (o.prefill_chunk < 1 || o.prefill_chunk > 4096) fail(ErrorKind::Usage, "--prefill-chunk {}: 1..4096", o.prefill_chunk);
  }
  int pre_slots = 0;
  int64_t pre_ctx = 0;
  for (const auto& [S, T] : prefills) pre_slots = std::max(pre_slots, S), pre_ctx = std::max<int64_t>(pre_ctx, T);

  GpuOptions go;
  go.max_slots = std::max(maxB, pre_slots);
  go.max_rows = std::max({64, maxB * (o.mtp + 1) + o.context, prefills.empty() ? 0 : o.prefill_chunk});
  // decode_on_engine's requests also decode while the other prompts are fed (2B + 1 steps).
  go.max_context = std::max<int64_t>(pre_ctx, o.context + o.steps + 2 * (runtime::kMaxDrafts + 2) + 8 + 2 * int64_t{maxB} + 1);
  std::string label;
  std::unique_ptr<model::SyntheticModel> synth;
  std::unique_ptr<runtime::cuda::GpuBackend> backend;
  {
    const auto t0 = std::chrono::steady_clock::now();
    if (o.synthetic) {
      model::SyntheticSpec spec;
      spec.layers = o.layers;
      spec.all_bf16 = o.experts == "bf16";
      if (!spec.all_bf16) spec.experts = parse_scheme(o.experts);
      spec.mtp = o.mtp > 0;
      err << "bench: building the synthetic model\n";
      synth = std::make_unique<model::SyntheticModel>(spec);
      synth->set_precision(precision);
      label = synth->describe() + ", " + std::string(ops::precision_name(precision)) + " precision";
      GpuWeights w = model::cuda::upload_weights(synth->weights(), synth->linears(), go.max_rows, &err);
      backend = std::make_unique<runtime::cuda::GpuBackend>(std::make_unique<GpuForward>(std::move(w), go));
    } else {
      // Straight from the mapped shards to the device (runtime/cuda/device_model.h).
      runtime::cuda::DeviceModelOptions dmo;
      dmo.max_slots = go.max_slots;
      dmo.max_rows = go.max_rows;
      dmo.max_context = go.max_context;
      dmo.precision = precision;
      dmo.progress = &err;
      dmo.dspark = dspark;
      auto dm = runtime::cuda::open_device_model(o.model, dmo);
      if (o.mtp > 0 && !dspark && dm.forward->mtp_blocks() == 0)
        fail_invalid("--mtp {}: {} {}", o.mtp, o.model.string(), model::mtp_unavailable(dm.forward->config(), 0));
      label = o.model.string() + ", " + std::string(ops::precision_name(precision)) + " precision" +
              (dspark ? ", DSpark drafter" : "");
      backend = std::make_unique<runtime::cuda::GpuBackend>(std::move(dm.forward), std::move(dm.dspark));
    }
    const GpuForward* f = &backend->forward();
    err << fmt::format("bench: loaded in {:.1f} s; {:.2f} GB of linear data, {:.2f} GB of decode state\n",
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                       static_cast<double>(f->weights().linear_bytes) / 1e9, static_cast<double>(f->state_bytes()) / 1e9);
  }
  GpuForward* f = &backend->forward();
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
    decode_on_engine(*backend, prompts, 3, 0);  // warm-up: captures the decode graphs
    const DecodeRun res = decode_on_engine(*backend, prompts, o.steps, 0);
    const double step_wall = res.step_ms * 1e-3;
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
                       res.tokens_per_s, step_wall * 1e3, g_ms, e_ms, e_ms / g_ms, bytes / 1e6, frac);
    out << fmt::format("|   host wall time of a step, by phase (ms) | {} |\n", phase_text(res.phase_ms));
    nlohmann::json r = {{"batch", B},          {"tokens_per_s", res.tokens_per_s}, {"step_ms_wall", step_wall * 1e3},
                        {"step_phase_ms", res.phase_ms},
                        {"pass_ms_graph", g_ms}, {"pass_ms_eager", e_ms}, {"weight_bytes_per_pass", bytes},
                        {"hbm_fraction", frac}};
    // Launches per pass, from the main pass's graph (captured by time_main above).
    const ops::cuda::GraphNodes nodes = f->main_graph_nodes(B);
    if (nodes.kernels > 0) {
      const int64_t layers = f->config().num_layers;
      out << fmt::format("|   graph of the pass | {} kernels ({:.1f} per layer over {} layers, head and embedding included), "
                         "{} other nodes |\n",
                         nodes.kernels, static_cast<double>(nodes.kernels) / static_cast<double>(layers), layers, nodes.others);
      r["graph_kernels"] = nodes.kernels;
      r["graph_other_nodes"] = nodes.others;
    }
    if (!prof.empty()) {
      const auto [line, pj, sum] = profile_line(prof);
      out << fmt::format("|   ops (eager, ms per pass, all layers) | sum {:.3f} vs graph pass {:.3f} | {} |\n", sum, g_ms, line);
      r["ops_ms_eager"] = pj;
      r["ops_ms_sum"] = sum;
    }
    if (o.mtp > 0) {
      nlohmann::json spec = nlohmann::json::array();
      for (int k = 1; k <= o.mtp; ++k) {
        decode_on_engine(*backend, prompts, 3, k, o.dspark_min_survival);  // warm-up
        const DecodeRun s = decode_on_engine(*backend, prompts, o.steps, k, o.dspark_min_survival);
        const bool same = s.tokens == res.tokens;
        std::vector<double> acc;
        for (int i = 0; i < k; ++i) acc.push_back(s.stats.acceptance_rate(static_cast<size_t>(i)));
        const std::string drafter = backend->dspark_block() == 0 ? "mtp"
                                    : o.dspark_min_survival > 0 ? fmt::format("dspark (survival >= {})", o.dspark_min_survival)
                                                                : "dspark";
        out << fmt::format("|   {} {} | {:.1f} ({:.2f}x) | accepted per round {:.2f}; acceptance {} | tokens {} plain | "
                           "step ms {:.3f}: {} |\n",
                           drafter, k, s.tokens_per_s, s.tokens_per_s / res.tokens_per_s,
                           s.stats.mean_accepted_length(), fmt::join(acc, " / "), same ? "==" : "!=", s.step_ms,
                           phase_text(s.phase_ms));
        spec.push_back({{"k", k}, {"tokens_per_s", s.tokens_per_s},
                        {"speedup", s.tokens_per_s / res.tokens_per_s},
                        {"mean_accepted_length", s.stats.mean_accepted_length()}, {"acceptance", acc},
                        {"same_tokens_as_plain", same}, {"step_ms_wall", s.step_ms}, {"step_phase_ms", s.phase_ms},
                        {"dspark_min_survival", o.dspark_min_survival}});
      }
      r["mtp"] = spec;
    }
    rows.push_back(r);
    out.flush();
  }
  nlohmann::json pre_rows = nlohmann::json::array();
  if (!prefills.empty()) {
    f->set_graphs(false);
    // The anchor: cuBLASLt's dense FP8 GEMM at 8192 x 4096 x 4096 on this GPU, now.
    const auto fp8 = ops::cuda::measure_fp8_gemm_peak(8192, 4096, 4096, 20);
    out << fmt::format("\n# anchor: cuBLASLt dense FP8 GEMM {}x{}x{} (e4m3, fp32 accumulation, bf16 out): {:.3f} ms, "
                       "{:.0f} TFLOP/s\n",
                       fp8.m, fp8.n, fp8.k, fp8.ms, fp8.flops_per_s / 1e12);
    out << fmt::format("\n| prefill (sequences x tokens) | passes of {} rows | ms | tok/s | GFLOP/token (linears + "
                       "attention) | TFLOP/s | fraction of the FP8 GEMM |\n|---|---|---|---|---|---|---|\n",
                       o.prefill_chunk);
    for (const auto& [S, T] : prefills) {
      // Every prompt row (slot s, position t), sequence after sequence, cut into passes.
      std::vector<int32_t> tok, slot, pos;
      for (int s = 0; s < S; ++s) {
        for (int t = 0; t < T; ++t) {
          tok.push_back(static_cast<int32_t>((static_cast<int64_t>(s) * T + t) * 7919 % V));
          slot.push_back(s);
          pos.push_back(t);
        }
      }
      // As the engine asks: logits only for the last row of each prompt in a pass.
      auto last_rows = [&](size_t r0, size_t n) {
        std::vector<int32_t> h;
        for (size_t r = 0; r < n; ++r)
          if (pos[r0 + r] == T - 1) h.push_back(static_cast<int32_t>(r));
        return h;
      };
      double ms = 0;
      int passes = 0;
      for (size_t r0 = 0; r0 < tok.size(); r0 += static_cast<size_t>(o.prefill_chunk)) {
        const size_t n = std::min(tok.size() - r0, static_cast<size_t>(o.prefill_chunk));
        const auto head = last_rows(r0, n);
        ms += f->time_main(std::span(tok).subspan(r0, n), std::span(slot).subspan(r0, n), std::span(pos).subspan(r0, n), 3,
                           std::span<const int32_t>(head));
        ++passes;
      }
      const double tps = static_cast<double>(tok.size()) / (ms * 1e-3);
      const model::TokenFlops fl = model::prefill_flops_per_token(f->config(), T);
      const double fps = tps * fl.total();
      out << fmt::format("| {} x {} | {} | {:.2f} | {:.0f} | {:.2f} ({:.2f} + {:.2f}) | {:.1f} | {:.3f} |\n", S, T, passes,
                         ms, tps, fl.total() / 1e9, fl.linear / 1e9, fl.attention / 1e9, fps / 1e12,
                         fps / fp8.flops_per_s);
      nlohmann::json row = {{"sequences", S},         {"tokens", T},
                            {"passes", passes},       {"ms", ms},
                            {"tokens_per_s", tps},    {"flops_per_token", fl.total()},
                            {"linear_flops_per_token", fl.linear}, {"attention_flops_per_token", fl.attention},
                            {"fp8_gemm_flops_per_s", fp8.flops_per_s}, {"fraction_of_fp8_gemm", fps / fp8.flops_per_s}};
      if (&S == &prefills.front().first) {  // where the last pass of the first entry goes
        const size_t r0 = (tok.size() - 1) / static_cast<size_t>(o.prefill_chunk) * static_cast<size_t>(o.prefill_chunk);
        const auto head = last_rows(r0, tok.size() - r0);
        const auto [line, pj, sum] = profile_line(f->profile_main(std::span(tok).subspan(r0), std::span(slot).subspan(r0),
                                                                  std::span(pos).subspan(r0), 1,
                                                                  std::span<const int32_t>(head)));
        out << fmt::format("|   ops of its last pass ({} rows; eager, ms, all layers) | sum {:.3f} | {} |\n",
                           tok.size() - r0, sum, line);
        row["last_pass_ops_ms"] = pj;
      }
      pre_rows.push_back(row);
      out.flush();
    }
    f->set_graphs(true);
  }
  if (o.json) {
    out << nlohmann::json{{"model", label},
                          {"prefill", pre_rows},
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
