// Bounds of a sequence's decode state shared by every backend (the CPU DecodeState and
// the GPU's per-slot state), defined once.
#pragma once

namespace kiln::model {

// How far behind the furthest position it reached a sequence can be rolled back (fed
// again from an earlier position). Speculative decoding rolls back at most its draft
// count, so drafts per round stay below this.
inline constexpr int kMaxRollback = 8;

}  // namespace kiln::model
