#include "kiln/ops/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kiln/core/error.h"

namespace kiln::ops::cpu {

std::vector<float> rope_inv_freq(const RopeSpec& s) {
  if (s.dim <= 0 || s.dim % 2 != 0) fail(ErrorKind::Usage, "rope: rotary dim {} must be positive and even", s.dim);
  const int64_t half = s.dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  // p_i = base ** (fp32(2i) / dim), computed in fp32 like torch's scalar ** fp32 tensor.
  std::vector<float> p(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(s.dim);
    p[static_cast<size_t>(i)] = static_cast<float>(std::pow(s.theta, static_cast<double>(e)));
  }
  if (!s.yarn) {
    for (int64_t i = 0; i < half; ++i) inv[static_cast<size_t>(i)] = 1.0f / p[static_cast<size_t>(i)];
    return inv;
  }
  if (s.original_max_position <= 0 || s.factor <= 0) {
    fail(ErrorKind::Usage, "rope: YaRN needs factor > 0 and original_max_position > 0");
  }
  const double dim = static_cast<double>(s.dim);
  const double L0 = static_cast<double>(s.original_max_position);
  auto corr = [&](double rot) { return dim * std::log(L0 / (rot * 2.0 * std::numbers::pi)) / (2.0 * std::log(s.theta)); };
  const double low = std::max(std::floor(corr(s.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(s.beta_slow)), dim - 1.0);
  if (low == high) high += 0.001;  // transformers' linear_ramp_factor guard
  const float lowf = static_cast<float>(low), spanf = static_cast<float>(high - low);
  const float factor = static_cast<float>(s.factor);
  for (int64_t i = 0; i < half; ++i) {
    const float pi = p[static_cast<size_t>(i)];
    float ramp = (static_cast<float>(i) - lowf) / spanf;
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrap = 1.0f - ramp;
    const float inv_extrap = 1.0f / pi;
    const float inv_interp = 1.0f / (factor * pi);
    inv[static_cast<size_t>(i)] = inv_interp * (1.0f - extrap) + inv_extrap * extrap;
  }
  return inv;
}

Rope::Rope(const RopeSpec& spec) : dim_(spec.dim), inv_freq_(rope_inv_freq(spec)) {}

void Rope::cos_sin(int64_t pos, float* c, float* s) const {
  const float fp = static_cast<float>(pos);
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const float a = inv_freq_[i] * fp;
    c[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    s[i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
}

void Rope::apply_heads(float* x, int64_t heads, int64_t n, int64_t ld, int64_t pos, bool inverse) const {
  const int64_t half = dim_ / 2;
  float cbuf[256], sbuf[256];
  std::vector<float> heap;
  float* c = cbuf;
  float* s = sbuf;
  if (half > 256) {
    heap.resize(static_cast<size_t>(2 * half));
    c = heap.data();
    s = heap.data() + half;
  }
  cos_sin(pos, c, s);
  if (inverse) {
    for (int64_t i = 0; i < half; ++i) s[i] = -s[i];
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* r = x + h * ld + (n - dim_);
    for (int64_t i = 0; i < half; ++i) {
      const float a = r[2 * i], b = r[2 * i + 1];
      r[2 * i] = a * c[i] + (-b) * s[i];
      r[2 * i + 1] = b * c[i] + a * s[i];
    }
  }
}

void Rope::apply(float* x, int64_t n, int64_t pos, bool inverse) const { apply_heads(x, 1, n, n, pos, inverse); }

}  // namespace kiln::ops::cpu
