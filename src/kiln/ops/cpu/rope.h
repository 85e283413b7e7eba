// Interleaved (GPT-J style) partial rotary embedding as DeepSeek-V4 uses it: the LAST
// `dim` channels of a vector form pairs (2i, 2i+1) rotated by angle pos * inv_freq[i].
// Inverse rotation (the attention output's de-rotation) uses the conjugate (-sin).
//
// Frequencies follow transformers 5.17: default RoPE
//   inv_freq[i] = 1 / base^(fp32(2i) / dim)
// and, for YaRN (_compute_yarn_parameters, attention_factor forced to 1 by
// DeepseekV4Config, so cos/sin are not scaled), with factor f and original length L0:
//   corr(r) = dim * ln(L0 / (2 pi r)) / (2 ln base); low = max(floor(corr(beta_fast)), 0);
//   high = min(ceil(corr(beta_slow)), dim - 1); ramp_i = clamp((i - low) / (high - low), 0, 1)
//   e_i = 1 - ramp_i; inv_freq[i] = (1/(f*p_i)) * (1 - e_i) + (1/p_i) * e_i with p_i = base^(2i/dim)
// all in fp32 as torch does. Angles are fp32(inv_freq * fp32(pos)) like transformers'
// fp32 matmul; cos/sin are evaluated in double and rounded to fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/rope_params.h"

namespace kiln::ops::cpu {

// A rope's parameters (core/rope_params.h) and the channels it rotates.
struct RopeSpec : RopeParams {
  int64_t dim = 0;  // rotated channels (even)
};

std::vector<float> rope_inv_freq(const RopeSpec& spec);

class Rope {
 public:
  Rope() = default;
  explicit Rope(const RopeSpec& spec);

  int64_t dim() const { return dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // cos/sin for position pos: dim/2 values each.
  void cos_sin(int64_t pos, float* cos, float* sin) const;

  // Rotates the last dim() channels of x[0..n) in place at position pos (inverse: -angle).
  void apply(float* x, int64_t n, int64_t pos, bool inverse = false) const;
  // Same rotation applied to `heads` vectors of n floats each, stride ld.
  void apply_heads(float* x, int64_t heads, int64_t n, int64_t ld, int64_t pos, bool inverse = false) const;

 private:
  int64_t dim_ = 0;
  std::vector<float> inv_freq_;
};

}  // namespace kiln::ops::cpu
