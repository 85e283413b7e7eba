// Arithmetic per token of the model, from its config: the FLOPs (2 per multiply-add) of
// every linear a token goes through (dense projections, compressors, indexer, mHC mixes,
// the router, the shared expert and its num_experts_per_tok routed experts, the head) and
// of attention (scores and weighted values over the keys a query sees: its window,
// compressed entries, and the lightning indexer's scoring). Used to put prefill tok/s next
// to the tensor cores' FP8 throughput (kiln bench --prefill).
#pragma once

#include <cstdint>

#include "kiln/io/config.h"

namespace kiln::model {

struct TokenFlops {
  double linear = 0;     // per token, whatever its position
  double attention = 0;  // per token, averaged over the positions of the prompt
  double total() const { return linear + attention; }
};

// A prompt of `tokens` tokens at positions 0 .. tokens-1 of one sequence (backbone only:
// no MTP block or drafter).
TokenFlops prefill_flops_per_token(const ModelConfig& c, int64_t tokens);

}  // namespace kiln::model
