#include "kiln/artifact/linear_view.h"

#include <cstring>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"

namespace kiln {

std::span<const std::byte> slice_bytes(const Checkpoint& ckpt, const TensorSlice& s) {
  auto all = ckpt.shards().at(static_cast<size_t>(s.shard)).data(*s.info);
  uint64_t off = 0, len = all.size();
  if (s.expert >= 0) {
    len /= static_cast<uint64_t>(s.info->shape.at(0));
    off += static_cast<uint64_t>(s.expert) * len;
  }
  if (s.half >= 0) {
    len /= 2;
    off += static_cast<uint64_t>(s.half) * len;
  }
  return all.subspan(off, len);
}

float global_multiplier(const Checkpoint& ckpt, const PlannedLinear& m) {
  const GlobalScaleConvention c = m.scheme.global;
  if (c == GlobalScaleConvention::None) return 1.0f;
  float g;  // detect_scheme checked it: an F32 scalar
  std::memcpy(&g, slice_bytes(ckpt, *m.roles.global_scale).data(), 4);
  return c == GlobalScaleConvention::Multiplier ? g : 1.0f / g;
}

HostQuantLinear linear_view(const Checkpoint& ckpt, const PlannedLinear& m) {
  auto bytes = [&](const TensorSlice& t) {
    const auto d = slice_bytes(ckpt, t);
    return HostBytes{d.data(), d.size()};
  };
  const Scheme& sc = m.scheme;
  HostQuantLinear h;
  h.scheme = sc.kind;
  h.name = m.path.c_str();
  h.n = m.n;
  h.k = m.k;
  h.weight = bytes(m.roles.weight);
  h.weight_dtype = m.roles.weight.dtype();
  if (m.roles.scale) {
    const TensorSlice& st = *m.roles.scale;
    h.scale = bytes(st);
    h.scale_dtype = st.dtype();
    const auto shp = st.shape();
    h.scale_rows = shp.empty() ? 1 : shp.at(0);
    h.scale_cols = shp.size() > 1 ? shp.at(1) : 1;
    h.block_n = sc.block_n;
    h.block_k = sc.block_k;
  }
  if (m.roles.zero_point) h.zero_point = bytes(*m.roles.zero_point);
  if (m.roles.g_idx) h.g_idx = bytes(*m.roles.g_idx);
  h.global = global_multiplier(ckpt, m);
  return h;
}

}  // namespace kiln
