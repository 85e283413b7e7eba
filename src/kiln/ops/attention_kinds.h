// Small enums of DeepSeek-V4's attention ops shared by the CPU (ops/cpu/attention.h) and
// CUDA (ops/cuda/attention.h) implementations and by the model definition over them.
#pragma once

#include <cstdint>

namespace kiln::ops {

// Which keys an attention row reads, by the layer's attention kind.
// Window: the sliding-window K=V rows of positions max(0, p - window + 1) .. p (SWA);
// WindowAndSelected (CSA): then the compressed entries the indexer picked;
// WindowAndAll (HCA): then every visible compressed entry j < (p + 1) div ratio.
enum class AttnKeys : uint8_t { Window, WindowAndSelected, WindowAndAll };

// Which of a layer's compressors an op feeds: the attention's (CSA, HCA) or the lightning
// indexer's (CSA).
enum class CompressorRole : uint8_t { Attention, Indexer };

// The arithmetic of the attention state and core (ops/cpu/attention.h, ops/cuda/attention.h).
// Fp32: every value fp32, the `exact` precision (ops::attn_numerics, ops/linear_numerics.h).
// Bf16: DeepSeek's, for `deepseek`: its KV cache is bf16, so each compressed entry is
//   rounded to bf16 where DeepSeek's Compressor holds it in bf16 (the pooled vector, the RMS
//   norm's output, the rotated vector); its sparse_attn rounds the probabilities to bf16 for
//   the value sum while the denominator sums them in fp32. q and the window K=V rows are
//   taken as bf16 (the deepseek forward has rounded them: ops::Store::Act), which lets the
//   GPU multiply them on bf16 tensor cores with fp32 accumulation.
//   The probability of a key is computed in base 2 against a power of two (kAttnLog2e
//   below): with t = s * log2(e) and c the ceiling of the largest t seen so far
//   (sink included), p = exp2(t - c), rounded to bf16. A kernel that walks the keys in
//   rounds and chunks with running maxima rescales by 2^(c_old - c_new), which is exact, so
//   each p is the value it would have against the row's final c (up to the rounding of
//   t - c): where the bf16 rounding falls does not depend on how the keys are cut, and the
//   CPU reference (one pass over a row) and the GPU's online softmax round alike. DeepSeek's
//   own kernel is an online softmax too and rounds against its running maxima; the
//   rounding's size is the same (2^-9 relative), only where it falls differs.
enum class AttnNumerics : uint8_t { Fp32, Bf16 };

// AttnNumerics::Bf16's softmax in base 2: the logit of a score s (scaled q . k, or the
// sink) is s * kAttnLog2e rounded to fp32, its reference the ceiling of the largest logit,
// and the probability exp2(logit - reference). The CPU and CUDA code use this one constant.
inline constexpr float kAttnLog2e = 1.44269504088896340736f;

}  // namespace kiln::ops
