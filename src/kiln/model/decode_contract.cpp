#include "kiln/model/decode_contract.h"

#include "kiln/core/error.h"

namespace kiln::model {

namespace {

CompressorLayout compressor_layout(int64_t ratio, int64_t dim, bool overlap, int64_t step_rows) {
  CompressorLayout l;
  l.ratio = ratio;
  l.dim = dim;
  l.overlap = overlap;
  l.width = (overlap ? 2 : 1) * dim;
  l.cap = (overlap ? 2 : 1) * ratio + step_rows + kMaxRollback;
  return l;
}

}  // namespace

LayerStateLayout layer_state_layout(const ModelConfig& c, AttnKind kind, int64_t ratio, int64_t step_rows) {
  LayerStateLayout l;
  l.window_cap = c.sliding_window + step_rows + kMaxRollback;
  l.dim = c.head_dim;
  if (kind != AttnKind::SWA) l.comp = compressor_layout(ratio, c.head_dim, kind == AttnKind::CSA, step_rows);
  if (kind == AttnKind::CSA) l.icomp = compressor_layout(ratio, c.index_head_dim, true, step_rows);
  return l;
}

void check_rollback(const char* what, int64_t new_length, int64_t length, int64_t high_water) {
  if (new_length < 0 || new_length > length) {
    fail(ErrorKind::Usage, "{}: new length {} is outside [0, {}] (the current length)", what, new_length, length);
  }
  if (new_length < high_water - kMaxRollback) {
    fail(ErrorKind::Usage,
         "{}: cannot roll back to length {}: the state has reached length {} and keeps only the rows of the last {} "
         "positions behind that for rollback (kMaxRollback, model/decode_contract.h)",
         what, new_length, high_water, kMaxRollback);
  }
}

}  // namespace kiln::model
