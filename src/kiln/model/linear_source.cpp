#include "kiln/model/linear_source.h"

#include <cstring>
#include <memory>
#include <unordered_map>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/weights.h"

namespace kiln::model {

using ops::HostBytes;
using ops::HostQuantLinear;
using ops::LinearScheme;

ops::HostQuantLinear host_view(const Checkpoint& ckpt, const PlannedLinear& m) {
  auto bytes = [&](const std::string& f) {
    auto d = slice_bytes(ckpt, m.fields.at(f));  // an expert's part of a fused tensor
    return HostBytes{d.data(), d.size()};
  };
  auto f32 = [&](const std::string& f) {
    float v;
    std::memcpy(&v, bytes(f).data, 4);
    return v;
  };
  const Scheme& sc = m.scheme;
  HostQuantLinear h;
  h.name = m.path.c_str();
  h.n = m.n;
  h.k = m.k;
  const std::string wf = m.fields.count("weight") ? "weight" : "weight_packed";
  h.weight = bytes(wf);
  h.weight_dtype = m.fields.at(wf).dtype();
  switch (sc.kind) {
    case SchemeKind::BF16:
      h.scheme = LinearScheme::BF16;
      if (h.weight_dtype != DType::BF16) {
        fail(ErrorKind::Invalid,
             "{}: linear module {} is stored as {}; the CUDA backend's 16-bit kernels take BF16 weights only (convert "
             "with `kiln quantize` or run on the CPU backend)",
             ckpt.dir().string(), m.path, dtype_name(h.weight_dtype));
      }
      break;
    case SchemeKind::FP8Block: h.scheme = LinearScheme::FP8Block; break;
    case SchemeKind::Int4Group: h.scheme = LinearScheme::Int4Group; break;
    case SchemeKind::MXFP4: h.scheme = LinearScheme::MXFP4; break;
    case SchemeKind::NVFP4: h.scheme = LinearScheme::NVFP4; break;
  }
  if (sc.g_idx) {
    fail(ErrorKind::Invalid, "{}: linear module {} has an activation order (weight_g_idx); the CUDA int4 kernel "
         "takes groups in column order only", ckpt.dir().string(), m.path);
  }
  if (sc.kind != SchemeKind::BF16) {
    const std::string sf = sc.kind == SchemeKind::Int4Group ? "weight_scale" : sc.scale_field;
    const TensorSlice& st = m.fields.at(sf);
    h.scale = bytes(sf);
    h.scale_dtype = st.dtype();
    const auto shp = st.shape();
    h.scale_rows = shp.at(0);
    h.scale_cols = shp.size() > 1 ? shp.at(1) : 1;
    h.block_n = sc.block_n;
    h.block_k = sc.block_k;
  }
  if (sc.zero_point) h.zero_point = bytes("weight_zero_point");
  if (sc.global == GlobalScaleConvention::Multiplier) h.global = f32("weight_scale_2");
  if (sc.global == GlobalScaleConvention::Divisor) h.global = 1.0f / f32("weight_global_scale");
  return h;
}

LinearSource checkpoint_linears(const Checkpoint& ckpt, const Plan& plan) {
  auto index = std::make_shared<std::unordered_map<std::string, const PlannedLinear*>>();
  for (const PlannedLinear& l : plan.linears) (*index)[l.path] = &l;
  return [&ckpt, index](const std::string& path) {
    auto it = index->find(path);
    if (it == index->end()) fail(ErrorKind::Invalid, "internal: the plan has no linear module {}", path);
    return host_view(ckpt, *it->second);
  };
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
