#include "kiln/runtime/loaded_model.h"

#include <chrono>

#include <fmt/format.h>

#include "kiln/core/error.h"

namespace kiln::runtime {

std::unique_ptr<LoadedModel> load_model(const std::filesystem::path& dir, int threads, std::ostream* progress,
                                        const model::LoadOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  auto say = [&](const std::string& s) {
    if (!progress) return;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    *progress << fmt::format("[{:6.2f}s] {}\n", dt, s) << std::flush;
  };
  auto m = std::make_unique<LoadedModel>(LoadedModel{load_model_config(dir), Checkpoint::open(dir), {}, {}, nullptr});
  say(fmt::format("read {} shard header(s), {} tensors", m->checkpoint.shards().size(), m->checkpoint.tensors().size()));
  m->plan = build_plan(m->checkpoint, m->config);
  if (!m->plan.loadable()) {
    std::string why;
    for (size_t i = 0; i < m->plan.errors.size() && i < 5; ++i) why += "\n  " + m->plan.errors[i];
    for (size_t i = 0; i < m->plan.missing.size() && i < 5; ++i) why += "\n  missing " + m->plan.missing[i];
    fail_invalid("{} is not loadable ({} errors, {} missing tensors; `kiln inspect` shows all):{}", dir.string(),
                 m->plan.errors.size(), m->plan.missing.size(), why);
  }
  say(fmt::format("planned {} linear modules; {}", m->plan.linears.size(),
                  opt.skip_linears  ? "leaving them in the mapped shards for the device to read"
                  : opt.dequantize ? "dequantizing to fp32"
                                   : "keeping them in their stored form"));
  m->weights = model::load_weights(m->checkpoint, m->plan, opt);
  // Without the linears' bytes (or the embedding) there is nothing for the CPU to run.
  if (!opt.skip_linears && !opt.skip_embed) m->forward = std::make_unique<model::Forward>(m->weights, threads);
  std::string extra;
  if (!m->weights.mtp.empty()) extra = fmt::format(" + {} MTP block(s)", m->weights.mtp.size());
  if (m->plan.dspark && !m->plan.dspark->stages_found.empty()) {
    extra = fmt::format(" (DSpark drafter, {} tensors: read only to draft with it)", m->plan.dspark->num_tensors);
  }
  if (opt.skip_linears) {
    say(fmt::format("bound {} layers{}: {:.1f} MB of small parameters on the host", m->config.num_layers, extra,
                    static_cast<double>(model::plain_weight_bytes(m->weights)) / 1e6));
  } else {
    say(fmt::format("ready: {} layers{}, {:.1f} MB of linear weights", m->config.num_layers, extra,
                    static_cast<double>(model::linear_weight_bytes(m->weights)) / 1e6));
  }
  return m;
}

}  // namespace kiln::runtime
