#include "kiln/runtime/token_mask.h"

#include <algorithm>
#include <utility>

namespace kiln::runtime {

TokenTrie::TokenTrie(const std::vector<std::string>& bytes) : vocab_(bytes.size()) {
  nodes_.emplace_back();  // root
  next_id_.assign(bytes.size(), -1);
  for (size_t id = 0; id < bytes.size(); ++id) {
    if (bytes[id].empty()) continue;
    int32_t n = 0;
    for (char ch : bytes[id]) n = child(n, static_cast<uint8_t>(ch), true);
    next_id_[id] = nodes_[static_cast<size_t>(n)].first_id;
    nodes_[static_cast<size_t>(n)].first_id = static_cast<int32_t>(id);
  }
}

int32_t TokenTrie::child(int32_t node, uint8_t byte, bool create) {
  for (int32_t c = nodes_[static_cast<size_t>(node)].first_child; c >= 0; c = nodes_[static_cast<size_t>(c)].next_sibling) {
    if (nodes_[static_cast<size_t>(c)].byte == byte) return c;
  }
  if (!create) return -1;
  Node nn;
  nn.byte = byte;
  nn.next_sibling = nodes_[static_cast<size_t>(node)].first_child;
  nodes_.push_back(nn);
  const int32_t id = static_cast<int32_t>(nodes_.size()) - 1;
  nodes_[static_cast<size_t>(node)].first_child = id;
  return id;
}

void TokenTrie::mask(const JsonMatcher& m, std::vector<uint8_t>& mask) const {
  mask.assign(vocab_, 0);
  // Depth-first over the trie, one matcher state per level on the path.
  std::vector<std::pair<int32_t, JsonMatcher>> stack;
  for (int32_t c = nodes_[0].first_child; c >= 0; c = nodes_[static_cast<size_t>(c)].next_sibling) {
    stack.emplace_back(c, m);
  }
  while (!stack.empty()) {
    auto [node, state] = std::move(stack.back());
    stack.pop_back();
    const Node& n = nodes_[static_cast<size_t>(node)];
    if (!state.advance(n.byte)) continue;
    for (int32_t id = n.first_id; id >= 0; id = next_id_[static_cast<size_t>(id)]) mask[static_cast<size_t>(id)] = 1;
    for (int32_t c = n.first_child; c >= 0; c = nodes_[static_cast<size_t>(c)].next_sibling) stack.emplace_back(c, state);
  }
}

}  // namespace kiln::runtime
