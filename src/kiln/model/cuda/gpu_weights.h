// DeepSeek-V4 weights resident on the GPU (the tree of model/weights_tree.h over the GPU's
// types), every op bound to its prepared kernel at load:
// linear modules as ops::cuda::QuantLinear (one kernel per M chosen at prepare), the
// routed experts of a layer as one QuantLinearSet per projection (the expert is picked
// on the device), everything else fp32 device arrays. Built from the CPU Weights (for
// the fp32 tensors and the structure; their linears may hold no bytes, see
// LoadOptions::skip_linears) and a LinearSource (the stored linear bytes), read and copied
// by a DeviceUploader's threads through pinned staging (ops/cuda/device_upload.h).
// model/gpu_memory.h counts what this allocates before it runs.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <vector>

#include "kiln/model/dspark.h"
#include "kiln/model/linear_source.h"
#include "kiln/model/weights.h"
#include "kiln/ops/cuda/device_buffer.h"
#include "kiln/ops/cuda/device_upload.h"
#include "kiln/ops/quant_linear.h"

namespace kiln::model::cuda {

using ops::cuda::DeviceArray;
using ops::cuda::QuantLinear;
using ops::cuda::QuantLinearSet;

// The GPU's types for the weight tree (model/weights_tree.h): the routed experts of a
// layer are one indexed set per projection (the expert picked on the device).
struct GpuWeightTypes {
  using Linear = QuantLinear;
  using Matrix = DeviceArray<float>;
  using Vector = DeviceArray<float>;
  using Ints = DeviceArray<int32_t>;
  template <class Expert>
  struct Routed {
    QuantLinearSet w1, w2, w3;  // routed experts
    int64_t inter = 0;          // routed expert width
  };
};

using GpuCompressor = CompressorT<GpuWeightTypes>;
using GpuIndexer = IndexerT<GpuWeightTypes>;
using GpuAttention = AttentionT<GpuWeightTypes>;
using GpuExpert = ExpertT<GpuWeightTypes>;
using GpuMoe = MoeT<GpuWeightTypes>;
using GpuHyper = HyperConnectionT<GpuWeightTypes>;
using GpuHead = HyperHeadT<GpuWeightTypes>;
using GpuBlock = BlockT<GpuWeightTypes>;
using GpuMtp = MtpBlockT<GpuWeightTypes>;

struct GpuWeights : WeightsT<GpuWeightTypes> {
  int64_t linear_bytes = 0;  // prepared linear data (weights + scales) on the device
  int64_t device_bytes = 0;  // every device allocation above (gpu_weight_bytes: linears + staging + params)
  // The streamed upload: bytes copied, seconds from its start to the last copy, threads and
  // the bytes of each of their two pinned staging buffers (0 when synchronous).
  int64_t upload_bytes = 0;
  double upload_seconds = 0;
  int upload_threads = 0;
  int64_t upload_staging_bytes = 0;
};

// Where the bytes the host Weights do not hold come from.
struct DeviceSources {
  LinearSource linears;
  HostTensorView embed;  // used when Weights::embed holds no data (LoadOptions::skip_embed)
};

struct UploadSettings {
  ops::cuda::UploadOptions upload;  // threads, staging, page dropping, progress
  // true: every linear prepared and copied on this thread, whole (the prepare step's
  // synchronous form; the same bytes on the device). Needs the embedding in the Weights.
  bool synchronous = false;
};

// max_rows: the most rows (tokens) one step will feed; every linear is prepared for it
// (experts for max_rows * num_experts_per_tok pairs, the MTP h_proj for max_rows *
// hc_mult rows; model/gpu_memory.h). Validation errors name the module; a content error
// (an fp8 NaN code) comes after the copies.
GpuWeights upload_weights(const Weights& w, const DeviceSources& sources, int max_rows, const UploadSettings& s);
// The same with default settings (progress: a line every ~2 s while copying, or nullptr).
GpuWeights upload_weights(const Weights& w, const LinearSource& linears, int max_rows, std::ostream* progress);

// A DSpark drafter on the GPU (model/dspark.h): the stages are GpuBlocks (SWA attention,
// score-routed MoE), bound like the main model's; the embedding and head are the target's.
struct GpuDSparkWeights {
  DSparkConfig config;
  QuantLinear main_proj;         // [H, targets * H]
  DeviceArray<float> main_norm;  // [H]
  std::vector<GpuBlock> stages;
  DeviceArray<float> norm;       // [H] (last stage)
  GpuHead hc_head;               // (last stage)
  DeviceArray<float> markov_w1;  // [V, rank] (an embedding)
  QuantLinear markov_w2;         // [V, rank]
  std::vector<float> confidence;  // [H + rank] on the host (empty: no confidence head)
  int64_t linear_bytes = 0;       // prepared linear data
  int64_t device_bytes = 0;       // every device allocation above
};

// The drafter's weights: `d` gives the structure and the small fp32 tensors (its linears may
// hold no bytes: load_dspark_weights with LoadOptions::skip_linears), `linears` the stored
// bytes (checkpoint_dspark_linears); every linear prepared for max_rows rows with the
// numerics of `precision` for its role (for_each_dspark_linear). cfg: the target's config.
GpuDSparkWeights upload_dspark_weights(const DSparkWeights& d, const ModelConfig& cfg, ops::Precision precision,
                                       const LinearSource& linears, int max_rows, const UploadSettings& s = {});

}  // namespace kiln::model::cuda
