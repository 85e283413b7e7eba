// compressor_feed (ops/cuda/attention.h) against ops/cpu's compressor_feed over one
// cpu::AttentionState per slot, step after step: several slots fed in mixed steps
// (prefill chunks of 1..20 rows crossing block boundaries, decode rows, a rollback:
// AttentionState::truncate on the CPU, a plain re-feed on the GPU), with and without
// overlap, until the rings have wrapped several times. After every step the raw ring rows
// must equal the CPU's bit for bit and every entry j < max_entries must match within 1e-5
// relative; the GPU must not write entries past max_entries (the CPU emits them) nor
// past the last slot (a guard area). One step over more shapes and the decode batches is
// the op harness's `compressor_feed` (tests/ops_harness/ops_attention.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention_test_util.h"

namespace kiln::ops::cuda::attn_test {
namespace {

struct CompCase {
  int dim, ratio, rope_dim;
  bool overlap;
  CompressorRole role = CompressorRole::Attention;
};

constexpr int kMaxChunk = 20;
constexpr int kRollback = 4;
constexpr float kEps = 1e-6f;

void run_case(const CompCase& cc, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "dim " << cc.dim << " ratio " << cc.ratio << " overlap " << cc.overlap);
  std::mt19937 g(seed);
  const int S = 3;
  const int width = (cc.overlap ? 2 : 1) * cc.dim;
  const int cap = (cc.overlap ? 2 : 1) * cc.ratio + kMaxChunk + kRollback;
  const int64_t target = 3 * cap + cc.ratio + 3;  // several wrap-arounds
  // One entry less than the longest slot needs, so "j >= max_entries is not written" is
  // exercised (a write there would land in the guard area checked below).
  const int max_entries = static_cast<int>((target + kMaxChunk) / cc.ratio) - 1;
  const int64_t ring_stride = int64_t{cap} * width + 7;  // padded: strides are honoured
  const int64_t entry_stride = int64_t{max_entries} * cc.dim + 5;
  RopeTableForTest rope(cc.rope_dim, (max_entries + 1) * int64_t{cc.ratio});

  const std::vector<float> ape = random_floats(g, static_cast<size_t>(cc.ratio) * width, -0.5f, 0.5f);
  const std::vector<float> norm = random_floats(g, static_cast<size_t>(cc.dim), 0.5f, 1.5f);
  DevBuf<float> d_ape(ape), d_norm(norm);
  DevBuf<float> d_kv(static_cast<size_t>(S * ring_stride)), d_score(static_cast<size_t>(S * ring_stride));
  const size_t guard = 64;
  const float sentinel = 12345.0f;
  DevBuf<float> d_entries(std::vector<float>(static_cast<size_t>(S * entry_stride) + guard, sentinel));

  CompressorRing ring;
  ring.kv = d_kv.get();
  ring.score = d_score.get();
  ring.cap = cap;
  ring.width = width;
  ring.ring_slot_stride = ring_stride;
  ring.entries = d_entries.get();
  ring.max_entries = max_entries;
  ring.entry_slot_stride = entry_stride;
  ring.dim = cc.dim;
  ring.ratio = cc.ratio;
  ring.overlap = cc.overlap;

  // The CPU reference: one state per slot, its compressor of the case's role.
  std::vector<cpu::AttentionState> states(S);
  for (cpu::AttentionState& as : states)
    (cc.role == CompressorRole::Attention ? as.comp : as.icomp).emplace(cc.ratio, cc.dim, cc.overlap, cap);
  auto state = [&](int s) -> const cpu::CompressorState& {
    const cpu::AttentionState& as = states[static_cast<size_t>(s)];
    return cc.role == CompressorRole::Attention ? *as.comp : *as.icomp;
  };
  std::vector<int64_t> length(S, 0);
  std::uniform_int_distribution<int> chunk(1, kMaxChunk);
  bool rolled_back = false;
  for (int step = 0; std::any_of(length.begin(), length.end(), [&](int64_t l) { return l < target; }); ++step) {
    Step st;
    for (int k = 0; k < S; ++k) {
      const int s = (k + step) % S;  // slots in a rotating order
      if (length[s] >= target) continue;
      if (s == 1 && !rolled_back && length[s] > 2 * cap) {  // re-feed the last 3 positions
        length[s] -= 3;
        states[static_cast<size_t>(s)].truncate(length[s]);  // the GPU just overwrites
        rolled_back = true;
      }
      // Slot 2 decodes one row a step once past its first block; the others take chunks.
      const int n = (s == 2 && length[s] > cc.ratio) ? 1 : chunk(g);
      for (int i = 0; i < n; ++i) st.add(s, length[s] + i);
      length[s] += n;
    }
    const int R = st.R();
    const int64_t ld = width + 3;
    std::vector<float> a = random_floats(g, static_cast<size_t>(R * ld), -1.0f, 1.0f);
    std::vector<float> z = random_floats(g, static_cast<size_t>(R * ld), -2.0f, 2.0f);
    CpuStep cs(st, states);
    cpu::compressor_feed(cs.rows(), cc.role, packed_rows(a, R, ld, width).data(), packed_rows(z, R, ld, width).data(),
                         ape.data(), norm.data(), kEps, rope.rope);
    DevStep ds(st);
    DevBuf<float> d_a(a), d_z(z);
    compressor_feed(ds.rows, d_a.get(), d_z.get(), ld, d_ape.get(), d_norm.get(), kEps, rope.view, ring, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());

    const std::vector<float> kv = d_kv.download(), score = d_score.download(), ent = d_entries.download();
    for (int s = 0; s < S; ++s) {
      SCOPED_TRACE(testing::Message() << "step " << step << " slot " << s << " length " << length[s]);
      const cpu::CompressorState& rc = state(s);
      ASSERT_EQ(rc.length, length[s]);
      ASSERT_EQ(rc.count, length[s] / cc.ratio);
      // Ring rows of the last min(length, cap) positions: exact copies / one fp32 add.
      for (int64_t p = std::max<int64_t>(0, length[s] - cap); p < length[s]; ++p) {
        const size_t o = static_cast<size_t>(s * ring_stride + (p % cap) * width);
        ASSERT_EQ(std::memcmp(kv.data() + o, rc.kv_row(p), sizeof(float) * width), 0) << "kv row " << p;
        ASSERT_EQ(std::memcmp(score.data() + o, rc.score_row(p), sizeof(float) * width), 0) << "score row " << p;
      }
      const int64_t count = std::min<int64_t>(rc.count, max_entries);
      // Per entry: 1e-5 relative, with a floor of 1e-5 of the entry's largest value
      // (expf vs std::exp differ by an ulp or two; the norm then scales that up).
      for (int64_t j = 0; j < count; ++j)
        expect_close(ent.data() + s * entry_stride + j * cc.dim, rc.entry(j), static_cast<size_t>(cc.dim),
                     "entry " + std::to_string(j), 1e-5f, -1.0f);
      // The slot's padding past max_entries: nothing written there.
      for (int64_t i = int64_t{max_entries} * cc.dim; i < entry_stride; ++i)
        ASSERT_EQ(ent[static_cast<size_t>(s * entry_stride + i)], sentinel) << "entry written past max_entries";
    }
    for (size_t i = 0; i < guard; ++i) ASSERT_EQ(ent[static_cast<size_t>(S * entry_stride) + i], sentinel) << "entry written past the last slot";
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(CudaCompressorFeed, OverlapSmall) { run_case({64, 4, 16, true}, 1); }
TEST(CudaCompressorFeed, NoOverlapOddRatio) { run_case({48, 5, 48, false}, 2); }
TEST(CudaCompressorFeed, OverlapRatioOne) { run_case({32, 1, 8, true}, 3); }
TEST(CudaCompressorFeed, LargeNoOverlap) { run_case({512, 128, 64, false}, 4); }
TEST(CudaCompressorFeed, LargeOverlap) { run_case({512, 4, 64, true}, 5); }
TEST(CudaCompressorFeed, IndexerShape) { run_case({128, 4, 64, true, CompressorRole::Indexer}, 6); }

TEST(CudaCompressorFeed, RejectsBadShapes) {
  CompressorRing ring;
  float f = 0.0f;
  ring.kv = ring.score = ring.entries = &f;
  ring.cap = 8;
  ring.dim = 16;
  ring.width = 16;
  ring.ratio = 4;
  ring.max_entries = 1;
  ring.ring_slot_stride = 8 * 16;
  ring.entry_slot_stride = 16;
  int32_t i = 0;
  StepRows rows{&i, &i, &i, 1};
  RopeView rv{&f, &f, 4, 1};
  ring.width = 32;  // not (overlap ? 2 : 1) * dim
  EXPECT_THROW(compressor_feed(rows, &f, &f, 32, &f, &f, kEps, rv, ring, nullptr), Error);
  ring.width = 16;
  ring.ratio = 129;
  EXPECT_THROW(compressor_feed(rows, &f, &f, 16, &f, &f, kEps, rv, ring, nullptr), Error);
  ring.ratio = 4;
  EXPECT_THROW(compressor_feed(rows, nullptr, &f, 16, &f, &f, kEps, rv, ring, nullptr), Error);
  ring.max_entries = 2;  // entry 1 is rotated at position 4, the table has 1
  ring.entry_slot_stride = 32;
  EXPECT_THROW(compressor_feed(rows, &f, &f, 16, &f, &f, kEps, rv, ring, nullptr), Error);
}

}  // namespace
}  // namespace kiln::ops::cuda::attn_test
