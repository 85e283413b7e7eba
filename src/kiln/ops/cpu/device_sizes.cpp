// ops/device_sizes.h: the CUDA backend's allocation sizes, computed on the host without
// CUDA (this file is part of the CPU ops library so the memory planner runs anywhere).
#include "kiln/ops/device_sizes.h"

#include <set>

namespace kiln::ops::device {
namespace {
int64_t ceil_div(int64_t a, int64_t b) { return b > 0 ? (a + b - 1) / b : 0; }
}  // namespace

LinearLayout linear_layout(const HostQuantLinear& w) {
  LinearLayout l;
  const int64_t n = std::max<int64_t>(w.n, 0), k = std::max<int64_t>(w.k, 0);
  l.kc = ceil_div(k, linear_chunk_elems(w.scheme));
  l.kp = l.kc * linear_chunk_elems(w.scheme);
  l.weight_bytes = n * l.kc * 16;
  switch (w.scheme) {
    case SchemeKind::BF16: break;
    case SchemeKind::FP8Block: l.scale_bytes = ceil_div(n, w.block_n) * ceil_div(k, w.block_k) * 4; break;
    case SchemeKind::Int4Group: {
      const int64_t groups = ceil_div(k, w.block_k);
      l.scale_bytes = n * groups * 4;
      if (!w.zero_point.empty()) l.zero_point_bytes = n * groups;
      break;
    }
    case SchemeKind::MXFP4: l.scale_bytes = n * l.kc; break;
    case SchemeKind::NVFP4: l.scale_bytes = n * 2 * l.kc; break;
  }
  return l;
}

int64_t linear_device_bytes(const HostQuantLinear& w, int max_m) {
  const LinearLayout l = linear_layout(w);
  return l.stored_bytes() + l.staging_bytes(max_m);
}

int64_t linear_set_device_bytes(const HostQuantLinear* ws, int count, int max_pairs) {
  int64_t bytes = 0, kp = 0;
  std::set<SchemeKind> schemes;
  for (int e = 0; e < count; ++e) {
    const LinearLayout l = linear_layout(ws[e]);
    bytes += l.stored_bytes();
    kp = std::max(kp, l.kp);
    schemes.insert(ws[e].scheme);
  }
  return bytes + static_cast<int64_t>(schemes.size()) * count * kLinearParamsBytes + int64_t{max_pairs} * kp * 4;
}

int64_t lt_split_elems(const HostQuantLinear& w, int max_m) {
  if (w.scheme != SchemeKind::BF16 || max_m < kLtMinRows) return 0;
  return int64_t{max_m} * linear_layout(w).kp;
}

}  // namespace kiln::ops::device
