// Opening a checkpoint on the GPU without a host copy of the model: config, plan and the
// small parameters (norms, mHC, biases, tid2eid) through host memory; then a memory plan
// (model/gpu_memory.h) decides, before any large allocation, how many sequences fit;
// then every linear and the embedding go straight from the memory-mapped shards to the
// device through a bounded pinned staging area (model/cuda/gpu_weights.h), and the GPU
// forward allocates its activations and the planned decode state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "kiln/model/cuda/gpu_forward.h"
#include "kiln/model/gpu_memory.h"

namespace kiln::runtime::cuda {

struct DeviceModelOptions {
  int threads = 0;      // host threads for binding the small parameters (0 = all cores)
  int max_slots = 1;    // sequences wanted
  bool fewer_slots_ok = false;  // take as many as fit (serve); else all max_slots must fit
  int max_rows = 64;    // rows per pass
  // > 0: when fewer sequences fit than asked for, max_rows shrinks by this many rows per
  // sequence not held (serve sizes a pass as sequences x (1 + drafts) + a prompt chunk).
  int rows_per_slot = 0;
  int64_t max_context = 4096;
  double gpu_memory_fraction = 0.9;
  ops::Precision precision = ops::Precision::Exact;  // the activation precision (ops/linear_numerics.h)
  bool graphs = true;
  // Also upload the checkpoint's DSpark drafter (model/cuda/gpu_dspark.h); Error(Invalid)
  // when the checkpoint has none. The memory plan counts its weights by their stored bytes
  // (not its rings and buffers).
  bool dspark = false;
  std::ostream* progress = nullptr;
  // Reader threads / staging per buffer for the upload (0: ops/cuda/device_upload.h's defaults).
  int upload_threads = 0;
  size_t upload_staging_bytes = 0;
};

// What the load cost: time, bytes and the host memory it took.
struct LoadStats {
  double seconds = 0;             // the whole open
  int64_t checkpoint_bytes = 0;   // tensor bytes the plan reads
  double upload_seconds = 0;      // the streamed copy
  int64_t upload_bytes = 0;       // bytes copied to the device
  int upload_threads = 0;
  int64_t upload_staging_bytes = 0;
  int64_t peak_rss_anon = -1;     // largest RssAnon sampled during the open (bytes)
  int64_t vm_hwm = -1;            // VmHWM at its end
  // "load 15.31 GB in 3.10 s (4.94 GB/s; copy 16.40 GB in 2.70 s, 8 threads x 2 x 16 MiB
  // pinned); peak host memory RssAnon 1.21 GB, VmHWM 1.40 GB"
  std::string describe() const;
};

struct DeviceModel {
  std::unique_ptr<model::cuda::GpuForward> forward;
  std::optional<model::cuda::GpuDSparkWeights> dspark;  // DeviceModelOptions::dspark
  model::GpuMemoryPlan memory;
  LoadStats stats;
  std::string device;  // "cuda:0 NVIDIA H100 80GB HBM3"
};

// Throws Error(Invalid) (exit 2) when the plan is not loadable, a module's stored form has
// no CUDA kernel, or the model does not fit (naming the bytes), all before the upload.
DeviceModel open_device_model(const std::filesystem::path& dir, const DeviceModelOptions& o);

}  // namespace kiln::runtime::cuda
