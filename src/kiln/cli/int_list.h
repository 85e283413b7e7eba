// Comma-separated lists of positive integers on the command line (--batches 1,8,64).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::cli {

// "1,8,64" -> {1, 8, 64}; anything else is a usage error naming the option.
inline std::vector<int> parse_positive_list(const std::string& s, const char* option) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v < 1) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      fail(ErrorKind::Usage, "{}: '{}' is not a positive integer", option, item);
    }
  }
  if (out.empty()) fail(ErrorKind::Usage, "{}: no value given", option);
  return out;
}

}  // namespace kiln::cli
