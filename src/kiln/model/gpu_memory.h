// The CUDA backend's device memory, counted before anything is allocated (no CUDA here, so
// the arithmetic is tested in CI):
//  - the weights: every linear in its prepared layout (ops/device_sizes.h) with its x
//    staging buffer, the expert descriptor tables, cuBLASLt's shared buffers, and the
//    fp32 tensors, counted by walking the host Weights (which may hold no linear bytes:
//    LoadOptions::skip_linears) the way model/cuda/gpu_weights.cpp uploads them;
//  - the activation buffers of the GPU forward for max_rows rows and its rotary tables:
//    GpuForward allocates exactly gpu_activation_sizes();
//  - the decode state of one sequence (slot) for max_context positions: GpuForward
//    allocates gpu_block_state() per layer and slot.
// plan_gpu_memory() then decides how many sequences fit a device: a pure function of
// those sizes, the device's total and free bytes and the options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/io/config.h"
#include "kiln/model/linear_source.h"
#include "kiln/model/weights.h"

namespace kiln::model {

// Rows each GPU linear is prepared for, from the rows one pass feeds: every module
// max_rows, the MTP h_proj max_rows * hc_mult (it reads every stream), routed experts
// max_rows * top-k (token, expert) pairs.
int gpu_linear_rows(int max_rows);
int gpu_hproj_rows(const ModelConfig& c, int max_rows);
int gpu_expert_pairs(const ModelConfig& c, int max_rows);

// What the forward's buffer sizes depend on besides the config: per layer it runs (main
// layers, then the MTP blocks loaded) the attention kind and compression ratio, and the
// expert widths.
struct GpuModelShape {
  struct Block {
    AttnKind kind = AttnKind::SWA;
    int64_t ratio = 0;
  };
  std::vector<Block> blocks;
  int64_t inter = 1;         // routed expert width
  int64_t shared_inter = 1;  // shared expert width (1 without one)
};
GpuModelShape gpu_model_shape(const Weights& w);

// Element counts (4 bytes each: float or int32) of the GPU forward's activation buffers.
struct GpuActivationSizes {
  int64_t tok = 0, slot = 0, pos = 0, src = 0, head_idx = 0;
  int64_t X = 0, Xn = 0, u = 0, y = 0, post = 0, comb = 0, hc_work = 0;
  int64_t qres = 0, kv = 0, q = 0, o = 0, mid = 0;
  int64_t ca = 0, cz = 0;
  int64_t iq = 0, iw = 0, iscratch = 0;
  int64_t sel = 0, nsel = 0;
  int64_t attn_work = 0;
  int64_t glog = 0, wt = 0, g = 0, up = 0, ye = 0, idx = 0;
  int64_t sg = 0, su = 0, sy = 0;
  int64_t h = 0;
  int64_t main_logits = 0, mtp_logits = 0, main_streams = 0, mtp_streams = 0;
  int64_t main_argmax = 0, mtp_argmax = 0;
  int64_t mtp_in = 0, e = 0, ep = 0, hs = 0;
  int64_t rope = 0;  // both rotary tables (main and compress), floats
  int64_t elements() const;
  int64_t bytes() const { return 4 * elements(); }
};
// sms: the device's multiprocessors (the attention split workspace depends on it).
GpuActivationSizes gpu_activation_sizes(const ModelConfig& c, const GpuModelShape& m, int max_rows,
                                        int64_t max_context, int sms);

// One compressor's per-slot state: raw (kv, score) rows in rings of `cap` rows of `width`
// floats, and its emitted entries for max_context positions.
struct GpuCompressorState {
  int ratio = 0, dim = 0;
  bool overlap = false;
  int width = 0, cap = 0, max_entries = 0;
  int64_t ring_stride = 0;   // floats per slot of the kv ring (the score ring is the same)
  int64_t entry_stride = 0;  // floats per slot of the entries
  int64_t floats() const { return 2 * ring_stride + entry_stride; }
};
// Per-slot state of one layer: the sliding-window K=V ring and the compressors it has.
struct GpuBlockState {
  int window_cap = 0, dim = 0;
  int64_t window_stride = 0;  // floats per slot
  std::optional<GpuCompressorState> comp, icomp;
  int64_t floats() const;
};
GpuBlockState gpu_block_state(const ModelConfig& c, const GpuModelShape::Block& b, int max_rows, int64_t max_context);
// Bytes of one sequence's decode state over every layer.
int64_t gpu_slot_bytes(const ModelConfig& c, const GpuModelShape& m, int max_rows, int64_t max_context);

// The GPU DSpark drafter (model/cuda/gpu_dspark.h) of a config with one: its buffers for
// passes of max_rows rows (a draft group holds `rounds` = min(max_rows / block, slots)
// blocks: each round has its own slot) and each slot's rings (per stage, window + block
// K=V rows). GpuDSpark allocates exactly these.
struct GpuDSparkSizes {
  int rounds = 0;
  int64_t buffer_bytes = 0;
  int64_t slot_bytes = 0;
};
GpuDSparkSizes gpu_dspark_sizes(const ModelConfig& c, int max_rows, int slots);

struct GpuWeightBytes {
  int64_t linears = 0;  // prepared weights, scales, zero points, expert descriptor tables
  int64_t staging = 0;  // the linears' and expert sets' x staging buffers
  int64_t lt = 0;       // cuBLASLt workspace and split buffers (in a process that has none yet)
  int64_t params = 0;   // fp32 tensors and tid2eid, the embedding included
  int64_t weights() const { return linears + params; }
};
// What upload_weights(w, linears, max_rows) allocates.
GpuWeightBytes gpu_weight_bytes(const Weights& w, const LinearSource& linears, int max_rows);

// Everything the GPU model needs apart from the weights' own bytes, for memory planning.
struct GpuMemoryNeeds {
  int64_t weights = 0;      // GpuWeightBytes::weights()
  int64_t activations = 0;  // staging + lt + gpu_activation_sizes().bytes()
  int64_t per_slot = 0;     // gpu_slot_bytes()
  int max_rows = 0;         // for messages
  int64_t max_context = 0;
};

// Kept free for what is not counted: CUDA graphs, kernel and library allocations, the
// allocator's rounding.
inline constexpr int64_t kGpuReserveBytes = int64_t{512} << 20;

struct GpuMemoryOptions {
  double fraction = 0.9;       // of the device's total memory kiln may allocate
  int max_slots = 1;           // sequences wanted
  bool fewer_slots_ok = false;  // serve: take as many as fit (>= 1); else all must fit
  int64_t reserve = kGpuReserveBytes;
};

struct GpuMemoryPlan {
  GpuMemoryNeeds needs;
  int64_t total = 0, free = 0;  // the device's
  int64_t budget = 0;           // min(fraction x total, free)
  int64_t reserve = 0;
  double fraction = 0;
  int slots = 0;                // sequences planned
  bool lowered = false;         // slots < the sequences asked for
  int64_t bytes(int slots) const;  // weights + activations + reserve + slots x per_slot
  // "weights 15.31 GB + activations 2.10 GB + 64 x 0.25 GB of decode state (4096 positions)
  // = 33.42 GB of 72.00 GB (0.90 of 80.00 GB)"
  std::string summary() const;
};

// How many sequences fit: min(max_slots, (budget - weights - activations - reserve) /
// per_slot). Throws Error(Invalid) when not even one does (or, without fewer_slots_ok, not
// max_slots), naming the bytes needed and available; Error(Usage) for a fraction outside
// (0, 1] or max_slots < 1. `device` names the GPU in messages.
GpuMemoryPlan plan_gpu_memory(const GpuMemoryNeeds& needs, int64_t total, int64_t free, const GpuMemoryOptions& o,
                              std::string_view device);

}  // namespace kiln::model
