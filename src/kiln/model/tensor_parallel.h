// Tensor parallelism: how a model is split over N ranks, as DeepSeek's inference code
// splits it (inference/model.py: ParallelEmbedding, ColumnParallelLinear,
// RowParallelLinear, ParallelHead), and each rank's shard of the weights.
//
// Per rank r of N:
//  * embedding and head: vocabulary rows [r V/N, (r+1) V/N); the embedding's rows are
//    summed over the ranks (a token's row comes from the rank holding it), the head's
//    logits gathered;
//  * attention: heads [r nh/N, (r+1) nh/N) of wq_b and the sinks; wo_a's groups of those
//    heads (o_groups divisible by N: G/N whole groups; N divisible by o_groups: the rank's
//    heads' columns of its one group), wo_b's matching input columns, its output summed
//    over the ranks. wq_a, wkv, the norms, compressors and the indexer are replicated
//    (DeepSeek's code splits the indexer's heads and sums their scores; kiln keeps it
//    whole so the top-k picks are those of one rank);
//  * MoE: the gate replicated; the shared expert split along its intermediate dimension;
//    the routed experts either split the same way, or with expert parallelism held whole,
//    experts [r E/N, (r+1) E/N) per rank as DeepSeek's MoE holds them; the combined output
//    summed over the ranks;
//  * MTP blocks: e_proj, h_proj and the norms replicated, the block split as above.
// The residual streams and the decode state are replicated: every rank holds the same.
#pragma once

#include <string>

#include "kiln/model/weights.h"

namespace kiln::model {

struct ParallelLayout {
  int world = 1;
  bool expert_parallel = false;  // routed experts whole, sharded by id (else split like the shared expert)
};

// Throws kiln::Error (Invalid, exit 2) naming the numbers when `c` cannot be split as `p`:
// heads, vocabulary, expert counts or intermediate sizes not divisible by the world size,
// o_groups neither a multiple nor a divisor of it.
void check_parallel_layout(const ModelConfig& c, const ParallelLayout& p);

// Rank `rank`'s shard of `w` (every linear in its stored form, sliced by
// ops/cpu/linear_slice.h; wo_b's output marked to be summed and the head's gathered).
Weights shard_weights(const Weights& w, int rank, const ParallelLayout& p);

}  // namespace kiln::model
