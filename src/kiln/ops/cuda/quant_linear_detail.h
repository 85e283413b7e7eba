// Internal to the CUDA linear kernels: the prepared-weight descriptor a kernel receives
// and the launchers, one per (scheme, token tile), chosen at prepare time.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/quant_linear.h"

namespace kiln::ops::cuda::detail {

// Prepared weights: every row of W is kc 16-byte chunks (k padded with zeros to a whole
// chunk); chunk_elems(scheme) elements per chunk. Scale layouts (device memory):
//   BF16      none
//   FP8Block  f32 [ceil(n / block_n), scale_ld], column of chunk c = c >> grp_shift
//   Int4Group f32 [n, scale_ld] (+ u8 zero points [n, scale_ld] or null), column c >> grp_shift
//   MXFP4     u8 E8M0 [n, kc] (one scale per chunk of 32)
//   NVFP4     u8 E4M3 [n, 2 * kc] (two scales per chunk of 32), times `global`
struct LinearParams {
  const void* w = nullptr;
  const void* scale = nullptr;
  const uint8_t* zp = nullptr;
  int64_t n = 0;
  int kc = 0;
  int scale_ld = 0;
  int grp_shift = 0;
  int block_n = 1;
  float global = 1.0f;
};

// Elements of one 16-byte chunk: bf16 8, fp8 16, int4 / e2m1 32.
constexpr int chunk_elems(SchemeKind s) {
  return s == SchemeKind::BF16 ? 8 : s == SchemeKind::FP8Block ? 16 : 32;
}

// Threads per block of every linear kernel.
inline constexpr int kThreads = 256;

struct LaunchShape {
  int lk_log2 = 5;      // threads along k per row group: 1 << lk_log2 (8..256)
  unsigned blocks = 1;  // row blocks (grid.x)
  unsigned mtiles = 1;  // token tiles (grid.y)
};

// Row groups of one launch (grid.z = count): group g = first + blockIdx.z covers rows
// [g * rows, (g + 1) * rows) and reads x + blockIdx.z * x_stride (x points at group
// first's slice). A plain call is one group of n rows.
struct RowGroups {
  int64_t rows = 0;
  int64_t x_stride = 0;
  int first = 0;
  unsigned count = 1;
};

// grid (s.blocks, s.mtiles, g.count); s.blocks must cover g.rows rows.
using LaunchFn = void (*)(const LinearParams& p, const LaunchShape& s, const float* x, int64_t ldx, int M, float* y,
                          int64_t ldy, const RowGroups& g, cudaStream_t stream);

// The one-token product of many experts (QuantLinearSet::forward_indexed): grid
// (s.blocks, 1, P); pair i runs table[expert[i]] (skipped when the id is outside
// [0, count) or that entry's w is null) on x row i / x_div into y row i, with the same
// body, lanes (s.lk_log2) and rows per thread as the M = 1 plain launch, hence the same sums.
using IndexedLaunchFn = void (*)(const LinearParams* table, int count, const LaunchShape& s, const float* x,
                                 int64_t ldx, int x_div, const int32_t* expert, int P, float* y, int64_t ldy,
                                 cudaStream_t stream);

// Tokens per tile the kernels are compiled for (ascending), the rows each thread carries
// by default for that tile, and the launcher of a (scheme, tile, rows) kernel (null where
// that combination is not compiled: tile x rows <= 64, rows in {1, 2, 4}).
inline constexpr int kTokenTiles[] = {1, 2, 4, 8, 16, 32};
// (H100 measurements in docs/performance.md: 4-bit schemes gain most from sharing x
// across rows; bf16 and fp8 beyond one token from the higher occupancy of 2 rows.)
constexpr int rows_per_thread(SchemeKind s, int mt) {
  if (mt >= 32) return 2;
  if (s == SchemeKind::BF16) return mt == 1 ? 4 : 2;
  if (s == SchemeKind::FP8Block) return 2;
  return 4;
}
LaunchFn select_launcher(SchemeKind s, int mt, int rw);
IndexedLaunchFn select_indexed_launcher(SchemeKind s, int rw);  // null unless rw is 1, 2 or 4

// dst[m, c] = src[m, c] for c < k, 0 for k <= c < kp (m < M); rows ldx apart in src, kp in dst.
void launch_pad_rows(const float* src, int64_t ldx, int M, int64_t k, int64_t kp, float* dst, cudaStream_t stream);

}  // namespace kiln::ops::cuda::detail
