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
#include "kiln/tokenizer/tokenizer_impl.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer {

using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------
// Pieces of text and how Split behaviours recombine them (HF NormalizedString::split).

struct Span {
  uint32_t begin, end;
};


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
