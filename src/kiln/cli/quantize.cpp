// `kiln quantize`: plan the source, decide every output tensor (name, dtype, shape, shard)
// from the recipe, declare them, then stream: dequantize one module of the source,
// quantize it, write its tensors, drop it.
#include "kiln/cli/quantize.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kiln/artifact/inventory.h"
#include "kiln/artifact/linear_view.h"
#include "kiln/artifact/names.h"
#include "kiln/artifact/plan.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/io/config.h"
#include "kiln/io/config_writer.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/quant/dequantize.h"
#include "kiln/quant/quantize.h"
#include "kiln/quant/recipes.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using quant::QTensor;

// Recipes: quant/recipes.h.
using quant::find_recipe;
using quant::Recipe;
using quant::RecipeId;
using quant::role_of;
using quant::Target;
using quant::target_for;
using quant::unrepresentable;

// ---------------------------------------------------------------------------------------
// Names

// Splits a canonical path into scope prefix ("", "layers.3.", "mtp.0.") and the rest.
struct SplitPath {
  Scope scope = Scope::Top;
  int64_t index = -1;
  std::string rest;
};

SplitPath split_path(const std::string& p) {
  SplitPath s;
  for (auto [prefix, scope] : {std::pair{"layers.", Scope::Layer}, std::pair{"mtp.", Scope::Mtp}}) {
    std::string_view pre(prefix);
    if (p.rfind(pre, 0) == 0) {
      const size_t dot = p.find('.', pre.size());
      if (dot == std::string::npos) break;
      s.scope = scope;
      s.index = std::stoll(p.substr(pre.size(), dot - pre.size()));
      s.rest = p.substr(dot + 1);
      return s;
    }
  }
  s.rest = p;
  return s;
}

// transformers' module names for a native module or tensor inside a layer.
// The output name of a canonical module (linear) or tensor (plain).
std::string out_name(const Recipe& r, const ModelConfig& cfg, const std::string& canonical) {
  return r.hf_names ? hf_name(canonical, cfg.num_layers) : canonical;
}

using quant::plain_dtype;

// ---------------------------------------------------------------------------------------
// The output plan

using OutTensor = quant::StoredTensor;

struct Item {
  const PlannedLinear* lin = nullptr;  // a linear module, or
  const PlannedTensor* plain = nullptr;
  Target target;       // linear
  DType dtype{};       // plain
  std::string base;    // output module (linear) or tensor (plain) name
  std::vector<OutTensor> outs;
  bool mtp = false;
  int shard = 0;
  size_t order = 0;
  uint64_t bytes() const {
    uint64_t b = 0;
    for (const auto& o : outs) b += o.nbytes();
    return b;
  }
};

// ---------------------------------------------------------------------------------------
// Progress on stderr: a bar redrawn in place on a terminal, a line per 10% otherwise.

class Progress {
 public:
  Progress(std::ostream& err, bool tty, size_t tensors, uint64_t bytes)
      : err_(err), tty_(tty), total_t_(tensors), total_b_(std::max<uint64_t>(bytes, 1)),
        start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

  void advance(size_t tensors, uint64_t bytes) {
    done_t_ += tensors;
    done_b_ += bytes;
    const int pct = static_cast<int>(100 * done_b_ / total_b_);
    const auto now = std::chrono::steady_clock::now();
    if (tty_) {
      if (done_t_ < total_t_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      const int width = 30, fill = pct * width / 100;
      err_ << fmt::format("\r  [{}{}] {:3d}%  {}/{} tensors  {}/{}", std::string(static_cast<size_t>(fill), '#'),
                          std::string(static_cast<size_t>(width - fill), ' '), pct, done_t_, total_t_, human(done_b_),
                          human(total_b_))
           << std::flush;
      if (done_t_ == total_t_) err_ << "\n";
    } else if ((pct >= next_pct_ && now - last_draw_ >= std::chrono::seconds(2)) || done_t_ == total_t_) {
      // Logs: a line per 10% step at most every 2 s, and the last one.
      while (next_pct_ <= pct) next_pct_ += 10;
      last_draw_ = now;
      err_ << fmt::format("quantize: {:3d}% ({}/{} tensors, {}/{}, {:.1f} s)\n", pct, done_t_, total_t_,
                          human(done_b_), human(total_b_), seconds(now));
    }
  }

  double seconds(std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) const {
    return std::chrono::duration<double>(now - start_).count();
  }

  static std::string human(uint64_t b) {
    if (b >= (1ull << 30)) return fmt::format("{:.2f} GB", static_cast<double>(b) / 1e9);
    if (b >= (1ull << 20)) return fmt::format("{:.1f} MB", static_cast<double>(b) / 1e6);
    if (b >= 1000) return fmt::format("{:.1f} KB", static_cast<double>(b) / 1e3);
    return fmt::format("{} B", b);
  }

 private:
  std::ostream& err_;
  bool tty_;
  size_t total_t_, done_t_ = 0;
  uint64_t total_b_, done_b_ = 0;
  int next_pct_ = 10;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail(ErrorKind::Usage, "--max-shard-size '{}' is not a size (e.g. 5GB, 500MB, 1048576)", s);
  }
  std::string unit = s.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return std::toupper(c); });
  static const std::map<std::string, double> kUnits = {{"", 1},         {"B", 1},          {"KB", 1e3},
                                                       {"MB", 1e6},     {"GB", 1e9},       {"KIB", 1024.0},
                                                       {"MIB", 1048576.0}, {"GIB", 1073741824.0}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end() || !(v > 0)) {
    fail(ErrorKind::Usage, "--max-shard-size '{}' is not a size (e.g. 5GB, 500MB, 1048576)", s);
  }
  return static_cast<uint64_t>(v * it->second);
}

// ---------------------------------------------------------------------------------------
// Reading source tensors

QTensor convert_plain(const Checkpoint& ckpt, const PlannedTensor& p, DType want, std::vector<int64_t> shape) {
  const TensorSlice& t = p.tensor;
  const auto b = slice_bytes(ckpt, t);
  QTensor q;
  q.dtype = want;
  q.shape = std::move(shape);
  if (want == DType::I64) {
    const size_t n = b.size() / dtype_size(t.dtype());
    q.bytes.resize(n * 8);
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      if (t.dtype() == DType::I64) {
        std::memcpy(&v, b.data() + 8 * i, 8);
      } else if (t.dtype() == DType::I32) {
        int32_t w;
        std::memcpy(&w, b.data() + 4 * i, 4);
        v = w;
      } else {
        fail_invalid("{} is {}; expected an integer tensor", t.name, dtype_name(t.dtype()));
      }
      std::memcpy(q.bytes.data() + 8 * i, &v, 8);
    }
    return q;
  }
  if (t.dtype() == want) {  // exact copy
    q.bytes.assign(b.begin(), b.end());
    return q;
  }
  std::vector<float> v(b.size() / dtype_size(t.dtype()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = quant::decode_scale(t.dtype(), b.data() + i * dtype_size(t.dtype()));
  return quant::encode_floats(v, std::move(q.shape), want);
}

// A linear module of the source as fp32 [n, k], in any scheme, through the exact
// dequantization (quant/dequantize.h), rows split over `threads`.
std::vector<float> read_linear(const Checkpoint& ckpt, const PlannedLinear& l, int threads) {
  return quant::dequantize(linear_view(ckpt, l), threads);
}

// ---------------------------------------------------------------------------------------
// What to write

struct Run {
  const QuantizeOptions& opt;
  const Recipe& recipe;
  std::ostream& out;
  std::ostream& err;
};

// What the output holds, beside its tensors, for the report.
struct Summary {
  std::vector<std::string> kept_bf16, kept_bf16_why;
  std::map<std::string, size_t> scheme_counts;   // by target label
  std::map<std::string, size_t> source_schemes;  // quantized source modules, by scheme
  size_t downcast = 0;                           // plain tensors rounded to BF16
};

// Every planned linear and tensor as the recipe writes it, in inventory order.
std::vector<Item> plan_items(const Plan& plan, const ModelConfig& cfg, const Recipe& recipe, Summary& sum) {
  std::unordered_map<std::string, size_t> inv_pos;
  {
    // The backbone's inventory, then a DSpark drafter's (its stages are mtp.N blocks).
    auto inv = expected_inventory(cfg);
    const auto dinv = expected_dspark_inventory(cfg);
    inv.insert(inv.end(), dinv.begin(), dinv.end());
    for (size_t i = 0; i < inv.size(); ++i) inv_pos.emplace(inv[i].path(), i);
  }
  // The drafter's modules and tensors are written like the rest, by role (its stages as MTP
  // blocks: the recipe's MTP treatment).
  std::vector<const PlannedLinear*> linears;
  std::vector<const PlannedTensor*> tensors;
  for (const auto& l : plan.linears) linears.push_back(&l);
  for (const auto& t : plan.tensors) tensors.push_back(&t);
  if (plan.dspark) {
    for (const auto& l : plan.dspark->linears) linears.push_back(&l);
    for (const auto& t : plan.dspark->tensors) tensors.push_back(&t);
  }
  std::vector<Item> items;
  items.reserve(linears.size() + tensors.size());
  for (const PlannedLinear* lp : linears) {
    const PlannedLinear& l = *lp;
    Item it;
    it.lin = &l;
    it.mtp = l.name.scope == Scope::Mtp;
    it.target = target_for(recipe.id, role_of(l.name.module), it.mtp);
    it.base = out_name(recipe, cfg, l.path);
    if (auto why = unrepresentable(it.target.kind, l.n, l.k)) {
      sum.kept_bf16.push_back(it.base);
      sum.kept_bf16_why.push_back(fmt::format("{} [{}, {}]: {}", it.base, l.n, l.k, *why));
      it.target = Target{};
    }
    it.outs = quant::target_tensors(it.base, it.target, l.n, l.k);
    it.order = inv_pos.at(l.path);
    sum.scheme_counts[std::string(quant::target_label(it.target))] += 1;
    if (l.scheme.kind != SchemeKind::BF16 || l.scheme.weight_dtype != DType::BF16) sum.source_schemes[l.scheme.describe()] += 1;
    items.push_back(std::move(it));
  }
  for (const PlannedTensor* pp : tensors) {
    const PlannedTensor& p = *pp;
    Item it;
    it.plain = &p;
    const SplitPath sp = split_path(p.path);
    it.mtp = sp.scope == Scope::Mtp;
    it.dtype = plain_dtype(sp.rest);
    if (it.dtype == DType::BF16 && p.tensor.dtype() != DType::BF16) ++sum.downcast;
    it.base = out_name(recipe, cfg, p.path);
    it.outs = {{it.base, it.dtype, p.tensor.shape()}};
    if (it.outs[0].shape.empty()) it.outs[0].shape = {1};  // scalars stored as [1], as the inventory expects
    it.order = inv_pos.at(p.path);
    items.push_back(std::move(it));
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.order < b.order; });

  // Every name written must read back as the module it stands for.
  const NameContext ctx{cfg.num_layers};
  std::set<std::string> seen;
  for (const auto& it : items) {
    const std::string want = it.lin ? it.lin->path : it.plain->path;
    for (const auto& t : it.outs) {
      auto c = canonicalize(t.name, ctx);
      if (!c || c->path() != want || !seen.insert(t.name).second) {
        fail_invalid("internal: output tensor {} would not read back as {}", t.name, want);
      }
    }
  }
  return items;
}

// Tensors and bytes the items write.
std::pair<size_t, uint64_t> totals(const std::vector<Item>& items) {
  size_t tensors = 0;
  uint64_t bytes = 0;
  for (const auto& it : items) {
    tensors += it.outs.size();
    bytes += it.bytes();
  }
  return {tensors, bytes};
}

// Shards: the main model filled up to the size limit, then the MTP block on its own.
// Sets every item's shard; returns the number of shards.
int assign_shards(std::vector<Item>& items, uint64_t max_shard) {
  int num_shards = 0;
  for (const bool mtp : {false, true}) {
    uint64_t in_shard = 0;
    bool any = false;
    for (auto& it : items) {
      if (it.mtp != mtp) continue;
      if (any && in_shard + it.bytes() > max_shard) {
        ++num_shards;
        in_shard = 0;
      }
      it.shard = num_shards;
      in_shard += it.bytes();
      any = true;
    }
    if (any) ++num_shards;
  }
  return num_shards;
}

// NVFP4 globals: w1 and w3 of one expert share one (ModelOpt unifies their amax) unless
// --nvfp4-split-global.
class Nvfp4Globals {
 public:
  Nvfp4Globals(const Checkpoint& ckpt, const Plan& plan, const QuantizeOptions& o) : ckpt_(ckpt), o_(o) {
    for (const auto& l : plan.linears) by_path_.emplace(l.path, &l);
  }

  float operator()(const PlannedLinear& l, float own_amax) {
    const std::string& p = l.path;
    const bool gate_up = p.size() > 3 && (p.compare(p.size() - 3, 3, ".w1") == 0 || p.compare(p.size() - 3, 3, ".w3") == 0);
    if (o_.nvfp4_split_global || !gate_up) return quant::nvfp4_global_for(own_amax);
    const std::string prefix = p.substr(0, p.size() - 3);
    if (auto it = shared_.find(prefix); it != shared_.end()) return it->second;
    const std::string partner = prefix + (p.back() == '1' ? ".w3" : ".w1");
    float a = own_amax;
    if (auto it = by_path_.find(partner);
        it != by_path_.end() && !unrepresentable(SchemeKind::NVFP4, it->second->n, it->second->k)) {
      a = std::max(a, quant::amax(read_linear(ckpt_, *it->second, o_.threads)));
    }
    const float g = quant::nvfp4_global_for(a);
    shared_.emplace(prefix, g);
    return g;
  }

 private:
  const Checkpoint& ckpt_;
  const QuantizeOptions& o_;
  std::unordered_map<std::string, const PlannedLinear*> by_path_;
  std::unordered_map<std::string, float> shared_;  // keyed by the expert's path prefix
};

// The tensors of one linear module stored as its target, in target_tensors' order.
std::vector<QTensor> quantize_linear(const Checkpoint& ckpt, const Item& it, const QuantizeOptions& o,
                                     Nvfp4Globals& globals) {
  const PlannedLinear& l = *it.lin;
  const std::vector<float> w = read_linear(ckpt, l, o.threads);
  if (it.target.kind != SchemeKind::BF16 && !quant::all_finite(w)) {
    fail_invalid("{} ({} in {}) holds NaN or infinite values; refusing to quantize it", l.path, l.roles.weight.name,
                 o.model.string());
  }
  std::vector<QTensor> q;
  switch (it.target.kind) {
    case SchemeKind::BF16:
      q.push_back(quant::encode_floats(w, {l.n, l.k}, DType::BF16));
      break;
    case SchemeKind::FP8Block: {
      quant::Fp8BlockOptions fo;
      fo.scale_dtype = it.target.scale_dtype;
      fo.threads = o.threads;
      auto r = quant::quantize_fp8_block(w, l.n, l.k, fo);
      q.push_back(std::move(r.weight));
      q.push_back(std::move(r.scale));
      break;
    }
    case SchemeKind::MXFP4: {
      quant::Mxfp4Options mo;
      mo.threads = o.threads;
      auto r = quant::quantize_mxfp4(w, l.n, l.k, mo);
      q.push_back(std::move(r.weight));
      q.push_back(std::move(r.scale));
      break;
    }
    case SchemeKind::NVFP4: {
      auto r = quant::quantize_nvfp4(w, l.n, l.k, globals(l, quant::amax(w)), quant::Nvfp4Convention::ModelOpt,
                                     o.threads);
      q.push_back(std::move(r.weight));
      q.push_back(std::move(r.scale));
      q.push_back(std::move(r.global_scale));
      // No calibration data: a unit activation scale (see docs/quantization.md).
      const float input_scale = 1.0f;
      q.push_back(quant::encode_floats(std::span<const float>(&input_scale, 1), {}, DType::F32));
      break;
    }
    case SchemeKind::Int4Group: {
      quant::Int4Options io;
      io.threads = o.threads;
      auto r = quant::quantize_int4_group(w, l.n, l.k, io);
      q.push_back(std::move(r.packed));
      q.push_back(std::move(r.scale));
      q.push_back(std::move(r.shape));
      break;
    }
  }
  return q;
}

void prepare_out_dir(const QuantizeOptions& o) {
  std::error_code ec;
  if (fs::exists(o.out, ec)) {
    if (!fs::is_directory(o.out, ec)) fail_io("--out {} exists and is not a directory", o.out.string());
    if (fs::equivalent(o.out, o.model, ec)) {
      fail(ErrorKind::Usage, "--out {} is the source checkpoint directory; write the quantized artifact elsewhere",
           o.out.string());
    }
    const bool empty = fs::directory_iterator(o.out, ec) == fs::directory_iterator();
    if (!empty && !o.force) {
      fail(ErrorKind::Usage, "--out {} exists and is not empty; refusing to overwrite it (pass --force to replace the "
           "checkpoint files in it)", o.out.string());
    }
    if (!empty) {
      // Remove what would mix with the new artifact: shards, index, configs.
      for (const auto& e : fs::directory_iterator(o.out)) {
        const std::string n = e.path().filename().string();
        const bool ours = (e.path().extension() == ".safetensors") || n == "model.safetensors.index.json" ||
                          n == "config.json" || n == "hf_quant_config.json";
        if (ours && e.is_regular_file()) fs::remove(e.path());
      }
    }
  }
  fs::create_directories(o.out, ec);
  if (ec) fail_io("--out {}: cannot create: {}", o.out.string(), ec.message());
}

// Streams the items into their shards (one module read, quantized and written at a time),
// then writes the index and the configs. A failure removes the files already written: a
// partial artifact must not look like a checkpoint.
void write_artifact(const Checkpoint& ckpt, const Plan& plan, const std::vector<Item>& items, int num_shards,
                    const json& cfg_out, const std::optional<json>& hf_quant, const Run& run) {
  const QuantizeOptions& o = run.opt;
  auto shard_name = [&](int s) {
    return num_shards == 1 ? std::string("model.safetensors")
                           : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, num_shards);
  };
  const auto [total_tensors, total_bytes] = totals(items);
  const bool tty = &run.err == &std::cerr && ::isatty(STDERR_FILENO);
  Progress progress(run.err, tty, total_tensors, total_bytes);
  Nvfp4Globals globals(ckpt, plan, o);

  struct Cleanup {
    std::vector<fs::path> files;
    bool done = false;
    ~Cleanup() {
      if (done) return;
      std::error_code ec;
      for (const auto& f : files) fs::remove(f, ec);
    }
  } cleanup;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (int s = 0; s < num_shards; ++s) {
    const fs::path path = o.out / shard_name(s);
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    for (const auto& it : items) {
      if (it.shard != s) continue;
      for (const auto& t : it.outs) {
        w.declare(t.name, t.dtype, t.shape);
        weight_map[t.name] = shard_name(s);
      }
    }
    w.begin();
    for (const auto& it : items) {
      if (it.shard != s) continue;
      std::vector<QTensor> q;
      if (it.plain) q.push_back(convert_plain(ckpt, *it.plain, it.dtype, it.outs[0].shape));
      else q = quantize_linear(ckpt, it, o, globals);
      if (q.size() != it.outs.size()) fail_invalid("internal: {} produced {} tensors", it.base, q.size());
      uint64_t bytes = 0;
      for (size_t i = 0; i < q.size(); ++i) {
        const OutTensor& d = it.outs[i];
        if (q[i].dtype != d.dtype || q[i].bytes.size() != d.nbytes()) {
          fail_invalid("internal: {} came out {} with {} bytes, declared {} {}", d.name, dtype_name(q[i].dtype),
                       q[i].bytes.size(), dtype_name(d.dtype), fmt::join(d.shape, "x"));
        }
        w.write(d.name, q[i].bytes);
        bytes += d.nbytes();
      }
      progress.advance(q.size(), bytes);
    }
    w.finish();
    cleanup.files.push_back(path);
  }

  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total_bytes}};
  index["weight_map"] = weight_map;
  cleanup.files.push_back(o.out / "model.safetensors.index.json");
  write_json_file(o.out / "model.safetensors.index.json", index);
  write_json_file(o.out / "config.json", cfg_out);
  if (hf_quant) write_json_file(o.out / "hf_quant_config.json", *hf_quant);
  cleanup.done = true;
  // Tokenizer and generation files travel with the weights.
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                        "chat_template.jinja"}) {
    std::error_code ec;
    if (fs::is_regular_file(o.model / f, ec)) fs::copy_file(o.model / f, o.out / f, fs::copy_options::overwrite_existing);
  }
}

void print_report(const Run& run, const ModelConfig& cfg, const Plan& plan, const std::vector<Item>& items,
                  int num_shards, const Summary& sum, double secs) {
  const QuantizeOptions& o = run.opt;
  const auto [total_tensors, total_bytes] = totals(items);
  auto& out = run.out;
  out << fmt::format("kiln quantize: recipe {}\n", run.recipe.name);
  out << fmt::format("source      {} ({} config, {} shard(s), {} linear modules, {})\n", o.model.string(),
                     cfg.form == ConfigForm::DeepSeek ? "DeepSeek" : "transformers", plan.num_shards,
                     plan.linears.size(), Progress::human(plan.total_bytes));
  out << fmt::format("output      {}: {} shard(s){}, {} tensors, {}\n", o.out.string(), num_shards,
                     cfg.num_mtp_layers > 0 && !plan.mtp_found.empty() ? " (MTP block in its own)" : "", total_tensors,
                     Progress::human(total_bytes));
  std::vector<std::string> counts;
  for (const auto& [k, n] : sum.scheme_counts) counts.push_back(fmt::format("{}: {}", k, n));
  out << fmt::format("modules     {}\n", fmt::join(counts, ", "));
  if (!sum.source_schemes.empty()) {
    std::vector<std::string> v;
    for (const auto& [k, n] : sum.source_schemes) v.push_back(fmt::format("{} x{}", k, n));
    out << fmt::format("note        requantized from a quantized source ({}): the source's rounding error adds to "
                       "this recipe's\n", fmt::join(v, ", "));
  }
  if (sum.downcast > 0) {
    out << fmt::format("note        {} norm/embedding tensor(s) stored in another float dtype were rounded to BF16\n",
                       sum.downcast);
  }
  if (!plan.unused.empty()) {
    out << fmt::format("note        {} source tensor(s) with no role in the model were not copied\n", plan.unused.size());
  }
  if (!sum.kept_bf16.empty()) {
    out << fmt::format("kept bf16   {} module(s) the recipe would quantize, whose shape the scheme cannot hold "
                       "(declared as not converted in the config):\n", sum.kept_bf16.size());
    for (const auto& w : sum.kept_bf16_why) out << "              " << w << "\n";
  }
  out << fmt::format("done in {:.2f} s; check it with: kiln inspect {}\n", secs, o.out.string());
}

int quantize(const Run& run) {
  const QuantizeOptions& o = run.opt;
  const auto t0 = std::chrono::steady_clock::now();
  const uint64_t max_shard = parse_size(o.max_shard_size);

  // 1. The source, through the plan.
  const Checkpoint ckpt = Checkpoint::open(o.model);
  const ModelConfig cfg = load_model_config(o.model);
  const json src_cfg = read_json_file(o.model / "config.json");
  const Plan plan = build_plan(ckpt, cfg);
  if (!plan.loadable()) {
    std::vector<std::string> why = plan.errors;
    for (const auto& m : plan.missing) why.push_back("missing " + m);
    fail_invalid("{} is not loadable ({} problem(s)), so it cannot be quantized; first: {} (run `kiln inspect {}` for "
                 "the full report)", o.model.string(), why.size(), why.front(), o.model.string());
  }
  if (cfg.dspark && !plan.dspark) {
    fail_invalid("{} declares a DSpark drafter (config.json's dspark_* keys) whose tensors the plan did not find; "
                 "kiln quantize will not write a copy that silently drops it", o.model.string());
  }

  // 2. What to write, and where.
  Summary sum;
  std::vector<Item> items = plan_items(plan, cfg, run.recipe, sum);
  const int num_shards = assign_shards(items, max_shard);

  // 3. Config and declarations (validated before any tensor is written).
  json cfg_out = deepseek_config_json(src_cfg, cfg);
  std::optional<json> hf_quant;
  quant::declare_quantization(run.recipe.id, cfg_out, hf_quant, sum.kept_bf16);
  check_same_model(cfg, parse_model_config(cfg_out, "the rewritten config.json"));

  // 4. Stream.
  prepare_out_dir(o);
  write_artifact(ckpt, plan, items, num_shards, cfg_out, hf_quant, run);

  // 5. Report.
  print_report(run, cfg, plan, items, num_shards, sum,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

}  // namespace

std::vector<std::pair<std::string_view, std::string_view>> quantize_recipes() {
  std::vector<std::pair<std::string_view, std::string_view>> v;
  for (const auto& r : quant::recipes()) v.emplace_back(r.name, r.description);
  return v;
}

int run_quantize(const QuantizeOptions& opt, std::ostream& out, std::ostream& err) {
  const Recipe* recipe = find_recipe(opt.recipe);
  if (!recipe) {
    std::vector<std::string_view> names;
    for (const auto& r : quant::recipes()) names.push_back(r.name);
    fail(ErrorKind::Usage, "--recipe '{}' is not a recipe; choose one of: {}", opt.recipe, fmt::join(names, ", "));
  }
  if (opt.nvfp4_split_global && recipe->id != RecipeId::Nvfp4 && recipe->id != RecipeId::NativeNvfp4) {
    fail(ErrorKind::Usage, "--nvfp4-split-global applies to the nvfp4-fp8-mtp and deepseek-native-nvfp4 recipes only");
  }
  return quantize(Run{opt, *recipe, out, err});
}

}  // namespace kiln::cli
