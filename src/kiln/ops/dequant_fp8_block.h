// Dequantization of an FP8 (e4m3fn) weight with a 2-D grid of E8M0 block scales:
// W[r, c] = e4m3(q[r, c]) * 2^(s[r / block_n, c / block_k] - 127). The CPU version is
// the reference; the CUDA version must match it exactly (both are exact in fp32).
#pragma once

#include <cstdint>

namespace kiln::ops {

struct Fp8BlockShape {
  int64_t rows = 0, cols = 0;
  int64_t block_n = 128, block_k = 128;
  int64_t scale_cols() const { return (cols + block_k - 1) / block_k; }
};

namespace cpu {
void dequant_fp8_block_e8m0(const uint8_t* q, const uint8_t* scale, const Fp8BlockShape& s, float* out);
}

#ifdef KILN_HAVE_CUDA
namespace cuda {
// All pointers are device pointers; launches on `stream` (cudaStream_t) and checks the launch.
void dequant_fp8_block_e8m0(const uint8_t* q, const uint8_t* scale, const Fp8BlockShape& s, float* out, void* stream);
}
#endif

}  // namespace kiln::ops
