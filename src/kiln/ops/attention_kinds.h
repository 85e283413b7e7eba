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

}  // namespace kiln::ops
