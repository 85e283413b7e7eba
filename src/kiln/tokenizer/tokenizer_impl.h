// The tokenizer's inside, shared by tokenizer.cpp (encoding, decoding) and
// tokenizer_load.cpp (reading tokenizer.json): the normalizer and pre-tokenizer steps, the
// added-token trie, the BPE merge table and Tokenizer::Impl. Not a public header.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::tokenizer {
namespace detail {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

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

}  // namespace detail

using detail::Behavior;
using detail::MergeTable;
using detail::NormKind;
using detail::NormStep;
using detail::SplitStep;
using detail::Trie;
using json = nlohmann::json;

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

}  // namespace kiln::tokenizer
