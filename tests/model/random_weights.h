// Random DeepSeek-V4 weights for the forward's self-consistency tests: every parameter
// drawn at random (norm weights around 1, sinks, ape, gate bias, mHC base/scale, tid2eid
// included), so no code path is hidden behind a zero or a one.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/io/config.h"
#include "kiln/model/weights.h"

namespace kiln::test {

// A small config: layer kinds given as compress ratios (0 = SWA, 4 = CSA, other = HCA),
// plus `mtp_layers` sliding-window MTP blocks. Window 8, hc_mult 4, yarn on the
// compressed layers, index_topk 3.
ModelConfig tiny_forward_config(const std::vector<int64_t>& ratios, int64_t num_hash_layers = 1,
                                int64_t mtp_layers = 1);

model::Weights random_weights(const ModelConfig& c, uint64_t seed);

// T token ids drawn uniformly from [0, vocab).
std::vector<int32_t> random_tokens(int64_t T, int64_t vocab, uint64_t seed);

// The forward tests' shared model, built once: SWA, CSA (indexer top-k smaller than the
// visible entries), HCA at two rates, a hash layer and one MTP block.
const model::Weights& every_kind_weights();

}  // namespace kiln::test
