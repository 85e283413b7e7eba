// The harness's cases of the small ops: norms, rope, scale_rows, mHC, SwiGLU, MoE routing and
// combine, argmax, embeddings and the MTP broadcast add. Each runs the ops/cpu function (or
// model::CpuOps, where the CPU op is a member of the ops interface's CPU implementation)
// and the ops/cuda launcher on the same random inputs.
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "harness.h"
#include "kiln/model/cpu_ops.h"
#include "kiln/ops/cpu/hyper_connection.h"
#include "kiln/ops/cpu/moe.h"
#include "kiln/ops/cpu/moe_route.h"
#include "kiln/ops/cpu/norm.h"
#include "kiln/ops/cpu/rope.h"
#include "kiln/ops/cuda/copy_rows.h"
#include "kiln/ops/cuda/elementwise.h"
#include "kiln/ops/cuda/hyper_connection.h"
#include "kiln/ops/cuda/moe.h"
#include "kiln/ops/cuda/norm.h"
#include "kiln/ops/cuda/rope.h"
#include "kiln/runtime/sampler.h"
#include "ops_cpu_model.h"

namespace kiln::ops_harness {

namespace cpu = kiln::ops::cpu;
namespace cuda = kiln::ops::cuda;

// ---- norms ------------------------------------------------------------------------------

std::vector<Case> rmsnorm_cases() {
  struct S { int rows, n; int64_t ldx, ldy; bool weighted; };
  std::vector<Case> cs;
  for (const S s : {S{1, 1, 1, 1, true}, S{3, 7, 9, 8, true}, S{5, 4099, 4100, 4099, false}, S{8, 1536, 1536, 1536, true},
                    S{4, 7168, 7168, 7168, true}, S{64 * 4, 512, 512, 512, false}, S{64, 4096, 4096, 4096, true}}) {
    cs.push_back({dims({{"rows", s.rows}, {"n", s.n}, {"ldx", s.ldx}, {"ldy", s.ldy}}), s.weighted ? "weighted" : "unweighted",
                  [s] {
                    Prepared p;
                    const auto x = uniform(static_cast<size_t>(s.rows * s.ldx), -3.0f, 3.0f, 21 + s.n);
                    const auto w = uniform(static_cast<size_t>(s.n), 0.5f, 1.5f, 22);
                    std::vector<float> want(static_cast<size_t>(s.rows * s.ldy), 0.0f);
                    cpu::rmsnorm(x.data(), s.ldx, s.rows, s.n, s.weighted ? w.data() : nullptr, 1e-6f, want.data(), s.ldy);
                    const float* dx = p.in(x);
                    const float* dw = s.weighted ? p.in(w) : nullptr;
                    float* dy = p.out("y", want);
                    p.outputs.back().rows = s.rows, p.outputs.back().ld = s.ldy, p.outputs.back().n = s.n;
                    p.launch = [=](cudaStream_t st) { cuda::rmsnorm(dx, s.ldx, s.rows, s.n, dw, 1e-6f, dy, s.ldy, st); };
                    return p;
                  }});
  }
  return cs;
}

// ---- rope (forward and inverse; default and YaRN frequencies) -----------------------------

std::vector<Case> rope_cases() {
  struct S { int R, heads, n; int64_t head_stride, ld; int dim; bool yarn; };
  std::vector<Case> cs;
  for (const S s : {S{5, 3, 72, 80, 3 * 80 + 5, 64, true}, S{4, 64, 512, 512, 64 * 512, 64, false},
                    S{32, 64, 512, 512, 64 * 512, 64, true}, S{3, 1, 512, 512, 512, 64, true}, S{7, 16, 128, 128, 16 * 128, 64, false}}) {
    for (bool inverse : {false, true}) {
      std::string scheme = std::string(s.yarn ? "yarn" : "default") + (inverse ? " inverse" : " forward");
      cs.push_back({dims({{"R", s.R}, {"heads", s.heads}, {"n", s.n}, {"head_stride", s.head_stride}, {"ld", s.ld}, {"dim", s.dim}}),
                    scheme, [s, inverse] {
                      Prepared p;
                      cpu::RopeSpec spec;
                      spec.dim = s.dim;
                      spec.theta = s.yarn ? 160000.0 : 10000.0;
                      spec.yarn = s.yarn;
                      spec.factor = 16.0;
                      spec.original_max_position = 1024;
                      const cpu::Rope rope(spec);
                      const int64_t max_pos = 8192;
                      auto& table = p.hold<cuda::RopeTable>(rope, max_pos);
                      std::vector<int32_t> pos(static_cast<size_t>(s.R));
                      for (int r = 0; r < s.R; ++r) pos[static_cast<size_t>(r)] = static_cast<int32_t>((r * 977 + 3) % max_pos);
                      pos[0] = 0;
                      if (s.R > 1) pos[1] = static_cast<int32_t>(max_pos - 1);
                      const auto x = uniform(static_cast<size_t>(s.R * s.ld), -2.0f, 2.0f, 11 + s.n);
                      std::vector<float> want = x;
                      for (int r = 0; r < s.R; ++r) {
                        rope.apply_heads(want.data() + r * s.ld, s.heads, s.n, s.head_stride, pos[static_cast<size_t>(r)], inverse);
                      }
                      const cuda::StepRows rows = step_rows(p, std::vector<int32_t>(pos.size(), 0), pos);
                      float* dx = p.inout("x", x, want);  // the gaps between heads must stay as they were
                      const cuda::RopeView view = table.view();
                      p.launch = [=](cudaStream_t st) { cuda::rope_rows(rows, dx, s.ld, s.heads, s.head_stride, s.n, view, inverse, st); };
                      return p;
                    }});
    }
  }
  return cs;
}

// ---- scale_rows (model::CpuOps::scale_rows) -----------------------------------------------

std::vector<Case> scale_rows_cases() {
  struct S { int R, n; int64_t ld; };
  std::vector<Case> cs;
  for (const S s : {S{1, 64, 64}, S{5, 13, 17}, S{64, 64, 64}}) {
    cs.push_back({dims({{"R", s.R}, {"n", s.n}, {"ld", s.ld}}), "fp32", [s] {
                    Prepared p;
                    CpuModel m;
                    const auto x = uniform(static_cast<size_t>(s.R * s.ld), -3.0f, 3.0f, 31);
                    std::vector<float> want = x;
                    const float f = 0.125f * 1.1f;
                    m.ops(std::vector<int32_t>(static_cast<size_t>(s.R), 0)).scale_rows(want.data(), s.ld, s.R, s.n, f);
                    float* dx = p.inout("x", x, want);
                    p.launch = [=](cudaStream_t st) { cuda::scale_rows(dx, s.ld, s.R, s.n, f, st); };
                    return p;
                  }});
  }
  return cs;
}

// ---- mHC --------------------------------------------------------------------------------

namespace {
struct HcShape { int n, H, R, iters; };
// Prompt-sized steps too (300 and 260 rows).
const HcShape kHcShapes[] = {{4, 7168, 1, 20}, {4, 7168, 3, 20}, {4, 4096, 64, 20}, {4, 129, 5, 20},
                             {2, 33, 2, 3},    {4, 64, 1, 1},    {4, 4096, 300, 20}, {4, 129, 260, 20}};

std::vector<float> hc_fn(int rows, int W, uint32_t seed) {
  // scaled by 1/sqrt(W) so the mixes are O(1): the sigmoids and softmax are not saturated
  auto fn = uniform(static_cast<size_t>(rows) * static_cast<size_t>(W), -1.0f, 1.0f, seed);
  for (float& v : fn) v *= 1.7f / std::sqrt(static_cast<float>(W));
  return fn;
}
}  // namespace

std::vector<Case> hc_pre_cases() {
  std::vector<Case> cs;
  for (const HcShape c : kHcShapes) {
    cs.push_back({dims({{"n", c.n}, {"H", c.H}, {"R", c.R}, {"sinkhorn", c.iters}}), "fp32", [c] {
                    Prepared p;
                    const int W = c.n * c.H, mix = (2 + c.n) * c.n;
                    const auto X = uniform(static_cast<size_t>(c.R * W), -2.0f, 2.0f, 31 + c.H);
                    const auto fn = hc_fn(mix, W, 32);
                    const auto base = uniform(static_cast<size_t>(mix), -0.5f, 0.5f, 33);
                    const std::vector<float> scale = {0.8f, 1.1f, 1.6f};
                    cpu::HcParams h;
                    h.n = c.n;
                    h.hidden = c.H;
                    h.fn = fn.data();
                    h.base = base.data();
                    h.scale = scale.data();
                    h.sinkhorn_iters = c.iters;
                    h.hc_eps = 1e-6f;
                    h.norm_eps = 1e-6f;
                    std::vector<float> col(static_cast<size_t>(c.R * c.H)), post(static_cast<size_t>(c.R * c.n)),
                        comb(static_cast<size_t>(c.R * c.n * c.n));
                    cpu::hc_pre(h, X.data(), c.R, col.data(), post.data(), comb.data(), nullptr);
                    cuda::HcParams d = h;
                    d.fn = p.in(fn);
                    d.base = p.in(base);
                    d.scale = p.in(scale);
                    d.workspace = p.hold<Dev<float>>(static_cast<size_t>(cuda::hc_pre_workspace_floats(c.R, c.n, c.H))).get();
                    const float* dX = p.in(X);
                    float* dcol = p.out("collapsed", col);
                    float* dpost = p.out("post", post);
                    float* dcomb = p.out("comb", comb);
                    p.launch = [=](cudaStream_t st) { cuda::hc_pre(d, dX, c.R, dcol, dpost, dcomb, st); };
                    return p;
                  }});
  }
  return cs;
}

std::vector<Case> hc_post_cases() {
  std::vector<Case> cs;
  for (const HcShape c : kHcShapes) {
    cs.push_back({dims({{"n", c.n}, {"H", c.H}, {"R", c.R}}), "fp32", [c] {
                    Prepared p;
                    const auto X = uniform(static_cast<size_t>(c.R * c.n * c.H), -2.0f, 2.0f, 41);
                    const auto y = uniform(static_cast<size_t>(c.R * c.H), -2.0f, 2.0f, 42);
                    const auto post = uniform(static_cast<size_t>(c.R * c.n), 0.0f, 2.0f, 43);
                    const auto comb = uniform(static_cast<size_t>(c.R * c.n * c.n), 0.0f, 1.0f, 44);
                    std::vector<float> want(X.size());
                    cpu::hc_post(c.n, c.H, X.data(), c.R, y.data(), post.data(), comb.data(), want.data());
                    const float *dX = p.in(X), *dy = p.in(y), *dpost = p.in(post), *dcomb = p.in(comb);
                    float* dout = p.out("out", want);
                    p.launch = [=](cudaStream_t st) { cuda::hc_post(c.n, c.H, dX, c.R, dy, dpost, dcomb, dout, st); };
                    return p;
                  }});
  }
  return cs;
}

std::vector<Case> hc_head_cases() {
  std::vector<Case> cs;
  for (const HcShape c : {HcShape{4, 7168, 1, 0}, HcShape{4, 7168, 3, 0}, HcShape{4, 4096, 64, 0}, HcShape{4, 129, 4, 0},
                          HcShape{1, 50, 2, 0}}) {
    cs.push_back({dims({{"n", c.n}, {"H", c.H}, {"R", c.R}}), "fp32", [c] {
                    Prepared p;
                    const int W = c.n * c.H;
                    const auto X = uniform(static_cast<size_t>(c.R * W), -2.0f, 2.0f, 51);
                    const auto fn = hc_fn(c.n, W, 52);
                    const auto base = uniform(static_cast<size_t>(c.n), -0.5f, 0.5f, 53);
                    const float scale = 0.9f, hc_eps = 1e-6f, norm_eps = 1e-6f;
                    std::vector<float> want(static_cast<size_t>(c.R * c.H));
                    cpu::hc_head(c.n, c.H, fn.data(), base.data(), scale, hc_eps, norm_eps, X.data(), c.R, want.data(), nullptr);
                    const float *dX = p.in(X), *dfn = p.in(fn), *dbase = p.in(base);
                    float* dh = p.out("h", want);
                    p.launch = [=](cudaStream_t st) { cuda::hc_head(c.n, c.H, dfn, dbase, scale, hc_eps, norm_eps, dX, c.R, dh, st); };
                    return p;
                  }});
  }
  return cs;
}

// ---- MoE pieces -------------------------------------------------------------------------

std::vector<Case> swiglu_cases() {
  // row_weight: each row times its routing weight after the SwiGLU (deepseek's routed experts).
  struct S { int rows, I; int64_t ld, ldo; float limit; bool alias, row_weight = false; };
  std::vector<Case> cs;
  for (const S s : {S{5, 1003, 1010, 1007, 7.0f, false}, S{5, 1003, 1010, 1010, 7.0f, true}, S{5, 1003, 1003, 1003, 0.0f, false},
                    S{48, 2048, 2048, 2048, 10.0f, true}, S{1, 3072, 3072, 3072, 10.0f, false},
                    S{6, 1003, 1010, 1007, 7.0f, false, true}, S{48, 2048, 2048, 2048, 10.0f, true, true}}) {
    cs.push_back({dims({{"rows", s.rows}, {"I", s.I}, {"ld", s.ld}, {"ldo", s.ldo}}),
                  "limit " + std::to_string(static_cast<int>(s.limit)) + (s.alias ? " in place" : "") +
                      (s.row_weight ? ", row weights" : ""),
                  [s] {
                    Prepared p;
                    const auto g = uniform(static_cast<size_t>(s.rows * s.ld), -12.0f, 12.0f, 81);
                    const auto u = uniform(static_cast<size_t>(s.rows * s.ld), -12.0f, 12.0f, 82);
                    const int64_t ldo = s.alias ? s.ld : s.ldo;
                    std::vector<float> want(static_cast<size_t>(s.rows * ldo), 0.0f);
                    const auto w = uniform(static_cast<size_t>(s.rows), 0.0f, 2.0f, 83);
                    for (int r = 0; r < s.rows; ++r) {
                      float* o = want.data() + r * ldo;
                      cpu::swiglu(g.data() + r * s.ld, u.data() + r * s.ld, s.I, s.limit, o);
                      if (s.row_weight) {
                        for (int i = 0; i < s.I; ++i) o[i] *= w[static_cast<size_t>(r)];
                      }
                    }
                    const float* du = p.in(u);
                    const float* dw = s.row_weight ? p.in(w) : nullptr;
                    float *dg, *dout;
                    if (s.alias) {
                      dg = dout = p.inout("out", g, want);
                    } else {
                      dg = p.in(g);
                      dout = p.out("out", want);
                    }
                    p.outputs.back().rows = s.rows, p.outputs.back().ld = ldo, p.outputs.back().n = s.I;
                    p.launch = [=](cudaStream_t st) { cuda::swiglu(dg, du, s.ld, s.rows, s.I, s.limit, dout, ldo, st, dw); };
                    return p;
                  }});
  }
  return cs;
}

std::vector<Case> moe_route_cases() {
  struct S { int E, K, R; int64_t ldl; bool hash; };
  std::vector<Case> cs;
  for (const ScoringFunc f : {ScoringFunc::SqrtSoftplus, ScoringFunc::Softmax, ScoringFunc::Sigmoid}) {
    for (const S s : {S{384, 8, 9, 384, false}, S{257, 6, 5, 260, false}, S{8, 8, 2, 8, false}, S{256, 8, 64, 256, false},
                      S{384, 6, 7, 390, true}}) {
      cs.push_back({dims({{"E", s.E}, {"K", s.K}, {"R", s.R}, {"ldl", s.ldl}}),
                    std::string(scoring_func_name(f)) + (s.hash ? " hash" : " score"), [s, f] {
                      Prepared p;
                      auto logits = uniform(static_cast<size_t>(s.R * s.ldl), -4.0f, 4.0f, 61 + s.E);
                      auto bias = uniform(static_cast<size_t>(s.E), -0.2f, 0.2f, 62);
                      // Row 0: every expert scores the same, even ids biased equally above odd:
                      // exact ties resolved to the lowest ids. Row 1: three experts share the best.
                      for (int e = 0; e < s.E; ++e) logits[static_cast<size_t>(e)] = 0.3f;
                      for (int e = 0; e < s.E; e += 2) bias[static_cast<size_t>(e)] = 0.25f;
                      if (s.E > 200) {
                        for (int e : {6, 200, 18}) logits[static_cast<size_t>(s.ldl + e)] = 9.0f;
                      }
                      if (s.R > 2) logits[static_cast<size_t>(2 * s.ldl + 3)] = 25.0f;  // softplus' x > 20 branch
                      const int vocab = 50;
                      std::vector<int32_t> tid2eid(static_cast<size_t>(vocab * s.K)), tok(static_cast<size_t>(s.R));
                      std::mt19937 g(72);
                      for (int32_t& e : tid2eid) e = static_cast<int32_t>(g() % static_cast<uint32_t>(s.E));
                      for (int r = 0; r < s.R; ++r) tok[static_cast<size_t>(r)] = (r * 17 + 3) % vocab;
                      std::vector<float> packed(static_cast<size_t>(s.R * s.E));  // the CPU op takes contiguous rows
                      for (int r = 0; r < s.R; ++r) {
                        std::memcpy(packed.data() + r * s.E, logits.data() + r * s.ldl, static_cast<size_t>(s.E) * 4);
                      }
                      std::vector<int64_t> idx(static_cast<size_t>(s.R * s.K));
                      std::vector<float> wt(idx.size());
                      const float rsf = 2.5f;
                      cpu::moe_route(f, packed.data(), s.R, s.E, s.K, s.hash ? nullptr : bias.data(),
                                     s.hash ? tid2eid.data() : nullptr, tok.data(), rsf, idx.data(), wt.data());
                      const cuda::StepRows rows = step_rows(p, tok, std::vector<int32_t>(tok.size(), 0));
                      const float* dl = p.in(logits);
                      const float* db = s.hash ? nullptr : p.in(bias);
                      const int32_t* dt = s.hash ? p.in(tid2eid) : nullptr;
                      int32_t* didx = p.out_index("idx", idx);
                      float* dwt = p.out("wt", wt);
                      p.launch = [=](cudaStream_t st) { cuda::moe_route(rows, f, dl, s.ldl, s.E, s.K, db, dt, rsf, didx, dwt, st); };
                      return p;
                    }});
    }
  }
  return cs;
}

std::vector<Case> moe_combine_cases() {
  // weighted: the exact precision's combine; unweighted (wt null): deepseek's, whose
  // pairs were weighted before w2.
  struct S { int R, K, H, E; int64_t ldy; bool shared, weighted = true; };
  std::vector<Case> cs;
  for (const S s : {S{4, 6, 301, 40, 310, false}, S{4, 6, 301, 40, 301, true}, S{1, 8, 7168, 384, 7168, true},
                    S{64, 6, 4096, 256, 4096, true}, S{5, 6, 301, 40, 310, true, false}, S{1, 8, 7168, 384, 7168, false, false}}) {
    const std::string label = std::string(s.shared ? "with shared" : "routed only") + (s.weighted ? "" : ", unweighted");
    cs.push_back({dims({{"R", s.R}, {"K", s.K}, {"H", s.H}, {"ldy", s.ldy}}), label, [s] {
                    Prepared p;
                    const auto y = uniform(static_cast<size_t>(s.R * s.K * s.ldy), -3.0f, 3.0f, 91);
                    const auto wt = uniform(static_cast<size_t>(s.R * s.K), 0.0f, 1.0f, 92);
                    const auto shared = uniform(static_cast<size_t>(s.R * s.H), -1.0f, 1.0f, 93);
                    // unsorted ids; every other row repeats an expert (hash routing may): equal
                    // ids add in k order
                    std::vector<int32_t> idx(static_cast<size_t>(s.R * s.K));
                    std::mt19937 g(94);
                    for (int32_t& e : idx) e = static_cast<int32_t>(g() % static_cast<uint32_t>(s.E));
                    for (int r = 0; r < s.R; r += 2) idx[static_cast<size_t>(r * s.K + s.K - 1)] = idx[static_cast<size_t>(r * s.K)];
                    std::vector<float> packed(static_cast<size_t>(s.R * s.K * s.H));
                    for (int i = 0; i < s.R * s.K; ++i) std::memcpy(packed.data() + i * s.H, y.data() + i * s.ldy, static_cast<size_t>(s.H) * 4);
                    const std::vector<int64_t> idx64(idx.begin(), idx.end());
                    std::vector<float> want(static_cast<size_t>(s.R * s.H));
                    cpu::moe_combine(packed.data(), idx64.data(), s.weighted ? wt.data() : nullptr, s.R, s.K, s.H,
                                     s.shared ? shared.data() : nullptr, want.data());
                    const float *dy = p.in(y), *dwt = s.weighted ? p.in(wt) : nullptr, *dsh = s.shared ? p.in(shared) : nullptr;
                    const int32_t* didx = p.in(idx);
                    float* dout = p.out("out", want);
                    p.launch = [=](cudaStream_t st) { cuda::moe_combine(dy, s.ldy, didx, dwt, s.R, s.K, s.H, dsh, dout, st); };
                    return p;
                  }});
  }
  return cs;
}

// ---- rows in and out --------------------------------------------------------------------

// runtime::argmax (the CPU backend's greedy pick) per row: finite logits with exact ties
// (its NaN rule differs from the kernel's; tests/gpu/test_small_kernels_cuda.cpp checks NaN).
std::vector<Case> argmax_cases() {
  struct S { int R, V; int64_t ld; };
  std::vector<Case> cs;
  for (const S s : {S{7, 160007, 160016}, S{64, 129280, 129280}, S{1, 129280, 129280}, S{3, 5, 8}}) {
    cs.push_back({dims({{"R", s.R}, {"V", s.V}, {"ld", s.ld}}), "fp32", [s] {
                    Prepared p;
                    auto logits = uniform(static_cast<size_t>(s.R * s.ld), -10.0f, 10.0f, 111);
                    auto at = [&](int r, int v) -> float& { return logits[static_cast<size_t>(r * s.ld + v)]; };
                    if (s.R > 1) at(1, s.V - 1) = at(1, s.V / 2) = 50.0f;  // an exact tie: the lower id
                    if (s.R > 2) {
                      for (int v = 0; v < s.V; ++v) at(2, v) = 1.25f;  // all equal: 0
                    }
                    if (s.R > 3) at(3, s.V - 1) = 30.0f;  // the last element; the gap after V is larger
                    for (int r = 0; r < s.R; ++r) {
                      for (int64_t v = s.V; v < s.ld; ++v) at(r, static_cast<int>(v)) = 1000.0f;
                    }
                    std::vector<int32_t> want(static_cast<size_t>(s.R));
                    for (int r = 0; r < s.R; ++r) want[static_cast<size_t>(r)] = runtime::argmax(std::span(&at(r, 0), static_cast<size_t>(s.V)));
                    const float* dl = p.in(logits);
                    int32_t* dout = p.out_index("argmax", want);
                    p.launch = [=](cudaStream_t st) { cuda::argmax_rows(dl, s.ld, s.R, s.V, dout, st); };
                    return p;
                  }});
  }
  return cs;
}

std::vector<Case> embed_cases() {
  struct S { int vocab, H, n, R; };
  std::vector<Case> cs;
  for (const S s : {S{37, 130, 4, 5}, S{1000, 4096, 4, 64}, S{1000, 7168, 4, 1}}) {
    for (bool streams : {true, false}) {
      cs.push_back({dims({{"vocab", s.vocab}, {"H", s.H}, {"n", s.n}, {"R", s.R}}), streams ? "streams" : "rows", [s, streams] {
                      Prepared p;
                      CpuModel m(s.H, s.n);
                      m.embed.shape = {s.vocab, s.H};
                      m.embed.data = uniform(static_cast<size_t>(s.vocab * s.H), -1.0f, 1.0f, 101);
                      std::vector<int32_t> tok(static_cast<size_t>(s.R));
                      for (int r = 0; r < s.R; ++r) tok[static_cast<size_t>(r)] = (r * 31 + 7) % s.vocab;
                      if (s.R > 3) tok[3] = tok[2];
                      std::vector<float> want(static_cast<size_t>(s.R * (streams ? s.n : 1) * s.H));
                      auto& ops = m.ops(tok);
                      if (streams) ops.embed_streams(m.embed, want.data());
                      else ops.embed_rows(m.embed, want.data());
                      const cuda::StepRows rows = step_rows(p, tok, std::vector<int32_t>(tok.size(), 0));
                      const float* de = p.hold<Dev<float>>(m.embed.data).get();  // read: only R rows of it
                      p.bytes += static_cast<int64_t>(s.R) * s.H * 4;
                      float* dout = p.out("out", want);
                      p.launch = [=](cudaStream_t st) {
                        if (streams) cuda::embed_streams(rows, de, s.H, s.n, dout, st);
                        else cuda::embed_rows(rows, de, s.H, dout, st);
                      };
                      return p;
                    }});
    }
  }
  return cs;
}

std::vector<Case> add_broadcast_streams_cases() {
  struct S { int H, n, R; };
  std::vector<Case> cs;
  for (const S s : {S{130, 4, 5}, S{7168, 4, 3}, S{4096, 4, 64}}) {
    for (bool in_place : {false, true}) {
      cs.push_back({dims({{"H", s.H}, {"n", s.n}, {"R", s.R}}), in_place ? "in place" : "fp32", [s, in_place] {
                      Prepared p;
                      CpuModel m(s.H, s.n);
                      const auto ep = uniform(static_cast<size_t>(s.R * s.H), -1.0f, 1.0f, 102);
                      const auto hp = uniform(static_cast<size_t>(s.R * s.n * s.H), -1.0f, 1.0f, 103);
                      std::vector<float> want(hp.size());
                      m.ops(std::vector<int32_t>(static_cast<size_t>(s.R), 0)).add_broadcast_streams(ep.data(), hp.data(), want.data());
                      const float* dep = p.in(ep);
                      float *dhp, *dX;
                      if (in_place) {
                        dhp = dX = p.inout("X", hp, want);
                      } else {
                        dhp = p.in(hp);
                        dX = p.out("X", want);
                      }
                      p.launch = [=](cudaStream_t st) { cuda::add_broadcast_streams(dep, dhp, s.R, s.n, s.H, dX, st); };
                      return p;
                    }});
    }
  }
  return cs;
}

}  // namespace kiln::ops_harness
