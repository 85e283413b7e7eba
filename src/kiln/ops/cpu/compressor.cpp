// The compressor of CSA/HCA attention and of the lightning indexer on the CPU
// (ops/cpu/attention.h compressor_feed).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cpu/attention.h"
#include "kiln/ops/cpu/norm.h"

namespace kiln::ops::cpu {

namespace {

// Emits entry j = count from block j's rows (positions j*ratio ..) and, for overlap,
// block j-1's first-half rows, all read from the ring.
void emit(CompressorState& s, const float* norm, float eps, const Rope& rope, AttnNumerics num) {
  const int64_t m = s.ratio, d = s.dim, j = s.count;
  // Pool per channel with a softmax over the rows: for overlap, rows 0..m-1 are the
  // previous block's first-half channels (absent = weight 0 before the first entry),
  // rows m..2m-1 this block's second-half channels; otherwise the m rows of this block.
  const int64_t off = s.overlap ? d : 0;
  std::vector<float> out(static_cast<size_t>(d), 0.0f);
  const int64_t rows = s.overlap ? 2 * m : m;
  std::vector<float> sc(static_cast<size_t>(rows)), kv(static_cast<size_t>(rows));
  for (int64_t ch = 0; ch < d; ++ch) {
    int64_t k = 0;
    if (s.overlap && j > 0) {
      for (int64_t i = 0; i < m; ++i, ++k) {
        const int64_t p = (j - 1) * m + i;
        sc[static_cast<size_t>(k)] = s.score_row(p)[ch];
        kv[static_cast<size_t>(k)] = s.kv_row(p)[ch];
      }
    }
    for (int64_t i = 0; i < m; ++i, ++k) {
      const int64_t p = j * m + i;
      sc[static_cast<size_t>(k)] = s.score_row(p)[off + ch];
      kv[static_cast<size_t>(k)] = s.kv_row(p)[off + ch];
    }
    float mx = -INFINITY;
    for (int64_t i = 0; i < k; ++i) mx = std::max(mx, sc[static_cast<size_t>(i)]);
    float sum = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      sc[static_cast<size_t>(i)] = std::exp(sc[static_cast<size_t>(i)] - mx);
      sum += sc[static_cast<size_t>(i)];
    }
    float acc = 0.0f;
    for (int64_t i = 0; i < k; ++i) acc += kv[static_cast<size_t>(i)] * (sc[static_cast<size_t>(i)] / sum);
    out[static_cast<size_t>(ch)] = acc;
  }
  // DeepSeek's Compressor holds the pooled vector, the norm's output and the rotated entry
  // in bf16 (`kv.to(dtype)`, RMSNorm's cast back, the bf16 cache).
  const bool bf16 = num == AttnNumerics::Bf16;
  if (bf16) round_bf16(out.data(), d, 1, d, out.data(), d);
  rmsnorm(out.data(), 1, d, norm, eps, out.data());
  if (bf16) round_bf16(out.data(), d, 1, d, out.data(), d);
  // Rotated at the block's first position j * ratio (transformers: positions =
  // i * compress_rate + first_window_position).
  rope.apply(out.data(), d, j * m);
  if (bf16) round_bf16(out.data(), d, 1, d, out.data(), d);
  s.entries.insert(s.entries.end(), out.begin(), out.end());
  ++s.count;
}

}  // namespace

void compressor_feed(const StepRows& rows, CompressorRole role, const float* a, const float* z, const float* ape,
                     const float* norm, float eps, const Rope& rope, AttnNumerics num) {
  for (const SeqRows& g : rows.seqs) {
    CompressorState& s = role == CompressorRole::Attention ? *g.st->comp : *g.st->icomp;
    const int64_t m = s.ratio, W = s.width;
    const float* ga = a + g.row0 * W;
    const float* gz = z + g.row0 * W;
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t p = g.P0 + t;  // == s.length
      const float* ap = ape + (p % m) * W;
      std::memcpy(s.kv_row(p), ga + t * W, static_cast<size_t>(W) * sizeof(float));
      float* sc = s.score_row(p);
      for (int64_t i = 0; i < W; ++i) sc[i] = gz[t * W + i] + ap[i];
      if (++s.length % m == 0) emit(s, norm, eps, rope, num);
    }
  }
}

}  // namespace kiln::ops::cpu
