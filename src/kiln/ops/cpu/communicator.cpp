#include "kiln/ops/cpu/communicator.h"

#include <cstring>

#include "kiln/core/error.h"

namespace kiln::ops::cpu {

InProcessComm::InProcessComm(int world) : world_(world), src_(static_cast<size_t>(world > 0 ? world : 1), nullptr) {
  if (world < 1) fail(ErrorKind::Usage, "communicator: world size {} is not positive", world);
}

void InProcessComm::barrier() {
  std::unique_lock lock(m_);
  if (aborted_) fail(ErrorKind::Usage, "tensor parallel: stopped because another rank failed: {}", why_);
  const uint64_t gen = generation_;
  if (++arrived_ == world_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
  if (generation_ == gen) fail(ErrorKind::Usage, "tensor parallel: stopped because another rank failed: {}", why_);
}

void InProcessComm::all_reduce_sum(int rank, float* x, int64_t n) {
  if (world_ == 1) return;
  src_[static_cast<size_t>(rank)] = x;
  barrier();
  std::vector<float> sum(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float acc = src_[0][i];
    for (int r = 1; r < world_; ++r) acc += src_[static_cast<size_t>(r)][i];
    sum[static_cast<size_t>(i)] = acc;
  }
  barrier();  // every rank has read every input before any is overwritten
  std::memcpy(x, sum.data(), sum.size() * sizeof(float));
}

void InProcessComm::gather_columns(int rank, const float* local, int64_t rows, int64_t cols, float* out) {
  src_[static_cast<size_t>(rank)] = local;
  barrier();
  if (out) {
    for (int64_t t = 0; t < rows; ++t) {
      for (int r = 0; r < world_; ++r) {
        std::memcpy(out + (t * world_ + r) * cols, src_[static_cast<size_t>(r)] + t * cols,
                    static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
  barrier();
}

void InProcessComm::abort(const std::string& why) {
  std::lock_guard lock(m_);
  if (!aborted_) why_ = why;
  aborted_ = true;
  cv_.notify_all();
}

void InProcessComm::reset() {
  std::lock_guard lock(m_);
  aborted_ = false;
  why_.clear();
  arrived_ = 0;
}

}  // namespace kiln::ops::cpu
