// libFuzzer target: the input is a whole safetensors file image (8-byte length + JSON
// header + data). It is split the way SafetensorsFile::open splits a file, and the
// header goes through parse_safetensors_header. kiln::Error is an expected outcome;
// any other exception, a crash, a sanitizer report or a violated invariant of an
// accepted header is a bug.
//
// Two differential checks ride along: the public parser (fast JSON path + nlohmann
// fallback) must agree exactly with the nlohmann-only reference (same header or same
// error message), and whenever the fast JSON scanner accepts the header text it must
// have produced exactly the SAX events nlohmann produces.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/fast_json_sax.h"
#include "kiln/io/safetensors.h"

namespace {

using nlohmann::json;

// Records SAX events as text.
struct Recorder {
  std::string log;
  bool null() { return add("n"); }
  bool boolean(bool v) { return add(v ? "T" : "F"); }
  bool number_integer(json::number_integer_t v) { return add(fmt::format("i{}", v)); }
  bool number_unsigned(json::number_unsigned_t v) { return add(fmt::format("u{}", v)); }
  bool number_float(json::number_float_t, const json::string_t& s) { return add("f" + s); }
  bool string(json::string_t& s) { return add("s" + std::to_string(s.size()) + ":" + s); }
  bool binary(json::binary_t&) { return add("b"); }
  bool start_object(std::size_t n) { return add(fmt::format("{{{}", n)); }
  bool key(json::string_t& s) {
    add("k" + std::to_string(s.size()) + ":" + s);
    s = "clobbered";  // handlers may take the key's buffer
    return true;
  }
  bool end_object() { return add("}"); }
  bool start_array(std::size_t n) { return add(fmt::format("[{}", n)); }
  bool end_array() { return add("]"); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
  bool add(std::string_view e) {
    log += e;
    log += ' ';
    return true;
  }
};

[[noreturn]] void bug(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors_header: invariant violated: %s\n", what);
  std::abort();
}

// What every accepted header promises its users.
void check_invariants(const kiln::SafetensorsHeader& h, uint64_t header_size, uint64_t data_size) {
  if (h.header_size != header_size || h.data_size != data_size) bug("sizes");
  uint64_t furthest = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const kiln::TensorInfo& t = h.tensors[i];
    if (t.begin > t.end || t.end > data_size) bug("offsets out of range");
    if (i > 0 && h.tensors[i - 1].begin > t.begin) bug("not in offset order");
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) bug("negative dim");
      if (__builtin_mul_overflow(numel, d, &numel)) bug("numel overflow");
    }
    if (numel != t.numel()) bug("numel");
    if (static_cast<uint64_t>(numel) * kiln::dtype_size(t.dtype) != t.nbytes()) bug("nbytes != numel * size");
    if (t.nbytes() > 0) {
      if (t.begin < furthest) bug("overlap");
      furthest = t.end;
    }
    if (t.name == "__metadata__") bug("__metadata__ as a tensor");
  }
}

bool same(const kiln::SafetensorsHeader& a, const kiln::SafetensorsHeader& b) {
  if (a.metadata != b.metadata || a.header_size != b.header_size || a.data_size != b.data_size ||
      a.tensors.size() != b.tensors.size())
    return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const auto &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin || x.end != y.end)
      return false;
  }
  return true;
}

// Outcome of one parser: the header, or the error message.
struct Outcome {
  std::optional<kiln::SafetensorsHeader> header;
  std::string error;
};

template <typename F>
Outcome run(F&& parse) {
  Outcome o;
  try {
    o.header = parse();
  } catch (const kiln::Error& e) {
    if (e.kind() != kiln::ErrorKind::Invalid) bug("an error that is not ErrorKind::Invalid");
    o.error = e.what();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    std::abort();
  }
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto image = std::as_bytes(std::span(data, size));
  uint64_t n = 0;
  try {
    n = kiln::parse_safetensors_prefix(image.first(size < 8 ? size : 8), size, "fuzz.safetensors");
  } catch (const kiln::Error& e) {
    if (e.kind() != kiln::ErrorKind::Invalid) bug("prefix: an error that is not ErrorKind::Invalid");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    std::abort();
  }
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, n);
  const uint64_t data_size = size - 8 - n;

  const Outcome fast = run([&] { return kiln::parse_safetensors_header(header, data_size, "fuzz.safetensors"); });
  const Outcome ref =
      run([&] { return kiln::detail::parse_safetensors_header_reference(header, data_size, "fuzz.safetensors"); });
  if (fast.header.has_value() != ref.header.has_value()) {
    std::fprintf(stderr, "fast: %s\nreference: %s\n", fast.error.c_str(), ref.error.c_str());
    bug("fast path and reference disagree on acceptance");
  }
  if (fast.header) {
    check_invariants(*fast.header, n, data_size);
    if (!same(*fast.header, *ref.header)) bug("fast path and reference return different headers");
  } else if (fast.error != ref.error) {
    std::fprintf(stderr, "fast: %s\nreference: %s\n", fast.error.c_str(), ref.error.c_str());
    bug("fast path and reference report different errors");
  }

  // The scanner alone, on the header text (NUL excluded: the parser rejects it first).
  if (header.find('\0') == std::string_view::npos) {
    Recorder a, b;
    if (kiln::detail::fast_json_sax(header, a)) {
      const bool ok = json::sax_parse(header.data(), header.data() + header.size(), &b);
      if (!ok || a.log != b.log) {
        std::fprintf(stderr, "fast: %s\nnlohmann (%d): %s\n", a.log.c_str(), ok, b.log.c_str());
        bug("fast_json_sax accepted input with events nlohmann does not produce");
      }
    }
  }
  return 0;
}
