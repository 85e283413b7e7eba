// The storage scheme of a linear weight (artifact-formats.md §1): one enum for the whole
// engine. artifact/ detects it from the tensors on disk, quant/'s recipes choose it, ops/
// binds each module to the kernel of its scheme (CPU and CUDA), the CLI names it. Layers
// that need a finer or coarser notion derive it from this enum (the CPU decoder takes BF16
// and F16 weights apart by dtype and decodes MXFP4 and NVFP4 with one e2m1 decoder), they
// keep no parallel enum. Also compiled as C++17 by nvcc.
#pragma once

#include <cstdint>

namespace kiln {

enum class SchemeKind : uint8_t {
  BF16,       // unquantized [n, k]: BF16 (F16 or F32 on disk too; the dtype is recorded beside)
  FP8Block,   // e4m3 [n, k]; scale grid [ceil(n/block_n), ceil(k/block_k)] in F8_E8M0, U8 (as
              // E8M0), F32, BF16 or F16 (per-tensor and per-channel are the degenerate grids)
  Int4Group,  // compressed-tensors pack-quantized: I32 [n, ceil(k/8)], 8 values per word, LSB
              // first, stored q + 8; scale BF16/F16/F32 [n, groups]; optional zero point I32
              // [ceil(n/8), groups] packed along n (stored zp + 8); optional act-order g_idx
  MXFP4,      // e2m1 pairs I8/U8 [n, k/2] (low nibble first) + F8_E8M0/U8 scale per 32 inputs
  NVFP4,      // e2m1 pairs U8 [n, k/2] + F8_E4M3 scale per 16 inputs + one fp32 global multiplier
};

// "bf16", "fp8_block", "int4_group", "mxfp4", "nvfp4".
const char* scheme_kind_name(SchemeKind k);

}  // namespace kiln
