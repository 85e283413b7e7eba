#include "kiln/artifact/names.h"

#include <array>
#include <charconv>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

namespace kiln {
namespace {

// Canonical spellings follow DeepSeek's native checkpoint; aliases cover transformers'
// module names, what transformers 5.x writes on save, and vLLM's renames. `{E}` stands
// for an expert index. Plain (non-linear) rules match the whole name; linear rules match
// a module prefix followed by one linear field.
constexpr NameRule kLayerRules[] = {
    // --- native: linear modules
    {"attn.wq_a", "attn.wq_a", true},
    {"attn.wq_b", "attn.wq_b", true},
    {"attn.wkv", "attn.wkv", true},
    {"attn.wo_a", "attn.wo_a", true},
    {"attn.wo_b", "attn.wo_b", true},
    {"attn.compressor.wkv", "attn.compressor.wkv", true},
    {"attn.compressor.wgate", "attn.compressor.wgate", true},
    {"attn.indexer.wq_b", "attn.indexer.wq_b", true},
    {"attn.indexer.weights_proj", "attn.indexer.weights_proj", true},
    {"attn.indexer.compressor.wkv", "attn.indexer.compressor.wkv", true},
    {"attn.indexer.compressor.wgate", "attn.indexer.compressor.wgate", true},
    {"ffn.gate", "ffn.gate", true},
    {"ffn.experts.{E}.w1", "ffn.experts.{E}.w1", true},
    {"ffn.experts.{E}.w2", "ffn.experts.{E}.w2", true},
    {"ffn.experts.{E}.w3", "ffn.experts.{E}.w3", true},
    {"ffn.shared_experts.w1", "ffn.shared_experts.w1", true},
    {"ffn.shared_experts.w2", "ffn.shared_experts.w2", true},
    {"ffn.shared_experts.w3", "ffn.shared_experts.w3", true},
    {"e_proj", "e_proj", true},  // MTP
    {"h_proj", "h_proj", true},  // MTP
    {"head", "head", true},      // MTP copy of the shared head (optional)
    {"main_proj", "main_proj", true},                          // DSpark stage 0
    {"markov_head.markov_w2", "markov_head.markov_w2", true},  // DSpark last stage
    {"confidence_head.proj", "confidence_head.proj", true},    // DSpark last stage
    // --- native: plain tensors
    {"attn_norm.weight", "attn_norm.weight", false},
    {"ffn_norm.weight", "ffn_norm.weight", false},
    {"hc_attn_fn", "hc_attn_fn", false},
    {"hc_attn_base", "hc_attn_base", false},
    {"hc_attn_scale", "hc_attn_scale", false},
    {"hc_ffn_fn", "hc_ffn_fn", false},
    {"hc_ffn_base", "hc_ffn_base", false},
    {"hc_ffn_scale", "hc_ffn_scale", false},
    {"attn.q_norm.weight", "attn.q_norm.weight", false},
    {"attn.kv_norm.weight", "attn.kv_norm.weight", false},
    {"attn.attn_sink", "attn.attn_sink", false},
    {"attn.compressor.ape", "attn.compressor.ape", false},
    {"attn.compressor.norm.weight", "attn.compressor.norm.weight", false},
    {"attn.indexer.compressor.ape", "attn.indexer.compressor.ape", false},
    {"attn.indexer.compressor.norm.weight", "attn.indexer.compressor.norm.weight", false},
    {"ffn.gate.bias", "ffn.gate.bias", false},
    {"ffn.gate.tid2eid", "ffn.gate.tid2eid", false},
    {"enorm.weight", "enorm.weight", false},  // MTP
    {"hnorm.weight", "hnorm.weight", false},  // MTP
    {"norm.weight", "norm.weight", false},    // MTP
    {"hc_head_fn", "hc_head_fn", false},      // MTP
    {"hc_head_base", "hc_head_base", false},  // MTP
    {"hc_head_scale", "hc_head_scale", false},  // MTP
    {"embed.weight", "embed.weight", false},  // MTP copy of the shared embedding (optional)
    {"main_norm.weight", "main_norm.weight", false},                          // DSpark stage 0
    {"markov_head.markov_w1.weight", "markov_head.markov_w1.weight", false},  // DSpark last stage
    {"emb.tok_emb.weight", "embed.weight", false},
    // --- transformers 5.x save_pretrained (reverse of its conversion mapping)
    {"attn.norm.weight", "attn.kv_norm.weight", false},
    {"hc_head.hc_fn", "hc_head_fn", false},
    {"hc_head.hc_base", "hc_head_base", false},
    {"hc_head.hc_scale", "hc_head_scale", false},
    // --- vLLM renames
    {"ffn.gate.e_score_correction_bias", "ffn.gate.bias", false},
    {"ffn.shared_experts.down_proj", "ffn.shared_experts.w2", true},
    // --- transformers module names
    {"self_attn.q_a_proj", "attn.wq_a", true, false, true},
    {"self_attn.q_b_proj", "attn.wq_b", true, false, true},
    {"self_attn.kv_proj", "attn.wkv", true, false, true},
    {"self_attn.o_a_proj", "attn.wo_a", true, false, true},
    {"self_attn.o_b_proj", "attn.wo_b", true, false, true},
    {"self_attn.q_a_norm.weight", "attn.q_norm.weight", false, false, true},
    {"self_attn.kv_norm.weight", "attn.kv_norm.weight", false, false, true},
    {"self_attn.sinks", "attn.attn_sink", false, false, true},
    {"self_attn.compressor.kv_proj", "attn.compressor.wkv", true, false, true},
    {"self_attn.compressor.gate_proj", "attn.compressor.wgate", true, false, true},
    {"self_attn.compressor.position_bias", "attn.compressor.ape", false, false, true},
    {"self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight", false, false, true},
    {"self_attn.compressor.indexer.kv_proj", "attn.indexer.compressor.wkv", true, false, true},
    {"self_attn.compressor.indexer.gate_proj", "attn.indexer.compressor.wgate", true, false, true},
    {"self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape", false, false, true},
    {"self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight", false, false, true},
    {"self_attn.compressor.indexer.q_b_proj", "attn.indexer.wq_b", true, false, true},
    {"self_attn.compressor.indexer.scorer.weights_proj", "attn.indexer.weights_proj", true, false, true},
    {"mlp.gate", "ffn.gate", true, false, true},
    {"mlp.gate.e_score_correction_bias", "ffn.gate.bias", false, false, true},
    {"mlp.gate.tid2eid", "ffn.gate.tid2eid", false, false, true},
    {"mlp.experts.{E}.gate_proj", "ffn.experts.{E}.w1", true, false, true},
    {"mlp.experts.{E}.up_proj", "ffn.experts.{E}.w3", true, false, true},
    {"mlp.experts.{E}.down_proj", "ffn.experts.{E}.w2", true, false, true},
    {"mlp.shared_experts.gate_proj", "ffn.shared_experts.w1", true, false, true},
    {"mlp.shared_experts.up_proj", "ffn.shared_experts.w3", true, false, true},
    {"mlp.shared_experts.down_proj", "ffn.shared_experts.w2", true, false, true},
    {"input_layernorm.weight", "attn_norm.weight", false, false, true},
    {"post_attention_layernorm.weight", "ffn_norm.weight", false, false, true},
    {"attn_hc.fn", "hc_attn_fn", false, false, true},
    {"attn_hc.base", "hc_attn_base", false, false, true},
    {"attn_hc.scale", "hc_attn_scale", false, false, true},
    {"ffn_hc.fn", "hc_ffn_fn", false, false, true},
    {"ffn_hc.base", "hc_ffn_base", false, false, true},
    {"ffn_hc.scale", "hc_ffn_scale", false, false, true},
};

constexpr NameRule kTopRules[] = {
    {"embed.weight", "embed.weight", false, true},
    {"embed_tokens.weight", "embed.weight", false, true, true},
    {"head", "head", true, true},
    {"lm_head", "head", true, true, true},
    {"norm.weight", "norm.weight", false, true, true},
    {"hc_head_fn", "hc_head_fn", false, true},
    {"hc_head_base", "hc_head_base", false, true},
    {"hc_head_scale", "hc_head_scale", false, true},
    {"hc_head.hc_fn", "hc_head_fn", false, true, true},
    {"hc_head.hc_base", "hc_head_base", false, true, true},
    {"hc_head.hc_scale", "hc_head_scale", false, true, true},
};

// Fused 3-D expert tensors (transformers): the tensor itself is the weight; FP8 copies
// carry a scale named by appending a suffix to the tensor name.
struct StackRule {
  std::string_view alias;
  std::string_view canonical;
  Stack stack;
};
constexpr StackRule kStackRules[] = {
    {"mlp.experts.gate_up_proj", "ffn.experts.w13", Stack::GateUp},
    {"mlp.experts.down_proj", "ffn.experts.w2", Stack::Down},
};
struct StackSuffix {
  std::string_view suffix;
  std::string_view field;
};
constexpr StackSuffix kStackSuffixes[] = {
    {"", "weight"},
    {"_scale_inv", "weight_scale_inv"},
    {"_scales_inv", "weight_scale_inv"},  // transformers FP8Expert spelling
    {"_weight_scale_inv", "weight_scale_inv"},
    {"_weight_scale", "weight_scale"},
};

constexpr std::string_view kLinearFields[] = {
    "weight",       "scale",          "weight_scale",        "weight_scale_inv",
    "weight_packed", "weight_scale_2", "weight_global_scale", "input_scale",
    "input_global_scale", "weight_shape", "weight_zero_point", "weight_g_idx",
};

bool consume_prefix(std::string_view& s, std::string_view p) {
  if (s.substr(0, p.size()) != p) return false;
  s.remove_prefix(p.size());
  return true;
}

// Reads a decimal integer followed by '.'; advances s past the dot.
bool consume_index(std::string_view& s, int64_t& out) {
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 9 || n >= s.size() || s[n] != '.') return false;
  if (n > 1 && s[0] == '0') return false;  // no leading zeros: "01" is not an index
  std::from_chars(s.data(), s.data() + n, out);
  s.remove_prefix(n + 1);
  return true;
}

// Matches `alias` (with at most one {E}) against the start of `s`. On success returns
// the number of characters matched and sets expert.
size_t match_alias(std::string_view alias, std::string_view s, int64_t& expert) {
  size_t e = alias.find("{E}");
  if (e == std::string_view::npos) {
    return s.substr(0, alias.size()) == alias ? alias.size() : 0;
  }
  std::string_view head = alias.substr(0, e), tail = alias.substr(e + 3);
  std::string_view rest = s;
  if (!consume_prefix(rest, head)) return 0;
  // "{E}" followed by tail, which starts with '.'
  size_t n = 0;
  while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
  if (n == 0 || n > 9 || (n > 1 && rest[0] == '0')) return 0;
  std::from_chars(rest.data(), rest.data() + n, expert);
  rest.remove_prefix(n);
  if (!consume_prefix(rest, tail)) return 0;
  return s.size() - rest.size();
}

std::string fill_expert(std::string_view canonical, int64_t expert) {
  size_t e = canonical.find("{E}");
  if (e == std::string_view::npos) return std::string(canonical);
  return fmt::format("{}{}{}", canonical.substr(0, e), expert, canonical.substr(e + 3));
}

std::string_view first_segment(std::string_view s) { return s.substr(0, s.find('.')); }

// Rules bucketed by the first dot-separated segment of their alias (plain rules before
// linear ones, table order kept), so a name is compared with a handful of rules.
class RuleIndex {
 public:
  explicit RuleIndex(std::span<const NameRule> rules) {
    for (bool linear : {false, true}) {
      for (const auto& r : rules) {
        if (r.linear == linear) buckets_[first_segment(r.alias)].push_back(&r);
      }
    }
  }
  const std::vector<const NameRule*>* find(std::string_view body) const {
    auto it = buckets_.find(first_segment(body));
    return it == buckets_.end() ? nullptr : &it->second;
  }

 private:
  std::unordered_map<std::string_view, std::vector<const NameRule*>> buckets_;
};

std::optional<CanonicalName> match_body(const RuleIndex& index, std::string_view body) {
  if (body.empty()) return std::nullopt;
  const auto* bucket = index.find(body);
  if (!bucket) return std::nullopt;
  // Plain tensors first: an exact name wins over a linear module prefix (ffn.gate.bias).
  for (const NameRule* rp : *bucket) {
    const NameRule& r = *rp;
    if (r.linear) continue;
    int64_t expert = -1;
    if (match_alias(r.alias, body, expert) == body.size()) {
      CanonicalName c;
      c.module = fill_expert(r.canonical, expert);
      return c;
    }
  }
  for (const NameRule* rp : *bucket) {
    const NameRule& r = *rp;
    if (!r.linear) continue;
    int64_t expert = -1;
    size_t n = match_alias(r.alias, body, expert);
    if (n == 0 || n >= body.size() || body[n] != '.') continue;
    std::string_view field = body.substr(n + 1);
    if (!is_linear_field(field)) continue;
    CanonicalName c;
    c.module = fill_expert(r.canonical, expert);
    c.linear = true;
    c.field = std::string(field);
    return c;
  }
  return std::nullopt;
}

}  // namespace

bool is_linear_field(std::string_view field) {
  for (auto f : kLinearFields) {
    if (f == field) return true;
  }
  return false;
}

bool is_dspark_module(std::string_view m) {
  return m == "main_proj" || m == "main_norm.weight" || m.substr(0, 12) == "markov_head." ||
         m.substr(0, 16) == "confidence_head.";
}

std::span<const NameRule> name_rules() {
  static const auto all = [] {
    std::array<NameRule, std::size(kLayerRules) + std::size(kTopRules)> a{};
    size_t i = 0;
    for (const auto& r : kLayerRules) a[i++] = r;
    for (const auto& r : kTopRules) a[i++] = r;
    return a;
  }();
  return all;
}

std::string CanonicalName::path() const {
  switch (scope) {
    case Scope::Top:
      return module;
    case Scope::Layer:
      return fmt::format("layers.{}.{}", index, module);
    case Scope::Mtp:
      return fmt::format("mtp.{}.{}", index, module);
  }
  return module;
}

std::optional<CanonicalName> canonicalize(std::string_view name, const NameContext& ctx) {
  std::string_view s = name;
  consume_prefix(s, "model.");
  Scope scope = Scope::Top;
  int64_t index = -1;
  if (consume_prefix(s, "mtp.")) {
    if (!consume_index(s, index)) return std::nullopt;
    scope = Scope::Mtp;
  } else if (consume_prefix(s, "layers.")) {
    if (!consume_index(s, index)) return std::nullopt;
    scope = Scope::Layer;
    if (ctx.num_layers > 0 && index >= ctx.num_layers) {  // MTP as layers.{L+i}
      scope = Scope::Mtp;
      index -= ctx.num_layers;
    }
  }

  static const RuleIndex top_index(kTopRules), layer_index(kLayerRules);
  std::optional<CanonicalName> c;
  if (scope == Scope::Top) {
    c = match_body(top_index, s);
  } else {
    c = match_body(layer_index, s);
    if (!c) {
      for (const auto& r : kStackRules) {
        if (s.substr(0, r.alias.size()) != r.alias) continue;
        std::string_view suffix = s.substr(r.alias.size());
        for (const auto& sf : kStackSuffixes) {
          if (suffix != sf.suffix) continue;
          c = CanonicalName{};
          c->module = std::string(r.canonical);
          c->linear = true;
          c->field = std::string(sf.field);
          c->stack = r.stack;
        }
      }
    }
  }
  if (!c) return std::nullopt;
  c->scope = scope;
  c->index = static_cast<int>(index);
  return c;
}

std::string hf_name(std::string_view path, int64_t num_layers) {
  std::string_view body = path;
  Scope scope = Scope::Top;
  int64_t index = -1;
  if (consume_prefix(body, "layers.")) {
    scope = Scope::Layer;
  } else if (consume_prefix(body, "mtp.")) {
    scope = Scope::Mtp;
  }
  if (scope != Scope::Top && !consume_index(body, index)) return std::string(path);
  // The rule whose canonical pattern is this body (plain) or its module (linear).
  std::string alias(body);
  for (const NameRule& r : name_rules()) {
    if (!r.hf || r.top != (scope == Scope::Top)) continue;
    int64_t expert = -1;
    if (match_alias(r.canonical, body, expert) == body.size()) {
      alias = fill_expert(r.alias, expert);
      break;
    }
  }
  switch (scope) {
    case Scope::Top:
      return alias == "lm_head" ? alias : "model." + alias;  // transformers keeps the head outside `model.`
    case Scope::Layer:
      return fmt::format("model.layers.{}.{}", index, alias);
    case Scope::Mtp:
      return fmt::format("model.layers.{}.{}", num_layers + index, alias);
  }
  return alias;
}

}  // namespace kiln
