#include "kiln/runtime/backend.h"

#include <algorithm>
#include <tuple>

#include "kiln/core/error.h"
#include "kiln/model/decode_contract.h"

namespace kiln::runtime {

SlotBook::SlotBook(int slots, int mtp_blocks, int64_t max_context, int max_rows)
    : held_(static_cast<size_t>(slots), false),
      len_(static_cast<size_t>(slots), std::vector<Lengths>(static_cast<size_t>(1 + mtp_blocks))),
      max_context_(max_context),
      max_rows_(max_rows) {}

int SlotBook::acquire() {
  for (size_t i = 0; i < held_.size(); ++i) {
    if (!held_[i]) {
      held_[i] = true;
      std::fill(len_[i].begin(), len_[i].end(), Lengths{});
      return static_cast<int>(i);
    }
  }
  return -1;
}

bool SlotBook::held(int slot) const { return slot >= 0 && slot < slots() && held_[static_cast<size_t>(slot)]; }

void SlotBook::release(int slot) {
  if (!held(slot)) fail(ErrorKind::Usage, "backend: release of slot {}, which is not held", slot);
  held_[static_cast<size_t>(slot)] = false;
}

void SlotBook::copy(int src, int dst) {
  if (!held(src) || !held(dst) || src == dst) {
    fail(ErrorKind::Usage, "backend: copy of slot {} into slot {} (both must be held and differ)", src, dst);
  }
  len_[static_cast<size_t>(dst)] = len_[static_cast<size_t>(src)];
}

int64_t SlotBook::length(int slot, int block) const {
  if (!held(slot)) fail(ErrorKind::Usage, "backend: slot {} is not held", slot);
  return len_[static_cast<size_t>(slot)].at(static_cast<size_t>(block + 1)).length;
}

std::vector<SlotBook::Group> SlotBook::feed(const PassRows& rows, int block) {
  const int R = rows.size();
  const char* what = block < 0 ? "" : "MTP ";
  if (static_cast<int>(rows.slot.size()) != R || static_cast<int>(rows.pos.size()) != R) {
    fail(ErrorKind::Usage, "backend: {} tokens, {} slots and {} positions in one pass", R, rows.slot.size(), rows.pos.size());
  }
  if (R > max_rows_) fail(ErrorKind::Usage, "backend: {} rows in one pass (at most {})", R, max_rows_);
  if (block + 1 >= static_cast<int>(len_.empty() ? 1 : len_[0].size()) || block < -1) {
    fail(ErrorKind::Usage, "backend: MTP block {} of {}", block, len_.empty() ? 0 : len_[0].size() - 1);
  }
  std::vector<Group> groups;
  for (int r = 0; r < R; ++r) {
    const int s = rows.slot[static_cast<size_t>(r)];
    const int64_t p = rows.pos[static_cast<size_t>(r)];
    if (!groups.empty() && groups.back().slot == s) {
      Group& g = groups.back();
      if (p != g.pos0 + g.n) {
        fail(ErrorKind::Usage, "backend: {}row {} of slot {} is at position {}; expected {} (consecutive)", what, r, s, p,
             g.pos0 + g.n);
      }
      ++g.n;
      continue;
    }
    if (!held(s)) fail(ErrorKind::Usage, "backend: {}row {} names slot {}, which is not held", what, r, s);
    for (const Group& g : groups) {
      if (g.slot == s) fail(ErrorKind::Usage, "backend: the {}rows of slot {} are not consecutive in the pass", what, s);
    }
    const Lengths& l = len_[static_cast<size_t>(s)][static_cast<size_t>(block + 1)];
    const int64_t earliest = model::earliest_rollback(l.high);
    if (p > l.length || p < earliest) {
      fail(ErrorKind::Usage, "backend: {}row {} of slot {} is at position {}; the slot has {} positions fed and can go "
           "back to {} at the earliest", what, r, s, p, l.length, earliest);
    }
    groups.push_back({s, r, 1, p});
  }
  for (const Group& g : groups) {
    if (g.pos0 + g.n > max_context_) {
      fail(ErrorKind::Usage, "backend: slot {} would reach position {}, beyond the context of {} positions", g.slot,
           g.pos0 + g.n - 1, max_context_);
    }
  }
  for (const Group& g : groups) {
    Lengths& l = len_[static_cast<size_t>(g.slot)][static_cast<size_t>(block + 1)];
    l.length = g.pos0 + g.n;
    l.high = std::max(l.high, l.length);
  }
  return groups;
}

void Backend::check_outputs(const Outputs& out, int R) {
  for (const auto& [rows, buffer, what] : {std::tuple{out.logits_rows, static_cast<const void*>(out.logits), "logits"},
                                           std::tuple{out.argmax_rows, static_cast<const void*>(out.argmax), "argmax"}}) {
    if (!rows.empty() && !buffer) fail(ErrorKind::Usage, "backend: {} of {} rows asked for without a buffer", what, rows.size());
    for (int32_t r : rows) {
      if (r < 0 || r >= R) fail(ErrorKind::Usage, "backend: {} of row {} of a {}-row pass", what, r, R);
    }
  }
}

void Backend::check_dspark_commit(const PassRows& rows, const SlotBook& book, int64_t main_rows) {
  if (static_cast<int>(rows.src.size()) != rows.size()) fail(ErrorKind::Usage, "backend: DSpark commit without source rows");
  for (int r = 0; r < rows.size(); ++r) {
    const int slot = rows.slot[static_cast<size_t>(r)], src = rows.src[static_cast<size_t>(r)];
    if (!book.held(slot)) fail(ErrorKind::Usage, "backend: DSpark commit to slot {}, not held", slot);
    if (src < 0 || src >= main_rows) fail(ErrorKind::Usage, "backend: DSpark commit from main row {} of {}", src, main_rows);
  }
}

void Backend::check_dspark_rounds(std::span<const DSparkRound> rounds, const SlotBook& book) {
  for (const DSparkRound& r : rounds) {
    if (!book.held(r.slot)) fail(ErrorKind::Usage, "backend: DSpark draft for slot {}, not held", r.slot);
  }
}

void Backend::dspark_commit(const PassRows&) {
  fail(ErrorKind::Usage, "backend {}: no DSpark drafter loaded (the checkpoint has none, or it was loaded without "
                         "--spec dspark)", describe());
}

void Backend::dspark_draft(std::span<const DSparkRound>, const DraftChoice&, std::vector<std::vector<int32_t>>&,
                           std::vector<std::vector<float>>*) {
  fail(ErrorKind::Usage, "backend {}: no DSpark drafter loaded (the checkpoint has none, or it was loaded without "
                         "--spec dspark)", describe());
}

}  // namespace kiln::runtime
