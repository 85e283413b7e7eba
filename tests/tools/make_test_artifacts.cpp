// Writes the test artifacts (one directory per layout, and the DSpark 0731 layout) for
// manual inspection and docs:
//   kiln_make_test_artifacts OUT_DIR
#include <iostream>

#include "support/artifacts.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: kiln_make_test_artifacts OUT_DIR\n";
    return 1;
  }
  using kiln::test::Layout;
  for (Layout l : {Layout::Native, Layout::NativeNvfp4, Layout::W4A16Fp8Mtp, Layout::Nvfp4Fp8Mtp, Layout::V3Fp8,
                   Layout::HfBf16}) {
    auto dir = std::filesystem::path(argv[1]) / kiln::test::layout_name(l);
    kiln::test::write_spec(kiln::test::make_spec(l, kiln::test::tiny_config(), l == Layout::HfBf16 ? 1 : 3), dir);
    std::cout << dir.string() << "\n";
  }
  // DeepSeek-V4-Flash-0731's layout: a 3-stage DSpark drafter under mtp.0-2, no MTP block.
  auto dir = std::filesystem::path(argv[1]) / "native-dspark-0731";
  kiln::test::write_spec(kiln::test::make_spec(Layout::Native, kiln::test::tiny_dspark_config(), 5), dir);
  std::cout << dir.string() << "\n";
  return 0;
}
