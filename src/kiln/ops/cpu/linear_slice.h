// A block of a prepared linear weight (rows [r0, r1) of its outputs, columns [c0, c1) of its
// inputs) in the same stored form, for tensor parallelism: a column-parallel layer keeps a
// range of rows, a row-parallel one a range of columns. Every value of the block decodes to
// the same float as in the whole weight, so a rank's products equal the matching part of
// the whole product. Where a slice starts inside a scale block (a tiny model, or a split
// finer than the block), the slice's blocks shrink to gcd(block, start) and the scales are
// repeated; an int4 slice inside a group keeps every group's scale and maps its columns
// through g_idx.
#pragma once

#include <cstdint>
#include <string_view>

#include "kiln/ops/cpu/quant_linear.h"

namespace kiln::ops::cpu {

// `what` names the weight in errors (a range outside [out, in] is a kiln::Error).
PreparedLinear slice_linear(const PreparedLinear& l, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                            std::string_view what);

}  // namespace kiln::ops::cpu
