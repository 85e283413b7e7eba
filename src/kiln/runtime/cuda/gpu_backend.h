// The CUDA backend of the engine (backend.h) over the GPU forward (model/cuda/gpu_forward.h):
// a pass uploads its rows, replays the captured graph for its row count, and copies the
// logits rows asked for to the host. The MTP input streams stay on the device. With a
// DSpark drafter, the main passes record its features and dspark_commit / dspark_draft
// run it (model/cuda/gpu_dspark.h).
#pragma once

#include <memory>
#include <optional>

#include "kiln/model/cuda/gpu_dspark.h"
#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/runtime/backend.h"

namespace kiln::runtime::cuda {

class GpuBackend final : public Backend {
 public:
  // dspark: the checkpoint's DSpark drafter's weights (model/cuda/gpu_dspark.h), run over
  // this forward; without it the backend has no drafter (dspark_* refuse, as Backend's).
  explicit GpuBackend(std::unique_ptr<model::cuda::GpuForward> forward,
                      std::optional<model::cuda::GpuDSparkWeights> dspark = std::nullopt);

  const ModelConfig& config() const override { return f_->config(); }
  std::string describe() const override;
  int mtp_blocks() const override { return f_->mtp_blocks(); }
  int max_slots() const override { return f_->options().max_slots; }
  int max_rows() const override { return f_->options().max_rows; }
  int64_t max_context() const override { return f_->options().max_context; }
  int64_t weight_bytes() const override;

  int acquire() override;
  void release(int slot) override { book_.release(slot); }
  void copy_slot(int src, int dst) override;
  using Backend::main;
  using Backend::mtp;
  void main(const PassRows& rows, const Outputs& out) override;
  void mtp(int m, const PassRows& rows, MtpInput input, const Outputs& out) override;

  int dspark_block() const override { return drafter_ ? drafter_->block_size() : 0; }
  void dspark_commit(const PassRows& rows) override;
  void dspark_draft(std::span<const DSparkRound> rounds, const DraftChoice& choose,
                    std::vector<std::vector<int32_t>>& drafts,
                    std::vector<std::vector<float>>* confidence = nullptr) override;

  model::cuda::GpuForward& forward() { return *f_; }
  model::cuda::GpuDSpark* dspark() { return drafter_.get(); }  // tests

 private:
  std::unique_ptr<model::cuda::GpuForward> f_;
  SlotBook book_;
  std::unique_ptr<model::cuda::GpuDSpark> drafter_;
  void deliver(bool mtp, const Outputs& out);
  int last_main_rows_ = 0, last_mtp_rows_ = 0;  // rows of the last pass of each kind (MTP sources)
};

}  // namespace kiln::runtime::cuda
