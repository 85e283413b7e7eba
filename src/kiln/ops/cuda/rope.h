// Rotary embedding tables on the GPU: cos/sin of every position below max_pos, taken
// from ops::cpu::Rope::cos_sin (so every rotation uses the same fp32 values as the CPU
// reference), uploaded once at load. The rotation itself is a device function
// (rope.cuh) used by the kernels that need it, and a standalone launcher below.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cuda/step_rows.h"

namespace kiln::ops::cuda {

// Device view: cos/sin [max_pos, half] row-major, half = dim / 2. Rotates the LAST dim
// channels of a vector (pairs 2i, 2i+1), as ops::cpu::Rope.
struct RopeView {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int dim = 0;
  int64_t max_pos = 0;
};

class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(const cpu::Rope& rope, int64_t max_pos);  // synchronous upload
  RopeTable(RopeTable&&) noexcept;
  RopeTable& operator=(RopeTable&&) noexcept;
  RopeTable(const RopeTable&) = delete;
  RopeTable& operator=(const RopeTable&) = delete;
  ~RopeTable();
  RopeView view() const { return view_; }

 private:
  float* buf_ = nullptr;  // cos then sin
  RopeView view_;
};

// For every row r and head h < heads: rotates the last rope.dim channels of the n-float
// vector at x + r * ld + h * head_stride, at position rows.pos[r] (inverse: -angle).
// bf16: every one of the n channels of those vectors is rounded to bf16 before and after
// (round_bf16 over them, the rotation, round_bf16 again: the same bits in one launch).
void rope_rows(const StepRows& rows, float* x, int64_t ld, int heads, int64_t head_stride, int n, RopeView rope,
               bool inverse, cudaStream_t stream, bool bf16 = false);

}  // namespace kiln::ops::cuda
