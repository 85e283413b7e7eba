#include "kiln/model/plan_binder.h"

#include <cstring>

#include <fmt/format.h>

#include "kiln/artifact/linear_view.h"
#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"

namespace kiln::model {

namespace {

std::vector<float> to_floats(const Checkpoint& ckpt, const TensorSlice& s) {
  auto b = slice_bytes(ckpt, s);
  const int64_t n = static_cast<int64_t>(b.size() / dtype_size(s.dtype()));
  std::vector<float> out(static_cast<size_t>(n));
  decode_floats(s.dtype(), b.data(), n, out.data());
  return out;
}

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

PlanBinder::PlanBinder(const Checkpoint& ckpt, std::span<const PlannedLinear> linears,
                       std::span<const PlannedTensor> tensors, const LoadOptions& opt, std::string what)
    : ckpt_(ckpt), opt_(opt), what_(std::move(what)) {
  for (const auto& l : linears) linears_[l.path] = &l;
  for (const auto& t : tensors) tensors_[t.path] = &t;
}

Linear PlanBinder::linear(const std::string& path) const {
  auto it = linears_.find(path);
  if (it == linears_.end()) fail_invalid("{} has no linear module {}", what_, path);
  Linear l;
  if (opt_.skip_linears) {
    l.out = it->second->n;
    l.in = it->second->k;
  } else {
    l = opt_.dequantize ? dequantize_linear(ckpt_, *it->second) : prepare_linear(ckpt_, *it->second);
  }
  l.stored = it->second->scheme.kind;
  return l;
}

const PlannedTensor& PlanBinder::get(const std::string& path) const {
  auto it = tensors_.find(path);
  if (it == tensors_.end()) fail_invalid("{} has no tensor {}", what_, path);
  return *it->second;
}

std::vector<float> PlanBinder::floats(const std::string& path) const { return to_floats(ckpt_, get(path).tensor); }

Tensor PlanBinder::tensor(const std::string& path) const {
  const auto& t = get(path).tensor;
  return Tensor{t.shape(), to_floats(ckpt_, t)};
}

std::vector<int32_t> PlanBinder::ints(const std::string& path) const {
  const auto& t = get(path).tensor;
  auto b = slice_bytes(ckpt_, t);
  const size_t n = b.size() / dtype_size(t.dtype());
  std::vector<int32_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t v = t.dtype() == DType::I64 ? load<int64_t>(b.data() + 8 * i) : load<int32_t>(b.data() + 4 * i);
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

HyperConnection PlanBinder::hyper(const std::string& p, const char* sub) const {
  return HyperConnection{tensor(fmt::format("{}hc_{}_fn", p, sub)), floats(fmt::format("{}hc_{}_base", p, sub)),
                         floats(fmt::format("{}hc_{}_scale", p, sub))};
}

HyperHead PlanBinder::hyper_head(const std::string& p) const {
  HyperHead h;
  h.fn = tensor(p + "hc_head_fn");
  h.base = floats(p + "hc_head_base");
  h.scale = floats(p + "hc_head_scale").at(0);
  return h;
}

Block PlanBinder::block_base(const std::string& p, AttnKind kind, int64_t ratio) const {
  Block bl;
  bl.attn_norm = floats(p + "attn_norm.weight");
  bl.ffn_norm = floats(p + "ffn_norm.weight");
  bl.hc_attn = hyper(p, "attn");
  bl.hc_ffn = hyper(p, "ffn");
  Attention& a = bl.attn;
  a.kind = kind;
  a.ratio = ratio;
  a.wq_a = linear(p + "attn.wq_a");
  a.q_norm = floats(p + "attn.q_norm.weight");
  a.wq_b = linear(p + "attn.wq_b");
  a.wkv = linear(p + "attn.wkv");
  a.kv_norm = floats(p + "attn.kv_norm.weight");
  a.wo_a = linear(p + "attn.wo_a");
  a.wo_b = linear(p + "attn.wo_b");
  a.sink = floats(p + "attn.attn_sink");
  return bl;
}

Expert PlanBinder::expert(const std::string& p) const {
  return Expert{linear(p + "w1"), linear(p + "w2"), linear(p + "w3")};
}

}  // namespace kiln::model
