// window_write and attention (ops/cuda/attention.h) against a plain CPU re-statement of
// the sink softmax of Impl::attention (model/forward.cpp): keys = window rows of
// positions max(0, p - W + 1) .. p, then the selected (CSA) or all visible (HCA)
// compressed entries; m = max(sink, max s); o = sum exp(s - m) / (sum exp(s - m) +
// exp(sink - m)) * key. The window ring is filled for the past by upload and for the
// step's own rows by window_write, so a wrong ring row shows up as a wrong output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"

namespace kiln::ops::cuda::attn_test {
namespace {

struct AttnCase {
  int heads, dim, window, ratio, max_entries, topk;
  AttnKeys keys;
};

// A slot's history: the K=V row of every position 0..end-1; the step feeds rows
// [first, end) of it.
struct SlotPlan {
  int64_t first, end;
};

void run_case(const AttnCase& ac, const std::vector<SlotPlan>& plan, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "heads " << ac.heads << " dim " << ac.dim << " window " << ac.window << " keys "
                                  << static_cast<int>(ac.keys));
  std::mt19937 g(seed);
  const int S = static_cast<int>(plan.size()), H = ac.heads, D = ac.dim;
  int most_rows = 0;
  for (const SlotPlan& sp : plan) most_rows = std::max<int>(most_rows, static_cast<int>(sp.end - sp.first));
  const int cap = ac.window + most_rows + 3;
  const int64_t ring_stride = int64_t{cap} * D + 1;

  // History rows and the ring as it stands before the step (row of the latest position
  // < first with that residue), then the step's rows.
  std::vector<std::vector<float>> hist(static_cast<size_t>(S));
  std::vector<float> ring_init(static_cast<size_t>(S * ring_stride), 0.0f);
  Step st;
  for (int s = 0; s < S; ++s) {
    const SlotPlan& sp = plan[static_cast<size_t>(s)];
    hist[static_cast<size_t>(s)] = random_floats(g, static_cast<size_t>(sp.end * D), -1.0f, 1.0f);
    for (int64_t p = std::max<int64_t>(0, sp.first - cap); p < sp.first; ++p)
      std::copy_n(hist[static_cast<size_t>(s)].data() + p * D, D, ring_init.data() + s * ring_stride + (p % cap) * D);
    for (int64_t p = sp.first; p < sp.end; ++p) st.add(s, p);
  }
  const int R = st.R();
  const int64_t ldkv = D + 2, ldq = int64_t{H} * D + 5, ldo = int64_t{H} * D + 3;
  std::vector<float> kv(static_cast<size_t>(R * ldkv));
  for (int r = 0; r < R; ++r)
    std::copy_n(hist[static_cast<size_t>(st.slot[r])].data() + int64_t{st.pos[r]} * D, D, kv.data() + r * ldkv);

  // Compressed entries and, for CSA, per-row selections (sorted subsets of the visible
  // entries, counts 0..min(topk, vis)).
  const int64_t entry_stride = int64_t{ac.max_entries} * D + 2;
  const std::vector<float> entries = random_floats(g, static_cast<size_t>(S * entry_stride), -1.0f, 1.0f);
  const int topk = std::max(1, ac.topk);
  std::vector<int32_t> sel(static_cast<size_t>(R) * topk, 0), nsel(static_cast<size_t>(R), 0);
  for (int r = 0; r < R; ++r) {
    const int64_t vis = std::min<int64_t>((st.pos[r] + 1) / ac.ratio, ac.max_entries);
    std::vector<int32_t> all(static_cast<size_t>(vis));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), g);
    const int64_t most = std::min<int64_t>(topk, vis);
    const int64_t n = (r % 4 == 0) ? most : std::uniform_int_distribution<int64_t>(0, most)(g);
    std::sort(all.begin(), all.begin() + n);
    std::copy_n(all.begin(), n, sel.begin() + int64_t{r} * topk);
    nsel[static_cast<size_t>(r)] = static_cast<int32_t>(n);
  }

  const std::vector<float> q = random_floats(g, static_cast<size_t>(R * ldq), -1.0f, 1.0f);
  const std::vector<float> sink = random_floats(g, static_cast<size_t>(H), -2.0f, 2.0f);
  const float scale = 3.0f / std::sqrt(static_cast<float>(D));  // sharper than D^-0.5: the max matters

  // CPU reference.
  std::vector<float> want(static_cast<size_t>(R * ldo), 0.0f);
  for (int r = 0; r < R; ++r) {
    const int s = st.slot[r];
    const int64_t p = st.pos[r];
    std::vector<const float*> keys;
    for (int64_t qp = std::max<int64_t>(0, p - ac.window + 1); qp <= p; ++qp) keys.push_back(hist[static_cast<size_t>(s)].data() + qp * D);
    const float* ent = entries.data() + s * entry_stride;
    if (ac.keys == AttnKeys::WindowAndSelected) {
      for (int i = 0; i < nsel[static_cast<size_t>(r)]; ++i) keys.push_back(ent + int64_t{sel[static_cast<size_t>(r * topk + i)]} * D);
    } else if (ac.keys == AttnKeys::WindowAndAll) {
      const int64_t vis = std::min<int64_t>((p + 1) / ac.ratio, ac.max_entries);
      for (int64_t j = 0; j < vis; ++j) keys.push_back(ent + j * D);
    }
    std::vector<float> sc(keys.size());
    for (int h = 0; h < H; ++h) {
      const float* qh = q.data() + r * ldq + int64_t{h} * D;
      float mx = sink[static_cast<size_t>(h)];
      for (size_t k = 0; k < keys.size(); ++k) {
        float d = 0.0f;
        for (int c = 0; c < D; ++c) d += qh[c] * keys[k][c];
        sc[k] = d * scale;
        mx = std::max(mx, sc[k]);
      }
      float sum = 0.0f;
      for (float& v : sc) {
        v = std::exp(v - mx);
        sum += v;
      }
      sum += std::exp(sink[static_cast<size_t>(h)] - mx);
      float* oh = want.data() + r * ldo + int64_t{h} * D;
      for (size_t k = 0; k < keys.size(); ++k)
        for (int c = 0; c < D; ++c) oh[c] += (sc[k] / sum) * keys[k][c];
    }
  }

  DevStep ds(st);
  DevBuf<float> d_ring(ring_init), d_kv(kv), d_entries(entries), d_q(q), d_sink(sink);
  DevBuf<int32_t> d_sel(sel), d_nsel(nsel);
  DevBuf<float> d_o(std::vector<float>(static_cast<size_t>(R * ldo), 0.0f));
  WindowRing ring{d_ring.get(), cap, D, ring_stride};
  CompressorRing comp;
  comp.entries = d_entries.get();
  comp.max_entries = ac.max_entries;
  comp.entry_slot_stride = entry_stride;
  comp.dim = D;
  comp.ratio = ac.ratio;
  window_write(ds.rows, d_kv.get(), ldkv, ring, nullptr);
  // Without a workspace (one block per row and head group), and with one (keys split over
  // blocks when the rows do not fill the GPU, merged by the combine kernel).
  DevBuf<float> d_work(std::vector<float>(static_cast<size_t>(std::max<int64_t>(1, attention_workspace_floats(R, H, D))), 0.0f));
  for (bool split : {false, true}) {
  SCOPED_TRACE(split ? "split keys" : "unsplit");
  KILN_CUDA_CHECK(cudaMemset(d_o.get(), 0, static_cast<size_t>(R * ldo) * sizeof(float)));
  attention(ds.rows, d_q.get(), ldq, H, scale, d_sink.get(), ring, ac.window, ac.keys,
            ac.keys == AttnKeys::Window ? nullptr : &comp, d_sel.get(), d_nsel.get(), topk, d_o.get(), ldo, nullptr,
            split ? d_work.get() : nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = d_o.download();
  for (int r = 0; r < R; ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r << " slot " << st.slot[r] << " pos " << st.pos[r]);
    for (int h = 0; h < H; ++h)  // floor: 1e-5 of the head's largest output (cancellation near 0)
      expect_close(got.data() + r * ldo + int64_t{h} * D, want.data() + r * ldo + int64_t{h} * D, static_cast<size_t>(D),
                   "o head " + std::to_string(h), 1e-5f, -1.0f);
    for (int64_t i = int64_t{H} * D; i < ldo; ++i) EXPECT_EQ(got[static_cast<size_t>(r * ldo + i)], 0.0f) << "o written past heads * dim";
  }
  }
}

// Slot plans: a prefill chunk from 0 (window shorter than W, no entries yet), a chunk of
// 5..20 rows at a position past the ring capacity (wrap-around), decode rows.
std::vector<SlotPlan> mixed_plan(int window) {
  const int64_t far = 5 * (window + 20) + 7;
  return {{0, 13}, {far, far + 20}, {3 * window + 1, 3 * window + 2}, {window - 1, window + 4}, {far + 3, far + 4}};
}

TEST(CudaAttention, TinyWindowOnly) { run_case({4, 64, 8, 4, 64, 8, AttnKeys::Window}, mixed_plan(8), 21); }
TEST(CudaAttention, TinySelected) { run_case({4, 64, 8, 4, 64, 8, AttnKeys::WindowAndSelected}, mixed_plan(8), 22); }
TEST(CudaAttention, TinyAll) { run_case({4, 64, 8, 4, 64, 8, AttnKeys::WindowAndAll}, mixed_plan(8), 23); }
// Heads not a multiple of the kernel's head group; dim not a multiple of 32.
TEST(CudaAttention, OddShapesSelected) { run_case({12, 40, 5, 2, 100, 16, AttnKeys::WindowAndSelected}, mixed_plan(5), 24); }
TEST(CudaAttention, OddShapesAllClamped) { run_case({3, 96, 6, 3, 10, 1, AttnKeys::WindowAndAll}, mixed_plan(6), 25); }
// V4-like: dim 512, window 128, 512 selected entries (fewer heads to keep the CPU side short).
TEST(CudaAttention, V4ShapeSelected) {
  run_case({16, 512, 128, 4, 1024, 512, AttnKeys::WindowAndSelected}, {{2040, 2060}, {0, 7}, {3000, 3001}}, 26);
}
TEST(CudaAttention, V4ShapeAll) { run_case({9, 512, 128, 128, 64, 1, AttnKeys::WindowAndAll}, {{4000, 4020}, {5, 9}}, 27); }

// Steps of fewer than 16 rows take the kernel's narrow head grouping (2 heads a block).
TEST(CudaAttention, DecodeStepOddHeadsAll) {
  run_case({3, 64, 8, 4, 40, 1, AttnKeys::WindowAndAll}, {{200, 201}, {2, 3}, {31, 35}}, 28);
}
TEST(CudaAttention, DecodeStepV4ShapeSelected) {
  run_case({64, 512, 128, 4, 1024, 512, AttnKeys::WindowAndSelected}, {{3000, 3001}, {17, 18}, {2100, 2104}}, 29);
}

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

}  // namespace
}  // namespace kiln::ops::cuda::attn_test
