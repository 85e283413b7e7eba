// The stored form of one linear module [n, k], by role: its weight, scale, zero point,
// act-order g_idx and NVFP4 global multiplier, as views of raw little-endian bytes in host
// memory (the memory-mapped checkpoint, or a generator's buffer). artifact/ builds it from
// the plan (linear_view.h), quant/ dequantizes it, ops/ prepares it for a kernel (CPU and
// CUDA). No field name of any on-disk spelling appears here. Also compiled as C++17 by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kiln/core/dtype.h"
#include "kiln/core/scheme_kind.h"

namespace kiln {

// Raw bytes in host memory (a std::span would do, but this header is also compiled as
// C++17 by nvcc).
struct HostBytes {
  const std::byte* data = nullptr;
  size_t size = 0;
  bool empty() const { return size == 0; }
};

struct HostQuantLinear {
  SchemeKind scheme = SchemeKind::BF16;
  int64_t n = 0, k = 0;  // out features, in features
  DType weight_dtype = DType::BF16;
  HostBytes weight;
  DType scale_dtype = DType::F32;
  HostBytes scale;                        // empty for BF16
  int64_t scale_rows = 0, scale_cols = 0;  // the scale tensor's 2-D shape
  int64_t block_n = 1, block_k = 0;       // rows / inputs per scale (fp8 block, int4 group, 32, 16)
  HostBytes zero_point;                   // int4 asymmetric only (I32 [ceil(n/8), groups], packed along n)
  HostBytes g_idx;                        // int4 act-order only (I32 [k]: the group of each input)
  float global = 1.0f;                    // nvfp4: the multiplier (normalised from either on-disk
                                          // convention by artifact/linear_view.h); 1 otherwise
  const char* name = "linear";            // module path, for error messages
};

}  // namespace kiln
