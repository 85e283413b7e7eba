#include "kiln/core/dtype.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace kiln {
namespace {

struct Expected {
  DType type;
  const char* name;
  size_t size;
  bool is_float;
};

// The safetensors spellings and storage sizes, written out independently of dtype.cpp.
const Expected kExpected[] = {
    {DType::BOOL, "BOOL", 1, false},       {DType::U8, "U8", 1, false},
    {DType::I8, "I8", 1, false},           {DType::U16, "U16", 2, false},
    {DType::I16, "I16", 2, false},         {DType::U32, "U32", 4, false},
    {DType::I32, "I32", 4, false},         {DType::U64, "U64", 8, false},
    {DType::I64, "I64", 8, false},         {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true},        {DType::F32, "F32", 4, true},
    {DType::F64, "F64", 8, true},          {DType::F8_E4M3, "F8_E4M3", 1, true},
    {DType::F8_E5M2, "F8_E5M2", 1, true},  {DType::F8_E8M0, "F8_E8M0", 1, true},
};

TEST(DTypeTest, TableCoversEveryDType) {
  ASSERT_EQ(std::size(kExpected), static_cast<size_t>(kNumDTypes));
  std::set<int> seen;
  for (const Expected& e : kExpected) seen.insert(static_cast<int>(e.type));
  EXPECT_EQ(seen.size(), static_cast<size_t>(kNumDTypes));
  EXPECT_EQ(*seen.begin(), 0);
  EXPECT_EQ(*seen.rbegin(), kNumDTypes - 1);
}

TEST(DTypeTest, NamesSizesAndFloatness) {
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(e.name);
    EXPECT_EQ(dtype_name(e.type), e.name);
    EXPECT_EQ(dtype_size(e.type), e.size);
    EXPECT_EQ(dtype_is_float(e.type), e.is_float);
  }
}

TEST(DTypeTest, ParseRoundTrip) {
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(e.name);
    auto t = dtype_from_name(e.name);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(*t, e.type);
    EXPECT_EQ(dtype_from_name(dtype_name(e.type)), e.type);
  }
}

TEST(DTypeTest, UnknownAndSubByteNamesAreRejected) {
  for (const char* name : {"", "bf16", "Bf16", "F4", "F6_E2M3", "F6_E3M2", "F8_E4M3FN", "F8_E4M3 ",
                           " F32", "FP8", "U4", "I4", "C64", "F8_E8M0FNU", "BOOLEAN"}) {
    SCOPED_TRACE(name);
    EXPECT_FALSE(dtype_from_name(name).has_value());
  }
  // An embedded NUL must not match a prefix.
  EXPECT_FALSE(dtype_from_name(std::string_view("F32\0x", 5)).has_value());
  EXPECT_FALSE(dtype_from_name(std::string_view("F3", 2)).has_value());
}

}  // namespace
}  // namespace kiln
