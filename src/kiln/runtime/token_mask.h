// Which tokens keep structured output valid: every token's bytes in a trie, walked once
// per mask with the JSON matcher (json_schema.h) pruning at the first byte no document
// allows, so the work is bounded by the allowed tokens' bytes, not the vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/runtime/json_schema.h"

namespace kiln::runtime {

class TokenTrie {
 public:
  // bytes[id]: what token id decodes to; empty: never allowed (special and unknown ids).
  explicit TokenTrie(const std::vector<std::string>& bytes);
  size_t vocab() const { return vocab_; }
  size_t nodes() const { return nodes_.size(); }

  // mask[id] = 1 when the matcher accepts the token's bytes after the text so far.
  // (Ending the text is the caller's: an end token is allowed when m.accepting().)
  void mask(const JsonMatcher& m, std::vector<uint8_t>& mask) const;

 private:
  struct Node {
    int32_t first_child = -1, next_sibling = -1;
    int32_t first_id = -1;  // ids ending here: first_id, then next_id[...] chain
    uint8_t byte = 0;
  };
  int32_t child(int32_t node, uint8_t byte, bool create);
  std::vector<Node> nodes_;
  std::vector<int32_t> next_id_;
  size_t vocab_ = 0;
};

}  // namespace kiln::runtime
