#include "kiln/model/linear_source.h"

#include <cstring>
#include <memory>
#include <span>
#include <unordered_map>

#include "kiln/artifact/linear_view.h"
#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/weights.h"

namespace kiln::model {

using ops::HostQuantLinear;

ops::HostQuantLinear host_view(const Checkpoint& ckpt, const PlannedLinear& m) {
  HostQuantLinear h = linear_view(ckpt, m);
  if (h.scheme == SchemeKind::BF16 && h.weight_dtype != DType::BF16) {
    fail(ErrorKind::Invalid,
         "{}: linear module {} is stored as {}; the CUDA backend's 16-bit kernels take BF16 weights only (convert "
         "with `kiln quantize` or run on the CPU backend)",
         ckpt.dir().string(), m.path, dtype_name(h.weight_dtype));
  }
  if (!h.g_idx.empty()) {
    fail(ErrorKind::Invalid, "{}: linear module {} has an activation order (g_idx); the CUDA int4 kernel "
         "takes groups in column order only", ckpt.dir().string(), m.path);
  }
  return h;
}

namespace {

LinearSource linears_of(const Checkpoint& ckpt, std::span<const PlannedLinear> linears) {
  auto index = std::make_shared<std::unordered_map<std::string, const PlannedLinear*>>();
  for (const PlannedLinear& l : linears) (*index)[l.path] = &l;
  return [&ckpt, index](const std::string& path) {
    auto it = index->find(path);
    if (it == index->end()) fail(ErrorKind::Invalid, "internal: the plan has no linear module {}", path);
    return host_view(ckpt, *it->second);
  };
}

}  // namespace

LinearSource checkpoint_linears(const Checkpoint& ckpt, const Plan& plan) { return linears_of(ckpt, plan.linears); }

LinearSource checkpoint_dspark_linears(const Checkpoint& ckpt, const Plan& plan) {
  if (!plan.dspark) fail(ErrorKind::Invalid, "{}: the plan has no DSpark drafter", ckpt.dir().string());
  return linears_of(ckpt, plan.dspark->linears);
}

HostTensorView checkpoint_embed(const Checkpoint& ckpt, const Plan& plan) {
  for (const PlannedTensor& t : plan.tensors) {
    if (t.path != "embed.weight") continue;
    const auto b = slice_bytes(ckpt, t.tensor);
    return HostTensorView{t.tensor.dtype(), {b.data(), b.size()}, static_cast<int64_t>(b.size() / dtype_size(t.tensor.dtype()))};
  }
  fail(ErrorKind::Invalid, "internal: the plan has no embed.weight");
}

}  // namespace kiln::model
