// PCRE2 regexes that behave like the Oniguruma regexes HF `tokenizers` runs.
//
// tokenizer.json patterns are written for Oniguruma (Ruby syntax, Unicode 16.0 tables).
// kiln compiles them with PCRE2 (UTF + UCP) after rewriting the constructs whose meaning
// differs between the two engines:
//   \s \S      Oniguruma: White_Space (includes U+0085); PCRE2: \p{Z} + \t..\r only
//   \w \W      Oniguruma: L, M, Nd, Pc; PCRE2: L, N, _
//   \h \H      Oniguruma: hex digit; PCRE2: horizontal space
//   \uHHHH     Oniguruma only
//   \p{..}     both, but PCRE2 10.42 has Unicode 14.0 tables: code points assigned since
//              then (unicode_delta.inc) are added to each class
//   ^ $        line anchors in Ruby syntax (PCRE2_MULTILINE)
// Iteration follows the Rust `onig` crate: an empty match right where the previous match
// ended is skipped and the search moves on by one character.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::tokenizer {

class Regex {
 public:
  // Throws kiln::Error (Invalid) naming `where` when the pattern does not compile.
  Regex(std::string_view onig_pattern, std::string_view where);
  // A literal string (tokenizer.json {"String": ...} patterns).
  static Regex literal(std::string_view text, std::string_view where);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Calls f(start, end) for each match in s (byte offsets), left to right, onig-style.
  template <typename F>
  void for_each_match(std::string_view s, F&& f) const {
    size_t pos = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= s.size()) {
      size_t b, e;
      if (!search(s, pos, b, e)) break;
      if (b == e && have_last && e == last_end) {  // empty match adjacent to the previous one
        pos += pos < s.size() ? next_char(s, pos) : 1;
        continue;
      }
      pos = e;
      have_last = true;
      last_end = e;
      f(b, e);
    }
  }

  // First match at or after `pos`; false when none.
  bool search(std::string_view s, size_t pos, size_t& begin, size_t& end) const;
  const std::string& pcre_pattern() const { return translated_; }

  // The rewrite applied to an Oniguruma pattern before PCRE2 compiles it (exposed for tests).
  static std::string translate(std::string_view onig_pattern);

 private:
  Regex() = default;
  static size_t next_char(std::string_view s, size_t pos);
  void compile(std::string_view where);
  struct Code;
  std::unique_ptr<Code> code_;
  std::string translated_;
};

}  // namespace kiln::tokenizer
