#include "kiln/artifact/scheme.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kiln/core/error.h"

namespace kiln {

std::vector<int64_t> TensorSlice::shape() const {
  std::vector<int64_t> s = info->shape;
  if (expert >= 0 && !s.empty()) s.erase(s.begin());
  if (half >= 0 && !s.empty()) s[0] /= 2;
  return s;
}

uint64_t TensorSlice::nbytes() const {
  uint64_t b = info->nbytes();
  if (expert >= 0 && !info->shape.empty() && info->shape[0] > 0) b /= static_cast<uint64_t>(info->shape[0]);
  if (half >= 0) b /= 2;
  return b;
}

std::string Scheme::describe() const {
  std::string s(scheme_kind_name(kind));
  switch (kind) {
    case SchemeKind::BF16:
      if (weight_dtype != DType::BF16) s += fmt::format(" ({})", dtype_name(weight_dtype));
      break;
    case SchemeKind::FP8Block:
      s += fmt::format(" {}x{} {} .{}", block_n, block_k, dtype_name(*scale_dtype), scale_field);
      break;
    case SchemeKind::Int4Group:
      s += fmt::format(" g{} {} {}{}", block_k, zero_point ? "asym" : "sym", dtype_name(*scale_dtype),
                       g_idx ? " act-order" : "");
      break;
    case SchemeKind::NVFP4:
      s += global == GlobalScaleConvention::Multiplier ? " (modelopt weight_scale_2"
                                                       : " (compressed-tensors weight_global_scale";
      s += scale_field == "scale" ? ", native .scale)" : ")";
      break;
    case SchemeKind::MXFP4:
      s += fmt::format(" g32 {} .{}", dtype_name(*scale_dtype), scale_field);
      break;
  }
  return s;
}

bool Scheme::same_as(const Scheme& o) const {
  return kind == o.kind && weight_dtype == o.weight_dtype && scale_dtype == o.scale_dtype &&
         scale_field == o.scale_field && block_n == o.block_n && block_k == o.block_k &&
         zero_point == o.zero_point && g_idx == o.g_idx && global == o.global;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The block length along a dimension of `len` elements that yields `count` scales.
// Prefers the declared hint, then 128, then the smallest power of two; 0 if none fits.
int64_t infer_block(int64_t count, int64_t len, std::optional<int64_t> hint) {
  if (count <= 0 || len <= 0) return 0;
  if (hint && *hint > 0 && ceil_div(len, *hint) == count) return *hint;
  if (ceil_div(len, 128) == count) return 128;
  if (count == len) return 1;
  for (int64_t p = 1; p <= (int64_t{1} << 24); p <<= 1) {
    if (ceil_div(len, p) == count) return p;
  }
  if (len % count == 0) return len / count;
  return 0;
}

class Detector {
 public:
  Detector(std::string_view path, const ModuleFields& fields, int64_t n, int64_t k)
      : path_(path), fields_(fields), n_(n), k_(k) {}

  const TensorSlice* get(std::string_view f) const {
    auto it = fields_.find(f);
    return it == fields_.end() ? nullptr : &it->second;
  }

  template <typename... A>
  void error(fmt::format_string<A...> f, A&&... a) {
    errors.push_back(fmt::format("{}: {}", path_, fmt::format(f, std::forward<A>(a)...)));
  }

  bool expect_shape(const TensorSlice* t, const std::vector<int64_t>& want, std::string_view what) {
    if (t->shape() == want) return true;
    error("{} has shape {} but {} needs {}", t->name, shape_str(t->shape()), what, shape_str(want));
    return false;
  }

  bool expect_dtype(const TensorSlice* t, std::initializer_list<DType> ok, std::string_view what) {
    for (DType d : ok) {
      if (t->dtype() == d) return true;
    }
    std::vector<std::string_view> names;
    for (DType d : ok) names.push_back(dtype_name(d));
    error("{} is {} but {} must be {}", t->name, dtype_name(t->dtype()), what, fmt::join(names, " or "));
    return false;
  }

  // A scalar-like global scale: shape [] or [1], F32.
  void expect_scalar(const TensorSlice* t, std::string_view what) {
    auto s = t->shape();
    int64_t numel = 1;
    for (auto d : s) numel *= d;
    if (s.size() > 1 || numel != 1) error("{} has shape {} but {} must be a scalar ([] or [1])", t->name, shape_str(s), what);
    expect_dtype(t, {DType::F32}, what);
  }

  void reject_extra(std::initializer_list<std::string_view> allowed, std::string_view scheme) {
    for (const auto& [f, t] : fields_) {
      bool ok = false;
      for (auto a : allowed) ok = ok || a == f;
      if (!ok) error("{} does not belong to a {} module (fields allowed: {})", t.name, scheme, fmt::join(allowed, ", "));
    }
  }

  std::optional<Scheme> detect(std::optional<std::pair<int64_t, int64_t>> hint);
  // The module's tensors by role, for the scheme detect() found.
  LinearRoles roles(const Scheme& s) const;

  std::vector<std::string> errors;

 private:
  std::optional<Scheme> detect_fp8(const TensorSlice* w, std::optional<std::pair<int64_t, int64_t>> hint);
  std::optional<Scheme> detect_fp4(const TensorSlice* w);
  std::optional<Scheme> detect_int4(const TensorSlice* w);

  std::string_view path_;
  const ModuleFields& fields_;
  int64_t n_, k_;
};

std::optional<Scheme> Detector::detect(std::optional<std::pair<int64_t, int64_t>> hint) {
  const TensorSlice* w = get("weight");
  const TensorSlice* wp = get("weight_packed");
  std::vector<std::string_view> scale_names;
  for (auto s : {"scale", "weight_scale_inv", "weight_scale"}) {
    if (get(s)) scale_names.push_back(s);
  }
  if (scale_names.size() > 1) {
    std::vector<std::string> names;
    for (auto s : scale_names) names.push_back(get(s)->name);
    error("carries {} different scale tensors ({}); expected exactly one of .scale, .weight_scale_inv, .weight_scale",
          names.size(), fmt::join(names, ", "));
    return std::nullopt;
  }
  if (w && wp) {
    error("has both {} and {}; expected one weight tensor", w->name, wp->name);
    return std::nullopt;
  }
  if (!w && !wp) {
    std::vector<std::string> names;
    for (const auto& [f, t] : fields_) names.push_back(t.name);
    error("has no weight tensor (found only {}); expected .weight or .weight_packed", fmt::join(names, ", "));
    return std::nullopt;
  }
  if (wp) {
    if (wp->dtype() == DType::I32) return detect_int4(wp);
    if (wp->dtype() == DType::U8 || wp->dtype() == DType::I8) return detect_fp4(wp);
    error("{} is {}; a packed weight must be I32 (int4) or U8 (fp4)", wp->name, dtype_name(wp->dtype()));
    return std::nullopt;
  }
  switch (w->dtype()) {
    case DType::BF16:
    case DType::F16:
    case DType::F32: {
      reject_extra({"weight"}, "bf16 (unquantized)");
      if (!errors.empty()) return std::nullopt;
      if (!expect_shape(w, {n_, k_}, "the weight")) return std::nullopt;
      Scheme s;
      s.kind = SchemeKind::BF16;
      s.weight_dtype = w->dtype();
      return s;
    }
    case DType::F8_E4M3:
      return detect_fp8(w, hint);
    case DType::U8:
    case DType::I8:
      return detect_fp4(w);
    default:
      error("{} has dtype {}, which is no weight format kiln knows (BF16, F16, F32, F8_E4M3, packed I8/U8/I32)",
            w->name, dtype_name(w->dtype()));
      return std::nullopt;
  }
}

LinearRoles Detector::roles(const Scheme& s) const {
  auto opt = [&](std::string_view f) { return get(f) ? std::optional<TensorSlice>(*get(f)) : std::nullopt; };
  LinearRoles r;
  r.weight = get("weight") ? *get("weight") : *get("weight_packed");
  if (s.kind != SchemeKind::BF16) r.scale = opt(s.scale_field);
  if (s.zero_point) r.zero_point = opt("weight_zero_point");
  if (s.g_idx) r.g_idx = opt("weight_g_idx");
  if (s.global == GlobalScaleConvention::Multiplier) r.global_scale = opt("weight_scale_2");
  if (s.global == GlobalScaleConvention::Divisor) r.global_scale = opt("weight_global_scale");
  return r;
}

std::optional<Scheme> Detector::detect_fp8(const TensorSlice* w, std::optional<std::pair<int64_t, int64_t>> hint) {
  const TensorSlice* sc = nullptr;
  std::string field;
  for (auto s : {"scale", "weight_scale_inv", "weight_scale"}) {
    if (get(s)) { sc = get(s); field = s; }
  }
  if (!sc) {
    error("{} is F8_E4M3 but the module has no scale (.scale, .weight_scale_inv or .weight_scale)", w->name);
    return std::nullopt;
  }
  reject_extra({"weight", "scale", "weight_scale_inv", "weight_scale", "input_scale"}, "fp8_block");
  if (!expect_shape(w, {n_, k_}, "the weight")) return std::nullopt;
  if (!expect_dtype(sc, {DType::F8_E8M0, DType::F32, DType::BF16, DType::F16, DType::U8}, "an FP8 block scale"))
    return std::nullopt;
  if (const TensorSlice* is = get("input_scale")) expect_scalar(is, "input_scale");
  auto s = sc->shape();
  int64_t rows = 0, cols = 0;
  int64_t numel = 1;
  for (auto d : s) numel *= d;
  if (s.size() <= 1 && numel == 1) {  // per-tensor
    rows = 1; cols = 1;
  } else if ((s.size() == 1 && s[0] == n_) || (s.size() == 2 && s[0] == n_ && s[1] == 1)) {  // per-channel
    rows = n_; cols = 1;
  } else if (s.size() == 2) {
    rows = s[0]; cols = s[1];
  } else if (s.size() == 4 && s[1] == 1 && s[3] == 1) {  // ModelOpt FP8_PB_WO
    rows = s[0]; cols = s[2];
  } else {
    error("{} has shape {}, which is no FP8 scale layout (scalar, [N], [N,1], 2-D block grid, or [N/b,1,K/b,1])",
          sc->name, shape_str(s));
    return std::nullopt;
  }
  std::optional<int64_t> hn, hk;
  if (hint) { hn = hint->first; hk = hint->second; }
  const bool per_tensor = s.size() <= 1 && numel == 1;
  int64_t bn = per_tensor ? n_ : infer_block(rows, n_, hn);
  int64_t bk = per_tensor || (rows == n_ && cols == 1) ? k_ : infer_block(cols, k_, hk);
  if (bn == 0 || bk == 0) {
    error("{} has shape {}, which fits no block size for a [{}, {}] weight", sc->name, shape_str(s), n_, k_);
    return std::nullopt;
  }
  if (!errors.empty()) return std::nullopt;
  Scheme r;
  r.kind = SchemeKind::FP8Block;
  r.weight_dtype = DType::F8_E4M3;
  r.scale_dtype = sc->dtype();
  r.scale_field = field;
  r.block_n = bn;
  r.block_k = bk;
  r.input_scale = get("input_scale") != nullptr;
  return r;
}

std::optional<Scheme> Detector::detect_fp4(const TensorSlice* w) {
  if (k_ % 2 != 0) {
    error("{} packs two FP4 values per byte but the module has an odd input width {}", w->name, k_);
    return std::nullopt;
  }
  if (!expect_shape(w, {n_, k_ / 2}, "a packed FP4 weight (two e2m1 per byte)")) return std::nullopt;
  const TensorSlice* sc = get("scale") ? get("scale") : get("weight_scale");
  std::string field = get("scale") ? "scale" : "weight_scale";
  if (!sc) {
    error("{} is a packed FP4 weight but the module has no scale (.scale or .weight_scale)", w->name);
    return std::nullopt;
  }
  const TensorSlice* gs2 = get("weight_scale_2");
  const TensorSlice* ggs = get("weight_global_scale");
  Scheme r;
  r.weight_dtype = w->dtype();
  r.scale_dtype = sc->dtype();
  r.scale_field = field;
  r.block_n = 1;
  if (sc->dtype() == DType::F8_E4M3) {  // NVFP4
    r.kind = SchemeKind::NVFP4;
    r.block_k = 16;
    if (gs2 && ggs) {
      error("carries both {} (ModelOpt) and {} (compressed-tensors); expected one NVFP4 global scale", gs2->name, ggs->name);
      return std::nullopt;
    }
    if (!gs2 && !ggs) {
      error("{} is an NVFP4 group scale but the module has no global scale (.weight_scale_2 or .weight_global_scale)",
            sc->name);
      return std::nullopt;
    }
    if (k_ % 16 != 0) {
      error("NVFP4 needs an input width divisible by 16, the module has {}", k_);
      return std::nullopt;
    }
    expect_shape(sc, {n_, k_ / 16}, "an NVFP4 group scale (one per 16 inputs)");
    if (gs2) {
      r.global = GlobalScaleConvention::Multiplier;
      expect_scalar(gs2, "weight_scale_2");
      // ModelOpt's spelling, or DeepSeek-native names (V4-Pro NVFP4 conversions): the group
      // scale under the native `.scale`, the global still ModelOpt's weight_scale_2.
      if (field == "scale") {
        reject_extra({"weight", "scale", "weight_scale_2", "input_scale"}, "native-named nvfp4");
      } else {
        reject_extra({"weight", "weight_scale", "weight_scale_2", "input_scale"}, "ModelOpt nvfp4");
      }
      if (const TensorSlice* is = get("input_scale")) expect_scalar(is, "input_scale");
    } else {
      r.global = GlobalScaleConvention::Divisor;
      expect_scalar(ggs, "weight_global_scale");
      reject_extra({"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"},
                   "compressed-tensors nvfp4");
      if (const TensorSlice* is = get("input_global_scale")) expect_scalar(is, "input_global_scale");
    }
    r.input_scale = get("input_scale") || get("input_global_scale");
  } else if (sc->dtype() == DType::F8_E8M0 || sc->dtype() == DType::U8) {  // MXFP4
    r.kind = SchemeKind::MXFP4;
    r.block_k = 32;
    if (gs2 || ggs) {
      error("{} is an E8M0 (MXFP4) scale but the module also has a global scale {}", sc->name, (gs2 ? gs2 : ggs)->name);
      return std::nullopt;
    }
    expect_shape(sc, {n_, ceil_div(k_, 32)}, "an MXFP4 scale (one E8M0 per 32 inputs)");
    reject_extra({"weight", "weight_packed", "scale", "weight_scale"}, "mxfp4");
  } else {
    error("{} is {}; a packed FP4 weight needs an F8_E4M3 (NVFP4) or F8_E8M0 (MXFP4) scale", sc->name,
          dtype_name(sc->dtype()));
    return std::nullopt;
  }
  if (!errors.empty()) return std::nullopt;
  return r;
}

std::optional<Scheme> Detector::detect_int4(const TensorSlice* w) {
  reject_extra({"weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"}, "int4_group");
  if (!expect_shape(w, {n_, ceil_div(k_, 8)}, "an int4 pack-quantized weight (8 values per int32)")) return std::nullopt;
  const TensorSlice* sc = get("weight_scale");
  if (!sc) {
    error("{} is pack-quantized but the module has no .weight_scale", w->name);
    return std::nullopt;
  }
  if (!expect_dtype(sc, {DType::BF16, DType::F16, DType::F32}, "an int4 group scale")) return std::nullopt;
  auto s = sc->shape();
  if (s.size() != 2 || s[0] != n_) {
    error("{} has shape {} but an int4 group scale needs [{}, groups]", sc->name, shape_str(s), n_);
    return std::nullopt;
  }
  int64_t g = s[1] == 1 ? k_ : infer_block(s[1], k_, std::nullopt);
  if (g == 0) {
    error("{} has {} groups, which fits no group size for {} inputs", sc->name, s[1], k_);
    return std::nullopt;
  }
  if (const TensorSlice* ws = get("weight_shape")) {
    auto wss = ws->shape();
    if (wss.size() != 1 || (wss[0] != 2 && wss[0] != 3)) error("{} has shape {}; expected [2]", ws->name, shape_str(wss));
    expect_dtype(ws, {DType::I64, DType::I32}, "weight_shape");
  }
  Scheme r;
  r.kind = SchemeKind::Int4Group;
  r.weight_dtype = DType::I32;
  r.scale_dtype = sc->dtype();
  r.scale_field = "weight_scale";
  r.block_n = 1;
  r.block_k = g;
  if (const TensorSlice* zp = get("weight_zero_point")) {
    r.zero_point = true;
    expect_dtype(zp, {DType::I32}, "a packed int4 zero point");
    expect_shape(zp, {ceil_div(n_, 8), s[1]}, "an int4 zero point (packed along N)");
  }
  if (const TensorSlice* gi = get("weight_g_idx")) {
    r.g_idx = true;
    expect_dtype(gi, {DType::I32}, "weight_g_idx");
    expect_shape(gi, {k_}, "weight_g_idx");
  }
  if (!errors.empty()) return std::nullopt;
  return r;
}

}  // namespace

DetectResult detect_scheme(std::string_view path, const ModuleFields& fields, int64_t n, int64_t k,
                           std::optional<std::pair<int64_t, int64_t>> block_hint) {
  Detector d(path, fields, n, k);
  DetectResult r;
  r.scheme = d.detect(block_hint);
  r.errors = std::move(d.errors);
  if (!r.errors.empty()) r.scheme.reset();
  if (r.scheme) r.roles = d.roles(*r.scheme);
  return r;
}

}  // namespace kiln
