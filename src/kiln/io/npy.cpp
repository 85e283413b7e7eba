#include "kiln/io/npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kiln/core/error.h"

namespace kiln {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<float> NpyArray::as_floats() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (descr == "<f4") {
      std::memcpy(&out[i], data.data() + 4 * i, 4);
    } else if (descr == "<f8") {
      double d;
      std::memcpy(&d, data.data() + 8 * i, 8);
      out[i] = static_cast<float>(d);
    } else {
      fail_invalid("npy array of dtype {} is not floating point", descr);
    }
  }
  return out;
}

std::vector<int64_t> NpyArray::as_ints() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (descr == "<i8") {
      std::memcpy(&out[i], data.data() + 8 * i, 8);
    } else if (descr == "<i4") {
      int32_t v;
      std::memcpy(&v, data.data() + 4 * i, 4);
      out[i] = v;
    } else {
      fail_invalid("npy array of dtype {} is not an integer array", descr);
    }
  }
  return out;
}

NpyArray read_npy(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail_io("cannot open {}", path.string());
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::string label = path.string();
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) fail_invalid("{}: not a .npy file", label);
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = static_cast<unsigned char>(bytes[8]) | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail_invalid("{}: truncated .npy header", label);
    uint32_t h;
    std::memcpy(&h, bytes.data() + 8, 4);
    hlen = h;
    hstart = 12;
  } else {
    fail_invalid("{}: unsupported .npy version {}", label, major);
  }
  if (hstart + hlen > bytes.size()) fail_invalid("{}: .npy header runs past the end of the file", label);
  const std::string header = bytes.substr(hstart, hlen);
  std::smatch m;
  NpyArray a;
  if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')"))) fail_invalid("{}: .npy header has no descr", label);
  a.descr = m[1];
  if (a.descr == "|u1" || a.descr == "|i1") fail_invalid("{}: unsupported .npy dtype {}", label, a.descr);
  if (a.descr != "<f4" && a.descr != "<f8" && a.descr != "<i8" && a.descr != "<i4")
    fail_invalid("{}: unsupported .npy dtype {} (kiln reads <f4, <f8, <i4, <i8)", label, a.descr);
  if (std::regex_search(header, m, std::regex(R"('fortran_order'\s*:\s*True)")))
    fail_invalid("{}: Fortran-ordered .npy arrays are not supported", label);
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))"))) fail_invalid("{}: .npy header has no shape", label);
  std::string dims = m[1];
  const std::regex digits(R"(\d+)");
  for (std::sregex_iterator it(dims.begin(), dims.end(), digits), end; it != end; ++it) {
    a.shape.push_back(std::stoll(it->str()));
  }
  const size_t esize = (a.descr == "<f4" || a.descr == "<i4") ? 4 : 8;
  const size_t need = static_cast<size_t>(a.numel()) * esize, have = bytes.size() - hstart - hlen;
  if (have != need)
    fail_invalid("{}: shape ({}) of {} needs {} bytes of data, the file has {}", label, fmt::join(a.shape, ", "), a.descr,
                 need, have);
  a.data.resize(need);
  std::memcpy(a.data.data(), bytes.data() + hstart + hlen, need);
  return a;
}

namespace {

void write_npy(const std::filesystem::path& path, const char* descr, const void* data, size_t nbytes,
               const std::vector<int64_t>& shape) {
  std::string dims;
  for (auto d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail_io("cannot write {}", path.string());
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f << header;
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  if (!f) fail_io("error writing {}", path.string());
}

}  // namespace

void write_npy_f32(const std::filesystem::path& path, std::span<const float> data, const std::vector<int64_t>& shape) {
  write_npy(path, "<f4", data.data(), data.size_bytes(), shape);
}

void write_npy_i64(const std::filesystem::path& path, std::span<const int64_t> data, const std::vector<int64_t>& shape) {
  write_npy(path, "<i8", data.data(), data.size_bytes(), shape);
}

}  // namespace kiln
