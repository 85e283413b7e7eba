// The harness's tests: OpsHarness/Matches.Cpu/<op> compares every case of an op (one
// test per table entry); OpsHarnessPerf.Table times them when KILN_OPS_PERF is set
// (1 / all, or a comma list of op names; KILN_OPS_PERF_ITERS launches per case, default 50).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"

namespace kiln::ops_harness {
namespace {

bool same_bits(float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

std::string tol_text(const Tol& t, const Output& o) {
  std::ostringstream s;
  if (o.exact || t.kind == Tol::Bitwise) {
    s << "bitwise";
  } else if (!o.mag.empty()) {
    s << "|gpu - cpu| <= " << t.rtol << " * magnitude";
  } else {
    s << "|gpu - cpu| <= " << t.rtol << " * max(|cpu|, " << t.floor << ")";
  }
  s << " (" << t.why << ")";
  return s.str();
}

// Compares one output; the message names op, shape, scheme, output, the worst errors and
// the tolerance. Returns the largest |gpu - cpu| / bound over its elements (0 for bitwise
// outputs), which Matches.Cpu prints per op: how much of its tolerance an op uses.
double compare(const OpEntry& op, const Case& c, const Output& o) {
  const std::vector<float> got = o.got();
  EXPECT_EQ(got.size(), o.want.size()) << op.name << " " << c.shape << " " << c.scheme << " " << o.name;
  if (got.size() != o.want.size()) return 0;
  const bool bitwise = o.exact || op.tol.kind == Tol::Bitwise;
  size_t bad = 0, checked = 0;
  double max_abs = 0, max_rel = 0, used = 0;
  std::ostringstream first;
  auto check = [&](size_t i) {
    ++checked;
    const float g = got[i], w = o.want[i];
    const double abs_err = std::fabs(static_cast<double>(g) - w);
    const double rel_err = abs_err / std::max(std::fabs(static_cast<double>(w)), 1e-30);
    if (!std::isnan(abs_err)) {
      max_abs = std::max(max_abs, abs_err);
      max_rel = std::max(max_rel, rel_err);
    }
    bool ok;
    if (bitwise) {
      ok = same_bits(g, w);
    } else {
      const double bound = o.mag.empty() ? op.tol.rtol * std::max<double>(std::fabs(w), op.tol.floor)
                                         : op.tol.rtol * static_cast<double>(o.mag[i]);
      ok = abs_err <= bound;  // NaN fails
      if (bound > 0) used = std::max(used, abs_err / bound);
    }
    if (!ok && ++bad <= 5) first << " [" << i << "] gpu " << g << " cpu " << w << ";";
  };
  if (o.ld > 0) {
    for (int64_t r = 0; r < o.rows; ++r) {
      for (int64_t j = 0; j < o.n; ++j) check(static_cast<size_t>(r * o.ld + j));
    }
  } else {
    for (size_t i = 0; i < got.size(); ++i) check(i);
  }
  if (bad > 0) {
    ADD_FAILURE() << "op " << op.name << " shape [" << c.shape << "] scheme " << c.scheme << " output " << o.name << ": "
                  << bad << " of " << checked << " elements outside tolerance; max abs err " << max_abs
                  << ", max rel err " << max_rel << "; tolerance " << tol_text(op.tol, o) << ";" << first.str();
  }
  return used;
}

class Matches : public ::testing::TestWithParam<size_t> {};

TEST_P(Matches, Cpu) {
  const OpEntry& op = all_ops()[GetParam()];
  const std::vector<Case> cases = op.cases();
  ASSERT_FALSE(cases.empty()) << op.name;
  double used = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(op.name + " [" + c.shape + "] " + c.scheme);
    Prepared p = c.prepare();
    ASSERT_FALSE(p.outputs.empty());
    p.launch(nullptr);
    KILN_CUDA_CHECK(cudaGetLastError());
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    for (const Output& o : p.outputs) used = std::max(used, compare(op, c, o));
  }
  std::printf("[%s] %zu cases; worst error %.3g of the tolerance (rtol %g)\n", op.name.c_str(), cases.size(), used,
              static_cast<double>(op.tol.rtol));
  release_cached_weights();
}

std::string op_name(const ::testing::TestParamInfo<size_t>& info) { return all_ops()[info.param].name; }

INSTANTIATE_TEST_SUITE_P(OpsHarness, Matches, ::testing::Range<size_t>(0, all_ops().size()), op_name);

// ---- perf mode --------------------------------------------------------------------------

bool perf_wants(const std::string& list, const std::string& op) {
  if (list == "1" || list == "all") return true;
  std::stringstream s(list);
  for (std::string item; std::getline(s, item, ',');) {
    if (item == op) return true;
  }
  return false;
}

TEST(OpsHarnessPerf, Table) {
  const char* env = std::getenv("KILN_OPS_PERF");
  if (env == nullptr || *env == '\0' || std::string(env) == "0") GTEST_SKIP() << "set KILN_OPS_PERF=1 (or op,op,...)";
  const char* it_env = std::getenv("KILN_OPS_PERF_ITERS");
  const int iters = std::max(1, it_env ? std::atoi(it_env) : 50);
  cudaStream_t st;
  KILN_CUDA_CHECK(cudaStreamCreate(&st));
  cudaEvent_t a, b;
  KILN_CUDA_CHECK(cudaEventCreate(&a));
  KILN_CUDA_CHECK(cudaEventCreate(&b));
  std::printf("%-22s %-14s %-52s %10s %14s %9s\n", "op", "scheme", "shape", "us", "bytes", "GB/s");
  for (const OpEntry& op : all_ops()) {
    if (!perf_wants(env, op.name)) continue;
    for (const Case& c : op.cases()) {
      Prepared p = c.prepare();
      for (int i = 0; i < 3; ++i) p.launch(st);  // warm up
      std::vector<float> ms(static_cast<size_t>(iters));
      for (int i = 0; i < iters; ++i) {
        KILN_CUDA_CHECK(cudaEventRecord(a, st));
        p.launch(st);
        KILN_CUDA_CHECK(cudaEventRecord(b, st));
        KILN_CUDA_CHECK(cudaEventSynchronize(b));
        KILN_CUDA_CHECK(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], a, b));
      }
      std::nth_element(ms.begin(), ms.begin() + iters / 2, ms.end());
      const double us = 1e3 * ms[static_cast<size_t>(iters / 2)];
      std::printf("%-22s %-14s %-52s %10.2f %14lld %9.1f\n", op.name.c_str(), c.scheme.c_str(), c.shape.c_str(), us,
                  static_cast<long long>(p.bytes), us > 0 ? static_cast<double>(p.bytes) / (us * 1e3) : 0.0);
      std::fflush(stdout);
    }
  }
  release_cached_weights();
  KILN_CUDA_CHECK(cudaEventDestroy(a));
  KILN_CUDA_CHECK(cudaEventDestroy(b));
  KILN_CUDA_CHECK(cudaStreamDestroy(st));
}

}  // namespace
}  // namespace kiln::ops_harness
