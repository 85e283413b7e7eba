#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer {

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// For a lead byte: the sequence length (0 = never valid) and the range allowed for the
// second byte (Unicode Table 3-7, "Well-Formed UTF-8 Byte Sequences").
struct Lead {
  uint8_t len, lo, hi;
};

constexpr Lead lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Checks the sequence at s[i]. Returns its length when complete and valid; otherwise 0 and
// sets `good` to the number of leading bytes that form a valid prefix (>= 1 when the lead
// byte is a valid lead) and `truncated` when the input ended inside that prefix.
size_t check(std::string_view s, size_t i, size_t& good, bool& truncated) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const Lead l = lead_info(p[i]);
  truncated = false;
  good = 0;
  if (l.len == 0) return 0;
  if (l.len == 1) return 1;
  good = 1;
  for (size_t k = 1; k < l.len; ++k) {
    if (i + k >= s.size()) {
      truncated = true;
      return 0;
    }
    const uint8_t c = p[i + k];
    const bool ok = k == 1 ? (c >= l.lo && c <= l.hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return 0;
    good = k + 1;
  }
  return l.len;
}

}  // namespace

size_t utf8_sequence_length(std::string_view s, size_t i) {
  size_t good;
  bool truncated;
  return check(s, i, good, truncated);
}

char32_t utf8_decode(std::string_view s, size_t i, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
  switch (n) {
    case 1:
      return p[0];
    case 2:
      return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    case 3:
      return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    default:
      return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) | (char32_t(p[2] & 0x3F) << 6) |
             (p[3] & 0x3F);
  }
}

size_t utf8_first_invalid(std::string_view s) {
  size_t i = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  while (i < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return s.size();
}

size_t utf8_append_lossy(std::string& out, std::string_view in, bool final) {
  size_t i = 0;
  size_t run = 0;  // start of the pending run of valid bytes
  while (i < in.size()) {
    if (static_cast<uint8_t>(in[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t good;
    bool truncated;
    const size_t n = check(in, i, good, truncated);
    if (n) {
      i += n;
      continue;
    }
    out.append(in.data() + run, i - run);
    if (truncated && !final) return i;  // keep the incomplete tail for later
    out.append("\xEF\xBF\xBD");
    i += good ? good : 1;
    run = i;
  }
  out.append(in.data() + run, i - run);
  return i;
}

namespace {

std::array<char32_t, 256> make_byte_level_chars() {
  std::array<char32_t, 256> m{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    m[b] = printable ? char32_t(b) : next++;
  }
  return m;
}

}  // namespace

const std::array<char32_t, 256>& byte_level_chars() {
  static const std::array<char32_t, 256> m = make_byte_level_chars();
  return m;
}

int byte_level_byte(char32_t cp) {
  static const auto inv = [] {
    std::array<int16_t, 324> a{};
    a.fill(-1);
    const auto& m = byte_level_chars();
    for (int b = 0; b < 256; ++b) a[m[b]] = static_cast<int16_t>(b);
    return a;
  }();
  return cp < inv.size() ? inv[cp] : -1;
}

}  // namespace kiln::tokenizer
