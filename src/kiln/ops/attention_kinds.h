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
// Fp32: every value fp32 (what the forward runs in both precisions for now:
//   ops::attn_numerics in ops/linear_numerics.h).
// Bf16: DeepSeek's, meant for `deepseek`: its KV cache is bf16, so each compressed entry is
//   rounded to bf16 where DeepSeek's Compressor holds it in bf16 (the pooled vector, the RMS
//   norm's output, the rotated vector); its sparse_attn rounds the probabilities to bf16 for
//   the value sum while the denominator sums them in fp32. q and the window K=V rows are
//   taken as bf16 (the deepseek forward has rounded them: ops::Store::Act), which lets the
//   GPU multiply them on bf16 tensor cores with fp32 accumulation.
enum class AttnNumerics : uint8_t { Fp32, Bf16 };

}  // namespace kiln::ops
