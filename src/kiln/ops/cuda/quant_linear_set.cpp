// QuantLinearSet (quant_linear.h): the routed experts of one MoE layer on the GPU.
//
// Every expert is prepared exactly as QuantLinear::prepare(w, 1) prepares it (same
// validation, repacking and one-token plan), so its product sums exactly as that
// expert's QuantLinear::forward for one token. For each scheme present there is a device
// table of `count` LinearParams in which the experts of other schemes have a null weight;
// forward_indexed launches the indexed kernel once per present scheme over all P pairs,
// and each block reads its pair's expert id from device memory and returns at once when
// the id is out of range or the expert belongs to another scheme's launch. All experts of
// one scheme have the same [n, k], hence the same one-token plan; the launch keeps its
// rows per thread and picks the lanes per row for the pair count P the way QuantLinear
// picks them for M tokens (the fewest lanes, >= 8, that give every multiprocessor two
// blocks across all P pairs). With one pair that is the one-token plan, so a single
// pair sums exactly as its expert's QuantLinear::forward; with more pairs each thread
// walks more chunks of its row (a one-expert plan with P times the blocks left every
// thread a single chunk at decode sizes: latency-bound), and the sums are associated
// differently (fp32, within the kernels' tolerance of the reference).
//
// x staging: when k is not a whole number of chunks for some present scheme, or x rows
// are not 16-byte aligned, the ceil(P / x_div) x rows are first copied into a zero-padded
// [max_pairs, kp] buffer owned by the set (kp: k rounded up to the largest chunk of the
// present schemes, so every scheme reads the same values its own QuantLinear would).
// Calls that stage must therefore not run concurrently on two streams for the same set.
#include <algorithm>
#include <bit>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/moe_grouped.h"
#include "kiln/ops/cuda/quant_linear_detail.h"
#include "kiln/ops/cuda/quant_linear_impl.h"
#include "kiln/ops/quant_linear.h"

namespace kiln::ops::cuda {

using detail::DeviceBuffer;
using detail::LinearParams;

struct QuantLinearSet::Impl {
  int count = 0, max_pairs = 0;
  int64_t n = 0, k = 0;
  int64_t kp = 0;  // staging row width (see above)
  std::vector<std::unique_ptr<QuantLinearImpl>> experts;
  struct Launch {
    SchemeKind scheme{};
    detail::IndexedLaunchFn fn = nullptr;
    std::vector<detail::LaunchShape> shapes;  // [P - 1] for P = 1 .. max_pairs
    const LinearParams* table = nullptr;  // [count], inside `tables`
  };
  std::vector<Launch> launches;  // one per scheme present, in SchemeKind order
  DeviceBuffer tables;           // [launches.size()][count] LinearParams
  DeviceBuffer xpad;             // [max_pairs, kp] floats
  int64_t expert_bytes = 0;
  LinearNumerics num;
  // MXFP4 / FP8 experts with FP8 input, NVFP4 / int4 experts with the bf16 input, in deepseek
  // numerics: the grouped tensor-core kernels (moe_grouped.h) instead of `experts` /
  // `launches`; an FP8 input is quantized into xpad (codes, scales; the sort order after
  // them either way) and `tables` holds the sort's per-expert scratch.
  std::unique_ptr<GroupedExperts> grouped;
  int64_t scale_off = 0, order_off = 0;
};

namespace {

// Every expert's data is filled through `up` (null: synchronously) after everything that
// can throw, so no copy is pending when a failed prepare frees the experts.
QuantLinearSet::Impl* prepare_set(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up,
                                  std::unique_ptr<QuantLinearSet::Impl>& slot, LinearNumerics numerics = {}) {
  if (weights == nullptr || count < 1)
    fail(ErrorKind::Usage, "expert linear set: {} weights given, expected at least one", weights ? count : 0);
  if (max_pairs < 1 || max_pairs > 65535)
    fail(ErrorKind::Usage, "expert linear set {}: max_pairs = {} is outside [1, 65535]", weights[0].name, max_pairs);
  slot = std::make_unique<QuantLinearSet::Impl>();
  QuantLinearSet::Impl* impl = slot.get();
  using Impl = QuantLinearSet::Impl;
  std::vector<detail::PendingUpload> uploads;
  impl->count = count;
  impl->num = numerics;
  impl->max_pairs = max_pairs;
  impl->n = weights[0].n;
  impl->k = weights[0].k;
  const bool fp8_kind = GroupedExperts::takes_fp8_input(weights[0].scheme);
  if (numerics.bf16_output && numerics.batch_invariant &&
      (numerics.input == LinearInput::Fp8Block) == fp8_kind && GroupedExperts::supports(weights, count)) {
    // The same device bytes as the per-expert layout (ops/device_sizes.h): weights and
    // scales, one table entry per expert (here the sort's scratch), the x staging rows.
    const int64_t k = impl->k;
    impl->kp = k;
    impl->expert_bytes = device::linear_layout(weights[0]).stored_bytes();
    impl->tables = DeviceBuffer(static_cast<size_t>(count) * sizeof(LinearParams));
    impl->xpad = DeviceBuffer(static_cast<size_t>(max_pairs) * static_cast<size_t>(k) * sizeof(float));
    impl->scale_off = (int64_t{max_pairs} * k + 15) / 16 * 16;
    impl->order_off = impl->scale_off + (int64_t{max_pairs} * (k / 128) * 4 + 15) / 16 * 16;
    if (impl->order_off + int64_t{max_pairs} * 4 > static_cast<int64_t>(impl->xpad.bytes()))
      fail_invalid("internal: grouped expert staging does not fit");
    impl->grouped = std::make_unique<GroupedExperts>(GroupedExperts::prepare(weights, count, max_pairs, up));
    return impl;
  }
  for (int e = 0; e < count; ++e) {
    const HostQuantLinear& w = weights[e];
    if (w.n != impl->n || w.k != impl->k)
      fail_invalid("{}: expert {} is [{}, {}], expected [{}, {}] like {} (all experts of a set share one shape)", w.name,
                   e, w.n, w.k, impl->n, impl->k, weights[0].name);
    impl->experts.push_back(detail::prepare_linear(w, 1, 0, /*staging=*/false, uploads));  // the set stages x itself
    impl->expert_bytes = std::max(impl->expert_bytes, impl->experts.back()->weight_bytes);
  }

  const SchemeKind all[] = {SchemeKind::BF16, SchemeKind::FP8Block, SchemeKind::Int4Group, SchemeKind::MXFP4,
                              SchemeKind::NVFP4};
  std::vector<LinearParams> host_tables;
  for (SchemeKind s : all) {
    const QuantLinearImpl* first = nullptr;
    std::vector<LinearParams> table(static_cast<size_t>(count));  // null weights: not this scheme
    for (int e = 0; e < count; ++e) {
      const QuantLinearImpl& x = *impl->experts[static_cast<size_t>(e)];
      if (x.scheme != s) continue;
      const auto& pl = x.plans[0];
      if (!first) {
        first = &x;
      } else if (pl.rw != first->plans[0].rw || pl.shape.lk_log2 != first->plans[0].shape.lk_log2 ||
                 pl.shape.blocks != first->plans[0].shape.blocks) {
        fail_invalid("internal: {} experts of one shape got different one-token plans ({} / {})", weights[e].name,
                     pl.text, first->plans[0].text);
      }
      table[static_cast<size_t>(e)] = x.params;
    }
    if (!first) continue;
    impl->kp = std::max(impl->kp, first->kp);
    Impl::Launch l;
    l.scheme = s;
    {
      int dev = 0, sms = 0;
      KILN_CUDA_CHECK(cudaGetDevice(&dev));
      KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
      const int kc = first->params.kc, rw = first->plans[0].rw;
      const int max_lk_log2 =
          std::clamp(static_cast<int>(std::bit_width(static_cast<uint64_t>(std::max(kc, 8) - 1))), 3, 8);
      for (int P = 1; P <= max_pairs; ++P) {
        int lk = 3;
        // Batch invariance: one pair's lanes for every P.
        const int64_t pairs_for_lanes = numerics.batch_invariant ? 1 : P;
        while (lk < max_lk_log2 && static_cast<int64_t>(detail::row_blocks(impl->n, rw, lk)) * pairs_for_lanes < 2 * sms)
          ++lk;
        detail::LaunchShape sh = first->plans[0].shape;
        sh.lk_log2 = lk;
        sh.blocks = detail::row_blocks(impl->n, rw, lk);
        l.shapes.push_back(sh);
      }
    }
    l.fn = detail::select_indexed_launcher(s, first->plans[0].rw);
    if (!l.fn) fail_invalid("internal: no indexed {} kernel for {} rows per thread", scheme_kind_name(s), first->plans[0].rw);
    impl->launches.push_back(l);
    host_tables.insert(host_tables.end(), table.begin(), table.end());
  }
  impl->tables = DeviceBuffer(host_tables.size() * sizeof(LinearParams));
  impl->tables.upload(host_tables.data(), host_tables.size() * sizeof(LinearParams));
  for (size_t i = 0; i < impl->launches.size(); ++i)
    impl->launches[i].table = static_cast<const LinearParams*>(impl->tables.get()) + i * static_cast<size_t>(count);
  impl->xpad = DeviceBuffer(static_cast<size_t>(max_pairs) * static_cast<size_t>(impl->kp) * sizeof(float));
  detail::submit_uploads(uploads, up);
  return impl;
}

}  // namespace

QuantLinearSet QuantLinearSet::prepare(const HostQuantLinear* weights, int count, int max_pairs) {
  QuantLinearSet out;
  prepare_set(weights, count, max_pairs, nullptr, out.impl_);
  return out;
}

QuantLinearSet QuantLinearSet::prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader& up) {
  QuantLinearSet out;
  prepare_set(weights, count, max_pairs, &up, out.impl_);
  return out;
}

QuantLinearSet QuantLinearSet::prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up,
                                       LinearNumerics numerics) {
  QuantLinearSet out;
  prepare_set(weights, count, max_pairs, up, out.impl_, numerics);
  return out;
}

const char* QuantLinearSet::describe() const { return impl_->grouped ? impl_->grouped->describe() : "per-expert kernels"; }

int64_t QuantLinearSet::device_bytes() const {
  if (!impl_) return 0;
  int64_t b = static_cast<int64_t>(impl_->tables.bytes() + impl_->xpad.bytes());
  if (impl_->grouped) b += impl_->grouped->device_bytes();
  for (const auto& e : impl_->experts) b += static_cast<int64_t>(e->w.bytes() + e->scale.bytes() + e->zp.bytes() + e->xpad.bytes());
  return b;
}

std::vector<std::byte> QuantLinearSet::download_prepared(int e) const {
  if (e < 0 || e >= impl_->count) fail(ErrorKind::Usage, "expert linear set: expert {} of {}", e, impl_->count);
  if (impl_->grouped) fail(ErrorKind::Usage, "expert linear set: the grouped kernel's experts are repacked (no per-expert layout)");
  return detail::download_prepared(*impl_->experts[static_cast<size_t>(e)]);
}


QuantLinearSet::QuantLinearSet() = default;
QuantLinearSet::QuantLinearSet(QuantLinearSet&&) noexcept = default;
QuantLinearSet& QuantLinearSet::operator=(QuantLinearSet&&) noexcept = default;
QuantLinearSet::~QuantLinearSet() = default;

void QuantLinearSet::forward_indexed(const float* x, int64_t ldx, int x_div, const int32_t* expert, int P, float* y,
                                     int64_t ldy, void* stream) const {
  const Impl& d = *impl_;
  if (P < 1 || P > d.max_pairs)
    fail(ErrorKind::Usage, "expert linear forward_indexed: P = {} is outside [1, {}] (max_pairs at prepare)", P,
         d.max_pairs);
  if (x_div < 1) fail(ErrorKind::Usage, "expert linear forward_indexed: x_div = {} is not positive", x_div);
  if (x == nullptr || y == nullptr || expert == nullptr)
    fail(ErrorKind::Usage, "expert linear forward_indexed: x, y or expert is null");
  if (ldx < d.k || ldy < d.n)
    fail(ErrorKind::Usage, "expert linear forward_indexed: ldx = {} < k = {} or ldy = {} < n = {}", ldx, d.k, ldy, d.n);
  auto st = static_cast<cudaStream_t>(stream);
  if (d.grouped && !d.grouped->fp8_input()) {
    // NVFP4 / int4: the input as it is (rows 8-byte aligned, as the forward's are).
    auto* order = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(d.xpad.get()) + d.order_off);
    d.grouped->forward_bf16(x, ldx, x_div, expert, P, y, ldy, order, static_cast<int32_t*>(d.tables.get()), st);
    return;
  }
  if (d.grouped) {
    auto* base = static_cast<uint8_t*>(d.xpad.get());
    auto* q = base;
    auto* sc = reinterpret_cast<float*>(base + d.scale_off);
    auto* order = reinterpret_cast<int32_t*>(base + d.order_off);
    cuda::act_quant(x, ldx, (P + x_div - 1) / x_div, d.k, q, d.k, sc, ActScaleLayout{d.k / 128, 1}, st);
    d.grouped->forward(q, sc, x_div, expert, P, y, ldy, order, static_cast<int32_t*>(d.tables.get()), st);
    return;
  }
  const bool fake_quant = d.num.input == LinearInput::Fp8Block;
  if (fake_quant || d.kp != d.k || ldx % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    auto* xp = static_cast<float*>(d.xpad.get());
    const int rows = (P + x_div - 1) / x_div;
    detail::launch_pad_rows(x, ldx, rows, d.k, d.kp, xp, st);
    if (fake_quant) cuda::act_fake_quant(xp, d.kp, rows, d.k, xp, d.kp, st);
    x = xp;
    ldx = d.kp;
  }
  for (const auto& l : d.launches)
    l.fn(l.table, d.count, l.shapes[static_cast<size_t>(P - 1)], x, ldx, x_div, expert, P, y, ldy, st);
  if (d.num.bf16_output) cuda::round_bf16(y, ldy, P, d.n, y, ldy, st);
}

int QuantLinearSet::count() const { return impl_->count; }
int64_t QuantLinearSet::n() const { return impl_->n; }
int64_t QuantLinearSet::k() const { return impl_->k; }
int64_t QuantLinearSet::expert_bytes() const { return impl_->expert_bytes; }

}  // namespace kiln::ops::cuda
