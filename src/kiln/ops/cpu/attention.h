// DeepSeek-V4's attention ops on the CPU, over the rows of several sequences at once
// (StepRows), each with its own state of the layer (ops/cpu/attention_state.h). The CUDA
// ops of the same roles are in ops/cuda/attention.h; these are their reference.
// Everything is fp32 with fixed-association reductions (vec.h), and each row reads only
// its own inputs and its sequence's state, so a row's results do not depend on how many
// rows share the pass or how its sequence's tokens were fed.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kiln/ops/attention_kinds.h"
#include "kiln/ops/cpu/attention_state.h"
#include "kiln/ops/cpu/rope.h"

namespace kiln::ops::cpu {

class ThreadPool;

using ops::AttnKeys;
using ops::AttnNumerics;
using ops::CompressorRole;  // AttentionState::comp / icomp

// Feeds each sequence's compressor (`role` picks it) its rows: a = x Wkv^T and z = x Wgate^T
// ([R, width], contiguous) of positions P0.. (transformers' DeepseekV4{HCA,CSA}Compressor
// / indexer compressor with its cache). Each row is stored in the ring with score z +
// ape[p % ratio] (ape [ratio, width]); each time a block of `ratio` positions completes,
// entry j is emitted: per channel ch < dim a softmax over the scores of the block's rows
// (with overlap: first the previous block's channel ch, absent before the first entry,
// then this block's channel dim + ch), the kv values weighted by it, then RMS norm with
// `norm` (eps) and rotation by `rope` at position j * ratio. AttnNumerics::Bf16 rounds the
// pooled vector, the norm's output and the rotated entry to bf16 (ops/attention_kinds.h).
void compressor_feed(const StepRows& rows, CompressorRole role, const float* a, const float* z, const float* ape,
                     const float* norm, float eps, const Rope& rope, AttnNumerics num = AttnNumerics::Fp32);

// Per row, the compressed entries it attends to, ascending.
using Selection = std::vector<std::vector<int64_t>>;

// Lightning indexer (CSA): for row t at position p, over the visible entries j < vis =
// min((p + 1) div ratio, count) of its sequence's indexer compressor,
//   score_j = sum_h (max(q_h . k_j, 0) * softmax_scale) * w_h     (h ascending)
// with q [R, heads * head_dim] (already rotated) and w [R, heads] (already multiplied by
// heads^-0.5); keeps the min(topk, vis) highest, exact ties to the lowest j.
void indexer_select(const StepRows& rows, const float* q, const float* w, int64_t heads, int64_t head_dim,
                    float softmax_scale, int64_t topk, Selection& sel, ThreadPool* pool);

// Attention of every row and head over one shared K=V head with a per-head sink logit
// (eager_attention_forward: softmax over [scores, sink] after subtracting the max of both,
// sink column dropped). Keys of row t at position p: the window positions max(0, p-W+1)
// .. p (window = sliding_window; this step's rows from kv [R, dim], earlier ones from the
// sequence's ring), then by `keys` the selected (sel) or all visible compressed entries.
// o [R, heads * dim]. Afterwards each sequence's window ring holds its step's kv rows.
// `num` as attend_head's.
void attention(const StepRows& rows, const float* q, const float* kv, int64_t heads, int64_t dim, float scale,
               const float* sink, int64_t window, AttnKeys keys, const Selection& sel, float* o, ThreadPool* pool,
               AttnNumerics num = AttnNumerics::Fp32);

// One head of one query over its keys (K = V rows of `dim` floats), with a sink logit:
// s_k = (q . key_k) * scale, m = max(sink, max_k s_k); o += exp(s_k - m) / (sum_k
// exp(s_k - m) + exp(sink - m)) * key_k, k in order. o must start at zero; scratch is
// resized to the key count. AttnNumerics::Bf16 (DeepSeek's sparse_attn): the same softmax
// in base 2, t_k = s_k * log2(e), c = ceil(max(t_sink, max_k t_k)), p_k = exp2(t_k - c),
// each p_k rounded to bf16 in the numerator only (ops/attention_kinds.h says why). The core
// of attention() above, for other attention layouts (the DSpark drafter's block attention).
void attend_head(const float* q, std::span<const float* const> keys, float sink, float scale, int64_t dim,
                 std::vector<float>& scratch, float* o, AttnNumerics num = AttnNumerics::Fp32);

}  // namespace kiln::ops::cpu
