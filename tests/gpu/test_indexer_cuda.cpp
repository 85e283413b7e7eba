// indexer_select (ops/cuda/attention.h) against a plain CPU re-statement of
// Impl::index_select (model/forward.cpp): scores sum_h (max(q_h . k_j, 0) * scale) * w_h
// with heads ascending, top-k by partial_sort with exact ties to the lowest index, then
// sorted ascending. Entries are built so the ranking is far from any rounding near-tie
// (k_j = c_j * v with well-separated c_j) except where ties are exact on purpose:
// negative c_j give score exactly 0 for every head, and duplicated entries give
// bitwise-equal scores.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "attention_test_util.h"

namespace kiln::ops::cuda::attn_test {
namespace {

struct IdxCase {
  int heads, head_dim, ratio, max_entries, topk;
  int zero_every;  // entries with j % zero_every == 1 score exactly 0 (0: none)
  int keep_every;  // if > 0, only entries with j % keep_every == 0 score above 0
  int dup_every;   // every dup_every-th entry copies its predecessor (0: none)
};

std::vector<int64_t> cpu_select(const std::vector<float>& score, int64_t k) {
  const int64_t vis = static_cast<int64_t>(score.size());
  std::vector<int64_t> idx(static_cast<size_t>(vis));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  auto better = [&](int64_t i, int64_t j) {
    const float a = score[static_cast<size_t>(i)], b = score[static_cast<size_t>(j)];
    return a > b || (a == b && i < j);
  };
  if (k < vis) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  std::vector<int64_t> out(idx.begin(), idx.begin() + k);
  std::sort(out.begin(), out.end());
  return out;
}

void run_case(const IdxCase& ic, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "heads " << ic.heads << " head_dim " << ic.head_dim << " topk " << ic.topk);
  std::mt19937 g(seed);
  const int S = 4, H = ic.heads, D = ic.head_dim, M = ic.max_entries;
  const int64_t entry_stride = int64_t{M} * D + 3;

  // Entries: c_j * v per slot, c_j a shuffled ladder in [1, 3) (relative gaps >= 1/M),
  // negated for the zero entries; duplicates copy their predecessor bitwise.
  std::vector<float> entries(static_cast<size_t>(S * entry_stride), 0.0f);
  for (int s = 0; s < S; ++s) {
    const std::vector<float> v = random_floats(g, static_cast<size_t>(D), 0.2f, 1.0f);
    std::vector<int> ladder(static_cast<size_t>(M));
    std::iota(ladder.begin(), ladder.end(), 0);
    std::shuffle(ladder.begin(), ladder.end(), g);
    for (int j = 0; j < M; ++j) {
      float* e = entries.data() + s * entry_stride + int64_t{j} * D;
      if (ic.dup_every && j > 0 && j % ic.dup_every == 0) {
        std::copy(e - D, e, e);
        continue;
      }
      float c = 1.0f + 2.0f * static_cast<float>(ladder[static_cast<size_t>(j)]) / static_cast<float>(M);
      if ((ic.zero_every && j % ic.zero_every == 1) || (ic.keep_every && j % ic.keep_every != 0)) c = -c;
      for (int i = 0; i < D; ++i) e[i] = c * v[static_cast<size_t>(i)];
    }
  }

  // Rows (each slot's rows consecutive positions, as in a step): slot 0 a prefill chunk
  // from position 0 (no entries yet, then a few), slot 1 a chunk at a mid position,
  // slot 2 decode rows past max_entries * ratio (vis clamped to max_entries), slot 3 a
  // chunk whose visible count crosses topk.
  Step st;
  for (int p = 0; p < 17; ++p) st.add(0, p);
  const int64_t mid = int64_t{M} * ic.ratio / 2;
  for (int i = 0; i < 9; ++i) st.add(1, mid + i);
  st.add(2, int64_t{M} * ic.ratio + 5);
  st.add(2, int64_t{M} * ic.ratio + 6);
  const int64_t cross = std::min<int64_t>(int64_t{ic.topk} * ic.ratio, int64_t{M} * ic.ratio) - 2;
  for (int i = 0; i < 2 * ic.ratio + 3; ++i) st.add(3, cross + i);
  const int R = st.R();
  // q positive per head, w positive except one negative head, so every row's score is
  // c_j * K_r with |K_r| bounded away from 0: the ranking follows c_j (or reverses).
  const int64_t ldq = int64_t{H} * D + 2, ldw = H + 1;
  std::vector<float> q = random_floats(g, static_cast<size_t>(R * ldq), 0.1f, 1.0f);
  std::vector<float> w = random_floats(g, static_cast<size_t>(R * ldw), 0.2f, 1.0f);
  for (int r = 0; r < R; ++r) w[static_cast<size_t>(r * ldw + (r % H))] *= (H > 1 ? -0.1f : 1.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  CompressorRing ring;
  DevBuf<float> d_entries(entries);
  ring.entries = d_entries.get();
  ring.max_entries = M;
  ring.entry_slot_stride = entry_stride;
  ring.dim = D;
  ring.ratio = ic.ratio;
  DevStep ds(st);
  DevBuf<float> d_q(q), d_w(w), d_scratch(static_cast<size_t>(R) * M);
  DevBuf<int32_t> d_sel(std::vector<int32_t>(static_cast<size_t>(R) * ic.topk, -1)), d_nsel(std::vector<int32_t>(R, -1));
  indexer_select(ds.rows, d_q.get(), ldq, d_w.get(), ldw, H, D, scale, ring, ic.topk, d_sel.get(), d_nsel.get(),
                 d_scratch.get(), nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<int32_t> sel = d_sel.download(), nsel = d_nsel.download();
  const std::vector<float> scratch = d_scratch.download();

  for (int r = 0; r < R; ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r << " slot " << st.slot[r] << " pos " << st.pos[r]);
    const int64_t vis = std::min<int64_t>((st.pos[r] + 1) / ic.ratio, M);
    const int64_t k = std::min<int64_t>(ic.topk, vis);
    std::vector<float> score(static_cast<size_t>(vis));
    const float* qt = q.data() + r * ldq;
    const float* wt = w.data() + r * ldw;
    for (int64_t j = 0; j < vis; ++j) {
      const float* kj = entries.data() + st.slot[r] * entry_stride + j * D;
      float acc = 0.0f;
      for (int h = 0; h < H; ++h) {
        float dd = 0.0f;
        for (int i = 0; i < D; ++i) dd += qt[h * D + i] * kj[i];
        acc += (std::max(dd, 0.0f) * scale) * wt[h];
      }
      score[static_cast<size_t>(j)] = acc;
    }
    // The scores this implementation leaves in scratch (row r at r * max_entries).
    expect_close(scratch.data() + int64_t{r} * M, score.data(), static_cast<size_t>(vis), "scores", 1e-5f, -1.0f);
    const std::vector<int64_t> want = cpu_select(score, k);
    ASSERT_EQ(nsel[static_cast<size_t>(r)], k);
    std::vector<int64_t> got(sel.begin() + int64_t{r} * ic.topk, sel.begin() + int64_t{r} * ic.topk + k);
    EXPECT_EQ(got, want);
    for (int64_t i = k; i < ic.topk; ++i) EXPECT_EQ(sel[static_cast<size_t>(r * ic.topk + i)], -1) << "written past nsel";
  }
}

// {heads, head_dim, ratio, max_entries, topk, zero_every, keep_every, dup_every}
TEST(CudaIndexerSelect, SmallDistinct) { run_case({4, 32, 4, 300, 16, 0, 0, 0}, 11); }
TEST(CudaIndexerSelect, HalfZeroTies) { run_case({4, 32, 4, 400, 64, 2, 0, 0}, 12); }
// Few positive scores: the cut falls inside the run of exact zeros, which must be taken
// from the lowest indices.
TEST(CudaIndexerSelect, ZeroTiesAtTheCutPickLowestIndices) { run_case({3, 24, 2, 500, 100, 0, 7, 0}, 13); }
TEST(CudaIndexerSelect, DuplicateEntryTies) { run_case({8, 64, 4, 600, 128, 0, 0, 3}, 14); }
TEST(CudaIndexerSelect, V4Shape) { run_case({64, 128, 4, 4096, 512, 7, 0, 11}, 15); }
TEST(CudaIndexerSelect, LargeTopkZeroTiesAtTheCut) { run_case({16, 128, 4, 16384, 2048, 0, 9, 0}, 16); }
TEST(CudaIndexerSelect, HeadDimNotMultipleOf32) { run_case({5, 40, 3, 700, 33, 9, 0, 4}, 17); }

// Every score exactly 0: the k lowest indices.
TEST(CudaIndexerSelect, AllZeroScoresTakeTheFirstK) {
  const int H = 2, D = 32, M = 200, topk = 50;
  std::vector<float> entries(static_cast<size_t>(M * D), -1.0f);  // q >= 0: every dot < 0
  CompressorRing ring;
  DevBuf<float> d_entries(entries);
  ring.entries = d_entries.get();
  ring.max_entries = M;
  ring.entry_slot_stride = int64_t{M} * D;
  ring.dim = D;
  ring.ratio = 2;
  Step st;
  st.add(0, 2 * M - 1);
  DevStep ds(st);
  DevBuf<float> d_q(std::vector<float>(H * D, 0.5f)), d_w(std::vector<float>{0.7f, -0.3f}), d_scratch(M);
  DevBuf<int32_t> d_sel(static_cast<size_t>(topk)), d_nsel(1);
  indexer_select(ds.rows, d_q.get(), H * D, d_w.get(), H, H, D, 0.25f, ring, topk, d_sel.get(), d_nsel.get(),
                 d_scratch.get(), nullptr);
  const std::vector<int32_t> sel = d_sel.download(), nsel = d_nsel.download();
  ASSERT_EQ(nsel[0], topk);
  for (int i = 0; i < topk; ++i) EXPECT_EQ(sel[static_cast<size_t>(i)], i);
}

TEST(CudaIndexerSelect, RejectsBadShapes) {
  float f = 0.0f;
  int32_t i = 0;
  StepRows rows{&i, &i, &i, 1};
  CompressorRing ring;
  ring.entries = &f;
  ring.dim = 256;
  ring.ratio = 4;
  ring.max_entries = 1;
  EXPECT_THROW(indexer_select(rows, &f, 256, &f, 1, 1, 256, 1.0f, ring, 4, &i, &i, &f, nullptr), Error);  // head_dim > 128
  ring.dim = 64;
  EXPECT_THROW(indexer_select(rows, &f, 64, &f, 1, 1, 32, 1.0f, ring, 4, &i, &i, &f, nullptr), Error);  // dim mismatch
  EXPECT_THROW(indexer_select(rows, &f, 64, &f, 1, 1, 64, 1.0f, ring, 0, &i, &i, &f, nullptr), Error);  // topk 0
}

}  // namespace
}  // namespace kiln::ops::cuda::attn_test
