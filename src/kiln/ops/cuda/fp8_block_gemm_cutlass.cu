// The FP8 block-scaled GEMM of fp8_block_gemm.h: one instantiation of CUTLASS's SM90
// warp-specialized FP8 kernel with blockwise scaling (the mainloop of CUTLASS example 67),
// composed here with kiln's layouts:
//   A  e4m3 [M, K] row-major (K contiguous)          -> cutlass RowMajor A
//   W  e4m3 [N, K] row-major, as on disk             -> cutlass ColumnMajor B [K, N]
//   sa fp32 per (row, K-block), MN-major, stride ld  -> layout_SFA ((1, M), (128, K/128))
//   sw fp32 [N/128, K/128] row-major, as on disk     -> layout_SFB, K-major
//   y  fp32 [M, N] row-major, stride ldy             -> cutlass RowMajor D, no C operand
// Tiles of 128 x 128 x 128 (one K-block per k-tile: the kernel scales each block's tensor-
// core partial sum by sa * sw and adds it to fp32 registers), two consumer warpgroups
// (cooperative), a persistent tile scheduler over the SMs, cluster 1 x 1.
#include "kiln/ops/cuda/fp8_block_gemm.h"

#include <cstring>
#include <string>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/numeric_types.h"
#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/device_buffer.h"

namespace kiln::ops::cuda {
namespace {

using namespace cute;

constexpr int kBlock = 128;  // DeepSeek's quantization block along K (and N for weights)

// ---- the kernel type (CUTLASS's collective-builder composition) ----
using ElementA = cutlass::float_e4m3_t;
using LayoutA = cutlass::layout::RowMajor;
using ElementB = cutlass::float_e4m3_t;
using LayoutB = cutlass::layout::ColumnMajor;
using ElementC = void;  // no source operand: y = acc
using ElementD = float;
using LayoutD = cutlass::layout::RowMajor;
using ElementAccumulator = float;
using ElementCompute = float;
constexpr int kAlignAB = 16;  // elements of 1 byte: TMA's 16-byte granule
constexpr int kAlignD = 4;

using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;
// Scale granularity (M, N, K) = (1, 128, 128): a scale per row of A and per 128 x 128 block
// of W. SFA MN-major (TMA-loaded, 128 rows' scales of a K-block in one copy), SFB K-major
// (the weight's scale grid as stored).
using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<1, kBlock, kBlock, cute::GMMA::Major::MN,
                                                              cute::GMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementCompute, ElementC, LayoutD, kAlignD,
    ElementD, LayoutD, kAlignD, cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cute::tuple<LayoutA, LayoutSFA>, kAlignAB, ElementB,
    cute::tuple<LayoutB, LayoutSFB>, kAlignAB, ElementAccumulator, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>::CollectiveOp;

using GemmKernel =
    cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using StrideA = typename GemmKernel::StrideA;
using StrideB = typename GemmKernel::StrideB;
using StrideC = typename GemmKernel::StrideC;
using StrideD = typename GemmKernel::StrideD;

const char* status_text(cutlass::Status s) { return cutlass::cutlassGetStatusString(s); }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

struct Fp8BlockGemmImpl {
  int64_t n = 0, k = 0;
  int max_m = 0;
  DeviceArray<uint8_t> w_own;   // [n, k] e4m3, as on disk (prepare; bind: empty)
  DeviceArray<float> sw_own;    // [n / 128, k / 128] fp32
  const uint8_t* w = nullptr;   // the weight read: w_own or a bound one
  const float* sw = nullptr;
  DeviceArray<uint8_t> workspace;
  cutlass::KernelHardwareInfo hw;
  LayoutSFB layout_sfb;
  std::string text;

  typename Gemm::Arguments arguments(const uint8_t* a, const float* sa, int64_t scale_ld, int M, float* y,
                                     int64_t ldy) const {
    const int N = static_cast<int>(n), K = static_cast<int>(k), kb = K / kBlock;
    // (row, K-contiguous, batch) strides; W [N, K] row-major is B [K, N] column-major.
    StrideA stride_a{};
    get<0>(stride_a) = K;
    get<2>(stride_a) = int64_t{K} * M;
    StrideB stride_b{};
    get<0>(stride_b) = K;
    get<2>(stride_b) = int64_t{K} * N;
    StrideD stride_d{};
    get<0>(stride_d) = ldy;
    get<2>(stride_d) = ldy * M;
    // ((1, ld), (128, K/128), 1) with strides ((0, 1), (0, ld), ld K/128): sa[b * ld + m]. The
    // row extent is ld, not M: TMA then loads whole 16-byte granules of every K-block's
    // column (CUTLASS's own requirement); rows M..ld-1 only scale accumulator rows whose A
    // rows are zero-filled (A's extent is M) and which the epilogue never stores.
    const auto ld = static_cast<int32_t>(scale_ld);
    const LayoutSFA layout_sfa = make_layout(
        make_shape(make_shape(Int<1>{}, ld), make_shape(Int<kBlock>{}, kb), 1),
        make_stride(make_stride(Int<0>{}, Int<1>{}), make_stride(Int<0>{}, ld), ld * kb));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {M, N, K, 1},
        {reinterpret_cast<const ElementA*>(a), stride_a, reinterpret_cast<const ElementB*>(w), stride_b, sa,
         layout_sfa, sw, layout_sfb},
        {{}, nullptr, StrideC{}, y, stride_d},
        hw};
    args.epilogue.thread.alpha = 1.0f;  // y = 1 * acc: exact
    args.epilogue.thread.beta = 0.0f;
    return args;
  }
};

Fp8BlockGemm Fp8BlockGemm::prepare(const HostQuantLinear& w, int max_m) {
  if (w.scheme != SchemeKind::FP8Block)
    fail_invalid("{}: the FP8 block GEMM takes fp8_block weights, got {}", w.name, scheme_kind_name(w.scheme));
  if (w.block_n != kBlock || w.block_k != kBlock)
    fail_invalid("{}: fp8 block {}x{}; the FP8 block GEMM needs 128x128 blocks", w.name, w.block_n, w.block_k);
  if (w.n <= 0 || w.k <= 0 || w.n % kBlock != 0 || w.k % kBlock != 0)
    fail_invalid("{}: shape [{}, {}]; the FP8 block GEMM needs n and k to be positive multiples of 128", w.name, w.n,
                 w.k);
  if (w.n >= (int64_t{1} << 30) || w.k >= (int64_t{1} << 30) || w.n * w.k >= (int64_t{1} << 40))
    fail_invalid("{}: shape [{}, {}] is too large for the FP8 block GEMM", w.name, w.n, w.k);
  if (max_m < 1 || max_m > (1 << 20)) fail(ErrorKind::Usage, "{}: max_m = {} is outside [1, 2^20]", w.name, max_m);
  if (w.weight_dtype != DType::F8_E4M3)
    fail_invalid("{}: weight is {}, the FP8 block GEMM expects F8_E4M3", w.name, dtype_name(w.weight_dtype));
  if (static_cast<int64_t>(w.weight.size) != w.n * w.k)
    fail_invalid("{}: weight holds {} bytes, expected {} for [{}, {}]", w.name, w.weight.size, w.n * w.k, w.n, w.k);
  const DType sd = w.scale_dtype;
  if (sd != DType::F8_E8M0 && sd != DType::U8 && sd != DType::F32 && sd != DType::BF16 && sd != DType::F16)
    fail_invalid("{}: scale is {}, the FP8 block GEMM expects F8_E8M0, U8, F32, BF16 or F16", w.name, dtype_name(sd));
  const int64_t srows = w.n / kBlock, scols = w.k / kBlock;
  if (w.scale_rows != srows || w.scale_cols != scols)
    fail_invalid("{}: scale is [{}, {}], expected [{}, {}] for a [{}, {}] weight", w.name, w.scale_rows, w.scale_cols,
                 srows, scols, w.n, w.k);
  const size_t es = dtype_size(sd);
  if (w.scale.size != static_cast<size_t>(srows * scols) * es)
    fail_invalid("{}: scale holds {} bytes, expected {}", w.name, w.scale.size, static_cast<size_t>(srows * scols) * es);
  for (int64_t i = 0; i < w.n * w.k; ++i) {
    if ((static_cast<uint8_t>(w.weight.data[i]) & 0x7F) == 0x7F)
      fail_invalid("{}: weight element [{}, {}] is the e4m3 NaN code 0x{:02X}", w.name, i / w.k, i % w.k,
                   static_cast<uint8_t>(w.weight.data[i]));
  }

  auto impl = std::make_unique<Fp8BlockGemmImpl>();
  Fp8BlockGemmImpl& d = *impl;
  d.w_own = DeviceArray<uint8_t>(static_cast<size_t>(w.n * w.k), false);
  d.w_own.upload(reinterpret_cast<const uint8_t*>(w.weight.data), static_cast<size_t>(w.n * w.k));
  std::vector<float> sf(static_cast<size_t>(srows * scols));
  for (size_t i = 0; i < sf.size(); ++i) sf[i] = scale_to_f32(sd, w.scale.data + i * es);
  d.sw_own = DeviceArray<float>(sf);
  return configure(std::move(impl), d.w_own.get(), d.sw_own.get(), w.n, w.k, max_m, w.name);
}

Fp8BlockGemm Fp8BlockGemm::bind(const uint8_t* w, const float* w_scales, int64_t n, int64_t k, int max_m,
                                const char* name) {
  if (w == nullptr || w_scales == nullptr) fail(ErrorKind::Usage, "{}: FP8 block GEMM bound to a null weight", name);
  if (n <= 0 || k <= 0 || n % kBlock != 0 || k % kBlock != 0 || n >= (int64_t{1} << 30) || k >= (int64_t{1} << 30))
    fail_invalid("{}: shape [{}, {}]; the FP8 block GEMM needs n and k to be positive multiples of 128", name, n, k);
  if (max_m < 1 || max_m > (1 << 20)) fail(ErrorKind::Usage, "{}: max_m = {} is outside [1, 2^20]", name, max_m);
  return configure(std::make_unique<Fp8BlockGemmImpl>(), w, w_scales, n, k, max_m, name);
}

Fp8BlockGemm Fp8BlockGemm::configure(std::unique_ptr<Fp8BlockGemmImpl> impl, const uint8_t* w, const float* sw,
                                     int64_t n, int64_t k, int max_m, const char* name) {
  int dev = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  if (prop.major != 9 || prop.minor != 0)
    fail(ErrorKind::Usage, "{}: the FP8 block GEMM is built for sm_90a (H100/H200); device {} is {} (sm_{}{})", name,
         dev, prop.name, prop.major, prop.minor);
  Fp8BlockGemmImpl& d = *impl;
  d.n = n;
  d.k = k;
  d.max_m = max_m;
  d.w = w;
  d.sw = sw;
  d.hw.device_id = dev;
  d.hw.sm_count = prop.multiProcessorCount;
  d.layout_sfb = ScaleConfig::tile_atom_to_shape_SFB(make_shape(1, static_cast<int>(n), static_cast<int>(k), 1));

  // The configuration, checked with CUTLASS on the largest call (run() checks each call too).
  auto probe = d.arguments(nullptr, nullptr, min_scale_ld(max_m), max_m, nullptr, n);
  if (const cutlass::Status s = Gemm::can_implement(probe); s != cutlass::Status::kSuccess)
    fail_invalid("{}: CUTLASS cannot run [{}, {}] x max_m {}: {}", name, n, k, max_m, status_text(s));
  const size_t ws = Gemm::get_workspace_size(probe);
  if (ws) d.workspace = DeviceArray<uint8_t>(ws);
  // Dynamic shared memory above 48 KiB must be allowed once per kernel (not per call).
  const int smem = static_cast<int>(GemmKernel::SharedStorageSize);
  KILN_CUDA_CHECK(cudaFuncSetAttribute(cutlass::device_kernel<GemmKernel>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  d.text = "cutlass sm90 fp8 blockwise 128x128x128 cooperative, persistent over " +
           std::to_string(prop.multiProcessorCount) + " SMs, " + std::to_string(smem / 1024) + " KiB smem";
  Fp8BlockGemm g;
  g.impl_ = std::move(impl);
  return g;
}

void Fp8BlockGemm::run(cudaStream_t stream, const uint8_t* a, const float* a_scales, int64_t scale_ld, int M,
                       float* y, int64_t ldy) const {
  const Fp8BlockGemmImpl& d = *impl_;
  if (M < 1 || M > d.max_m) fail(ErrorKind::Usage, "Fp8BlockGemm::run: M = {} is outside [1, {}]", M, d.max_m);
  if (scale_ld < min_scale_ld(M) || scale_ld % 4 != 0 || scale_ld >= (int64_t{1} << 31) / (d.k / kBlock))
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: scale_ld = {} (needs a multiple of 4, >= {} for M = {})", scale_ld,
         min_scale_ld(M), M);
  if (ldy < d.n || ldy % 4 != 0)
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: ldy = {} (needs a multiple of 4, >= n = {})", ldy, d.n);
  if (a == nullptr || a_scales == nullptr || y == nullptr)
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: a null pointer (a, a_scales or y)");
  if (!aligned16(a) || !aligned16(a_scales) || !aligned16(y))
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: a, a_scales and y must be 16-byte aligned");
  const auto args = d.arguments(a, a_scales, scale_ld, M, y, ldy);
  if (const cutlass::Status s = Gemm::can_implement(args); s != cutlass::Status::kSuccess)
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: CUTLASS cannot run M = {} (scale_ld {}, ldy {}): {}", M, scale_ld, ldy,
         status_text(s));
  // The persistent scheduler needs no workspace; were there one, it is sized at prepare for
  // max_m and initialised here on the stream. Then the TMA descriptors of this call's
  // pointers and M are encoded on the host (driver entry point, no stream work) and the
  // kernel is launched.
  void* ws = d.workspace.get();
  if (Gemm::get_workspace_size(args) > d.workspace.size())
    fail(ErrorKind::Usage, "Fp8BlockGemm::run: workspace for M = {} exceeds the one sized at prepare", M);
  if (const cutlass::Status s = GemmKernel::initialize_workspace(args, ws, stream); s != cutlass::Status::kSuccess)
    fail(ErrorKind::IO, "Fp8BlockGemm::run: workspace initialisation failed: {}", status_text(s));
  auto params = GemmKernel::to_underlying_arguments(args, ws);
  if (const cutlass::Status s = Gemm::run(params, stream); s != cutlass::Status::kSuccess)
    fail(ErrorKind::IO, "Fp8BlockGemm::run: launch failed: {}", status_text(s));
}

Fp8BlockGemm::Fp8BlockGemm() = default;
Fp8BlockGemm::Fp8BlockGemm(Fp8BlockGemm&&) noexcept = default;
Fp8BlockGemm& Fp8BlockGemm::operator=(Fp8BlockGemm&&) noexcept = default;
Fp8BlockGemm::~Fp8BlockGemm() = default;

int64_t Fp8BlockGemm::n() const { return impl_->n; }
int64_t Fp8BlockGemm::k() const { return impl_->k; }
int Fp8BlockGemm::max_m() const { return impl_->max_m; }
int64_t Fp8BlockGemm::weight_bytes() const {
  return impl_->n * impl_->k + (impl_->n / kBlock) * (impl_->k / kBlock) * static_cast<int64_t>(sizeof(float));
}
const char* Fp8BlockGemm::describe() const { return impl_->text.c_str(); }

}  // namespace kiln::ops::cuda
