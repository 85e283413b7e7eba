// window_write and attention (ops/cuda/attention.h): the shape checks. The results are
// compared with ops/cpu's attention (the sink softmax over window rows and selected / all
// compressed entries, over per-slot cpu::AttentionState) by the op harness
// (tests/ops_harness/ops_attention.cpp, op `attention`: every key kind, mixed and decode
// steps, ring wrap-around, odd and V4 shapes, with and without the split-keys workspace).
// Here: the shape checks, and that a row's output is the same bits in any step (alone, in
// a few rows split over blocks, in many rows walked by one block), in both numerics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <numeric>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/attention.h"
#include "attention_test_util.h"

namespace kiln::ops::cuda {
namespace {

TEST(CudaAttention, RejectsBadShapes) {
  float f = 0.0f;
  int32_t i = 0;
  StepRows rows{&i, &i, &i, 1};
  WindowRing ring{&f, 16, 64, 16 * 64};
  EXPECT_THROW(attention(rows, &f, 64, 1, 1.0f, &f, ring, 17, AttnKeys::Window, nullptr, nullptr, nullptr, 1, &f, 64, nullptr),
               Error);  // window > cap
  EXPECT_THROW(attention(rows, &f, 64, 1, 1.0f, &f, ring, 8, AttnKeys::WindowAndAll, nullptr, nullptr, nullptr, 1, &f, 64, nullptr),
               Error);  // no compressor
  WindowRing wide{&f, 16, 1024, 16 * 1024};
  EXPECT_THROW(attention(rows, &f, 1024, 1, 1.0f, &f, wide, 8, AttnKeys::Window, nullptr, nullptr, nullptr, 1, &f, 1024, nullptr),
               Error);  // dim > 512
  EXPECT_THROW(window_write(rows, &f, 32, ring, nullptr), Error);  // ldkv < dim
}

// Rows of 3 slots at positions before, across and far past the window, every key kind.
// The step's output is computed without the workspace (one block walks a row's chunks);
// each row alone and the rows 4 at a time with it (chunks in their own blocks when the
// blocks do not fill the GPU) must give the same bits.
// In AttnNumerics::Bf16 q and the keys hold bf16 values (as the forward gives them).
void expect_rows_invariant(int heads, int dim, int window, int cap, int topk, int max_entries,
                           AttnNumerics num = AttnNumerics::Fp32) {
  using namespace attn_test;
  std::mt19937 g(1234u + static_cast<unsigned>(dim));
  constexpr int kSlots = 3;
  const int64_t ring_stride = int64_t{cap} * dim, entry_stride = int64_t{max_entries} * dim;
  auto values = [&](std::vector<float> v) { return attn_inputs(std::move(v), num); };
  DevBuf<float> ring(values(random_floats(g, static_cast<size_t>(kSlots * ring_stride), -1.0f, 1.0f)));
  DevBuf<float> entries(values(random_floats(g, static_cast<size_t>(kSlots * entry_stride), -1.0f, 1.0f)));
  DevBuf<float> sink(random_floats(g, static_cast<size_t>(heads), -1.0f, 1.0f));
  const int ratio = 4;
  Step st;
  for (const int64_t p : std::initializer_list<int64_t>{0, 5, int64_t{window} - 1, int64_t{window} + 3, 3 * int64_t{cap} + 7, int64_t{max_entries} * ratio - 1})
    for (int s = 0; s < kSlots; ++s) st.add(s, p + s);
  const int R = st.R();
  const int64_t ld = int64_t{heads} * dim;
  DevBuf<float> q(values(random_floats(g, static_cast<size_t>(R * ld), -0.5f, 0.5f)));
  // Selected entries: distinct visible indices per row, ascending.
  std::vector<int32_t> sel(static_cast<size_t>(R * topk), 0), nsel(static_cast<size_t>(R), 0);
  for (int r = 0; r < R; ++r) {
    const int vis = static_cast<int>(std::min<int64_t>((st.pos[static_cast<size_t>(r)] + 1) / ratio, max_entries));
    std::vector<int32_t> all(static_cast<size_t>(vis));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), g);
    const int n = std::min(vis, topk);
    std::sort(all.begin(), all.begin() + n);
    std::copy_n(all.begin(), n, sel.begin() + static_cast<ptrdiff_t>(r) * topk);
    nsel[static_cast<size_t>(r)] = n;
  }
  DevBuf<int32_t> dsel(sel), dnsel(nsel);
  CompressorRing comp;
  comp.entries = entries.get();
  comp.max_entries = max_entries;
  comp.entry_slot_stride = entry_stride;
  comp.dim = dim;
  comp.ratio = ratio;
  const WindowRing wr{ring.get(), cap, dim, ring_stride};
  DevBuf<float> work(static_cast<size_t>(std::max<int64_t>(1, attention_workspace_floats(R, heads, dim))));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (const AttnKeys keys : {AttnKeys::Window, AttnKeys::WindowAndSelected, AttnKeys::WindowAndAll}) {
    // Rows [r0, r0 + n) of the step, through the workspace or not.
    auto run = [&](int r0, int n, float* w) {
      Step part;
      for (int r = r0; r < r0 + n; ++r) part.add(st.slot[static_cast<size_t>(r)], st.pos[static_cast<size_t>(r)]);
      DevStep ds(part);
      DevBuf<float> o(static_cast<size_t>(n * ld));
      attention(ds.rows, q.get() + r0 * ld, ld, heads, scale, sink.get(), wr, window, keys, &comp,
                dsel.get() + static_cast<ptrdiff_t>(r0) * topk, dnsel.get() + r0, topk, o.get(), ld, nullptr, w, num);
      return o.download();
    };
    const std::vector<float> whole = run(0, R, nullptr);
    for (int r0 = 0; r0 < R; r0 += 4) {
      const int n = std::min(4, R - r0);
      for (const bool alone : {true, false}) {
        for (int r = r0; r < (alone ? r0 + n : r0 + 1); ++r) {
          const std::vector<float> got = alone ? run(r, 1, work.get()) : run(r0, n, work.get());
          const size_t rows = alone ? 1 : static_cast<size_t>(n);
          const size_t off = static_cast<size_t>(alone ? r : r0) * static_cast<size_t>(ld);
          EXPECT_EQ(std::memcmp(got.data(), whole.data() + off, rows * static_cast<size_t>(ld) * sizeof(float)), 0)
              << "keys " << static_cast<int>(keys) << (alone ? " row " : " rows from ") << (alone ? r : r0)
              << " differ from the whole step's";
        }
      }
    }
  }
}

TEST(CudaAttention, RowIsTheSameBitsInAnyStep) {
  expect_rows_invariant(64, 512, 128, 160, 512, 256);  // V4-Flash: 12-key tiles, 48-key chunks
  expect_rows_invariant(8, 64, 64, 80, 40, 200);       // 64-key tiles, chunk = one tile
}

// DeepSeek's numerics: the tensor-core kernel (head dims that are multiples of 64) and the
// CUDA-core kernel with bf16 probabilities (other dims).
TEST(CudaAttention, RowIsTheSameBitsInAnyStepInBf16) {
  expect_rows_invariant(64, 512, 128, 160, 512, 256, AttnNumerics::Bf16);  // 16-key rounds, 48-key chunks
  expect_rows_invariant(8, 64, 64, 80, 40, 200, AttnNumerics::Bf16);       // 16-key chunks, padded heads
  expect_rows_invariant(20, 128, 32, 48, 600, 400, AttnNumerics::Bf16);    // a partial second head group
  expect_rows_invariant(4, 32, 16, 24, 8, 40, AttnNumerics::Bf16);         // the CUDA-core kernel
}

}  // namespace
}  // namespace kiln::ops::cuda
