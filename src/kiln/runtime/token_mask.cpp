#include "kiln/runtime/token_mask.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace kiln::runtime {

namespace {

// Characters a string's text takes as they are: printable, not '"' or '\\', and whole UTF-8
// characters (as the matcher checks them). Returns the character count, or -1.
int plain_chars(std::string_view b) {
  int chars = 0;
  for (size_t i = 0; i < b.size();) {
    const uint8_t c = static_cast<uint8_t>(b[i]);
    size_t n = 1;
    if (c < 0x20 || c == '"' || c == '\\') return -1;
    if (c >= 0x80) {
      if (c >= 0xC2 && c <= 0xDF) n = 2;
      else if (c >= 0xE0 && c <= 0xEF) n = 3;
      else if (c >= 0xF0 && c <= 0xF4) n = 4;
      else return -1;
      if (i + n > b.size()) return -1;
      for (size_t k = 1; k < n; ++k) {
        const uint8_t d = static_cast<uint8_t>(b[i + k]);
        if (d < 0x80 || d > 0xBF) return -1;
      }
    }
    i += n;
    ++chars;
  }
  return chars;
}

}  // namespace

TokenTrie::TokenTrie(const std::vector<std::string>& bytes)
    : bytes_(bytes), next_id_(bytes.size(), -1), other_next_(bytes.size(), -1), plain_(bytes.size(), 0), vocab_(bytes.size()) {
  for (size_t id = 0; id < bytes.size(); ++id) {
    if (bytes[id].empty()) continue;
    all_.insert(bytes[id], static_cast<int32_t>(id), next_id_);
    const int chars = plain_chars(bytes[id]);
    if (chars > 0) {
      plain_[id] = 1;
      plain_chars_ = std::max(plain_chars_, chars);
    } else {
      other_.insert(bytes[id], static_cast<int32_t>(id), other_next_);
    }
  }
}

void TokenTrie::Trie::insert(std::string_view b, int32_t id, std::vector<int32_t>& next_id) {
  int32_t n = 0;
  for (char ch : b) {
    const uint8_t byte = static_cast<uint8_t>(ch);
    int32_t c = nodes[static_cast<size_t>(n)].first_child;
    while (c >= 0 && nodes[static_cast<size_t>(c)].byte != byte) c = nodes[static_cast<size_t>(c)].next_sibling;
    if (c < 0) {
      Node nn;
      nn.byte = byte;
      nn.next_sibling = nodes[static_cast<size_t>(n)].first_child;
      nodes.push_back(nn);
      c = static_cast<int32_t>(nodes.size()) - 1;
      nodes[static_cast<size_t>(n)].first_child = c;
    }
    n = c;
  }
  next_id[static_cast<size_t>(id)] = nodes[static_cast<size_t>(n)].first_id;
  nodes[static_cast<size_t>(n)].first_id = id;
}

void TokenTrie::Trie::walk(const JsonMatcher& m, const std::vector<int32_t>& next_id, std::vector<uint8_t>& mask) const {
  // Depth-first, one matcher state per level on the path.
  std::vector<std::pair<int32_t, JsonMatcher>> stack;
  for (int32_t c = nodes[0].first_child; c >= 0; c = nodes[static_cast<size_t>(c)].next_sibling) stack.emplace_back(c, m);
  while (!stack.empty()) {
    auto [node, state] = std::move(stack.back());
    stack.pop_back();
    const Node& n = nodes[static_cast<size_t>(node)];
    if (!state.advance(n.byte)) continue;
    for (int32_t id = n.first_id; id >= 0; id = next_id[static_cast<size_t>(id)]) mask[static_cast<size_t>(id)] = 1;
    for (int32_t c = n.first_child; c >= 0; c = nodes[static_cast<size_t>(c)].next_sibling) stack.emplace_back(c, state);
  }
}

void TokenTrie::mask(const JsonMatcher& m, std::vector<uint8_t>& mask) const {
  if (m.in_plain_string(plain_chars_)) {
    mask = plain_;
    other_.walk(m, other_next_, mask);
    return;
  }
  mask.assign(vocab_, 0);
  all_.walk(m, next_id_, mask);
}

void TokenConstraint::apply(std::span<const float> row, const JsonMatcher& m, std::vector<uint8_t>& mask,
                            std::vector<float>& out) const {
  trie->mask(m, mask);
  const bool end = m.accepting();
  for (int32_t t : end_tokens) {
    if (t >= 0 && static_cast<size_t>(t) < mask.size()) mask[static_cast<size_t>(t)] = end ? 1 : 0;
  }
  out.assign(row.begin(), row.end());
  for (size_t i = 0; i < out.size() && i < mask.size(); ++i) {
    if (!mask[i]) out[i] = -std::numeric_limits<float>::infinity();
  }
}

void TokenConstraint::advance(JsonMatcher& m, int32_t t) const {
  if (std::find(end_tokens.begin(), end_tokens.end(), t) != end_tokens.end()) return;
  m.advance(trie->bytes(t));
}

}  // namespace kiln::runtime
