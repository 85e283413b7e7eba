// The CPU backend of the engine (backend.h) over the reference forward: every slot holds
// a model::DecodeState; a pass groups its rows by slot and runs them as one batched step
// (each weight read once for all rows; every row bitwise equal to feeding its sequence
// alone). Rollback (a slot's first row before its fed length) truncates the state first.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "kiln/model/dspark.h"
#include "kiln/model/forward.h"
#include "kiln/runtime/backend.h"

namespace kiln::runtime {

struct CpuBackendOptions {
  int max_slots = 256;
  int max_rows = 1 << 16;
  int64_t max_context = 0;  // 0: the config's max_position_embeddings (unbounded when it has none)
};

class CpuBackend final : public Backend {
 public:
  // dspark: the checkpoint's DSpark drafter to run (model/dspark.h), or nullptr; it must
  // outlive the backend.
  CpuBackend(const model::Forward& forward, CpuBackendOptions options = {}, const model::DSparkWeights* dspark = nullptr);

  const ModelConfig& config() const override { return f_.weights().config; }
  std::string describe() const override;
  int mtp_blocks() const override { return static_cast<int>(f_.weights().mtp.size()); }
  int max_slots() const override { return opt_.max_slots; }
  int max_rows() const override { return opt_.max_rows; }
  int64_t max_context() const override { return opt_.max_context; }
  int64_t weight_bytes() const override;

  int acquire() override;
  void release(int slot) override;
  void copy_slot(int src, int dst) override;
  using Backend::main;
  using Backend::mtp;
  void main(const PassRows& rows, const Outputs& out) override;
  void mtp(int m, const PassRows& rows, MtpInput input, const Outputs& out) override;

  int dspark_block() const override { return drafter_ ? static_cast<int>(drafter_->block_size()) : 0; }
  void dspark_commit(const PassRows& rows) override;
  void dspark_draft(std::span<const DSparkRound> rounds, const DraftChoice& choose,
                    std::vector<std::vector<int32_t>>& drafts,
                    std::vector<std::vector<float>>* confidence = nullptr) override;

  // Tests: the state of a held slot (main model, MTP blocks; the DSpark drafter's).
  const model::DecodeState& state(int slot) const;
  const model::DSparkState& dspark_state(int slot) const;

 private:
  const model::Forward& f_;
  CpuBackendOptions opt_;
  SlotBook book_;
  std::vector<std::optional<model::DecodeState>> states_;
  std::unique_ptr<model::DSparkDrafter> drafter_;
  std::vector<model::DSparkState> dspark_states_;
  std::vector<float> features_;  // the last main pass's DSpark target features
  // The head runs on the rows whose logits or argmax are asked for; returns their logits
  // [rows, vocab] in that order (copied / argmaxed into out by deliver).
  std::vector<int64_t> head_rows(const Outputs& out, int R);
  void deliver(const Outputs& out, std::span<const int64_t> rows);

  std::vector<float> main_streams_, mtp_streams_, mtp_in_, logits_;
};

}  // namespace kiln::runtime
