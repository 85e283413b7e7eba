// The host side of GroupedExperts (moe_grouped.h): validation, the repacking fills, dispatch.
#include "kiln/ops/cuda/moe_grouped.h"

#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_impl.h"

namespace kiln::ops::cuda {

namespace detail {
void launch_grouped_experts(bool fp4, const uint8_t* w, const uint8_t* sc, int count, int n, int k, const uint8_t* xq,
                            const float* xs, int x_div, const int32_t* expert, int P, float* y, int64_t ldy,
                            int32_t* order, int32_t* meta, cudaStream_t stream);  // moe_grouped.cu
}  // namespace detail

namespace {

// Writes bytes [off, off + len) of a repacked buffer whose byte i is byte_at(i).
template <typename F>
DeviceUploader::Fill fill_of(F byte_at) {
  return [byte_at](uint64_t off, uint64_t len, std::byte* dst) {
    for (uint64_t i = 0; i < len; ++i) dst[i] = byte_at(off + i);
  };
}

}  // namespace

struct GroupedExpertsImpl {
  bool fp4 = true;  // MXFP4, else FP8 (128 x 128 blocks)
  int count = 0, max_pairs = 0;
  int64_t n = 0, k = 0;
  detail::DeviceBuffer w, sc;
};

bool GroupedExperts::supports(const HostQuantLinear* weights, int count) {
  if (weights == nullptr || count < 1 || count > kMaxExperts) return false;
  const int64_t n = weights[0].n, k = weights[0].k;
  if (n <= 0 || k <= 0 || n % 16 != 0 || k % 128 != 0 || n >= (int64_t{1} << 30) || k >= (int64_t{1} << 20)) return false;
  const SchemeKind s0 = weights[0].scheme;
  if (s0 != SchemeKind::MXFP4 && (s0 != SchemeKind::FP8Block || n % 128 != 0)) return false;
  for (int e = 0; e < count; ++e) {
    const HostQuantLinear& w = weights[e];
    if (w.scheme != s0 || w.n != n || w.k != k) return false;
    if (s0 == SchemeKind::MXFP4 ? w.block_k != 32 : (w.block_n != 128 || w.block_k != 128)) return false;
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0;
}

GroupedExperts GroupedExperts::prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up) {
  if (!supports(weights, count))
    fail_invalid("{}: the grouped FP8 expert kernel takes {} MXFP4 (n % 16) or FP8 128 x 128 (n % 128) experts of one "
                 "[n, k] with k % 128 on sm_90",
                 weights ? weights[0].name : "experts", count);
  if (max_pairs < 1 || max_pairs > (1 << 24)) fail(ErrorKind::Usage, "grouped experts: max_pairs = {}", max_pairs);
  auto impl = std::make_unique<GroupedExpertsImpl>();
  GroupedExpertsImpl& d = *impl;
  d.count = count;
  d.max_pairs = max_pairs;
  d.n = weights[0].n;
  d.k = weights[0].k;
  d.fp4 = weights[0].scheme == SchemeKind::MXFP4;
  const int64_t n = d.n, k = d.k, S = k / 32, NB = k / 128;
  const int64_t ew = d.fp4 ? n * k / 2 : n * k, es = d.fp4 ? n * k / 32 : n / 128 * NB * 4;
  for (int e = 0; e < count; ++e) {
    const HostQuantLinear& w = weights[e];
    if (d.fp4 ? (w.weight_dtype != DType::U8 && w.weight_dtype != DType::I8) : w.weight_dtype != DType::F8_E4M3)
      fail_invalid("{}: weight is {}, expected {}", w.name, dtype_name(w.weight_dtype), d.fp4 ? "U8 / I8 e2m1 pairs" : "F8_E4M3");
    const bool scale_ok = d.fp4 ? (w.scale_dtype == DType::F8_E8M0 || w.scale_dtype == DType::U8)
                                : (w.scale_dtype == DType::F8_E8M0 || w.scale_dtype == DType::U8 ||
                                   w.scale_dtype == DType::F32 || w.scale_dtype == DType::BF16 || w.scale_dtype == DType::F16);
    if (!scale_ok) fail_invalid("{}: scale is {}, not a scale dtype of {}", w.name, dtype_name(w.scale_dtype), scheme_kind_name(w.scheme));
    if (static_cast<int64_t>(w.weight.size) != ew)
      fail_invalid("{}: weight holds {} bytes, expected {} for [{}, {}] {}", w.name, w.weight.size, ew, n, k,
                   scheme_kind_name(w.scheme));
    const int64_t srows = d.fp4 ? n : n / 128, scols = d.fp4 ? S : NB;
    if (w.scale_rows != srows || w.scale_cols != scols ||
        static_cast<int64_t>(w.scale.size) != srows * scols * static_cast<int64_t>(dtype_size(w.scale_dtype)))
      fail_invalid("{}: scale is [{}, {}] ({} bytes), expected [{}, {}]", w.name, w.scale_rows, w.scale_cols, w.scale.size,
                   srows, scols);
  }
  d.w = detail::DeviceBuffer(static_cast<size_t>(ew * count));
  d.sc = detail::DeviceBuffer(static_cast<size_t>(es * count));
  std::vector<detail::PendingUpload> uploads;
  for (int e = 0; e < count; ++e) {
    const std::byte* wsrc = weights[e].weight.data;
    const std::byte* ssrc = weights[e].scale.data;
    std::byte* wd = static_cast<std::byte*>(d.w.get()) + e * ew;
    std::byte* sd = static_cast<std::byte*>(d.sc.get()) + e * es;
    DeviceUploader::Fill wfill, sfill;
    if (d.fp4) {
      const int64_t half = k / 2;
      wfill = fill_of([wsrc, S, half](uint64_t i) {
        const uint64_t rec = i / 8, byte = i % 8, lane = rec % 32, s = (rec / 32) % static_cast<uint64_t>(S),
                       tile = rec / (32 * static_cast<uint64_t>(S));
        const uint64_t g = lane / 4, t = lane % 4;
        const uint64_t row = tile * 16 + g + ((byte / 2) % 2 ? 8 : 0);
        const uint64_t col = 32 * s + 4 * t + (byte >= 4 ? 16 : 0);
        return wsrc[row * static_cast<uint64_t>(half) + col / 2 + byte % 2];
      });
      sfill = fill_of([ssrc, S, NB](uint64_t i) {
        const uint64_t j = i % 4, r = (i / 4) % 16, b = (i / 64) % static_cast<uint64_t>(NB),
                       tile = i / (64 * static_cast<uint64_t>(NB));
        return ssrc[(tile * 16 + r) * static_cast<uint64_t>(S) + b * 4 + j];
      });
    } else {
      // 16 bytes per lane and step: a0 a1 a2 a3 = rows g, g + 8, g, g + 8 at inputs 4t.. and 16 + 4t..
      // Each code is checked for the e4m3 NaN code as it is copied (an error from up.finish()).
      wfill = fill_of([wsrc, S, k, name = std::string(weights[e].name)](uint64_t i) {
        const uint64_t rec = i / 16, byte = i % 16, lane = rec % 32, s = (rec / 32) % static_cast<uint64_t>(S),
                       tile = rec / (32 * static_cast<uint64_t>(S));
        const uint64_t g = lane / 4, t = lane % 4, reg = byte / 4;
        const uint64_t row = tile * 16 + g + (reg % 2 ? 8 : 0);
        const uint64_t col = 32 * s + 4 * t + (reg >= 2 ? 16 : 0) + byte % 4;
        const std::byte* code = wsrc + row * static_cast<uint64_t>(k) + col;
        detail::check_no_e4m3_nan(code, 1, name, row, col);
        return *code;
      });
      sfill = detail::scales_to_f32(ssrc, weights[e].scale_dtype);
    }
    uploads.push_back({wd, static_cast<uint64_t>(ew), std::move(wfill), {wsrc, weights[e].weight.size}});
    uploads.push_back({sd, static_cast<uint64_t>(es), std::move(sfill), {ssrc, weights[e].scale.size}});
  }
  detail::submit_uploads(uploads, up);
  GroupedExperts out;
  out.impl_ = std::move(impl);
  return out;
}

GroupedExperts::GroupedExperts() = default;
GroupedExperts::GroupedExperts(GroupedExperts&&) noexcept = default;
GroupedExperts& GroupedExperts::operator=(GroupedExperts&&) noexcept = default;
GroupedExperts::~GroupedExperts() = default;

void GroupedExperts::forward(const uint8_t* xq, const float* xs, int x_div, const int32_t* expert, int P, float* y,
                             int64_t ldy, int32_t* order, int32_t* meta, cudaStream_t stream) const {
  const GroupedExpertsImpl& d = *impl_;
  if (P < 1 || P > d.max_pairs) fail(ErrorKind::Usage, "grouped experts: P = {} is outside [1, {}]", P, d.max_pairs);
  if (x_div < 1 || ldy < d.n || !xq || !xs || !expert || !y || !order || !meta)
    fail(ErrorKind::Usage, "grouped experts: bad arguments (x_div {}, ldy {} for n {}, or a null pointer)", x_div, ldy,
         d.n);
  detail::launch_grouped_experts(d.fp4, static_cast<const uint8_t*>(d.w.get()), static_cast<const uint8_t*>(d.sc.get()),
                                 d.count, static_cast<int>(d.n), static_cast<int>(d.k), xq, xs, x_div, expert, P, y,
                                 ldy, order, meta, stream);
}

int64_t GroupedExperts::n() const { return impl_->n; }
int64_t GroupedExperts::k() const { return impl_->k; }
int64_t GroupedExperts::device_bytes() const { return static_cast<int64_t>(impl_->w.bytes() + impl_->sc.bytes()); }

}  // namespace kiln::ops::cuda
