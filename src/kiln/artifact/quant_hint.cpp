#include "kiln/artifact/quant_hint.h"

#include <fnmatch.h>

#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kiln {

namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Linear modules DeepSeek's reference keeps in BF16 whatever quantization_config says
// (and a DSpark drafter's Markov and confidence heads, BF16 in the 0731 release).
bool deepseek_bf16_module(const std::string& m) {
  return starts_with(m, "attn.compressor.") || starts_with(m, "attn.indexer.compressor.") ||
         m == "attn.indexer.weights_proj" || m == "ffn.gate" || m == "head" || m == "markov_head.markov_w2" ||
         m == "confidence_head.proj";
}

std::vector<std::string> string_list(const nlohmann::json& j, std::string_view key, std::vector<std::string>& warn,
                                     std::string_view where) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) {
    warn.push_back(fmt::format("{}: '{}' is not a list; ignored", where, key));
    return out;
  }
  for (const auto& e : *it) {
    if (e.is_string()) out.push_back(e.get<std::string>());
    else warn.push_back(fmt::format("{}: an entry of '{}' is not a string; ignored", where, key));
  }
  return out;
}

std::optional<std::pair<int64_t, int64_t>> block_pair(const nlohmann::json& j, std::string_view key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != 2) return std::nullopt;
  if (!(*it)[0].is_number_integer() || !(*it)[1].is_number_integer()) return std::nullopt;
  return std::pair{(*it)[0].get<int64_t>(), (*it)[1].get<int64_t>()};
}

}  // namespace

struct HintSource {
  virtual ~HintSource() = default;
  virtual std::optional<QuantHint::Prediction> predict(std::string_view disk, const CanonicalName& c) const = 0;
};

namespace {

// DeepSeek's own `quant_method: fp8` (V3 and V4): every linear FP8 block except the ones
// its code keeps BF16, routed experts per expert_dtype / moe_quant_algo.
class DeepSeekFp8Source : public HintSource {
 public:
  DeepSeekFp8Source(const nlohmann::json& q, const ModelConfig& cfg, std::vector<std::string>& warn,
                    std::vector<std::string>& summary) {
    ignored_ = string_list(q, "ignored_layers", warn, "quantization_config");
    auto more = string_list(q, "modules_to_not_convert", warn, "quantization_config");
    ignored_.insert(ignored_.end(), more.begin(), more.end());
    std::string experts = "unspecified";
    if (cfg.expert_dtype == "fp4") {
      expert_ = SchemeKind::MXFP4;
      experts = "mxfp4 (expert_dtype fp4)";
    } else if (cfg.expert_dtype == "fp8") {
      expert_ = SchemeKind::FP8Block;
      experts = "fp8_block (expert_dtype fp8)";
    }
    mtp_expert_ = expert_;
    if (auto it = q.find("moe_quant_algo"); it != q.end() && it->is_string() && *it == "NVFP4") {
      // moe_quant_algo covers the main model's experts. The native-named NVFP4 conversions
      // keep the MTP block as the official release has it (artifact-formats.md (d)), so
      // its experts are predicted by expert_dtype.
      expert_ = SchemeKind::NVFP4;
      experts = mtp_expert_ ? fmt::format("nvfp4 (moe_quant_algo), MTP {}", experts) : "nvfp4 (moe_quant_algo)";
      if (!mtp_expert_) mtp_expert_ = SchemeKind::NVFP4;
    }
    std::string fmt_s = q.contains("scale_fmt") && q["scale_fmt"].is_string() ? q["scale_fmt"].get<std::string>() : "";
    auto b = block_pair(q, "weight_block_size");
    summary.push_back(fmt::format("quantization_config: fp8{}{}, routed experts {}{}",
                                  b ? fmt::format(" {}x{}", b->first, b->second) : "",
                                  fmt_s.empty() ? "" : " scale_fmt " + fmt_s, experts,
                                  ignored_.empty() ? "" : fmt::format(", {} ignored patterns", ignored_.size())));
  }

  std::optional<QuantHint::Prediction> predict(std::string_view disk, const CanonicalName& c) const override {
    for (const auto& ig : ignored_) {
      if (disk == ig || disk.find(ig) != std::string_view::npos)
        return QuantHint::Prediction{SchemeKind::BF16, "quantization_config ignored_layers"};
    }
    if (starts_with(c.module, "ffn.experts.")) {
      const std::optional<SchemeKind>& k = c.scope == Scope::Mtp ? mtp_expert_ : expert_;
      if (!k) return std::nullopt;
      return QuantHint::Prediction{*k, "quantization_config (fp8) routed experts"};
    }
    if (deepseek_bf16_module(c.module)) return QuantHint::Prediction{SchemeKind::BF16, "DeepSeek fp8 layout (kept bf16)"};
    return QuantHint::Prediction{SchemeKind::FP8Block, "quantization_config (fp8)"};
  }

 private:
  std::vector<std::string> ignored_;
  std::optional<SchemeKind> expert_, mtp_expert_;  // main model's / MTP block's routed experts
};

class CompressedTensorsSource : public HintSource {
 public:
  CompressedTensorsSource(const nlohmann::json& q, std::vector<std::string>& warn, std::vector<std::string>& summary,
                          std::optional<std::pair<int64_t, int64_t>>& fp8_block) {
    ignore_ = string_list(q, "ignore", warn, "quantization_config.ignore");
    std::string top_format = q.contains("format") && q["format"].is_string() ? q["format"].get<std::string>() : "";
    auto groups = q.find("config_groups");
    if (groups == q.end() || !groups->is_object()) {
      warn.push_back("quantization_config (compressed-tensors) has no config_groups object");
      return;
    }
    for (const auto& [name, g] : groups->items()) {
      if (!g.is_object()) continue;
      Group grp;
      grp.name = name;
      grp.targets = string_list(g, "targets", warn, fmt::format("config_groups.{}", name));
      const auto& w = g.contains("weights") ? g["weights"] : nlohmann::json();
      std::string format = g.contains("format") && g["format"].is_string() ? g["format"].get<std::string>() : top_format;
      if (!w.is_object()) {
        warn.push_back(fmt::format("config_groups.{} has no weights scheme; ignored", name));
        continue;
      }
      int bits = w.value("num_bits", 0);
      std::string type = w.value("type", "");
      int64_t gs = w.contains("group_size") && w["group_size"].is_number_integer() ? w["group_size"].get<int64_t>() : 0;
      if (type == "int" && bits == 4) grp.kind = SchemeKind::Int4Group;
      else if (type == "float" && bits == 8) {
        grp.kind = SchemeKind::FP8Block;
        if (auto b = block_pair(w, "block_structure")) fp8_block = b;
      } else if (type == "float" && bits == 4) {
        grp.kind = (gs == 32 || format == "mxfp4-pack-quantized") ? SchemeKind::MXFP4 : SchemeKind::NVFP4;
      } else {
        warn.push_back(fmt::format("config_groups.{}: {} {}-bit weights are not a scheme kiln knows; ignored", name,
                                   type, bits));
        continue;
      }
      summary.push_back(fmt::format("quantization_config: compressed-tensors {} -> {} ({} targets)", name,
                                    scheme_kind_name(*grp.kind), grp.targets.size()));
      groups_.push_back(std::move(grp));
    }
    for (const auto& t : ignore_) check_regex(t, warn);
    for (const auto& g : groups_)
      for (const auto& t : g.targets) check_regex(t, warn);
  }

  std::optional<QuantHint::Prediction> predict(std::string_view disk, const CanonicalName&) const override {
    for (const auto& ig : ignore_) {
      if (ct_target_matches(ig, disk)) return QuantHint::Prediction{SchemeKind::BF16, "compressed-tensors ignore"};
    }
    for (const auto& g : groups_) {
      for (const auto& t : g.targets) {
        if (g.kind && ct_target_matches(t, disk))
          return QuantHint::Prediction{*g.kind, fmt::format("compressed-tensors {}", g.name)};
      }
    }
    return QuantHint::Prediction{SchemeKind::BF16, "compressed-tensors (not targeted)"};
  }

 private:
  static void check_regex(const std::string& t, std::vector<std::string>& warn) {
    if (!starts_with(t, "re:")) return;
    try {
      std::regex r(t.substr(3));
    } catch (const std::regex_error& e) {
      warn.push_back(fmt::format("compressed-tensors pattern '{}' is not a valid regex ({}); it matches nothing", t,
                                 e.what()));
    }
  }
  struct Group {
    std::string name;
    std::vector<std::string> targets;
    std::optional<SchemeKind> kind;
  };
  std::vector<std::string> ignore_;
  std::vector<Group> groups_;
};

std::optional<SchemeKind> modelopt_kind(std::string_view algo) {
  if (algo == "NVFP4" || algo == "NVFP4_AWQ") return SchemeKind::NVFP4;
  if (algo == "FP8" || algo == "FP8_PB_WO" || algo == "FP8_PER_CHANNEL_PER_TOKEN") return SchemeKind::FP8Block;
  if (algo == "W4A16_AWQ" || algo == "INT4_AWQ") return SchemeKind::Int4Group;
  if (algo == "MXFP4") return SchemeKind::MXFP4;
  return std::nullopt;
}

// ModelOpt: hf_quant_config.json {quantization: {quant_algo, exclude_modules,
// quantized_layers}} or the same keys in config.json's quantization_config. Modules it
// excludes get no prediction from it (another tool may have quantized them).
class ModelOptSource : public HintSource {
 public:
  ModelOptSource(const nlohmann::json& q, std::string_view where, std::vector<std::string>& warn,
                 std::vector<std::string>& summary) {
    where_ = where;
    algo_ = q.value("quant_algo", "");
    exclude_ = string_list(q, "exclude_modules", warn, where);
    auto ig = string_list(q, "ignore", warn, where);
    exclude_.insert(exclude_.end(), ig.begin(), ig.end());
    if (auto it = q.find("quantized_layers"); it != q.end() && it->is_object()) {
      for (const auto& [name, v] : it->items()) {
        if (v.is_object() && v.contains("quant_algo") && v["quant_algo"].is_string()) {
          if (auto k = modelopt_kind(v["quant_algo"].get<std::string>())) layers_.emplace_back(name, *k);
        }
      }
    }
    if (algo_ != "MIXED_PRECISION" && !modelopt_kind(algo_))
      warn.push_back(fmt::format("{}: quant_algo '{}' is not one kiln knows", where, algo_));
    summary.push_back(fmt::format("{}: modelopt {}, {} excluded patterns{}", where, algo_, exclude_.size(),
                                  layers_.empty() ? "" : fmt::format(", {} per-layer entries", layers_.size())));
  }

  std::optional<QuantHint::Prediction> predict(std::string_view disk, const CanonicalName&) const override {
    for (const auto& e : exclude_) {
      if (modelopt_pattern_matches(e, disk)) return std::nullopt;
    }
    for (const auto& [name, k] : layers_) {
      if (disk == name || modelopt_pattern_matches(name, disk)) return QuantHint::Prediction{k, std::string(where_)};
    }
    if (auto k = modelopt_kind(algo_)) return QuantHint::Prediction{*k, std::string(where_)};
    return std::nullopt;
  }

 private:
  std::string where_;
  std::string algo_;
  std::vector<std::string> exclude_;
  std::vector<std::pair<std::string, SchemeKind>> layers_;
};

}  // namespace

bool ct_target_matches(std::string_view target, std::string_view name) {
  if (starts_with(target, "re:")) {
    // Compiled patterns are cached: artifacts have tens of thousands of modules.
    thread_local std::vector<std::pair<std::string, std::optional<std::regex>>> cache;
    const std::regex* re = nullptr;
    for (auto& [k, r] : cache) {
      if (k == target) {
        if (!r) return false;
        re = &*r;
      }
    }
    if (!re) {
      try {
        cache.emplace_back(std::string(target), std::regex(std::string(target.substr(3))));
      } catch (const std::regex_error&) {
        cache.emplace_back(std::string(target), std::nullopt);
        return false;
      }
      re = &*cache.back().second;
    }
    return std::regex_search(name.begin(), name.end(), *re, std::regex_constants::match_continuous);
  }
  if (target == name) return true;
  // Class names: every linear kiln plans is a Linear.
  return target == "Linear";
}

bool modelopt_pattern_matches(std::string_view pattern, std::string_view name) {
  std::string p(pattern), n(name);
  if (fnmatch(p.c_str(), n.c_str(), 0) == 0) return true;
  if (!p.empty() && p.back() == '*') {
    std::string stem = p.substr(0, p.size() - 1);
    if (!stem.empty() && stem.back() == '.') stem.pop_back();
    if (n == stem) return true;
  }
  return false;
}

QuantHint::QuantHint(const ModelConfig& cfg) {
  if (cfg.hf_quant_config) {
    const auto& h = *cfg.hf_quant_config;
    if (h.contains("quantization") && h["quantization"].is_object()) {
      sources_.push_back(std::make_unique<ModelOptSource>(h["quantization"], "hf_quant_config.json", warnings_, summary_));
    } else {
      warnings_.push_back("hf_quant_config.json has no 'quantization' object; ignored");
    }
  }
  if (cfg.quantization_config) {
    const auto& q = *cfg.quantization_config;
    std::string method = q.is_object() ? q.value("quant_method", "") : "";
    if (method == "fp8" || method == "deepseek_v4_fp8") {
      sources_.push_back(std::make_unique<DeepSeekFp8Source>(q, cfg, warnings_, summary_));
      fp8_block_ = block_pair(q, "weight_block_size");
    } else if (method == "compressed-tensors") {
      sources_.push_back(std::make_unique<CompressedTensorsSource>(q, warnings_, summary_, fp8_block_));
    } else if (method == "modelopt") {
      sources_.push_back(std::make_unique<ModelOptSource>(q, "quantization_config (modelopt)", warnings_, summary_));
    } else {
      warnings_.push_back(fmt::format("quantization_config.quant_method '{}' is not one kiln reads; ignored", method));
    }
  }
}

QuantHint::~QuantHint() = default;
QuantHint::QuantHint(QuantHint&&) noexcept = default;

std::optional<QuantHint::Prediction> QuantHint::predict(std::string_view disk, const CanonicalName& c) const {
  for (const auto& s : sources_) {
    if (auto p = s->predict(disk, c)) return p;
  }
  return std::nullopt;
}

}  // namespace kiln
