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
#include "kiln/cli/backend_session.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/generate.h"

namespace kiln::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Positions a command needs against the model's context (max_position_embeddings), which
// --max-context raises explicitly.
void check_context(int64_t need, int64_t max_context, const ModelConfig& c, const char* what) {
  const int64_t ctx = max_context > 0 ? max_context : c.max_position_embeddings;
  if (ctx > 0 && need > ctx) {
    fail(ErrorKind::Usage, "{} need {} positions, beyond the model's context of {}{} (raise it with --max-context)", what,
         need, ctx, max_context > 0 ? " (--max-context)" : " (max_position_embeddings)");
  }
}

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
  resolve_device(o.device);
  auto ids = parse_tokens(o.tokens);
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T == 0) fail(ErrorKind::Usage, "--tokens: no token ids given");
  const ModelConfig pre = load_model_config(o.model);
  if (o.mtp_out && pre.num_mtp_layers == 0) {
    fail_invalid("--mtp-out: {} {}{}", o.model.string(), model::mtp_unavailable(pre, 0),
                 pre.dspark ? "; --mtp-out writes a classic MTP block's draft logits" : "");
  }
  if (o.mtp_out && T < 2) fail(ErrorKind::Usage, "--mtp-out needs at least 2 tokens");
  check_context(T, o.max_context, pre, "--tokens");
  // GPU passes take up to 256 rows (the buffers and graphs are sized for them); the
  // logits do not depend on how the tokens are split into passes.
  const bool gpu = resolve_device(o.device) == "cuda";
  const int64_t chunk = std::min<int64_t>(chunk_size(o.mode, T), gpu ? 256 : T);
  SessionOptions so{o.model, o.device, o.threads, 1, static_cast<int>(chunk), std::max(T, o.max_context), &err};
  so.precision = o.precision;
  so.parallel = o.parallel;
  so.gpu_memory_fraction = o.gpu_memory_fraction;
  BackendSession s(so);
  runtime::Backend& b = s.backend();
  const auto& cfg = s.config();
  check_ids(ids, cfg.vocab_size);
  const int64_t V = cfg.vocab_size;

  std::vector<float> logits(static_cast<size_t>(T * V));
  std::vector<float> mtp(o.mtp_out ? static_cast<size_t>((T - 1) * V) : 0);
  const int slot = b.acquire();
  runtime::PassRows rows, mrows;
  std::vector<int32_t> outs;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t p = 0; p < T; p += chunk) {
    const int64_t n = std::min(chunk, T - p);
    rows.clear();
    outs.clear();
    for (int64_t i = 0; i < n; ++i) {
      rows.add(ids[static_cast<size_t>(p + i)], slot, p + i);
      outs.push_back(static_cast<int32_t>(i));
    }
    b.main(rows, outs, logits.data() + p * V);
    if (o.mtp_out) {
      // MTP rows q = p .. min(p + n, T - 1) - 1: main streams at q (row q - p of this pass), token q + 1.
      mrows.clear();
      for (int64_t q = p; q < std::min(p + n, T - 1); ++q) {
        mrows.add(ids[static_cast<size_t>(q + 1)], slot, q);
        mrows.src.push_back(static_cast<int32_t>(q - p));
      }
      outs.resize(static_cast<size_t>(mrows.size()));
      b.mtp(0, mrows, runtime::MtpInput::MainStreams, outs, mtp.data() + p * V);
    }
  }
  const double dt = seconds_since(t0);
  b.release(slot);
  write_npy_f32(o.out, logits, {T, V});
  out << fmt::format("scored {} tokens ({} mode, {}) in {:.3f} s ({:.1f} tokens/s) -> {}\n", T, o.mode, s.device(), dt,
                     static_cast<double>(T) / dt, o.out.string());
  if (o.mtp_out) {
    write_npy_f32(*o.mtp_out, mtp, {T - 1, V});
    out << fmt::format("MTP draft logits [{}, {}] -> {}\n", T - 1, V, o.mtp_out->string());
  }
  return 0;
}

int run_generate(const GenerateOptions& o, std::ostream& out, std::ostream& err) {
  resolve_device(o.device);
  if (o.max_tokens < 0) fail(ErrorKind::Usage, "--max-tokens must be >= 0");
  // Before spending the load: a checkpoint that cannot draft, or a request past the context.
  const ModelConfig pre = load_model_config(o.model);
  // --spec: the drafter (default: what the checkpoint has, with --mtp K); --mtp K: drafts
  // per round (DSpark: up to the block size; --spec dspark alone drafts the whole block).
  const Drafting d = resolve_drafting(o.model, pre, {o.spec, o.mtp, o.mtp.has_value()});
  const bool dspark = d.dspark;
  const std::optional<int> k = d.k;
  if (o.compare_plain && !k) fail(ErrorKind::Usage, "--compare-plain needs --mtp K or --spec");
  auto ids = parse_tokens(o.tokens);
  if (ids.empty()) fail(ErrorKind::Usage, "--tokens: no token ids given");
  const int64_t need = static_cast<int64_t>(ids.size()) + o.max_tokens;
  check_context(need, o.max_context, pre, "the prompt + --max-tokens");
  const auto t_load = std::chrono::steady_clock::now();
  const bool gpu = resolve_device(o.device) == "cuda";
  SessionOptions so{o.model, o.device, o.threads, 1, gpu ? 256 : (1 << 16), std::max(need, o.max_context),
                    o.json ? nullptr : &err};
  so.precision = o.precision;
  so.parallel = o.parallel;
  so.gpu_memory_fraction = o.gpu_memory_fraction;
  so.dspark = dspark;
  BackendSession s(so);
  const double load_s = seconds_since(t_load);
  const auto& cfg = s.config();
  check_ids(ids, cfg.vocab_size);
  const int32_t eos = o.ignore_eos ? -1 : static_cast<int32_t>(cfg.eos_token_id);

  std::optional<runtime::GenerateResult> plain;
  std::optional<runtime::GenerateResult> spec;
  if (!k || o.compare_plain) plain = runtime::generate(s.backend(), ids, o.max_tokens, o.sampling, 0, eos);
  if (k) {
    spec = runtime::generate(s.backend(), ids, o.max_tokens, o.sampling, *k, eos, o.dspark_min_survival,
                             sampled_drafts_by_argmax(o.sampled_drafts, gpu));
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
    t["load"] = s.load_stats();
    nlohmann::json j = {{"tokens", r.tokens}, {"prompt_tokens", ids.size()}, {"stop", r.stop}, {"timing", t}};
    if (spec) {
      const auto& s = spec->stats;
      std::vector<double> rate;
      for (size_t i = 0; i < s.proposed.size(); ++i) rate.push_back(s.acceptance_rate(i));
      const int64_t proposed = std::accumulate(s.proposed.begin(), s.proposed.end(), int64_t{0});
      j["mtp"] = {{"k", s.k},
                  {"drafter", dspark ? "dspark" : "mtp"},
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
      err << fmt::format("{} k={}: {} rounds, mean accepted length {:.3f} tokens/round; accepted per draft position: {}\n",
                         dspark ? "DSpark" : "MTP", st.k, st.rounds, st.mean_accepted_length(), rates);
    }
    if (spec && plain) {
      err << fmt::format("plain decoding: {:.1f} tokens/s; tokens {} the MTP run's\n", plain->decode_tokens_per_s(),
                         plain->tokens == spec->tokens ? "identical to" : "differ from");
    }
  }
  return 0;
}

}  // namespace kiln::cli
