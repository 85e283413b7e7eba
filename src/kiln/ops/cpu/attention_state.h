// One sequence's attention state of one layer on the CPU, laid out as model/
// decode_contract.h says: the sliding-window K=V ring and each compressor's ring of raw
// (kv, score) rows with its emitted entries. The ops of ops/cpu/attention.h read and
// write it; the GPU's per-slot form is ops/cuda/attention.h (WindowRing, CompressorRing).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kiln::ops::cpu {

// One compressor's running state (transformers' DeepseekV4HCACache / CSACache entries:
// buffer_kv/buffer_gate, overlap_kv/overlap_gate, compressed_kv, entry_count), arranged
// for rollback. Instead of copying the unfinished block's rows and the overlap rows
// aside, the raw rows of the last `cap` positions stay in a ring (slot = position % cap):
// the unfinished block is positions count*ratio .. length-1, the overlap ("Ca") rows are
// the first-half channels of the last finished block, positions (count-1)*ratio ..
// count*ratio-1. With cap from the decode contract both are held for every length down
// to high_water - kMaxRollback, so truncation only resets `length` and `count` and pops
// the entries emitted for removed positions.
struct CompressorState {
  int64_t ratio = 0, dim = 0, width = 0;  // width = (overlap ? 2 : 1) * dim
  bool overlap = false;
  int64_t cap = 0;
  // Raw rows [cap, width]: kv = x Wkv^T and score = x Wgate^T + ape[pos % ratio].
  std::vector<float> kv, score;
  int64_t length = 0;  // positions fed
  // Emitted entries [count, dim]: RMS-normed and rotated at position j * ratio.
  std::vector<float> entries;
  int64_t count = 0;

  CompressorState(int64_t r, int64_t d, bool ov, int64_t ring_cap);
  const float* entry(int64_t j) const { return entries.data() + j * dim; }
  float* kv_row(int64_t p) { return kv.data() + (p % cap) * width; }
  float* score_row(int64_t p) { return score.data() + (p % cap) * width; }
  const float* kv_row(int64_t p) const { return kv.data() + (p % cap) * width; }
  const float* score_row(int64_t p) const { return score.data() + (p % cap) * width; }
  void truncate(int64_t new_length);
};

// Per layer: the sliding-window K=V ring (slot = position % cap) and the compressors.
struct AttentionState {
  int64_t cap = 0, dim = 0, sliding_window = 0;
  std::vector<float> window;             // [cap, dim]
  std::optional<CompressorState> comp;   // CSA / HCA
  std::optional<CompressorState> icomp;  // CSA: the indexer's compressor
  void truncate(int64_t new_length) {
    if (comp) comp->truncate(new_length);
    if (icomp) icomp->truncate(new_length);
  }
};

// "" when a and b (states of `length` positions with high-water marks ha, hb) hold the
// same content bitwise, else the first difference: per layer the window rows a later step
// can still read, per compressor the fed length, entry count, every entry, the pending
// rows of the unfinished block, the overlap rows and every raw row both rings hold.
std::string attention_state_difference(const AttentionState& a, const AttentionState& b, int64_t length, int64_t ha,
                                       int64_t hb);

// One sequence's rows in a batched pass: rows [row0, row0 + T) at positions P0 .. P0+T-1,
// with that sequence's state of the layer being run.
struct SeqRows {
  AttentionState* st = nullptr;
  int64_t row0 = 0, T = 0, P0 = 0;
};

// The rows of one CPU pass over one layer (the CPU's counterpart of ops/cuda/step_rows.h):
// the sequences, and per row its position and sequence index. Rows of a sequence follow
// the previous sequence's.
struct StepRows {
  std::span<const SeqRows> seqs;
  std::span<const int64_t> pos;
  std::span<const int32_t> seq_of;
  int64_t R() const { return static_cast<int64_t>(pos.size()); }
  const SeqRows& seq(int64_t row) const { return seqs[static_cast<size_t>(seq_of[static_cast<size_t>(row)])]; }
};

}  // namespace kiln::ops::cpu
