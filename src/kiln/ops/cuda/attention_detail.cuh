// Small device helpers shared by the attention-state kernels (attention.cu, attention_mma.cu,
// compressor.cu, indexer.cu). Kept out of attention.h so the host-only header stays
// C++17/C++20 clean.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/attention.h"

namespace kiln::ops::cuda::attn_detail {

// Butterfly sum over a full warp: every lane ends with the same total (so any lane may
// use it without a broadcast). The association differs from the CPU's vec.h dot, which
// is why the tests compare with a relative tolerance rather than bit for bit.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Row of position p in a ring of `cap` rows: positions are never negative here.
__device__ __forceinline__ int64_t ring_row(int64_t p, int cap) { return p % cap; }

// The keys of one attention row, in order: the window rows of positions first_pos ..
// first_pos + nwin - 1, then ncomp compressed entries (the selected ones, or 0 ..).
struct KeySource {
  const float* ring;   // this slot's window ring
  int cap;
  int64_t first_pos;   // first window position
  int nwin;            // window keys
  const float* entries;  // this slot's compressed entries (null: none)
  const int32_t* sel;    // CSA: selected entry indices of this row (null: entries 0..)
  int ncomp;
  int dim;
  __device__ const float* key(int i) const {
    if (i < nwin) return ring + ((first_pos + i) % cap) * dim;
    const int e = i - nwin;
    const int64_t j = sel ? sel[e] : e;
    return entries + j * dim;
  }
  __device__ int count() const { return nwin + ncomp; }
};

// Row r's keys (attention() in attention.h says which).
__device__ __forceinline__ KeySource key_source(const StepRows& rows, int r, const WindowRing& ring, int window,
                                                AttnKeys keys, const CompressorRing& comp, const int32_t* sel,
                                                const int32_t* nsel, int topk) {
  const int64_t slot = rows.slot[r];
  const int64_t pos = rows.pos[r];
  KeySource src;
  src.ring = ring.data + slot * ring.slot_stride;
  src.cap = ring.cap;
  src.first_pos = pos - window + 1 > 0 ? pos - window + 1 : 0;
  src.nwin = static_cast<int>(pos - src.first_pos + 1);
  src.entries = nullptr;
  src.sel = nullptr;
  src.ncomp = 0;
  src.dim = ring.dim;
  if (keys == AttnKeys::WindowAndSelected) {
    src.entries = comp.entries + slot * comp.entry_slot_stride;
    src.sel = sel + static_cast<int64_t>(r) * topk;
    src.ncomp = nsel[r];
  } else if (keys == AttnKeys::WindowAndAll) {
    src.entries = comp.entries + slot * comp.entry_slot_stride;
    const int64_t vis = (pos + 1) / comp.ratio;
    src.ncomp = static_cast<int>(vis < comp.max_entries ? vis : comp.max_entries);
  }
  return src;
}

// The online softmax's arithmetic in a numerics (ops/attention_kinds.h AttnNumerics). A
// state is (m, l, o): reference m, denominator l, numerator o, all relative to m.
//   kPow2 = false (Fp32): logit(s) = s, reference = the largest logit, weight exp(x - m),
//     rescale factor exp(m_old - m_new);
//   kPow2 = true (Bf16): logit(s) = s * log2(e), reference = its ceiling (an integer),
//     weight exp2(x - m), rescale factor 2^(m_old - m_new) exactly (ldexpf), so that
//     rescaling never moves a weight's bf16 rounding.
// factor(): 1 while the new reference is still -inf (no key yet), 0 from an empty state.
template <bool kPow2>
struct Softmax {
  __device__ static float logit(float s) { return kPow2 ? __fmul_rn(s, kAttnLog2e) : s; }
  __device__ static float reference(float x) { return kPow2 ? ceilf(x) : x; }
  __device__ static float weight(float x, float m) { return kPow2 ? exp2f(x - m) : expf(x - m); }
  __device__ static float factor(float m_old, float m_new) {
    if (m_new == -INFINITY) return 1.0f;
    if (m_old == -INFINITY) return 0.0f;
    return kPow2 ? ldexpf(1.0f, static_cast<int>(m_old - m_new)) : expf(m_old - m_new);
  }
  // The state a row starts from: the sink alone.
  __device__ static void sink_state(float sink, float& m, float& l) {
    const float t = logit(sink);
    m = reference(t);
    l = weight(t, m);  // Fp32: exp(0) = 1
  }
};

// One merge step of two softmax states, x * a + y * b with both products rounded and no
// fused multiply-add, so that the attention kernels and attention_combine round alike.
__device__ __forceinline__ float merge_terms(float x, float a, float y, float b) {
  return __fadd_rn(__fmul_rn(x, a), __fmul_rn(y, b));
}

}  // namespace kiln::ops::cuda::attn_detail
