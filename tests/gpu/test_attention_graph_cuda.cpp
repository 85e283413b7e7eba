// The attention-state launchers can be captured in a CUDA graph (no allocation, sync or
// host read inside them: capture fails otherwise) and the replay gives bit for bit what
// direct launches give, for window_write -> compressor_feed -> indexer_select ->
// attention as a layer chains them.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "attention_test_util.h"

namespace kiln::ops::cuda::attn_test {
namespace {

TEST(CudaAttentionGraph, CapturedChainMatchesDirectLaunches) {
  std::mt19937 g(31);
  const int D = 64, H = 4, W = 8, ratio = 4, topk = 3, IH = 2;
  const int wcap = W + 8 + 2, ccap = 2 * ratio + 8 + 2, max_entries = 16;
  Step st;
  for (int p = 13; p < 21; ++p) st.add(0, p);  // completes block 3 (12..15) and 4 (16..19)
  st.add(1, 7);                                // completes block 1 of slot 1
  const int R = st.R();
  DevStep ds(st);
  RopeTableForTest rope(16, 256);

  const int width = 2 * D;
  DevBuf<float> d_kvrows(random_floats(g, static_cast<size_t>(R * D), -1.0f, 1.0f));
  DevBuf<float> d_a(random_floats(g, static_cast<size_t>(R * width), -1.0f, 1.0f));
  DevBuf<float> d_z(random_floats(g, static_cast<size_t>(R * width), -1.0f, 1.0f));
  DevBuf<float> d_ape(random_floats(g, static_cast<size_t>(ratio * width), -0.5f, 0.5f));
  DevBuf<float> d_norm(random_floats(g, static_cast<size_t>(D), 0.5f, 1.5f));
  DevBuf<float> d_q(random_floats(g, static_cast<size_t>(R * H * D), -1.0f, 1.0f));
  DevBuf<float> d_iq(random_floats(g, static_cast<size_t>(R * IH * D), -1.0f, 1.0f));
  DevBuf<float> d_iw(random_floats(g, static_cast<size_t>(R * IH), -1.0f, 1.0f));
  DevBuf<float> d_sink(random_floats(g, static_cast<size_t>(H), -1.0f, 1.0f));
  DevBuf<float> d_ring(static_cast<size_t>(2 * wcap * D)), d_ckv(static_cast<size_t>(2 * ccap * width)),
      d_cscore(d_ckv.size()), d_entries(static_cast<size_t>(2 * max_entries * D)), d_scratch(static_cast<size_t>(R * max_entries));
  DevBuf<int32_t> d_sel(static_cast<size_t>(R * topk)), d_nsel(static_cast<size_t>(R));
  DevBuf<float> d_o(static_cast<size_t>(R * H * D));

  WindowRing ring{d_ring.get(), wcap, D, int64_t{wcap} * D};
  CompressorRing comp;
  comp.kv = d_ckv.get();
  comp.score = d_cscore.get();
  comp.cap = ccap;
  comp.width = width;
  comp.ring_slot_stride = int64_t{ccap} * width;
  comp.entries = d_entries.get();
  comp.max_entries = max_entries;
  comp.entry_slot_stride = int64_t{max_entries} * D;
  comp.dim = D;
  comp.ratio = ratio;
  comp.overlap = true;

  cudaStream_t s;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto reset = [&] {
    KILN_CUDA_CHECK(cudaMemsetAsync(d_ring.get(), 0, d_ring.size() * sizeof(float), s));
    KILN_CUDA_CHECK(cudaMemsetAsync(d_ckv.get(), 0, d_ckv.size() * sizeof(float), s));
    KILN_CUDA_CHECK(cudaMemsetAsync(d_cscore.get(), 0, d_cscore.size() * sizeof(float), s));
    KILN_CUDA_CHECK(cudaMemsetAsync(d_entries.get(), 0, d_entries.size() * sizeof(float), s));
    KILN_CUDA_CHECK(cudaMemsetAsync(d_o.get(), 0, d_o.size() * sizeof(float), s));
    KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  };
  // The same compressor state serves as the attention's and the indexer's (one layer's
  // two compressors have the same shapes here), which keeps the chain short.
  auto chain = [&] {
    window_write(ds.rows, d_kvrows.get(), D, ring, s);
    compressor_feed(ds.rows, d_a.get(), d_z.get(), width, d_ape.get(), d_norm.get(), 1e-6f, rope.view, comp, s);
    indexer_select(ds.rows, d_iq.get(), IH * D, d_iw.get(), IH, IH, D, 0.125f, comp, topk, d_sel.get(), d_nsel.get(),
                   d_scratch.get(), s);
    attention(ds.rows, d_q.get(), H * D, H, 0.125f, d_sink.get(), ring, W, AttnKeys::WindowAndSelected, &comp, d_sel.get(),
              d_nsel.get(), topk, d_o.get(), H * D, s);
  };

  reset();
  chain();
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  const std::vector<float> o_direct = d_o.download(), e_direct = d_entries.download();
  const std::vector<int32_t> nsel_direct = d_nsel.download();

  reset();
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  KILN_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  chain();
  KILN_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  KILN_CUDA_CHECK(cudaGraphLaunch(exec, s));
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
  const std::vector<float> o_graph = d_o.download(), e_graph = d_entries.download();
  const std::vector<int32_t> nsel_graph = d_nsel.download();
  KILN_CUDA_CHECK(cudaGraphExecDestroy(exec));
  KILN_CUDA_CHECK(cudaGraphDestroy(graph));
  KILN_CUDA_CHECK(cudaStreamDestroy(s));

  EXPECT_EQ(nsel_direct, nsel_graph);
  EXPECT_EQ(nsel_direct[7], 3);  // row at position 20 sees entries 0..4, keeps topk = 3
  EXPECT_EQ(nsel_direct[8], 2);  // slot 1 at position 7 sees entries 0..1
  ASSERT_EQ(o_direct.size(), o_graph.size());
  EXPECT_EQ(std::memcmp(o_direct.data(), o_graph.data(), o_direct.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(e_direct.data(), e_graph.data(), e_direct.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace kiln::ops::cuda::attn_test
