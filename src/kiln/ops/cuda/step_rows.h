// The rows of one GPU forward step. Row r is token tok[r] of the sequence held in KV
// slot slot[r], at position pos[r]; the three arrays live in device memory (R int32
// each) so a captured CUDA graph reads the current step's values on every replay. Rows
// of one slot in one step are consecutive positions in ascending order (a prefill chunk
// or an MTP verify window); a step may mix slots (a decode batch).
#pragma once

#include <cstdint>

namespace kiln::ops::cuda {

struct StepRows {
  const int32_t* tok = nullptr;
  const int32_t* slot = nullptr;
  const int32_t* pos = nullptr;
  int R = 0;
};

}  // namespace kiln::ops::cuda
