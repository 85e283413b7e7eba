// What one sequence's decode state holds and how far it can be rolled back: the contract
// the CPU DecodeState (model/forward.h) and the GPU's per-slot state (model/cuda/
// gpu_forward.h, sized by model/gpu_memory.h) both implement, defined once.
//
// Per layer (backbone layers, then each MTP block), one sequence holds:
//  * the sliding-window K=V ring: the rows of the last window_cap positions, the row of
//    position p at slot p % window_cap;
//  * per compressor (CSA/HCA: the attention's; CSA: also the indexer's), a ring of the raw
//    (kv = x Wkv^T, score = x Wgate^T + ape[p % ratio]) rows of the last `cap` positions,
//    the row of position p at p % cap, and the compressed entries emitted so far: entry j
//    pools positions [j*ratio, (j+1)*ratio) (with overlap, also the first-half channels of
//    block j-1), RMS-normed and rotated at position j*ratio. Entry j depends only on
//    positions < (j+1)*ratio, so entries are append-only;
//  * the count of positions fed (per MTP block its own) and the furthest count reached,
//    the high-water mark.
// A query at position p sees the window rows of positions max(0, p-W+1)..p and the
// entries j < (p+1) div ratio (CSA: those the indexer picks among them).
//
// Rollback: a sequence can be fed again from any length in [high_water - kMaxRollback,
// length]; the rows and entries of the kept positions are those feeding only them would
// have left. The rings are sized so this holds without recompute: besides the window (or
// the (overlap ? 2 : 1) * ratio rows an unfinished block and its overlap need) they keep
// kMaxRollback rows, plus the rows one step of one sequence writes before it reads them
// (`step_rows`: 0 on the CPU, which attends from the step's own rows and feeds the
// compressors a row at a time; max_rows on the GPU, which stores every row of the step
// first).
#pragma once

#include <cstdint>
#include <optional>

#include "kiln/io/config.h"

namespace kiln::model {

// How far behind the furthest position it reached a sequence can be rolled back (fed
// again from an earlier position). Speculative decoding rolls back at most its draft
// count, so drafts per round stay below this.
inline constexpr int kMaxRollback = 8;

// One compressor's ring: `cap` rows of `width` = (overlap ? 2 : 1) * dim floats, for kv and
// for score; entries of `dim` floats.
struct CompressorLayout {
  int64_t ratio = 0, dim = 0, width = 0, cap = 0;
  bool overlap = false;
};

// One layer's state of one sequence (the numbers of rows; storage is the backend's).
struct LayerStateLayout {
  int64_t window_cap = 0, dim = 0;                // K=V ring rows of head_dim floats
  std::optional<CompressorLayout> comp, icomp;  // attention's (CSA, HCA), indexer's (CSA)
};

// The layout of a layer of attention kind `kind` with compression ratio `ratio` (ignored
// for SWA), for a backend that writes up to `step_rows` rows of a sequence before reading.
LayerStateLayout layer_state_layout(const ModelConfig& c, AttnKind kind, int64_t ratio, int64_t step_rows);

// The earliest length a state that reached `high_water` can be rolled back to.
inline int64_t earliest_rollback(int64_t high_water) {
  return high_water - kMaxRollback > 0 ? high_water - kMaxRollback : 0;
}

// Throws kiln::Error (Usage) naming `what` unless earliest_rollback(high_water) <=
// new_length <= length.
void check_rollback(const char* what, int64_t new_length, int64_t length, int64_t high_water);

}  // namespace kiln::model
