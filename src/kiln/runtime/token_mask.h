// Which tokens keep structured output valid: every token's bytes in a trie, walked once
// per mask with the JSON matcher (json_schema.h) pruning at the first byte no document
// allows, so the work is bounded by the allowed tokens' bytes, not the vocabulary. Inside
// a string's text almost every token is allowed; there the "plain" tokens (printable
// characters other than '"' and '\', whole UTF-8 characters) are taken at once from a
// precomputed mask and only the others are walked, in a trie of their own.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/runtime/json_schema.h"

namespace kiln::runtime {

class TokenTrie {
 public:
  // The bytes of token id (empty for special and unknown ids).
  std::string_view bytes(int32_t id) const { return bytes_[static_cast<size_t>(id)]; }

  // bytes[id]: what token id decodes to; empty: never allowed (special and unknown ids).
  explicit TokenTrie(const std::vector<std::string>& bytes);
  size_t vocab() const { return vocab_; }
  size_t nodes() const { return all_.nodes.size(); }

  // mask[id] = 1 when the matcher accepts the token's bytes after the text so far.
  // (Ending the text is the caller's: an end token is allowed when m.accepting().)
  void mask(const JsonMatcher& m, std::vector<uint8_t>& mask) const;

 private:
  struct Node {
    int32_t first_child = -1, next_sibling = -1;
    int32_t first_id = -1;  // ids ending here: first_id, then next_id[...] chain
    uint8_t byte = 0;
  };
  struct Trie {
    std::vector<Node> nodes{Node{}};  // [0]: the root
    void insert(std::string_view bytes, int32_t id, std::vector<int32_t>& next_id);
    void walk(const JsonMatcher& m, const std::vector<int32_t>& next_id, std::vector<uint8_t>& mask) const;
  };
  std::vector<std::string> bytes_;
  Trie all_, other_;               // every token; the tokens that are not plain
  std::vector<int32_t> next_id_, other_next_;
  std::vector<uint8_t> plain_;     // per id: plain string text
  int plain_chars_ = 0;            // the most characters a plain token holds
  size_t vocab_ = 0;
};

// A request's structured output: the schema, the vocabulary's trie and the tokens that end
// the text (allowed exactly when the text so far is a whole document).
struct TokenConstraint {
  std::shared_ptr<const JsonSchema> schema;
  std::shared_ptr<const TokenTrie> trie;
  std::vector<int32_t> end_tokens;

  // row with every token the matcher does not allow after the text so far set to -inf.
  void apply(std::span<const float> row, const JsonMatcher& m, std::vector<uint8_t>& mask, std::vector<float>& out) const;
  // The matcher after token t (an end token leaves it as it is).
  void advance(JsonMatcher& m, int32_t t) const;
};

}  // namespace kiln::runtime
