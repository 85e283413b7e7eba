// DeepSeek-V4 config.json parsing (both the official DeepSeek form and the form written
// by transformers' DeepseekV4Config) into ModelConfig. See config.h.
#include "kiln/io/config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <iterator>
#include <string>
#include <system_error>

#include "kiln/core/error.h"

namespace kiln {

std::string_view attn_kind_name(AttnKind k) {
  switch (k) {
    case AttnKind::SWA: return "SWA";
    case AttnKind::CSA: return "CSA";
    case AttnKind::HCA: return "HCA";
  }
  return "?";
}

std::string_view drafter_kind_name(DrafterKind k) {
  switch (k) {
    case DrafterKind::None: return "none";
    case DrafterKind::Mtp: return "mtp";
    case DrafterKind::DSpark: return "dspark";
  }
  return "?";
}

AttnKind ModelConfig::attn_kind(int64_t layer) const {
  if (layer < 0 || static_cast<size_t>(layer) >= attn_kinds.size()) {
    fail(ErrorKind::Usage, "attn_kind: layer {} out of range [0, {})", layer, attn_kinds.size());
  }
  return attn_kinds[static_cast<size_t>(layer)];
}

bool ModelConfig::is_hash_layer(int64_t layer) const {
  if (layer < 0 || layer >= num_layers + num_draft_layers()) {
    fail(ErrorKind::Usage, "is_hash_layer: layer {} out of range [0, {})", layer, num_layers + num_draft_layers());
  }
  if (layer >= num_layers) return false;  // MTP layers and DSpark stages are score-routed
  return static_cast<size_t>(layer) < hash_layers.size() && hash_layers[static_cast<size_t>(layer)];
}

namespace {

using nlohmann::json;

constexpr std::string_view kCSA = "compressed_sparse_attention";
constexpr std::string_view kHCA = "heavily_compressed_attention";
constexpr std::string_view kSWA = "sliding_attention";

// A JSON value for an error message: compact, cut to a readable length.
std::string show(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string join_path(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return fmt::format("{}.{}", parent, key);
}

// Reads typed fields from one JSON object; every failure names the file label and the
// dotted field path.
class Fields {
 public:
  Fields(const json& obj, std::string_view label, std::string path = {})
      : obj_(obj), label_(label), path_(std::move(path)) {}

  std::string path(std::string_view key) const { return join_path(path_, key); }
  std::string_view label() const { return label_; }

  // The value of `key`, or nullptr when absent or JSON null.
  const json* find(std::string_view key) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(std::string_view key) const { return find(key) != nullptr; }

  [[noreturn]] void missing(std::string_view key, std::string_view expected) const {
    fail_invalid("{}: missing required field '{}' ({})", label_, path(key), expected);
  }
  [[noreturn]] void bad(std::string_view key, std::string_view expected, const json& got) const {
    fail_invalid("{}: field '{}' must be {}, got {}", label_, path(key), expected, show(got));
  }

  // Integers: JSON integers only (4096.0, "4096" and true are rejected).
  int64_t int_at_least(std::string_view key, int64_t min, std::optional<int64_t> def) const {
    const char* what = min > 0 ? "a positive integer" : "a non-negative integer";
    const json* v = find(key);
    if (!v) {
      if (def) return *def;
      missing(key, what);
    }
    return check_int(*v, key, min, what);
  }
  int64_t req_pos(std::string_view key) const { return int_at_least(key, 1, std::nullopt); }
  int64_t opt_pos(std::string_view key, int64_t def) const { return int_at_least(key, 1, def); }
  int64_t req_nonneg(std::string_view key) const { return int_at_least(key, 0, std::nullopt); }
  int64_t opt_nonneg(std::string_view key, int64_t def) const { return int_at_least(key, 0, def); }

  int64_t check_int(const json& v, std::string_view key, int64_t min, std::string_view what) const {
    if (!v.is_number_integer()) bad(key, what, v);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      bad(key, what, v);
    }
    const int64_t x = v.get<int64_t>();
    if (x < min) bad(key, what, v);
    return x;
  }

  // Real numbers: JSON integers or floats, finite, > 0 (positive) or >= 0.
  double num(std::string_view key, bool strictly_positive, std::optional<double> def) const {
    const char* what = strictly_positive ? "a positive number" : "a non-negative number";
    const json* v = find(key);
    if (!v) {
      if (def) return *def;
      missing(key, what);
    }
    if (!v->is_number()) bad(key, what, *v);
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < 0.0 || (strictly_positive && x == 0.0)) bad(key, what, *v);
    return x;
  }
  double req_pos_num(std::string_view key) const { return num(key, true, std::nullopt); }
  double opt_pos_num(std::string_view key, double def) const { return num(key, true, def); }
  double opt_nonneg_num(std::string_view key, double def) const { return num(key, false, def); }

  bool opt_bool(std::string_view key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) bad(key, "a boolean", *v);
    return v->get<bool>();
  }

  std::optional<std::string> opt_str(std::string_view key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) bad(key, "a string", *v);
    return v->get<std::string>();
  }

  const json* opt_obj(std::string_view key) const {
    const json* v = find(key);
    if (v && !v->is_object()) bad(key, "a JSON object", *v);
    return v;
  }

  const json* opt_array(std::string_view key) const {
    const json* v = find(key);
    if (v && !v->is_array()) bad(key, "a JSON array", *v);
    return v;
  }

 private:
  const json& obj_;
  std::string_view label_;
  std::string path_;
};

// bos/eos: an integer, or (eos) a list of integers whose first entry is used.
int64_t token_id(const Fields& f, std::string_view key, int64_t def) {
  const json* v = f.find(key);
  if (!v) return def;
  const char* what = "a non-negative integer or a non-empty list of them";
  if (v->is_array()) {
    if (v->empty()) f.bad(key, what, *v);
    for (const json& e : *v) f.check_int(e, key, 0, what);
    return (*v)[0].get<int64_t>();
  }
  return f.check_int(*v, key, 0, what);
}

// One RoPE parameter set. The base is `theta` when given (the dict's own rope_theta is
// then ignored, as transformers does for flat dicts), else the dict's rope_theta, else
// `theta_def`. Accepts rope types "default" and "yarn"; YaRN needs factor and
// original_max_position_embeddings.
RopeParams parse_rope(const Fields& f, std::optional<double> theta, double theta_def) {
  RopeParams r;
  r.theta = theta ? *theta : f.opt_pos_num("rope_theta", theta_def);
  std::string type = "default";
  if (auto t = f.opt_str("rope_type")) {
    type = *t;
  } else if (auto t2 = f.opt_str("type")) {
    type = *t2;
  }
  if (type == "default") return r;
  if (type != "yarn") {
    fail_invalid("{}: field '{}' is \"{}\"; DeepSeek-V4 uses \"yarn\" or \"default\"", f.label(),
                 f.path(f.has("rope_type") ? "rope_type" : "type"), type);
  }
  r.yarn = true;
  r.factor = f.req_pos_num("factor");
  r.original_max_position = f.req_pos("original_max_position_embeddings");
  r.beta_fast = f.opt_pos_num("beta_fast", 32.0);
  r.beta_slow = f.opt_pos_num("beta_slow", 1.0);
  if (r.beta_fast <= r.beta_slow) {
    fail_invalid("{}: field '{}' ({}) must be greater than '{}' ({})", f.label(), f.path("beta_fast"), r.beta_fast,
                 f.path("beta_slow"), r.beta_slow);
  }
  // transformers' optional `truncate: false` skips the floor/ceil of the YaRN ramp bounds;
  // DeepSeek's reference always truncates.
  if (!f.opt_bool("truncate", true)) {
    fail_invalid("{}: field '{}' is false; DeepSeek-V4's YaRN truncates the ramp bounds", f.label(),
                 f.path("truncate"));
  }
  return r;
}

AttnKind deepseek_kind(int64_t ratio) {
  if (ratio == 0) return AttnKind::SWA;
  return ratio == 4 ? AttnKind::CSA : AttnKind::HCA;
}

void parse_deepseek_form(const Fields& f, ModelConfig& c) {
  const std::string_view label = f.label();
  const int64_t n = c.num_layers;
  c.rope_head_dim = f.req_pos("qk_rope_head_dim");

  const json* ratios = f.opt_array("compress_ratios");
  if (!ratios) f.missing("compress_ratios", "a list of per-layer compression ratios");
  if (static_cast<int64_t>(ratios->size()) < n) {
    fail_invalid("{}: field 'compress_ratios' has {} entries; it needs at least num_hidden_layers = {}", label,
                 ratios->size(), n);
  }
  // With DSpark the entries past the backbone are the drafter's stages (dspark.md 1.2).
  if (c.dspark && static_cast<int64_t>(ratios->size()) > n) c.dspark->stages = static_cast<int64_t>(ratios->size()) - n;
  c.compress_ratios.clear();
  for (int64_t i = 0; i < n + c.num_mtp_layers; ++i) {
    int64_t r = 0;  // MTP entries missing from a short list: sliding-window only
    if (i < static_cast<int64_t>(ratios->size())) {
      r = f.check_int((*ratios)[static_cast<size_t>(i)], fmt::format("compress_ratios[{}]", i), 0,
                      "a non-negative integer");
    }
    c.compress_ratios.push_back(r);
    c.attn_kinds.push_back(deepseek_kind(r));
  }
  // Without DSpark, entries past n + num_mtp_layers are not ours to read.
  if (c.dspark && static_cast<int64_t>(ratios->size()) > n) {
    for (int64_t i = n; i < static_cast<int64_t>(ratios->size()); ++i) {
      const std::string key = fmt::format("compress_ratios[{}]", i);
      const int64_t r = f.check_int((*ratios)[static_cast<size_t>(i)], key, 0, "a non-negative integer");
      if (r != 0) {
        fail_invalid("{}: field '{}' is {}: it is DSpark drafter stage {}'s entry, and DSpark stages are "
                     "sliding-window only (ratio 0)", label, key, r, i - n);
      }
    }
  }

  c.num_hash_layers = f.opt_nonneg("num_hash_layers", 0);
  if (c.num_hash_layers > n) {
    fail_invalid("{}: field 'num_hash_layers' ({}) exceeds num_hidden_layers ({})", label, c.num_hash_layers, n);
  }
  c.hash_layers.assign(static_cast<size_t>(n), false);
  for (int64_t i = 0; i < c.num_hash_layers; ++i) c.hash_layers[static_cast<size_t>(i)] = true;

  // Sliding-window layers: plain RoPE at rope_theta. Compressed layers: compress_rope_theta
  // with rope_scaling (YaRN) applied.
  c.rope_main = RopeParams{};
  c.rope_main.theta = f.opt_pos_num("rope_theta", 10000.0);
  const double compress_theta = f.opt_pos_num("compress_rope_theta", 160000.0);
  if (const json* rs = f.opt_obj("rope_scaling")) {
    c.rope_compress = parse_rope(Fields(*rs, label, "rope_scaling"), compress_theta, compress_theta);
  } else {
    c.rope_compress = RopeParams{};
    c.rope_compress.theta = compress_theta;
  }
}

// int(head_dim * factor), as transformers computes the rotary dimension.
int64_t rotary_dim(int64_t head_dim, double factor) {
  return static_cast<int64_t>(std::floor(static_cast<double>(head_dim) * factor));
}

void parse_transformers_form(const Fields& f, const json& layer_types, ModelConfig& c) {
  const std::string_view label = f.label();
  const int64_t n = c.num_layers;

  // Compression rate per attention type: compress_rates dict, then the legacy scalar
  // overrides (transformers folds compress_rate_csa / compress_rate_hca over the dict).
  int64_t csa_rate = 4, hca_rate = 128;
  if (const json* cr = f.opt_obj("compress_rates")) {
    Fields cf(*cr, label, "compress_rates");
    csa_rate = cf.opt_pos(kCSA, csa_rate);
    hca_rate = cf.opt_pos(kHCA, hca_rate);
  }
  csa_rate = f.opt_pos("compress_rate_csa", csa_rate);
  hca_rate = f.opt_pos("compress_rate_hca", hca_rate);

  if (!layer_types.is_array()) f.bad("layer_types", "a JSON array of layer type names", layer_types);
  if (static_cast<int64_t>(layer_types.size()) != n) {
    fail_invalid("{}: field 'layer_types' has {} entries; num_hidden_layers is {}", label, layer_types.size(), n);
  }
  c.compress_ratios.clear();
  for (size_t i = 0; i < layer_types.size(); ++i) {
    const json& t = layer_types[i];
    const std::string key = fmt::format("layer_types[{}]", i);
    if (!t.is_string()) f.bad(key, "a layer type name", t);
    const std::string& s = t.get_ref<const std::string&>();
    if (s == kSWA) {
      c.compress_ratios.push_back(0);
      c.attn_kinds.push_back(AttnKind::SWA);
    } else if (s == kCSA) {
      c.compress_ratios.push_back(csa_rate);
      c.attn_kinds.push_back(AttnKind::CSA);
    } else if (s == kHCA) {
      c.compress_ratios.push_back(hca_rate);
      c.attn_kinds.push_back(AttnKind::HCA);
    } else {
      fail_invalid("{}: field '{}' is unknown layer type \"{}\" (expected \"{}\", \"{}\" or \"{}\")", label, key, s,
                   kSWA, kCSA, kHCA);
    }
  }
  // transformers does not build the MTP block; DeepSeek's MTP layers are sliding-window only.
  for (int64_t i = 0; i < c.num_mtp_layers; ++i) {
    c.compress_ratios.push_back(0);
    c.attn_kinds.push_back(AttnKind::SWA);
  }

  // Hash-routed layers: mlp_layer_types, else legacy num_hash_layers, else 3.
  c.hash_layers.assign(static_cast<size_t>(n), false);
  if (const json* mlp = f.opt_array("mlp_layer_types")) {
    if (static_cast<int64_t>(mlp->size()) != n) {
      fail_invalid("{}: field 'mlp_layer_types' has {} entries; num_hidden_layers is {}", label, mlp->size(), n);
    }
    for (size_t i = 0; i < mlp->size(); ++i) {
      const json& t = (*mlp)[i];
      const std::string key = fmt::format("mlp_layer_types[{}]", i);
      if (!t.is_string()) f.bad(key, "\"hash_moe\" or \"moe\"", t);
      const std::string& s = t.get_ref<const std::string&>();
      if (s == "hash_moe") {
        c.hash_layers[i] = true;
      } else if (s != "moe") {
        fail_invalid("{}: field '{}' is unknown MLP layer type \"{}\" (expected \"hash_moe\" or \"moe\")", label, key,
                     s);
      }
    }
  } else {
    const int64_t nh = std::min(f.opt_nonneg("num_hash_layers", 3), n);
    for (int64_t i = 0; i < nh; ++i) c.hash_layers[static_cast<size_t>(i)] = true;
  }
  c.num_hash_layers = 0;
  for (bool h : c.hash_layers) c.num_hash_layers += h ? 1 : 0;

  // Rotary dimension, as transformers 5.17's DeepseekV4Config and rotary embedding compute
  // it: each rope table (main, compress) rotates int(head_dim * f) dims, where f is the
  // table's own partial_rotary_factor when rope_parameters is nested {main, compress}
  // (default 1.0), else the top-level partial_rotary_factor, else qk_rope_head_dim /
  // head_dim, else 64/512. With nested rope_parameters the top-level partial_rotary_factor
  // and qk_rope_head_dim are not read: transformers writes them (qk_rope_head_dim derived
  // from a default partial_rotary_factor of 0.125) but its forward never uses them, so a
  // disagreement is a warning and the tables win.
  std::optional<double> top_factor;
  if (f.has("partial_rotary_factor")) {
    top_factor = f.req_pos_num("partial_rotary_factor");
    if (*top_factor > 1.0) f.bad("partial_rotary_factor", "a number in (0, 1]", *f.find("partial_rotary_factor"));
  }
  std::optional<int64_t> legacy;
  if (f.has("qk_rope_head_dim")) legacy = f.req_pos("qk_rope_head_dim");
  const json* rp = f.opt_obj("rope_parameters");
  const bool nested = rp && rp->contains("main") && rp->contains("compress") && rp->at("main").is_object() &&
                      rp->at("compress").is_object();
  std::string rope_from;  // what gave the rotary dim, for messages
  if (nested) {
    double factor[2];
    int64_t dim[2];
    int i = 0;
    for (std::string_view which : {"main", "compress"}) {
      Fields sf(rp->at(std::string(which)), label, fmt::format("rope_parameters.{}", which));
      factor[i] = sf.opt_pos_num("partial_rotary_factor", 1.0);
      dim[i] = rotary_dim(c.head_dim, factor[i]);
      ++i;
    }
    if (dim[0] != dim[1]) {
      fail_invalid("{}: fields 'rope_parameters.main.partial_rotary_factor' ({}) and "
                   "'rope_parameters.compress.partial_rotary_factor' ({}) give rotary dims {} and {} (head_dim {}, "
                   "an absent factor is transformers' default 1.0); DeepSeek-V4 has one rotary dim for every layer "
                   "(qk_rope_head_dim), so kiln cannot run a model whose sliding-window and compressed layers "
                   "rotate different widths", label, factor[0], factor[1], dim[0], dim[1], c.head_dim);
    }
    c.rope_head_dim = dim[0];
    rope_from = fmt::format("'rope_parameters.{{main,compress}}.partial_rotary_factor' ({})", factor[0]);
    if (top_factor && rotary_dim(c.head_dim, *top_factor) != c.rope_head_dim) {
      c.warnings.push_back(fmt::format(
          "{}: field 'partial_rotary_factor' ({}, a rotary dim of {}) is stale: transformers does not read it when "
          "rope_parameters has main/compress tables; kiln follows {}, a rotary dim of {}, as transformers does",
          label, *top_factor, rotary_dim(c.head_dim, *top_factor), rope_from, c.rope_head_dim));
    }
    if (legacy && *legacy != c.rope_head_dim) {
      c.warnings.push_back(fmt::format(
          "{}: field 'qk_rope_head_dim' ({}) is stale: transformers does not read it when rope_parameters has "
          "main/compress tables; kiln follows {}, a rotary dim of {}, as transformers does",
          label, *legacy, rope_from, c.rope_head_dim));
    }
  } else if (top_factor) {
    c.rope_head_dim = rotary_dim(c.head_dim, *top_factor);
    rope_from = fmt::format("'partial_rotary_factor' ({})", *top_factor);
    if (legacy && *legacy != c.rope_head_dim) {
      c.warnings.push_back(fmt::format(
          "{}: field 'qk_rope_head_dim' ({}) is stale: transformers takes the rotary dim from "
          "partial_rotary_factor ({}), head_dim * {} = {}, and so does kiln",
          label, *legacy, *top_factor, *top_factor, c.rope_head_dim));
    }
  } else if (legacy) {
    c.rope_head_dim = *legacy;
  } else {
    c.rope_head_dim = rotary_dim(c.head_dim, 64.0 / 512.0);
  }
  if (!rope_from.empty() && (c.rope_head_dim <= 0 || c.rope_head_dim > c.head_dim || c.rope_head_dim % 2 != 0)) {
    fail_invalid("{}: field {} gives a rotary dim of {}; it must be even, positive and at most head_dim ({})", label,
                 rope_from, c.rope_head_dim, c.head_dim);
  }

  // RoPE: rope_parameters {main: {...}, compress: {...}}; otherwise a flat dict
  // (rope_parameters or legacy rope_scaling) applies to the compress rope, and the main
  // rope is plain at rope_theta.
  const double main_theta = f.opt_pos_num("rope_theta", 10000.0);
  const double compress_theta = f.opt_pos_num("compress_rope_theta", 160000.0);
  if (nested) {
    for (std::string_view which : {"main", "compress"}) {
      const std::string sub_path = fmt::format("rope_parameters.{}", which);
      Fields sf(rp->at(std::string(which)), label, sub_path);
      RopeParams r = parse_rope(sf, std::nullopt, which == "main" ? main_theta : compress_theta);
      (which == "main" ? c.rope_main : c.rope_compress) = r;
    }
  } else {
    c.rope_main = RopeParams{};
    c.rope_main.theta = main_theta;
    const json* flat = rp;
    std::string flat_path = "rope_parameters";
    if (!flat) {
      flat = f.opt_obj("rope_scaling");
      flat_path = "rope_scaling";
    }
    if (flat) {
      // transformers builds the compress rope from the flat dict with rope_theta replaced
      // by compress_rope_theta.
      c.rope_compress = parse_rope(Fields(*flat, label, flat_path), compress_theta, compress_theta);
    } else {
      c.rope_compress = RopeParams{};
      c.rope_compress.theta = compress_theta;
    }
  }
}

// The dspark_* keys, all four or none (they are written together). Sets c.dspark (stage
// count still 0: the form's parser and finish_dspark derive it) and leaves no classic MTP
// block: DSpark checkpoints keep num_nextn_predict_layers at 1 for their drafter.
constexpr std::string_view kDSparkKeys[] = {"dspark_block_size", "dspark_noise_token_id", "dspark_target_layer_ids",
                                            "dspark_markov_rank"};

void parse_dspark(const Fields& f, ModelConfig& c) {
  std::string_view present;
  for (auto k : kDSparkKeys) {
    if (f.has(k)) present = k;
  }
  if (present.empty()) return;
  for (auto k : kDSparkKeys) {
    if (!f.has(k)) {
      fail_invalid("{}: field '{}' is set but '{}' is missing; a DSpark drafter is declared by dspark_block_size, "
                   "dspark_noise_token_id, dspark_target_layer_ids and dspark_markov_rank together",
                   f.label(), present, k);
    }
  }
  DSparkConfig d;
  d.block_size = f.req_pos("dspark_block_size");
  d.noise_token_id = f.req_nonneg("dspark_noise_token_id");
  if (d.noise_token_id >= c.vocab_size) {
    fail_invalid("{}: field 'dspark_noise_token_id' ({}) must be a token id below vocab_size ({})", f.label(),
                 d.noise_token_id, c.vocab_size);
  }
  d.markov_rank = f.req_pos("dspark_markov_rank");
  const json* ids = f.opt_array("dspark_target_layer_ids");
  if (ids->empty()) f.bad("dspark_target_layer_ids", "a non-empty list of backbone layer indices", *ids);
  for (size_t i = 0; i < ids->size(); ++i) {
    const std::string key = fmt::format("dspark_target_layer_ids[{}]", i);
    const int64_t l = f.check_int((*ids)[i], key, 0, "a backbone layer index (a non-negative integer)");
    if (l >= c.num_layers) {
      fail_invalid("{}: field '{}' is {}; DSpark reads the outputs of backbone layers 0..{} (num_hidden_layers {})",
                   f.label(), key, l, c.num_layers - 1, c.num_layers);
    }
    if (!d.target_layer_ids.empty() && l <= d.target_layer_ids.back()) {
      fail_invalid("{}: field '{}' is {} after {}; dspark_target_layer_ids must be strictly increasing", f.label(), key,
                   l, d.target_layer_ids.back());
    }
    d.target_layer_ids.push_back(l);
  }
  c.dspark = std::move(d);
  c.num_mtp_layers = 0;
}

// The stage count: the compress_ratios entries past the backbone (set by the DeepSeek
// form's parser); without them, DeepSeek's n_mtp_layers, else one stage per target layer
// (dspark.md 1.2: both are 3 in every release). Never num_nextn_predict_layers. Appends
// the stages' sliding-window entries to compress_ratios / attn_kinds.
void finish_dspark(const Fields& f, ModelConfig& c) {
  if (!c.dspark) return;
  DSparkConfig& d = *c.dspark;
  const bool from_ratios = d.stages > 0;
  if (f.has("n_mtp_layers")) {
    const int64_t m = f.req_pos("n_mtp_layers");
    if (from_ratios && m != d.stages) {
      fail_invalid("{}: field 'n_mtp_layers' ({}) disagrees with compress_ratios, whose {} entries past "
                   "num_hidden_layers ({}) are the DSpark stages", f.label(), m, d.stages, c.num_layers);
    }
    d.stages = m;
  }
  if (d.stages == 0) d.stages = static_cast<int64_t>(d.target_layer_ids.size());
  for (int64_t s = 0; s < d.stages; ++s) {
    c.compress_ratios.push_back(0);
    c.attn_kinds.push_back(AttnKind::SWA);
  }
}

}  // namespace

ModelConfig parse_model_config(const nlohmann::json& j, std::string_view label) {
  if (!j.is_object()) fail_invalid("{}: expected a JSON object at top level, got {}", label, show(j));
  const Fields f(j, label);
  ModelConfig c;

  if (auto mt = f.opt_str("model_type")) {
    if (*mt != "deepseek_v4") {
      fail_invalid("{}: field 'model_type' is \"{}\"; kiln reads \"deepseek_v4\" only", label, *mt);
    }
  }
  c.model_type = "deepseek_v4";

  const json* layer_types = f.find("layer_types");
  c.form = layer_types ? ConfigForm::Transformers : ConfigForm::DeepSeek;

  c.vocab_size = f.req_pos("vocab_size");
  c.hidden_size = f.req_pos("hidden_size");
  c.num_layers = f.req_pos("num_hidden_layers");
  c.num_nextn_predict_layers = f.opt_nonneg("num_nextn_predict_layers", 0);
  c.num_mtp_layers = c.num_nextn_predict_layers;
  c.num_heads = f.req_pos("num_attention_heads");
  c.num_kv_heads = f.opt_pos("num_key_value_heads", 1);
  c.head_dim = f.req_pos("head_dim");
  c.q_lora_rank = f.req_pos("q_lora_rank");
  c.o_lora_rank = f.req_pos("o_lora_rank");
  c.o_groups = f.req_pos("o_groups");
  c.sliding_window = f.req_pos("sliding_window");

  c.index_n_heads = f.req_pos("index_n_heads");
  c.index_head_dim = f.req_pos("index_head_dim");
  c.index_topk = f.req_pos("index_topk");

  c.n_routed_experts = f.req_pos("n_routed_experts");
  c.n_shared_experts = f.req_nonneg("n_shared_experts");
  c.num_experts_per_tok = f.req_pos("num_experts_per_tok");
  c.moe_intermediate_size = f.req_pos("moe_intermediate_size");
  {
    const std::string sf = f.opt_str("scoring_func").value_or("sqrtsoftplus");
    bool known = false;
    for (ScoringFunc k : {ScoringFunc::SqrtSoftplus, ScoringFunc::Softmax, ScoringFunc::Sigmoid}) {
      if (sf == scoring_func_name(k)) {
        c.scoring_func = k;
        known = true;
      }
    }
    if (!known) {
      fail_invalid("{}: field 'scoring_func' is \"{}\" (expected \"sqrtsoftplus\", \"softmax\" or \"sigmoid\")", label,
                   sf);
    }
  }
  c.norm_topk_prob = f.opt_bool("norm_topk_prob", true);
  // Defaults differ by form: DeepSeek's ModelArgs (route_scale 1, no clamp) and
  // transformers' DeepseekV4Config (1.5 and 10, the V4-Flash values).
  const bool tf = c.form == ConfigForm::Transformers;
  c.routed_scaling_factor = f.opt_pos_num("routed_scaling_factor", tf ? 1.5 : 1.0);
  c.swiglu_limit = f.opt_nonneg_num("swiglu_limit", tf ? 10.0 : 0.0);

  c.hc_mult = f.req_pos("hc_mult");
  c.hc_sinkhorn_iters = f.opt_pos("hc_sinkhorn_iters", 20);
  c.hc_eps = f.opt_pos_num("hc_eps", 1e-6);
  c.rms_norm_eps = f.opt_pos_num("rms_norm_eps", 1e-6);
  c.max_position_embeddings = f.opt_pos("max_position_embeddings", 0);

  c.bos_token_id = token_id(f, "bos_token_id", 0);
  c.eos_token_id = token_id(f, "eos_token_id", 1);
  c.tie_word_embeddings = f.opt_bool("tie_word_embeddings", false);
  if (auto d = f.opt_str("torch_dtype")) {
    c.torch_dtype = *d;
  } else if (auto d2 = f.opt_str("dtype")) {
    c.torch_dtype = *d2;
  }
  c.expert_dtype = f.opt_str("expert_dtype");
  if (const json* q = f.opt_obj("quantization_config")) c.quantization_config = *q;

  parse_dspark(f, c);
  if (c.form == ConfigForm::DeepSeek) {
    parse_deepseek_form(f, c);
  } else {
    parse_transformers_form(f, *layer_types, c);
  }
  finish_dspark(f, c);

  // Cross-field consistency.
  if (c.num_heads % c.o_groups != 0) {
    fail_invalid("{}: field 'o_groups' ({}) must divide num_attention_heads ({})", label, c.o_groups, c.num_heads);
  }
  if (c.num_kv_heads != 1) {
    fail_invalid("{}: field 'num_key_value_heads' is {}; DeepSeek-V4 has one shared K=V head", label, c.num_kv_heads);
  }
  // (A rotary dim from a partial_rotary_factor was checked where it was derived.)
  if (c.rope_head_dim <= 0 || c.rope_head_dim > c.head_dim || c.rope_head_dim % 2 != 0) {
    fail_invalid("{}: field 'qk_rope_head_dim' gives a rotary dim of {}; it must be even, positive and at most "
                 "head_dim ({})", label, c.rope_head_dim, c.head_dim);
  }
  if (c.num_experts_per_tok > c.n_routed_experts) {
    fail_invalid("{}: field 'num_experts_per_tok' ({}) exceeds n_routed_experts ({})", label, c.num_experts_per_tok,
                 c.n_routed_experts);
  }
  return c;
}

namespace {

// Reads a whole file; the caller has checked that it exists.
std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail_io("{}: cannot open: {}", p.string(), std::strerror(errno));
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) fail_io("{}: read failed: {}", p.string(), std::strerror(errno));
  return text;
}

nlohmann::json read_json_file(const std::filesystem::path& p) {
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) fail_io("{}: is a directory, not a file", p.string());
  const std::string text = read_text_file(p);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail_invalid("{}: not valid JSON (byte {}): {}", p.string(), e.byte, e.what());
  }
}

}  // namespace

ModelConfig load_model_config(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    if (std::filesystem::exists(dir, ec)) fail_io("{}: is not a directory", dir.string());
    fail_io("{}: no such directory", dir.string());
  }
  const std::filesystem::path cfg = dir / "config.json";
  if (!std::filesystem::exists(cfg, ec)) fail_invalid("{} has no config.json", dir.string());
  ModelConfig c = parse_model_config(read_json_file(cfg), cfg.string());

  const std::filesystem::path hq = dir / "hf_quant_config.json";
  if (std::filesystem::exists(hq, ec)) {
    nlohmann::json q = read_json_file(hq);
    if (!q.is_object()) fail_invalid("{}: expected a JSON object at top level, got {}", hq.string(), show(q));
    c.hf_quant_config = std::move(q);
  }
  return c;
}

}  // namespace kiln
