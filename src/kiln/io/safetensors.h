// safetensors reading with strict validation (writing: io/safetensors_writer.h).
//
// Reader contract: every header is validated before any tensor is used: the 8-byte
// length is bounded (<= 100 MB) and lies within the file; the header is well-formed
// JSON whose entries are objects {dtype, shape, data_offsets} with a known dtype, non-
// negative dims, offsets within the data section, byte count == dtype size x numel, no
// two tensors overlapping, no duplicate names (detected while parsing; a plain JSON
// parser would silently keep the last one);
// "__metadata__" is a string->string map. Every violation throws kiln::Error(Invalid)
// whose message names the file, the tensor and what was expected. A file that cannot
// be opened or read throws kiln::Error(IO).
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

struct TensorInfo {
  std::string name;
  DType dtype{};
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in file (data offset) order
  std::map<std::string, std::string> metadata;
  uint64_t header_size = 0;  // N, the JSON length
  uint64_t data_size = 0;    // bytes after the header
};

// Largest accepted JSON header, in bytes.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Validates the first 8 bytes of a file of `file_size` bytes (a little-endian u64 header
// length N with 0 < N <= kMaxSafetensorsHeader and 8 + N <= file_size) and returns N.
// `prefix` must hold at least 8 bytes. Throws Error(Invalid) naming `label`.
uint64_t parse_safetensors_prefix(std::span<const std::byte> prefix, uint64_t file_size,
                                  std::string_view label);

// Parses and validates the JSON header. `data_size` is the number of bytes available
// after the header; `label` (a file name) is used in error messages. Pure function of
// its inputs: this is the fuzzing entry point.
SafetensorsHeader parse_safetensors_header(std::string_view header_json, uint64_t data_size,
                                           std::string_view label);

namespace detail {
// parse_safetensors_header with every byte going through nlohmann's parser (the public
// function takes a faster path for common headers and falls back to this one). The
// reference for differential tests and the fuzzer.
SafetensorsHeader parse_safetensors_header_reference(std::string_view header_json, uint64_t data_size,
                                                     std::string_view label);
}  // namespace detail

// One .safetensors file. open() reads only the 8-byte prefix and the header (pread);
// tensor bytes are mapped lazily (mmap of the whole file, read-only) on first data().
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  uint64_t file_size() const { return file_size_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  // Indices into tensors(), in tensor-name order.
  const std::vector<uint32_t>& by_name() const { return by_name_; }
  // The tensor's bytes (maps the file on first use).
  std::span<const std::byte> data(const TensorInfo& t) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  SafetensorsHeader header_;
  uint64_t file_size_ = 0;
  std::vector<uint32_t> by_name_;  // indices into header_.tensors, sorted by name
  struct Mapping;
  mutable std::unique_ptr<Mapping> map_;
};

}  // namespace kiln
