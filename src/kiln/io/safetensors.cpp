// safetensors reader (strict header validation, lazy mmap) and writer (sparse-capable).
//
// The header is parsed with a SAX handler rather than into a DOM: it builds TensorInfo
// directly (no per-entry json objects), sees every key (so duplicate names are caught,
// which nlohmann's DOM would silently collapse) and knows at each event which tensor
// and field it is in, so every message names them.
#include "kiln/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/fast_json_sax.h"

namespace kiln {
namespace {

using nlohmann::json;

std::string errno_text(int err) { return std::strerror(err); }

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string known_dtypes() {
  std::string out;
  for (int i = 0; i < kNumDTypes; ++i) {
    if (i) out += ", ";
    out += dtype_name(static_cast<DType>(i));
  }
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Quotes a JSON key for messages (escaping control characters and invalid UTF-8 safely).
std::string qname(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// SAX handler for one safetensors header.
class HeaderSax {
 public:
  HeaderSax(std::string_view label, uint64_t data_size, SafetensorsHeader& out)
      : label_(label), data_size_(data_size), out_(out) {}

  bool null() { return primitive("null"); }
  bool boolean(bool) { return primitive("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    if (st_ == St::ShapeArr) {
      if (v < 0) fail_entry("shape has a negative dimension {} (dims must be >= 0)", v);
      return dim(v);
    }
    if (st_ == St::OffsetsArr) {
      if (v < 0) fail_entry("data_offsets has a negative value {} (expected [begin, end] with 0 <= begin <= end)", v);
      return offset(static_cast<uint64_t>(v));
    }
    return primitive("a number");
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (st_ == St::ShapeArr) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail_entry("shape dimension {} is too large", v);
      return dim(static_cast<int64_t>(v));
    }
    if (st_ == St::OffsetsArr) return offset(v);
    return primitive("a number");
  }
  bool number_float(json::number_float_t, const json::string_t&) { return primitive("a non-integer number"); }
  bool binary(json::binary_t&) { return primitive("binary"); }
  bool string(json::string_t& s) {
    switch (st_) {
      case St::MetaValue:
        if (!out_.metadata.try_emplace(std::move(key_), std::move(s)).second)
          fail_here("__metadata__ has the key {} twice", qname(key_));
        st_ = St::Meta;
        return true;
      case St::EntryValue:
        if (field_ == Field::Dtype) {
          auto t = dtype_from_name(s);
          if (!t) fail_entry("unknown dtype {} (known: {})", qname(s), known_dtypes());
          cur_.dtype = *t;
          st_ = St::Entry;
          return true;
        }
        break;
      default:
        break;
    }
    return primitive("a string");
  }

  bool start_object(std::size_t) {
    switch (st_) {
      case St::Top:
        st_ = St::TopKey;
        return true;
      case St::TopValue:
        if (in_meta_) {
          st_ = St::Meta;
        } else {
          st_ = St::Entry;
          have_dtype_ = have_shape_ = have_offsets_ = false;
          cur_.shape.clear();
        }
        return true;
      case St::Skip:
        ++skip_depth_;
        return true;
      case St::EntryValue:
        if (field_ == Field::Unknown) {
          st_ = St::Skip;
          skip_depth_ = 1;
          return true;
        }
        break;
      default:
        break;
    }
    return primitive("an object");
  }
  bool end_object() {
    switch (st_) {
      case St::TopKey:
        st_ = St::Done;
        return true;
      case St::Meta:
        st_ = St::TopKey;
        return true;
      case St::Entry:
        finish_entry();
        st_ = St::TopKey;
        return true;
      case St::Skip:
        if (--skip_depth_ == 0) st_ = St::Entry;
        return true;
      default:
        fail_here("unexpected end of object");  // not reachable for valid JSON
    }
  }
  bool start_array(std::size_t) {
    switch (st_) {
      case St::Skip:
        ++skip_depth_;
        return true;
      case St::EntryValue:
        if (field_ == Field::Shape) {
          st_ = St::ShapeArr;
          n_dims_ = 0;
          cur_.shape.clear();
          return true;
        }
        if (field_ == Field::Offsets) {
          st_ = St::OffsetsArr;
          n_offsets_ = 0;
          return true;
        }
        if (field_ == Field::Unknown) {
          st_ = St::Skip;
          skip_depth_ = 1;
          return true;
        }
        break;
      default:
        break;
    }
    return primitive("an array");
  }
  bool end_array() {
    switch (st_) {
      case St::Skip:
        if (--skip_depth_ == 0) st_ = St::Entry;
        return true;
      case St::ShapeArr:
        // One exact allocation per shape (dims beyond kDims went to the vector directly).
        if (cur_.shape.empty()) cur_.shape.assign(dims_, dims_ + n_dims_);
        have_shape_ = true;
        st_ = St::Entry;
        return true;
      case St::OffsetsArr:
        if (n_offsets_ != 2)
          fail_entry("data_offsets has {} element(s) (expected [begin, end])", n_offsets_);
        have_offsets_ = true;
        st_ = St::Entry;
        return true;
      default:
        fail_here("unexpected end of array");  // not reachable for valid JSON
    }
  }
  bool key(json::string_t& k) {
    switch (st_) {
      case St::TopKey:
        if (k == "__metadata__") {
          if (seen_meta_) fail_here("the key \"__metadata__\" appears twice");
          seen_meta_ = true;
          in_meta_ = true;
        } else {
          in_meta_ = false;
          cur_.name = std::move(k);
        }
        st_ = St::TopValue;
        return true;
      case St::Meta:
        key_ = std::move(k);
        st_ = St::MetaValue;
        return true;
      case St::Entry: {
        bool* seen = nullptr;
        if (k == "dtype") {
          field_ = Field::Dtype;
          seen = &have_dtype_;
        } else if (k == "shape") {
          field_ = Field::Shape;
          seen = &have_shape_;
        } else if (k == "data_offsets") {
          field_ = Field::Offsets;
          seen = &have_offsets_;
        } else {
          field_ = Field::Unknown;  // ignored, like the reference implementation
        }
        if (seen && *seen) fail_entry("the field {} appears twice", qname(k));
        if (field_ == Field::Dtype) have_dtype_ = true;  // shape/offsets set at end_array
        st_ = St::EntryValue;
        return true;
      }
      case St::Skip:
        return true;
      default:
        fail_here("unexpected key");  // not reachable for valid JSON
    }
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    // ex.what() already carries nlohmann's own position/line details.
    fail_invalid("{}: safetensors header is not valid JSON (byte {} of the {}-byte header): {}", label_, position,
                 header_size_, ex.what());
  }

  void set_header_size(uint64_t n) { header_size_ = n; }

 private:
  enum class St { Top, TopKey, TopValue, Meta, MetaValue, Entry, EntryValue, ShapeArr, OffsetsArr, Skip, Done };
  enum class Field { Dtype, Shape, Offsets, Unknown };

  const char* field_name() const {
    switch (field_) {
      case Field::Dtype:
        return "dtype";
      case Field::Shape:
        return "shape";
      case Field::Offsets:
        return "data_offsets";
      default:
        return "?";
    }
  }

  template <typename... Args>
  [[noreturn]] void fail_entry(fmt::format_string<Args...> f, Args&&... args) {
    fail_invalid("{}: tensor {}: {}", label_, qname(cur_.name), fmt::format(f, std::forward<Args>(args)...));
  }
  template <typename... Args>
  [[noreturn]] void fail_here(fmt::format_string<Args...> f, Args&&... args) {
    fail_invalid("{}: safetensors header: {}", label_, fmt::format(f, std::forward<Args>(args)...));
  }

  // A value of the wrong kind (`what`) where the current state expects something else.
  bool primitive(const char* what) {
    switch (st_) {
      case St::Top:
        fail_here("the top level is {}, expected an object {{tensor name: {{dtype, shape, data_offsets}}}}", what);
      case St::TopValue:
        if (in_meta_) fail_here("\"__metadata__\" is {}, expected an object of string values", what);
        fail_entry("entry is {}, expected an object {{\"dtype\", \"shape\", \"data_offsets\"}}", what);
      case St::MetaValue:
        fail_here("\"__metadata__\" value for key {} is {}, expected a string", qname(key_), what);
      case St::EntryValue:
        switch (field_) {
          case Field::Dtype:
            fail_entry("dtype is {}, expected a string such as \"BF16\"", what);
          case Field::Shape:
            fail_entry("shape is {}, expected an array of non-negative integers", what);
          case Field::Offsets:
            fail_entry("data_offsets is {}, expected an array [begin, end] of non-negative integers", what);
          case Field::Unknown:
            st_ = St::Entry;  // value of an ignored field
            return true;
        }
        break;
      case St::ShapeArr:
        fail_entry("shape contains {}, expected non-negative integers", what);
      case St::OffsetsArr:
        fail_entry("data_offsets contains {}, expected non-negative integers [begin, end]", what);
      case St::Skip:
        return true;
      default:
        break;
    }
    fail_here("unexpected {}", what);  // not reachable for valid JSON
  }

  bool dim(int64_t v) {
    if (n_dims_ < kDims) {
      dims_[n_dims_++] = v;
    } else {
      if (cur_.shape.empty()) cur_.shape.assign(dims_, dims_ + n_dims_);
      cur_.shape.push_back(v);
    }
    return true;
  }

  bool offset(uint64_t v) {
    if (n_offsets_ >= 2) fail_entry("data_offsets has more than 2 elements (expected [begin, end])");
    offs_[n_offsets_++] = v;
    return true;
  }

  void finish_entry() {
    if (!have_dtype_) fail_entry("missing \"dtype\"");
    if (!have_shape_) fail_entry("missing \"shape\"");
    if (!have_offsets_) fail_entry("missing \"data_offsets\"");
    uint64_t numel = 1;
    for (int64_t d : cur_.shape) {
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail_entry("shape {} has too many elements (overflows a 64-bit count)", shape_str(cur_.shape));
    }
    uint64_t need = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(cur_.dtype)), &need))
      fail_entry("shape {} of {} needs more than 2^64 bytes", shape_str(cur_.shape), dtype_name(cur_.dtype));
    const uint64_t b = offs_[0], e = offs_[1];
    if (b > e) fail_entry("data_offsets [{}, {}] has begin > end (expected [begin, end] with begin <= end)", b, e);
    if (e - b != need) {
      // One byte per element under a wider float declaration is how E8M0 scales copied
      // into an F32/BF16 slot look (vllm#43416): say so.
      const bool one_byte = e - b == numel && numel > 0 && dtype_size(cur_.dtype) > 1;
      fail_entry("data_offsets [{}, {}] hold {} bytes, but dtype {} x shape {} ({} elements x {} bytes) needs {} bytes{}",
                 b, e, e - b, dtype_name(cur_.dtype), shape_str(cur_.shape), numel, dtype_size(cur_.dtype), need,
                 one_byte ? fmt::format("; the data holds exactly one byte per element: 1-byte codes (E8M0 scales?) "
                                        "declared as {}. Refusing to reinterpret them",
                                        dtype_name(cur_.dtype))
                          : std::string());
    }
    if (e > data_size_)
      fail_invalid("{}: truncated: tensor {} needs bytes [{}, {}) of the data section but the file has only {}",
                   label_, qname(cur_.name), b, e, data_size_);
    cur_.begin = b;
    cur_.end = e;
    out_.tensors.push_back(std::move(cur_));
    cur_ = TensorInfo{};
  }

  std::string_view label_;
  uint64_t data_size_;
  uint64_t header_size_ = 0;
  SafetensorsHeader& out_;
  St st_ = St::Top;
  Field field_ = Field::Unknown;
  TensorInfo cur_;
  std::string key_;
  bool in_meta_ = false, seen_meta_ = false;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  int n_offsets_ = 0;
  static constexpr int kDims = 8;
  int64_t dims_[kDims] = {};
  int n_dims_ = 0;
  uint64_t offs_[2] = {0, 0};
  int skip_depth_ = 0;
};

// Parses, validates, sorts by offset; fills `by_name` (indices sorted by name) if given.
SafetensorsHeader parse_header(std::string_view text, uint64_t data_size, std::string_view label,
                               std::vector<uint32_t>* by_name, bool fast_path = true) {
  // nlohmann's lexer takes a NUL byte for the end of input, which would accept "{}\0junk";
  // NUL is never valid in JSON text (it cannot appear raw inside a string either).
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    fail_invalid("{}: safetensors header is not valid JSON (byte {} of the {}-byte header): NUL byte (headers are "
                 "padded with spaces)",
                 label, nul, text.size());
  SafetensorsHeader h;
  auto reset = [&] {
    h = SafetensorsHeader{};
    h.header_size = text.size();
    h.data_size = data_size;
    h.tensors.reserve(std::min<size_t>(text.size() / 96 + 1, 1u << 20));
  };
  bool done = false;
  if (fast_path) {
    // The common case; anything unusual (or any error) is redone by nlohmann's parser
    // below, which is authoritative for what is accepted and for error messages.
    reset();
    HeaderSax sax(label, data_size, h);
    sax.set_header_size(text.size());
    try {
      done = detail::fast_json_sax(text, sax);
    } catch (const Error&) {
      done = false;
    }
  }
  if (!done) {
    reset();
    HeaderSax sax(label, data_size, h);
    sax.set_header_size(text.size());
    const char* first = text.data();
    const char* last = text.data() + text.size();
    if (!json::sax_parse(first, last, &sax, json::input_format_t::json, /*strict=*/true))
      fail_invalid("{}: safetensors header is not valid JSON", label);  // parse_error throws first
  }
  if (h.tensors.size() > std::numeric_limits<uint32_t>::max())
    fail_invalid("{}: too many tensors ({})", label, h.tensors.size());

  auto& ts = h.tensors;
  auto by_offset = [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  };
  if (!std::is_sorted(ts.begin(), ts.end(), by_offset)) std::sort(ts.begin(), ts.end(), by_offset);

  // Duplicate names (the DOM would have kept only the last one).
  std::vector<uint32_t> perm(ts.size());
  for (uint32_t i = 0; i < perm.size(); ++i) perm[i] = i;
  detail::sort_runs(perm, [&](uint32_t a, uint32_t b) { return ts[a].name < ts[b].name; });
  for (size_t i = 1; i < perm.size(); ++i) {
    const TensorInfo& a = ts[perm[i - 1]];
    const TensorInfo& b = ts[perm[i]];
    if (a.name == b.name)
      fail_invalid("{}: tensor {}: duplicate tensor name (entries with data_offsets [{}, {}] and [{}, {}])", label,
                   qname(a.name), a.begin, a.end, b.begin, b.end);
  }

  // Overlaps: in offset order, every non-empty range must start at or after the furthest
  // end seen so far. Holes between tensors are allowed.
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : ts) {
    if (t.begin == t.end) continue;
    if (furthest && t.begin < furthest->end)
      fail_invalid("{}: tensors {} (bytes [{}, {})) and {} (bytes [{}, {})) overlap in the data section", label,
                   qname(furthest->name), furthest->begin, furthest->end, qname(t.name), t.begin, t.end);
    if (!furthest || t.end > furthest->end) furthest = &t;
  }
  if (by_name) *by_name = std::move(perm);
  return h;
}

uint64_t load_le64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// pread exactly n bytes at off; false on a short read (EOF).
bool pread_all(int fd, void* buf, size_t n, uint64_t off, const std::filesystem::path& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_io("{}: read failed: {}", path.string(), errno_text(errno));
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}
}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t parse_safetensors_prefix(std::span<const std::byte> prefix, uint64_t file_size, std::string_view label) {
  if (file_size < 8)
    fail_invalid("{}: file is only {} bytes; a safetensors file starts with an 8-byte header length", label,
                 file_size);
  if (prefix.size() < 8)
    fail(ErrorKind::Usage, "{}: parse_safetensors_prefix needs 8 bytes, got {}", label, prefix.size());
  const uint64_t n = load_le64(prefix.data());
  if (n == 0) fail_invalid("{}: header length is 0 (expected a JSON header of at least 2 bytes)", label);
  if (n > kMaxSafetensorsHeader)
    fail_invalid("{}: header length {} exceeds the {}-byte limit (not a safetensors file?)", label, n,
                 kMaxSafetensorsHeader);
  if (n > file_size - 8) fail_invalid("{}: header length {} past end of file (size {})", label, n, file_size);
  return n;
}

SafetensorsHeader parse_safetensors_header(std::string_view header_json, uint64_t data_size, std::string_view label) {
  return parse_header(header_json, data_size, label, nullptr);
}

namespace detail {
SafetensorsHeader parse_safetensors_header_reference(std::string_view header_json, uint64_t data_size,
                                                     std::string_view label) {
  return parse_header(header_json, data_size, label, nullptr, /*fast_path=*/false);
}
}  // namespace detail

// ---------------------------------------------------------------------------------------
// SafetensorsFile

struct SafetensorsFile::Mapping {
  std::once_flag once;
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) ::munmap(addr, len);
  }
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string label = path.string();
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail_io("{}: cannot open: {}", label, errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_io("{}: cannot stat: {}", label, errno_text(errno));
  if (!S_ISREG(st.st_mode)) fail_io("{}: not a regular file", label);
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  std::byte prefix[8] = {};
  if (size >= 8 && !pread_all(fd.get(), prefix, 8, 0, path))
    fail_io("{}: file shrank while being read", label);
  const uint64_t n = parse_safetensors_prefix(std::span<const std::byte>(prefix, 8), size, label);

  std::string text;
  text.resize(n);
  if (!pread_all(fd.get(), text.data(), n, 8, path)) fail_io("{}: file shrank while being read", label);

  SafetensorsFile f;
  f.path_ = path;
  f.file_size_ = size;
  f.header_ = parse_header(text, size - 8 - n, label, &f.by_name_);
  f.map_ = std::make_unique<Mapping>();
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto& ts = header_.tensors;
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](uint32_t i, std::string_view n) { return ts[i].name < n; });
  if (it == by_name_.end() || ts[*it].name != name) return nullptr;
  return &ts[*it];
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& t) const {
  if (t.begin > t.end || t.end > header_.data_size)
    fail(ErrorKind::Usage, "{}: tensor {}: bytes [{}, {}) are not within this file's {}-byte data section",
         path_.string(), qname(t.name), t.begin, t.end, header_.data_size);
  if (t.begin == t.end) return {};
  if (!map_) fail(ErrorKind::Usage, "{}: data() on a moved-from SafetensorsFile", path_.string());
  Mapping& m = *map_;
  std::call_once(m.once, [&] {
    const std::string label = path_.string();
    Fd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) fail_io("{}: cannot open: {}", label, errno_text(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail_io("{}: cannot stat: {}", label, errno_text(errno));
    if (static_cast<uint64_t>(st.st_size) < file_size_)
      fail_io("{}: file shrank from {} to {} bytes since it was opened", label, file_size_,
              static_cast<uint64_t>(st.st_size));
    void* p = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) fail_io("{}: mmap of {} bytes failed: {}", label, file_size_, errno_text(errno));
    m.addr = p;
    m.len = file_size_;
  });
  const auto* base = static_cast<const std::byte*>(m.addr) + 8 + header_.header_size;
  return {base + t.begin, static_cast<size_t>(t.nbytes())};
}

}  // namespace kiln
