#include "kiln/model/flops.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln::model {

TokenFlops prefill_flops_per_token(const ModelConfig& c, int64_t tokens) {
  if (tokens < 1) fail(ErrorKind::Usage, "prefill_flops_per_token: {} tokens", tokens);
  const double H = static_cast<double>(c.hidden_size), nh = static_cast<double>(c.num_heads);
  const double hd = static_cast<double>(c.head_dim), n = static_cast<double>(c.hc_mult);
  const double ihd = static_cast<double>(c.index_head_dim), inh = static_cast<double>(c.index_n_heads);
  const double I = static_cast<double>(c.moe_intermediate_size);
  double macs = 0;          // linear multiply-adds per token
  double attn_macs = 0;     // attention multiply-adds summed over the prompt's positions
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t m = c.compress_ratio(l);
    macs += H * c.q_lora_rank + c.q_lora_rank * nh * hd;  // wq_a, wq_b
    macs += H * hd;                                        // wkv
    macs += nh * hd * c.o_lora_rank + c.o_groups * c.o_lora_rank * H;  // wo_a (grouped), wo_b
    if (m > 0) {
      const double cd = (m == 4 ? 2.0 : 1.0) * hd;
      macs += 2 * H * cd;  // compressor wkv, wgate
    }
    if (m == 4) {
      macs += c.q_lora_rank * inh * ihd + H * inh + 2 * H * (2 * ihd);  // indexer wq_b, weights_proj, its compressor
    }
    macs += 2 * (n * H) * ((2 + n) * n);  // mHC mixes before attention and before the MoE
    macs += H * static_cast<double>(c.n_routed_experts);  // router scores
    macs += 3 * H * I * static_cast<double>(c.n_shared_experts + c.num_experts_per_tok);
    for (int64_t t = 0; t < tokens; ++t) {
      double keys = static_cast<double>(std::min<int64_t>(t + 1, c.sliding_window));
      if (m > 0) {
        const int64_t entries = (t + 1) / m;  // compressed entries complete at position t
        keys += static_cast<double>(m == 4 ? std::min<int64_t>(entries, c.index_topk) : entries);
        if (m == 4) attn_macs += inh * ihd * static_cast<double>(entries);  // indexer scores
      }
      attn_macs += 2 * nh * hd * keys;  // q.k and the weighted values
    }
  }
  macs += n * H * n + H * static_cast<double>(c.vocab_size);  // hc_head, head
  return {2 * macs, 2 * attn_macs / static_cast<double>(tokens)};
}

}  // namespace kiln::model
