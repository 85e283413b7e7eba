// DeepSeek-V4 attention state and kernels on the GPU (the CPU reference is
// ops/cpu/attention.h: compressor_feed / indexer_select / attention). All state is per
// KV slot in preallocated device buffers; nothing here allocates, synchronises or reads
// a count from the host, so every launcher can be captured in a CUDA graph. What a row
// may see is derived from its position alone (rows.pos), which also makes rollback free:
// a row re-fed at position p overwrites whatever a rolled-back row left there.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/attention_kinds.h"
#include "kiln/ops/cuda/rope.h"
#include "kiln/ops/cuda/step_rows.h"

namespace kiln::ops::cuda {

// One layer's sliding-window K=V rows: per slot a ring of `cap` rows of `dim` floats,
// row of position p at data + slot * slot_stride + (p % cap) * dim. cap >= window +
// (most rows of one slot in one step) + rollback, so no row a query of this step can see
// is overwritten by another row of the same step.
struct WindowRing {
  float* data = nullptr;
  int cap = 0;
  int dim = 0;
  int64_t slot_stride = 0;
};

// One compressor (attention's or the indexer's) per slot:
//  * raw rows, rings of `cap` rows of `width` floats: kv (x Wkv^T) and score
//    (x Wgate^T + ape[p % ratio]); row of position p at slot * ring_slot_stride +
//    (p % cap) * width. cap >= (overlap ? 2 : 1) * ratio + (most rows of one slot in one
//    step) + rollback.
//  * entries [max_entries, dim] per slot at entries + slot * entry_slot_stride: entry j
//    pools block [j*ratio, (j+1)*ratio) (and, with overlap, the first-half channels of
//    block j-1), RMS-normed with `norm`, rotated at position j * ratio.
// width = (overlap ? 2 : 1) * dim.
struct CompressorRing {
  float* kv = nullptr;
  float* score = nullptr;
  int cap = 0;
  int width = 0;
  int64_t ring_slot_stride = 0;
  float* entries = nullptr;
  int max_entries = 0;
  int64_t entry_slot_stride = 0;
  int dim = 0;
  int ratio = 0;
  bool overlap = false;
};

// ring[slot[r]][pos[r] % cap] = kv[r, 0:dim] for every row (kv rows ldkv floats apart).
void window_write(const StepRows& rows, const float* kv, int64_t ldkv, const WindowRing& ring, cudaStream_t stream);

// Feeds the compressor: for every row writes kv row a[r] and score row z[r] + ape[pos % ratio]
// (a, z: [R, width], rows ld floats apart; ape: [ratio, width]); then, for every row whose
// position completes a block ((pos + 1) % ratio == 0), emits entry j = (pos + 1) / ratio - 1
// exactly as ops/cpu/compressor.cpp: per channel ch < dim a softmax over the rows' scores (overlap:
// the previous block's channel ch, absent for j = 0, then this block's channel dim + ch;
// otherwise this block's channel ch), the kv values weighted by it, then RMS norm with
// `norm` (eps) and rotation at position j * ratio. Entries with j >= max_entries are not
// written (the caller bounds the context). num = Bf16 rounds the pooled vector, the norm's
// output and the rotated entry to bf16, as the CPU's does.
void compressor_feed(const StepRows& rows, const float* a, const float* z, int64_t ld, const float* ape,
                     const float* norm, float eps, RopeView rope, const CompressorRing& c, cudaStream_t stream,
                     ops::AttnNumerics num = ops::AttnNumerics::Fp32);

// Lightning indexer selection for every row: visible entries j < vis = min((pos + 1) /
// ratio, max_entries) of the indexer compressor `ic`;
//   score_j = sum_h (max(q_h . k_j, 0) * softmax_scale) * w_h     (h ascending)
// with q [R, heads * head_dim] (already rotated, rows ldq apart) and w [R, heads] (already
// multiplied by heads^-0.5, rows ldw apart). Keeps the min(topk, vis) highest scores,
// exact ties to the lowest j, and writes their indices in ascending order to
// sel[r * topk ..], their count to nsel[r]. scratch: at least R * ic.max_entries floats.
void indexer_select(const StepRows& rows, const float* q, int64_t ldq, const float* w, int64_t ldw, int heads,
                    int head_dim, float softmax_scale, const CompressorRing& ic, int topk, int32_t* sel, int32_t* nsel,
                    float* scratch, cudaStream_t stream);

using ops::AttnKeys;  // ops/attention_kinds.h
using ops::AttnNumerics;

// Attention of every row and head over one shared K=V head, with a per-head sink logit:
// keys = the window rows of positions max(0, p - window + 1) .. p (from `ring`, already
// holding this step's rows), then
//   WindowAndSelected (CSA): entries sel[r * topk + i] of `comp`, i < nsel[r];
//   WindowAndAll (HCA):      entries 0 .. min((p + 1) / comp.ratio, comp.max_entries) - 1;
// s_k = (q_h . key_k) * scale; m = max(sink_h, max_k s_k);
// o_h = sum_k exp(s_k - m) / (sum_k exp(s_k - m) + exp(sink_h - m)) * key_k.
// q, o: [R, heads * dim], rows ldq / ldo apart (dim = ring.dim = comp.dim).
// The keys are taken in chunks of a length fixed by the key capacity (window + topk or
// max_entries) and the chunks' softmax states merged in order, so a row's output is the
// same bits whatever other rows the step holds. workspace (optional,
// attention_workspace_floats(max rows, heads, dim) floats): when given and the rows' head
// groups do not fill the GPU (decode), each chunk runs in its own block and a second
// kernel merges them (flash-decoding), with the same bits as without it.
// num (ops/attention_kinds.h): Fp32 as above in fp32 CUDA-core arithmetic; Bf16 takes q and
// the keys as bf16 (they must hold bf16 values: the tensor-core kernel converts them, the
// CUDA-core fallback does not), multiplies them on tensor cores with fp32 accumulation
// where the head dim is a multiple of 64 up to 512 and the buffers are 16-byte aligned, and
// rounds the probabilities to bf16 in the value sum (the denominator sums them in fp32).
void attention(const StepRows& rows, const float* q, int64_t ldq, int heads, float scale, const float* sink,
               const WindowRing& ring, int window, AttnKeys keys, const CompressorRing* comp, const int32_t* sel,
               const int32_t* nsel, int topk, float* o, int64_t ldo, cudaStream_t stream, float* workspace = nullptr,
               AttnNumerics num = AttnNumerics::Fp32);

// Workspace floats attention() needs for any R <= max_rows (0: it never splits).
int64_t attention_workspace_floats(int max_rows, int heads, int dim);

}  // namespace kiln::ops::cuda
