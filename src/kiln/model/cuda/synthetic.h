// A DeepSeek-V4-Flash-shaped model with synthetic weights, for `kiln bench`: the real
// widths (hidden 4096, 64 heads x 512, q_lora 1024, o_groups 8 x 1024, 256 experts x
// 2048 top-6 + 1 shared, index 64 x 128 top-512, window 128, vocab 129280, hc_mult 4)
// with fewer layers (Flash's pattern: SWA, SWA, then CSA / HCA alternating; the first
// three hash-routed). Linear weights are random codes with valid scales in the chosen
// scheme (routed experts) and FP8 block (dense projections; BF16 for compressors, the
// router, the indexer's weights_proj and the head, as DeepSeek ships them), or BF16
// everywhere. Modules of one shape share one host buffer (the GPU gets its own copy of
// each), so building needs little host memory.
#pragma once

#include <memory>
#include <string>

#include "kiln/model/cuda/linear_source.h"
#include "kiln/model/weights.h"

namespace kiln::model::cuda {

struct SyntheticSpec {
  int layers = 4;
  ops::LinearScheme experts = ops::LinearScheme::MXFP4;
  bool all_bf16 = false;  // every linear BF16 (experts too)
  bool mtp = true;        // one MTP block (BF16 projections, FP8 attention, experts as above)
  uint64_t seed = 20261204;
};

ModelConfig flash_shaped_config(int layers, bool mtp);

class SyntheticModel {
 public:
  explicit SyntheticModel(const SyntheticSpec& spec);
  ~SyntheticModel();
  const Weights& weights() const { return weights_; }
  // Views into this object's buffers: valid while it lives.
  LinearSource linears() const;
  std::string describe() const;  // "V4-Flash-shaped, 4 layers, experts mxfp4, dense fp8_block"

 private:
  struct Store;
  SyntheticSpec spec_;
  Weights weights_;
  std::shared_ptr<Store> store_;
};

}  // namespace kiln::model::cuda
