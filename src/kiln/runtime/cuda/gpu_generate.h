// Greedy decoding of a batch of prompts on the GPU forward, plain or with exact MTP
// speculative decoding (the algorithm of runtime/speculative.h at temperature 0, for B
// sequences in lockstep: one batched draft pass per draft step, one batched verify pass
// of B * (K + 1) rows, one batched MTP catch-up pass per round). Sequence b lives in
// slot b of the GpuForward. Rollback needs no work on the GPU (gpu_forward.h): the next
// pass re-feeds the positions from the accepted length.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/runtime/speculative.h"

namespace kiln::runtime::cuda {

struct GpuGenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // per prompt: the generated tokens
  double prefill_s = 0.0, decode_s = 0.0;    // wall time (prefill includes the first token)
  int64_t decode_passes = 0;                 // main-model passes after the prefill
  DraftStats stats;                          // MTP only (summed over the batch)
  int64_t decoded_tokens() const {
    int64_t t = 0;
    for (const auto& v : tokens) t += v.empty() ? 0 : static_cast<int64_t>(v.size()) - 1;
    return t;
  }
  double decode_tokens_per_s() const { return decode_s > 0 ? static_cast<double>(decoded_tokens()) / decode_s : 0.0; }
};

// prompts.size() <= max_slots; every prompt non-empty and prompt + max_tokens + mtp_k
// within max_context. mtp_k = 0: plain greedy; 1..kMaxDrafts: MTP drafts per round
// (needs an MTP block; the tokens are those of plain greedy). Each sequence stops after
// max_tokens tokens (eos is not special: benchmarks and exactness tests want fixed
// lengths).
GpuGenerateResult gpu_generate_greedy(model::cuda::GpuForward& f, const std::vector<std::vector<int32_t>>& prompts,
                                      int max_tokens, int mtp_k);

}  // namespace kiln::runtime::cuda
