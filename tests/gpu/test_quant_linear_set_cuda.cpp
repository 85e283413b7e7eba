// QuantLinear::forward_grouped and QuantLinearSet::forward_indexed on the GPU.
//
// Grouped: every scheme, 2 and 8 groups of 16 rows (not a multiple of the 128-row fp8
// scale block: groups share scale rows) and of 128 rows, x group slices aligned (one
// launch) and odd (staged group by group), against y = x_g W_g^T summed in double from
// the CPU reference's dequantized W, with test_quant_linear_cuda.cpp's tolerance.
//
// Indexed: sets of one scheme and of mixed schemes, random expert ids with repeats and
// ids out of range, x_div 1 and 4, aligned and odd x rows. Each pair's row must be
// within tolerance of the CPU reference, and with a single pair bitwise the row that
// expert's own QuantLinear::forward gives for that x row (more pairs take fewer lanes per
// row, hence another association of the sums); pairs naming no expert, and the gap
// between n and ldy, must keep their poison bits.
#include <gtest/gtest.h>

#include <cmath>
#include <bit>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/quant_linear.h"
#include "quant_linear_cases.h"

namespace kiln::ops {
namespace {

using namespace test_linear;

// A NaN with a payload no kernel produces: "never written" is checked bit for bit.
constexpr uint32_t kPoisonBits = 0x7FC0DEADu;
float poison() { return std::bit_cast<float>(kPoisonBits); }
uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// |got - sum_j x_j W_oj| <= 2e-5 sum_j |x_j W_oj| (see test_quant_linear_cuda.cpp).
bool close_to_reference(float got, const float* x, const float* w_row, int64_t k, double* ref_out) {
  double ref = 0, mag = 0;
  for (int64_t j = 0; j < k; ++j) {
    const double p = static_cast<double>(x[j]) * w_row[j];
    ref += p;
    mag += std::fabs(p);
  }
  *ref_out = ref;
  return std::fabs(got - ref) <= 2e-5 * mag + 1e-30;
}

// ---- forward_grouped

void check_grouped(const Case& c, int groups, int64_t x_group_stride, std::initializer_list<int> ms, uint32_t seed) {
  SCOPED_TRACE(c.label + " [" + std::to_string(c.n) + ", " + std::to_string(c.k) + "] groups=" +
               std::to_string(groups) + " x_group_stride=" + std::to_string(x_group_stride));
  const LoadedCase lc(c);
  const int max_m = 64;
  auto lin = cuda::QuantLinear::prepare(lc.host, max_m);
  const int64_t n = c.n, k = c.k, rows = n / groups;
  const int64_t lx = ((groups - 1) * x_group_stride + k + 3) / 4 * 4, ly = n + 5;
  for (int M : ms) {
    SCOPED_TRACE("M=" + std::to_string(M) + " " + lin.describe(M));
    std::vector<float> x = random_matrix(M, lx, seed + static_cast<uint32_t>(M));
    std::vector<float> y(static_cast<size_t>(max_m * ly), poison());
    DevBuf<float> dx(x.size()), dy(y.size());
    KILN_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    KILN_CUDA_CHECK(cudaMemcpy(dy.p, y.data(), y.size() * 4, cudaMemcpyHostToDevice));
    lin.forward_grouped(dx.p, lx, x_group_stride, M, groups, dy.p, ly, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    KILN_CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int m = 0; m < max_m; ++m) {
      for (int64_t o = 0; o < ly; ++o) {
        const float got = y[static_cast<size_t>(m * ly + o)];
        if (m >= M || o >= n) {
          if (bits(got) != kPoisonBits && ++bad <= 3) ADD_FAILURE() << "wrote outside the output: y[" << m << ", " << o << "]";
          continue;
        }
        const int64_t g = o / rows;
        double ref = 0;
        if (!close_to_reference(got, x.data() + m * lx + g * x_group_stride, lc.W.data() + o * k, k, &ref) && ++bad <= 3)
          ADD_FAILURE() << "y[" << m << ", " << o << "] (group " << g << ") = " << got << ", reference " << ref;
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(CudaQuantLinearGrouped, EverySchemeAndGroupSize) {
  for (int groups : {2, 8}) {
    for (int64_t rows : {16, 128}) {  // 16: groups inside one fp8 scale block; 128: one block each
      // k = 256: whole chunks for every scheme; 208: a partial chunk for the 4-bit schemes.
      for (int64_t k : {256, 208}) {
        for (const Case& c : one_of_each_scheme(groups * rows, k, static_cast<uint32_t>(groups * 1000 + rows + k))) {
          // Slices 16-byte aligned (one launch, unless k needs padding) and an odd stride
          // (each group staged separately).
          for (int64_t stride : {(k + 3) / 4 * 4 + 4, k + 1}) check_grouped(c, groups, stride, {1, 5, 33}, 21);
        }
      }
    }
  }
}

// One group is the plain product; slices may also overlap (stride < k is allowed).
TEST(CudaQuantLinearGrouped, OneGroupAndOverlappingSlices) {
  for (const Case& c : one_of_each_scheme(64, 256, 22)) {
    check_grouped(c, 1, 0, {1, 7}, 23);
    check_grouped(c, 4, 32, {1, 7}, 24);
  }
}

TEST(CudaQuantLinearGrouped, BadArgumentsAreUsageErrors) {
  const Case c = one_of_each_scheme(48, 64, 25)[0];
  const LoadedCase lc(c);
  auto lin = cuda::QuantLinear::prepare(lc.host, 4);
  DevBuf<float> dx(48 * 64), dy(48 * 4);
  auto expect_usage = [&](auto&& call, const char* needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Usage) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_usage([&] { lin.forward_grouped(dx.p, 5 * 64, 64, 1, 5, dy.p, 48, nullptr); }, "groups = 5");
  expect_usage([&] { lin.forward_grouped(dx.p, 3 * 64, 64, 1, 4, dy.p, 48, nullptr); }, "cannot hold 4 groups");
  expect_usage([&] { lin.forward_grouped(dx.p, 4 * 64, 64, 5, 4, dy.p, 48, nullptr); }, "M = 5 is outside [1, 4]");
}

// ---- forward_indexed

struct Experts {
  std::vector<std::unique_ptr<LoadedCase>> loaded;
  std::vector<HostQuantLinear> hosts;
};

Experts load_experts(const std::vector<Case>& cases) {
  Experts ex;
  for (size_t e = 0; e < cases.size(); ++e) {
    ex.loaded.push_back(std::make_unique<LoadedCase>(cases[e], "experts." + std::to_string(e)));
    ex.hosts.push_back(ex.loaded.back()->host);
  }
  return ex;
}

// P pairs of random ids in [0, count) (repeats, since P > count), with every 7th pair
// naming an id outside it (-1, count, a large one).
std::vector<int32_t> random_ids(int P, int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, count - 1);
  std::vector<int32_t> ids(static_cast<size_t>(P));
  const int32_t outside[] = {-1, count, 1 << 30};
  for (int i = 0; i < P; ++i) ids[static_cast<size_t>(i)] = i % 7 == 3 ? outside[(i / 7) % 3] : pick(rng);
  return ids;
}

void check_indexed(const std::vector<Case>& cases, const std::string& label, int x_div, int P, bool odd_rows,
                   uint32_t seed, int max_pairs = 64) {
  SCOPED_TRACE(label + " x_div=" + std::to_string(x_div) + " P=" + std::to_string(P) + (odd_rows ? " odd rows" : ""));
  const Experts ex = load_experts(cases);
  const int count = static_cast<int>(cases.size());
  const int64_t n = cases[0].n, k = cases[0].k;
  auto set = cuda::QuantLinearSet::prepare(ex.hosts.data(), count, max_pairs);
  EXPECT_EQ(set.count(), count);
  EXPECT_EQ(set.n(), n);
  EXPECT_EQ(set.k(), k);
  std::vector<cuda::QuantLinear> own;
  int64_t largest = 0;
  for (const auto& h : ex.hosts) {
    own.push_back(cuda::QuantLinear::prepare(h, 4));
    largest = std::max(largest, own.back().weight_bytes());
  }
  EXPECT_EQ(set.expert_bytes(), largest);

  const int xrows = (P + x_div - 1) / x_div;
  const int64_t lx = odd_rows ? k + 3 : k, ly = n + 5;
  const std::vector<float> x = random_matrix(xrows, lx, seed);
  const std::vector<int32_t> ids = random_ids(P, count, seed + 1);
  std::vector<float> y(static_cast<size_t>(max_pairs * ly), poison()), want = y;
  DevBuf<float> dx(x.size()), dy(y.size()), dwant(y.size());
  DevBuf<int32_t> did(ids.size());
  KILN_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(did.p, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(dy.p, y.data(), y.size() * 4, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(dwant.p, want.data(), want.size() * 4, cudaMemcpyHostToDevice));
  set.forward_indexed(dx.p, lx, x_div, did.p, P, dy.p, ly, nullptr);
  for (int i = 0; i < P; ++i) {
    const int32_t e = ids[static_cast<size_t>(i)];
    if (e < 0 || e >= count) continue;
    own[static_cast<size_t>(e)].forward(dx.p + (i / x_div) * lx, lx, 1, dwant.p + i * ly, ly, nullptr);
  }
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  KILN_CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
  KILN_CUDA_CHECK(cudaMemcpy(want.data(), dwant.p, want.size() * 4, cudaMemcpyDeviceToHost));

  int bad = 0;
  for (int i = 0; i < max_pairs; ++i) {
    const int32_t e = i < P ? ids[static_cast<size_t>(i)] : -1;
    const bool runs = e >= 0 && e < count;
    for (int64_t o = 0; o < ly; ++o) {
      const size_t at = static_cast<size_t>(i * ly + o);
      if (!runs || o >= n) {
        if (bits(y[at]) != kPoisonBits && ++bad <= 3)
          ADD_FAILURE() << "pair " << i << " (expert " << e << ") wrote y[" << i << ", " << o << "]";
        continue;
      }
      if (P == 1 && bits(y[at]) != bits(want[at]) && ++bad <= 3)
        ADD_FAILURE() << "pair " << i << " (expert " << e << ", " << cases[static_cast<size_t>(e)].label << ") y[" << o
                      << "] = " << y[at] << ", its QuantLinear::forward gives " << want[at];
      double ref = 0;
      const float* xr = x.data() + (i / x_div) * lx;
      if (!close_to_reference(y[at], xr, ex.loaded[static_cast<size_t>(e)]->W.data() + o * k, k, &ref) && ++bad <= 3)
        ADD_FAILURE() << "pair " << i << " (expert " << e << ") y[" << o << "] = " << y[at] << ", CPU reference " << ref;
    }
  }
  EXPECT_EQ(bad, 0);
}

// `count` experts of scheme `s` (index into one_of_each_scheme), each its own weights.
std::vector<Case> experts_of_scheme(size_t s, int count, int64_t n, int64_t k, uint32_t seed) {
  std::vector<Case> cases;
  for (int e = 0; e < count; ++e) cases.push_back(one_of_each_scheme(n, k, seed + static_cast<uint32_t>(e))[s]);
  return cases;
}

TEST(CudaQuantLinearSet, EachSchemeMatchesTheReferenceAndOnePairItsOwnForwardBitwise) {
  for (size_t s = 0; s < 5; ++s) {
    for (int64_t k : {256, 208}) {  // 208: the 4-bit schemes stage x
      const auto cases = experts_of_scheme(s, 5, 72, k, 31 + static_cast<uint32_t>(s));
      for (bool odd : {false, true}) {
        check_indexed(cases, cases[0].label, 1, 1, odd, 40);  // one pair: bitwise its forward
        check_indexed(cases, cases[0].label, 1, 37, odd, 41);
        check_indexed(cases, cases[0].label, 4, 40, odd, 42);  // (token, slot) pairs of a top-4 routing
      }
    }
  }
}

TEST(CudaQuantLinearSet, MixedSchemesMatchTheReference) {
  for (int64_t k : {256, 208}) {
    std::vector<Case> cases = one_of_each_scheme(96, k, 51);
    for (Case& c : one_of_each_scheme(96, k, 52)) cases.push_back(std::move(c));
    for (bool odd : {false, true}) {
      check_indexed(cases, "mixed", 1, 64, odd, 61);
      check_indexed(cases, "mixed", 6, 63, odd, 62);
    }
  }
}

// Long rows (many lanes per row, the shared-memory reduction) and more experts.
TEST(CudaQuantLinearSet, LongRowsManyExperts) {
  const auto cases = experts_of_scheme(1, 24, 40, 4096, 71);
  check_indexed(cases, "fp8_block k=4096", 8, 64, false, 72);
}

// The sizes of a DeepSeek-V4 MoE layer's routing: 384 experts (schemes mixed), 512 pairs
// of a top-8 routing of 64 tokens (small matrices keep the CPU side short).
TEST(CudaQuantLinearSet, ManyExpertsManyPairs) {
  std::vector<Case> cases;
  for (int e = 0; e < 384; ++e) cases.push_back(one_of_each_scheme(24, 64, 100 + static_cast<uint32_t>(e))[e % 5]);
  check_indexed(cases, "384 mixed experts", 8, 512, false, 73, 512);
}

// A captured graph reads the expert ids when it runs, not when it was captured.
TEST(CudaQuantLinearSet, GraphReadsIdsAtReplay) {
  const auto cases = experts_of_scheme(3, 4, 64, 256, 81);
  const Experts ex = load_experts(cases);
  auto set = cuda::QuantLinearSet::prepare(ex.hosts.data(), 4, 8);
  const int P = 8;
  const std::vector<float> x = random_matrix(P, 256, 82);
  DevBuf<float> dx(x.size()), dy(P * 64), dref(P * 64);
  DevBuf<int32_t> did(P);
  KILN_CUDA_CHECK(cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  std::vector<int32_t> ids = {0, 1, 2, 3, 0, 1, 2, 3};
  KILN_CUDA_CHECK(cudaMemcpy(did.p, ids.data(), P * 4, cudaMemcpyHostToDevice));
  cudaStream_t st;
  KILN_CUDA_CHECK(cudaStreamCreate(&st));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  KILN_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  set.forward_indexed(dx.p, 256, 1, did.p, P, dy.p, 64, st);
  KILN_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
  KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  ids = {3, 3, 2, 2, 1, 1, 0, 0};
  KILN_CUDA_CHECK(cudaMemcpy(did.p, ids.data(), P * 4, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaGraphLaunch(exec, st));
  set.forward_indexed(dx.p, 256, 1, did.p, P, dref.p, 64, st);
  KILN_CUDA_CHECK(cudaStreamSynchronize(st));
  std::vector<float> y(P * 64), ref(P * 64);
  KILN_CUDA_CHECK(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost));
  KILN_CUDA_CHECK(cudaMemcpy(ref.data(), dref.p, ref.size() * 4, cudaMemcpyDeviceToHost));
  EXPECT_EQ(std::memcmp(y.data(), ref.data(), y.size() * 4), 0);
  // Rows 0 and 1 both use expert 3 on different x rows: not a copy of one another.
  EXPECT_NE(std::memcmp(y.data(), y.data() + 64, 64 * 4), 0);
  KILN_CUDA_CHECK(cudaGraphExecDestroy(exec));
  KILN_CUDA_CHECK(cudaGraphDestroy(graph));
  KILN_CUDA_CHECK(cudaStreamDestroy(st));
}

TEST(CudaQuantLinearSet, BadInputIsAClearError) {
  std::vector<Case> cases = one_of_each_scheme(32, 64, 91);
  cases.push_back(one_of_each_scheme(32, 128, 92)[1]);  // a [32, 128] expert among [32, 64] ones
  const Experts ex = load_experts(cases);
  try {
    cuda::QuantLinearSet::prepare(ex.hosts.data(), static_cast<int>(ex.hosts.size()), 8);
    ADD_FAILURE() << "experts of different shapes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("experts.5: expert 5 is [32, 128], expected [32, 64]"), std::string::npos)
        << e.what();
  }
  auto set = cuda::QuantLinearSet::prepare(ex.hosts.data(), 5, 8);
  DevBuf<float> dx(9 * 64), dy(9 * 32);
  DevBuf<int32_t> did(9);
  try {
    set.forward_indexed(dx.p, 64, 1, did.p, 9, dy.p, 32, nullptr);
    ADD_FAILURE() << "P beyond max_pairs accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_NE(std::string(e.what()).find("P = 9 is outside [1, 8]"), std::string::npos) << e.what();
  }
  try {
    set.forward_indexed(dx.p, 64, 0, did.p, 4, dy.p, 32, nullptr);
    ADD_FAILURE() << "x_div = 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x_div = 0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::ops
