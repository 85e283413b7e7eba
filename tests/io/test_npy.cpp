#include <gtest/gtest.h>

#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/npy.h"
#include "support/artifacts.h"

namespace kiln {
namespace {

TEST(NpyTest, RoundTripF32AndI64) {
  test::TempDir d;
  std::vector<float> f{1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, 7.0f};
  write_npy_f32(d.path() / "a.npy", f, {2, 3});
  auto a = read_npy(d.path() / "a.npy");
  EXPECT_EQ(a.descr, "<f4");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.as_floats(), f);
  std::vector<int64_t> i{5, 17, 42};
  write_npy_i64(d.path() / "b.npy", i, {3});
  auto b = read_npy(d.path() / "b.npy");
  EXPECT_EQ(b.shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(b.as_ints(), i);
  // The header is padded so the data starts at a multiple of 64 bytes.
  std::ifstream in(d.path() / "b.npy", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ((s.size() - 24) % 64, 0u);
}

TEST(NpyTest, BadFilesNameThemselves) {
  test::TempDir d;
  std::ofstream(d.path() / "junk.npy") << "hello world, not numpy";
  try {
    read_npy(d.path() / "junk.npy");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.npy: not a .npy file"), std::string::npos) << e.what();
  }
  std::vector<float> f{1, 2, 3, 4};
  write_npy_f32(d.path() / "t.npy", f, {4});
  std::filesystem::resize_file(d.path() / "t.npy", std::filesystem::file_size(d.path() / "t.npy") - 4);
  try {
    read_npy(d.path() / "t.npy");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 16 bytes of data, the file has 12"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_npy(d.path() / "missing.npy"), Error);
}

}  // namespace
}  // namespace kiln
