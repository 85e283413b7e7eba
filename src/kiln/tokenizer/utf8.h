// UTF-8 helpers for the tokenizer: validation, lossy conversion with the same
// replacement rule as Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid
// subpart, as Unicode recommends), and GPT-2's byte <-> character map used by ByteLevel.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::tokenizer {

// Appends the UTF-8 encoding of code point cp (must be a scalar value).
void append_utf8(std::string& out, char32_t cp);

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are not
// one (invalid lead byte, bad continuation, overlong, surrogate, > U+10FFFF, truncated).
size_t utf8_sequence_length(std::string_view s, size_t i);

// Decodes the (valid) sequence at s[i] of length n.
char32_t utf8_decode(std::string_view s, size_t i, size_t n);

// Byte offset of the first invalid byte, or s.size() when s is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);

// Appends `in` to `out`, replacing each maximal invalid subpart by U+FFFD. When `final`
// is false and `in` ends with the incomplete start of a valid sequence, those bytes are
// not consumed. Returns the number of bytes consumed.
size_t utf8_append_lossy(std::string& out, std::string_view in, bool final);

// GPT-2's reversible byte -> printable character map (ByteLevel pre-tokenizer/decoder).
const std::array<char32_t, 256>& byte_level_chars();
// Inverse map: code point -> byte, or -1 for a code point outside the 256 used.
int byte_level_byte(char32_t cp);

}  // namespace kiln::tokenizer
