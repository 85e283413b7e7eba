#include "kiln/io/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"

namespace kiln {
namespace {

using nlohmann::json;

std::string errno_text(int err) { return std::strerror(err); }

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Quotes a JSON key for messages (escaping control characters and invalid UTF-8 safely).
std::string qname(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

void pwrite_all(int fd, const void* buf, size_t n, uint64_t off, const std::filesystem::path& path) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_io("{}: write failed: {}", path.string(), errno_text(errno));
    }
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
}

}  // namespace

struct SafetensorsWriter::Impl {
  struct Decl {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    bool sparse;
    uint64_t begin = 0, end = 0;
  };
  enum class State { Declaring, Writing, Finished, Failed };

  std::filesystem::path path;
  std::map<std::string, std::string> metadata;
  std::vector<Decl> decls;
  std::unordered_set<std::string> names;
  State state = State::Declaring;
  int fd = -1;
  size_t next = 0;  // next declaration to write
  uint64_t part = 0;  // bytes of decls[next] written so far by write_part()
  uint64_t data_start = 0;
  uint64_t data_size = 0;

  std::string label() const { return path.string(); }

  void require(State s, const char* op) const {
    if (state == s) return;
    const char* why = state == State::Declaring  ? "begin() has not been called"
                      : state == State::Writing  ? "begin() was already called"
                      : state == State::Finished ? "finish() was already called"
                                                 : "an earlier call failed";
    fail(ErrorKind::Usage, "{}: SafetensorsWriter::{} not allowed: {}", label(), op, why);
  }

  // Runs f; on any exception marks the writer failed (the partial file is removed).
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (...) {
      state = State::Failed;
      abandon();
      throw;
    }
  }

  void abandon() {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
      ::unlink(path.c_str());
    }
  }
};

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
}

SafetensorsWriter::~SafetensorsWriter() {
  // A writer dropped between begin() and finish() leaves no half-written file behind
  // (its holes would read as valid zero tensors).
  if (impl_) impl_->abandon();
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  Impl& m = *impl_;
  m.require(Impl::State::Declaring, "set_metadata");
  try {
    (void)json(key).dump();
    (void)json(value).dump();
  } catch (const json::exception&) {
    fail(ErrorKind::Usage, "{}: metadata key/value {} is not valid UTF-8", m.label(), qname(key));
  }
  m.metadata[std::move(key)] = std::move(value);
}

void SafetensorsWriter::declare(std::string name, DType dtype, std::vector<int64_t> shape, bool sparse) {
  Impl& m = *impl_;
  m.require(Impl::State::Declaring, "declare");
  if (name == "__metadata__") fail(ErrorKind::Usage, "{}: \"__metadata__\" is not a valid tensor name", m.label());
  try {
    (void)json(name).dump();
  } catch (const json::exception&) {
    fail(ErrorKind::Usage, "{}: tensor name {} is not valid UTF-8", m.label(), qname(name));
  }
  if (static_cast<size_t>(dtype) >= static_cast<size_t>(kNumDTypes))
    fail(ErrorKind::Usage, "{}: tensor {}: invalid dtype value {}", m.label(), qname(name), static_cast<int>(dtype));
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0)
      fail(ErrorKind::Usage, "{}: tensor {}: shape {} has a negative dimension", m.label(), qname(name),
           shape_str(shape));
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(ErrorKind::Usage, "{}: tensor {}: shape {} has too many elements", m.label(), qname(name),
           shape_str(shape));
  }
  uint64_t nbytes = 0, end = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(dtype)), &nbytes) ||
      __builtin_add_overflow(m.data_size, nbytes, &end) || end > (uint64_t{1} << 62))
    fail(ErrorKind::Usage, "{}: tensor {}: the file would be too large", m.label(), qname(name));
  if (!m.names.insert(name).second)
    fail(ErrorKind::Usage, "{}: tensor {} declared twice", m.label(), qname(name));
  m.decls.push_back(Impl::Decl{std::move(name), dtype, std::move(shape), sparse, m.data_size, end});
  m.data_size = end;
}

void SafetensorsWriter::begin() {
  Impl& m = *impl_;
  m.require(Impl::State::Declaring, "begin");
  m.guarded([&] {
    std::string h;
    h.reserve(64 + m.decls.size() * 96);
    h += '{';
    bool first = true;
    if (!m.metadata.empty()) {
      h += "\"__metadata__\":{";
      bool f2 = true;
      for (const auto& [k, v] : m.metadata) {
        if (!f2) h += ',';
        f2 = false;
        h += json(k).dump();
        h += ':';
        h += json(v).dump();
      }
      h += '}';
      first = false;
    }
    for (const auto& d : m.decls) {
      if (!first) h += ',';
      first = false;
      fmt::format_to(std::back_inserter(h), "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                     json(d.name).dump(), dtype_name(d.dtype), fmt::join(d.shape, ","), d.begin, d.end);
    }
    h += '}';
    while (h.size() % 8 != 0) h += ' ';
    m.data_start = 8 + h.size();

    m.fd = ::open(m.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (m.fd < 0) fail_io("{}: cannot create: {}", m.label(), errno_text(errno));
    std::string buf(8, '\0');
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    buf += h;
    pwrite_all(m.fd, buf.data(), buf.size(), 0, m.path);
    m.state = Impl::State::Writing;
  });
}

void SafetensorsWriter::write(std::string_view name, std::span<const std::byte> bytes) {
  Impl& m = *impl_;
  m.require(Impl::State::Writing, "write");
  while (m.next < m.decls.size() && m.decls[m.next].sparse) ++m.next;
  auto declared_sparse = [&] {
    for (const auto& d : m.decls)
      if (d.name == name) return d.sparse;
    return false;
  };
  // Usage errors leave the writer usable (nothing was written).
  if (m.next >= m.decls.size()) {
    if (declared_sparse())
      fail(ErrorKind::Usage, "{}: tensor {} was declared sparse; its bytes are never written", m.label(),
           qname(name));
    fail(ErrorKind::Usage, "{}: write({}) but every declared tensor has been written", m.label(), qname(name));
  }
  const auto& d = m.decls[m.next];
  if (d.name != name) {
    if (declared_sparse())
      fail(ErrorKind::Usage, "{}: tensor {} was declared sparse; its bytes are never written", m.label(),
           qname(name));
    fail(ErrorKind::Usage, "{}: write({}) out of order: tensors must be written in declaration order, next is {}",
         m.label(), qname(name), qname(d.name));
  }
  if (m.part != 0)
    fail(ErrorKind::Usage, "{}: tensor {}: write() after {} bytes of it were written in parts", m.label(), qname(name),
         m.part);
  if (bytes.size() != d.end - d.begin)
    fail(ErrorKind::Usage, "{}: tensor {}: write() got {} bytes, expected {} ({} x shape {})", m.label(),
         qname(name), bytes.size(), d.end - d.begin, dtype_name(d.dtype), shape_str(d.shape));
  m.guarded([&] { pwrite_all(m.fd, bytes.data(), bytes.size(), m.data_start + d.begin, m.path); });
  ++m.next;
}

void SafetensorsWriter::write_part(std::string_view name, std::span<const std::byte> bytes) {
  Impl& m = *impl_;
  m.require(Impl::State::Writing, "write_part");
  if (m.part == 0)
    while (m.next < m.decls.size() && m.decls[m.next].sparse) ++m.next;
  if (m.next >= m.decls.size())
    fail(ErrorKind::Usage, "{}: write_part({}) but every declared tensor has been written", m.label(), qname(name));
  const auto& d = m.decls[m.next];
  if (d.name != name)
    fail(ErrorKind::Usage, "{}: write_part({}) out of order: tensors must be written in declaration order, next is {}",
         m.label(), qname(name), qname(d.name));
  const uint64_t total = d.end - d.begin;
  if (m.part + bytes.size() > total)
    fail(ErrorKind::Usage, "{}: tensor {}: write_part() of {} bytes after {} overruns its {} bytes", m.label(), qname(name),
         bytes.size(), m.part, total);
  m.guarded([&] { pwrite_all(m.fd, bytes.data(), bytes.size(), m.data_start + d.begin + m.part, m.path); });
  m.part += bytes.size();
  if (m.part == total) {
    ++m.next;
    m.part = 0;
  }
}

void SafetensorsWriter::finish() {
  Impl& m = *impl_;
  m.require(Impl::State::Writing, "finish");
  if (m.part != 0)
    fail(ErrorKind::Usage, "{}: finish() but tensor {} has {} of its {} bytes written", m.label(),
         qname(m.decls[m.next].name), m.part, m.decls[m.next].end - m.decls[m.next].begin);
  while (m.next < m.decls.size() && m.decls[m.next].sparse) ++m.next;
  if (m.next < m.decls.size())
    fail(ErrorKind::Usage, "{}: finish() but tensor {} (and any after it) was declared and never written", m.label(),
         qname(m.decls[m.next].name));
  m.guarded([&] {
    // Size the file: trailing sparse tensors become a hole at the end.
    if (::ftruncate(m.fd, static_cast<off_t>(m.data_start + m.data_size)) != 0)
      fail_io("{}: cannot set the file size: {}", m.label(), errno_text(errno));
    int fd = m.fd;
    m.fd = -1;
    if (::close(fd) != 0) {
      ::unlink(m.path.c_str());
      fail_io("{}: close failed: {}", m.label(), errno_text(errno));
    }
    m.state = Impl::State::Finished;
  });
}

void SafetensorsWriter::write_file(const std::filesystem::path& path, const std::vector<Tensor>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w(path);
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  for (const auto& t : tensors) {
    if (t.sparse && !t.bytes.empty())
      fail(ErrorKind::Usage, "{}: tensor {} is sparse but has {} bytes (a sparse tensor has none)", path.string(),
           qname(t.name), t.bytes.size());
    w.declare(t.name, t.dtype, t.shape, t.sparse);
  }
  w.begin();
  for (const auto& t : tensors)
    if (!t.sparse) w.write(t.name, t.bytes);
  w.finish();
}

}  // namespace kiln
