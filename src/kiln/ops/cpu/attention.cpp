// The attention core on the CPU (ops/cpu/attention.h attention): key lists per row from the
// window ring, this step's rows and the compressed entries, softmax with a sink, and the
// window rings updated with the step's rows.
#include "kiln/ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {

void attend_head(const float* q, std::span<const float* const> keys, float sink, float scale, int64_t dim,
                 std::vector<float>& scratch, float* o, AttnNumerics num) {
  std::vector<float>& s = scratch;
  s.resize(keys.size());
  // Fp32: logits s, reference their max, weights exp(s - m). Bf16: the same in base 2 against
  // the power of two above the largest logit (ops/attention_kinds.h), each weight rounded to
  // bf16 in the numerator only.
  const bool bf16 = num == AttnNumerics::Bf16;
  const auto logit = [bf16](float x) { return bf16 ? x * kAttnLog2e : x; };
  const auto weight = [bf16](float t, float m) { return bf16 ? std::exp2(t - m) : std::exp(t - m); };
  const float ts = logit(sink);
  float mx = ts;
  for (size_t k = 0; k < keys.size(); ++k) {
    s[k] = logit(dot(q, keys[k], dim) * scale);
    mx = std::max(mx, s[k]);
  }
  if (bf16) mx = std::ceil(mx);
  float sum = 0.0f;
  for (size_t k = 0; k < keys.size(); ++k) {
    s[k] = weight(s[k], mx);
    sum += s[k];
  }
  sum += weight(ts, mx);
  for (size_t k = 0; k < keys.size(); ++k) axpy((bf16 ? bf16_to_f32(f32_to_bf16(s[k])) : s[k]) / sum, keys[k], o, dim);
}

void attention(const StepRows& rows, const float* q, const float* kv, int64_t heads, int64_t dim, float scale,
               const float* sink, int64_t window, AttnKeys keys, const Selection& sel, float* o, ThreadPool* pool,
               AttnNumerics num) {
  const int64_t T = rows.R(), nh = heads, D = dim, Wn = window;
  // Key lists per query: window positions max(0, p-W+1)..p (transformers' sliding mask
  // kv_idx > q_idx - sliding_window), then the compressed entries.
  std::vector<std::vector<const float*>> key_rows(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const SeqRows& g = rows.seq(t);
    const AttentionState& st = *g.st;
    const int64_t p = rows.pos[static_cast<size_t>(t)], P0 = g.P0;
    auto& ks = key_rows[static_cast<size_t>(t)];
    for (int64_t qp = std::max<int64_t>(0, p - Wn + 1); qp <= p; ++qp) {
      ks.push_back(qp >= P0 ? kv + (g.row0 + qp - P0) * D : st.window.data() + (qp % st.cap) * D);
    }
    if (keys == AttnKeys::WindowAndSelected) {
      for (int64_t j : sel[static_cast<size_t>(t)]) ks.push_back(st.comp->entry(j));
    } else if (keys == AttnKeys::WindowAndAll) {
      const int64_t vis = std::min((p + 1) / st.comp->ratio, st.comp->count);
      for (int64_t j = 0; j < vis; ++j) ks.push_back(st.comp->entry(j));
    }
  }

  std::fill(o, o + T * nh * D, 0.0f);
  pool->parallel_for(T * nh, 1, [&](int64_t b, int64_t e) {
    std::vector<float> s;
    for (int64_t it = b; it < e; ++it) {
      const int64_t t = it / nh, h = it % nh;
      attend_head(q + (t * nh + h) * D, key_rows[static_cast<size_t>(t)], sink[h], scale, D, s, o + (t * nh + h) * D,
                  num);
    }
  });

  // Each sequence's window ring keeps its last `cap` rows.
  for (const SeqRows& g : rows.seqs) {
    AttentionState& st = *g.st;
    for (int64_t t = std::max<int64_t>(0, g.T - st.cap); t < g.T; ++t) {
      std::memcpy(st.window.data() + ((g.P0 + t) % st.cap) * D, kv + (g.row0 + t) * D,
                  static_cast<size_t>(D) * sizeof(float));
    }
  }
}

}  // namespace kiln::ops::cpu
