// The GPU memory plan without a GPU: how many sequences fit (a pure function of the sizes,
// the device's bytes and the options), the error naming bytes when the model does not
// fit, the prepared layout of every linear scheme, the per-sequence decode state and the
// activation sizes, and the weights' walk against an independent count over the plan.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "kiln/artifact/plan.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint.h"
#include "kiln/model/decode_contract.h"
#include "kiln/model/gpu_memory.h"
#include "kiln/model/linear_source.h"
#include "kiln/model/weights.h"
#include "kiln/ops/device_sizes.h"
#include "support/artifacts.h"

namespace kiln::model {
namespace {

namespace dev = ops::device;

GpuMemoryNeeds needs(double weights_gb, double act_gb, double slot_gb) {
  GpuMemoryNeeds n;
  n.weights = static_cast<int64_t>(weights_gb * 1e9);
  n.activations = static_cast<int64_t>(act_gb * 1e9);
  n.per_slot = static_cast<int64_t>(slot_gb * 1e9);
  n.max_rows = 64;
  n.max_context = 4096;
  return n;
}

constexpr int64_t kTotal = 80'000'000'000, kFree = 79'000'000'000;

TEST(GpuMemoryPlan, SequencesFromTheFractionOfTotalMemory) {
  GpuMemoryOptions o;
  o.max_slots = 64;
  o.fewer_slots_ok = true;
  const GpuMemoryPlan p = plan_gpu_memory(needs(10, 2, 1), kTotal, kFree, o, "gpu");
  EXPECT_EQ(p.budget, 72'000'000'000);  // 0.9 x 80 GB (less than the 79 GB free)
  // (72 GB - 10 - 2 - 512 MiB reserve) / 1 GB per sequence
  EXPECT_EQ(p.slots, static_cast<int>((72'000'000'000 - 12'000'000'000 - kGpuReserveBytes) / 1'000'000'000));
  EXPECT_EQ(p.slots, 59);
  EXPECT_TRUE(p.lowered);
  EXPECT_LE(p.bytes(p.slots), p.budget);
  EXPECT_GT(p.bytes(p.slots + 1), p.budget);

  o.max_slots = 8;  // all fit: as many as asked
  const GpuMemoryPlan q = plan_gpu_memory(needs(10, 2, 1), kTotal, kFree, o, "gpu");
  EXPECT_EQ(q.slots, 8);
  EXPECT_FALSE(q.lowered);
}

TEST(GpuMemoryPlan, NeverMoreThanIsFree) {
  GpuMemoryOptions o;
  o.max_slots = 1000;
  o.fewer_slots_ok = true;
  const GpuMemoryPlan p = plan_gpu_memory(needs(10, 2, 1), kTotal, 30'000'000'000, o, "gpu");
  EXPECT_EQ(p.budget, 30'000'000'000);
  EXPECT_EQ(p.slots, static_cast<int>((30'000'000'000 - 12'000'000'000 - kGpuReserveBytes) / 1'000'000'000));
  o.fraction = 0.5;  // and never more than the fraction
  EXPECT_EQ(plan_gpu_memory(needs(10, 2, 1), kTotal, kFree, o, "gpu").budget, 40'000'000'000);
}

TEST(GpuMemoryPlan, AModelThatDoesNotFitIsInvalidNamingTheBytes) {
  GpuMemoryOptions o;
  try {
    plan_gpu_memory(needs(79, 2, 1), kTotal, kFree, o, "cuda:0 H100");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    EXPECT_EQ(e.exit_code(), 2);
    const std::string m = e.what();
    EXPECT_NE(m.find("does not fit on cuda:0 H100"), std::string::npos) << m;
    const double need = (79e9 + 2e9 + 1e9 + static_cast<double>(kGpuReserveBytes)) / 1e9;
    EXPECT_NE(m.find(fmt::format("need {:.2f} GB", need)), std::string::npos) << m;
    EXPECT_NE(m.find("weights 79.00 GB"), std::string::npos) << m;
    EXPECT_NE(m.find("72.00 GB is available"), std::string::npos) << m;
    EXPECT_NE(m.find("--gpu-memory-fraction 0.9 of 80.00 GB total, 79.00 GB free"), std::string::npos) << m;
  }
  // A tiny fraction fails the same way, before anything is allocated.
  o.fraction = 0.001;
  EXPECT_THROW(plan_gpu_memory(needs(0.01, 0.01, 0.01), kTotal, kFree, o, "gpu"), Error);
}

TEST(GpuMemoryPlan, AllAskedSequencesMustFitUnlessFewerAreAccepted) {
  GpuMemoryOptions o;
  o.max_slots = 64;
  try {
    plan_gpu_memory(needs(10, 2, 1), kTotal, kFree, o, "gpu");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Invalid);
    EXPECT_NE(std::string(e.what()).find("64 sequences of 4096 positions"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--max-batch"), std::string::npos) << e.what();
  }
  o.fewer_slots_ok = true;
  EXPECT_EQ(plan_gpu_memory(needs(10, 2, 1), kTotal, kFree, o, "gpu").slots, 59);
  // Not even one sequence: an error either way.
  EXPECT_THROW(plan_gpu_memory(needs(10, 2, 61), kTotal, kFree, o, "gpu"), Error);
}

TEST(GpuMemoryPlan, BadOptionsAreUsageErrors) {
  GpuMemoryOptions o;
  for (double f : {0.0, -0.5, 1.5, std::nan("")}) {
    o.fraction = f;
    try {
      plan_gpu_memory(needs(1, 1, 1), kTotal, kFree, o, "gpu");
      FAIL() << f;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Usage) << f;
    }
  }
  o.fraction = 1.0;
  o.max_slots = 0;
  EXPECT_THROW(plan_gpu_memory(needs(1, 1, 1), kTotal, kFree, o, "gpu"), Error);
}

TEST(DeviceSizes, PreparedLinearLayoutPerScheme) {
  ops::HostQuantLinear w;
  w.n = 300;
  w.k = 200;
  w.scheme = SchemeKind::BF16;  // 8 per chunk: 25 chunks
  dev::LinearLayout l = dev::linear_layout(w);
  EXPECT_EQ(l.kc, 25);
  EXPECT_EQ(l.kp, 200);
  EXPECT_EQ(l.weight_bytes, 300 * 25 * 16);
  EXPECT_EQ(l.scale_bytes, 0);
  EXPECT_EQ(dev::linear_device_bytes(w, 16), l.stored_bytes() + 16 * 200 * 4);

  w.scheme = SchemeKind::FP8Block;  // 16 per chunk: 13 chunks (k padded to 208)
  w.block_n = w.block_k = 128;
  l = dev::linear_layout(w);
  EXPECT_EQ(l.kc, 13);
  EXPECT_EQ(l.kp, 208);
  EXPECT_EQ(l.weight_bytes, 300 * 13 * 16);
  EXPECT_EQ(l.scale_bytes, 3 * 2 * 4);  // f32 [ceil(300/128), ceil(200/128)]

  w.scheme = SchemeKind::Int4Group;  // 32 per chunk: 7 chunks; groups of 128: 2
  w.block_n = 1;
  std::byte zp[4]{};
  w.zero_point = {zp, 4};
  l = dev::linear_layout(w);
  EXPECT_EQ(l.kc, 7);
  EXPECT_EQ(l.scale_bytes, 300 * 2 * 4);
  EXPECT_EQ(l.zero_point_bytes, 300 * 2);
  w.zero_point = {};
  EXPECT_EQ(dev::linear_layout(w).zero_point_bytes, 0);

  w.scheme = SchemeKind::MXFP4;
  w.block_k = 32;
  EXPECT_EQ(dev::linear_layout(w).scale_bytes, 300 * 7);  // one byte per chunk
  w.scheme = SchemeKind::NVFP4;
  w.block_k = 16;
  EXPECT_EQ(dev::linear_layout(w).scale_bytes, 300 * 14);  // two per chunk

  // A set: every expert's data, one descriptor table per scheme present, one staging buffer.
  ops::HostQuantLinear e[3] = {w, w, w};
  e[1].scheme = SchemeKind::MXFP4;
  e[1].block_k = 32;
  const int64_t stored = 2 * dev::linear_layout(w).stored_bytes() + dev::linear_layout(e[1]).stored_bytes();
  EXPECT_EQ(dev::linear_set_device_bytes(e, 3, 10), stored + 2 * 3 * dev::kLinearParamsBytes + 10 * 224 * 4);
  // cuBLASLt only for BF16 from kLtMinRows rows.
  w.scheme = SchemeKind::BF16;
  EXPECT_EQ(dev::lt_split_elems(w, dev::kLtMinRows - 1), 0);
  EXPECT_EQ(dev::lt_split_elems(w, 64), 64 * 200);
}

ModelConfig tiny() { return parse_model_config(test::tiny_config(), "tiny"); }

TEST(GpuMemory, SlotStateCountsEveryLayersRings) {
  const ModelConfig c = tiny();  // layers SWA, CSA (4), HCA (16), CSA (4), MTP SWA; window 16
  GpuModelShape m;
  for (int64_t l = 0; l < c.num_layers + 1; ++l) m.blocks.push_back({c.attn_kind(l), c.compress_ratio(l)});
  const int rows = 40;
  const int64_t ctx = 1000, R = kMaxRollback, D = c.head_dim, I = c.index_head_dim;
  const int64_t window = (c.sliding_window + rows + R) * D;
  const int64_t csa = window + 2 * (2 * 4 + rows + R) * 2 * D + (ctx / 4) * D  // main compressor
                      + 2 * (2 * 4 + rows + R) * 2 * I + (ctx / 4) * I;        // indexer's
  const int64_t hca = window + 2 * (16 + rows + R) * D + (ctx / 16) * D;
  EXPECT_EQ(gpu_slot_bytes(c, m, rows, ctx), 4 * (window + csa + hca + csa + window));
  const GpuBlockState s = gpu_block_state(c, m.blocks[1], rows, ctx);
  ASSERT_TRUE(s.comp && s.icomp);
  EXPECT_EQ(s.comp->max_entries, 250);
  EXPECT_TRUE(s.comp->overlap);
  EXPECT_FALSE(gpu_block_state(c, m.blocks[2], rows, ctx).comp->overlap);
  EXPECT_FALSE(gpu_block_state(c, m.blocks[0], rows, ctx).comp);
}

TEST(GpuMemory, ActivationSizesFollowRowsAndContext) {
  const ModelConfig c = tiny();
  GpuModelShape m;
  for (int64_t l = 0; l < c.num_layers + 1; ++l) m.blocks.push_back({c.attn_kind(l), c.compress_ratio(l)});
  m.inter = c.moe_intermediate_size;
  m.shared_inter = c.moe_intermediate_size;
  const GpuActivationSizes a = gpu_activation_sizes(c, m, 40, 1000, 132);
  EXPECT_EQ(a.main_logits, 40 * c.vocab_size);
  EXPECT_EQ(a.X, 40 * c.hc_mult * c.hidden_size);
  EXPECT_EQ(a.iscratch, 40 * (1000 / 4));  // the CSA layers' indexer entries
  EXPECT_EQ(a.ca, 40 * 2 * c.head_dim);    // the widest compressor projection
  EXPECT_EQ(a.g, 40 * c.num_experts_per_tok * c.moe_intermediate_size);
  EXPECT_EQ(a.attn_work, std::max<int64_t>(1, dev::attention_workspace_floats(40, static_cast<int>(c.num_heads),
                                                                              static_cast<int>(c.head_dim), 132)));
  // Either attention kernel splits a step's keys while its blocks do not fill the GPU; the
  // workspace covers the most rows either splits: V4's 64 heads on 132 SMs, 32 rows (2-head
  // blocks below 16 rows and 8-head blocks from 16, under two per SM; 16-head tensor-core
  // blocks under one per SM).
  for (int R = 1; R <= 256; ++R) {
    EXPECT_EQ(dev::attention_splits_chunks(R, 64, 132, false), R <= 8 || (R >= 16 && R <= 32)) << R;
    EXPECT_EQ(dev::attention_splits_chunks(R, 64, 132, true), R <= 32) << R;
  }
  EXPECT_EQ(dev::attention_workspace_floats(256, 64, 512, 132), int64_t{32} * 64 * 16 * 514);
  EXPECT_EQ(a.rope, 2 * 2 * 1000 * (c.rope_head_dim / 2));
  EXPECT_EQ(a.bytes(), 4 * a.elements());
  const GpuActivationSizes b = gpu_activation_sizes(c, m, 80, 1000, 132);
  EXPECT_GT(b.bytes(), a.bytes());
}

// The weights' walk (the upload's) against a count over the plan's linear modules.
void check_weight_bytes(const std::filesystem::path& dir) {
  const Checkpoint ckpt = Checkpoint::open(dir);
  const Plan plan = build_plan(ckpt, load_model_config(dir));
  ASSERT_TRUE(plan.loadable());
  LoadOptions skip;
  skip.skip_linears = skip.skip_embed = true;
  const Weights ws = load_weights(ckpt, plan, skip);
  const Weights full = load_weights(ckpt, plan);
  const int rows = 24;
  const ModelConfig& c = plan.config;
  const LinearSource src = checkpoint_linears(ckpt, plan);
  const GpuWeightBytes b = gpu_weight_bytes(ws, src, rows);

  int64_t linears = 0, staging = 0;
  std::set<std::string> sets;  // "layers.1.w2": one per (layer, projection)
  std::map<std::string, int64_t> set_kp;
  for (const PlannedLinear& l : plan.linears) {
    const ops::HostQuantLinear h = src(l.path);
    const dev::LinearLayout lay = dev::linear_layout(h);
    linears += lay.stored_bytes();
    const size_t ex = l.path.find(".ffn.experts.");
    if (ex != std::string::npos) {
      const std::string key = l.path.substr(0, ex) + l.path.substr(l.path.rfind('.'));
      sets.insert(key);
      set_kp[key] = std::max(set_kp[key], lay.kp);
      continue;
    }
    const bool hproj = l.path.size() > 6 && l.path.compare(l.path.size() - 6, 6, "h_proj") == 0;
    staging += lay.staging_bytes(hproj ? rows * c.hc_mult : rows);
  }
  for (const auto& [key, kp] : set_kp) staging += rows * c.num_experts_per_tok * kp * 4;
  linears += static_cast<int64_t>(sets.size()) * c.n_routed_experts * dev::kLinearParamsBytes;  // one scheme per set
  EXPECT_EQ(b.linears, linears) << dir;
  EXPECT_EQ(b.staging, staging) << dir;
  EXPECT_EQ(b.params, static_cast<int64_t>(plain_weight_bytes(full))) << dir;
}

TEST(GpuMemory, WeightBytesAgreeWithTheCheckpointsPlan) {
  check_weight_bytes(std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_a/native");
  test::TempDir d;
  test::write_spec(test::make_spec(test::Layout::Native, test::tiny_config()), d.path());
  check_weight_bytes(d.path());
}

// The GPU DSpark drafter's buffers and rings, counted by hand for tiny_dspark (vocab 256,
// hidden 64, head_dim 32, window 8, block 5, Markov rank 16, 3 target layers, 3 stages).
TEST(GpuMemory, DSparkDrafterBuffersAndRings) {
  const ModelConfig c = load_model_config(std::string(KILN_TEST_DATA_DIR) + "/fixtures/tiny_dspark/native");
  ASSERT_TRUE(c.dspark.has_value());
  // 40 rows, 4 slots: 4 rounds of 5 rows (T = 20). int32: 6 x 40 + 4 + 20; fp32: 40 x (192 + 64 +
  // 32) commit rows + 20 x (3 x 64 + 256 + 16) block rows + 2 x 4 x 256 Markov rows.
  GpuDSparkSizes z = gpu_dspark_sizes(c, 40, 4);
  EXPECT_EQ(z.rounds, 4);
  EXPECT_EQ(z.buffer_bytes, 4 * ((6 * 40 + 4 + 20) + (40 * 288 + 20 * 464 + 2 * 4 * 256)));
  EXPECT_EQ(z.slot_bytes, 4 * 3 * (8 + 5) * 32);
  // More slots than blocks fit in a pass: the rows bound the rounds (40 / 5 = 8).
  z = gpu_dspark_sizes(c, 40, 100);
  EXPECT_EQ(z.rounds, 8);
  EXPECT_EQ(z.buffer_bytes, 4 * ((6 * 40 + 8 + 40) + (40 * 288 + 40 * 464 + 2 * 8 * 256)));
  // No drafter: nothing.
  const ModelConfig plain = tiny();
  EXPECT_EQ(gpu_dspark_sizes(plain, 40, 4).buffer_bytes, 0);
  EXPECT_EQ(gpu_dspark_sizes(plain, 40, 4).slot_bytes, 0);
}

}  // namespace
}  // namespace kiln::model
