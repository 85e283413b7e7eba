// Per-module quantization scheme, detected from the tensors on disk (dtype, shape,
// companion tensors) — never from config. See artifact-formats.md for the layouts.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/scheme_kind.h"
#include "kiln/io/safetensors.h"

namespace kiln {

// How an NVFP4 global scale is stored: ModelOpt multiplies by weight_scale_2
// (amax/(6*448)); compressed-tensors divides by weight_global_scale ((6*448)/amax).
// kiln normalises both to a multiplier at load.
enum class GlobalScaleConvention : uint8_t { None, Multiplier, Divisor };

// One tensor (or a slice of a fused one) that a module field refers to.
struct TensorSlice {
  std::string name;  // the checkpoint tensor name
  const TensorInfo* info = nullptr;
  int shard = -1;
  int64_t expert = -1;  // fused [E, ...] tensors: the expert index taken
  int half = -1;        // fused gate_up: 0 = first half of rows (w1), 1 = second (w3)

  DType dtype() const { return info->dtype; }
  std::vector<int64_t> shape() const;  // the slice's shape
  uint64_t nbytes() const;             // bytes the slice covers
};

struct Scheme {
  SchemeKind kind = SchemeKind::BF16;
  DType weight_dtype = DType::BF16;
  std::optional<DType> scale_dtype;
  std::string scale_field;  // on-disk spelling: "scale", "weight_scale_inv", "weight_scale"
  int64_t block_n = 0;      // rows per scale (FP8Block); 1 for int4/nvfp4/mxfp4
  int64_t block_k = 0;      // inputs per scale (FP8Block block, int4 group, 16, 32)
  bool zero_point = false;  // int4 asymmetric
  bool g_idx = false;       // int4 act-order
  bool input_scale = false; // static activation scale present (ignored for weight-only)
  GlobalScaleConvention global = GlobalScaleConvention::None;

  // "fp8_block 128x128 e8m0 (.scale)", "mxfp4 g32 e8m0", "int4_group g128 sym bf16", ...
  std::string describe() const;
  // Groups modules whose prepared weights a kernel treats alike.
  bool same_as(const Scheme& o) const;
};

// The tensors a linear module has on disk, by field name ("weight", "scale", ...).
using ModuleFields = std::map<std::string, TensorSlice, std::less<>>;

// The same tensors by role, resolved once by detect_scheme from the on-disk spellings
// (`weight` or `weight_packed`; `scale`, `weight_scale_inv` or `weight_scale`;
// `weight_zero_point`, `weight_g_idx`; `weight_scale_2` or `weight_global_scale`, whose
// convention Scheme::global records). Nothing downstream of artifact/ reads a field name.
struct LinearRoles {
  TensorSlice weight;
  std::optional<TensorSlice> scale;         // every quantized scheme
  std::optional<TensorSlice> zero_point;    // int4_group asymmetric
  std::optional<TensorSlice> g_idx;         // int4_group act-order
  std::optional<TensorSlice> global_scale;  // nvfp4 (the multiplier: artifact/linear_view.h)
};

struct DetectResult {
  std::optional<Scheme> scheme;  // nullopt when errors is non-empty
  LinearRoles roles;             // set with the scheme
  std::vector<std::string> errors;
};

// Decides the scheme of one linear module of logical shape [n, k] (out x in) from its
// fields. `path` names the module in messages; `block_hint` is the checkpoint's declared
// FP8 block size (from quantization_config) used only to break ties when a scale grid
// fits several block sizes. Every inconsistency (unknown field combination, two scale
// names, a scale grid that fits no block size, packed width not matching k, wrong
// companion dtype) becomes an error naming the tensor and what was expected.
DetectResult detect_scheme(std::string_view path, const ModuleFields& fields, int64_t n, int64_t k,
                           std::optional<std::pair<int64_t, int64_t>> block_hint = std::nullopt);

}  // namespace kiln
