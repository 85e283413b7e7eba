// The harness's cases of the products, in every weight scheme (bf16, fp8_block, int4
// asymmetric, mxfp4, nvfp4: tests/gpu/quant_linear_cases.h quantizes one float matrix
// with kiln's quantizers, writes it as a checkpoint and plans it as the loader does):
//   linear          ops/cpu linear (model::prepare_linear's stored form) vs cuda::QuantLinear::forward
//   linear_grouped  model::CpuOps::linear_grouped vs QuantLinear::forward_grouped (wo_a)
//   routed_experts  model::CpuOps::routed_experts (moe_experts over def::expert) vs the
//                   GPU's fused op: QuantLinearSet::forward_indexed for w1 / w3, swiglu, w2
// The tolerance of a product element is relative to sum_k |x_k W_nk| (its magnitude).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "gpu/quant_linear_cases.h"
#include "harness.h"
#include "kiln/model/weights.h"
#include "kiln/ops/cpu/quant_linear.h"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/quant_linear.h"
#include "ops_cpu_model.h"

namespace kiln::ops_harness {

namespace cpu = kiln::ops::cpu;
namespace cuda = kiln::ops::cuda;
namespace tl = kiln::ops::test_linear;

namespace {

constexpr int kMaxM = 64;
const char* const kSchemes[] = {"bf16", "fp8_block", "int4 asym", "mxfp4", "nvfp4"};

// One [n, k] matrix in one scheme: written, planned, dequantized (W), prepared for the CPU
// kernels and uploaded for the GPU. The cases of one shape and scheme follow each other,
// so the last one is kept and shared.
struct Weight {
  std::unique_ptr<tl::LoadedCase> lc;
  model::Linear cpu;
  cuda::QuantLinear gpu;
};

std::tuple<int64_t, int64_t, int, uint32_t> last_key{-1, -1, -1, 0};
std::shared_ptr<Weight> last;

std::shared_ptr<Weight> weight(int64_t n, int64_t k, int scheme, uint32_t seed) {
  const auto key = std::make_tuple(n, k, scheme, seed);
  if (last && key == last_key) return last;
  last.reset();
  auto all = tl::one_of_each_scheme(n, k, seed);
  auto w = std::make_shared<Weight>();
  w->lc = std::make_unique<tl::LoadedCase>(all[static_cast<size_t>(scheme)]);
  w->cpu = model::prepare_linear(w->lc->ckpt, w->lc->plan);
  w->gpu = cuda::QuantLinear::prepare(w->lc->host, kMaxM);
  last_key = key;
  last = w;
  return w;
}

// sum_j |x[m, x0 + j] W[row, j]| for y[m, row] (W [n, k] fp32, rows of x ldx apart).
float magnitude(const std::vector<float>& W, int64_t k, const float* x, int64_t row) {
  double s = 0;
  const float* w = W.data() + row * k;
  for (int64_t j = 0; j < k; ++j) s += std::fabs(static_cast<double>(x[j]) * w[j]);
  return static_cast<float>(s);
}

}  // namespace

void release_cached_weights() { last.reset(); }

std::vector<Case> linear_cases() {
  struct S { int64_t n, k; std::vector<int> ms; bool strided; };
  std::vector<Case> cs;
  for (const S& s : {S{96, 256, {1, 3, 17}, true}, S{300, 544, {1, 5}, false}, S{1536, 7168, {1, 4, 32}, false},
                     S{4096, 1024, {1, 64}, false}}) {
    for (int sc = 0; sc < 5; ++sc) {
      for (int M : s.ms) {
        for (bool strided : {false, true}) {
          if (strided && !(s.strided && M == 3)) continue;
          const int64_t ldx = strided ? s.k + 3 : s.k, ldy = strided ? s.n + 5 : s.n;
          cs.push_back({dims({{"M", M}, {"n", s.n}, {"k", s.k}, {"ldx", ldx}, {"ldy", ldy}}), kSchemes[sc],
                        [s, sc, M, ldx, ldy] {
                          Prepared p;
                          auto w = weight(s.n, s.k, sc, static_cast<uint32_t>(s.n + s.k));
                          p.keep.push_back(w);
                          const auto x = tl::random_matrix(M, ldx, static_cast<uint32_t>(M * 7 + ldx));
                          std::vector<float> want(static_cast<size_t>(M * ldy), 0.0f), mag(want.size(), 0.0f);
                          const cpu::LinearJob job{&w->cpu, x.data(), ldx, want.data(), ldy, 0, s.n};
                          cpu::linear(std::span(&job, 1), M, nullptr);
                          for (int m = 0; m < M; ++m) {
                            for (int64_t o = 0; o < s.n; ++o) mag[static_cast<size_t>(m * ldy + o)] = magnitude(w->lc->W, s.k, x.data() + m * ldx, o);
                          }
                          const float* dx = p.in(x);
                          float* dy = p.out("y", want, mag);
                          p.outputs.back().rows = M, p.outputs.back().ld = ldy, p.outputs.back().n = s.n;
                          p.bytes += w->gpu.weight_bytes();
                          const cuda::QuantLinear* lin = &w->gpu;
                          p.launch = [=](cudaStream_t st) { lin->forward(dx, ldx, M, dy, ldy, st); };
                          return p;
                        }});
        }
      }
    }
  }
  return cs;
}

// wo_a: G groups of n/G rows, group g over columns [g * k, (g + 1) * k) of x [M, G * k].
std::vector<Case> linear_grouped_cases() {
  struct S { int64_t G, rows, k; std::vector<int> ms; };
  std::vector<Case> cs;
  for (const S& s : {S{4, 64, 256, {1, 3}}, S{8, 512, 2048, {1, 8, 32}}}) {
    for (int sc = 0; sc < 5; ++sc) {
      for (int M : s.ms) {
        cs.push_back({dims({{"M", M}, {"G", s.G}, {"n", s.G * s.rows}, {"k", s.k}}), kSchemes[sc], [s, sc, M] {
                        Prepared p;
                        const int64_t n = s.G * s.rows, ldx = s.G * s.k;
                        auto w = weight(n, s.k, sc, static_cast<uint32_t>(n * 3 + s.k));
                        p.keep.push_back(w);
                        const auto x = tl::random_matrix(M, ldx, static_cast<uint32_t>(M * 5 + 1));
                        std::vector<float> want(static_cast<size_t>(M * n)), mag(want.size());
                        CpuModel cm;
                        cm.ops(std::vector<int32_t>(static_cast<size_t>(M), 0))
                            .linear_grouped(w->cpu, x.data(), ldx, s.k, M, s.G, want.data(), n);
                        for (int m = 0; m < M; ++m) {
                          for (int64_t o = 0; o < n; ++o) {
                            mag[static_cast<size_t>(m * n + o)] = magnitude(w->lc->W, s.k, x.data() + m * ldx + (o / s.rows) * s.k, o);
                          }
                        }
                        const float* dx = p.in(x);
                        float* dy = p.out("y", want, mag);
                        p.bytes += w->gpu.weight_bytes();
                        const cuda::QuantLinear* lin = &w->gpu;
                        const int G = static_cast<int>(s.G);
                        const int64_t k = s.k;
                        p.launch = [=](cudaStream_t st) { lin->forward_grouped(dx, ldx, k, M, G, dy, n, st); };
                        return p;
                      }});
      }
    }
  }
  return cs;
}

// The routed experts of one MoE layer: E experts of one scheme, x [R, H], top-K pairs.
std::vector<Case> routed_experts_cases() {
  struct S { int E, K, R; int64_t H, I; };
  std::vector<Case> cs;
  for (const S s : {S{8, 4, 3, 256, 128}, S{16, 6, 16, 512, 256}}) {
    for (int sc = 0; sc < 5; ++sc) {
      cs.push_back({dims({{"E", s.E}, {"K", s.K}, {"R", s.R}, {"H", s.H}, {"I", s.I}}), kSchemes[sc], [s, sc] {
                      Prepared p;
                      struct Experts {
                        std::vector<std::unique_ptr<tl::LoadedCase>> lcs;  // w1, w3, w2 of each expert
                        model::Moe moe;
                        cuda::QuantLinearSet w1, w3, w2;
                      };
                      auto& ex = p.hold<Experts>();
                      std::vector<HostQuantLinear> h1, h3, h2;
                      for (int e = 0; e < s.E; ++e) {
                        model::Expert me;
                        for (int proj = 0; proj < 3; ++proj) {
                          const bool down = proj == 2;
                          const auto all = tl::one_of_each_scheme(down ? s.H : s.I, down ? s.I : s.H,
                                                                  static_cast<uint32_t>(1000 + e * 3 + proj));
                          ex.lcs.push_back(std::make_unique<tl::LoadedCase>(all[static_cast<size_t>(sc)]));
                          const tl::LoadedCase& lc = *ex.lcs.back();
                          (proj == 0 ? me.w1 : proj == 1 ? me.w3 : me.w2) = model::prepare_linear(lc.ckpt, lc.plan);
                          (proj == 0 ? h1 : proj == 1 ? h3 : h2).push_back(lc.host);
                        }
                        ex.moe.experts.push_back(std::move(me));
                      }
                      const int P = s.R * s.K;
                      ex.w1 = cuda::QuantLinearSet::prepare(h1.data(), s.E, P);
                      ex.w3 = cuda::QuantLinearSet::prepare(h3.data(), s.E, P);
                      ex.w2 = cuda::QuantLinearSet::prepare(h2.data(), s.E, P);
                      // distinct experts per row (as score routing picks), unsorted
                      std::vector<int32_t> idx(static_cast<size_t>(P));
                      for (int r = 0; r < s.R; ++r) {
                        for (int k = 0; k < s.K; ++k) idx[static_cast<size_t>(r * s.K + k)] = (r * 5 + k * 3 + (k > 0 ? 1 : 0)) % s.E;
                      }
                      for (int r = 0; r < s.R; ++r) {  // make each row's picks distinct
                        for (int k = 1; k < s.K; ++k) {
                          int32_t& e = idx[static_cast<size_t>(r * s.K + k)];
                          for (bool clash = true; clash;) {
                            clash = false;
                            for (int j = 0; j < k; ++j) clash = clash || idx[static_cast<size_t>(r * s.K + j)] == e;
                            if (clash) e = (e + 1) % s.E;
                          }
                        }
                      }
                      const std::vector<int64_t> idx64(idx.begin(), idx.end());
                      const float limit = 10.0f;
                      CpuModel cm(s.H, 1);
                      cm.w.config.n_routed_experts = s.E;
                      cm.w.config.num_experts_per_tok = s.K;
                      cm.w.config.moe_intermediate_size = s.I;
                      cm.w.config.swiglu_limit = limit;
                      auto x = tl::random_matrix(s.R, s.H, 77);
                      for (float& v : x) v = std::tanh(v);  // activations of a normed input's scale
                      std::vector<float> want(static_cast<size_t>(P * s.H));
                      cm.ops(std::vector<int32_t>(static_cast<size_t>(s.R), 0)).routed_experts(ex.moe, x.data(), idx64.data(), nullptr, want.data());
                      float mx = 0.0f;
                      for (float v : want) mx = std::max(mx, std::fabs(v));
                      const float* dx = p.in(x);
                      const int32_t* didx = p.in(idx);
                      float* g = p.hold<Dev<float>>(static_cast<size_t>(P * s.I)).get();
                      float* u = p.hold<Dev<float>>(static_cast<size_t>(P * s.I)).get();
                      float* dye = p.out("ye", want, std::vector<float>(want.size(), mx));
                      p.bytes += 4 * P * s.I * 4;  // g, u written and read
                      // weights: every expert's three matrices (the pairs name at most E of them)
                      p.bytes += static_cast<int64_t>(std::min(s.E, P)) *
                                 (ex.w1.expert_bytes() + ex.w3.expert_bytes() + ex.w2.expert_bytes());
                      const Experts* xp = &ex;
                      const int64_t H = s.H, I = s.I;
                      const int K = s.K;
                      p.launch = [=](cudaStream_t st) {
                        xp->w1.forward_indexed(dx, H, K, didx, P, g, I, st);
                        xp->w3.forward_indexed(dx, H, K, didx, P, u, I, st);
                        cuda::swiglu(g, u, I, P, static_cast<int>(I), limit, g, I, st);
                        xp->w2.forward_indexed(g, I, 1, didx, P, dye, H, st);
                      };
                      return p;
                    }});
    }
  }
  return cs;
}

}  // namespace kiln::ops_harness
