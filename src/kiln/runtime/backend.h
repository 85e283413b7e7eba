// The contract between the engine and a device: one pass takes rows from many sequences
// and returns the logits rows asked for. Sequences live in slots (acquired and released);
// a row is (token, slot, position). The engine builds every pass (prefill chunks, decode
// rows, MTP verify rows, the MTP block's draft and catch-up rows); the backend only runs
// it. The CPU backend (cpu_backend.h) and the CUDA backend (cuda/gpu_backend.h) implement
// it with the same results up to the device's arithmetic.
//
// Rows of one slot in a pass are consecutive, at consecutive ascending positions. A
// slot's first row is at its fed length (positions fed so far) or earlier: feeding again
// from an earlier position is the rollback of speculative decoding, allowed down to
// kMaxRollback positions behind the furthest position the slot reached. The MTP block
// keeps its own fed length per slot, with the same rule. copy_slot makes one slot's
// sequence a copy of another's (the choices of a request with n > 1 share one prefill).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kiln/io/config.h"

namespace kiln::runtime {

// The rows of one pass (parallel arrays).
struct PassRows {
  std::vector<int32_t> tok, slot, pos;
  std::vector<int32_t> src;  // MTP passes: the row of the previous pass whose streams this row takes
  int size() const { return static_cast<int>(tok.size()); }
  bool empty() const { return tok.empty(); }
  void clear() {
    tok.clear();
    slot.clear();
    pos.clear();
    src.clear();
  }
  void add(int32_t t, int32_t s, int64_t p) {
    tok.push_back(t);
    slot.push_back(s);
    pos.push_back(static_cast<int32_t>(p));
  }
};

// Where an MTP pass takes its input streams from.
enum class MtpInput : uint8_t {
  MainStreams,  // the last main pass's last-layer streams (row src[r])
  MtpStreams,   // the last MTP pass's output streams (row src[r]): multi-step drafting
};

// The slots of a backend and the rules above, kept once for every backend: which slots are
// held, and per slot the fed length and furthest position of the main model and of each
// MTP block.
class SlotBook {
 public:
  SlotBook(int slots, int mtp_blocks, int64_t max_context, int max_rows);
  int acquire();  // -1 when all are held
  void release(int slot);
  bool held(int slot) const;
  // dst takes src's lengths (kiln::Error unless both are held and differ).
  void copy(int src, int dst);
  int slots() const { return static_cast<int>(held_.size()); }

  // One slot's rows in a pass: rows [row0, row0 + n) at positions pos0 ...
  struct Group {
    int slot = 0;
    int row0 = 0, n = 0;
    int64_t pos0 = 0;
  };
  // Checks a pass of the main model (block -1) or MTP block `block` against the rules
  // (kiln::Error naming the row otherwise, with nothing changed), records the new lengths
  // and returns the rows grouped by slot.
  std::vector<Group> feed(const PassRows& rows, int block);
  int64_t length(int slot, int block) const;

 private:
  struct Lengths {
    int64_t length = 0, high = 0;
  };
  std::vector<bool> held_;
  std::vector<std::vector<Lengths>> len_;  // [slot][1 + blocks]
  int64_t max_context_;
  int max_rows_;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const ModelConfig& config() const = 0;
  // One line for the ready message: the device, and for a GPU its name and memory.
  virtual std::string describe() const = 0;
  virtual int mtp_blocks() const = 0;
  // Capacity: sequences held at once, rows one pass may take, positions per sequence.
  virtual int max_slots() const = 0;
  virtual int max_rows() const = 0;
  virtual int64_t max_context() const = 0;
  // Bytes of the weights as held on the device.
  virtual int64_t weight_bytes() const = 0;

  // A free slot (its sequence starts empty), or -1 when all are taken.
  virtual int acquire() = 0;
  virtual void release(int slot) = 0;
  // Makes held slot `dst` a copy of held slot `src`: the state of the main model and of
  // every MTP block, and their fed lengths and rollback bounds, as if dst had been fed
  // everything src was (src is unchanged). The next pass may feed dst exactly as it
  // could feed src, and gives the same rows. Ordered with the passes.
  virtual void copy_slot(int src, int dst) = 0;

  // What a pass returns: the logits of the rows in logits_rows (indices into the pass's
  // rows, any order) into logits [n, vocab], and the argmax (ties to the lowest id) of the
  // rows in argmax_rows into argmax [n]. A row may be in both or neither.
  struct Outputs {
    std::span<const int32_t> logits_rows;
    float* logits = nullptr;
    std::span<const int32_t> argmax_rows;
    int32_t* argmax = nullptr;
  };

  // Main model over `rows`. The last-layer streams of every row are kept for the next
  // MTP pass.
  virtual void main(const PassRows& rows, const Outputs& out) = 0;

  // MTP block m over `rows`: row r takes the streams of row rows.src[r] of the last main
  // or MTP pass (input) and the token rows.tok[r], at rows.slot[r], rows.pos[r]. Its
  // output streams are kept for the next MTP pass.
  virtual void mtp(int m, const PassRows& rows, MtpInput input, const Outputs& out) = 0;

  // DSpark drafter (model/dspark.h), when the backend runs one: its block size, else 0.
  virtual int dspark_block() const { return 0; }
  // Commits rows to the slots' drafter state: row r writes position rows.pos[r] of slot
  // rows.slot[r] from the target features of row rows.src[r] of the last main pass; a
  // slot's rows continue its committed length (only committed positions are ever written).
  virtual void dspark_commit(const PassRows& rows);
  // One draft round per sequence at its slot's committed length (model/dspark.h):
  // choose(i, k, adjusted) picks d_{k+1} of request i, or, for a round marked by_argmax,
  // the backend takes the argmax of the row itself (lowest id on ties; the GPU keeps the
  // loop on the device); drafts[i] receives its `drafts` tokens
  // and, when `confidence` is given and the checkpoint has a confidence head, (*confidence)[i]
  // each draft's confidence (its predicted survival given the drafts before it; else empty).
  struct DSparkRound {
    int slot = 0;
    int32_t anchor = 0;
    int drafts = 0;
    bool by_argmax = false;
  };
  using DraftChoice = std::function<int32_t(size_t seq, int k, std::span<const float> adjusted)>;
  virtual void dspark_draft(std::span<const DSparkRound> rounds, const DraftChoice& choose,
                            std::vector<std::vector<int32_t>>& drafts,
                            std::vector<std::vector<float>>* confidence = nullptr);

  // Logits only.
  void main(const PassRows& rows, std::span<const int32_t> logits_rows, float* logits) {
    main(rows, Outputs{logits_rows, logits, {}, nullptr});
  }
  void mtp(int m, const PassRows& rows, MtpInput input, std::span<const int32_t> logits_rows, float* logits) {
    mtp(m, rows, input, Outputs{logits_rows, logits, {}, nullptr});
  }

 protected:
  // Checks `out` against a pass of R rows (kiln::Error otherwise).
  static void check_outputs(const Outputs& out, int R);
  // The backends' DSpark argument checks (kiln::Error(Usage) naming the value): a commit's
  // rows have source rows, held slots and sources among the last main pass's `main_rows`
  // rows; a draft's rounds have held slots.
  static void check_dspark_commit(const PassRows& rows, const SlotBook& book, int64_t main_rows);
  static void check_dspark_rounds(std::span<const DSparkRound> rounds, const SlotBook& book);
  // A drafter's outputs (tokens, confidence) as dspark_draft returns them.
  template <typename Out>
  static void take_dspark_outs(std::vector<Out>& outs, std::vector<std::vector<int32_t>>& drafts,
                               std::vector<std::vector<float>>* confidence) {
    drafts.resize(outs.size());
    for (size_t i = 0; i < outs.size(); ++i) drafts[i] = std::move(outs[i].tokens);
    if (!confidence) return;
    confidence->resize(outs.size());
    for (size_t i = 0; i < outs.size(); ++i) (*confidence)[i] = std::move(outs[i].confidence);
  }
};

}  // namespace kiln::runtime
