// Prepare (validate, repack, upload, choose kernels) and launch of the CUDA linear
// layers of quant_linear.h. Kernels: quant_linear_kernels.cu.
#include "kiln/ops/quant_linear.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_detail.h"
#include "kiln/ops/cuda/quant_linear_impl.h"

namespace kiln::ops {
namespace cuda {
namespace {

using detail::DeviceBuffer;
using detail::LaunchFn;
using detail::LaunchShape;
using detail::LinearParams;
using detail::MmaArgs;
using detail::MmaOperands;
using detail::launch_mma_linear;
using detail::PendingUpload;
using detail::RowGroups;
using detail::check_no_e4m3_nan;
using detail::scales_to_f32;

static_assert(sizeof(LinearParams) == device::kLinearParamsBytes, "ops/device_sizes.h sizes the expert tables with it");
static_assert(detail::chunk_elems(SchemeKind::BF16) == device::linear_chunk_elems(SchemeKind::BF16) &&
              detail::chunk_elems(SchemeKind::FP8Block) == device::linear_chunk_elems(SchemeKind::FP8Block) &&
              detail::chunk_elems(SchemeKind::Int4Group) == device::linear_chunk_elems(SchemeKind::Int4Group) &&
              detail::chunk_elems(SchemeKind::MXFP4) == device::linear_chunk_elems(SchemeKind::MXFP4) &&
              detail::chunk_elems(SchemeKind::NVFP4) == device::linear_chunk_elems(SchemeKind::NVFP4));

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint32_t load_u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void expect_bytes(const HostQuantLinear& w, const char* what, HostBytes s, int64_t want) {
  if (static_cast<int64_t>(s.size) != want)
    fail_invalid("{}: {} holds {} bytes, expected {} for a [{}, {}] {} weight", w.name, what, s.size, want, w.n, w.k,
                 scheme_kind_name(w.scheme));
}

void expect_dtype(const HostQuantLinear& w, const char* what, DType got, std::initializer_list<DType> ok) {
  if (std::find(ok.begin(), ok.end(), got) != ok.end()) return;
  std::string names;
  for (DType d : ok) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
  fail_invalid("{}: {} is {}, the CUDA {} kernel expects {}", w.name, what, dtype_name(got), scheme_kind_name(w.scheme),
               names);
}

void expect_scale_shape(const HostQuantLinear& w, int64_t rows, int64_t cols) {
  if (w.scale_rows != rows || w.scale_cols != cols)
    fail_invalid("{}: scale is [{}, {}], expected [{}, {}] for a [{}, {}] {} weight (block {}x{})", w.name, w.scale_rows,
                 w.scale_cols, rows, cols, w.n, w.k, scheme_kind_name(w.scheme), w.block_n, w.block_k);
  expect_bytes(w, "scale", w.scale, rows * cols * static_cast<int64_t>(dtype_size(w.scale_dtype)));
}

// Scale columns of chunk c are c >> shift: the block / group must span a power-of-two
// number of whole chunks, or be the only column.
int group_shift(const HostQuantLinear& w, int64_t elems, int64_t cols) {
  if (cols == 1) return 30;
  if (w.block_k > 0 && w.block_k % elems == 0 && std::has_single_bit(static_cast<uint64_t>(w.block_k / elems)))
    return std::countr_zero(static_cast<uint64_t>(w.block_k / elems));
  fail_invalid("{}: {} block/group of {} inputs is not supported by the CUDA kernel (needs {} x a power of two)", w.name,
               scheme_kind_name(w.scheme), w.block_k, elems);
}

// ---- Fills: each writes bytes [off, off + len) of one prepared buffer from the host view.

// Rows of src_row bytes (src rows contiguous) laid out dst_row bytes apart, zero-padded.
// nan_name: the weight is fp8 e4m3 (src_row = k codes per row), checked for the NaN code.
DeviceUploader::Fill row_copy(const std::byte* src, int64_t src_row, int64_t dst_row, const char* nan_name) {
  std::string name = nan_name ? nan_name : "";
  const bool check = nan_name != nullptr;
  return [src, src_row, dst_row, check, name](uint64_t off, uint64_t len, std::byte* dst) {
    const uint64_t sr = static_cast<uint64_t>(src_row), dr = static_cast<uint64_t>(dst_row);
    for (uint64_t pos = off; pos < off + len;) {
      const uint64_t r = pos / dr, c = pos % dr, take = std::min(dr - c, off + len - pos);
      std::byte* out = dst + (pos - off);
      const uint64_t have = c < sr ? std::min(take, sr - c) : 0;
      if (have) {
        const std::byte* in = src + r * sr + c;
        std::memcpy(out, in, have);
        if (check) check_no_e4m3_nan(in, have, name, r, c);
      }
      if (take > have) std::memset(out + have, 0, take - have);
      pos += take;
    }
  };
}

// fp32 values: element i is `value(i)`; pieces may start and end inside an element.
template <typename F>
DeviceUploader::Fill floats_fill(F value) {
  return [value](uint64_t off, uint64_t len, std::byte* dst) {
    for (uint64_t i = off / 4; i * 4 < off + len; ++i) {
      const float v = value(i);
      const uint64_t b0 = std::max(i * 4, off), b1 = std::min(i * 4 + 4, off + len);
      std::memcpy(dst + (b0 - off), reinterpret_cast<const std::byte*>(&v) + (b0 - i * 4), b1 - b0);
    }
  };
}


// int4 zero points: byte r * groups + g of the prepared [n, groups] array from the words
// packed along n ([ceil(n / 8), groups], nibble r % 8).
DeviceUploader::Fill zero_points(const std::byte* src, int64_t groups) {
  const uint64_t G = static_cast<uint64_t>(groups);
  return [src, G](uint64_t off, uint64_t len, std::byte* dst) {
    for (uint64_t i = off; i < off + len; ++i) {
      const uint64_t r = i / G, g = i % G;
      const uint32_t zw = load_u32(src + 4 * ((r / 8) * G + g));
      dst[i - off] = static_cast<std::byte>((zw >> (4 * (r % 8))) & 0xF);
    }
  };
}

}  // namespace

void detail::check_no_e4m3_nan(const std::byte* in, uint64_t n, const std::string& name, uint64_t r, uint64_t c) {
  constexpr uint64_t k7F = 0x7F7F7F7F7F7F7F7Full, k01 = 0x0101010101010101ull, k80 = 0x8080808080808080ull;
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x;
    std::memcpy(&x, in + i, 8);
    const uint64_t v = (x & k7F) ^ k7F;  // a zero byte where the code is NaN
    if (((v - k01) & ~v & k80) != 0) break;
  }
  for (; i < n; ++i) {
    const uint8_t b = static_cast<uint8_t>(in[i]);
    if ((b & 0x7F) == 0x7F) fail_invalid("{}: weight element [{}, {}] is the e4m3 NaN code 0x{:02X}", name, r, c + i, b);
  }
}

DeviceUploader::Fill detail::scales_to_f32(const std::byte* src, DType dt) {
  const size_t es = dtype_size(dt);
  return floats_fill([src, dt, es](uint64_t i) { return scale_to_f32(dt, src + i * es); });
}

void detail::submit_uploads(std::vector<PendingUpload>& uploads, DeviceUploader* up) {
  for (PendingUpload& u : uploads) {
    if (u.bytes == 0) continue;
    if (up) {
      up->enqueue(u.dst, u.bytes, std::move(u.fill), u.src);
      continue;
    }
    std::vector<std::byte> host(u.bytes);
    u.fill(0, u.bytes, host.data());
    KILN_CUDA_CHECK(cudaMemcpy(u.dst, host.data(), u.bytes, cudaMemcpyHostToDevice));
  }
  if (!up) settle_legacy_stream();
  uploads.clear();
}

std::unique_ptr<QuantLinearImpl> detail::prepare_linear(const HostQuantLinear& w, int max_m, int rows_per_thread,
                                                        bool staging, std::vector<PendingUpload>& uploads,
                                                        LinearNumerics numerics) {
  if (w.n <= 0 || w.k <= 0) fail_invalid("{}: shape [{}, {}] is empty", w.name, w.n, w.k);
  if (rows_per_thread != 0 && rows_per_thread != 1 && rows_per_thread != 2 && rows_per_thread != 4)
    fail(ErrorKind::Usage, "{}: rows_per_thread = {} is not 0, 1, 2 or 4", w.name, rows_per_thread);
  if (max_m < 1 || max_m > 4096) fail(ErrorKind::Usage, "{}: max_m = {} is outside [1, 4096]", w.name, max_m);
  if (w.n >= (int64_t{1} << 31) || w.k >= (int64_t{1} << 30))
    fail_invalid("{}: shape [{}, {}] is too large for the CUDA linear kernel", w.name, w.n, w.k);
  auto impl = std::make_unique<QuantLinearImpl>();
  impl->scheme = w.scheme;
  impl->num = numerics;
  impl->n = w.n;
  impl->k = w.k;
  impl->max_m = max_m;
  const device::LinearLayout layout = device::linear_layout(w);
  const int64_t n = w.n, k = w.k, E = detail::chunk_elems(w.scheme);
  const int64_t kc = layout.kc, kp = layout.kp;
  impl->kp = kp;
  LinearParams& p = impl->params;
  p.n = n;
  p.kc = static_cast<int>(kc);
  // What fills the buffers (after validation; nothing is read here but the view's sizes).
  DeviceUploader::Fill wfill, sfill, zfill;
  int64_t src_row = 0;
  const char* nan_name = nullptr;
  DeviceUploader::Source scale_src{w.scale.data, w.scale.size};

  switch (w.scheme) {
    case SchemeKind::BF16: {
      expect_dtype(w, "weight", w.weight_dtype, {DType::BF16});
      expect_bytes(w, "weight", w.weight, n * k * 2);
      src_row = k * 2;
      break;
    }
    case SchemeKind::FP8Block: {
      expect_dtype(w, "weight", w.weight_dtype, {DType::F8_E4M3});
      expect_bytes(w, "weight", w.weight, n * k);
      expect_dtype(w, "scale", w.scale_dtype, {DType::F8_E8M0, DType::U8, DType::F32, DType::BF16, DType::F16});
      if (w.block_n <= 0 || w.block_k <= 0) fail_invalid("{}: fp8 block {}x{} is not positive", w.name, w.block_n, w.block_k);
      const int64_t srows = ceil_div(n, w.block_n), scols = ceil_div(k, w.block_k);
      expect_scale_shape(w, srows, scols);
      src_row = k;
      nan_name = w.name;
      p.grp_shift = group_shift(w, E, scols);
      p.block_n = static_cast<int>(std::min<int64_t>(w.block_n, n));
      p.scale_ld = static_cast<int>(scols);
      sfill = scales_to_f32(w.scale.data, w.scale_dtype);
      break;
    }
    case SchemeKind::Int4Group: {
      expect_dtype(w, "weight", w.weight_dtype, {DType::I32});
      const int64_t words = ceil_div(k, 8);
      expect_bytes(w, "weight", w.weight, n * words * 4);
      expect_dtype(w, "scale", w.scale_dtype, {DType::BF16, DType::F16, DType::F32});
      if (w.block_k <= 0) fail_invalid("{}: int4 group size {} is not positive", w.name, w.block_k);
      const int64_t groups = ceil_div(k, w.block_k);
      expect_scale_shape(w, n, groups);
      src_row = words * 4;
      p.grp_shift = group_shift(w, E, groups);
      p.scale_ld = static_cast<int>(groups);
      sfill = scales_to_f32(w.scale.data, w.scale_dtype);
      if (!w.zero_point.empty()) {
        expect_bytes(w, "zero point", w.zero_point, ceil_div(n, 8) * groups * 4);
        zfill = zero_points(w.zero_point.data, groups);
      }
      break;
    }
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: {
      const bool mx = w.scheme == SchemeKind::MXFP4;
      const int64_t g = mx ? 32 : 16;
      if (mx) {
        expect_dtype(w, "weight", w.weight_dtype, {DType::I8, DType::U8});
        expect_dtype(w, "scale", w.scale_dtype, {DType::F8_E8M0, DType::U8});
        if (k % 2) fail_invalid("{}: mxfp4 needs an even k, got {}", w.name, k);
      } else {
        expect_dtype(w, "weight", w.weight_dtype, {DType::U8});
        expect_dtype(w, "scale", w.scale_dtype, {DType::F8_E4M3});
        if (k % 16) fail_invalid("{}: nvfp4 needs k to be a multiple of 16, got {}", w.name, k);
      }
      if (w.block_k != g) fail_invalid("{}: {} group is {} inputs, expected {}", w.name, scheme_kind_name(w.scheme), w.block_k, g);
      expect_bytes(w, "weight", w.weight, n * k / 2);
      const int64_t scols = ceil_div(k, g);
      expect_scale_shape(w, n, scols);
      src_row = k / 2;
      // One (mxfp4) or two (nvfp4) scale bytes per 32-element chunk; missing ones are 0.
      const int64_t per_row = mx ? kc : 2 * kc;
      sfill = row_copy(w.scale.data, scols, per_row, nullptr);
      p.scale_ld = static_cast<int>(per_row);
      p.global = mx ? 1.0f : w.global;
      break;
    }
  }
  wfill = row_copy(w.weight.data, src_row, kc * 16, nan_name);

  impl->w = DeviceBuffer(static_cast<size_t>(layout.weight_bytes));
  p.w = impl->w.get();
  impl->scale = DeviceBuffer(static_cast<size_t>(layout.scale_bytes));
  p.scale = impl->scale.get();
  impl->zp = DeviceBuffer(static_cast<size_t>(layout.zero_point_bytes));
  if (layout.zero_point_bytes) p.zp = static_cast<const uint8_t*>(impl->zp.get());
  if (staging) impl->xpad = DeviceBuffer(static_cast<size_t>(layout.staging_bytes(max_m)));
  impl->weight_bytes = static_cast<int64_t>(impl->w.bytes() + impl->scale.bytes() + impl->zp.bytes());

  // Kernel choice for every M: the smallest token tile that holds M (tiles of 32 beyond),
  // then the fewest lanes per row (>= 8) that still give two blocks per multiprocessor.
  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int max_lk_log2 = std::clamp(static_cast<int>(std::bit_width(static_cast<uint64_t>(std::max<int64_t>(kc, 8) - 1))), 3, 8);
  impl->plans.resize(static_cast<size_t>(max_m));
  for (int M = 1; M <= max_m; ++M) {
    auto& pl = impl->plans[static_cast<size_t>(M - 1)];
    int mt = 1;
    // A weight so small that M = 1's grid leaves most multiprocessors idle (it is latency
    // bound, re-reading it from L2 is free): M token tiles of one row each, M = 1's kernel
    // and lanes, M times its blocks in one wave. Sharing x over a tile of M rows instead
    // multiplies each thread's serial work (its accumulators and their lane sums) by M:
    // twice M = 1's time at 6 rows on the bundled model's linears (H100, ncu). Each row's
    // sum is the same either way (same lanes, same chunk order), so the output is too.
    if (M > 1 && static_cast<int64_t>(impl->plans[0].shape.blocks) * M <= 2 * sms) {
      pl = impl->plans[0];
      pl.shape.mtiles = static_cast<unsigned>(M);
    } else {
      mt = 32;
      for (int t : detail::kTokenTiles)
        if (t >= M) {
          mt = t;
          break;
        }
      const int rw = rows_per_thread ? std::min(rows_per_thread, 64 / mt) : detail::rows_per_thread(w.scheme, mt);
      pl.fn = detail::select_launcher(w.scheme, mt, rw);
      if (!pl.fn) fail_invalid("internal: no {} kernel for {} tokens x {} rows", scheme_kind_name(w.scheme), mt, rw);
      pl.shape.mtiles = static_cast<unsigned>(ceil_div(M, mt));
      pl.rw = rw;
      auto blocks = [&](int l) { return static_cast<int64_t>(detail::row_blocks(n, rw, l)); };
      int l = 3;
      // Batch invariance: the lanes per row, which fix how each row's
      // sum is associated, are M = 1's for every M.
      const int64_t tiles_for_lanes = numerics.batch_invariant ? 1 : pl.shape.mtiles;
      while (l < max_lk_log2 && blocks(l) * tiles_for_lanes < 2 * sms) ++l;
      pl.shape.lk_log2 = l;
      pl.shape.blocks = static_cast<unsigned>(blocks(l));
    }
    pl.text = fmt::format("{} mt={} rw={} lk={} blocks={}x{}", scheme_kind_name(w.scheme), mt, pl.rw,
                          1 << pl.shape.lk_log2, pl.shape.blocks, pl.shape.mtiles);
  }
  // Batch-invariant numerics: the tensor-core kernels where the weight allows them, the
  // same kernel and summation order for every M (quant_linear_mma.h).
  MmaOperands mops{};
  if (numerics.batch_invariant && staging &&
      mma_supported(w.scheme, n, k, static_cast<int>(w.block_n), static_cast<int>(w.block_k), numerics.input, &mops)) {
    const int64_t ld = (int64_t{max_m} + 3) / 4 * 4;  // act_quant scale rows of max_m rounded to 16 bytes
    const int64_t need = act_scale_offset(max_m, k) + (k / 128) * ld * static_cast<int64_t>(sizeof(float));
    if (mops != MmaOperands::Fp8W_Fp8X || need <= static_cast<int64_t>(impl->xpad.bytes())) {
      impl->mma = mma_plan(mops, n, k, sms, numerics.bf16_output);
      detail::mma_allow_row_tiles();
      if (mops == MmaOperands::Fp8W_Fp8X) impl->act_scale_ld = ld;
      const std::string text = (mops == MmaOperands::Fp8W_Fp8X ? "act_quant + " : "") + mma_describe(*impl->mma);
      for (auto& pl : impl->plans) pl.text = text;
    }
  }
  uploads.push_back({impl->w.get(), impl->w.bytes(), std::move(wfill), {w.weight.data, w.weight.size}});
  if (sfill) uploads.push_back({impl->scale.get(), impl->scale.bytes(), std::move(sfill), scale_src});
  if (zfill) uploads.push_back({impl->zp.get(), impl->zp.bytes(), std::move(zfill), {w.zero_point.data, w.zero_point.size}});
  return impl;
}

namespace {

void prepare_with(const HostQuantLinear& w, int max_m, int rows_per_thread, DeviceUploader* up,
                  std::unique_ptr<QuantLinearImpl>& slot, LinearNumerics numerics = {}) {
  std::vector<PendingUpload> uploads;
  slot = detail::prepare_linear(w, max_m, rows_per_thread, true, uploads, numerics);
  // Forced variants stay on the CUDA-core kernels; cuBLASLt picks its algorithm per M, so
  // batch-invariant (non-exact) numerics leave it out.
  if (rows_per_thread == 0 && !numerics.batch_invariant) detail::prepare_lt(*slot);
  detail::submit_uploads(uploads, up);
}

}  // namespace

std::vector<std::byte> detail::download_prepared(const QuantLinearImpl& d) {
  std::vector<std::byte> out(d.w.bytes() + d.scale.bytes() + d.zp.bytes());
  size_t at = 0;
  for (const DeviceBuffer* b : {&d.w, &d.scale, &d.zp}) {
    if (b->bytes()) KILN_CUDA_CHECK(cudaMemcpy(out.data() + at, b->get(), b->bytes(), cudaMemcpyDeviceToHost));
    at += b->bytes();
  }
  return out;
}

namespace {

// The tensor-core path of batch-invariant numerics (output rounding included); false (the
// CUDA-core kernels then take it) when a grouped call's groups are not whole 16-row tiles
// or its x is not 16-byte aligned per group.
// quantized_by: the layer whose staging buffer already holds act_quant's codes and scales
// of these x rows (forward_pair); null quantizes them here.
bool mma_forward(const QuantLinearImpl& d, const float* x, int64_t ldx, int64_t x_group_stride, int groups, int M,
                 float* y, int64_t ldy, cudaStream_t st, const QuantLinearImpl* quantized_by = nullptr) {
  if (groups > 1 && (d.n / groups) % 16 != 0) return false;  // a tile would straddle two groups
  MmaArgs a;
  a.p = &d.params;
  a.k = d.k;
  a.M = M;
  a.y = y;
  a.ldy = ldy;
  a.group_rows = d.n / groups;
  a.x_group_stride = x_group_stride;
  if (d.mma->ops == MmaOperands::Fp8W_Fp8X) {
    const QuantLinearImpl& qd = quantized_by ? *quantized_by : d;
    auto* q = static_cast<uint8_t*>(qd.xpad.get());
    auto* sc = reinterpret_cast<float*>(q + detail::act_scale_offset(qd.max_m, qd.k));
    if (!quantized_by) cuda::act_quant(x, ldx, M, d.k, q, d.k, sc, ActScaleLayout{1, d.act_scale_ld}, st);
    a.xq = q;
    a.xs = sc;
    a.xs_ld = qd.act_scale_ld;
  } else {
    if (ldx % 4 != 0 || x_group_stride % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
      if (groups != 1) return false;
      auto* xp = static_cast<float*>(d.xpad.get());
      detail::launch_pad_rows(x, ldx, M, d.k, d.kp, xp, st);
      x = xp;
      ldx = d.kp;
    }
    a.x = x;
    a.ldx = ldx;
  }
  launch_mma_linear(*d.mma, a, st);
  return true;
}

}  // namespace

QuantLinear QuantLinear::prepare(const HostQuantLinear& w, int max_m, int rows_per_thread) {
  QuantLinear out;
  prepare_with(w, max_m, rows_per_thread, nullptr, out.impl_);
  return out;
}

QuantLinear QuantLinear::prepare(const HostQuantLinear& w, int max_m, DeviceUploader& up) {
  QuantLinear out;
  prepare_with(w, max_m, 0, &up, out.impl_);
  return out;
}

QuantLinear QuantLinear::prepare(const HostQuantLinear& w, int max_m, LinearNumerics numerics) {
  QuantLinear out;
  prepare_with(w, max_m, 0, nullptr, out.impl_, numerics);
  return out;
}

QuantLinear QuantLinear::prepare(const HostQuantLinear& w, int max_m, DeviceUploader& up, LinearNumerics numerics) {
  QuantLinear out;
  prepare_with(w, max_m, 0, &up, out.impl_, numerics);
  return out;
}

int64_t QuantLinear::device_bytes() const {
  return impl_ ? static_cast<int64_t>(impl_->w.bytes() + impl_->scale.bytes() + impl_->zp.bytes() + impl_->xpad.bytes())
               : 0;
}

std::vector<std::byte> QuantLinear::download_prepared() const { return detail::download_prepared(*impl_); }

QuantLinear::QuantLinear() = default;
QuantLinear::QuantLinear(QuantLinear&&) noexcept = default;
QuantLinear& QuantLinear::operator=(QuantLinear&&) noexcept = default;
QuantLinear::~QuantLinear() = default;

void QuantLinear::forward(const float* x, int64_t ldx, int M, float* y, int64_t ldy, void* stream) const {
  const QuantLinearImpl& d = *impl_;
  if (M < 1 || M > d.max_m) fail(ErrorKind::Usage, "linear forward: M = {} is outside [1, {}] (max_m at prepare)", M, d.max_m);
  if (ldx < d.k || ldy < d.n) fail(ErrorKind::Usage, "linear forward: ldx = {} < k = {} or ldy = {} < n = {}", ldx, d.k, ldy, d.n);
  auto st = static_cast<cudaStream_t>(stream);
  if (d.mma && mma_forward(d, x, ldx, 0, 1, M, y, ldy, st)) return;
  if (d.lt && M >= detail::kLtMinRows && detail::lt_forward(d, x, ldx, M, y, ldy, st)) return;
  const bool fake_quant = d.num.input == LinearInput::Fp8Block, round_in = d.num.input == LinearInput::Bf16;
  if (fake_quant || round_in || d.kp != d.k || ldx % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    auto* xp = static_cast<float*>(d.xpad.get());
    detail::launch_pad_rows(x, ldx, M, d.k, d.kp, xp, st);
    if (fake_quant) cuda::act_fake_quant(xp, d.kp, M, d.k, xp, d.kp, st);
    if (round_in) cuda::round_bf16(xp, d.kp, M, d.k, xp, d.kp, st);
    x = xp;
    ldx = d.kp;
  }
  const auto& pl = d.plans[static_cast<size_t>(M - 1)];
  pl.fn(d.params, pl.shape, x, ldx, M, y, ldy, RowGroups{d.n, 0, 0, 1}, st);
  if (d.num.bf16_output) cuda::round_bf16(y, ldy, M, d.n, y, ldy, st);
}

void QuantLinear::forward_pair(const QuantLinear& a, float* ya, int64_t ldya, const QuantLinear& b, float* yb,
                               int64_t ldyb, const float* x, int64_t ldx, int M, void* stream) {
  a.forward(x, ldx, M, ya, ldya, stream);
  const QuantLinearImpl &da = *a.impl_, &db = *b.impl_;
  auto quantizes = [](const QuantLinearImpl& d) { return d.mma && d.mma->ops == MmaOperands::Fp8W_Fp8X; };
  // a.forward checked M against a's max_m and ldx against k; b's own bounds are checked here.
  if (quantizes(da) && quantizes(db) && da.k == db.k && M <= db.max_m && ldyb >= db.n &&
      mma_forward(db, x, ldx, 0, 1, M, yb, ldyb, static_cast<cudaStream_t>(stream), &da))
    return;
  b.forward(x, ldx, M, yb, ldyb, stream);
}

namespace {
void grouped_launch(const QuantLinearImpl& d, const float* x, int64_t ldx, int64_t x_group_stride, int M, int groups,
                    float* y, int64_t ldy, cudaStream_t st);
}  // namespace

// One launch with the groups along grid.z, the lanes and token tiles of M's plan, and
// as many row blocks as one group's rows need. When x has to be staged (k not a whole
// number of chunks, or x / its rows / its group slices not 16-byte aligned) the groups
// run one after another, each first copying its slice into the [max_m, kp] staging
// buffer: the buffer stays the size prepare() gave it (it cannot know the group count)
// at the price of 2 x groups launches on a path the forward avoids by passing aligned x.
void QuantLinear::forward_grouped(const float* x, int64_t ldx, int64_t x_group_stride, int M, int groups, float* y,
                                  int64_t ldy, void* stream) const {
  const QuantLinearImpl& d = *impl_;
  if (M < 1 || M > d.max_m)
    fail(ErrorKind::Usage, "linear forward_grouped: M = {} is outside [1, {}] (max_m at prepare)", M, d.max_m);
  if (groups < 1 || groups > 65535 || d.n % groups != 0)
    fail(ErrorKind::Usage, "linear forward_grouped: groups = {} must be in [1, 65535] and divide n = {}", groups, d.n);
  if (x == nullptr || y == nullptr) fail(ErrorKind::Usage, "linear forward_grouped: x or y is null");
  if (x_group_stride < 0 || ldx < (groups - 1) * x_group_stride + d.k || ldy < d.n)
    fail(ErrorKind::Usage,
         "linear forward_grouped: x rows of {} floats cannot hold {} groups {} apart of k = {} (x_group_stride >= 0), "
         "or ldy = {} < n = {}",
         ldx, groups, x_group_stride, d.k, ldy, d.n);
  if (d.num.input == LinearInput::Fp8Block)
    fail(ErrorKind::Usage, "linear forward_grouped: the layer quantizes its input (act_quant per 128 columns of the "
                           "whole row), which a grouped product cannot take");
  auto st = static_cast<cudaStream_t>(stream);
  if (d.mma && mma_forward(d, x, ldx, x_group_stride, groups, M, y, ldy, st)) return;
  grouped_launch(d, x, ldx, x_group_stride, M, groups, y, ldy, st);
  if (d.num.bf16_output) cuda::round_bf16(y, ldy, M, d.n, y, ldy, st);
}

namespace {

void grouped_launch(const QuantLinearImpl& d, const float* x, int64_t ldx, int64_t x_group_stride, int M, int groups,
                    float* y, int64_t ldy, cudaStream_t st) {
  const auto& pl = d.plans[static_cast<size_t>(M - 1)];
  const int64_t rows = d.n / groups;
  LaunchShape shape = pl.shape;
  shape.blocks = detail::row_blocks(rows, pl.rw, shape.lk_log2);
  // Bf16 input: each group's slice is staged and rounded (the tensor-core path rounds in
  // its kernel; this one serves weights it does not take).
  const bool round_in = d.num.input == LinearInput::Bf16;
  if (round_in || d.kp != d.k || ldx % 4 != 0 || x_group_stride % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    auto* xp = static_cast<float*>(d.xpad.get());
    for (int g = 0; g < groups; ++g) {
      detail::launch_pad_rows(x + g * x_group_stride, ldx, M, d.k, d.kp, xp, st);
      if (round_in) cuda::round_bf16(xp, d.kp, M, d.k, xp, d.kp, st);
      pl.fn(d.params, shape, xp, d.kp, M, y, ldy, RowGroups{rows, 0, g, 1}, st);
    }
    return;
  }
  pl.fn(d.params, shape, x, ldx, M, y, ldy, RowGroups{rows, x_group_stride, 0, static_cast<unsigned>(groups)}, st);
}

}  // namespace

LinearNumerics QuantLinear::numerics() const { return impl_->num; }
int64_t QuantLinear::n() const { return impl_->n; }
int64_t QuantLinear::k() const { return impl_->k; }
int QuantLinear::max_m() const { return impl_->max_m; }
SchemeKind QuantLinear::scheme() const { return impl_->scheme; }
int64_t QuantLinear::weight_bytes() const { return impl_->weight_bytes; }
const char* QuantLinear::describe(int M) const {
  if (M < 1 || M > impl_->max_m) fail(ErrorKind::Usage, "linear describe: M = {} is outside [1, {}]", M, impl_->max_m);
  return impl_->plans[static_cast<size_t>(M - 1)].text.c_str();
}

}  // namespace cuda
}  // namespace kiln::ops
