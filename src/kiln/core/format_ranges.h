// Sorted indices as ranges, for messages and reports: {0, 1, 2, 5, 7, 8, 9} -> "0-2, 5, 7-9".
#pragma once

#include <string>
#include <vector>

namespace kiln {

std::string format_ranges(const std::vector<int>& sorted);

}  // namespace kiln
