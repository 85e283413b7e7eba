#include "kiln/ops/cpu/hyper_connection.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/ops/cpu/linear.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {
namespace {

// mixes[t, :] = fn . (X[t] / rms(X[t])), rows = number of fn rows.
std::vector<float> mixes_of(const float* X, int64_t T, int64_t width, const float* fn, int64_t rows, float eps,
                            ThreadPool* pool) {
  std::vector<float> flat(static_cast<size_t>(T * width));
  rmsnorm(X, T, width, nullptr, eps, flat.data());
  std::vector<float> m(static_cast<size_t>(T * rows));
  linear(flat.data(), T, fn, rows, width, m.data(), pool);
  return m;
}

void collapse(int64_t n, int64_t H, const float* Xt, const float* pre, float* out) {
  // sum over streams in stream order
  for (int64_t d = 0; d < H; ++d) out[d] = 0.0f;
  for (int64_t i = 0; i < n; ++i) axpy(pre[i], Xt + i * H, out, H);
}

}  // namespace

void hc_pre(const HcParams& p, const float* X, int64_t T, float* collapsed, float* post, float* comb, ThreadPool* pool) {
  const int64_t n = p.n, H = p.hidden, mix = (2 + n) * n;
  const std::vector<float> m = mixes_of(X, T, n * H, p.fn, mix, p.norm_eps, pool);
  std::vector<float> pre(static_cast<size_t>(n));
  for (int64_t t = 0; t < T; ++t) {
    const float* mt = m.data() + t * mix;
    for (int64_t i = 0; i < n; ++i) {
      pre[static_cast<size_t>(i)] = sigmoid(mt[i] * p.scale[0] + p.base[i]) + p.hc_eps;
      post[t * n + i] = 2.0f * sigmoid(mt[n + i] * p.scale[1] + p.base[n + i]);
    }
    float* c = comb + t * n * n;
    for (int64_t i = 0; i < n; ++i) {
      float* row = c + i * n;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = mt[2 * n + i * n + j] * p.scale[2] + p.base[2 * n + i * n + j];
        mx = std::max(mx, row[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      for (int64_t j = 0; j < n; ++j) row[j] = row[j] / sum + p.hc_eps;
    }
    auto norm_cols = [&] {
      for (int64_t j = 0; j < n; ++j) {
        float s = 0.0f;
        for (int64_t i = 0; i < n; ++i) s += c[i * n + j];
        s += p.hc_eps;
        for (int64_t i = 0; i < n; ++i) c[i * n + j] /= s;
      }
    };
    auto norm_rows = [&] {
      for (int64_t i = 0; i < n; ++i) {
        float s = 0.0f;
        for (int64_t j = 0; j < n; ++j) s += c[i * n + j];
        s += p.hc_eps;
        for (int64_t j = 0; j < n; ++j) c[i * n + j] /= s;
      }
    };
    norm_cols();
    for (int it = 1; it < p.sinkhorn_iters; ++it) {
      norm_rows();
      norm_cols();
    }
    collapse(n, H, X + t * n * H, pre.data(), collapsed + t * H);
  }
}

void hc_post(int64_t n, int64_t H, const float* X, int64_t T, const float* y, const float* post, const float* comb,
             float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* Xt = X + t * n * H;
    const float* c = comb + t * n * n;
    for (int64_t j = 0; j < n; ++j) {
      float* o = out + (t * n + j) * H;
      const float pj = post[t * n + j];
      const float* yt = y + t * H;
      for (int64_t d = 0; d < H; ++d) o[d] = pj * yt[d];
      for (int64_t i = 0; i < n; ++i) axpy(c[i * n + j], Xt + i * H, o, H);
    }
  }
}

void hc_head(int64_t n, int64_t H, const float* fn, const float* base, float scale, float hc_eps, float norm_eps,
             const float* X, int64_t T, float* h, ThreadPool* pool) {
  const std::vector<float> m = mixes_of(X, T, n * H, fn, n, norm_eps, pool);
  std::vector<float> pre(static_cast<size_t>(n));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < n; ++i) pre[static_cast<size_t>(i)] = sigmoid(m[t * n + i] * scale + base[i]) + hc_eps;
    collapse(n, H, X + t * n * H, pre.data(), h + t * H);
  }
}

void hc_stream_mean(int64_t n, int64_t H, const float* X, int64_t T, float* out, int64_t ld_out) {
  for (int64_t t = 0; t < T; ++t) {
    float* f = out + t * ld_out;
    for (int64_t d = 0; d < H; ++d) {
      float acc = 0.0f;
      for (int64_t s = 0; s < n; ++s) acc += X[(t * n + s) * H + d];
      f[d] = acc / static_cast<float>(n);
    }
  }
}

}  // namespace kiln::ops::cpu
