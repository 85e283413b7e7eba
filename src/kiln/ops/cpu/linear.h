// fp32 dense matrix product y[T, out] = x[T, in] W^T with W [out, in] row-major (the
// nn.Linear convention), threaded over output rows. Each y[t, o] is one dot() of fixed
// association, so the result is independent of T, the row strides and the thread count.
#pragma once

#include <cstdint>

namespace kiln::ops::cpu {

class ThreadPool;

// x rows are ldx floats apart, y rows ldy floats apart (ldx >= in, ldy >= out).
// pool may be null (single thread).
void linear(const float* x, int64_t ldx, int64_t T, const float* w, int64_t out, int64_t in, float* y, int64_t ldy,
            ThreadPool* pool);

// The kernel's pieces, for kernels that produce W rows on the fly (quant_linear.h):
// y[t, o] = x[t, :] . w[o, :] for o in [0, rows), every t, each output one dot() of the
// fixed association; the number of rows a tile should hold; and the row grain of a
// thread's share.
void linear_tile(const float* x, int64_t ldx, int64_t T, const float* w, int64_t rows, int64_t in, float* y,
                 int64_t ldy);
int64_t linear_tile_rows(int64_t in);
int64_t linear_grain(int64_t T, int64_t in);

// Contiguous rows: ldx = in, ldy = out.
inline void linear(const float* x, int64_t T, const float* w, int64_t out, int64_t in, float* y, ThreadPool* pool) {
  linear(x, in, T, w, out, in, y, out, pool);
}

}  // namespace kiln::ops::cpu
