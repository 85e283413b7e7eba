#include "kiln/cli/write_synthetic.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <algorithm>
#include <span>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kiln/artifact/inventory.h"
#include "kiln/cli/default_model.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/io/config.h"
#include "kiln/io/config_writer.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"
#include "kiln/model/synthetic.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kPiece = size_t{32} << 20;  // bytes generated and written at a time

// How one stored tensor's bytes are made.
struct Content {
  enum class Kind { LinearWeight, LinearScale, Constant, Plain, Tid2eid, Shape } kind = Kind::Plain;
  SchemeKind scheme = SchemeKind::BF16;
  int64_t n = 0, k = 0;
  float value = 0;     // Constant
  std::string module;  // Plain: the canonical name inside its scope (picks the value recipe)
};

struct Out {
  quant::StoredTensor t;
  Content c;
  bool mtp = false;
  int shard = 0;
};

void encode(DType dt, float v, std::byte* dst) {
  switch (dt) {
    case DType::F32: std::memcpy(dst, &v, 4); return;
    case DType::BF16: {
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(dst, &h, 2);
      return;
    }
    case DType::F16: {
      const uint16_t h = f32_to_f16(v);
      std::memcpy(dst, &h, 2);
      return;
    }
    default: fail_invalid("internal: synthetic checkpoint: no float encoding for {}", dtype_name(dt));
  }
}

// The tensors of one linear module stored as `target`, with what fills each.
std::vector<Out> linear_outs(const ExpectedTensor& e, const quant::Target& target) {
  const SchemeKind s = target.kind;
  const ops::HostQuantLinear form = model::synthetic_linear_form(s, e.n, e.k);
  std::vector<Out> outs;
  for (auto& t : quant::target_tensors(e.path(), target, e.n, e.k)) {
    Out o;
    o.c.scheme = s;
    o.c.n = e.n;
    o.c.k = e.k;
    const std::string suffix = t.name.substr(e.path().size());
    if (suffix == ".weight" || suffix == ".weight_packed") {
      o.c.kind = Content::Kind::LinearWeight;
    } else if (suffix == ".weight_shape") {
      o.c.kind = Content::Kind::Shape;
    } else if (suffix == ".weight_scale_2") {
      o.c.kind = Content::Kind::Constant;
      o.c.value = form.global;
    } else if (suffix == ".input_scale") {
      o.c.kind = Content::Kind::Constant;
      o.c.value = 1.0f;
    } else if (t.dtype == form.scale_dtype) {
      o.c.kind = Content::Kind::LinearScale;  // the generator's own scale bytes
    } else {
      // The same scale as a float of another dtype (fp8 scales stored F32 / BF16): 2^-14.
      o.c.kind = Content::Kind::Constant;
      o.c.value = 0x1p-14f;
    }
    o.t = std::move(t);
    outs.push_back(std::move(o));
  }
  return outs;
}

void fill(const Out& o, const ModelConfig& cfg, uint64_t seed, uint64_t off, std::span<std::byte> buf) {
  const Content& c = o.c;
  const size_t es = dtype_size(o.t.dtype);
  switch (c.kind) {
    case Content::Kind::LinearWeight: model::synthetic_linear_bytes(c.scheme, c.n, c.k, false, seed, off, buf); return;
    case Content::Kind::LinearScale: model::synthetic_linear_bytes(c.scheme, c.n, c.k, true, seed, off, buf); return;
    default: break;
  }
  // Element-wise kinds: pieces hold whole elements (kPiece is a multiple of 8).
  for (size_t b = 0; b < buf.size(); b += es) {
    const uint64_t i = (off + b) / es;
    std::byte* dst = buf.data() + b;
    switch (c.kind) {
      case Content::Kind::Constant: encode(o.t.dtype, c.value, dst); break;
      case Content::Kind::Plain: encode(o.t.dtype, model::synthetic_plain_value(c.module, seed, i), dst); break;
      case Content::Kind::Tid2eid: {
        const int64_t v = model::synthetic_tid2eid(cfg, seed, i);
        std::memcpy(dst, &v, 8);
        break;
      }
      case Content::Kind::Shape: {
        const int64_t v = i == 0 ? c.n : c.k;
        std::memcpy(dst, &v, 8);
        break;
      }
      default: break;
    }
  }
}

// Threads that split each piece's generation into slices of whole 8-byte words. They are
// started once: a piece is 32 MB, and starting threads per piece costs more than the work
// on some VMs (the kernel zeroes and maps every new thread's stack).
class SliceCrew {
 public:
  explicit SliceCrew(size_t threads) {
    for (size_t t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ~SliceCrew() {
    {
      std::lock_guard lk(mu_);
      quit_ = true;
    }
    start_.notify_all();
    for (auto& w : workers_) w.join();
  }
  SliceCrew(const SliceCrew&) = delete;
  SliceCrew& operator=(const SliceCrew&) = delete;

  // Calls fn(begin, count) over [0, len) in slices, one per thread; returns when all are
  // done, rethrowing the first exception a slice threw.
  void run(size_t len, const std::function<void(size_t, size_t)>& fn) {
    const size_t n = workers_.size() + 1;
    {
      std::lock_guard lk(mu_);
      fn_ = &fn;
      len_ = len;
      slice_ = (len / n + 7) / 8 * 8;
      pending_ = workers_.size();
      ++round_;
    }
    start_.notify_all();
    do_slice(0);
    std::unique_lock lk(mu_);
    done_.wait(lk, [&] { return pending_ == 0; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void do_slice(size_t t) {
    const size_t a = t * slice_;
    try {
      if (a < len_) (*fn_)(a, std::min(slice_, len_ - a));
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void work(size_t t) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        start_.wait(lk, [&] { return quit_ || round_ != seen; });
        if (quit_) return;
        seen = round_;
      }
      do_slice(t);
      std::lock_guard lk(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t len_ = 0, slice_ = 0, pending_ = 0;
  uint64_t round_ = 0;
  bool quit_ = false;
  std::exception_ptr error_;
};

void remove_checkpoint_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const fs::path p = e.path();
    const std::string name = p.filename().string();
    if (p.extension() == ".safetensors" || name == "model.safetensors.index.json" || name == "config.json" ||
        name == "hf_quant_config.json")
      fs::remove(p);
  }
}

}  // namespace

uint64_t write_synthetic_checkpoint(const fs::path& dir, const json& config_in, const SyntheticCheckpointOptions& o) {
  const quant::Recipe* recipe = nullptr;
  for (const auto& r : quant::recipes())
    if (r.id == o.recipe) recipe = &r;
  if (!recipe || recipe->hf_names)
    fail(ErrorKind::Usage, "synthetic checkpoint: recipe {} does not use DeepSeek's native names", recipe ? recipe->name : "?");
  const ModelConfig cfg = parse_model_config(config_in, "synthetic checkpoint config");
  json config = config_in;
  std::optional<json> hf_quant;
  quant::declare_quantization(o.recipe, config, hf_quant, {});

  std::vector<Out> outs;
  for (const ExpectedTensor& e : expected_inventory(cfg)) {
    if (e.optional) continue;
    const bool mtp = e.scope == Scope::Mtp;
    if (e.linear) {
      const quant::Target target = quant::target_for(o.recipe, quant::role_of(e.module), mtp);
      if (auto why = quant::unrepresentable(target.kind, e.n, e.k))
        fail_invalid("synthetic checkpoint: {} [{}, {}]: {}", e.path(), e.n, e.k, *why);
      for (Out& x : linear_outs(e, target)) {
        x.mtp = mtp;
        outs.push_back(std::move(x));
      }
    } else {
      Out x;
      x.t = {e.path(), quant::plain_dtype(e.module), e.shape};
      x.c.kind = e.module == "ffn.gate.tid2eid" ? Content::Kind::Tid2eid : Content::Kind::Plain;
      x.c.module = e.module;
      x.mtp = mtp;
      outs.push_back(std::move(x));
    }
  }

  // Shards: the main model in order up to the size limit (a module's tensors stay
  // together), then the MTP block in its own shard, as DeepSeek's release has it.
  int shards = 0;
  uint64_t in_shard = 0, total = 0;
  bool mtp_started = false;
  for (size_t i = 0; i < outs.size(); ++i) {
    Out& x = outs[i];
    const uint64_t b = x.t.nbytes();
    const bool starts_module = x.c.kind == Content::Kind::Plain || x.c.kind == Content::Kind::Tid2eid ||
                               x.c.kind == Content::Kind::LinearWeight;
    const bool new_mtp = x.mtp && !mtp_started;
    if (shards == 0 || new_mtp || (!x.mtp && starts_module && in_shard > 0 && in_shard + b > o.max_shard_bytes)) {
      ++shards;
      in_shard = 0;
      if (x.mtp) mtp_started = true;
    }
    x.shard = shards - 1;
    in_shard += b;
    total += b;
  }

  fs::create_directories(dir);
  remove_checkpoint_files(dir);
  std::vector<std::byte> buf(kPiece);
  SliceCrew crew(std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8));
  json weight_map = json::object();
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t written = 0;
  double write_s = 0;  // of it in write(2): the rest is generating the bytes
  auto last_note = t0;
  // Progress at every shard's end and every ~5 s inside one (a shard is several GB).
  auto note_progress = [&](const std::string& file, bool shard_done) {
    if (!o.progress) return;
    const auto now = std::chrono::steady_clock::now();
    if (!shard_done && now - last_note < std::chrono::seconds(5)) return;
    last_note = now;
    const double dt = std::chrono::duration<double>(now - t0).count();
    *o.progress << fmt::format("  {} {:.2f} of {:.2f} GB ({:.2f} GB/s, {:.0f}% of the time writing){}\n",
                               shard_done ? "total" : "writing", static_cast<double>(written) / 1e9,
                               static_cast<double>(total) / 1e9, dt > 0 ? static_cast<double>(written) / 1e9 / dt : 0.0,
                               dt > 0 ? 100 * write_s / dt : 0.0, shard_done ? "" : ", in " + file)
                << std::flush;
  };
  size_t i = 0;
  for (int s = 0; s < shards; ++s) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
    SafetensorsWriter w(dir / file);
    const size_t first = i;
    uint64_t bytes = 0;
    for (; i < outs.size() && outs[i].shard == s; ++i) {
      w.declare(outs[i].t.name, outs[i].t.dtype, outs[i].t.shape);
      weight_map[outs[i].t.name] = file;
      bytes += outs[i].t.nbytes();
    }
    w.begin();
    for (size_t j = first; j < i; ++j) {
      const Out& x = outs[j];
      const uint64_t n = x.t.nbytes();
      if (n == 0) w.write_part(x.t.name, {});
      for (uint64_t off = 0; off < n; off += kPiece) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(kPiece, n - off));
crew.run(len, [&](size_t a, size_t l) { fill(x, cfg, o.seed, off + a, std::span<std::byte>(buf.data() + a, l)); });
        const auto t1 = std::chrono::steady_clock::now();
        w.write_part(x.t.name, std::span<const std::byte>(buf.data(), len));
        write_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        written += len;
        note_progress(file, false);
      }
    }
    w.finish();
    if (o.progress) {
      *o.progress << fmt::format("  wrote {} ({:.2f} GB, {} tensors)\n", file, static_cast<double>(bytes) / 1e9, i - first);
      note_progress(file, true);
    }
  }
  write_json_file(dir / "model.safetensors.index.json", json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  write_json_file(dir / "config.json", config);
  if (hf_quant) write_json_file(dir / "hf_quant_config.json", *hf_quant);
  return total;
}

int run_write_synthetic(const fs::path& dir, int layers, const std::string& experts, bool mtp, std::ostream& out,
                        std::ostream& err) {
  SyntheticCheckpointOptions o;
  if (experts == "mxfp4") {
    o.recipe = quant::RecipeId::Native;
  } else if (experts == "nvfp4") {
    o.recipe = quant::RecipeId::NativeNvfp4;
  } else {
    fail(ErrorKind::Usage, "--write-synthetic writes DeepSeek's native layouts: --experts mxfp4 (deepseek-native) or "
                           "nvfp4 (deepseek-native-nvfp4), not {}", experts);
  }
  o.progress = &err;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string what = fmt::format("{} layer{}{}, experts {}", layers, layers == 1 ? "" : "s", mtp ? " + MTP" : "", experts);
  err << fmt::format("writing a V4-Flash-shaped checkpoint ({}) to {}\n", what, dir.string());
  const uint64_t bytes = write_synthetic_checkpoint(dir, model::flash_shaped_config_json(layers, mtp), o);
  // `kiln serve` needs a tokenizer.json beside the model: the bundled model's (its ids are a
  // subset of the vocabulary; with random weights only token-id prompts mean anything).
  try {
    const fs::path tok = find_default_model() / "tokenizer.json";
    if (fs::exists(tok)) {
      fs::copy_file(tok, dir / "tokenizer.json", fs::copy_options::overwrite_existing);
      err << fmt::format("  copied {} (for kiln serve; prompts should be token ids)\n", tok.string());
    }
  } catch (const std::exception&) {
    err << "  no tokenizer.json written (the bundled model was not found): give kiln serve --tokenizer\n";
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out << fmt::format("wrote {}: V4-Flash-shaped, {}, {:.2f} GB in {:.1f} s\n", dir.string(), what,
                     static_cast<double>(bytes) / 1e9, dt);
  return 0;
}

}  // namespace kiln::cli
