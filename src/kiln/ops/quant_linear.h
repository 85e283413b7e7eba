// Decode-size linear layers on quantized weights: y[M, N] = x[M, K] W^T, W [N, K] in
// one of kiln's weight schemes (core/scheme_kind.h, artifact-formats.md §1), M = 1..max_m tokens.
//
// Activations and outputs are fp32 (row-major, any row stride); products are summed in
// fp32 and weights are dequantized in registers, each element exactly as kiln's CPU
// reference (model::dequantize_linear) computes it, so the only difference to the
// reference is the order of the fp32 sums (and, for nvfp4, that the global scale
// multiplies the finished sum instead of every element).
//
// A HostQuantLinear (core/stored_linear.h) is a view of the on-disk tensors of one module
// (host memory, raw little-endian bytes). Preparing it (once, at load) validates every size and dtype,
// repacks, uploads and chooses the kernel for every M; a call then only launches.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/scheme_kind.h"
#include "kiln/core/stored_linear.h"
#include "kiln/ops/linear_numerics.h"

namespace kiln::ops {

// The view of one module's stored tensors (core/stored_linear.h).
using kiln::HostBytes;
using kiln::HostQuantLinear;

#ifdef KILN_HAVE_CUDA
namespace cuda {

struct QuantLinearImpl;
class DeviceUploader;  // ops/cuda/device_upload.h

// A linear weight resident on the GPU in the layout its kernel reads, with the launch
// configuration for every M in [1, max_m] fixed at prepare time.
class QuantLinear {
 public:
  // Validates and uploads `w` (synchronously); throws kiln::Error naming `w.name`, the
  // tensor and the expectation on any size/dtype mismatch, or on an fp8 weight holding
  // the e4m3 NaN code. max_m: largest token count forward() will be called with.
  // rows_per_thread: 0 picks the kernel's default for each M; 1, 2 or 4 forces it (for
  // benchmarks comparing variants; tiles of 32 tokens take at most 2).
  static QuantLinear prepare(const HostQuantLinear& w, int max_m, int rows_per_thread = 0);
  // The same prepared form, with the bytes read, repacked and copied by `up`'s threads: they
  // are on the device once up.finish() has returned, and the memory `w` points into must
  // stay valid until then. Shape and dtype errors throw here; a content error (an e4m3 NaN
  // code) is thrown by up.finish(). Sizes: ops/device_sizes.h.
  static QuantLinear prepare(const HostQuantLinear& w, int max_m, DeviceUploader& up);
  // The same with `numerics` (ops/linear_numerics.h): forward() quantizes x with act_quant
  // first (LinearInput::Fp8Block) and rounds y to bf16 (bf16_output) as it says;
  // batch_invariant makes a row's result independent of M (every M uses M = 1's lanes per
  // row, and cuBLASLt, which picks an algorithm per M, is left out). BF16 weights (k a
  // multiple of 64) and fp8_block weights with 128-input blocks run on the batch-invariant
  // tensor-core kernels of cuda/quant_linear_mma.h in every role (FP8 x FP8 with FP8 input);
  // elsewhere an FP8 input is quantized and dequantized (act_fake_quant) in front of the
  // CUDA-core kernel.
  static QuantLinear prepare(const HostQuantLinear& w, int max_m, LinearNumerics numerics);
  static QuantLinear prepare(const HostQuantLinear& w, int max_m, DeviceUploader& up, LinearNumerics numerics);

  QuantLinear();
  QuantLinear(QuantLinear&&) noexcept;
  QuantLinear& operator=(QuantLinear&&) noexcept;
  ~QuantLinear();

  // y[m, :] = W x[m, :] for m < M (device pointers, fp32, rows ldx / ldy floats apart,
  // ldx >= k, ldy >= n). 1 <= M <= max_m. Launches on `stream` (a cudaStream_t, null for
  // the default stream) and checks the launch; no allocation, no synchronisation, so it
  // can be captured in a CUDA graph. When k is not a whole number of 16-byte weight
  // chunks, or x is not 16-byte aligned row by row, x is first copied into this
  // object's zero-padded staging buffer: such calls must not run concurrently on two
  // streams for the same QuantLinear.
  void forward(const float* x, int64_t ldx, int M, float* y, int64_t ldy, void* stream) const;

  // a.forward and b.forward of the same x: ya = A x, yb = B x. Where both quantize x to the
  // same e4m3 codes and scales (act_quant before the tensor-core kernel, the same k), x is
  // quantized once, into a's staging buffer, and b's kernel reads it there: one launch fewer,
  // the same bits as two forward calls.
  static void forward_pair(const QuantLinear& a, float* ya, int64_t ldya, const QuantLinear& b, float* yb, int64_t ldyb,
                           const float* x, int64_t ldx, int M, void* stream);

  int64_t n() const;
  int64_t k() const;
  int max_m() const;
  SchemeKind scheme() const;
  // Grouped rows (DeepSeek-V4's grouped output projection wo_a): for g < groups,
  //   y[m, g * (n / groups) + o] = W[g * (n / groups) + o, :] . x[m, g * x_group_stride + :k]
  // for o < n / groups, m < M: each group of rows multiplies its own slice of x. One
  // launch (groups along grid.z); scale blocks are addressed by absolute row, so any
  // group size works for every scheme. Needs n % groups == 0. Same staging rule,
  // graph-safety and numerics as forward(); x_group_stride % 4 != 0 also stages, one
  // group after another (2 x groups launches instead of one).
  void forward_grouped(const float* x, int64_t ldx, int64_t x_group_stride, int M, int groups, float* y, int64_t ldy,
                       void* stream) const;

  // Bytes of prepared weight + scale (+ zero point) data one call reads from device memory.
  int64_t weight_bytes() const;
  // Device bytes this object holds: the prepared data and the x staging buffer
  // (ops::device::linear_device_bytes).
  int64_t device_bytes() const;
  // The prepared weight, scale and zero-point bytes, downloaded from the device (tests).
  std::vector<std::byte> download_prepared() const;
  // "fp8_block mt=1 rw=4 lk=64 blocks=256" for the kernel chosen for M tokens.
  const char* describe(int M) const;
  LinearNumerics numerics() const;

 private:
  std::unique_ptr<QuantLinearImpl> impl_;
};

// The routed experts of one MoE layer, one weight matrix per expert (all the same
// [n, k]; schemes may differ between experts), resident on the GPU with a device table
// of their descriptors, so one launch multiplies each (token, expert) pair by the expert
// a device array names: no host synchronisation, capturable in a CUDA graph.
class QuantLinearSet {
 public:
  // Validates and uploads every weight (as QuantLinear::prepare); throws kiln::Error
  // naming the offending module. max_pairs: the largest P forward_indexed takes.
  static QuantLinearSet prepare(const HostQuantLinear* weights, int count, int max_pairs);
  // The same, copying the experts' bytes through `up` (as QuantLinear::prepare(w, max_m, up)).
  static QuantLinearSet prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader& up);
  // The same with `numerics` (as QuantLinear's): x rows act_quant-ed into the staging
  // buffer first and/or y rounded to bf16; batch_invariant fixes every P's lanes to
  // P = 1's, so a pair's result does not depend on how many pairs share the launch.
  static QuantLinearSet prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up,
                                LinearNumerics numerics);

  QuantLinearSet();
  QuantLinearSet(QuantLinearSet&&) noexcept;
  QuantLinearSet& operator=(QuantLinearSet&&) noexcept;
  ~QuantLinearSet();

  // For every pair i < P: y[i, :] = W_e x[i / x_div, :]^T with e = expert[i] (device
  // int32 array, 0 <= e < count; a pair naming an expert outside that range writes
  // nothing). x rows ldx apart, y rows ldy apart (fp32, device). x_div = K when pairs are
  // (token, slot) of a top-K routing and x holds one row per token; 1 when x holds a row
  // per pair. Each product sums exactly as QuantLinear::forward does for one token.
  // 1 <= P <= max_pairs. Launches on `stream`, checks the launch, never allocates or
  // synchronises. When k is not a whole number of chunks of some expert's scheme, or x
  // rows are not 16-byte aligned, the ceil(P / x_div) x rows are first copied into the
  // set's zero-padded staging buffer: such calls must not run concurrently on two streams
  // for the same set.
  void forward_indexed(const float* x, int64_t ldx, int x_div, const int32_t* expert, int P, float* y, int64_t ldy,
                       void* stream) const;

  int count() const;
  int64_t n() const;
  int64_t k() const;
  // Bytes of prepared data of one expert's weight (the largest, when schemes differ).
  int64_t expert_bytes() const;
  // Device bytes this set holds: every expert's prepared data, the descriptor tables and
  // the x staging buffer (ops::device::linear_set_device_bytes).
  int64_t device_bytes() const;
  // Expert e's prepared weight, scale and zero-point bytes, downloaded (tests).
  std::vector<std::byte> download_prepared(int e) const;
  // The kernels bound at load, in words: the grouped tensor-core family
  // (GroupedExperts::describe) or "per-expert kernels".
  const char* describe() const;

  struct Impl;  // quant_linear_set.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

// Device bytes of the cuBLASLt state BF16 linears share (workspace, split buffers, the
// outgrown split buffers kept for graphs captured earlier); 0 until a BF16 weight is
// prepared for ops::device::kLtMinRows rows or more.
int64_t lt_shared_device_bytes();

}  // namespace cuda
#endif

}  // namespace kiln::ops
