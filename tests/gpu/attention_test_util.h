// Helpers shared by the GPU tests of the attention-state kernels (ops/cuda/attention.h) and
// the op harness's cases of them (tests/ops_harness/ops_attention.cpp): device buffers,
// step rows on the device and in the CPU ops' form (one cpu::AttentionState per slot), a
// rope cos/sin table built from ops::cpu::Rope::cos_sin (the RopeTable class is not used,
// so these tests depend only on the view struct), and a tolerant comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cpu/attention.h"
#include "kiln/ops/cpu/attention_state.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cuda/attention.h"
#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda::attn_test {

template <typename T>
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t n) : n_(n) { KILN_CUDA_CHECK(cudaMalloc(&p_, (n ? n : 1) * sizeof(T))); }
  explicit DevBuf(const std::vector<T>& v) : DevBuf(v.size()) { upload(v); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& v) {
    ASSERT_LE(v.size(), n_);
    KILN_CUDA_CHECK(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    KILN_CUDA_CHECK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// One step's rows on the host and on the device.
struct Step {
  std::vector<int32_t> slot, pos;
  void add(int s, int64_t p) {
    slot.push_back(s);
    pos.push_back(static_cast<int32_t>(p));
  }
  int R() const { return static_cast<int>(slot.size()); }
};

struct DevStep {
  DevBuf<int32_t> tok, slot, pos;
  StepRows rows;
  explicit DevStep(const Step& s)
      : tok(std::vector<int32_t>(s.slot.size(), 0)), slot(s.slot), pos(s.pos) {
    rows.tok = tok.get();
    rows.slot = slot.get();
    rows.pos = pos.get();
    rows.R = s.R();
  }
};

// The CPU ops' form of a Step (ops/cpu/attention_state.h StepRows) over one CPU state per
// slot (states[slot]): one sequence per run of consecutive rows of one slot. A slot's rows
// in a step are consecutive positions, so each run starts where its state was fed up to.
struct CpuStep {
  std::vector<cpu::SeqRows> seqs;
  std::vector<int64_t> pos;
  std::vector<int32_t> seq_of;
  CpuStep(const Step& s, std::vector<cpu::AttentionState>& states) {
    for (int r = 0; r < s.R(); ++r) {
      const int slot = s.slot[static_cast<size_t>(r)];
      if (r == 0 || slot != s.slot[static_cast<size_t>(r - 1)])
        seqs.push_back({&states[static_cast<size_t>(slot)], r, 0, s.pos[static_cast<size_t>(r)]});
      ++seqs.back().T;
      pos.push_back(s.pos[static_cast<size_t>(r)]);
      seq_of.push_back(static_cast<int32_t>(seqs.size() - 1));
    }
  }
  cpu::StepRows rows() const { return {seqs, pos, seq_of}; }
};

// The first n floats of each of R rows ld apart, packed [R, n] (the CPU ops take
// contiguous rows; the GPU ones a row stride).
inline std::vector<float> packed_rows(const std::vector<float>& x, int64_t R, int64_t ld, int64_t n) {
  std::vector<float> out(static_cast<size_t>(R * n));
  for (int64_t r = 0; r < R; ++r) std::copy_n(x.data() + r * ld, n, out.data() + r * n);
  return out;
}

// cos/sin [max_pos, dim/2] from cpu::Rope::cos_sin, uploaded: the same fp32 values the
// CPU rotation uses.
struct RopeTableForTest {
  cpu::Rope rope;
  DevBuf<float> cos, sin;
  RopeView view;
  RopeTableForTest(int64_t dim, int64_t max_pos, double theta = 10000.0) {
    cpu::RopeSpec spec;
    spec.dim = dim;
    spec.theta = theta;
    rope = cpu::Rope(spec);
    const int64_t half = dim / 2;
    std::vector<float> c(static_cast<size_t>(max_pos * half)), s(c.size());
    for (int64_t p = 0; p < max_pos; ++p) rope.cos_sin(p, c.data() + p * half, s.data() + p * half);
    cos = DevBuf<float>(c);
    sin = DevBuf<float>(s);
    view.cos = cos.get();
    view.sin = sin.get();
    view.dim = static_cast<int>(dim);
    view.max_pos = max_pos;
  }
};

inline std::vector<float> random_floats(std::mt19937& g, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// v as the inputs of `num` hold them: in AttnNumerics::Bf16 q and the keys are bf16 values
// (as the deepseek forward gives them), each rounded to nearest even; Fp32 keeps v.
inline std::vector<float> attn_inputs(std::vector<float> v, AttnNumerics num) {
  if (num == AttnNumerics::Bf16) cpu::round_bf16(v.data(), 0, 1, static_cast<int64_t>(v.size()), v.data(), 0);
  return v;
}

// |got - want| <= rel * |want| + abs_floor for every element; reports the first few misses.
// abs_floor < 0 means rel * max |want| over the span: values near 0 that come out of a
// sum with cancellation are held to 1e-5 of the vector's scale, not of themselves.
inline void expect_close(const float* got, const float* want, size_t n, const std::string& what, float rel = 1e-5f,
                         float abs_floor = 1e-6f) {
  if (abs_floor < 0.0f) {
    float mx = 0.0f;
    for (size_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(want[i]));
    abs_floor = rel * mx;
  }
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float tol = rel * std::fabs(want[i]) + abs_floor;
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      if (++bad <= 5) ADD_FAILURE() << what << " [" << i << "]: gpu " << got[i] << " cpu " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << n << " outside tolerance";
}

}  // namespace kiln::ops::cuda::attn_test
