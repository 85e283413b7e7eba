#include "kiln/artifact/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kiln {

std::string format_bytes(uint64_t b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1000.0 && u < 4) {
    v /= 1000.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

namespace {

struct Schedule {
  std::vector<int> swa, csa, hca, hash, score;
};

Schedule schedule_of(const ModelConfig& c) {
  Schedule s;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    int i = static_cast<int>(l);
    switch (c.attn_kind(l)) {
      case AttnKind::SWA: s.swa.push_back(i); break;
      case AttnKind::CSA: s.csa.push_back(i); break;
      case AttnKind::HCA: s.hca.push_back(i); break;
    }
    (c.is_hash_layer(l) ? s.hash : s.score).push_back(i);
  }
  return s;
}

std::string verdict_line(const Plan& p) {
  if (p.loadable()) {
    return fmt::format("verdict: loadable ({} linear modules planned, {} warning{})", p.linears.size(),
                       p.warnings.size(), p.warnings.size() == 1 ? "" : "s");
  }
  return fmt::format("verdict: NOT LOADABLE ({} error{}, {} missing tensor{})", p.errors.size(),
                     p.errors.size() == 1 ? "" : "s", p.missing.size(), p.missing.size() == 1 ? "" : "s");
}

std::vector<int> all_stages(int64_t n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i);
  return v;
}

std::string stage_list(const std::vector<int>& found) {
  return found.empty() ? "none" : fmt::format("mtp.{}", format_ranges(found));
}

// "none", "1 MTP", "DSpark drafter (3 stages)": what follows the backbone.
std::string drafter_summary(const ModelConfig& c) {
  if (c.dspark) return fmt::format("DSpark drafter ({} stage{})", c.dspark->stages, c.dspark->stages == 1 ? "" : "s");
  return fmt::format("{} MTP", c.num_mtp_layers);
}

// The DSpark drafter's report lines (text).
// Whether kiln loads the drafter and drafts with it (on the CPU backend): every stage found.
bool dspark_loaded(const Plan& p) {
  return p.dspark && static_cast<int64_t>(p.dspark->stages_found.size()) == p.config.dspark->stages;
}

std::string dspark_lines(const Plan& p) {
  const DSparkConfig& d = *p.config.dspark;
  std::string out = fmt::format(
      "drafter     DSpark: {} sliding-window stage{} ({}), block {}, targets [{}], Markov rank {}, noise token {}\n",
      d.stages, d.stages == 1 ? "" : "s", stage_list(all_stages(d.stages)), d.block_size,
      fmt::join(d.target_layer_ids, ", "),
      d.markov_rank, d.noise_token_id);
  const PlannedDSpark& pd = *p.dspark;
  if (pd.stages_found.empty()) {
    out += "            found none; not loaded (plain decoding only)\n";
  } else {
    out += fmt::format("            found {}: {} tensors, {}, confidence head {}; {}\n", stage_list(pd.stages_found),
                       pd.num_tensors, format_bytes(pd.bytes), pd.confidence_head ? "yes" : "no",
                       dspark_loaded(p) ? "loaded: drafts with --spec dspark (CPU and CUDA backends)"
                                        : "not loaded (stages missing; plain decoding only)");
  }
  return out;
}

void list_section(std::string& out, std::string_view title, const std::vector<std::string>& items, size_t max) {
  out += fmt::format("{} ({})\n", title, items.size());
  for (size_t i = 0; i < items.size() && i < max; ++i) out += fmt::format("  - {}\n", items[i]);
  if (items.size() > max) out += fmt::format("  ... and {} more (--json lists all)\n", items.size() - max);
}

std::string_view part_name(Part part) {
  switch (part) {
    case Part::Main: return "main";
    case Part::Mtp: return "mtp";
    case Part::DSpark: return "dspark";
  }
  return "?";
}

nlohmann::json drafter_json(const Plan& p) {
  const ModelConfig& c = p.config;
  nlohmann::json j = {{"kind", std::string(drafter_kind_name(c.drafter()))}};
  if (c.drafter() == DrafterKind::Mtp) {
    j["stages"] = c.num_mtp_layers;
    j["found"] = p.mtp_found;
    j["loaded"] = !p.mtp_found.empty();
  }
  if (!c.dspark) return j;
  const DSparkConfig& d = *c.dspark;
  const PlannedDSpark& pd = *p.dspark;
  std::vector<int64_t> ratios;
  for (int64_t s = 0; s < d.stages; ++s) ratios.push_back(c.compress_ratio(c.dspark_layer(s)));
  j["stages"] = d.stages;
  j["found"] = pd.stages_found;
  j["loaded"] = dspark_loaded(p);
  j["block_size"] = d.block_size;
  j["noise_token_id"] = d.noise_token_id;
  j["target_layer_ids"] = d.target_layer_ids;
  j["markov_rank"] = d.markov_rank;
  j["compress_ratios"] = ratios;
  j["confidence_head"] = pd.confidence_head;
  j["linear_modules"] = pd.linears.size();
  j["tensors"] = pd.num_tensors;
  j["bytes"] = pd.bytes;
  return j;
}

}  // namespace

std::string render_text(const Plan& p, const std::filesystem::path& dir) {
  const ModelConfig& c = p.config;
  std::string out;
  out += fmt::format("kiln inspect {}\n", dir.string());
  out += fmt::format("model       {} ({} config): hidden {}, {} layers + {}, {} heads x {} (rope {}), q_lora {}, "
                     "o_groups {} x {}, window {}\n",
                     c.model_type.empty() ? "deepseek_v4" : c.model_type,
                     c.form == ConfigForm::DeepSeek ? "DeepSeek" : "transformers", c.hidden_size, c.num_layers,
                     drafter_summary(c), c.num_heads, c.head_dim, c.rope_head_dim, c.q_lora_rank, c.o_groups,
                     c.o_lora_rank, c.sliding_window);
  out += fmt::format("            experts {} routed top-{} + {} shared (inter {}), index {} x {} top-{}, vocab {}, "
                     "mHC x{}\n",
                     c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.moe_intermediate_size,
                     c.index_n_heads, c.index_head_dim, c.index_topk, c.vocab_size, c.hc_mult);
  auto s = schedule_of(c);
  out += fmt::format("schedule    SWA [{}]  CSA [{}]  HCA [{}]\n", format_ranges(s.swa), format_ranges(s.csa),
                     format_ranges(s.hca));
  out += fmt::format("routing     hash [{}]  score [{}]\n", format_ranges(s.hash), format_ranges(s.score));
  std::vector<std::string> found;
  for (int m : p.mtp_found) found.push_back(fmt::format("mtp.{}", m));
  if (c.dspark) {
    out += fmt::format("MTP         none: num_nextn_predict_layers ({}) counts the DSpark drafter, not an MTP block\n",
                       c.num_nextn_predict_layers);
    out += dspark_lines(p);
  } else {
    out += fmt::format("MTP         declared {}, found {}\n", c.num_mtp_layers,
                       found.empty() ? "none" : fmt::format("{}", fmt::join(found, ", ")));
  }
  out += fmt::format("checkpoint  {} shard{}, {} tensors, {}\n", p.num_shards, p.num_shards == 1 ? "" : "s",
                     p.total_tensors, format_bytes(p.total_bytes));
  for (const auto& h : p.hint_summary) out += fmt::format("declared    {}\n", h);
  out += "\n";

  out += fmt::format("{:<34} {:<12} {:<44} {:>8} {:>10}\n", "module group", "layers", "scheme", "tensors", "bytes");
  for (const auto& g : p.groups) {
    std::string layers = g.layers.empty() ? "-" : format_ranges(g.layers);
    if (layers.size() > 12) layers = fmt::format("{} layers", g.layers.size());
    out += fmt::format("{:<34} {:<12} {:<44} {:>8} {:>10}\n", g.label, layers, g.scheme, g.tensors,
                       format_bytes(g.bytes));
  }
  out += "\n";
  list_section(out, "unused tensors", p.unused, 10);
  list_section(out, "missing tensors", p.missing, 20);
  list_section(out, "warnings", p.warnings, 50);
  list_section(out, "errors", p.errors, 50);
  out += verdict_line(p) + "\n";
  return out;
}

nlohmann::json render_json(const Plan& p, const std::filesystem::path& dir) {
  using nlohmann::json;
  const ModelConfig& c = p.config;
  json j;
  j["schema"] = "kiln.inspect/1";
  j["path"] = dir.string();
  j["loadable"] = p.loadable();
  j["verdict"] = verdict_line(p).substr(9);
  j["model"] = {
      {"model_type", c.model_type.empty() ? "deepseek_v4" : c.model_type},
      {"config_form", c.form == ConfigForm::DeepSeek ? "deepseek" : "transformers"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_layers", c.num_layers},
      {"num_mtp_layers", c.num_mtp_layers},
      {"num_nextn_predict_layers", c.num_nextn_predict_layers},
      {"num_heads", c.num_heads},
      {"head_dim", c.head_dim},
      {"rope_head_dim", c.rope_head_dim},
      {"q_lora_rank", c.q_lora_rank},
      {"o_lora_rank", c.o_lora_rank},
      {"o_groups", c.o_groups},
      {"sliding_window", c.sliding_window},
      {"n_routed_experts", c.n_routed_experts},
      {"num_experts_per_tok", c.num_experts_per_tok},
      {"n_shared_experts", c.n_shared_experts},
      {"moe_intermediate_size", c.moe_intermediate_size},
      {"index_n_heads", c.index_n_heads},
      {"index_head_dim", c.index_head_dim},
      {"index_topk", c.index_topk},
      {"hc_mult", c.hc_mult},
  };
  json layers = json::array();
  for (int64_t l = 0; l < c.num_layers + c.num_mtp_layers; ++l) {
    bool mtp = l >= c.num_layers;
    layers.push_back({{"layer", mtp ? fmt::format("mtp.{}", l - c.num_layers) : fmt::format("{}", l)},
                      {"attention", std::string(attn_kind_name(c.attn_kind(l)))},
                      {"compress_ratio", c.compress_ratio(l)},
                      {"routing", (!mtp && c.is_hash_layer(l)) ? "hash" : "score"}});
  }
  j["layers"] = std::move(layers);
  j["mtp"] = {{"declared", c.num_mtp_layers}, {"found", p.mtp_found}};
  j["drafter"] = drafter_json(p);
  j["checkpoint"] = {{"shards", p.num_shards}, {"tensors", p.total_tensors}, {"bytes", p.total_bytes}};
  j["declared"] = p.hint_summary;
  json groups = json::array();
  for (const auto& g : p.groups) {
    groups.push_back({{"label", g.label},
                      {"kind", g.linear ? "linear" : "tensor"},
                      {"mtp", g.mtp},
                      {"part", part_name(g.part)},
                      {"scheme", g.scheme},
                      {"layers", g.layers},
                      {"layer_ranges", format_ranges(g.layers)},
                      {"modules", g.modules},
                      {"tensors", g.tensors},
                      {"bytes", g.bytes}});
  }
  j["groups"] = std::move(groups);
  j["unused"] = p.unused;
  j["missing"] = p.missing;
  j["warnings"] = p.warnings;
  j["errors"] = p.errors;
  return j;
}

std::string render_text_failure(const std::filesystem::path& dir, const std::string& error) {
  return fmt::format("kiln inspect {}\nerrors (1)\n  - {}\nverdict: NOT LOADABLE (1 error)\n", dir.string(), error);
}

nlohmann::json render_json_failure(const std::filesystem::path& dir, const std::string& error) {
  return {{"schema", "kiln.inspect/1"},
          {"path", dir.string()},
          {"loadable", false},
          {"verdict", "NOT LOADABLE (1 error)"},
          {"unused", nlohmann::json::array()},
          {"missing", nlohmann::json::array()},
          {"warnings", nlohmann::json::array()},
          {"errors", {error}}};
}

}  // namespace kiln
