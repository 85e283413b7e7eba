// NumPy .npy files (format version 1.0/2.0, little-endian, C order): the exchange
// format for reference logits and token ids between kiln and the Python oracles.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace kiln {

struct NpyArray {
  std::string descr;           // "<f4", "<i8", "<i4", "<f8"
  std::vector<int64_t> shape;
  std::vector<std::byte> data;

  int64_t numel() const;
  std::vector<float> as_floats() const;    // from <f4 or <f8
  std::vector<int64_t> as_ints() const;    // from <i8 or <i4
};

// Errors (not a .npy, unsupported dtype or order, size mismatch) throw kiln::Error naming the file.
NpyArray read_npy(const std::filesystem::path& path);
void write_npy_f32(const std::filesystem::path& path, std::span<const float> data, const std::vector<int64_t>& shape);
void write_npy_i64(const std::filesystem::path& path, std::span<const int64_t> data, const std::vector<int64_t>& shape);

}  // namespace kiln
