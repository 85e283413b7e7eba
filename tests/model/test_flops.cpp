// FLOPs per token from the config (model/flops.h) against DeepSeek's published figure for
// V4-Flash (13B activated parameters per token: the linear multiply-adds a token goes
// through, its embedding row aside) and against the attention key count by hand.
#include <gtest/gtest.h>

#include "kiln/core/error.h"
#include "kiln/model/flops.h"
#include "kiln/model/synthetic.h"

namespace kiln::model {
namespace {

TEST(Flops, V4FlashLinearsMatchItsThirteenBillionActivatedParameters) {
  const ModelConfig c = flash_shaped_config(43, false);
  const TokenFlops f = prefill_flops_per_token(c, 1);
  const double activated = f.linear / 2 + static_cast<double>(c.vocab_size * c.hidden_size);  // + the embedding row
  EXPECT_GT(activated, 12.5e9);
  EXPECT_LT(activated, 14.5e9);
}

TEST(Flops, AttentionCountsTheKeysEachPositionSees) {
  const ModelConfig c = flash_shaped_config(4, false);
  const double per_key = 2.0 * 2.0 * static_cast<double>(c.num_heads * c.head_dim);  // q.k and p.v, 2 FLOPs a MAC
  // Position 0 sees one key (itself) in every layer and no compressed entry.
  EXPECT_DOUBLE_EQ(prefill_flops_per_token(c, 1).attention, per_key * static_cast<double>(c.num_layers));
  // Two positions: 1 and 2 window keys; no block of any ratio is complete before position 3.
  EXPECT_DOUBLE_EQ(prefill_flops_per_token(c, 2).attention, per_key * 1.5 * static_cast<double>(c.num_layers));
  // The linears do not depend on the position.
  EXPECT_DOUBLE_EQ(prefill_flops_per_token(c, 1).linear, prefill_flops_per_token(c, 4096).linear);
  // Long prompts: the window is full and compressed entries add keys.
  EXPECT_GT(prefill_flops_per_token(c, 8192).attention,
            per_key * static_cast<double>(c.sliding_window * c.num_layers) * 0.9);
  EXPECT_THROW(prefill_flops_per_token(c, 0), Error);
}

}  // namespace
}  // namespace kiln::model
