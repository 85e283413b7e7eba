// indexer_select (ops/cuda/attention.h): the case where every score is exactly 0 (the k
// lowest indices, compared with ops/cpu's indexer_select over a cpu::AttentionState and
// with 0..k-1 itself), and the shape checks. The selection over ranked, tied and
// duplicated entries (V4 shapes, decode batches) is compared with ops/cpu's indexer_select
// by the op harness (tests/ops_harness/ops_attention.cpp, op `indexer_select`).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "attention_test_util.h"
#include "kiln/ops/cpu/thread_pool.h"

namespace kiln::ops::cuda::attn_test {
namespace {

// Every score exactly 0: the k lowest indices.
TEST(CudaIndexerSelect, AllZeroScoresTakeTheFirstK) {
  const int H = 2, D = 32, M = 200, topk = 50, ratio = 2;
  const std::vector<float> entries(static_cast<size_t>(M * D), -1.0f);  // q >= 0: every dot < 0
  const std::vector<float> q(H * D, 0.5f), w{0.7f, -0.3f};
  Step st;
  st.add(0, 2 * M - 1);

  std::vector<cpu::AttentionState> states(1);
  cpu::CompressorState& ic = states[0].icomp.emplace(ratio, D, false, ratio);
  ic.entries = entries;
  ic.count = M;
  ic.length = int64_t{M} * ratio;
  CpuStep cs(st, states);
  cpu::ThreadPool pool(1);
  cpu::Selection want;
  cpu::indexer_select(cs.rows(), q.data(), w.data(), H, D, 0.25f, topk, want, &pool);
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(want[0].size(), static_cast<size_t>(topk));
  for (int i = 0; i < topk; ++i) EXPECT_EQ(want[0][static_cast<size_t>(i)], i) << "cpu";

  CompressorRing ring;
  DevBuf<float> d_entries(entries);
  ring.entries = d_entries.get();
  ring.max_entries = M;
  ring.entry_slot_stride = int64_t{M} * D;
  ring.dim = D;
  ring.ratio = ratio;
  DevStep ds(st);
  DevBuf<float> d_q(q), d_w(w), d_scratch(M);
  DevBuf<int32_t> d_sel(static_cast<size_t>(topk)), d_nsel(1);
  indexer_select(ds.rows, d_q.get(), H * D, d_w.get(), H, H, D, 0.25f, ring, topk, d_sel.get(), d_nsel.get(),
                 d_scratch.get(), nullptr);
  const std::vector<int32_t> sel = d_sel.download(), nsel = d_nsel.download();
  ASSERT_EQ(nsel[0], topk);
  for (int i = 0; i < topk; ++i) EXPECT_EQ(sel[static_cast<size_t>(i)], want[0][static_cast<size_t>(i)]) << "gpu";
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
