// Element types as they appear in safetensors headers, with their storage sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln {

enum class DType : uint8_t {
  BOOL,
  U8,
  I8,
  U16,
  I16,
  U32,
  I32,
  U64,
  I64,
  F16,
  BF16,
  F32,
  F64,
  F8_E4M3,  // fp8 e4m3fn: no inf, 0x7F/0xFF = NaN, max 448
  F8_E5M2,
  F8_E8M0,  // unsigned power-of-two scale: 2^(v-127), 0xFF = NaN
};

inline constexpr int kNumDTypes = 16;

// Bytes per element (every supported dtype is byte-addressable).
size_t dtype_size(DType t);
// The safetensors spelling ("BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype string; nullopt for unknown or sub-byte types
// (F4, F6_E2M3, ... are not supported by kiln's reader).
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

}  // namespace kiln
