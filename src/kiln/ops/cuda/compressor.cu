// compressor_feed (attention.h): the GPU twin of compressor_feed in ops/cpu/compressor.cpp.
// Two kernels on one stream, so every raw row of the step is in the
// ring before any block of the step is pooled (a chunk may complete a block whose first
// rows come from the same step).
#include <cstdint>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/attention_detail.cuh"
#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/rope.cuh"

namespace kiln::ops::cuda {
namespace {

constexpr int kFeedThreads = 256;
constexpr int kEmitThreads = 256;
constexpr int kMaxDim = 512;     // entry channels one emit block holds in shared memory
constexpr int kMaxRatio = 128;   // block length; bounds the per-channel softmax loop

// One block per row: raw kv row and score row (+ ape of the position inside its block).
__global__ void feed_rows_kernel(StepRows rows, const float* __restrict__ a, const float* __restrict__ z, int64_t ld,
                                 const float* __restrict__ ape, CompressorRing c) {
  await_previous_grid();
  const int r = blockIdx.x;
  const int64_t slot = rows.slot[r];
  const int64_t pos = rows.pos[r];
  const int64_t base = slot * c.ring_slot_stride + (pos % c.cap) * c.width;
  const float* ar = a + r * ld;
  const float* zr = z + r * ld;
  const float* ap = ape + (pos % c.ratio) * c.width;
  for (int i = threadIdx.x; i < c.width; i += blockDim.x) {
    c.kv[base + i] = ar[i];
    c.score[base + i] = zr[i] + ap[i];  // one fp32 add, as the CPU's sc[i] = z + ape
  }
}

// One block per row; only rows that complete a block emit. Thread t pools channels
// t, t + blockDim, ... with the CPU's three sequential loops (max, exp-and-sum, weighted
// sum of kv * (e / sum)), so each channel's value follows the same association.
__global__ void emit_entries_kernel(StepRows rows, const float* __restrict__ norm, float eps, RopeView rope,
                                    CompressorRing c, bool bf16) {
  await_previous_grid();
  __shared__ float out[kMaxDim];
  __shared__ float red[kEmitThreads / 32];
  const int r = blockIdx.x;
  const int64_t pos = rows.pos[r];
  if ((pos + 1) % c.ratio != 0) return;
  const int64_t j = (pos + 1) / c.ratio - 1;
  if (j >= c.max_entries) return;
  const int64_t slot = rows.slot[r];
  const int m = c.ratio, d = c.dim;
  const float* kv = c.kv + slot * c.ring_slot_stride;
  const float* sc = c.score + slot * c.ring_slot_stride;
  const bool prev = c.overlap && j > 0;  // the previous block's first-half rows take part
  const int off = c.overlap ? d : 0;     // this block's channels: second half with overlap

  // Offsets of the pooled values of channel 0 in the order the CPU visits them: the
  // previous block's first-half channels (overlap, j > 0), then this block's channels.
  __shared__ int64_t roff[2 * kMaxRatio];
  const int nrows = prev ? 2 * m : m;
  for (int i = threadIdx.x; i < nrows; i += blockDim.x) {
    if (prev && i < m)
      roff[i] = (((j - 1) * m + i) % c.cap) * c.width;
    else
      roff[i] = ((j * m + (i - (prev ? m : 0))) % c.cap) * c.width + off;
  }
  __syncthreads();

  for (int ch = threadIdx.x; ch < d; ch += blockDim.x) {
    float mx = -INFINITY;
    for (int i = 0; i < nrows; ++i) mx = fmaxf(mx, sc[roff[i] + ch]);
    float sum = 0.0f;
    for (int i = 0; i < nrows; ++i) sum += expf(sc[roff[i] + ch] - mx);
    // exp is recomputed rather than stored: the same expression gives the same value.
    float acc = 0.0f;
    for (int i = 0; i < nrows; ++i) acc += kv[roff[i] + ch] * (expf(sc[roff[i] + ch] - mx) / sum);
    out[ch] = bf16_round_if(acc, bf16);
  }
  __syncthreads();

  // RMS norm over the d channels: y = w * (x * (1 / sqrt(mean(x^2) + eps))).
  float ss = 0.0f;
  for (int ch = threadIdx.x; ch < d; ch += blockDim.x) ss += out[ch] * out[ch];
  ss = attn_detail::warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += red[w];
  const float s = 1.0f / sqrtf(total / (float)d + eps);
  for (int ch = threadIdx.x; ch < d; ch += blockDim.x) out[ch] = bf16_round_if(norm[ch] * (out[ch] * s), bf16);
  __syncthreads();

  // Rotation at the block's first position j * ratio.
  for (int i = threadIdx.x; i < rope.dim / 2; i += blockDim.x) rope_pair(out, d, i, rope, j * m, false);
  __syncthreads();

  float* e = c.entries + slot * c.entry_slot_stride + j * d;
  for (int ch = threadIdx.x; ch < d; ch += blockDim.x) e[ch] = bf16_round_if(out[ch], bf16);
}

}  // namespace

void compressor_feed(const StepRows& rows, const float* a, const float* z, int64_t ld, const float* ape,
                     const float* norm, float eps, RopeView rope, const CompressorRing& c, cudaStream_t stream,
                     AttnNumerics num) {
  if (rows.R < 0) fail(ErrorKind::Usage, "compressor_feed: rows.R is {}, expected >= 0", rows.R);
  if (rows.R == 0) return;
  if (!rows.slot || !rows.pos) fail(ErrorKind::Usage, "compressor_feed: rows.slot / rows.pos must be device pointers, got null");
  if (!a || !z || !ape || !norm) fail(ErrorKind::Usage, "compressor_feed: a, z, ape and norm must be non-null");
  if (!c.kv || !c.score || !c.entries) fail(ErrorKind::Usage, "compressor_feed: ring kv/score/entries must be non-null");
  if (c.dim <= 0 || c.dim > kMaxDim) fail(ErrorKind::Usage, "compressor_feed: dim {} outside [1, {}]", c.dim, kMaxDim);
  if (c.ratio <= 0 || c.ratio > kMaxRatio) fail(ErrorKind::Usage, "compressor_feed: ratio {} outside [1, {}]", c.ratio, kMaxRatio);
  const int width = (c.overlap ? 2 : 1) * c.dim;
  if (c.width != width) fail(ErrorKind::Usage, "compressor_feed: width {} but (overlap ? 2 : 1) * dim = {}", c.width, width);
  if (ld < c.width) fail(ErrorKind::Usage, "compressor_feed: row stride ld {} < width {}", ld, c.width);
  if (c.cap < (c.overlap ? 2 : 1) * c.ratio)
    fail(ErrorKind::Usage, "compressor_feed: ring cap {} < {} rows of the pooled blocks", c.cap, (c.overlap ? 2 : 1) * c.ratio);
  if (c.max_entries < 0) fail(ErrorKind::Usage, "compressor_feed: max_entries {} < 0", c.max_entries);
  if (c.ring_slot_stride < int64_t{c.cap} * c.width)
    fail(ErrorKind::Usage, "compressor_feed: ring_slot_stride {} < cap * width = {}", c.ring_slot_stride, int64_t{c.cap} * c.width);
  if (c.entry_slot_stride < int64_t{c.max_entries} * c.dim)
    fail(ErrorKind::Usage, "compressor_feed: entry_slot_stride {} < max_entries * dim = {}", c.entry_slot_stride, int64_t{c.max_entries} * c.dim);
  if (rope.dim < 0 || rope.dim % 2 != 0 || rope.dim > c.dim)
    fail(ErrorKind::Usage, "compressor_feed: rope dim {} must be even and <= entry dim {}", rope.dim, c.dim);
  if (rope.dim > 0 && (!rope.cos || !rope.sin)) fail(ErrorKind::Usage, "compressor_feed: rope table is null");
  // Entry j < max_entries is rotated at position j * ratio: the table must reach the last.
  if (rope.dim > 0 && c.max_entries > 0 && int64_t{c.max_entries - 1} * c.ratio >= rope.max_pos)
    fail(ErrorKind::Usage, "compressor_feed: rope table has {} positions, entry {} needs position {}", rope.max_pos,
         c.max_entries - 1, int64_t{c.max_entries - 1} * c.ratio);

  launch_kernel(feed_rows_kernel, rows.R, kFeedThreads, 0, stream, rows, a, z, ld, ape, c);
  launch_kernel(emit_entries_kernel, rows.R, kEmitThreads, 0, stream,
                rows, norm, eps, rope, c, num == AttnNumerics::Bf16);
}

}  // namespace kiln::ops::cuda
