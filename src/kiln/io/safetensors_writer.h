// Writing safetensors files (the reader and its validation: io/safetensors.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/dtype.h"

namespace kiln {

// Writes a safetensors file tensor by tensor, with memory bounded by the largest
// tensor: all tensors are declared first (header written on begin), then their bytes
// are written in declaration order. Tensors whose bytes are never written (declared
// with sparse=true) become holes in a sparse file: header-only replicas for tests and
// benchmarks. finish() checks every non-sparse tensor was written and sizes the file.
// A writer destroyed (or failing with an I/O error) after begin() and before a successful
// finish() removes the partial file: its holes would otherwise read as valid zeros.
// Misuse (wrong order, wrong byte count, calls out of sequence) throws Error(Usage).
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::filesystem::path path);
  ~SafetensorsWriter();
  void set_metadata(std::string key, std::string value);
  void declare(std::string name, DType dtype, std::vector<int64_t> shape, bool sparse = false);
  // Writes the header; after this only write() and finish() may be called.
  void begin();
  void write(std::string_view name, std::span<const std::byte> bytes);
  // The next bytes of tensor `name` (the one being written, or the next declared): a tensor
  // may arrive in consecutive parts, so writing needs no more memory than one part; it is
  // complete when all its bytes are written. Same order and byte-count rules as write().
  void write_part(std::string_view name, std::span<const std::byte> bytes);
  void finish();

  // Convenience: declare + begin + write all + finish, for small test files.
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;  // empty + sparse=true for a hole
    bool sparse = false;
  };
  static void write_file(const std::filesystem::path& path, const std::vector<Tensor>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
