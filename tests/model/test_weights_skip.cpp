// LoadOptions::skip_linears / skip_embed, what the CUDA loader binds on the host: every
// linear module present with its shape but no bytes resident, the embedding's shape
// without data, and every other parameter equal to the full load's.
#include <gtest/gtest.h>

#include "kiln/artifact/plan.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/weights.h"
#include "support/artifacts.h"

namespace kiln::model {
namespace {

// Every linear of `w` and `ref` side by side.
template <typename F>
void each_linear(const Weights& w, const Weights& ref, F f) {
  f(w.head, ref.head);
  auto block = [&](const Block& a, const Block& b) {
    for (auto m : {&Attention::wq_a, &Attention::wq_b, &Attention::wkv, &Attention::wo_a, &Attention::wo_b})
      f(a.attn.*m, b.attn.*m);
    ASSERT_EQ(a.attn.compressor.has_value(), b.attn.compressor.has_value());
    if (a.attn.compressor) {
      f(a.attn.compressor->wkv, b.attn.compressor->wkv);
      f(a.attn.compressor->wgate, b.attn.compressor->wgate);
    }
    ASSERT_EQ(a.attn.indexer.has_value(), b.attn.indexer.has_value());
    if (a.attn.indexer) {
      f(a.attn.indexer->wq_b, b.attn.indexer->wq_b);
      f(a.attn.indexer->weights_proj, b.attn.indexer->weights_proj);
      f(a.attn.indexer->compressor.wkv, b.attn.indexer->compressor.wkv);
      f(a.attn.indexer->compressor.wgate, b.attn.indexer->compressor.wgate);
    }
    f(a.ffn.gate, b.ffn.gate);
    ASSERT_EQ(a.ffn.experts.size(), b.ffn.experts.size());
    for (size_t e = 0; e < a.ffn.experts.size(); ++e) {
      f(a.ffn.experts[e].w1, b.ffn.experts[e].w1);
      f(a.ffn.experts[e].w2, b.ffn.experts[e].w2);
      f(a.ffn.experts[e].w3, b.ffn.experts[e].w3);
    }
    ASSERT_EQ(a.ffn.shared.has_value(), b.ffn.shared.has_value());
    if (a.ffn.shared) {
      f(a.ffn.shared->w1, b.ffn.shared->w1);
      f(a.ffn.shared->w2, b.ffn.shared->w2);
      f(a.ffn.shared->w3, b.ffn.shared->w3);
    }
  };
  ASSERT_EQ(w.layers.size(), ref.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) block(w.layers[l], ref.layers[l]);
  ASSERT_EQ(w.mtp.size(), ref.mtp.size());
  for (size_t m = 0; m < w.mtp.size(); ++m) {
    f(w.mtp[m].e_proj, ref.mtp[m].e_proj);
    f(w.mtp[m].h_proj, ref.mtp[m].h_proj);
    block(w.mtp[m].block, ref.mtp[m].block);
  }
}

void expect_same_plain(const Weights& a, const Weights& b) {
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.hc_head.fn.data, b.hc_head.fn.data);
  EXPECT_EQ(a.hc_head.base, b.hc_head.base);
  EXPECT_EQ(a.hc_head.scale, b.hc_head.scale);
  auto block = [&](const Block& x, const Block& y) {
    EXPECT_EQ(x.attn_norm, y.attn_norm);
    EXPECT_EQ(x.ffn_norm, y.ffn_norm);
    for (auto h : {&Block::hc_attn, &Block::hc_ffn}) {
      EXPECT_EQ((x.*h).fn.data, (y.*h).fn.data);
      EXPECT_EQ((x.*h).base, (y.*h).base);
      EXPECT_EQ((x.*h).scale, (y.*h).scale);
    }
    EXPECT_EQ(x.attn.kind, y.attn.kind);
    EXPECT_EQ(x.attn.q_norm, y.attn.q_norm);
    EXPECT_EQ(x.attn.kv_norm, y.attn.kv_norm);
    EXPECT_EQ(x.attn.sink, y.attn.sink);
    if (x.attn.compressor) {
      EXPECT_EQ(x.attn.compressor->ape.data, y.attn.compressor->ape.data);
      EXPECT_EQ(x.attn.compressor->norm, y.attn.compressor->norm);
    }
    if (x.attn.indexer) {
      EXPECT_EQ(x.attn.indexer->compressor.ape.data, y.attn.indexer->compressor.ape.data);
      EXPECT_EQ(x.attn.indexer->compressor.norm, y.attn.indexer->compressor.norm);
    }
    EXPECT_EQ(x.ffn.hash, y.ffn.hash);
    EXPECT_EQ(x.ffn.bias, y.ffn.bias);
    EXPECT_EQ(x.ffn.tid2eid, y.ffn.tid2eid);
  };
  for (size_t l = 0; l < a.layers.size(); ++l) block(a.layers[l], b.layers[l]);
  for (size_t m = 0; m < a.mtp.size(); ++m) {
    EXPECT_EQ(a.mtp[m].enorm, b.mtp[m].enorm);
    EXPECT_EQ(a.mtp[m].hnorm, b.mtp[m].hnorm);
    EXPECT_EQ(a.mtp[m].norm, b.mtp[m].norm);
    EXPECT_EQ(a.mtp[m].hc_head.fn.data, b.mtp[m].hc_head.fn.data);
    block(a.mtp[m].block, b.mtp[m].block);
  }
}

void check(const std::filesystem::path& dir) {
  SCOPED_TRACE(dir.string());
  const Checkpoint ckpt = Checkpoint::open(dir);
  const Plan plan = build_plan(ckpt, load_model_config(dir));
  ASSERT_TRUE(plan.loadable());
  const Weights full = load_weights(ckpt, plan);
  LoadOptions o;
  o.skip_linears = o.skip_embed = true;
  const Weights skip = load_weights(ckpt, plan, o);

  EXPECT_GT(linear_weight_bytes(full), 0u);
  EXPECT_EQ(linear_weight_bytes(skip), 0u);  // no linear byte resident
  size_t n = 0;
  each_linear(skip, full, [&](const Linear& s, const Linear& f) {
    ++n;
    EXPECT_EQ(s.out, f.out);
    EXPECT_EQ(s.in, f.in);
    EXPECT_EQ(s.bytes(), 0u);
    EXPECT_TRUE(s.w.empty() && s.q.codes.empty() && s.q.scales.empty() && s.q.scale_codes.empty());
  });
  EXPECT_EQ(n, plan.linears.size());

  EXPECT_TRUE(skip.embed.data.empty());
  EXPECT_EQ(skip.embed.shape, full.embed.shape);
  EXPECT_EQ(plain_weight_bytes(skip) + full.embed.data.size() * 4, plain_weight_bytes(full));
  expect_same_plain(skip, full);

  // skip_linears alone keeps the embedding.
  LoadOptions lin;
  lin.skip_linears = true;
  EXPECT_EQ(load_weights(ckpt, plan, lin).embed.data, full.embed.data);
}

TEST(WeightsSkip, LinearsAndEmbeddingStayOnDiskTheRestIsEqual) {
  const std::string fx = std::string(KILN_TEST_DATA_DIR) + "/fixtures";
  check(fx + "/tiny_a/native");
  check(fx + "/tiny_a/hf");  // fused HF experts
  test::TempDir d;
  test::write_spec(test::make_spec(test::Layout::Native, test::tiny_config()), d.path());  // fp8 + mxfp4, hash layer
  check(d.path());
}

}  // namespace
}  // namespace kiln::model
