// The in-process communicator of tensor-parallel ranks (ops/cpu/communicator.h): the sum
// over the ranks is the same bits on every rank, gathered columns land side by side, and a
// rank that fails stops the others instead of leaving them waiting.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cpu/communicator.h"

namespace kiln::ops::cpu {
namespace {

template <class F>
void on_ranks(int world, F&& f) {
  std::vector<std::thread> t;
  for (int r = 0; r < world; ++r) t.emplace_back(f, r);
  for (auto& x : t) x.join();
}

TEST(RankCommunicator, AllReduceIsTheRankOrderSumOnEveryRank) {
  const int world = 4;
  const int64_t n = 1000;
  InProcessComm comm(world);
  std::vector<std::vector<float>> x(world, std::vector<float>(n));
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < n; ++i) x[r][i] = static_cast<float>((i * 7919 + r * 104729) % 1009) * 1e-3f - 0.5f + 1e-7f * r;
  }
  std::vector<float> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = ((x[0][i] + x[1][i]) + x[2][i]) + x[3][i];
  for (int round = 0; round < 3; ++round) {  // the communicator is reusable
    auto y = x;
    on_ranks(world, [&](int r) { comm.all_reduce_sum(r, y[r].data(), n); });
    for (int r = 0; r < world; ++r) EXPECT_EQ(std::memcmp(y[r].data(), want.data(), n * sizeof(float)), 0) << r;
  }
}

TEST(RankCommunicator, GatherColumnsPutsEachRankSideBySide) {
  const int world = 3;
  const int64_t rows = 5, cols = 4;
  InProcessComm comm(world);
  std::vector<std::vector<float>> local(world, std::vector<float>(rows * cols)), out(world);
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < rows * cols; ++i) local[r][i] = static_cast<float>(r * 100 + i);
    out[r].assign(rows * cols * world, -1.0f);
  }
  on_ranks(world, [&](int r) { comm.gather_columns(r, local[r].data(), rows, cols, r == 1 ? nullptr : out[r].data()); });
  for (int r : {0, 2}) {
    for (int64_t t = 0; t < rows; ++t) {
      for (int s = 0; s < world; ++s) {
        for (int64_t j = 0; j < cols; ++j) EXPECT_EQ(out[r][(t * world + s) * cols + j], local[s][t * cols + j]);
      }
    }
  }
}

TEST(RankCommunicator, AFailedRankStopsTheOthers) {
  const int world = 4;
  InProcessComm comm(world);
  std::atomic<int> stopped{0};
  std::vector<std::string> messages(world);
  on_ranks(world, [&](int r) {
    std::vector<float> v(8, 1.0f);
    if (r == 2) {
      comm.abort("rank 2: out of memory");
      return;
    }
    try {
      comm.all_reduce_sum(r, v.data(), 8);
    } catch (const Error& e) {
      messages[r] = e.what();
      ++stopped;
    }
  });
  EXPECT_EQ(stopped.load(), 3);
  EXPECT_EQ(messages[0], "tensor parallel: stopped because another rank failed: rank 2: out of memory");
  comm.reset();
  std::vector<std::vector<float>> y(world, std::vector<float>(2, 1.0f));
  on_ranks(world, [&](int r) { comm.all_reduce_sum(r, y[r].data(), 2); });
  EXPECT_EQ(y[3][1], 4.0f);
}

}  // namespace
}  // namespace kiln::ops::cpu
