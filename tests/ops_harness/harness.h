// The op-level harness (issue 17; in the spirit of llama.cpp's test-backend-ops): every
// op of the ops interface (model/definition.h) run on ops/cuda and on its reference in
// ops/cpu, over several shapes and every weight scheme / dtype the op takes, compared
// with the op's tolerance from the one table in harness_ops.cpp. Adding an op = one entry
// there plus a function returning its cases.
//
// A case makes its random inputs (fixed seeds), runs the CPU op into Output::want, and
// leaves the CUDA op as a re-runnable launch over device buffers it holds; the harness
// launches it once, downloads each output and compares. Outputs are poisoned (all bits
// set: NaN as float, -1 as int) before the launch, so an unwritten element fails.
// Perf mode (KILN_OPS_PERF=1, or a comma list of op names) times every launch instead
// (cudaEvent, median of KILN_OPS_PERF_ITERS, default 50) and prints op, shape, us,
// bytes moved and GB/s.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/step_rows.h"
#include "support/device_array.h"
#include "support/random.h"

namespace kiln::ops_harness {

using test::Dev;  // tests/support/device_array.h
using test::uniform;  // tests/support/random.h

// How an op's CUDA result may differ from ops/cpu's.
struct Tol {
  enum Kind { Bitwise, Close } kind = Bitwise;
  // Close: |gpu - cpu| <= rtol * max(|cpu|, floor) per element, or rtol * mag[i] where the
  // case gives a magnitude per element (a product's sum |x_k w_k|).
  float rtol = 0.0f;
  float floor = 1.0f;
  const char* why = "";
};

// One output of a case. Index outputs (exact = true) are compared bitwise whatever the
// op's tolerance; ints are carried as floats (exact below 2^24).
struct Output {
  std::string name;
  std::vector<float> want;                  // the ops/cpu result
  std::function<std::vector<float>()> got;  // the ops/cuda result, downloaded
  std::vector<float> mag;                   // optional per-element scale of the tolerance
  bool exact = false;
  // Only these elements are compared (row r: [r * ld, r * ld + n)); ld 0: all.
  int64_t rows = 0, ld = 0, n = 0;
};

// A case ready to launch: its CUDA op over device buffers it holds, the CPU's outputs.
struct Prepared {
  std::vector<Output> outputs;
  std::function<void(cudaStream_t)> launch;
  int64_t bytes = 0;  // bytes one launch reads and writes (perf mode's GB/s)
  std::vector<std::shared_ptr<void>> keep;

  // Makes an object the launch uses, alive as long as this case.
  template <typename T, typename... A>
  T& hold(A&&... a) {
    auto p = std::make_shared<T>(std::forward<A>(a)...);
    keep.push_back(p);
    return *p;
  }
  // A device copy of h (counted as bytes read).
  template <typename T>
  T* in(const std::vector<T>& h) {
    bytes += static_cast<int64_t>(h.size() * sizeof(T));
    return hold<Dev<T>>(h).get();
  }
  // A poisoned device output of n elements (counted as bytes written), compared with want.
  float* out(const std::string& name, std::vector<float> want, std::vector<float> mag = {}) {
    auto& d = hold<Dev<float>>(want.size());
    bytes += d.bytes();
    outputs.push_back({name, std::move(want), [&d] { return d.host(); }, std::move(mag)});
    return d.get();
  }
  // A device copy of `init` the op rewrites in place (read and written), compared with want.
  float* inout(const std::string& name, const std::vector<float>& init, std::vector<float> want) {
    auto& d = hold<Dev<float>>(init);
    bytes += 2 * d.bytes();
    outputs.push_back({name, std::move(want), [&d] { return d.host(); }, {}});
    return d.get();
  }
  template <typename I>
  int32_t* out_index(const std::string& name, const std::vector<I>& want) {
    auto& d = hold<Dev<int32_t>>(want.size());
    bytes += d.bytes();
    std::vector<float> w(want.begin(), want.end());
    outputs.push_back({name, std::move(w), [&d] {
                         auto h = d.host();
                         return std::vector<float>(h.begin(), h.end());
                       }, {}});
    outputs.back().exact = true;
    return d.get();
  }
};

struct Case {
  std::string shape;   // "R=4 n=7168", as the failure message and the perf table print it
  std::string scheme;  // weight scheme / dtype / variant ("fp32" when the op has none)
  std::function<Prepared()> prepare;
};

struct OpEntry {
  std::string name;
  Tol tol;
  std::function<std::vector<Case>()> cases;
};

// The table (harness_ops.cpp).
const std::vector<OpEntry>& all_ops();

// ---- helpers for the cases ------------------------------------------------------------

inline std::string dims(std::initializer_list<std::pair<const char*, int64_t>> d) {
  std::string s;
  for (const auto& [k, v] : d) s += (s.empty() ? "" : " ") + std::string(k) + "=" + std::to_string(v);
  return s;
}

// Device step rows (tok, slot 0, pos) held by p.
inline ops::cuda::StepRows step_rows(Prepared& p, const std::vector<int32_t>& tok, const std::vector<int32_t>& pos) {
  ops::cuda::StepRows r;
  r.tok = p.in(tok);
  r.slot = p.in(std::vector<int32_t>(tok.size(), 0));
  r.pos = p.in(pos);
  r.R = static_cast<int>(tok.size());
  return r;
}

// The case lists of each group of ops.
std::vector<Case> rmsnorm_cases();
std::vector<Case> rope_cases();
std::vector<Case> scale_rows_cases();
std::vector<Case> hc_pre_cases();
std::vector<Case> hc_post_cases();
std::vector<Case> hc_head_cases();
std::vector<Case> swiglu_cases();
std::vector<Case> moe_route_cases();
std::vector<Case> moe_combine_cases();
std::vector<Case> argmax_cases();
std::vector<Case> embed_cases();
std::vector<Case> add_broadcast_streams_cases();
std::vector<Case> linear_cases();
std::vector<Case> linear_grouped_cases();
std::vector<Case> routed_experts_cases();
std::vector<Case> attention_cases();        // ops_attention.cpp: window_write + attention
std::vector<Case> attention_bf16_cases();   // the same in AttnNumerics::Bf16
std::vector<Case> compressor_feed_cases();
std::vector<Case> compressor_feed_bf16_cases();  // entries rounded as AttnNumerics::Bf16
std::vector<Case> indexer_select_cases();
// Frees the weight the linear cases keep for the next case of the same shape (before the
// CUDA runtime shuts down).
void release_cached_weights();

}  // namespace kiln::ops_harness
