// Sizes of the CUDA backend's device allocations as pure functions (no CUDA needed): the
// kernels' workspaces, the rotary tables and the prepared layout of a linear weight. The
// CUDA code sizes its allocations with these, and the GPU memory planner
// (model/gpu_memory.h) adds the same numbers up before anything is allocated, so the two
// cannot drift apart. Compiled as C++17 by nvcc too.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kiln/ops/quant_linear.h"

namespace kiln::ops::device {

// ---- mHC pre (ops/cuda/hyper_connection.cu): the mix products of one row are split over
// hc_mix_splits(n * hidden) blocks whose partial sums land in a workspace.
inline constexpr int kHcMaxStreams = 4;                                // hc_mult of DeepSeek-V4
inline constexpr int kHcMaxMixes = (2 + kHcMaxStreams) * kHcMaxStreams;  // 24 fn rows
inline constexpr int kHcSplitCols = 512;  // columns of the flattened row per split block
inline constexpr int kHcMaxSplits = 64;
inline int hc_mix_splits(int width) { return std::clamp((width + kHcSplitCols - 1) / kHcSplitCols, 1, kHcMaxSplits); }
inline int64_t hc_pre_workspace_floats(int R, int n, int hidden) {
  return static_cast<int64_t>(R) * hc_mix_splits(n * hidden) * (kHcMaxMixes + 1);
}

// ---- attention (ops/cuda/attention.cu): heads per block, and the key chunks. A row's keys
// are cut into chunks of attention_chunk_keys(capacity) keys, a number fixed by the layer's
// key capacity (window + selected or all compressed entries), never by the step; each
// chunk's softmax partial is merged into the row's result in chunk order. A step whose
// rows and head groups do not fill the GPU (decode) runs each chunk in its own block and a
// second kernel merges them from a workspace; otherwise one block walks the chunks. Both
// do the same arithmetic, so a row's output never depends on the step it is in.
inline constexpr int kAttnHeadGroupWide = 8;
inline constexpr int kAttnHeadGroupNarrow = 2;
inline constexpr int kAttnNarrowBelowRows = 16;
inline constexpr int kAttnMaxChunks = 16;
// Keys staged per round of the kernel: as many as keep the block's shared memory under the
// 48 KB a launch gets without opting in (clamped to 8 .. 64).
inline constexpr int attention_key_tile(int dim) { return 6144 / dim > 64 ? 64 : (6144 / dim < 8 ? 8 : 6144 / dim); }
// The tensor-core kernel (ops/cuda/attention_mma.cu, AttnNumerics::Bf16, head dims that are
// multiples of 64 up to 512): 16 heads per block (one m16 tile), 16 keys per round.
inline constexpr int kAttnMmaHeads = 16;
inline constexpr int kAttnMmaKeyTile = 16;
inline constexpr int kAttnMmaMaxDim = 512;
inline constexpr bool attention_mma_fits(int dim) { return dim >= 64 && dim <= kAttnMmaMaxDim && dim % 64 == 0; }
// Whole key tiles per chunk, as few as keep a row of `capacity` keys within kAttnMaxChunks.
inline int attention_chunk_keys_of_tile(int64_t capacity, int64_t tile) {
  const int64_t tiles = std::max<int64_t>(1, (capacity + tile - 1) / tile);
  return static_cast<int>(tile * ((tiles + kAttnMaxChunks - 1) / kAttnMaxChunks));
}
inline int attention_chunk_keys(int64_t capacity, int dim) {
  return attention_chunk_keys_of_tile(capacity, attention_key_tile(dim));
}
// Heads per block of the kernel that runs R rows: the tensor-core kernel's, or the CUDA-core
// kernel's by the row count.
inline int attention_head_group(int R, bool mma) {
  return mma ? kAttnMmaHeads : R < kAttnNarrowBelowRows ? kAttnHeadGroupNarrow : kAttnHeadGroupWide;
}
// Chunks in their own blocks while the rows' head groups fill under two blocks per
// multiprocessor (the CUDA-core kernel) or under one (the tensor-core kernel: on an H100 its
// split took 24 blocks of V4's CSA from 120 to 55 us but 260 blocks from 136 to 259 us).
inline bool attention_splits_chunks(int R, int heads, int sms, bool mma = false) {
  const int hg = attention_head_group(R, mma);
  return static_cast<int64_t>(R) * ((heads + hg - 1) / hg) < (mma ? 1 : 2) * static_cast<int64_t>(sms);
}
// Workspace floats attention() needs for any R <= max_rows with either kernel (0: it never
// splits).
inline int64_t attention_workspace_floats(int max_rows, int heads, int dim, int sms) {
  int64_t most = 0;
  for (int R = 1; R <= max_rows; ++R)
    if (attention_splits_chunks(R, heads, sms, false) || attention_splits_chunks(R, heads, sms, true))
      most = std::max<int64_t>(most, static_cast<int64_t>(R) * heads * kAttnMaxChunks * (dim + 2));
  return most;
}

// ---- rotary tables (ops/cuda/rope.h RopeTable): cos then sin, dim / 2 of each per position.
inline int64_t rope_table_floats(int64_t dim, int64_t max_pos) { return 2 * max_pos * (dim / 2); }

// ---- linear layers (ops/cuda/quant_linear*.cpp). A prepared weight row is kc 16-byte
// chunks (k padded with zeros to whole chunks); scales as quant_linear_detail.h describes:
//   BF16 none; FP8Block f32 [ceil(n / block_n), ceil(k / block_k)]; Int4Group f32
//   [n, ceil(k / block_k)] + zero points u8 [n, groups] when stored; MXFP4 u8 [n, kc];
//   NVFP4 u8 [n, 2 kc].
// Every QuantLinear also holds an fp32 x staging buffer [max_m, kp]; a QuantLinearSet holds
// one [max_pairs, kp] for all its experts and a device table of their descriptors per
// scheme present. BF16 weights prepared for kLtMinRows rows or more also share the
// process-wide cuBLASLt workspace and split buffers (quant_linear_lt.cpp).
constexpr int linear_chunk_elems(SchemeKind s) {
  return s == SchemeKind::BF16 ? 8 : s == SchemeKind::FP8Block ? 16 : 32;
}
inline constexpr int64_t kLinearParamsBytes = 56;        // sizeof(detail::LinearParams), static_asserted there
inline constexpr int kLtMinRows = 16;                   // cuBLASLt from this many rows (BF16 only)
inline constexpr int64_t kLtWorkspaceBytes = int64_t{32} << 20;

struct LinearLayout {
  int64_t kc = 0;  // 16-byte chunks per weight row
  int64_t kp = 0;  // k padded to whole chunks: the x staging row width
  int64_t weight_bytes = 0, scale_bytes = 0, zero_point_bytes = 0;
  int64_t stored_bytes() const { return weight_bytes + scale_bytes + zero_point_bytes; }
  int64_t staging_bytes(int64_t rows) const { return rows * kp * 4; }
};

// The prepared layout of `w` (its scheme, n, k, block sizes and whether it has zero points;
// no byte is read). Shapes the prepare step would reject still get a layout.
LinearLayout linear_layout(const HostQuantLinear& w);

// Device bytes of QuantLinear::prepare(w, max_m): the prepared data and the x staging buffer.
int64_t linear_device_bytes(const HostQuantLinear& w, int max_m);
// Device bytes of QuantLinearSet::prepare(ws, count, max_pairs).
int64_t linear_set_device_bytes(const HostQuantLinear* ws, int count, int max_pairs);
// The elements of cuBLASLt's split buffer (bf16 hi and lo halves) a BF16 weight prepared for
// max_m rows needs (0: it does not use cuBLASLt).
int64_t lt_split_elems(const HostQuantLinear& w, int max_m);

}  // namespace kiln::ops::device
