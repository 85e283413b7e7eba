// The parameters of one mHC sub-block (manifold-constrained hyper-connection) as the CPU
// (ops/cpu/hyper_connection.h) and CUDA (ops/cuda/hyper_connection.h) hc_pre take them;
// pointers are host or device memory to match the backend.
#pragma once

#include <cstdint>

namespace kiln::ops {

struct HcParams {
  int64_t n = 0;       // hc_mult
  int64_t hidden = 0;  // H
  const float* fn = nullptr;     // [(2+n)*n, n*H]
  const float* base = nullptr;   // [(2+n)*n]
  const float* scale = nullptr;  // [3]
  int sinkhorn_iters = 0;
  float hc_eps = 0;
  float norm_eps = 0;  // rms_norm_eps of the unweighted input norm
  // CUDA only: workspace for the split mix products, hc_pre_workspace_floats(R, n, hidden)
  // floats (the CPU ignores it).
  float* workspace = nullptr;
};

}  // namespace kiln::ops
