// Checkpoint directory: the sharded index (or every *.safetensors), headers only.
#include "kiln/io/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "kiln/core/error.h"
#include "kiln/io/fast_json_sax.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr size_t kMaxWarningsPerShard = 10;

std::string qname(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string read_file_text(const fs::path& path) {
  const std::string label = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_io("{}: cannot open: {}", label, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_io("{}: cannot stat: {}", label, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail_io("{}: not a regular file", label);
  std::string text;
  text.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  for (;;) {
    if (got == text.size()) text.resize(text.size() + 65536);  // file grew, or /proc-like
    ssize_t r = ::read(fd, text.data() + got, text.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_io("{}: read failed: {}", label, std::strerror(errno));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  text.resize(got);
  return text;
}

// The weight_map of an index, as (tensor, shard) pairs in file order, duplicates kept.
// A SAX handler, so that duplicate keys (which a DOM would collapse) are seen and no
// DOM is built for ~70k entries.
class IndexSax {
 public:
  explicit IndexSax(const std::string& label) : label_(label) {}
  std::vector<std::pair<std::string, uint32_t>> map;  // tensor -> index into shards
  std::vector<std::string> shards;                     // distinct shard names as written
  bool seen_weight_map = false;

  bool null() { return value("null"); }
  bool boolean(bool) { return value("a boolean"); }
  bool number_integer(json::number_integer_t) { return value("a number"); }
  bool number_unsigned(json::number_unsigned_t) { return value("a number"); }
  bool number_float(json::number_float_t, const json::string_t&) { return value("a number"); }
  bool binary(json::binary_t&) { return value("binary"); }
  bool string(json::string_t& s) {
    if (st_ == St::WMValue) {
      // Consecutive entries usually name the same shard.
      if (last_ >= shards.size() || shards[last_] != s) {
        auto [it, inserted] = shard_ids_.try_emplace(s, static_cast<uint32_t>(shards.size()));
        if (inserted) shards.push_back(std::move(s));
        last_ = it->second;
      }
      map.emplace_back(std::move(pending_), last_);
      st_ = St::WM;
      return true;
    }
    return value("a string");
  }
  bool start_object(std::size_t) {
    switch (st_) {
      case St::Top:
        st_ = St::TopKey;
        return true;
      case St::TopValue:
        if (top_key_ == "weight_map") {
          if (seen_weight_map) fail_invalid("{}: \"weight_map\" appears twice", label_);
          seen_weight_map = true;
          st_ = St::WM;
        } else {
          st_ = St::Skip;
          depth_ = 1;
        }
        return true;
      case St::Skip:
        ++depth_;
        return true;
      default:
        return value("an object");
    }
  }
  bool start_array(std::size_t) {
    if (st_ == St::Skip) {
      ++depth_;
      return true;
    }
    if (st_ == St::TopValue && top_key_ != "weight_map") {
      st_ = St::Skip;
      depth_ = 1;
      return true;
    }
    return value("an array");
  }
  bool end_object() {
    switch (st_) {
      case St::TopKey:
        st_ = St::Done;
        return true;
      case St::WM:
        st_ = St::TopKey;
        return true;
      case St::Skip:
        if (--depth_ == 0) st_ = St::TopKey;
        return true;
      default:
        fail_invalid("{}: unexpected end of object", label_);
    }
  }
  bool end_array() {
    if (st_ == St::Skip && --depth_ == 0) st_ = St::TopKey;
    return true;
  }
  bool key(json::string_t& k) {
    if (st_ == St::TopKey) {
      top_key_ = std::move(k);
      st_ = St::TopValue;
    } else if (st_ == St::WM) {
      pending_.assign(k);  // copy: k keeps its buffer for the shard name that follows
      st_ = St::WMValue;
    }
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    fail_invalid("{}: not valid JSON (byte {}): {}", label_, position, ex.what());
  }

 private:
  enum class St { Top, TopKey, TopValue, WM, WMValue, Skip, Done };

  bool value(const char* what) {
    switch (st_) {
      case St::Top:
        fail_invalid("{}: the top level is {}, expected an object with a \"weight_map\"", label_, what);
      case St::TopValue:
        if (top_key_ == "weight_map")
          fail_invalid("{}: \"weight_map\" is {}, expected an object {{tensor name: shard file}}", label_, what);
        st_ = St::TopKey;
        return true;
      case St::WMValue:
        fail_invalid("{}: weight_map entry for tensor {} is {}, expected a shard file name", label_, qname(pending_),
                     what);
      case St::Skip:
        return true;
      default:
        fail_invalid("{}: unexpected {}", label_, what);
    }
  }

  const std::string& label_;
  std::unordered_map<std::string, uint32_t> shard_ids_;
  uint32_t last_ = UINT32_MAX;
  St st_ = St::Top;
  std::string top_key_, pending_;
  int depth_ = 0;
};

// Rejects shard names that are empty, absolute or contain "..": shards live in the dir.
void check_shard_name(const std::string& shard, const fs::path& index, const fs::path& dir) {
  if (shard.empty()) fail_invalid("{}: names a shard with an empty file name", index.string());
  fs::path p(shard);
  if (p.is_absolute() || p.has_root_path())
    fail_invalid("{}: shard {} is an absolute path; shards must be inside {}", index.string(), qname(shard),
                 dir.string());
  for (const auto& part : p) {
    if (part == "..")
      fail_invalid("{}: shard {} has a '..' component; shards must be inside {}", index.string(), qname(shard),
                   dir.string());
  }
}

[[noreturn]] void missing_from_shard(const fs::path& dir, const std::string& index, std::string_view tensor,
                                     const std::string& shard) {
  fail_invalid("{}: index {} maps tensor {} to shard {}, but that shard has no tensor {}", dir.string(), index,
               qname(tensor), shard, qname(tensor));
}

IndexSax parse_index(const fs::path& index, const std::string& label) {
  const std::string text = read_file_text(index);
  if (const size_t nul = text.find('\0'); nul != std::string::npos)
    fail_invalid("{}: not valid JSON (byte {}): NUL byte", label, nul);
  {
    IndexSax sax(label);
    try {
      if (detail::fast_json_sax(text, sax) && sax.seen_weight_map) return sax;
    } catch (const Error&) {
    }
  }
  // Unusual input or an error: nlohmann's parser is authoritative.
  IndexSax sax(label);
  json::sax_parse(text.data(), text.data() + text.size(), &sax, json::input_format_t::json, true);
  if (!sax.seen_weight_map) fail_invalid("{}: has no \"weight_map\" object", label);
  return sax;
}

}  // namespace

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_file_text(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail_invalid("{}: not valid JSON (byte {}): {}", path.string(), e.byte, e.what());
  }
}

Checkpoint Checkpoint::open(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    fail_io("{}: cannot access checkpoint directory: {}", dir.string(), ec.message());
  if (!fs::exists(st)) fail_io("{}: checkpoint directory does not exist", dir.string());
  if (!fs::is_directory(st)) fail_io("{}: not a directory", dir.string());

  Checkpoint c;
  c.dir_ = dir;
  const fs::path index = dir / kIndexName;
  const std::string index_label = index.string();
  std::vector<std::pair<std::string, uint32_t>> wm;  // tensor -> index into shard_names, sorted by tensor
  std::vector<std::string> shard_names;              // sorted, distinct

  if (fs::exists(index, ec)) {
    c.has_index_ = true;
    IndexSax sax = parse_index(index, index_label);
    // Shard names are checked as written, then normalised ("./a" and "a" are one shard).
    std::vector<std::string> norm(sax.shards.size());
    for (size_t i = 0; i < sax.shards.size(); ++i) {
      check_shard_name(sax.shards[i], index, dir);
      norm[i] = fs::path(sax.shards[i]).lexically_normal().string();
    }
    shard_names = norm;
    std::sort(shard_names.begin(), shard_names.end());
    shard_names.erase(std::unique(shard_names.begin(), shard_names.end()), shard_names.end());
    std::vector<uint32_t> remap(norm.size());
    for (size_t i = 0; i < norm.size(); ++i)
      remap[i] = static_cast<uint32_t>(std::lower_bound(shard_names.begin(), shard_names.end(), norm[i]) -
                                       shard_names.begin());
    wm = std::move(sax.map);
    for (auto& e : wm) e.second = remap[e.second];
    auto by_tensor = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (!std::is_sorted(wm.begin(), wm.end(), by_tensor)) std::stable_sort(wm.begin(), wm.end(), by_tensor);
    // (stable: of two entries for one tensor the first written is reported first)
    // Duplicate keys: harmless when they agree, an error when they name different shards.
    size_t out = 0;
    for (size_t i = 0; i < wm.size(); ++i) {
      if (out > 0 && wm[out - 1].first == wm[i].first) {
        if (wm[out - 1].second != wm[i].second)
          fail_invalid("{}: weight_map lists tensor {} twice, in shards {} and {}", index_label, qname(wm[i].first),
                       shard_names[wm[out - 1].second], shard_names[wm[i].second]);
        continue;
      }
      if (out != i) wm[out] = std::move(wm[i]);
      ++out;
    }
    wm.resize(out);

    for (const auto& s : shard_names) {
      const fs::path p = dir / s;
      const auto ss = fs::status(p, ec);
      if (!fs::exists(ss)) fail_invalid("{}: index {} names shard {} which does not exist", dir.string(),
                                        index_label, s);
      if (!fs::is_regular_file(ss))
        fail_invalid("{}: index {} names shard {} which is not a regular file", dir.string(), index_label, s);
    }
    // A .safetensors file the index does not name is not loaded: say so (a stale shard
    // from an older upload, or a file the index forgot).
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      if (p.extension() != ".safetensors") continue;
      const std::string name = p.filename().string();
      bool named = false;
      for (const auto& s : shard_names) named = named || fs::path(s).lexically_normal() == fs::path(name);
      if (!named)
        c.warnings_.push_back(fmt::format("{}: {} is not named by the index {}; its tensors are not loaded",
                                          dir.string(), name, index_label));
    }
  } else {
    fs::directory_iterator it(dir, ec);
    if (ec) fail_io("{}: cannot list directory: {}", dir.string(), ec.message());
    for (const auto& e : it) {
      const fs::path& p = e.path();
      if (p.extension() != ".safetensors") continue;
      if (!e.is_regular_file(ec)) continue;
      shard_names.push_back(p.filename().string());
    }
    if (shard_names.empty()) fail_invalid("no .safetensors files in {}", dir.string());
    std::sort(shard_names.begin(), shard_names.end());
  }

  c.shards_.reserve(shard_names.size());
  size_t total = 0;
  for (const auto& s : shard_names) {
    c.shards_.push_back(SafetensorsFile::open(dir / s));
    total += c.shards_.back().tensors().size();
  }

  // The catalog: every tensor of every shard, sorted by name; a name in two shards is fatal.
  c.sorted_.reserve(total);
  for (size_t i = 0; i < c.shards_.size(); ++i) {
    const auto& ts = c.shards_[i].tensors();
    for (uint32_t k : c.shards_[i].by_name())
      c.sorted_.emplace_back(std::string_view(ts[k].name), CatalogEntry{&ts[k], static_cast<int>(i)});
  }
  // One sorted run per shard: merged pairwise.
  detail::sort_runs(c.sorted_, [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return a.second.shard < b.second.shard;
  });
  for (size_t i = 1; i < c.sorted_.size(); ++i) {
    const auto& a = c.sorted_[i - 1];
    const auto& b = c.sorted_[i];
    if (a.first == b.first)
      fail_invalid("{}: tensor {} is in two shards: {} and {}{}", dir.string(), qname(a.first),
                   shard_names[a.second.shard], shard_names[b.second.shard],
                   c.has_index_ ? fmt::format(" (index {})", index_label) : std::string());
  }

  if (c.has_index_) {
    // Walk the catalog and the weight_map together (both sorted by name): every tensor
    // the index lists must be in the shard it names; tensors a shard holds that the index
    // does not list are catalogued, with a warning.
    std::vector<size_t> unlisted(c.shards_.size(), 0);
    size_t w = 0;
    for (const auto& [name, e] : c.sorted_) {
      if (w < wm.size() && wm[w].first < name)
        missing_from_shard(dir, index_label, wm[w].first, shard_names[wm[w].second]);
      if (w < wm.size() && wm[w].first == name) {
        if (static_cast<int>(wm[w].second) != e.shard)
          missing_from_shard(dir, index_label, wm[w].first, shard_names[wm[w].second]);
        ++w;
        continue;
      }
      if (++unlisted[static_cast<size_t>(e.shard)] <= kMaxWarningsPerShard)
        c.warnings_.push_back(fmt::format("{}: shard {} has tensor {}, which the index {} does not list (catalogued "
                                          "from the shard)",
                                          dir.string(), shard_names[static_cast<size_t>(e.shard)], qname(name),
                                          index_label));
    }
    if (w < wm.size()) missing_from_shard(dir, index_label, wm[w].first, shard_names[wm[w].second]);
    for (size_t i = 0; i < c.shards_.size(); ++i) {
      if (unlisted[i] > kMaxWarningsPerShard)
        c.warnings_.push_back(fmt::format("{}: shard {} has {} more tensors which the index {} does not list",
                                          dir.string(), shard_names[i], unlisted[i] - kMaxWarningsPerShard,
                                          index_label));
    }
  }
  return c;
}

const CatalogEntry* Checkpoint::find(std::string_view name) const {
  auto it = std::lower_bound(sorted_.begin(), sorted_.end(), name,
                             [](const auto& e, std::string_view n) { return e.first < n; });
  if (it == sorted_.end() || it->first != name) return nullptr;
  return &it->second;
}

uint64_t Checkpoint::total_tensor_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, e] : sorted_) n += e.info->nbytes();
  return n;
}

}  // namespace kiln
