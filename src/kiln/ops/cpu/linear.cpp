#include "kiln/ops/cpu/linear.h"

#include <algorithm>

#include "kiln/ops/cpu/linear_kernels.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {
namespace {

// Two dot products sharing the loads of x; for each output the same association as
// dot(), so a row gives the same value whether it is computed here or by dot().
inline void dot2(const float* x, const float* w0, const float* w1, int64_t n, float& y0, float& y1) {
  f32x4 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const f32x4 x0 = load4(x + i), x1 = load4(x + i + 4), x2 = load4(x + i + 8), x3 = load4(x + i + 12);
    a0 += x0 * load4(w0 + i);
    a1 += x1 * load4(w0 + i + 4);
    a2 += x2 * load4(w0 + i + 8);
    a3 += x3 * load4(w0 + i + 12);
    b0 += x0 * load4(w1 + i);
    b1 += x1 * load4(w1 + i + 4);
    b2 += x2 * load4(w1 + i + 8);
    b3 += x3 * load4(w1 + i + 12);
  }
  for (; i + 4 <= n; i += 4) {
    const f32x4 x0 = load4(x + i);
    a0 += x0 * load4(w0 + i);
    b0 += x0 * load4(w1 + i);
  }
  float s0 = hsum16(a0, a1, a2, a3), s1 = hsum16(b0, b1, b2, b3);
  for (; i < n; ++i) {
    s0 += x[i] * w0[i];
    s1 += x[i] * w1[i];
  }
  y0 = s0;
  y1 = s1;
}

// Output rows [o0, o1) for all T tokens. Rows are walked in tiles small enough to stay in
// cache while every token passes over them (at least 4 rows: the AVX-512 kernel's block).
void linear_rows(const float* x, int64_t ldx, int64_t T, const float* w, int64_t in, float* y, int64_t ldy,
                 int64_t o0, int64_t o1) {
  const int64_t tile = linear_tile_rows(in);
  for (int64_t ob = o0; ob < o1; ob += tile) {
    const int64_t oe = std::min(o1, ob + tile);
    linear_tile(x, ldx, T, w + ob * in, oe - ob, in, y + ob, ldy);
  }
}

}  // namespace

int64_t linear_tile_rows(int64_t in) {
  return std::max<int64_t>(4, (int64_t{16} * 1024 / static_cast<int64_t>(sizeof(float))) / std::max<int64_t>(in, 1)) & ~int64_t{3};
}

void linear_tile_portable(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in, float* y,
                          int64_t ldy) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * ldx;
    float* yt = y + t * ldy;
    int64_t o = 0;
    for (; o + 2 <= rows; o += 2) dot2(xt, w + o * in, w + (o + 1) * in, in, yt[o], yt[o + 1]);
    if (o < rows) yt[o] = dot(xt, w + o * in, in);
  }
}

LinearTileFn linear_tile_kernel() {
  static const LinearTileFn k = [] {
    if (LinearTileFn f = linear_tile_avx512()) return f;
    return &linear_tile_portable;
  }();
  return k;
}

void linear_tile(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in, float* y,
                 int64_t ldy) {
  linear_tile_kernel()(x, ldx, T, w, rows, in, y, ldy);
}

__attribute__((noinline)) void linear_finish(const float* acc, int mt, int mr, const float* x, int64_t ldx,
                                             const float* w, int64_t in, int64_t i0, float* y, int64_t ldy) {
  for (int t = 0; t < mt; ++t) {
    const float* xt = x + t * ldx;
    for (int r = 0; r < mr; ++r, acc += 16) {
      const float* wr = w + r * in;
      f32x4 c0 = load4(acc);
      int64_t i = i0;
      for (; i + 4 <= in; i += 4) c0 += load4(xt + i) * load4(wr + i);
      float s = hsum16(c0, load4(acc + 4), load4(acc + 8), load4(acc + 12));
      for (; i < in; ++i) s += xt[i] * wr[i];
      y[t * ldy + r] = s;
    }
  }
}

int64_t linear_grain(int64_t T, int64_t in) {
  return std::max<int64_t>(2, (int64_t{1} << 15) / std::max<int64_t>(T * in, 1));
}

void linear(const float* x, int64_t ldx, int64_t T, const float* w, int64_t out, int64_t in, float* y, int64_t ldy,
            ThreadPool* pool) {
  if (T <= 0 || out <= 0) return;
  // Enough work per thread to amortise the wake-up (~T*in*grain multiply-adds).
  const int64_t grain = linear_grain(T, in);
  if (pool == nullptr) {
    linear_rows(x, ldx, T, w, in, y, ldy, 0, out);
    return;
  }
  pool->parallel_for(out, grain, [&](int64_t b, int64_t e) { linear_rows(x, ldx, T, w, in, y, ldy, b, e); });
}

}  // namespace kiln::ops::cpu
