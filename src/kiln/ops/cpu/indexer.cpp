// The lightning indexer's top-k selection on the CPU (ops/cpu/attention.h indexer_select).
#include <algorithm>
#include <numeric>

#include "kiln/ops/cpu/attention.h"
#include "kiln/ops/cpu/thread_pool.h"
#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {

void indexer_select(const StepRows& rows, const float* q, const float* w, int64_t heads, int64_t head_dim,
                    float softmax_scale, int64_t topk, Selection& sel, ThreadPool* pool) {
  const int64_t T = rows.R(), ih = heads, id = head_dim;
  sel.assign(static_cast<size_t>(T), {});
  pool->parallel_for(T, 1, [&](int64_t b, int64_t e) {
    std::vector<float> score;
    std::vector<int64_t> idx;
    for (int64_t t = b; t < e; ++t) {
      const CompressorState& s = *rows.seq(t).st->icomp;
      const int64_t m = s.ratio;
      const int64_t vis = std::min((rows.pos[static_cast<size_t>(t)] + 1) / m, s.count);
      const int64_t k = std::min(topk, vis);
      auto& out = sel[static_cast<size_t>(t)];
      out.clear();
      if (k <= 0) continue;
      score.assign(static_cast<size_t>(vis), 0.0f);
      const float* qt = q + t * ih * id;
      const float* wt = w + t * ih;
      for (int64_t j = 0; j < vis; ++j) {
        const float* kj = s.entry(j);
        float acc = 0.0f;
        for (int64_t h = 0; h < ih; ++h) {
          const float dd = dot(qt + h * id, kj, id);
          acc += (std::max(dd, 0.0f) * softmax_scale) * wt[h];
        }
        score[static_cast<size_t>(j)] = acc;
      }
      idx.resize(static_cast<size_t>(vis));
      std::iota(idx.begin(), idx.end(), int64_t{0});
      auto better = [&](int64_t i, int64_t j) {
        const float a = score[static_cast<size_t>(i)], bb = score[static_cast<size_t>(j)];
        return a > bb || (a == bb && i < j);
      };
      if (k < vis) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
      out.assign(idx.begin(), idx.begin() + k);
      std::sort(out.begin(), out.end());
    }
  });
}

}  // namespace kiln::ops::cpu
