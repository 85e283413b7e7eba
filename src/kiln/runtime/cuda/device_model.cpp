#include "kiln/runtime/cuda/device_model.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>

#include "kiln/core/error.h"
#include "kiln/model/dspark.h"
#include "kiln/model/linear_source.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/runtime/host_memory.h"
#include "kiln/runtime/loaded_model.h"

namespace kiln::runtime::cuda {

namespace {
double gb(int64_t b) { return static_cast<double>(b) / 1e9; }
}  // namespace

std::string LoadStats::describe() const {
  std::string s = fmt::format("load {:.2f} GB in {:.2f} s ({:.2f} GB/s", gb(checkpoint_bytes), seconds,
                              seconds > 0 ? gb(checkpoint_bytes) / seconds : 0.0);
  if (upload_threads > 0) {
    s += fmt::format("; copy {:.2f} GB in {:.2f} s, {} threads x 2 x {} MiB pinned", gb(upload_bytes), upload_seconds,
                     upload_threads, upload_staging_bytes >> 20);
  }
  s += ")";
  if (peak_rss_anon >= 0) s += fmt::format("; peak host memory RssAnon {:.2f} GB, VmHWM {:.2f} GB", gb(peak_rss_anon), gb(vm_hwm));
  return s;
}

DeviceModel open_device_model(const std::filesystem::path& dir, const DeviceModelOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  PeakAnonSampler sampler;
  auto say = [&](const std::string& s) {
    if (o.progress) *o.progress << s << "\n" << std::flush;
  };
  model::LoadOptions lo;
  lo.skip_linears = true;
  lo.skip_embed = true;
  auto host = load_model(dir, o.threads, o.progress, lo);
  model::set_precision(host->weights, o.precision);
  const ModelConfig& c = host->config;

  DeviceModel dm;
  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  dm.device = fmt::format("cuda:{} {}", dev, prop.name);
  size_t free_b = 0, total_b = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));

  // Every linear's stored form is checked here (a form the CUDA kernels do not take fails
  // now), and the plan counts the prepared bytes from the same views.
  const model::LinearSource src = model::checkpoint_linears(host->checkpoint, host->plan);
  const model::GpuModelShape shape = model::gpu_model_shape(host->weights);
  struct Sized {
    model::GpuWeightBytes w;
    model::GpuActivationSizes a;
    model::GpuMemoryNeeds needs;
    int64_t forward_per_slot = 0;  // the forward's own decode state per slot (needs.per_slot less the drafter's rings)
  };
  // A DSpark drafter's weights, counted as stored (its linears keep their stored form; its
  // markov_w1 embedding is held in fp32, twice its bf16 bytes), its buffers with the
  // activations and its rings with each slot's state (for the sequences asked for: the
  // drafter's buffers shrink, never grow, when fewer fit).
  int64_t drafter_bytes = 0;
  const bool drafter = o.dspark && host->plan.dspark && c.dspark;
  if (drafter) drafter_bytes = static_cast<int64_t>(host->plan.dspark->bytes) + c.vocab_size * c.dspark->markov_rank * 2;
  auto size_for = [&](int rows) {
    Sized s;
    s.w = model::gpu_weight_bytes(host->weights, src, rows);
    s.a = model::gpu_activation_sizes(c, shape, rows, o.max_context, sms);
    s.needs.weights = s.w.weights() + drafter_bytes;
    s.needs.activations = s.w.staging + s.w.lt + s.a.bytes();
    s.needs.per_slot = s.forward_per_slot = model::gpu_slot_bytes(c, shape, rows, o.max_context);
    if (drafter) {
      const model::GpuDSparkSizes d = model::gpu_dspark_sizes(c, rows, o.max_slots);
      s.needs.activations += d.buffer_bytes;
      s.needs.per_slot += d.slot_bytes;
    }
    s.needs.max_rows = rows;
    s.needs.max_context = o.max_context;
    return s;
  };
  model::GpuMemoryOptions mo;
  mo.fraction = o.gpu_memory_fraction;
  mo.max_slots = o.max_slots;
  mo.fewer_slots_ok = o.fewer_slots_ok;
  int rows = o.max_rows;
  Sized sized = size_for(rows);
  model::GpuMemoryPlan plan = model::plan_gpu_memory(sized.needs, static_cast<int64_t>(total_b),
                                                     static_cast<int64_t>(free_b), mo, dm.device);
  if (plan.lowered && o.rows_per_slot > 0) {
    // Fewer sequences: the passes shrink with them, which frees a little more memory.
    rows = std::max(1, o.max_rows - (o.max_slots - plan.slots) * o.rows_per_slot);
    sized = size_for(rows);
    const int asked = plan.slots;
    mo.max_slots = plan.slots;
    plan = model::plan_gpu_memory(sized.needs, static_cast<int64_t>(total_b), static_cast<int64_t>(free_b), mo, dm.device);
    plan.lowered = true;
    if (plan.slots != asked) fail_invalid("internal: the memory plan lost sequences when the passes shrank");
  }
  say(fmt::format("gpu memory plan: {}{}", plan.summary(),
                  plan.lowered ? fmt::format(" (--max-batch {} lowered to the {} that fit)", o.max_slots, plan.slots) : ""));

  model::cuda::UploadSettings us;
  us.upload.threads = o.upload_threads;
  us.upload.staging_bytes = o.upload_staging_bytes;
  us.upload.drop_source_pages = true;  // every source is a read-only mapping of a shard
  us.upload.progress = o.progress;
  model::cuda::GpuWeights w = model::cuda::upload_weights(
      host->weights, model::cuda::DeviceSources{src, model::checkpoint_embed(host->checkpoint, host->plan)}, rows, us);
  const int64_t counted = sized.w.linears + sized.w.staging + sized.w.params;
  if (w.device_bytes != counted) {
    say(fmt::format("warning: the memory plan counted {} bytes of weights and staging; the upload allocated {} "
                    "(internal: model/gpu_memory.cpp and model/cuda/gpu_weights.cpp disagree)",
                    counted, w.device_bytes));
  }
  if (o.dspark) {
    if (!c.dspark || !host->plan.dspark) fail_invalid("{}: --spec dspark: the checkpoint has no DSpark drafter (no dspark_* keys)", dir.string());
    const model::DSparkWeights d = model::load_dspark_weights(host->checkpoint, host->plan, lo);
    dm.dspark = model::cuda::upload_dspark_weights(d, c, o.precision,
                                                   model::checkpoint_dspark_linears(host->checkpoint, host->plan), rows, us);
    say(fmt::format("DSpark drafter uploaded: {} stages, block {}, {:.3f} GB on the device (the memory plan counted "
                    "{:.3f} GB)",
                    c.dspark->stages, c.dspark->block_size, gb(dm.dspark->device_bytes), gb(drafter_bytes)));
  }
  dm.stats.checkpoint_bytes = static_cast<int64_t>(host->plan.total_bytes);
  dm.stats.upload_seconds = w.upload_seconds;
  dm.stats.upload_bytes = w.upload_bytes;
  dm.stats.upload_threads = w.upload_threads;
  dm.stats.upload_staging_bytes = w.upload_staging_bytes;
  host.reset();  // the small parameters are on the device; unmap the shards

  model::cuda::GpuOptions go;
  go.max_slots = plan.slots;
  go.max_rows = rows;
  go.max_context = o.max_context;
  go.graphs = o.graphs;
  dm.forward = std::make_unique<model::cuda::GpuForward>(std::move(w), go);
  if (dm.forward->activation_bytes() != sized.a.bytes() ||
      dm.forward->state_bytes() != static_cast<int64_t>(plan.slots) * sized.forward_per_slot) {
    say(fmt::format("warning: the memory plan counted {} bytes of activations and {} of decode state; the forward "
                    "allocated {} and {} (internal)",
                    sized.a.bytes(), plan.slots * sized.forward_per_slot, dm.forward->activation_bytes(),
                    dm.forward->state_bytes()));
  }
  dm.memory = plan;
  sampler.stop();
  dm.stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  dm.stats.peak_rss_anon = sampler.peak();
  dm.stats.vm_hwm = read_host_memory().vm_hwm;
  say(dm.stats.describe());
  return dm;
}

}  // namespace kiln::runtime::cuda
