#include "kiln/cli/run_commands.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/npy.h"
#include "kiln/runtime/loaded_model.h"
#include "kiln/runtime/speculative.h"

#ifdef KILN_HAVE_CUDA
#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/runtime/cuda/gpu_generate.h"
#endif

namespace kiln::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void check_device(const std::string& device, bool cuda_ok) {
  if (device == "cpu") return;
  if (device == "cuda" && cuda_ok) {
#ifdef KILN_HAVE_CUDA
    return;
#else
    fail(ErrorKind::Usage, "--device cuda: this kiln was built without the CUDA backend (configure with nvcc on the PATH)");
#endif
  }
  fail(ErrorKind::Usage, "--device {}: expected {}", device, cuda_ok ? "cpu or cuda" : "cpu (this command runs on the CPU reference backend)");
}

#ifdef KILN_HAVE_CUDA
// Greedy decoding of one prompt on the GPU forward, as GenerateResults. The GPU loop stops
// on length only; a result is cut after its first eos here.
class GpuGreedy {
 public:
  GpuGreedy(const runtime::LoadedModel& m, int64_t max_context, std::ostream* progress)
      : f_(model::cuda::upload_weights(m.weights, model::cuda::checkpoint_linears(m.checkpoint, m.plan), kMaxRows,
                                       progress),
           options(max_context)) {}

  // k = 0: plain; k > 0: MTP speculative decoding with k drafts per round.
  runtime::GenerateResult run(const std::vector<int32_t>& ids, int max_tokens, int k, int32_t eos) {
    runtime::cuda::GpuGenerateResult g = runtime::cuda::gpu_generate_greedy(f_, {ids}, max_tokens, k);
    runtime::GenerateResult r;
    r.tokens = std::move(g.tokens.at(0));
    if (eos >= 0) {
      auto it = std::find(r.tokens.begin(), r.tokens.end(), eos);
      if (it != r.tokens.end()) {
        r.tokens.erase(it + 1, r.tokens.end());
        r.stop = "eos";
      }
    }
    r.prefill_s = g.prefill_s;
    r.decode_s = g.decode_s;
    r.stats = g.stats;
    return r;
  }

 private:
  static constexpr int kMaxRows = 64;
  static model::cuda::GpuOptions options(int64_t max_context) {
    model::cuda::GpuOptions go;
    go.max_slots = 1;
    go.max_rows = kMaxRows;
    go.max_context = max_context;
    return go;
  }
  model::cuda::GpuForward f_;
};
#endif

void check_ids(const std::vector<int32_t>& ids, int64_t vocab) {
  if (ids.empty()) fail(ErrorKind::Usage, "--tokens: no token ids given");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab)
      fail(ErrorKind::Usage, "--tokens: id {} at position {} is outside the vocabulary [0, {})", ids[i], i, vocab);
  }
}

// Feeding schedule: chunk sizes for full (one chunk), incremental (1) and chunked:N.
int64_t chunk_size(const std::string& mode, int64_t total) {
  if (mode == "full") return std::max<int64_t>(total, 1);
  if (mode == "incremental") return 1;
  if (mode.rfind("chunked:", 0) == 0) {
    char* end = nullptr;
    long n = std::strtol(mode.c_str() + 8, &end, 10);
    if (*end == '\0' && n > 0) return n;
  }
  fail(ErrorKind::Usage, "--mode {}: expected full, incremental or chunked:N with N > 0", mode);
}

}  // namespace

std::vector<int32_t> parse_tokens(const std::string& spec) {
  std::vector<int32_t> ids;
  if (spec.size() > 4 && spec.compare(spec.size() - 4, 4, ".npy") == 0) {
    for (int64_t v : read_npy(spec).as_ints()) {
      if (v < 0 || v > INT32_MAX) fail(ErrorKind::Usage, "{}: token id {} out of range", spec, v);
      ids.push_back(static_cast<int32_t>(v));
    }
    return ids;
  }
  size_t i = 0;
  while (i < spec.size()) {
    while (i < spec.size() && (spec[i] == ',' || spec[i] == ' ')) ++i;
    if (i >= spec.size()) break;
    size_t j = i;
    while (j < spec.size() && spec[j] >= '0' && spec[j] <= '9') ++j;
    if (j == i || (j < spec.size() && spec[j] != ',' && spec[j] != ' ') || j - i > 9)
      fail(ErrorKind::Usage, "--tokens: '{}' is not a list of token ids (expected e.g. 5,17,42 or a .npy file)", spec);
    ids.push_back(std::stoi(spec.substr(i, j - i)));
    i = j;
  }
  return ids;
}

int run_score(const ScoreOptions& o, std::ostream& out, std::ostream& err) {
  check_device(o.device, /*cuda_ok=*/false);
  auto ids = parse_tokens(o.tokens);
  auto m = runtime::load_model(o.model, o.threads, &err);
  const auto& cfg = m->config;
  check_ids(ids, cfg.vocab_size);
  const int64_t T = static_cast<int64_t>(ids.size()), V = cfg.vocab_size, S = cfg.hc_mult * cfg.hidden_size;
  const int64_t chunk = chunk_size(o.mode, T);
  if (o.mtp_out && m->weights.mtp.empty()) {
    fail_invalid("--mtp-out: {} {}", o.model.string(), model::mtp_unavailable(cfg, 0));
  }
  if (o.mtp_out && T < 2) fail(ErrorKind::Usage, "--mtp-out needs at least 2 tokens");

  std::vector<float> logits(static_cast<size_t>(T * V)), streams(static_cast<size_t>(T * S));
  auto state = m->forward->new_state();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t p = 0; p < T; p += chunk) {
    const int64_t n = std::min(chunk, T - p);
    m->forward->step(state, std::span(ids).subspan(static_cast<size_t>(p), static_cast<size_t>(n)),
                     logits.data() + p * V, streams.data() + p * S);
  }
  const double dt = seconds_since(t0);
  write_npy_f32(o.out, logits, {T, V});
  out << fmt::format("scored {} tokens ({} mode) in {:.3f} s ({:.1f} tokens/s) -> {}\n", T, o.mode, dt,
                     static_cast<double>(T) / dt, o.out.string());
  if (o.mtp_out) {
    std::vector<float> mtp(static_cast<size_t>((T - 1) * V));
    for (int64_t p = 0; p < T - 1; p += chunk) {
      const int64_t n = std::min(chunk, T - 1 - p);
      m->forward->mtp_step(state, 0, std::span(streams).subspan(static_cast<size_t>(p * S), static_cast<size_t>(n * S)),
                           std::span(ids).subspan(static_cast<size_t>(p + 1), static_cast<size_t>(n)),
                           mtp.data() + p * V, nullptr);
    }
    write_npy_f32(*o.mtp_out, mtp, {T - 1, V});
    out << fmt::format("MTP draft logits [{}, {}] -> {}\n", T - 1, V, o.mtp_out->string());
  }
  return 0;
}

int run_generate(const GenerateOptions& o, std::ostream& out, std::ostream& err) {
  check_device(o.device, /*cuda_ok=*/true);
  if (o.device == "cuda" && o.sampling.temperature != 0.0f)
    fail(ErrorKind::Usage, "--device cuda decodes greedily (temperature 0) for now; use --temperature 0 or --device cpu");
  if (o.device == "cuda" && o.max_tokens < 1) fail(ErrorKind::Usage, "--device cuda: --max-tokens must be >= 1");
  if (o.max_tokens < 0) fail(ErrorKind::Usage, "--max-tokens must be >= 0");
  if (o.mtp && (*o.mtp < 1 || *o.mtp > runtime::kMaxDrafts))
    fail(ErrorKind::Usage, "--mtp {}: expected 1..{} draft tokens per round", *o.mtp, runtime::kMaxDrafts);
  if (o.compare_plain && !o.mtp) fail(ErrorKind::Usage, "--compare-plain needs --mtp K");
  auto ids = parse_tokens(o.tokens);
  // A DSpark checkpoint cannot draft: say so before spending the load on it.
  if (o.mtp) {
    const ModelConfig c = load_model_config(o.model);
    if (c.dspark) fail_invalid("--mtp {}: {} {}", *o.mtp, o.model.string(), model::mtp_unavailable(c, 0));
  }
  const auto t_load = std::chrono::steady_clock::now();
  auto m = runtime::load_model(o.model, o.threads, o.json ? nullptr : &err);
  const double load_s = seconds_since(t_load);
  const auto& cfg = m->config;
  check_ids(ids, cfg.vocab_size);
  if (o.mtp && m->weights.mtp.empty())
    fail_invalid("--mtp {}: {} {}", *o.mtp, o.model.string(), model::mtp_unavailable(cfg, 0));
  const int32_t eos = o.ignore_eos ? -1 : static_cast<int32_t>(cfg.eos_token_id);

  std::optional<runtime::GenerateResult> plain;
  std::optional<runtime::GenerateResult> spec;
#ifdef KILN_HAVE_CUDA
  if (o.device == "cuda") {
    GpuGreedy g(*m, static_cast<int64_t>(ids.size()) + o.max_tokens + runtime::kMaxDrafts + 2, o.json ? nullptr : &err);
    if (!o.mtp || o.compare_plain) plain = g.run(ids, o.max_tokens, 0, eos);
    if (o.mtp) spec = g.run(ids, o.max_tokens, *o.mtp, eos);
  }
#endif
  if (o.device == "cpu") {
    if (!o.mtp || o.compare_plain) plain = runtime::generate_plain(*m->forward, ids, o.max_tokens, o.sampling, eos);
    if (o.mtp) spec = runtime::generate_speculative(*m->forward, ids, o.max_tokens, o.sampling, *o.mtp, eos);
  }
  const runtime::GenerateResult& r = spec ? *spec : *plain;

  auto timing = [&](const runtime::GenerateResult& g) {
    return nlohmann::json{{"prefill_s", g.prefill_s},
                          {"prefill_tokens_per_s", static_cast<double>(ids.size()) / g.prefill_s},
                          {"decode_s", g.decode_s},
                          {"decode_tokens_per_s", g.decode_tokens_per_s()}};
  };
  if (o.json) {
    nlohmann::json t = timing(r);
    t["load_s"] = load_s;
    nlohmann::json j = {{"tokens", r.tokens}, {"prompt_tokens", ids.size()}, {"stop", r.stop}, {"timing", t}};
    if (spec) {
      const auto& s = spec->stats;
      std::vector<double> rate;
      for (size_t i = 0; i < s.proposed.size(); ++i) rate.push_back(s.acceptance_rate(i));
      const int64_t proposed = std::accumulate(s.proposed.begin(), s.proposed.end(), int64_t{0});
      j["mtp"] = {{"k", s.k},
                  {"rounds", s.rounds},
                  {"proposed_per_position", s.proposed},
                  {"accepted_per_position", s.accepted},
                  {"acceptance_rate_per_position", rate},
                  {"drafts_proposed", proposed},
                  {"drafts_accepted", s.accepted_drafts},
                  {"draft_acceptance_rate", proposed ? static_cast<double>(s.accepted_drafts) / static_cast<double>(proposed) : 0.0},
                  {"mean_accepted_drafts_per_round",
                   s.rounds ? static_cast<double>(s.accepted_drafts) / static_cast<double>(s.rounds) : 0.0},
                  {"mean_accepted_length", s.mean_accepted_length()}};
    }
    if (spec && plain) {
      j["plain"] = {{"tokens_identical", plain->tokens == spec->tokens}, {"stop", plain->stop}, {"timing", timing(*plain)}};
      const double pt = plain->decode_tokens_per_s();
      j["speedup_decode"] = pt > 0 ? spec->decode_tokens_per_s() / pt : 0.0;
    }
    out << j.dump() << "\n";
  } else {
    std::string s;
    for (size_t i = 0; i < r.tokens.size(); ++i) s += (i ? "," : "") + std::to_string(r.tokens[i]);
    out << s << "\n";
    err << fmt::format("prefill {} tokens in {:.3f} s; decoded {} tokens at {:.1f} tokens/s (stop: {})\n", ids.size(),
                       r.prefill_s, r.tokens.size(), r.decode_tokens_per_s(), r.stop);
    if (spec) {
      const auto& st = spec->stats;
      std::string rates;
      for (size_t i = 0; i < st.proposed.size(); ++i)
        rates += fmt::format("{}{}/{} ({:.1f}%)", i ? ", " : "", st.accepted[i], st.proposed[i], 100.0 * st.acceptance_rate(i));
      err << fmt::format("MTP k={}: {} rounds, mean accepted length {:.3f} tokens/round; accepted per draft position: {}\n",
                         st.k, st.rounds, st.mean_accepted_length(), rates);
    }
    if (spec && plain) {
      err << fmt::format("plain decoding: {:.1f} tokens/s; tokens {} the MTP run's\n", plain->decode_tokens_per_s(),
                         plain->tokens == spec->tokens ? "identical to" : "differ from");
    }
  }
  return 0;
}

}  // namespace kiln::cli
