// io/ only (not a public header): a fast path for SAX-parsing the JSON that kiln reads in bulk
// (safetensors headers, sharded indexes), and a sort for nearly-sorted name lists.
//
// nlohmann's lexer handles ~100 MB/s, which is most of the time `inspect` spends on a
// 46-shard checkpoint. fast_json_sax parses only a strict subset of JSON: ASCII strings
// without escapes, non-negative integers that fit in uint64, true/false/null, objects
// and arrays nested at most kMaxDepth deep. Within that subset it delivers exactly the
// events nlohmann::json::sax_parse would. It returns false as soon as it meets anything
// else (an escape, a non-ASCII byte, a float, a minus sign, a syntax error, ...): the
// caller then discards what the handler built and re-runs nlohmann's parser from the
// start, which is authoritative for acceptance and for error messages. Callers also
// re-run nlohmann when the handler throws, so every error is reported as nlohmann's
// event order produces it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::detail {

inline constexpr int kFastJsonMaxDepth = 64;

template <typename Sax>
bool fast_json_sax(std::string_view text, Sax& sax) {
  const char* p = text.data();
  const char* const end = p + text.size();
  // Container stack: 'o' object, 'a' array.
  char stack[kFastJsonMaxDepth];
  int depth = 0;
  std::string buf;

  auto skip_ws = [&] {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  };
  // Scans a string at p (which is at the opening quote) into buf.
  auto scan_string = [&]() -> bool {
    ++p;
    const auto* q = static_cast<const char*>(std::memchr(p, '"', static_cast<size_t>(end - p)));
    if (!q) return false;
    // Only plain printable ASCII up to the quote: no escape (the quote found might be an
    // escaped one), no control character, nothing that needs UTF-8 validation.
    unsigned bad = 0;
    for (const char* r = p; r < q; ++r) {
      const auto c = static_cast<unsigned char>(*r);
      bad |= static_cast<unsigned>(c < 0x20) | static_cast<unsigned>(c >= 0x80) | static_cast<unsigned>(c == '\\');
    }
    if (bad) return false;
    buf.assign(p, static_cast<size_t>(q - p));
    p = q + 1;
    return true;
  };
  // Parses one scalar value at p, delivering its event; containers are handled by the loop.
  auto scalar = [&]() -> bool {
    const char c = *p;
    if (c == '"') {
      if (!scan_string()) return false;
      return sax.string(buf);
    }
    if (c >= '0' && c <= '9') {
      uint64_t v = 0;
      if (c == '0') {
        ++p;
      } else {
        while (p < end && *p >= '0' && *p <= '9') {
          const auto d = static_cast<uint64_t>(*p - '0');
          if (v > (UINT64_MAX - d) / 10) return false;  // nlohmann would make it a float
          v = v * 10 + d;
          ++p;
        }
      }
      if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9'))) return false;
      return sax.number_unsigned(v);
    }
    auto lit = [&](std::string_view w) {
      if (static_cast<size_t>(end - p) < w.size() || std::string_view(p, w.size()) != w) return false;
      p += w.size();
      return true;
    };
    if (c == 't') return lit("true") && sax.boolean(true);
    if (c == 'f') return lit("false") && sax.boolean(false);
    if (c == 'n') return lit("null") && sax.null();
    return false;
  };

  // State: expecting a value (after '[', ':', ',' in an array, or at the top).
  skip_ws();
  if (p == end) return false;
  for (;;) {
    // --- parse a value at p -------------------------------------------------------
    bool closed_container = false;
    if (*p == '{') {
      if (depth == kFastJsonMaxDepth) return false;
      ++p;
      if (!sax.start_object(static_cast<std::size_t>(-1))) return false;
      skip_ws();
      if (p < end && *p == '}') {
        ++p;
        if (!sax.end_object()) return false;
        closed_container = true;
      } else {
        stack[depth++] = 'o';
        // Expect a key.
        if (p == end || *p != '"' || !scan_string() || !sax.key(buf)) return false;
        skip_ws();
        if (p == end || *p != ':') return false;
        ++p;
        skip_ws();
        if (p == end) return false;
        continue;  // parse the member's value
      }
    } else if (*p == '[') {
      if (depth == kFastJsonMaxDepth) return false;
      ++p;
      if (!sax.start_array(static_cast<std::size_t>(-1))) return false;
      skip_ws();
      if (p < end && *p == ']') {
        ++p;
        if (!sax.end_array()) return false;
        closed_container = true;
      } else {
        stack[depth++] = 'a';
        if (p == end) return false;
        continue;  // parse the first element
      }
    } else {
      if (!scalar()) return false;
    }
    (void)closed_container;

    // --- after a value: ',' or a closing bracket, possibly several -----------------
    for (;;) {
      skip_ws();
      if (depth == 0) return p == end;  // strict: nothing but whitespace after the value
      if (p == end) return false;
      const char top = stack[depth - 1];
      if (*p == ',') {
        ++p;
        skip_ws();
        if (top == 'o') {
          if (p == end || *p != '"' || !scan_string() || !sax.key(buf)) return false;
          skip_ws();
          if (p == end || *p != ':') return false;
          ++p;
          skip_ws();
        }
        if (p == end) return false;
        break;  // parse the next value
      }
      if (top == 'o' && *p == '}') {
        ++p;
        --depth;
        if (!sax.end_object()) return false;
        continue;
      }
      if (top == 'a' && *p == ']') {
        ++p;
        --depth;
        if (!sax.end_array()) return false;
        continue;
      }
      return false;
    }
  }
}

// Sorts v by `less`, fast when v is a concatenation of few ascending runs (tensor names
// in a shard written in sorted order per dtype group; per-shard sorted name lists
// concatenated): the runs are merged pairwise, n log(runs) comparisons. Falls back to
// std::sort when there are many runs. Not stable.
template <typename T, typename Less>
void sort_runs(std::vector<T>& v, Less less) {
  const size_t n = v.size();
  std::vector<size_t> bounds{0};
  for (size_t i = 1; i < n; ++i) {
    if (less(v[i], v[i - 1])) {
      bounds.push_back(i);
      if (bounds.size() > 64 && bounds.size() > n / 16) {
        std::sort(v.begin(), v.end(), less);
        return;
      }
    }
  }
  bounds.push_back(n);
  std::vector<size_t> next;
  while (bounds.size() > 2) {  // more than one run
    next.assign(1, 0);
    const size_t runs = bounds.size() - 1;
    for (size_t j = 0; j < runs; j += 2) {
      if (j + 1 < runs) {
        std::inplace_merge(v.begin() + static_cast<std::ptrdiff_t>(bounds[j]),
                           v.begin() + static_cast<std::ptrdiff_t>(bounds[j + 1]),
                           v.begin() + static_cast<std::ptrdiff_t>(bounds[j + 2]), less);
        next.push_back(bounds[j + 2]);
      } else {
        next.push_back(bounds[j + 1]);  // odd run out: carried to the next round
      }
    }
    bounds.swap(next);
  }
}

}  // namespace kiln::detail
