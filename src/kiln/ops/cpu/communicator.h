// Collectives between the ranks of one process (tensor parallelism on the CPU backend):
// each rank runs its pass on its own thread and meets the others here. Every rank gets
// bitwise the same result (the sum runs over the ranks in rank order on every rank), so
// what the ranks hold replicated (the residual streams, the decode state) stays equal.
// A rank that fails calls abort(); the others, waiting or arriving later, throw instead of
// hanging. Collectives on the GPUs go through NCCL; this is their in-memory counterpart.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::ops::cpu {

class InProcessComm {
 public:
  explicit InProcessComm(int world);
  int world() const { return world_; }

  // x [n] on every rank becomes the sum over the ranks (rank 0 + rank 1 + ..., in order).
  void all_reduce_sum(int rank, float* x, int64_t n);
  // out [rows, world * cols] (row-major) gets every rank's local [rows, cols] side by side,
  // rank r's at columns [r * cols, (r + 1) * cols). out may be null on ranks that need no
  // copy; each rank must still call.
  void gather_columns(int rank, const float* local, int64_t rows, int64_t cols, float* out);

  // Wakes every rank waiting here; they and any later caller throw a kiln::Error naming
  // `why`. reset() makes the communicator usable again (call it with no rank running).
  void abort(const std::string& why);
  void reset();

 private:
  void barrier();  // all ranks arrive, or throw when aborted

  int world_;
  std::mutex m_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string why_;
  std::vector<const float*> src_;
};

}  // namespace kiln::ops::cpu
