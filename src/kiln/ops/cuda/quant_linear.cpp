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
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/quant_linear_detail.h"
#include "kiln/ops/cuda/quant_linear_impl.h"

namespace kiln::ops {

const char* linear_scheme_name(LinearScheme s) {
  switch (s) {
    case LinearScheme::BF16: return "bf16";
    case LinearScheme::FP8Block: return "fp8_block";
    case LinearScheme::Int4Group: return "int4_group";
    case LinearScheme::MXFP4: return "mxfp4";
    case LinearScheme::NVFP4: return "nvfp4";
  }
  return "?";
}

namespace cuda {
namespace {

using detail::DeviceBuffer;
using detail::LaunchFn;
using detail::LaunchShape;
using detail::LinearParams;
using detail::RowGroups;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint32_t load_u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

void expect_bytes(const HostQuantLinear& w, const char* what, HostBytes s, int64_t want) {
  if (static_cast<int64_t>(s.size) != want)
    fail_invalid("{}: {} holds {} bytes, expected {} for a [{}, {}] {} weight", w.name, what, s.size, want, w.n, w.k,
                 linear_scheme_name(w.scheme));
}

void expect_dtype(const HostQuantLinear& w, const char* what, DType got, std::initializer_list<DType> ok) {
  if (std::find(ok.begin(), ok.end(), got) != ok.end()) return;
  std::string names;
  for (DType d : ok) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
  fail_invalid("{}: {} is {}, the CUDA {} kernel expects {}", w.name, what, dtype_name(got), linear_scheme_name(w.scheme),
               names);
}

void expect_scale_shape(const HostQuantLinear& w, int64_t rows, int64_t cols) {
  if (w.scale_rows != rows || w.scale_cols != cols)
    fail_invalid("{}: scale is [{}, {}], expected [{}, {}] for a [{}, {}] {} weight (block {}x{})", w.name, w.scale_rows,
                 w.scale_cols, rows, cols, w.n, w.k, linear_scheme_name(w.scheme), w.block_n, w.block_k);
  expect_bytes(w, "scale", w.scale, rows * cols * static_cast<int64_t>(dtype_size(w.scale_dtype)));
}

// Scale columns of chunk c are c >> shift: the block / group must span a power-of-two
// number of whole chunks, or be the only column.
int group_shift(const HostQuantLinear& w, int64_t elems, int64_t cols) {
  if (cols == 1) return 30;
  if (w.block_k > 0 && w.block_k % elems == 0 && std::has_single_bit(static_cast<uint64_t>(w.block_k / elems)))
    return std::countr_zero(static_cast<uint64_t>(w.block_k / elems));
  fail_invalid("{}: {} block/group of {} inputs is not supported by the CUDA kernel (needs {} x a power of two)", w.name,
               linear_scheme_name(w.scheme), w.block_k, elems);
}

}  // namespace

std::unique_ptr<QuantLinearImpl> detail::prepare_linear(const HostQuantLinear& w, int max_m, int rows_per_thread) {
  if (w.n <= 0 || w.k <= 0) fail_invalid("{}: shape [{}, {}] is empty", w.name, w.n, w.k);
  if (rows_per_thread != 0 && rows_per_thread != 1 && rows_per_thread != 2 && rows_per_thread != 4)
    fail(ErrorKind::Usage, "{}: rows_per_thread = {} is not 0, 1, 2 or 4", w.name, rows_per_thread);
  if (max_m < 1 || max_m > 4096) fail(ErrorKind::Usage, "{}: max_m = {} is outside [1, 4096]", w.name, max_m);
  if (w.n >= (int64_t{1} << 31) || w.k >= (int64_t{1} << 30))
    fail_invalid("{}: shape [{}, {}] is too large for the CUDA linear kernel", w.name, w.n, w.k);
  auto impl = std::make_unique<QuantLinearImpl>();
  impl->scheme = w.scheme;
  impl->n = w.n;
  impl->k = w.k;
  impl->max_m = max_m;
  const int64_t n = w.n, k = w.k, E = detail::chunk_elems(w.scheme);
  const int64_t kc = ceil_div(k, E), kp = kc * E;
  impl->kp = kp;
  std::vector<std::byte> wq(static_cast<size_t>(n * kc * 16), std::byte{0});
  auto copy_rows = [&](int64_t row_bytes) {
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(wq.data() + r * kc * 16, w.weight.data + r * row_bytes, static_cast<size_t>(row_bytes));
  };
  std::vector<float> sf;     // f32 scales (fp8_block, int4_group)
  std::vector<uint8_t> sb;   // byte scales (mxfp4, nvfp4)
  std::vector<uint8_t> zpb;  // int4 zero points
  LinearParams& p = impl->params;
  p.n = n;
  p.kc = static_cast<int>(kc);

  switch (w.scheme) {
    case LinearScheme::BF16: {
      expect_dtype(w, "weight", w.weight_dtype, {DType::BF16});
      expect_bytes(w, "weight", w.weight, n * k * 2);
      copy_rows(k * 2);
      break;
    }
    case LinearScheme::FP8Block: {
      expect_dtype(w, "weight", w.weight_dtype, {DType::F8_E4M3});
      expect_bytes(w, "weight", w.weight, n * k);
      expect_dtype(w, "scale", w.scale_dtype, {DType::F8_E8M0, DType::U8, DType::F32, DType::BF16, DType::F16});
      if (w.block_n <= 0 || w.block_k <= 0) fail_invalid("{}: fp8 block {}x{} is not positive", w.name, w.block_n, w.block_k);
      const int64_t srows = ceil_div(n, w.block_n), scols = ceil_div(k, w.block_k);
      expect_scale_shape(w, srows, scols);
      for (int64_t i = 0; i < n * k; ++i) {
        if ((static_cast<uint8_t>(w.weight.data[i]) & 0x7F) == 0x7F)
          fail_invalid("{}: weight element [{}, {}] is the e4m3 NaN code 0x{:02X}", w.name, i / k, i % k,
                       static_cast<uint8_t>(w.weight.data[i]));
      }
      copy_rows(k);
      p.grp_shift = group_shift(w, E, scols);
      p.block_n = static_cast<int>(std::min<int64_t>(w.block_n, n));
      p.scale_ld = static_cast<int>(scols);
      sf.resize(static_cast<size_t>(srows * scols));
      const size_t es = dtype_size(w.scale_dtype);
      for (size_t i = 0; i < sf.size(); ++i) sf[i] = scale_to_f32(w.scale_dtype, w.scale.data + i * es);
      break;
    }
    case LinearScheme::Int4Group: {
      expect_dtype(w, "weight_packed", w.weight_dtype, {DType::I32});
      const int64_t words = ceil_div(k, 8);
      expect_bytes(w, "weight_packed", w.weight, n * words * 4);
      expect_dtype(w, "weight_scale", w.scale_dtype, {DType::BF16, DType::F16, DType::F32});
      if (w.block_k <= 0) fail_invalid("{}: int4 group size {} is not positive", w.name, w.block_k);
      const int64_t groups = ceil_div(k, w.block_k);
      expect_scale_shape(w, n, groups);
      copy_rows(words * 4);
      p.grp_shift = group_shift(w, E, groups);
      p.scale_ld = static_cast<int>(groups);
      sf.resize(static_cast<size_t>(n * groups));
      const size_t es = dtype_size(w.scale_dtype);
      for (size_t i = 0; i < sf.size(); ++i) sf[i] = scale_to_f32(w.scale_dtype, w.scale.data + i * es);
      if (!w.zero_point.empty()) {
        expect_bytes(w, "weight_zero_point", w.zero_point, ceil_div(n, 8) * groups * 4);
        zpb.resize(static_cast<size_t>(n * groups));
        for (int64_t r = 0; r < n; ++r)
          for (int64_t g = 0; g < groups; ++g) {
            const uint32_t zw = load_u32(w.zero_point.data + 4 * ((r / 8) * groups + g));
            zpb[static_cast<size_t>(r * groups + g)] = static_cast<uint8_t>((zw >> (4 * (r % 8))) & 0xF);
          }
      }
      break;
    }
    case LinearScheme::MXFP4:
    case LinearScheme::NVFP4: {
      const bool mx = w.scheme == LinearScheme::MXFP4;
      const int64_t g = mx ? 32 : 16;
      if (mx) {
        expect_dtype(w, "weight", w.weight_dtype, {DType::I8, DType::U8});
        expect_dtype(w, "scale", w.scale_dtype, {DType::F8_E8M0, DType::U8});
        if (k % 2) fail_invalid("{}: mxfp4 needs an even k, got {}", w.name, k);
      } else {
        expect_dtype(w, "weight", w.weight_dtype, {DType::U8});
        expect_dtype(w, "weight_scale", w.scale_dtype, {DType::F8_E4M3});
        if (k % 16) fail_invalid("{}: nvfp4 needs k to be a multiple of 16, got {}", w.name, k);
      }
      if (w.block_k != g) fail_invalid("{}: {} group is {} inputs, expected {}", w.name, linear_scheme_name(w.scheme), w.block_k, g);
      expect_bytes(w, "weight", w.weight, n * k / 2);
      const int64_t scols = ceil_div(k, g);
      expect_scale_shape(w, n, scols);
      copy_rows(k / 2);
      // One (mxfp4) or two (nvfp4) scale bytes per 32-element chunk; missing ones are 0.
      const int64_t per_row = mx ? kc : 2 * kc;
      sb.assign(static_cast<size_t>(n * per_row), 0);
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(sb.data() + r * per_row, w.scale.data + r * scols, static_cast<size_t>(scols));
      p.scale_ld = static_cast<int>(per_row);
      p.global = mx ? 1.0f : w.global;
      break;
    }
  }

  impl->w = DeviceBuffer(wq.size());
  impl->w.upload(wq.data(), wq.size());
  p.w = impl->w.get();
  if (!sf.empty()) {
    impl->scale = DeviceBuffer(sf.size() * sizeof(float));
    impl->scale.upload(sf.data(), sf.size() * sizeof(float));
  } else if (!sb.empty()) {
    impl->scale = DeviceBuffer(sb.size());
    impl->scale.upload(sb.data(), sb.size());
  }
  p.scale = impl->scale.get();
  if (!zpb.empty()) {
    impl->zp = DeviceBuffer(zpb.size());
    impl->zp.upload(zpb.data(), zpb.size());
    p.zp = static_cast<const uint8_t*>(impl->zp.get());
  }
  impl->xpad = DeviceBuffer(static_cast<size_t>(max_m) * static_cast<size_t>(kp) * sizeof(float));
  impl->weight_bytes = static_cast<int64_t>(impl->w.bytes() + impl->scale.bytes() + impl->zp.bytes());

  // Kernel choice for every M: the smallest token tile that holds M (tiles of 32 beyond),
  // then the fewest lanes per row (>= 8) that still give two blocks per multiprocessor.
  int dev = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int max_lk_log2 = std::clamp(static_cast<int>(std::bit_width(static_cast<uint64_t>(std::max<int64_t>(kc, 8) - 1))), 3, 8);
  impl->plans.resize(static_cast<size_t>(max_m));
  for (int M = 1; M <= max_m; ++M) {
    int mt = 32;
    for (int t : detail::kTokenTiles)
      if (t >= M) {
        mt = t;
        break;
      }
    auto& pl = impl->plans[static_cast<size_t>(M - 1)];
    const int rw = rows_per_thread ? std::min(rows_per_thread, 64 / mt) : detail::rows_per_thread(w.scheme, mt);
    pl.fn = detail::select_launcher(w.scheme, mt, rw);
    if (!pl.fn) fail_invalid("internal: no {} kernel for {} tokens x {} rows", linear_scheme_name(w.scheme), mt, rw);
    pl.shape.mtiles = static_cast<unsigned>(ceil_div(M, mt));
    pl.rw = rw;
    auto blocks = [&](int l) { return static_cast<int64_t>(detail::row_blocks(n, rw, l)); };
    int l = 3;
    while (l < max_lk_log2 && blocks(l) * pl.shape.mtiles < 2 * sms) ++l;
    pl.shape.lk_log2 = l;
    pl.shape.blocks = static_cast<unsigned>(blocks(l));
    pl.text = fmt::format("{} mt={} rw={} lk={} blocks={}x{}", linear_scheme_name(w.scheme), mt, rw, 1 << l,
                          pl.shape.blocks, pl.shape.mtiles);
  }
  return impl;
}

QuantLinear QuantLinear::prepare(const HostQuantLinear& w, int max_m, int rows_per_thread) {
  QuantLinear out;
  out.impl_ = detail::prepare_linear(w, max_m, rows_per_thread);
  if (rows_per_thread == 0) detail::prepare_lt(*out.impl_);  // forced variants stay on the CUDA-core kernels
  return out;
}

QuantLinear::QuantLinear() = default;
QuantLinear::QuantLinear(QuantLinear&&) noexcept = default;
QuantLinear& QuantLinear::operator=(QuantLinear&&) noexcept = default;
QuantLinear::~QuantLinear() = default;

void QuantLinear::forward(const float* x, int64_t ldx, int M, float* y, int64_t ldy, void* stream) const {
  const QuantLinearImpl& d = *impl_;
  if (M < 1 || M > d.max_m) fail(ErrorKind::Usage, "linear forward: M = {} is outside [1, {}] (max_m at prepare)", M, d.max_m);
  if (ldx < d.k || ldy < d.n) fail(ErrorKind::Usage, "linear forward: ldx = {} < k = {} or ldy = {} < n = {}", ldx, d.k, ldy, d.n);
  auto st = static_cast<cudaStream_t>(stream);
  if (d.lt && M >= detail::kLtMinRows && detail::lt_forward(d, x, ldx, M, y, ldy, st)) return;
  if (d.kp != d.k || ldx % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    auto* xp = static_cast<float*>(d.xpad.get());
    detail::launch_pad_rows(x, ldx, M, d.k, d.kp, xp, st);
    x = xp;
    ldx = d.kp;
  }
  const auto& pl = d.plans[static_cast<size_t>(M - 1)];
  pl.fn(d.params, pl.shape, x, ldx, M, y, ldy, RowGroups{d.n, 0, 0, 1}, st);
}

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
  auto st = static_cast<cudaStream_t>(stream);
  const auto& pl = d.plans[static_cast<size_t>(M - 1)];
  const int64_t rows = d.n / groups;
  LaunchShape shape = pl.shape;
  shape.blocks = detail::row_blocks(rows, pl.rw, shape.lk_log2);
  if (d.kp != d.k || ldx % 4 != 0 || x_group_stride % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    auto* xp = static_cast<float*>(d.xpad.get());
    for (int g = 0; g < groups; ++g) {
      detail::launch_pad_rows(x + g * x_group_stride, ldx, M, d.k, d.kp, xp, st);
      pl.fn(d.params, shape, xp, d.kp, M, y, ldy, RowGroups{rows, 0, g, 1}, st);
    }
    return;
  }
  pl.fn(d.params, shape, x, ldx, M, y, ldy, RowGroups{rows, x_group_stride, 0, static_cast<unsigned>(groups)}, st);
}

int64_t QuantLinear::n() const { return impl_->n; }
int64_t QuantLinear::k() const { return impl_->k; }
int QuantLinear::max_m() const { return impl_->max_m; }
LinearScheme QuantLinear::scheme() const { return impl_->scheme; }
int64_t QuantLinear::weight_bytes() const { return impl_->weight_bytes; }
const char* QuantLinear::describe(int M) const {
  if (M < 1 || M > impl_->max_m) fail(ErrorKind::Usage, "linear describe: M = {} is outside [1, {}]", M, impl_->max_m);
  return impl_->plans[static_cast<size_t>(M - 1)].text.c_str();
}

}  // namespace cuda
}  // namespace kiln::ops
