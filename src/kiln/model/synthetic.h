// A DeepSeek-V4-Flash-shaped model with synthetic weights, for `kiln bench`: the real
// widths (hidden 4096, 64 heads x 512, q_lora 1024, o_groups 8 x 1024, 256 experts x
// 2048 top-6 + 1 shared, index 64 x 128 top-512, window 128, vocab 129280, hc_mult 4)
// with fewer layers (Flash's pattern: SWA, SWA, then CSA / HCA alternating; the first
// three hash-routed). Linear weights are random codes with valid scales in the chosen
// scheme (routed experts) and FP8 block (dense projections; BF16 for compressors, the
// router, the indexer's weights_proj and the head, as DeepSeek ships them), or BF16
// everywhere. Modules of one shape share one host buffer (the GPU gets its own copy of
// each), so building needs little host memory.
//
// The values come from seekable generators (element i of a tensor is a function of i), so
// `kiln bench --write-synthetic` writes the same kind of model to disk piece by piece
// (cli/write_synthetic.h) without holding a tensor whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kiln/model/linear_source.h"
#include "kiln/model/weights.h"

namespace kiln::model {

struct SyntheticSpec {
  int layers = 4;
  SchemeKind experts = SchemeKind::MXFP4;
  bool all_bf16 = false;  // every linear BF16 (experts too)
  bool mtp = true;        // one MTP block (BF16 projections, FP8 attention, experts as above)
  uint64_t seed = 20261204;
};

// config.json of the V4-Flash-shaped model (DeepSeek's form), and its parsed config.
nlohmann::json flash_shaped_config_json(int layers, bool mtp);
ModelConfig flash_shaped_config(int layers, bool mtp);

// ---- Seekable generators.
// The stored form of a synthetic [n, k] module in scheme `s` (dtypes, block sizes, scale
// shape, nvfp4 global), without bytes: fp8_block 128x128 E8M0 scales, int4 group 128 BF16
// scales, mxfp4 E8M0, nvfp4 E4M3 with global 1/256. Every weight has magnitude ~1e-2.
ops::HostQuantLinear synthetic_linear_form(SchemeKind s, int64_t n, int64_t k);
// Bytes [offset, offset + out.size()) of the weight (scale = false) or scale of the
// synthetic (s, n, k) module: random codes (never the fp8 NaN code) and one scale value.
void synthetic_linear_bytes(SchemeKind s, int64_t n, int64_t k, bool scale, uint64_t seed, uint64_t offset,
                            std::span<std::byte> out);
// Element i of a synthetic plain tensor, by its canonical name inside its scope
// ("embed.weight", "attn_norm.weight", "hc_ffn_fn", "attn.compressor.ape", "ffn.gate.bias",
// ...): embeddings uniform in [-1, 1), norms and mHC scales 1, mHC fn +-1e-2 and base
// +-0.1, compressor position biases +-0.1, sinks +-1, router biases +-0.01.
float synthetic_plain_value(std::string_view module, uint64_t seed, uint64_t i);
// Element i of a synthetic tid2eid [vocab, top_k]: distinct experts per token.
int32_t synthetic_tid2eid(const ModelConfig& c, uint64_t seed, uint64_t i);

class SyntheticModel {
 public:
  explicit SyntheticModel(const SyntheticSpec& spec);
  ~SyntheticModel();
  const Weights& weights() const { return weights_; }
  // The precision the GPU prepares the linears for (upload_weights reads Weights::precision).
  void set_precision(ops::Precision p) { weights_.precision = p; }
  // Views into this object's buffers: valid while it lives.
  LinearSource linears() const;
  std::string describe() const;  // "V4-Flash-shaped, 4 layers, experts mxfp4, dense fp8_block"

 private:
  struct Store;
  SyntheticSpec spec_;
  Weights weights_;
  std::shared_ptr<Store> store_;
};

}  // namespace kiln::model
