// SafetensorsWriter::write_part: a tensor written in consecutive parts reads back as the
// whole, with the same order and byte-count rules as write().
#include <gtest/gtest.h>

#include <vector>

#include "io/io_test_util.h"
#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_writer.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::TempDir;

std::vector<std::byte> bytes(size_t n, int seed) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 31 + static_cast<size_t>(seed) * 7) & 0xFF);
  return b;
}

std::vector<std::byte> as_vec(std::span<const std::byte> s) { return {s.begin(), s.end()}; }

TEST(SafetensorsWriterParts, PartsReadBackAsTheWhole) {
  TempDir dir;
  const auto p = dir / "parts.safetensors";
  const auto a = bytes(100, 1), b = bytes(8, 2), c = bytes(12, 3);
  {
    SafetensorsWriter w(p);
    w.declare("a", DType::U8, {100});
    w.declare("hole", DType::F32, {2}, /*sparse=*/true);
    w.declare("b", DType::F32, {2});
    w.declare("empty", DType::F32, {0});
    w.declare("c", DType::U8, {12});
    w.begin();
    w.write_part("a", std::span(a).first(30));
    w.write_part("a", std::span(a).subspan(30, 0));  // an empty part changes nothing
    w.write_part("a", std::span(a).subspan(30, 69));
    w.write_part("a", std::span(a).subspan(99));
    w.write("b", b);  // whole writes and parts mix tensor by tensor
    w.write_part("empty", {});
    w.write_part("c", c);
    w.finish();
  }
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(as_vec(f.data(*f.find("a"))), a);
  EXPECT_EQ(as_vec(f.data(*f.find("hole"))), std::vector<std::byte>(8, std::byte{0}));
  EXPECT_EQ(as_vec(f.data(*f.find("b"))), b);
  EXPECT_EQ(as_vec(f.data(*f.find("c"))), c);
}

TEST(SafetensorsWriterParts, UsageErrors) {
  TempDir dir;
  const auto p = dir / "usage.safetensors";
  SafetensorsWriter w(p);
  w.declare("a", DType::U8, {4});
  w.declare("b", DType::U8, {2});
  expect_error([&] { w.write_part("a", {}); }, ErrorKind::Usage, {"begin()"});
  w.begin();
  const auto four = bytes(4, 1), two = bytes(2, 2);
  expect_error([&] { w.write_part("b", two); }, ErrorKind::Usage, {"\"b\"", "declaration order", "next is \"a\""});
  w.write_part("a", std::span(four).first(3));
  expect_error([&] { w.write_part("a", two); }, ErrorKind::Usage, {"\"a\"", "overruns its 4 bytes"});
  expect_error([&] { w.write_part("b", two); }, ErrorKind::Usage, {"\"b\"", "next is \"a\""});
  expect_error([&] { w.write("a", four); }, ErrorKind::Usage, {"\"a\"", "written in parts"});
  expect_error([&] { w.finish(); }, ErrorKind::Usage, {"\"a\"", "3 of its 4 bytes"});
  w.write_part("a", std::span(four).subspan(3));
  w.write_part("b", two);
  expect_error([&] { w.write_part("b", two); }, ErrorKind::Usage, {"every declared tensor has been written"});
  w.finish();
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(as_vec(f.data(*f.find("a"))), four);
}

}  // namespace
}  // namespace kiln
