#include "kiln/core/dtype.h"

#include <array>

namespace kiln {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
  bool is_float;
};

constexpr std::array<DTypeInfo, kNumDTypes> kInfo{{
    {DType::BOOL, "BOOL", 1, false},
    {DType::U8, "U8", 1, false},
    {DType::I8, "I8", 1, false},
    {DType::U16, "U16", 2, false},
    {DType::I16, "I16", 2, false},
    {DType::U32, "U32", 4, false},
    {DType::I32, "I32", 4, false},
    {DType::U64, "U64", 8, false},
    {DType::I64, "I64", 8, false},
    {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true},
    {DType::F32, "F32", 4, true},
    {DType::F64, "F64", 8, true},
    {DType::F8_E4M3, "F8_E4M3", 1, true},
    {DType::F8_E5M2, "F8_E5M2", 1, true},
    {DType::F8_E8M0, "F8_E8M0", 1, true},
}};

constexpr bool info_is_indexed() {
  for (size_t i = 0; i < kInfo.size(); ++i) {
    if (static_cast<size_t>(kInfo[i].type) != i) return false;
  }
  return true;
}
static_assert(info_is_indexed(), "kInfo must be ordered like DType");

const DTypeInfo* info(DType t) {
  auto i = static_cast<size_t>(t);
  return i < kInfo.size() ? &kInfo[i] : nullptr;
}

}  // namespace

size_t dtype_size(DType t) {
  const DTypeInfo* p = info(t);
  return p ? p->size : 0;
}

std::string_view dtype_name(DType t) {
  const DTypeInfo* p = info(t);
  return p ? p->name : std::string_view("?");
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const DTypeInfo& i : kInfo) {
    if (i.name == name) return i.type;
  }
  return std::nullopt;
}

bool dtype_is_float(DType t) {
  const DTypeInfo* p = info(t);
  return p && p->is_float;
}

}  // namespace kiln
