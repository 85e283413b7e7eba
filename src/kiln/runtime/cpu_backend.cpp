#include "kiln/runtime/cpu_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/runtime/sampler.h"

namespace kiln::runtime {

namespace {

int64_t default_context(const model::Forward& f, int64_t asked) {
  if (asked > 0) return asked;
  const int64_t m = f.weights().config.max_position_embeddings;
  return m > 0 ? m : int64_t{1} << 40;
}

}  // namespace

CpuBackend::CpuBackend(const model::Forward& forward, CpuBackendOptions options, const model::DSparkWeights* dspark)
    : f_(forward),
      opt_{options.max_slots, options.max_rows, default_context(forward, options.max_context)},
      book_(std::max(options.max_slots, 1), static_cast<int>(forward.weights().mtp.size()), opt_.max_context,
            std::max(options.max_rows, 1)) {
  if (opt_.max_slots < 1 || opt_.max_rows < 1) {
    fail(ErrorKind::Usage, "cpu backend: max_slots {} / max_rows {} (expected >= 1)", opt_.max_slots, opt_.max_rows);
  }
  states_.resize(static_cast<size_t>(opt_.max_slots));
  if (dspark) {
    drafter_ = std::make_unique<model::DSparkDrafter>(forward, *dspark);
    dspark_states_.resize(static_cast<size_t>(opt_.max_slots));
  }
}

std::string CpuBackend::describe() const {
  return fmt::format("cpu ({} hardware threads), {} precision", std::thread::hardware_concurrency(),
                     ops::precision_name(f_.weights().precision));
}

int64_t CpuBackend::weight_bytes() const {
  const auto& w = f_.weights();
  return static_cast<int64_t>(model::linear_weight_bytes(w) + w.embed.data.size() * sizeof(float));
}

int CpuBackend::acquire() {
  const int s = book_.acquire();
  if (s >= 0) states_[static_cast<size_t>(s)].emplace(f_.new_state());
  if (s >= 0 && drafter_) dspark_states_[static_cast<size_t>(s)] = drafter_->new_state();
  return s;
}

void CpuBackend::release(int slot) {
  book_.release(slot);
  states_[static_cast<size_t>(slot)].reset();
}

void CpuBackend::copy_slot(int src, int dst) {
  book_.copy(src, dst);
  states_[static_cast<size_t>(dst)].emplace(*states_[static_cast<size_t>(src)]);  // deep copy
  if (drafter_) dspark_states_[static_cast<size_t>(dst)] = dspark_states_[static_cast<size_t>(src)];
}

const model::DSparkState& CpuBackend::dspark_state(int slot) const {
  if (!book_.held(slot) || !drafter_) fail(ErrorKind::Usage, "cpu backend: slot {} has no DSpark state", slot);
  return dspark_states_[static_cast<size_t>(slot)];
}

void CpuBackend::dspark_commit(const PassRows& rows) {
  if (!drafter_) Backend::dspark_commit(rows);
  const int64_t F = drafter_->feature_width(), have = static_cast<int64_t>(features_.size()) / F;
  check_dspark_commit(rows, book_, have);
  std::vector<model::DSparkDrafter::CommitSeq> seqs;
  std::vector<std::vector<float>> feats;
  for (int r = 0; r < rows.size();) {
    const int slot = rows.slot[static_cast<size_t>(r)];
    model::DSparkState& st = dspark_states_[static_cast<size_t>(slot)];
    std::vector<float> f;
    for (; r < rows.size() && rows.slot[static_cast<size_t>(r)] == slot; ++r) {
      const int64_t pos = rows.pos[static_cast<size_t>(r)], src = rows.src[static_cast<size_t>(r)];
      if (pos != st.length() + static_cast<int64_t>(f.size()) / F) {
        fail(ErrorKind::Usage, "cpu backend: DSpark commit of position {} to slot {}, which has {} committed", pos, slot,
             st.length());
      }
      f.insert(f.end(), features_.begin() + src * F, features_.begin() + (src + 1) * F);
    }
    feats.push_back(std::move(f));
    seqs.push_back({&st, {}});
  }
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i].features = feats[i];
  drafter_->commit(seqs);
}

void CpuBackend::dspark_draft(std::span<const DSparkRound> rounds, const DraftChoice& choose,
                              std::vector<std::vector<int32_t>>& drafts, std::vector<std::vector<float>>* confidence) {
  if (!drafter_) Backend::dspark_draft(rounds, choose, drafts, confidence);
  check_dspark_rounds(rounds, book_);
  std::vector<model::DSparkDrafter::DraftSeq> seqs;
  for (const DSparkRound& r : rounds) seqs.push_back({&dspark_states_[static_cast<size_t>(r.slot)], r.anchor, r.drafts});
  // A by_argmax round takes the adjusted row's argmax here, as the GPU does on the device.
  auto outs = drafter_->draft(seqs, [&](size_t i, int k, std::span<const float> row) {
    return rounds[i].by_argmax ? argmax(row) : choose(i, k, row);
  });
  take_dspark_outs(outs, drafts, confidence);
}

const model::DecodeState& CpuBackend::state(int slot) const {
  if (!book_.held(slot)) fail(ErrorKind::Usage, "cpu backend: slot {} is not held", slot);
  return *states_[static_cast<size_t>(slot)];
}

std::vector<int64_t> CpuBackend::head_rows(const Outputs& out, int R) {
  check_outputs(out, R);
  std::vector<int64_t> rows(out.logits_rows.begin(), out.logits_rows.end());
  for (int32_t r : out.argmax_rows) {
    if (std::find(rows.begin(), rows.end(), r) == rows.end()) rows.push_back(r);
  }
  logits_.resize(rows.size() * static_cast<size_t>(config().vocab_size));
  return rows;
}

void CpuBackend::deliver(const Outputs& out, std::span<const int64_t> rows) {
  const size_t V = static_cast<size_t>(config().vocab_size);
  auto at = [&](int32_t r) {
    const size_t i = static_cast<size_t>(std::find(rows.begin(), rows.end(), r) - rows.begin());
    return std::span<const float>(logits_).subspan(i * V, V);
  };
  for (size_t i = 0; i < out.logits_rows.size(); ++i) std::ranges::copy(at(out.logits_rows[i]), out.logits + i * V);
  for (size_t i = 0; i < out.argmax_rows.size(); ++i) out.argmax[i] = argmax(at(out.argmax_rows[i]));
}

void CpuBackend::main(const PassRows& rows, const Outputs& out) {
  const auto lrows = head_rows(out, rows.size());
  if (rows.empty()) return;
  const auto groups = book_.feed(rows, -1);
  std::vector<model::Forward::StepSeq> seqs;
  for (const SlotBook::Group& g : groups) {
    model::DecodeState& st = *states_[static_cast<size_t>(g.slot)];
    if (g.pos0 < st.length()) f_.truncate(st, g.pos0);
    seqs.push_back({&st, std::span(rows.tok).subspan(static_cast<size_t>(g.row0), static_cast<size_t>(g.n))});
  }
  const auto& c = config();
  main_streams_.resize(static_cast<size_t>(rows.size() * c.hc_mult * c.hidden_size));
  if (drafter_) features_.resize(static_cast<size_t>(rows.size() * drafter_->feature_width()));
  f_.step(seqs, lrows, lrows.empty() ? nullptr : logits_.data(), main_streams_.data(),
          drafter_ ? features_.data() : nullptr);
  deliver(out, lrows);
}

void CpuBackend::mtp(int m, const PassRows& rows, MtpInput input, const Outputs& out) {
  const auto lrows = head_rows(out, rows.size());
  if (rows.empty()) return;
  if (m < 0 || m >= mtp_blocks()) fail(ErrorKind::Usage, "cpu backend: MTP block {} of {}", m, mtp_blocks());
  const auto& c = config();
  const int64_t S = c.hc_mult * c.hidden_size;
  const std::vector<float>& from = input == MtpInput::MainStreams ? main_streams_ : mtp_streams_;
  const int64_t have = static_cast<int64_t>(from.size()) / S;
  if (static_cast<int>(rows.src.size()) != rows.size()) {
    fail(ErrorKind::Usage, "cpu backend: MTP pass of {} rows with {} source rows", rows.size(), rows.src.size());
  }
  for (int r = 0; r < rows.size(); ++r) {
    const int32_t src = rows.src[static_cast<size_t>(r)];
    if (src < 0 || src >= have) fail(ErrorKind::Usage, "cpu backend: MTP row {} takes streams row {} of {}", r, src, have);
  }
  const auto groups = book_.feed(rows, m);
  mtp_in_.resize(static_cast<size_t>(rows.size() * S));
  for (int r = 0; r < rows.size(); ++r) {
    std::copy_n(from.data() + rows.src[static_cast<size_t>(r)] * S, S, mtp_in_.data() + r * S);
  }
  std::vector<model::Forward::MtpSeq> seqs;
  for (const SlotBook::Group& g : groups) {
    model::DecodeState& st = *states_[static_cast<size_t>(g.slot)];
    if (g.pos0 < st.mtp_length(m)) f_.truncate_mtp(st, m, g.pos0);
    seqs.push_back({&st, std::span<const float>(mtp_in_).subspan(static_cast<size_t>(g.row0 * S), static_cast<size_t>(g.n * S)),
                    std::span(rows.tok).subspan(static_cast<size_t>(g.row0), static_cast<size_t>(g.n))});
  }
  std::vector<float> streams(static_cast<size_t>(rows.size() * S));
  f_.mtp_step(m, seqs, lrows, lrows.empty() ? nullptr : logits_.data(), streams.data());
  mtp_streams_.swap(streams);
  deliver(out, lrows);
}

}  // namespace kiln::runtime
