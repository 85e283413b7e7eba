#include "kiln/cli/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/cli/default_model.h"
#include "kiln/cli/run_commands.h"
#include "kiln/cli/text_tokens.h"
#include "kiln/core/error.h"
#include "kiln/cli/backend_session.h"

namespace kiln::cli {
namespace {

// Natural-log NLL of `target` under one row of logits, in double.
double nll(const float* row, int64_t V, int32_t target) {
  double mx = row[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
  return mx + std::log(sum) - static_cast<double>(row[target]);
}

}  // namespace

int run_perplexity(const PerplexityOptions& o, std::ostream& out, std::ostream& err) {
  if (o.text.has_value() == o.tokens.has_value()) fail(ErrorKind::Usage, "give exactly one of --text FILE and --tokens IDS");
  if (o.ctx < 2) fail(ErrorKind::Usage, "--ctx {}: a window needs at least 2 tokens", o.ctx);
  const auto dir = model_or_default(o.model);

  std::vector<int32_t> ids;
  if (o.text) {
    ids = tokenize_text_file(dir, *o.text);
  } else {
    ids = parse_tokens(*o.tokens);
  }
  if (ids.size() < 2)
    fail(ErrorKind::Usage, "{}: {} token(s); perplexity needs at least 2",
         o.text ? o.text->string() : std::string("--tokens"), ids.size());

  const ModelConfig pre = load_model_config(dir);
  if (pre.max_position_embeddings > 0 && o.ctx > pre.max_position_embeddings) {
    fail(ErrorKind::Usage, "--ctx {}: beyond the model's context of {} positions", o.ctx, pre.max_position_embeddings);
  }
  const int64_t V = pre.vocab_size, T = static_cast<int64_t>(ids.size());
  for (int64_t i = 0; i < T; ++i) {
    if (ids[i] < 0 || ids[i] >= V)
      fail(ErrorKind::Usage, "token id {} at position {} is outside the model's vocabulary [0, {})", ids[i], i, V);
  }
  // A window goes through the backend in passes of up to `chunk` rows (the GPU's buffers
  // and graphs are sized for them; the logits do not depend on the split).
  const bool gpu = resolve_device(o.device) == "cuda";
  const int64_t chunk = std::min<int64_t>(o.ctx, gpu ? 256 : o.ctx);
  SessionOptions so{dir, o.device, o.threads, 1, static_cast<int>(chunk), o.ctx, o.json ? nullptr : &err};
  so.precision = o.precision;
  so.parallel = o.parallel;
  so.gpu_memory_fraction = o.gpu_memory_fraction;
  BackendSession s(so);
  runtime::Backend& b = s.backend();

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits(static_cast<size_t>(chunk * V));
  double total = 0.0;
  int64_t scored = 0, windows = 0;
  runtime::PassRows rows;
  std::vector<int32_t> outs;
  for (int64_t p = 0; p < T; p += o.ctx) {
    const int64_t n = std::min(o.ctx, T - p);
    if (n < 2) break;  // a last window of one token predicts nothing
    const int slot = b.acquire();
    for (int64_t c = 0; c < n; c += chunk) {
      const int64_t m = std::min(chunk, n - c);
      rows.clear();
      outs.clear();
      for (int64_t i = 0; i < m; ++i) {
        rows.add(ids[static_cast<size_t>(p + c + i)], slot, c + i);
        outs.push_back(static_cast<int32_t>(i));
      }
      b.main(rows, outs, logits.data());
      for (int64_t i = 0; i < m && c + i + 1 < n; ++i) {
        total += nll(logits.data() + i * V, V, ids[static_cast<size_t>(p + c + i + 1)]);
      }
    }
    b.release(slot);
    scored += n - 1;
    ++windows;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mean = total / static_cast<double>(scored), ppl = std::exp(mean);

  if (o.json) {
    nlohmann::json j = {{"model", dir.string()},
                        {"tokens", T},
                        {"scored_tokens", scored},
                        {"windows", windows},
                        {"ctx", o.ctx},
                        {"nll_sum", total},
                        {"mean_nll", mean},
                        {"perplexity", ppl},
                        {"seconds", secs},
                        {"tokens_per_s", static_cast<double>(T) / secs},
                        {"device", s.device()}};
    if (o.text) j["text"] = o.text->string();
    out << j.dump() << "\n";
  } else {
    out << fmt::format("tokens {} (scored {} in {} window(s) of up to {})\n", T, scored, windows, o.ctx);
    out << fmt::format("perplexity {:.4f} (mean NLL {:.6f} nats/token)\n", ppl, mean);
    err << fmt::format("scored in {:.2f} s ({:.0f} tokens/s) on {}\n", secs, static_cast<double>(T) / secs, s.device());
  }
  return 0;
}

}  // namespace kiln::cli
