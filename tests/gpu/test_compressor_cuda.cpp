// compressor_feed (ops/cuda/attention.h) against a plain CPU re-statement of
// Impl::compress / Impl::emit (model/forward.cpp): several slots fed in mixed steps
// (prefill chunks of 1..20 rows crossing block boundaries, decode rows, a rollback), with
// and without overlap, until the rings have wrapped several times. After every step the
// raw ring rows must equal the CPU's bit for bit and every emitted entry must match
// within 1e-5 relative.
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
};

constexpr int kMaxChunk = 20;
constexpr int kRollback = 4;
constexpr float kEps = 1e-6f;

// One slot's CPU compressor: ring rows by position % cap, entries by index.
struct RefCompressor {
  int dim, ratio, width, cap, max_entries;
  bool overlap;
  std::vector<float> kv, score, entries;
  RefCompressor(const CompCase& c, int cap_, int max_entries_)
      : dim(c.dim), ratio(c.ratio), width((c.overlap ? 2 : 1) * c.dim), cap(cap_), max_entries(max_entries_),
        overlap(c.overlap), kv(static_cast<size_t>(cap_) * width), score(kv.size()),
        entries(static_cast<size_t>(max_entries_) * c.dim) {}
  float* kv_row(int64_t p) { return kv.data() + (p % cap) * width; }
  float* score_row(int64_t p) { return score.data() + (p % cap) * width; }

  // Impl::compress for one row, then Impl::emit when the row completes a block.
  void feed(const float* a, const float* z, int64_t p, const std::vector<float>& ape, const std::vector<float>& norm,
            const cpu::Rope& rope) {
    std::memcpy(kv_row(p), a, sizeof(float) * width);
    for (int i = 0; i < width; ++i) score_row(p)[i] = z[i] + ape[static_cast<size_t>((p % ratio) * width + i)];
    if ((p + 1) % ratio != 0) return;
    const int64_t j = (p + 1) / ratio - 1, m = ratio;
    if (j >= max_entries) return;
    const int off = overlap ? dim : 0;
    std::vector<float> out(static_cast<size_t>(dim)), sc, kvs;
    for (int ch = 0; ch < dim; ++ch) {
      sc.clear();
      kvs.clear();
      if (overlap && j > 0) {
        for (int64_t i = 0; i < m; ++i) {
          sc.push_back(score_row((j - 1) * m + i)[ch]);
          kvs.push_back(kv_row((j - 1) * m + i)[ch]);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        sc.push_back(score_row(j * m + i)[off + ch]);
        kvs.push_back(kv_row(j * m + i)[off + ch]);
      }
      float mx = -INFINITY;
      for (float s : sc) mx = std::max(mx, s);
      float sum = 0.0f;
      for (float& s : sc) {
        s = std::exp(s - mx);
        sum += s;
      }
      float acc = 0.0f;
      for (size_t i = 0; i < sc.size(); ++i) acc += kvs[i] * (sc[i] / sum);
      out[static_cast<size_t>(ch)] = acc;
    }
    float ss = 0.0f;
    for (float v : out) ss += v * v;
    const float s = 1.0f / std::sqrt(ss / static_cast<float>(dim) + kEps);
    for (int ch = 0; ch < dim; ++ch) out[static_cast<size_t>(ch)] = norm[static_cast<size_t>(ch)] * (out[static_cast<size_t>(ch)] * s);
    rope.apply(out.data(), dim, j * m);
    std::copy(out.begin(), out.end(), entries.begin() + j * dim);
  }
};

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

  std::vector<RefCompressor> ref(S, RefCompressor(cc, cap, max_entries));
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
    for (int r = 0; r < R; ++r) ref[static_cast<size_t>(st.slot[r])].feed(a.data() + r * ld, z.data() + r * ld, st.pos[r], ape, norm, rope.rope);
    DevStep ds(st);
    DevBuf<float> d_a(a), d_z(z);
    compressor_feed(ds.rows, d_a.get(), d_z.get(), ld, d_ape.get(), d_norm.get(), kEps, rope.view, ring, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());

    const std::vector<float> kv = d_kv.download(), score = d_score.download(), ent = d_entries.download();
    for (int s = 0; s < S; ++s) {
      SCOPED_TRACE(testing::Message() << "step " << step << " slot " << s << " length " << length[s]);
      const RefCompressor& rc = ref[static_cast<size_t>(s)];
      // Ring rows of the last min(length, cap) positions: exact copies / one fp32 add.
      for (int64_t p = std::max<int64_t>(0, length[s] - cap); p < length[s]; ++p) {
        const size_t o = static_cast<size_t>(s * ring_stride + (p % cap) * width);
        ASSERT_EQ(std::memcmp(kv.data() + o, rc.kv.data() + (p % cap) * width, sizeof(float) * width), 0) << "kv row " << p;
        ASSERT_EQ(std::memcmp(score.data() + o, rc.score.data() + (p % cap) * width, sizeof(float) * width), 0) << "score row " << p;
      }
      const int64_t count = std::min<int64_t>(length[s] / cc.ratio, max_entries);
      // Per entry: 1e-5 relative, with a floor of 1e-5 of the entry's largest value
      // (expf vs std::exp differ by an ulp or two; the norm then scales that up).
      for (int64_t j = 0; j < count; ++j)
        expect_close(ent.data() + s * entry_stride + j * cc.dim, rc.entries.data() + j * cc.dim, static_cast<size_t>(cc.dim),
                     "entry " + std::to_string(j), 1e-5f, -1.0f);
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
TEST(CudaCompressorFeed, IndexerShape) { run_case({128, 4, 64, true}, 6); }

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
