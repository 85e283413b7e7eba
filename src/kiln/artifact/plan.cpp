#include "kiln/artifact/plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kiln/artifact/inventory.h"
#include "kiln/artifact/quant_hint.h"
#include "kiln/core/codecs.h"

namespace kiln {
namespace {

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::string list_some(const std::vector<std::string>& v, size_t max = 4) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > max) out += fmt::format(" and {} more", v.size() - max);
  return out;
}

struct ModuleAcc {
  CanonicalName name;
  std::string disk_module;
  ModuleFields fields;
};

// A float scale tensor that holds E8M0 exponent bytes (integers ~100-130) instead of
// the scales 2^(v-127) they encode: the silent-garbage failure of vllm#43416.
std::optional<std::string> check_float_scale_values(const Checkpoint& ckpt, const TensorSlice& s) {
  const auto& shard = ckpt.shards().at(static_cast<size_t>(s.shard));
  auto bytes = shard.data(*s.info);
  const size_t n = bytes.size() / dtype_size(s.dtype());
  bool all_int_bytes = n > 0;
  float max_v = 0.0f;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    float v;
    if (s.dtype() == DType::F32) {
      std::memcpy(&v, bytes.data() + 4 * i, 4);
    } else if (s.dtype() == DType::BF16) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v = bf16_to_f32(h);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      v = f16_to_f32(h);
    }
    if (!std::isfinite(v) || v < 0.0f) ++bad;
    if (!(v >= 0.0f && v <= 255.0f && v == std::floor(v))) all_int_bytes = false;
    max_v = std::max(max_v, v);
  }
  if (bad > 0) {
    return fmt::format("{} ({} in {}) has {} negative or non-finite scale values; refusing to load", s.name,
                       dtype_name(s.dtype()), shard.path().filename().string(), bad);
  }
  if (all_int_bytes && max_v > 32.0f) {
    return fmt::format(
        "{} ({} in {}) holds E8M0 exponent bytes, not scales: every value is an integer in 0..255 (max {}), so "
        "reading them as {} would multiply the weights by up to 2^{} (vllm#43416). Refusing to load: store the "
        "scale as F8_E8M0 (kiln decodes 2^(v-127)) or as the float values 2^(v-127)",
        s.name, dtype_name(s.dtype()), shard.path().filename().string(), max_v, dtype_name(s.dtype()),
        static_cast<int>(std::log2(max_v)) + 1);
  }
  return std::nullopt;
}

}  // namespace

Plan build_plan(const Checkpoint& ckpt, const ModelConfig& config) {
  Plan p;
  p.config = config;
  p.num_shards = ckpt.shards().size();
  p.total_tensors = ckpt.tensors().size();
  p.total_bytes = ckpt.total_tensor_bytes();
  for (const auto& w : ckpt.warnings()) p.warnings.push_back(w);
  for (const auto& w : config.warnings) p.warnings.push_back(w);

  QuantHint hint(config);
  p.hint_summary = hint.summary();
  for (const auto& w : hint.warnings()) p.warnings.push_back(w);

  // 1. Every checkpoint tensor to its canonical role.
  const NameContext ctx{config.num_layers};
  std::unordered_map<std::string, ModuleAcc> modules;
  std::unordered_map<std::string, TensorSlice> plains;
  std::set<int> mtp_indices;
  std::vector<std::string> dspark_evidence;  // tensors only a DSpark stage has
  std::unordered_set<std::string> consumed;
  modules.reserve(ckpt.tensors().size());

  auto add_field = [&](const CanonicalName& c, std::string_view disk_module, const TensorSlice& t) {
    auto path = c.path();
    auto& acc = modules[path];
    if (acc.fields.empty()) {
      acc.name = c;
      acc.name.field.clear();
      acc.name.stack = Stack::None;
      acc.disk_module = std::string(disk_module);
    }
    auto [it, fresh] = acc.fields.emplace(c.field, t);
    if (!fresh) {
      p.errors.push_back(fmt::format("{}: tensors {} and {} both give its '{}' (two spellings of one weight)", path,
                                     it->second.name, t.name, c.field));
    }
  };

  for (const auto& [name, entry] : ckpt.tensors()) {
    auto c = canonicalize(name, ctx);
    if (!c) continue;
    if (c->scope == Scope::Mtp) {
      mtp_indices.insert(c->index);
      if (is_dspark_module(c->module)) dspark_evidence.emplace_back(name);
    }
    TensorSlice base;
    base.name = std::string(name);
    base.info = entry.info;
    base.shard = entry.shard;
    if (!c->linear) {
      auto path = c->path();
      auto [it, fresh] = plains.emplace(path, base);
      if (!fresh) p.errors.push_back(fmt::format("{}: tensors {} and {} both give it", path, it->second.name, name));
      continue;
    }
    if (c->stack == Stack::None) {
      add_field(*c, name.substr(0, name.size() - c->field.size() - 1), base);
      continue;
    }
    // Fused experts [E, rows, cols]: one slice per expert (and per half for gate_up).
    const auto& shape = entry.info->shape;
    if (shape.size() != 3) {
      p.errors.push_back(fmt::format("{} is a fused expert tensor but has shape {}; expected [experts, rows, cols]",
                                     name, shape_str(shape)));
      continue;
    }
    if (c->stack == Stack::GateUp && shape[1] % 2 != 0) {
      p.errors.push_back(fmt::format("{} has shape {}: a fused gate_up tensor needs an even row count (gate rows then "
                                     "up rows)", name, shape_str(shape)));
      continue;
    }
    for (int64_t e = 0; e < shape[0]; ++e) {
      TensorSlice t = base;
      t.expert = e;
      CanonicalName m = *c;
      if (c->stack == Stack::Down) {
        m.module = fmt::format("ffn.experts.{}.w2", e);
        add_field(m, name, t);
      } else {
        for (int half = 0; half < 2; ++half) {
          t.half = half;
          m.module = fmt::format("ffn.experts.{}.{}", e, half == 0 ? "w1" : "w3");
          add_field(m, name, t);
        }
      }
    }
  }
  std::sort(dspark_evidence.begin(), dspark_evidence.end());

  // 2. What the mtp.N blocks are. The config's dspark_* keys declare a DSpark drafter
  // (and no classic MTP block). Without them, DSpark-only tensors still mark the blocks as
  // a drafter kiln cannot describe: not the classic MTP blocks the config asks for.
  if (config.dspark) {
    p.dspark.emplace();
    for (int idx : mtp_indices) {
      if (idx < config.dspark->stages) p.dspark->stages_found.push_back(idx);
    }
  } else if (!dspark_evidence.empty()) {
    p.warnings.push_back(fmt::format(
        "mtp.{} hold{} a DSpark drafter ({}), but config.json has no dspark_* keys to describe it: the drafter is "
        "not planned (its tensors are unused), and it is not the classic MTP block num_nextn_predict_layers ({}) "
        "declares, so there is no MTP block", format_ranges(std::vector<int>(mtp_indices.begin(), mtp_indices.end())),
        mtp_indices.size() == 1 ? "s" : "", list_some(dspark_evidence, 3), config.num_nextn_predict_layers));
    p.config.num_mtp_layers = 0;
    p.config.compress_ratios.resize(static_cast<size_t>(config.num_layers));
    p.config.attn_kinds.resize(static_cast<size_t>(config.num_layers));
  } else {
    p.mtp_found.assign(mtp_indices.begin(), mtp_indices.end());
  }
  const ModelConfig& cfg = p.config;
  const std::set<int> mtp_found(p.mtp_found.begin(), p.mtp_found.end());

  for (int64_t m = 0; m < cfg.num_mtp_layers; ++m) {
    if (!mtp_found.count(static_cast<int>(m))) {
      p.warnings.push_back(fmt::format("config declares MTP layer {} but the checkpoint has no tensors for it: "
                                       "speculative decoding with MTP is unavailable", m));
    }
  }
  for (int idx : mtp_found) {
    if (idx >= cfg.num_mtp_layers) {
      p.warnings.push_back(fmt::format("the checkpoint has tensors for MTP layer {} but config declares {} MTP "
                                       "layer(s); they are not used", idx, cfg.num_mtp_layers));
    }
  }
  if (p.dspark && p.dspark->stages_found.empty()) {
    p.warnings.push_back(fmt::format("config.json declares a DSpark drafter ({} stage(s) under mtp.N) but the "
                                     "checkpoint has no tensors for it: DSpark drafting would be unavailable",
                                     cfg.dspark->stages));
  }

  // 3. Walk what the config requires.
  struct Disagreement {
    std::vector<std::string> paths;
  };
  std::map<std::string, Disagreement> disagreements;  // key: message template
  std::map<std::pair<std::string, std::string>, size_t> row_of;
  std::vector<std::unordered_set<std::string>> row_tensors;
  std::unordered_map<std::string, bool> scale_checked;

  auto row = [&](const std::string& label, const std::string& scheme, bool linear, Part part) -> GroupRow& {
    auto key = std::pair{label, scheme};
    auto it = row_of.find(key);
    if (it == row_of.end()) {
      it = row_of.emplace(key, p.groups.size()).first;
      GroupRow r;
      r.label = label;
      r.scheme = scheme;
      r.linear = linear;
      r.part = part;
      r.mtp = part == Part::Mtp;
      p.groups.push_back(std::move(r));
      row_tensors.emplace_back();
    }
    return p.groups[it->second];
  };
  auto add_layer = [](GroupRow& r, Scope s, int idx) {
    if (s == Scope::Top) return;
    if (r.layers.empty() || r.layers.back() != idx) r.layers.push_back(idx);
  };

  // Plans one expected tensor or module into `linears` / `tensors`; false when absent.
  auto plan_one = [&](const ExpectedTensor& e, std::vector<PlannedLinear>& linears,
                      std::vector<PlannedTensor>& tensors) -> bool {
    const auto path = e.path();
    if (!e.linear) {
      auto it = plains.find(path);
      if (it == plains.end()) {
        if (!e.optional) p.missing.push_back(path);
        return false;
      }
      const TensorSlice& t = it->second;
      consumed.insert(t.name);
      if (std::find(e.dtypes.begin(), e.dtypes.end(), t.dtype()) == e.dtypes.end()) {
        std::vector<std::string_view> ok;
        for (auto d : e.dtypes) ok.push_back(dtype_name(d));
        p.errors.push_back(fmt::format("{} ({}): dtype {} but {} expected", t.name, path, dtype_name(t.dtype()),
                                       fmt::join(ok, " or ")));
      }
      auto shape = t.shape();
      bool scalar_ok = e.shape == std::vector<int64_t>{1} && shape.empty();
      if (shape != e.shape && !scalar_ok) {
        p.errors.push_back(fmt::format("{} ({}): shape {} but the config implies {}", t.name, path, shape_str(shape),
                                       shape_str(e.shape)));
      }
      PlannedTensor pt{path, e.group, t};
      auto& r = row(e.group, std::string(dtype_name(t.dtype())), false, e.part);
      add_layer(r, e.scope, e.index);
      r.modules += 1;
      if (row_tensors[static_cast<size_t>(&r - p.groups.data())].insert(t.name).second) r.tensors += 1;
      r.bytes += t.nbytes();
      tensors.push_back(std::move(pt));
      return true;
    }

    auto it = modules.find(path);
    if (it == modules.end()) {
      if (!e.optional) p.missing.push_back(path + ".weight");
      return false;
    }
    ModuleAcc& acc = it->second;
    for (const auto& [f, t] : acc.fields) consumed.insert(t.name);
    auto det = detect_scheme(path, acc.fields, e.n, e.k, hint.fp8_block());
    if (!det.scheme) {
      for (auto& er : det.errors) p.errors.push_back(std::move(er));
      return true;
    }
    PlannedLinear pl;
    pl.name = acc.name;
    pl.path = path;
    pl.disk_module = acc.disk_module;
    pl.group = e.group;
    pl.n = e.n;
    pl.k = e.k;
    pl.scheme = *det.scheme;
    pl.roles = std::move(det.roles);
    for (const auto& [f, t] : acc.fields) pl.bytes += t.nbytes();
    pl.fields = std::move(acc.fields);

    // Scale dtype checks that need values (F32/BF16 scales) or a conversion note (U8).
    if (pl.scheme.kind == SchemeKind::FP8Block) {
      const TensorSlice& sc = *pl.roles.scale;
      if (sc.dtype() == DType::U8) {
        if (!scale_checked.count(sc.name)) {
          p.warnings.push_back(fmt::format("{}: scale {} is U8; read as E8M0 exponents 2^(v-127) (converted at load)",
                                           path, sc.name));
          scale_checked[sc.name] = true;
        }
      } else if (sc.dtype() != DType::F8_E8M0 && !scale_checked.count(sc.name)) {
        scale_checked[sc.name] = true;
        if (auto msg = check_float_scale_values(ckpt, sc)) p.errors.push_back(*msg);
      }
    }

    if (auto b = hint.fp8_block(); b && pl.scheme.kind == SchemeKind::FP8Block &&
                                   pl.scheme.block_n != pl.n && pl.scheme.block_n != 1 &&
                                   (pl.scheme.block_n != b->first || pl.scheme.block_k != b->second)) {
      auto key = fmt::format("{}: quantization_config declares {}x{} FP8 blocks, the scale grids on disk imply {}x{}; "
                             "using what is on disk", e.group, b->first, b->second, pl.scheme.block_n,
                             pl.scheme.block_k);
      disagreements[key].paths.push_back(path);
    }
    if (auto pred = hint.predict(pl.disk_module, pl.name); pred && pred->kind != pl.scheme.kind) {
      auto key = fmt::format("{}: {} declares {}, the tensors on disk are {}; using what is on disk", e.group,
                             pred->source, scheme_kind_name(pred->kind), scheme_kind_name(pl.scheme.kind));
      disagreements[key].paths.push_back(path);
    }

    auto& r = row(e.group, pl.scheme.describe(), true, e.part);
    add_layer(r, e.scope, e.index);
    r.modules += 1;
    auto& seen = row_tensors[static_cast<size_t>(&r - p.groups.data())];
    for (const auto& [f, t] : pl.fields) {
      if (seen.insert(t.name).second) r.tensors += 1;
    }
    r.bytes += pl.bytes;
    linears.push_back(std::move(pl));
    return true;
  };

  for (const auto& e : expected_inventory(cfg)) {
    if (e.scope == Scope::Mtp && !mtp_found.count(e.index)) continue;  // reported above
    plan_one(e, p.linears, p.tensors);
  }
  // A DSpark drafter found on disk is checked whole: every stage, every tensor.
  if (p.dspark && !p.dspark->stages_found.empty()) {
    PlannedDSpark& d = *p.dspark;
    for (const auto& e : expected_dspark_inventory(cfg)) {
      const bool found = plan_one(e, d.linears, d.tensors);
      if (found && e.module == "confidence_head.proj") d.confidence_head = true;
    }
    std::unordered_set<std::string> names;
    for (const auto& l : d.linears) {
      for (const auto& [f, t] : l.fields) {
        if (names.insert(t.name).second) d.bytes += t.info->nbytes();
      }
    }
    for (const auto& t : d.tensors) {
      if (names.insert(t.tensor.name).second) d.bytes += t.tensor.info->nbytes();
    }
    d.num_tensors = names.size();
  }

  for (auto& [msg, d] : disagreements) {
    p.warnings.push_back(fmt::format("{} ({} module{}: {})", msg, d.paths.size(), d.paths.size() == 1 ? "" : "s",
                                     list_some(d.paths, 3)));
  }

  for (const auto& [name, entry] : ckpt.tensors()) {
    if (!consumed.count(std::string(name))) p.unused.emplace_back(name);
  }
  if (!p.unused.empty()) {
    p.warnings.push_back(fmt::format("{} tensor(s) on disk have no role in this model and are not loaded: {}",
                                     p.unused.size(), list_some(p.unused)));
  }

  // Main-model rows first, linear modules before plain tensors, in inventory order; then
  // MTP, then the DSpark drafter.
  std::stable_sort(p.groups.begin(), p.groups.end(), [](const GroupRow& a, const GroupRow& b) {
    return std::pair{a.part, !a.linear} < std::pair{b.part, !b.linear};
  });
  return p;
}

}  // namespace kiln
