#include "kiln/cli/backend_session.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>

#include "kiln/core/error.h"
#include "kiln/model/weights.h"
#include "kiln/runtime/cpu_backend.h"
#include "kiln/runtime/engine_metrics.h"
#include "kiln/runtime/host_memory.h"

#ifdef KILN_HAVE_CUDA
#include <cuda_runtime.h>

#include "kiln/runtime/cuda/device_model.h"
#include "kiln/runtime/cuda/gpu_backend.h"
#endif

namespace kiln::cli {

namespace {

// Why no GPU can run kiln's CUDA kernels here ("" when one can).
std::string gpu_unusable() {
#ifdef KILN_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("no usable CUDA device ({})", cudaGetErrorString(e));
  }
  if (n == 0) return "no CUDA device is present";
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    return "the CUDA device cannot be queried";
  }
  if (p.major != 9) {
    return fmt::format("{} is compute capability {}.{}; kiln's kernels are built for sm_90a (H100 / H200)", p.name,
                       p.major, p.minor);
  }
  return "";
#else
  return "this kiln was built without the CUDA backend (configure with nvcc on the PATH)";
#endif
}

}  // namespace

std::string resolve_device(const std::string& asked) {
  if (asked == "cpu") return "cpu";
  if (asked == "cuda") {
    const std::string why = gpu_unusable();
    if (!why.empty()) fail_invalid("--device cuda: {}", why);
    return "cuda";
  }
  if (asked == "auto") return gpu_unusable().empty() ? "cuda" : "cpu";
  fail(ErrorKind::Usage, "--device {}: expected auto, cpu or cuda", asked);
}

bool sampled_drafts_by_argmax(const std::string& asked, bool gpu) {
  if (asked == "argmax") return true;
  if (asked == "draw") return false;
  if (asked == "auto") return gpu;
  fail(ErrorKind::Usage, "--sampled-drafts {}: expected auto, argmax or draw", asked);
}

Drafting resolve_drafting(const std::filesystem::path& model, const ModelConfig& pre, const DraftingAsked& a) {
  if (!a.spec.empty() && a.spec != "dspark" && a.spec != "mtp" && a.spec != "off")
    fail(ErrorKind::Usage, "--spec {}: expected dspark, mtp or off", a.spec);
  if (a.spec == "off" && a.mtp.value_or(0) > 0) fail(ErrorKind::Usage, "--mtp {}: --spec off drafts nothing", *a.mtp);
  if (a.spec == "dspark" && !pre.dspark) fail_invalid("--spec dspark: {} has no DSpark drafter (no dspark_* keys)", model.string());
  Drafting d;
  d.dspark = a.spec == "dspark" || (a.spec.empty() && a.dspark_by_default && pre.dspark);
  if (d.dspark && pre.dspark->block_size > runtime::kMaxDSparkDrafts) {
    fail_invalid("{}: dspark_block_size is {}; kiln's DSpark drafting takes blocks of up to {} (DeepSeek's largest)",
                 model.string(), pre.dspark->block_size, runtime::kMaxDSparkDrafts);
  }
  d.most = d.dspark ? static_cast<int>(pre.dspark->block_size) : runtime::kMaxDrafts;
  if (a.spec != "off") d.k = a.mtp;
  if (d.dspark && !d.k) d.k = d.most;
  if (d.k && (*d.k < a.least || *d.k > d.most)) {
    fail(ErrorKind::Usage, "--mtp {}: expected {}..{} draft tokens per round{}", *d.k, a.least, d.most,
         d.dspark ? " (the DSpark block size)" : "");
  }
  if (!d.dspark && pre.num_mtp_layers == 0 && (d.k.value_or(0) > 0 || a.spec == "mtp")) {
    fail_invalid("{}: {} {}", d.k.value_or(0) > 0 ? fmt::format("--mtp {}", *d.k) : std::string("--spec mtp"), model.string(),
                 model::mtp_unavailable(pre, 0));
  }
  return d;
}

ops::Precision resolve_precision(const std::string& asked, const std::string& device) {
  if (asked == "exact") return ops::Precision::Exact;
  if (asked == "deepseek") return ops::Precision::DeepSeek;
  // auto: exact on both devices until the deepseek kernels have been run on a GPU (they were
  // built and tested on the CPU side only; docs/precision.md).
  if (asked == "auto") {
    (void)device;
    return ops::Precision::Exact;
  }
  fail(ErrorKind::Usage, "--precision {}: expected auto, exact or deepseek", asked);
}

BackendSession::BackendSession(const SessionOptions& o) : device_(resolve_device(o.device)), asked_slots_(o.max_slots) {
  const ops::Precision precision = resolve_precision(o.precision, device_);
  if (o.parallel.world < 1) fail(ErrorKind::Usage, "--tensor-parallel {}: expected at least 1", o.parallel.world);
  if (o.parallel.expert_parallel && o.parallel.world == 1) {
    fail(ErrorKind::Usage, "--expert-parallel: needs --tensor-parallel N with N > 1 (the experts are sharded over the ranks)");
  }
  if (device_ == "cpu") {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::PeakAnonSampler sampler;
    if (o.parallel.world > 1) check_parallel_layout(load_model_config(o.model), o.parallel);  // before loading
    loaded_ = runtime::load_model(o.model, o.threads, o.progress);
    model::set_precision(loaded_->weights, precision);
    if (o.parallel.world > 1) {  // the ranks' shards are cut from the weights in their final numerics
      loaded_->forward = std::make_unique<model::Forward>(loaded_->weights, o.threads, true, o.parallel);
      parallel_ = o.parallel;
      if (o.progress) {
        *o.progress << fmt::format("tensor parallel: {} ranks in this process{}\n", o.parallel.world,
                                   o.parallel.expert_parallel ? ", routed experts sharded by id" : "");
      }
    }
    const ModelConfig& c = loaded_->config;
    int64_t ctx = o.max_context > 0 ? o.max_context : c.max_position_embeddings;
    if (ctx <= 0) ctx = 4096;
    if (o.dspark) {
      dspark_ = std::make_unique<model::DSparkWeights>(model::load_dspark_weights(loaded_->checkpoint, loaded_->plan));
      if (o.progress) {
        *o.progress << fmt::format("DSpark drafter loaded: {} stages, block {}\n", c.dspark->stages, c.dspark->block_size);
      }
    }
    backend_ = std::make_unique<runtime::CpuBackend>(
        *loaded_->forward, runtime::CpuBackendOptions{o.max_slots, std::max(o.max_rows, 1), ctx}, dspark_.get());
    sampler.stop();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double gb = static_cast<double>(loaded_->plan.total_bytes) / 1e9;
    load_stats_ = fmt::format("load {:.2f} GB in {:.2f} s ({:.2f} GB/s); peak host memory RssAnon {:.2f} GB, VmHWM {:.2f} GB",
                              gb, dt, dt > 0 ? gb / dt : 0.0, static_cast<double>(sampler.peak()) / 1e9,
                              static_cast<double>(runtime::read_host_memory().vm_hwm) / 1e9);
    if (o.progress) *o.progress << load_stats_ << "\n" << std::flush;
    return;
  }
  if (o.parallel.world > 1) {
    fail_invalid("--tensor-parallel {}: the CUDA backend runs on one GPU (multi-GPU is not implemented yet); tensor "
                 "parallelism runs on the CPU backend (--device cpu), its ranks as threads of this process",
                 o.parallel.world);
  }
#ifdef KILN_HAVE_CUDA
  // The context bound needs only config.json; the weights go straight to the device.
  int64_t ctx = o.max_context;
  if (ctx <= 0) ctx = load_model_config(o.model).max_position_embeddings;
  if (ctx <= 0) ctx = 4096;
  runtime::cuda::DeviceModelOptions dmo;
  dmo.threads = o.threads;
  dmo.max_slots = o.max_slots;
  dmo.fewer_slots_ok = o.fewer_slots_ok;
  dmo.max_rows = o.max_rows;
  dmo.rows_per_slot = o.rows_per_slot;
  dmo.max_context = ctx;
  dmo.gpu_memory_fraction = o.gpu_memory_fraction;
  dmo.precision = precision;
  dmo.dspark = o.dspark;
  dmo.progress = o.progress;
  runtime::cuda::DeviceModel dm = runtime::cuda::open_device_model(o.model, dmo);
  load_stats_ = dm.stats.describe();
  backend_ = std::make_unique<runtime::cuda::GpuBackend>(std::move(dm.forward), std::move(dm.dspark));
#endif
}

BackendSession::~BackendSession() = default;

std::string BackendSession::describe() const {
  const auto& b = *backend_;
  std::string ranks;
  if (parallel_.world > 1) {
    std::vector<std::string> each;
    for (uint64_t bytes : loaded_->forward->rank_weight_bytes()) each.push_back(fmt::format("{:.3f}", static_cast<double>(bytes) / 1e9));
    ranks = fmt::format(" ({} tensor-parallel ranks{}: {} GB each)", parallel_.world,
                        parallel_.expert_parallel ? ", experts by id" : "", fmt::join(each, ", "));
  }
  return fmt::format("{}; weights {:.2f} GB{}; {} sequences x {} positions{}, {} rows per pass; {}", b.describe(),
                     static_cast<double>(b.weight_bytes()) / 1e9, ranks, b.max_slots(), b.max_context(),
                     slots_lowered() ? fmt::format(" (--max-batch {} lowered to what fits)", asked_slots_) : "",
                     b.max_rows(), load_stats_);
}

}  // namespace kiln::cli
