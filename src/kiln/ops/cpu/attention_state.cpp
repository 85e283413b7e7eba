#include "kiln/ops/cpu/attention_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace kiln::ops::cpu {

CompressorState::CompressorState(int64_t r, int64_t d, bool ov, int64_t ring_cap)
    : ratio(r), dim(d), width(ov ? 2 * d : d), overlap(ov), cap(ring_cap) {
  kv.resize(static_cast<size_t>(cap * width));
  score.resize(static_cast<size_t>(cap * width));
}

void CompressorState::truncate(int64_t new_length) {
  length = new_length;
  count = new_length / ratio;
  entries.resize(static_cast<size_t>(count * dim));
}

namespace {

bool same_floats(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, static_cast<size_t>(n) * sizeof(float)) == 0;
}

// First position both rings of `cap` rows still hold, for states of high-water marks ha, hb.
int64_t held_from(int64_t cap, int64_t ha, int64_t hb) { return std::max<int64_t>({0, ha - cap, hb - cap}); }

std::string compressor_difference(const CompressorState& a, const CompressorState& b, int64_t ha, int64_t hb) {
  if (a.ratio != b.ratio || a.dim != b.dim || a.overlap != b.overlap || a.cap != b.cap) return "compressor shapes differ";
  if (a.length != b.length) return fmt::format("compressor length {} vs {}", a.length, b.length);
  if (a.count != b.count) return fmt::format("compressor entry count {} vs {}", a.count, b.count);
  if (a.entries.size() != b.entries.size()) return "compressor entry storage sizes differ";
  for (int64_t j = 0; j < a.count; ++j) {
    if (!same_floats(a.entry(j), b.entry(j), a.dim)) return fmt::format("compressed entry {} differs", j);
  }
  const int64_t m = a.ratio, lo = held_from(a.cap, ha, hb);
  // Pending rows of the unfinished block (every channel).
  for (int64_t p = a.count * m; p < a.length; ++p) {
    if (p < lo) return fmt::format("pending row of position {} is no longer held", p);
    if (!same_floats(a.kv_row(p), b.kv_row(p), a.width)) return fmt::format("pending kv row of position {} differs", p);
    if (!same_floats(a.score_row(p), b.score_row(p), a.width))
      return fmt::format("pending score row of position {} differs", p);
  }
  // Overlap rows: first-half channels of the last finished block.
  if (a.overlap && a.count > 0) {
    for (int64_t p = (a.count - 1) * m; p < a.count * m; ++p) {
      if (p < lo) return fmt::format("overlap row of position {} is no longer held", p);
      if (!same_floats(a.kv_row(p), b.kv_row(p), a.dim)) return fmt::format("overlap kv row of position {} differs", p);
      if (!same_floats(a.score_row(p), b.score_row(p), a.dim))
        return fmt::format("overlap score row of position {} differs", p);
    }
  }
  // Every raw row both rings hold.
  for (int64_t p = lo; p < a.length; ++p) {
    if (!same_floats(a.kv_row(p), b.kv_row(p), a.width) || !same_floats(a.score_row(p), b.score_row(p), a.width))
      return fmt::format("held raw row of position {} differs", p);
  }
  return {};
}

}  // namespace

std::string attention_state_difference(const AttentionState& a, const AttentionState& b, int64_t length, int64_t ha,
                                       int64_t hb) {
  if (a.cap != b.cap || a.dim != b.dim || a.sliding_window != b.sliding_window) return "window shapes differ";
  // The rows a later query reads (positions length - sliding_window ..) must be held.
  const int64_t lo = held_from(a.cap, ha, hb);
  if (lo > std::max<int64_t>(0, length - a.sliding_window))
    return fmt::format("window row of position {} is no longer held", lo - 1);
  for (int64_t p = lo; p < length; ++p) {
    if (!same_floats(a.window.data() + (p % a.cap) * a.dim, b.window.data() + (p % b.cap) * b.dim, a.dim))
      return fmt::format("window row of position {} differs", p);
  }
  if (a.comp.has_value() != b.comp.has_value() || a.icomp.has_value() != b.icomp.has_value())
    return "compressor presence differs";
  if (a.comp) {
    if (std::string d = compressor_difference(*a.comp, *b.comp, ha, hb); !d.empty()) return "attention " + d;
  }
  if (a.icomp) {
    if (std::string d = compressor_difference(*a.icomp, *b.icomp, ha, hb); !d.empty()) return "indexer " + d;
  }
  return {};
}

}  // namespace kiln::ops::cpu
