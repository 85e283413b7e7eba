// The host side of GroupedExperts (moe_grouped.h): validation, the repacking fills, dispatch.
#include "kiln/ops/cuda/moe_grouped.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_impl.h"
#include "kiln/ops/grouped_expert_layout.h"

namespace kiln::ops::cuda {

namespace detail {
// Lets the row-tile kernels take their shared memory on the current device (once per device).
void allow_grouped_row_tiles();  // moe_grouped.cu
void launch_grouped_experts(bool fp4, bool fold, const uint8_t* w, const uint8_t* sc, int count, int n, int k,
                            const uint8_t* xq, const float* xs, int x_div, const int32_t* expert, int P, float* y,
                            int64_t ldy, int32_t* order, int32_t* meta, cudaStream_t stream);  // moe_grouped.cu
void launch_grouped_experts_bf16(bool nvfp4, const uint8_t* w, const uint8_t* sc, const uint8_t* zp, const float* global,
                                 int count, int n, int k, int group, const float* x, int64_t ldx, int x_div,
                                 const int32_t* expert, int P, float* y, int64_t ldy, int32_t* order, int32_t* meta,
                                 cudaStream_t stream);  // moe_grouped.cu
}  // namespace detail

namespace {

// Writes bytes [off, off + len) of a repacked buffer whose byte i is byte_at(i).
template <typename F>
DeviceUploader::Fill fill_of(F byte_at) {
  return [byte_at](uint64_t off, uint64_t len, std::byte* dst) {
    for (uint64_t i = 0; i < len; ++i) dst[i] = byte_at(off + i);
  };
}

// Whether an MXFP4 set's scales fold into its codes: every 128-input block of every row of
// every expert (grouped_layout::mxfp4_fold_word). A scan of the scale bytes (and of the codes
// of a block whose step exponents spread past the fold), experts split over threads.
bool mxfp4_scales_fold(const HostQuantLinear* weights, int count, int64_t n, int64_t k) {
  std::atomic<bool> ok{true};
  std::atomic<int> next{0};
  const uint64_t rb = static_cast<uint64_t>(k) / 2, S = static_cast<uint64_t>(k) / 32, NB = static_cast<uint64_t>(k) / 128;
  auto work = [&] {
    for (int e = next.fetch_add(1); e < count && ok.load(std::memory_order_relaxed); e = next.fetch_add(1)) {
      const std::byte* w = weights[e].weight.data;
      const std::byte* sc = weights[e].scale.data;
      for (uint64_t r = 0; r < static_cast<uint64_t>(n); ++r) {
        if (!grouped_layout::mxfp4_row_folds(w + r * rb, sc + r * S, NB)) {
          ok = false;
          return;
        }
      }
    }
  };
  const int threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, std::min(16, count));
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return ok.load();
}

}  // namespace

struct GroupedExpertsImpl {
  SchemeKind scheme = SchemeKind::MXFP4;  // MXFP4, FP8Block (128 x 128), NVFP4 or Int4Group
  int count = 0, max_pairs = 0, group = 0;  // group: int4's inputs per scale
  int64_t n = 0, k = 0;
  bool fold = false;                        // MXFP4: the scales folded into the codes
  detail::DeviceBuffer w, sc, zp, global;   // zp: int4 with zero points; global: NVFP4 [count]
};

namespace {

// NVFP4 / int4 experts (layouts in moe_grouped.cu): validation, allocation, repacking fills.
void prepare_bf16_kinds(const HostQuantLinear* weights, GroupedExpertsImpl& d, DeviceUploader* up) {
  const bool nv = d.scheme == SchemeKind::NVFP4;
  const int64_t n = d.n, k = d.k, steps = k / 16;
  d.group = nv ? 16 : static_cast<int>(weights[0].block_k);
  const int64_t G = k / d.group;
  const bool zps = !nv && weights[0].zero_point.size != 0;
  const int64_t ew = n * k / 2, es = nv ? n * steps : n * G * 4, ez = zps ? n * G : 0;
  for (int e = 0; e < d.count; ++e) {
    const HostQuantLinear& w = weights[e];
    const DType wdt = nv ? DType::U8 : DType::I32;
    if (w.weight_dtype != wdt)
      fail_invalid("{}: weight is {}, expected {}", w.name, dtype_name(w.weight_dtype), dtype_name(wdt));
    const bool scale_ok = nv ? w.scale_dtype == DType::F8_E4M3
                             : (w.scale_dtype == DType::BF16 || w.scale_dtype == DType::F16 || w.scale_dtype == DType::F32);
    if (!scale_ok)
      fail_invalid("{}: scale is {}, not a scale dtype of {}", w.name, dtype_name(w.scale_dtype), scheme_kind_name(w.scheme));
    if (static_cast<int64_t>(w.weight.size) != ew)
      fail_invalid("{}: weight holds {} bytes, expected {} for [{}, {}] {}", w.name, w.weight.size, ew, n, k,
                   scheme_kind_name(w.scheme));
    const int64_t scols = nv ? steps : G;
    if (w.scale_rows != n || w.scale_cols != scols ||
        static_cast<int64_t>(w.scale.size) != n * scols * static_cast<int64_t>(dtype_size(w.scale_dtype)))
      fail_invalid("{}: scale is [{}, {}] ({} bytes), expected [{}, {}]", w.name, w.scale_rows, w.scale_cols, w.scale.size,
                   n, scols);
    if (zps && static_cast<int64_t>(w.zero_point.size) != (n + 7) / 8 * G * 4)
      fail_invalid("{}: zero point holds {} bytes, expected {} ([{}, {}] I32)", w.name, w.zero_point.size,
                   (n + 7) / 8 * G * 4, (n + 7) / 8, G);
  }
  d.w = detail::DeviceBuffer(static_cast<size_t>(ew * d.count));
  d.sc = detail::DeviceBuffer(static_cast<size_t>(es * d.count));
  if (zps) d.zp = detail::DeviceBuffer(static_cast<size_t>(ez * d.count));
  if (nv) {
    std::vector<float> g(static_cast<size_t>(d.count));
    for (int e = 0; e < d.count; ++e) g[static_cast<size_t>(e)] = weights[e].global;
    d.global = detail::DeviceBuffer(g.size() * sizeof(float));
    d.global.upload(g.data(), g.size() * sizeof(float));
  }
  std::vector<detail::PendingUpload> uploads;
  for (int e = 0; e < d.count; ++e) {
    const HostQuantLinear& hw = weights[e];
    const std::byte* wsrc = hw.weight.data;
    const std::byte* ssrc = hw.scale.data;
    // Both store two 4-bit codes per byte along k, the lower input in the low nibble (int4's
    // little-endian I32 words of eight codes are the same bytes); the repacked records
    // take whole bytes (ops/grouped_expert_layout.h).
    DeviceUploader::Fill wfill = [wsrc, k](uint64_t off, uint64_t len, std::byte* dst) {
      grouped_layout::fill(grouped_layout::Kind::Nibbles, wsrc, static_cast<uint64_t>(k), off, len, dst);
    };
    DeviceUploader::Fill sfill;
    if (nv) {
      sfill = fill_of([ssrc, steps](uint64_t i) {
        const uint64_t r = i % 16, s = (i / 16) % static_cast<uint64_t>(steps),
                       tile = i / (16 * static_cast<uint64_t>(steps));
        return ssrc[(tile * 16 + r) * static_cast<uint64_t>(steps) + s];
      });
    } else {
      const DType dt = hw.scale_dtype;
      const size_t esz = dtype_size(dt);
      sfill = [ssrc, G, dt, esz](uint64_t off, uint64_t len, std::byte* dst) {
        for (uint64_t b = off; b < off + len; ++b) {
          const uint64_t i = b / 4, r = i % 16, gi = (i / 16) % static_cast<uint64_t>(G),
                         tile = i / (16 * static_cast<uint64_t>(G));
          const float v = scale_to_f32(dt, ssrc + ((tile * 16 + r) * static_cast<uint64_t>(G) + gi) * esz);
          dst[b - off] = reinterpret_cast<const std::byte*>(&v)[b % 4];
        }
      };
    }
    uploads.push_back({static_cast<std::byte*>(d.w.get()) + e * ew, static_cast<uint64_t>(ew), std::move(wfill),
                       {wsrc, hw.weight.size}});
    uploads.push_back({static_cast<std::byte*>(d.sc.get()) + e * es, static_cast<uint64_t>(es), std::move(sfill),
                       {ssrc, hw.scale.size}});
    if (zps) {
      const std::byte* zsrc = hw.zero_point.data;
      auto zfill = fill_of([zsrc, G](uint64_t i) {
        const uint64_t r = i % 16, gi = (i / 16) % static_cast<uint64_t>(G), tile = i / (16 * static_cast<uint64_t>(G));
        const uint64_t row = tile * 16 + r;
        uint32_t zw;
        std::memcpy(&zw, zsrc + 4 * ((row / 8) * static_cast<uint64_t>(G) + gi), 4);
        return static_cast<std::byte>((zw >> (4 * (row % 8))) & 0xFu);
      });
      uploads.push_back({static_cast<std::byte*>(d.zp.get()) + e * ez, static_cast<uint64_t>(ez), std::move(zfill),
                         {zsrc, hw.zero_point.size}});
    }
  }
  detail::submit_uploads(uploads, up);
}

}  // namespace


bool GroupedExperts::supports(const HostQuantLinear* weights, int count) {
  if (weights == nullptr || count < 1 || count > kMaxExperts) return false;
  const int64_t n = weights[0].n, k = weights[0].k;
  if (n <= 0 || k <= 0 || n % 16 != 0 || k % 128 != 0 || n >= (int64_t{1} << 30) || k >= (int64_t{1} << 20)) return false;
  const SchemeKind s0 = weights[0].scheme;
  if (s0 != SchemeKind::MXFP4 && s0 != SchemeKind::NVFP4 && s0 != SchemeKind::Int4Group &&
      (s0 != SchemeKind::FP8Block || n % 128 != 0))
    return false;
  for (int e = 0; e < count; ++e) {
    const HostQuantLinear& w = weights[e];
    if (w.scheme != s0 || w.n != n || w.k != k) return false;
    switch (s0) {
      case SchemeKind::MXFP4: if (w.block_k != 32) return false; break;
      case SchemeKind::NVFP4: if (w.block_k != 16) return false; break;
      case SchemeKind::Int4Group:
        if (w.block_k < 16 || w.block_k % 16 != 0 || k % w.block_k != 0 || w.block_k != weights[0].block_k ||
            w.g_idx.size != 0 || (w.zero_point.size == 0) != (weights[0].zero_point.size == 0))
          return false;
        break;
      default: if (w.block_n != 128 || w.block_k != 128) return false;
    }
  }
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0;
}

GroupedExperts GroupedExperts::prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up) {
  if (!supports(weights, count))
    fail_invalid("{}: the grouped expert kernels take {} MXFP4, NVFP4, int4 (groups of 16j, no act order; n % 16) or "
                 "FP8 128 x 128 (n % 128) experts of one [n, k] with k % 128 on sm_90",
                 weights ? weights[0].name : "experts", count);
  if (max_pairs < 1 || max_pairs > (1 << 24)) fail(ErrorKind::Usage, "grouped experts: max_pairs = {}", max_pairs);
  auto impl = std::make_unique<GroupedExpertsImpl>();
  GroupedExpertsImpl& d = *impl;
  detail::allow_grouped_row_tiles();
  d.count = count;
  d.max_pairs = max_pairs;
  d.n = weights[0].n;
  d.k = weights[0].k;
  d.scheme = weights[0].scheme;
  if (!takes_fp8_input(d.scheme)) {
    prepare_bf16_kinds(weights, d, up);
    GroupedExperts out;
    out.impl_ = std::move(impl);
    return out;
  }
  const bool fp4 = d.scheme == SchemeKind::MXFP4;
  const int64_t n = d.n, k = d.k, S = k / 32, NB = k / 128;
  const int64_t ew = fp4 ? n * k / 2 : n * k, es = fp4 ? n * k / 32 : n / 128 * NB * 4;
  for (int e = 0; e < count; ++e) {
    const HostQuantLinear& w = weights[e];
    if (fp4 ? (w.weight_dtype != DType::U8 && w.weight_dtype != DType::I8) : w.weight_dtype != DType::F8_E4M3)
      fail_invalid("{}: weight is {}, expected {}", w.name, dtype_name(w.weight_dtype), fp4 ? "U8 / I8 e2m1 pairs" : "F8_E4M3");
    const bool scale_ok = fp4 ? (w.scale_dtype == DType::F8_E8M0 || w.scale_dtype == DType::U8)
                                : (w.scale_dtype == DType::F8_E8M0 || w.scale_dtype == DType::U8 ||
                                   w.scale_dtype == DType::F32 || w.scale_dtype == DType::BF16 || w.scale_dtype == DType::F16);
    if (!scale_ok) fail_invalid("{}: scale is {}, not a scale dtype of {}", w.name, dtype_name(w.scale_dtype), scheme_kind_name(w.scheme));
    if (static_cast<int64_t>(w.weight.size) != ew)
      fail_invalid("{}: weight holds {} bytes, expected {} for [{}, {}] {}", w.name, w.weight.size, ew, n, k,
                   scheme_kind_name(w.scheme));
    const int64_t srows = fp4 ? n : n / 128, scols = fp4 ? S : NB;
    if (w.scale_rows != srows || w.scale_cols != scols ||
        static_cast<int64_t>(w.scale.size) != srows * scols * static_cast<int64_t>(dtype_size(w.scale_dtype)))
      fail_invalid("{}: scale is [{}, {}] ({} bytes), expected [{}, {}]", w.name, w.scale_rows, w.scale_cols, w.scale.size,
                   srows, scols);
  }
  d.fold = fp4 && mxfp4_scales_fold(weights, count, n, k);
  d.w = detail::DeviceBuffer(static_cast<size_t>(ew * count));
  d.sc = detail::DeviceBuffer(static_cast<size_t>(es * count));
  std::vector<detail::PendingUpload> uploads;
  for (int e = 0; e < count; ++e) {
    const std::byte* wsrc = weights[e].weight.data;
    const std::byte* ssrc = weights[e].scale.data;
    std::byte* wd = static_cast<std::byte*>(d.w.get()) + e * ew;
    std::byte* sd = static_cast<std::byte*>(d.sc.get()) + e * es;
    DeviceUploader::Fill wfill, sfill;
    if (fp4) {
      wfill = [wsrc, k](uint64_t off, uint64_t len, std::byte* dst) {
        grouped_layout::fill(grouped_layout::Kind::MXFP4, wsrc, static_cast<uint64_t>(k), off, len, dst);
      };
      if (d.fold) {
        // Word (tile, block, row r): the block's folded word (grouped_layout::mxfp4_fold_word,
        // which folds: the scan above), little-endian.
        sfill = [wsrc, ssrc, k, S, NB](uint64_t off, uint64_t len, std::byte* dst) {
          const uint64_t nb = static_cast<uint64_t>(NB), rb = static_cast<uint64_t>(k) / 2, s = static_cast<uint64_t>(S);
          for (uint64_t i = off; i < off + len;) {
            const uint64_t wi = i / 4, row = wi / (16 * nb) * 16 + wi % 16, b = (wi / 16) % nb;
            uint32_t word = 0;
            grouped_layout::mxfp4_fold_word(wsrc + row * rb, ssrc + row * s, b, word);
            for (; i < off + len && i / 4 == wi; ++i) *dst++ = static_cast<std::byte>((word >> (8 * (i % 4))) & 0xFFu);
          }
        };
      } else {
        sfill = fill_of([ssrc, S, NB](uint64_t i) {
          const uint64_t j = i % 4, r = (i / 4) % 16, b = (i / 64) % static_cast<uint64_t>(NB),
                         tile = i / (64 * static_cast<uint64_t>(NB));
          return ssrc[(tile * 16 + r) * static_cast<uint64_t>(S) + b * 4 + j];
        });
      }
    } else {
      // 16 bytes per lane and step (ops/grouped_expert_layout.h). Each code is checked for the
      // e4m3 NaN code once copied (an error from up.finish() naming its stored row and column).
      wfill = [wsrc, k, name = std::string(weights[e].name)](uint64_t off, uint64_t len, std::byte* dst) {
        using namespace grouped_layout;
        fill(Kind::FP8, wsrc, static_cast<uint64_t>(k), off, len, dst);
        for (uint64_t i = 0; i < len; ++i) {
          if ((static_cast<uint8_t>(dst[i]) & 0x7Fu) == 0x7Fu) {
            const SourceByte p = source_of(Kind::FP8, static_cast<uint64_t>(k), off + i);
            detail::check_no_e4m3_nan(dst + i, 1, name, p.row, p.col);
          }
        }
      };
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
  if (!takes_fp8_input(d.scheme))
    fail(ErrorKind::Usage, "grouped experts: {} experts take the bf16 input (forward_bf16)", scheme_kind_name(d.scheme));
  if (P < 1 || P > d.max_pairs) fail(ErrorKind::Usage, "grouped experts: P = {} is outside [1, {}]", P, d.max_pairs);
  if (x_div < 1 || ldy < d.n || !xq || !xs || !expert || !y || !order || !meta)
    fail(ErrorKind::Usage, "grouped experts: bad arguments (x_div {}, ldy {} for n {}, or a null pointer)", x_div, ldy,
         d.n);
  detail::launch_grouped_experts(d.scheme == SchemeKind::MXFP4, d.fold, static_cast<const uint8_t*>(d.w.get()), static_cast<const uint8_t*>(d.sc.get()),
                                 d.count, static_cast<int>(d.n), static_cast<int>(d.k), xq, xs, x_div, expert, P, y,
                                 ldy, order, meta, stream);
}

void GroupedExperts::forward_bf16(const float* x, int64_t ldx, int x_div, const int32_t* expert, int P, float* y,
                                  int64_t ldy, int32_t* order, int32_t* meta, cudaStream_t stream) const {
  const GroupedExpertsImpl& d = *impl_;
  if (takes_fp8_input(d.scheme))
    fail(ErrorKind::Usage, "grouped experts: {} experts take FP8 activations (forward)", scheme_kind_name(d.scheme));
  if (P < 1 || P > d.max_pairs) fail(ErrorKind::Usage, "grouped experts: P = {} is outside [1, {}]", P, d.max_pairs);
  if (x_div < 1 || ldy < d.n || ldx < d.k || ldx % 2 != 0 || reinterpret_cast<uintptr_t>(x) % 8 != 0 || !expert || !y ||
      !order || !meta)
    fail(ErrorKind::Usage, "grouped experts: bad arguments (x_div {}, ldx {} for k {}, ldy {} for n {}, or a null or "
                           "misaligned pointer)", x_div, ldx, d.k, ldy, d.n);
  detail::launch_grouped_experts_bf16(d.scheme == SchemeKind::NVFP4, static_cast<const uint8_t*>(d.w.get()),
                                      static_cast<const uint8_t*>(d.sc.get()), static_cast<const uint8_t*>(d.zp.get()),
                                      static_cast<const float*>(d.global.get()), d.count, static_cast<int>(d.n),
                                      static_cast<int>(d.k), d.group, x, ldx, x_div, expert, P, y, ldy, order, meta, stream);
}

bool GroupedExperts::fp8_input() const { return takes_fp8_input(impl_->scheme); }
const char* GroupedExperts::describe() const {
  switch (impl_->scheme) {
    case SchemeKind::MXFP4:
      return impl_->fold ? "grouped mxfp4 x fp8, scales folded into the codes" : "grouped mxfp4 x fp8, per-32 scales";
    case SchemeKind::FP8Block: return "grouped fp8_block x fp8";
    case SchemeKind::NVFP4: return "grouped nvfp4 x bf16";
    default: return "grouped int4 x bf16";
  }
}
int64_t GroupedExperts::n() const { return impl_->n; }
int64_t GroupedExperts::k() const { return impl_->k; }
int64_t GroupedExperts::device_bytes() const {
  return static_cast<int64_t>(impl_->w.bytes() + impl_->sc.bytes() + impl_->zp.bytes() + impl_->global.bytes());
}

}  // namespace kiln::ops::cuda
