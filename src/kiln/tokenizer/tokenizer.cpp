#include "kiln/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <optional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "kiln/core/error.h"
#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer {

using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------
// Pieces of text and how Split behaviours recombine them (HF NormalizedString::split).

struct Span {
  uint32_t begin, end;
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct Flagged {
  Span span;
  bool match;
};

// The whole of s as alternating gaps and matches (HF Pattern::find_matches).
void find_matches(const Regex& re, std::string_view s, bool invert, std::vector<Flagged>& out) {
  out.clear();
  if (s.empty()) {
    out.push_back({{0, 0}, invert});
    return;
  }
  size_t prev = 0;
  re.for_each_match(s, [&](size_t b, size_t e) {
    if (prev != b) out.push_back({{uint32_t(prev), uint32_t(b)}, invert});
    out.push_back({{uint32_t(b), uint32_t(e)}, !invert});
    prev = e;
  });
  if (prev != s.size()) out.push_back({{uint32_t(prev), uint32_t(s.size())}, invert});
}

// Appends the pieces of s (offsets shifted by `base`) that `behavior` keeps.
void apply_behavior(const std::vector<Flagged>& m, Behavior behavior, uint32_t base, std::vector<Span>& out) {
  const auto push = [&](Span s) {
    if (s.end > s.begin) out.push_back({s.begin + base, s.end + base});
  };
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& f : m)
        if (!f.match) push(f.span);
      return;
    case Behavior::Isolated:
      for (const auto& f : m) push(f.span);
      return;
    default:
      break;
  }
  std::vector<Span> acc;
  bool prev = false;
  if (behavior == Behavior::MergedWithNext) {
    for (auto it = m.rbegin(); it != m.rend(); ++it) {
      if (it->match && !prev && !acc.empty())
        acc.back().begin = it->span.begin;
      else
        acc.push_back(it->span);
      prev = it->match;
    }
    std::reverse(acc.begin(), acc.end());
  } else {
    for (const auto& f : m) {
      const bool merge = behavior == Behavior::MergedWithPrevious ? (f.match && !prev) : (f.match == prev);
      if (merge && !acc.empty())
        acc.back().end = f.span.end;
      else
        acc.push_back(f.span);
      prev = f.match;
    }
  }
  for (const auto& s : acc) push(s);
}

struct SplitStep {
  Regex regex;
  Behavior behavior;
  bool invert;
};

enum class NormKind { Replace, Prepend };

struct NormStep {
  NormKind kind;
  std::optional<Regex> pattern;  // Replace
  std::string content;           // Replace: replacement; Prepend: prefix
};

// ---------------------------------------------------------------------------------------
// Added-token matcher: a byte trie giving the longest token at a position.

struct Trie {
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;
    int32_t token = -1;  // index into Impl::added
  };
  std::vector<Node> nodes{1};
  std::array<bool, 256> first{};

  bool empty() const { return nodes.size() == 1; }

  void insert(std::string_view s, int32_t token) {
    if (s.empty()) return;
    first[static_cast<uint8_t>(s[0])] = true;
    int32_t n = 0;
    for (const char ch : s) {
      const auto c = static_cast<uint8_t>(ch);
      int32_t child = -1;
      for (const auto& [k, v] : nodes[n].next)
        if (k == c) child = v;
      if (child < 0) {
        child = static_cast<int32_t>(nodes.size());
        nodes[n].next.emplace_back(c, child);
        nodes.emplace_back();
      }
      n = child;
    }
    if (nodes[n].token < 0) nodes[n].token = token;  // the first of identical contents wins
  }

  // Longest token starting at s[pos]: its length (0 if none) and index.
  size_t longest(std::string_view s, size_t pos, int32_t& token) const {
    size_t best = 0;
    int32_t n = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      int32_t child = -1;
      for (const auto& [k, v] : nodes[n].next)
        if (k == c) {
          child = v;
          break;
        }
      if (child < 0) break;
      n = child;
      if (nodes[n].token >= 0) {
        best = i + 1 - pos;
        token = nodes[n].token;
      }
    }
    return best;
  }
};

// ---------------------------------------------------------------------------------------
// BPE merge table: (left id, right id) -> (rank, merged id), open addressing.

class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, 0, 0});
    mask_ = cap - 1;
  }
  // Later duplicates overwrite earlier ones, as HF's HashMap collect does.
  void insert(int32_t a, int32_t b, uint32_t rank, int32_t id) {
    const uint64_t k = key(a, b);
    size_t i = hash(k) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != k) i = (i + 1) & mask_;
    slots_[i] = Slot{k, rank, id};
  }
  // Rank (or UINT32_MAX) and merged id.
  uint32_t find(int32_t a, int32_t b, int32_t& id) const {
    const uint64_t k = key(a, b);
    size_t i = hash(k) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == k) {
        id = s.id;
        return s.rank;
      }
      if (s.key == kEmpty) return std::numeric_limits<uint32_t>::max();
      i = (i + 1) & mask_;
    }
  }

 private:
  struct Slot {  // one 16-byte slot: a probe touches one cache line
    uint64_t key;
    uint32_t rank;
    int32_t id;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();

// Repeatedly merges the lowest-ranked adjacent pair (leftmost on ties): HF's Word::merge_all.
// Short words rescan an array of pair ranks; long ones use a heap over linked symbols.
constexpr size_t kShortWord = 64;

void merge_all(std::vector<int32_t>& s, const MergeTable& merges) {
  const size_t n = s.size();
  if (n < 2) return;
  if (n <= kShortWord) {
    std::array<uint32_t, kShortWord> rank;
    std::array<int32_t, kShortWord> merged;
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) rank[i] = merges.find(s[i], s[i + 1], merged[i]);
    while (m >= 2) {
      uint32_t best = kNoRank;
      size_t bi = 0;
      for (size_t i = 0; i + 1 < m; ++i)
        if (rank[i] < best) {
          best = rank[i];
          bi = i;
        }
      if (best == kNoRank) break;
      s[bi] = merged[bi];
      for (size_t i = bi + 1; i + 1 < m; ++i) {
        s[i] = s[i + 1];
        rank[i] = rank[i + 1];
        merged[i] = merged[i + 1];
      }
      --m;
      if (bi > 0) rank[bi - 1] = merges.find(s[bi - 1], s[bi], merged[bi - 1]);
      if (bi + 1 < m) rank[bi] = merges.find(s[bi], s[bi + 1], merged[bi]);
    }
    s.resize(m);
    return;
  }
  // Long words: linked symbols and a heap of candidate merges ordered by (rank, position).
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  struct Cand {
    uint32_t rank;
    int32_t pos;
    int32_t id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  const auto consider = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    int32_t id;
    const uint32_t r = merges.find(s[pos], s[next[pos]], id);
    if (r != kNoRank) heap.push({r, pos, id});
  };
  for (size_t i = 0; i + 1 < n; ++i) consider(int32_t(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const int32_t r = next[c.pos];
    int32_t id;
    if (merges.find(s[c.pos], s[r], id) == kNoRank || id != c.id) continue;  // stale
    s[c.pos] = c.id;
    alive[r] = 0;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  size_t k = 0;
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) s[k++] = s[i];
  s.resize(k);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail_io("cannot open tokenizer file {}", path.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (!f.good() && !f.eof()) fail_io("cannot read tokenizer file {}", path.string());
  return std::move(ss).str();
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;

  // Model.
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> model_tokens;  // by id; empty string = not in the model
  std::vector<uint8_t> in_model;
  MergeTable merges;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
  std::array<int32_t, 256> byte_fallback_ids{};

  // Normalizer and pre-tokenizer.
  std::vector<NormStep> norm;
  std::vector<SplitStep> splits;
  bool byte_level = false;  // ByteLevel pre-tokenizer (last step)
  bool bl_prefix_space = false;
  std::optional<Regex> bl_regex;
  std::array<int32_t, 256> byte_ids{};  // model id of each byte's byte-level character
  bool byte_fast = false;               // every byte has one and no prefix/suffix applies

  // Added tokens.
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  Trie raw_trie, norm_trie;
  std::optional<Regex> ws_regex;          // Rust's \s, for lstrip/rstrip
  std::optional<Regex> word_start, word_end;  // Rust's \w at a boundary, for single_word

  // Decoder.
  bool byte_level_decoder = false;
  std::vector<std::string> decoded;  // by id
  std::vector<uint8_t> known, special;
  size_t vocab_size = 0;

  // Word cache (HF caches BPE results the same way; results do not depend on it), in
  // shards so that threads encoding at once rarely wait for each other.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map;
  };
  static constexpr size_t kShards = 16;
  static constexpr size_t kCacheMax = 200000 / kShards;  // words per shard
  static constexpr size_t kCacheWordMax = 128;            // longer words are not cached
  mutable std::array<Shard, kShards> cache;

  [[noreturn]] void bad(std::string_view field, std::string_view what) const {
    fail_invalid("tokenizer {}: {}: {}", source, field, what);
  }

  void load(const json& j);
  void load_model(const json& m);
  void load_normalizer(const json& n, const std::string& field);
  void load_pre_tokenizer(const json& p, const std::string& field, bool& saw_byte_level);
  void load_added(const json& a);
  void load_decoder(const json& d);

  std::string normalize(std::string_view s) const;
  // Words go to `word` (BPE runs there), added tokens to `token`.
  using WordSink = std::function<void(std::string_view)>;
  using TokenSink = std::function<void(int32_t)>;
  void run(std::string_view text, bool split_special, const WordSink& word, const TokenSink& token) const;
  void encode_segment(std::string_view s, bool split_special, const WordSink& word, const TokenSink& token) const;
  void pre_tokenize(std::string_view s, const WordSink& word) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_uncached(std::string_view word, std::vector<int32_t>& out) const;
  void split_added(std::string_view s, const Trie& trie, bool split_special,
                   const std::function<void(std::string_view)>& text,
                   const std::function<void(int32_t)>& token) const;
};

namespace {

const json& need(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field) {
  if (!obj.is_object()) t.bad(field, "expected a JSON object");
  const auto it = obj.find(key);
  if (it == obj.end()) t.bad(field + "." + key, "missing");
  return *it;
}

std::string need_string(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field) {
  const json& v = need(t, obj, key, field);
  if (!v.is_string()) t.bad(field + "." + key, "expected a string");
  return v.get<std::string>();
}

bool opt_bool(const Tokenizer::Impl& t, const json& obj, const char* key, const std::string& field, bool dflt) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) t.bad(field + "." + key, "expected true or false");
  return it->get<bool>();
}

std::optional<std::string> opt_string(const Tokenizer::Impl& t, const json& obj, const char* key,
                                      const std::string& field) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) t.bad(field + "." + key, "expected a string or null");
  return it->get<std::string>();
}

Regex pattern_of(const Tokenizer::Impl& t, const json& obj, const std::string& field) {
  const json& p = need(t, obj, "pattern", field);
  const std::string f = field + ".pattern";
  const std::string where = fmt::format("tokenizer {}: {}", t.source, f);
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
    return Regex(p["Regex"].get<std::string>(), where);
  if (p.is_object() && p.contains("String") && p["String"].is_string())
    return Regex::literal(p["String"].get<std::string>(), where);
  t.bad(f, "expected {\"Regex\": ...} or {\"String\": ...}");
}

Behavior behavior_of(const Tokenizer::Impl& t, const json& obj, const std::string& field) {
  const std::string b = need_string(t, obj, "behavior", field);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  t.bad(field + ".behavior", fmt::format("unknown behavior '{}'", b));
}

}  // namespace

void Tokenizer::Impl::load(const json& j) {
  if (!j.is_object()) bad("(root)", "expected a JSON object");
  load_model(need(*this, j, "model", ""));
  if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) load_normalizer(*it, "normalizer");
  if (auto it = j.find("pre_tokenizer"); it != j.end() && !it->is_null()) {
    bool saw = false;
    load_pre_tokenizer(*it, "pre_tokenizer", saw);
  }
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) load_added(*it);
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) load_decoder(*it);

  // Byte-level fast path: each byte's character is a model token.
  const auto& chars = byte_level_chars();
  byte_fast = byte_level && prefix.empty() && suffix.empty();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, chars[b]);
    const auto it = vocab.find(s);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
    if (byte_ids[b] < 0) byte_fast = false;
    const auto fb = vocab.find(fmt::format("<0x{:02X}>", b));
    byte_fallback_ids[b] = fb == vocab.end() ? -1 : fb->second;
  }

  // What each id decodes to.
  vocab_size = model_tokens.size();
  for (const auto& a : added) vocab_size = std::max(vocab_size, size_t(a.id) + 1);
  decoded.assign(vocab_size, {});
  known.assign(vocab_size, 0);
  special.assign(vocab_size, 0);
  std::unordered_set<std::string> special_contents;
  for (const auto& a : added)
    if (a.special) special_contents.insert(a.content);
  for (size_t id = 0; id < vocab_size; ++id) {
    const std::string* tok = nullptr;
    if (auto it = added_by_id.find(int32_t(id)); it != added_by_id.end())
      tok = &added[it->second].content;
    else if (id < in_model.size() && in_model[id])
      tok = &model_tokens[id];
    if (!tok) continue;
    known[id] = 1;
    special[id] = special_contents.count(*tok) ? 1 : 0;
    if (!byte_level_decoder) {
      decoded[id] = *tok;
      continue;
    }
    // ByteLevel decoder: the token's characters mapped back to bytes, or the token's own
    // UTF-8 when any character is outside the byte map (HF decode_chain).
    std::string bytes;
    bool all = true;
    for (size_t i = 0; i < tok->size();) {
      const size_t n = utf8_sequence_length(*tok, i);
      const int b = n ? byte_level_byte(utf8_decode(*tok, i, n)) : -1;
      if (b < 0) {
        all = false;
        break;
      }
      bytes.push_back(static_cast<char>(b));
      i += n;
    }
    decoded[id] = all ? std::move(bytes) : *tok;
  }
}

void Tokenizer::Impl::load_model(const json& m) {
  const std::string f = "model";
  if (!m.is_object()) bad(f, "expected a JSON object");
  if (auto type = opt_string(*this, m, "type", f); type && *type != "BPE")
    bad(f + ".type", fmt::format("'{}' is not supported (kiln runs BPE models)", *type));
  if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
    if (!it->is_number()) bad(f + ".dropout", "expected a number or null");
    if (it->get<double>() != 0.0) bad(f + ".dropout", "BPE dropout is not supported for inference");
  }
  unk_token = opt_string(*this, m, "unk_token", f);
  fuse_unk = opt_bool(*this, m, "fuse_unk", f, false);
  byte_fallback = opt_bool(*this, m, "byte_fallback", f, false);
  ignore_merges = opt_bool(*this, m, "ignore_merges", f, false);
  prefix = opt_string(*this, m, "continuing_subword_prefix", f).value_or("");
  suffix = opt_string(*this, m, "end_of_word_suffix", f).value_or("");

  const json& v = need(*this, m, "vocab", f);
  if (!v.is_object()) bad(f + ".vocab", "expected an object of token -> id");
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad(f + ".vocab[\"" + it.key() + "\"]", "expected a non-negative integer id");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    vocab[it.key()] = id;
    if (size_t(id) >= model_tokens.size()) {
      model_tokens.resize(size_t(id) + 1);
      in_model.resize(size_t(id) + 1, 0);
    }
    model_tokens[id] = it.key();
    in_model[id] = 1;
  }

  const json& mg = need(*this, m, "merges", f);
  if (!mg.is_array()) bad(f + ".merges", "expected an array");
  merges.reserve(mg.size());
  std::string a, b;
  for (size_t r = 0; r < mg.size(); ++r) {
    const json& e = mg[r];
    const std::string field = fmt::format("{}.merges[{}]", f, r);
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) bad(field, fmt::format("'{}' is not two tokens separated by a space", s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      bad(field, "expected \"a b\" or [\"a\", \"b\"]");
    }
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    if (ia == vocab.end()) bad(field, fmt::format("token '{}' is not in model.vocab", a));
    if (ib == vocab.end()) bad(field, fmt::format("token '{}' is not in model.vocab", b));
    if (iab == vocab.end()) bad(field, fmt::format("merged token '{}' is not in model.vocab", a + b));
    merges.insert(ia->second, ib->second, uint32_t(r), iab->second);
  }
}

void Tokenizer::Impl::load_normalizer(const json& n, const std::string& f) {
  const std::string type = need_string(*this, n, "type", f);
  if (type == "Sequence") {
    const json& list = need(*this, n, "normalizers", f);
    if (!list.is_array()) bad(f + ".normalizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) load_normalizer(list[i], fmt::format("{}.normalizers[{}]", f, i));
  } else if (type == "Replace") {
    norm.push_back({NormKind::Replace, pattern_of(*this, n, f), need_string(*this, n, "content", f)});
  } else if (type == "Prepend") {
    norm.push_back({NormKind::Prepend, std::nullopt, need_string(*this, n, "prepend", f)});
  } else {
    bad(f + ".type", fmt::format("normalizer '{}' is not supported (kiln supports Sequence, Replace, Prepend)", type));
  }
}

void Tokenizer::Impl::load_pre_tokenizer(const json& p, const std::string& f, bool& saw_byte_level) {
  const std::string type = need_string(*this, p, "type", f);
  if (type == "Sequence") {
    const json& list = need(*this, p, "pretokenizers", f);
    if (!list.is_array()) bad(f + ".pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      load_pre_tokenizer(list[i], fmt::format("{}.pretokenizers[{}]", f, i), saw_byte_level);
    return;
  }
  if (saw_byte_level)
    bad(f, fmt::format("'{}' after ByteLevel is not supported (ByteLevel must be the last pre-tokenizer)", type));
  if (type == "Split") {
    splits.push_back({pattern_of(*this, p, f), behavior_of(*this, p, f), opt_bool(*this, p, "invert", f, false)});
  } else if (type == "Digits") {
    const bool individual = opt_bool(*this, p, "individual_digits", f, false);
    splits.push_back({Regex("\\p{N}", f), individual ? Behavior::Isolated : Behavior::Contiguous, false});
  } else if (type == "ByteLevel") {
    saw_byte_level = true;
    byte_level = true;
    bl_prefix_space = opt_bool(*this, p, "add_prefix_space", f, true);
    if (opt_bool(*this, p, "use_regex", f, true))
      bl_regex.emplace("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", f);
  } else {
    bad(f + ".type",
        fmt::format("pre-tokenizer '{}' is not supported (kiln supports Sequence, Split, Digits, ByteLevel)", type));
  }
}

void Tokenizer::Impl::load_added(const json& a) {
  const std::string f = "added_tokens";
  if (!a.is_array()) bad(f, "expected an array");
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string field = fmt::format("{}[{}]", f, i);
    const json& e = a[i];
    AddedToken t;
    const json& id = need(*this, e, "id", field);
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad(field + ".id", "expected a non-negative integer");
    t.id = static_cast<int32_t>(id.get<int64_t>());
    t.content = need_string(*this, e, "content", field);
    t.special = opt_bool(*this, e, "special", field, false);
    t.single_word = opt_bool(*this, e, "single_word", field, false);
    t.lstrip = opt_bool(*this, e, "lstrip", field, false);
    t.rstrip = opt_bool(*this, e, "rstrip", field, false);
    t.normalized = opt_bool(*this, e, "normalized", field, !t.special);
    if (t.content.empty()) bad(field + ".content", "empty");
    if (utf8_first_invalid(t.content) != t.content.size()) bad(field + ".content", "not valid UTF-8");
    if (auto it = vocab.find(t.content); it != vocab.end() && it->second != t.id)
      bad(field + ".id", fmt::format("'{}' has id {} in model.vocab but {} here", t.content, it->second, t.id));
    if (size_t(t.id) < in_model.size() && in_model[t.id] && model_tokens[t.id] != t.content)
      bad(field + ".id", fmt::format("id {} of '{}' is '{}' in model.vocab", t.id, t.content, model_tokens[t.id]));
    if (added_by_id.count(t.id)) bad(field + ".id", fmt::format("id {} is used by two added tokens", t.id));
    added_by_id[t.id] = added.size();
    added_by_content.emplace(t.content, t.id);
    added.push_back(std::move(t));
  }
  // HF builds its matchers from the special tokens first, then the others, each in file order.
  for (int pass = 0; pass < 2; ++pass)
    for (size_t i = 0; i < added.size(); ++i) {
      const auto& t = added[i];
      if (t.special != (pass == 0)) continue;
      if (t.normalized)
        norm_trie.insert(normalize(t.content), int32_t(i));
      else
        raw_trie.insert(t.content, int32_t(i));
    }
  const bool any_strip = std::any_of(added.begin(), added.end(), [](const auto& t) { return t.lstrip || t.rstrip; });
  const bool any_word = std::any_of(added.begin(), added.end(), [](const auto& t) { return t.single_word; });
  if (any_strip) ws_regex.emplace("\\s", f);
  if (any_word) {
    // Rust regex's \w: Alphabetic, M, Nd, Pc, Join_Control (Alphabetic approximated by L + Nl).
    word_start.emplace("\\A[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]", f);
    word_end.emplace("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]\\z", f);
  }
}

void Tokenizer::Impl::load_decoder(const json& d) {
  const std::string type = need_string(*this, d, "type", "decoder");
  if (type != "ByteLevel")
    bad("decoder.type", fmt::format("decoder '{}' is not supported (kiln supports ByteLevel)", type));
  byte_level_decoder = true;
}

std::string Tokenizer::Impl::normalize(std::string_view s) const {
  std::string cur(s);
  for (const auto& step : norm) {
    if (step.kind == NormKind::Prepend) {
      if (!cur.empty()) cur.insert(0, step.content);
      continue;
    }
    std::string out;
    size_t prev = 0;
    step.pattern->for_each_match(cur, [&](size_t b, size_t e) {
      out.append(cur, prev, b - prev);
      out += step.content;
      prev = e;
    });
    out.append(cur, prev, std::string::npos);
    cur = std::move(out);
  }
  return cur;
}

// HF AddedVocabulary::find_matches over s; calls text() for the pieces between tokens.
void Tokenizer::Impl::split_added(std::string_view s, const Trie& trie, bool split_special,
                                  const std::function<void(std::string_view)>& text,
                                  const std::function<void(int32_t)>& token) const {
  if (trie.empty()) {
    if (!s.empty()) text(s);
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    if (!trie.first[static_cast<uint8_t>(s[pos])]) {
      ++pos;
      continue;
    }
    int32_t idx = -1;
    const size_t len = trie.longest(s, pos, idx);
    if (!len) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the matcher resumes after the match, whether it is kept or not
    const AddedToken& t = added[size_t(idx)];
    if (split_special && t.special) continue;
    if (t.single_word) {
      size_t b, e;
      const bool start_space = start == 0 || !word_end->search(s.substr(0, start), 0, b, e);
      const bool stop_space = stop == s.size() || !word_start->search(s.substr(stop), 0, b, e);
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      // Leftmost start of the whitespace run ending at `start`, not before the last split.
      size_t ns = start;
      while (ns > start_offset) {
        size_t q = ns - 1;
        while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
        size_t b, e;
        if (!ws_regex->search(s.substr(q, ns - q), 0, b, e) || b != 0 || e != ns - q) break;
        ns = q;
      }
      start = ns;
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        const size_t n = utf8_sequence_length(s, stop);
        size_t b, e;
        if (!n || !ws_regex->search(s.substr(stop, n), 0, b, e) || b != 0 || e != n) break;
        stop += n;
      }
    }
    if (start_offset < start) text(s.substr(start_offset, start - start_offset));
    token(t.id);
    start_offset = stop;
  }
  if (start_offset < s.size()) text(s.substr(start_offset));
}

// One piece between added tokens: pre-tokenizer steps, then ByteLevel + BPE per word.
void Tokenizer::Impl::pre_tokenize(std::string_view s, const WordSink& word) const {
  std::vector<Span> cur{{0, uint32_t(s.size())}}, next;
  std::vector<Flagged> m;
  for (const auto& step : splits) {
    next.clear();
    for (const Span sp : cur) {
      find_matches(step.regex, s.substr(sp.begin, sp.end - sp.begin), step.invert, m);
      apply_behavior(m, step.behavior, sp.begin, next);
    }
    cur.swap(next);
  }
  std::string with_space;
  for (const Span sp : cur) {
    std::string_view piece = s.substr(sp.begin, sp.end - sp.begin);
    if (piece.empty()) continue;
    if (!byte_level) {
      word(piece);
      continue;
    }
    if (bl_prefix_space && piece[0] != ' ') {
      with_space.assign(1, ' ');
      with_space.append(piece);
      piece = with_space;
    }
    if (!bl_regex) {
      word(piece);
      continue;
    }
    find_matches(*bl_regex, piece, false, m);
    for (const auto& f : m)
      if (f.span.end > f.span.begin) word(piece.substr(f.span.begin, f.span.end - f.span.begin));
  }
}

void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() > kCacheWordMax) {
    bpe_uncached(word, out);
    return;
  }
  const size_t h = Hash{}(word);
  Shard& shard = cache[(h >> 7) % kShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    if (auto it = shard.map.find(word); it != shard.map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  bpe_uncached(word, out);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() < kCacheMax)
    shard.map.emplace(std::string(word), std::vector<int32_t>(out.begin() + std::ptrdiff_t(before), out.end()));
}

void Tokenizer::Impl::bpe_uncached(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  if (byte_fast && !ignore_merges) {
    for (const char c : word) sym.push_back(byte_ids[static_cast<uint8_t>(c)]);
    merge_all(sym, merges);
    out.insert(out.end(), sym.begin(), sym.end());
    return;
  }
  // The word as the model sees it: byte-level characters, or the text itself.
  std::string mapped;
  if (byte_level) {
    const auto& chars = byte_level_chars();
    for (const char c : word) append_utf8(mapped, chars[static_cast<uint8_t>(c)]);
  } else {
    mapped.assign(word);
  }
  const std::string_view w = mapped;
  if (ignore_merges) {
    if (auto it = vocab.find(mapped); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  int32_t unk = -1;  // pending unknown token (fused runs share one)
  const auto unk_id = [&]() -> int32_t {
    const auto it = vocab.find(*unk_token);
    if (it == vocab.end())
      fail_invalid("tokenizer {}: model.unk_token '{}' is not in model.vocab", source, *unk_token);
    return it->second;
  };
  std::string s;
  for (size_t i = 0; i < w.size();) {
    size_t n = utf8_sequence_length(w, i);
    if (!n) n = 1;
    s.clear();
    if (i > 0) s += prefix;
    s.append(w.substr(i, n));
    if (i + n == w.size()) s += suffix;
    i += n;
    if (auto it = vocab.find(s); it != vocab.end()) {
      if (unk >= 0) sym.push_back(unk), unk = -1;
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (const char c : s) all = all && byte_fallback_ids[static_cast<uint8_t>(c)] >= 0;
      if (all) {  // HF leaves a pending unknown token pending here
        for (const char c : s) sym.push_back(byte_fallback_ids[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_token) {
      if (unk >= 0 && fuse_unk) continue;
      if (unk >= 0) sym.push_back(unk);
      unk = unk_id();
    }
  }
  if (unk >= 0) sym.push_back(unk);
  merge_all(sym, merges);
  out.insert(out.end(), sym.begin(), sym.end());
}

// A piece between non-normalized added tokens: normalize, cut out normalized added tokens,
// pre-tokenize the rest.
void Tokenizer::Impl::encode_segment(std::string_view s, bool split_special, const WordSink& word,
                                     const TokenSink& token) const {
  if (norm.empty() && norm_trie.empty()) {
    pre_tokenize(s, word);
    return;
  }
  const std::string n = normalize(s);
  split_added(
      n, norm_trie, split_special, [&](std::string_view piece) { pre_tokenize(piece, word); }, token);
}

// HF's extract_and_normalize + pre-tokenization: non-normalized added tokens on the raw
// text first, then normalized ones inside each normalized remainder.
void Tokenizer::Impl::run(std::string_view text, bool split_special, const WordSink& word,
                          const TokenSink& token) const {
  if (const size_t bad = utf8_first_invalid(text); bad != text.size())
    fail(ErrorKind::Usage, "tokenizer input is not valid UTF-8 (byte {} of {})", bad, text.size());
  split_added(
      text, raw_trie, split_special,
      [&](std::string_view piece) { encode_segment(piece, split_special, word, token); }, token);
}

// ---------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  return from_json(read_file(path), path.string());
}

Tokenizer Tokenizer::from_json(std::string_view text, std::string_view source) {
  auto impl = std::make_shared<Impl>();
  impl->source = std::string(source);
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    fail_invalid("tokenizer {}: not valid JSON: {}", source, e.what());
  }
  try {
    impl->load(j);
  } catch (const json::exception& e) {  // a value of the wrong type deep inside
    fail_invalid("tokenizer {}: {}", source, e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  const Impl& t = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  t.run(
      text, options.split_special_tokens, [&](std::string_view w) { t.bpe(w, out); },
      [&](int32_t id) { out.push_back(id); });
  return out;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text, const EncodeOptions& options) const {
  const Impl& t = *impl_;
  std::vector<std::string> out;
  t.run(
      text, options.split_special_tokens, [&](std::string_view w) { out.emplace_back(w); },
      [&](int32_t id) { out.push_back(t.added[t.added_by_id.at(id)].content); });
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& t = *impl_;
  std::string bytes;
  bool first = true;
  for (const int32_t id : ids) {
    if (id < 0 || size_t(id) >= t.vocab_size || !t.known[id]) continue;
    if (skip_special_tokens && t.special[id]) continue;
    if (!t.byte_level_decoder && !first) bytes += ' ';
    bytes += t.decoded[id];
    first = false;
  }
  if (!t.byte_level_decoder) return bytes;
  std::string out;
  out.reserve(bytes.size());
  utf8_append_lossy(out, bytes, true);
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const Impl& t = *impl_;
  if (auto it = t.added_by_content.find(std::string(token)); it != t.added_by_content.end()) return it->second;
  if (auto it = t.vocab.find(std::string(token)); it != t.vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const Impl& t = *impl_;
  if (auto it = t.added_by_id.find(id); it != t.added_by_id.end()) return t.added[it->second].content;
  if (id >= 0 && size_t(id) < t.in_model.size() && t.in_model[id]) return t.model_tokens[id];
  return std::nullopt;
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->vocab_size && impl_->special[id];
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }

std::optional<std::string_view> Tokenizer::token_bytes(int32_t id) const {
  const Impl& t = *impl_;
  if (id < 0 || size_t(id) >= t.vocab_size || !t.known[id]) return std::nullopt;
  return std::string_view(t.decoded[id]);
}

bool Tokenizer::byte_level_decoder() const { return impl_->byte_level_decoder; }

// ---------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {}

void StreamDecoder::append(int32_t id, std::string& out) {
  const auto bytes = tok_.token_bytes(id);
  if (!bytes) return;
  if (skip_special_ && tok_.is_special(id)) return;
  if (!tok_.byte_level_decoder()) {
    if (!first_) out += ' ';
    out.append(*bytes);
    first_ = false;
    return;
  }
  first_ = false;
  pending_.append(*bytes);
  const size_t used = utf8_append_lossy(out, pending_, false);
  pending_.erase(0, used);
}

std::string StreamDecoder::push(int32_t id) {
  std::string out;
  append(id, out);
  return out;
}

std::string StreamDecoder::push(std::span<const int32_t> ids) {
  std::string out;
  for (const int32_t id : ids) append(id, out);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  utf8_append_lossy(out, pending_, true);
  pending_.clear();
  first_ = true;
  return out;
}

}  // namespace kiln::tokenizer
