#include "kiln/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <cstdio>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tokenizer {

namespace {

struct DeltaRange {
  char32_t first, last;
  const char* gc;
};

constexpr DeltaRange kDelta[] = {
#include "kiln/tokenizer/unicode_delta.inc"
};

// Does General_Category `gc` (two letters) belong to the property `name`?
// Returns -1 when `name` is not a General_Category name (a script, say).
int gc_in_property(std::string_view name, const char* gc) {
  static constexpr std::pair<std::string_view, char> kLong[] = {
      {"Letter", 'L'}, {"Mark", 'M'}, {"Number", 'N'}, {"Punctuation", 'P'},
      {"Symbol", 'S'}, {"Separator", 'Z'}, {"Other", 'C'}};
  for (const auto& [n, c] : kLong)
    if (name == n) return gc[0] == c;
  if (name.size() == 1 && std::strchr("LMNPSZC", name[0])) return gc[0] == name[0];
  if (name == "LC" || name == "L&") return gc[0] == 'L' && (gc[1] == 'u' || gc[1] == 'l' || gc[1] == 't');
  if (name.size() == 2 && std::strchr("LMNPSZC", name[0]) && name[1] >= 'a' && name[1] <= 'z')
    return name[0] == gc[0] && name[1] == gc[1];
  return -1;
}

void append_hex_cp(std::string& out, char32_t cp) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\x{%X}", static_cast<unsigned>(cp));
  out += buf;
}

// The code points newer than PCRE2's tables that belong to property `name`, as class items.
std::string delta_items(std::string_view name) {
  std::string s;
  for (const auto& d : kDelta) {
    if (gc_in_property(name, d.gc) != 1) continue;
    append_hex_cp(s, d.first);
    if (d.last != d.first) {
      s += '-';
      append_hex_cp(s, d.last);
    }
  }
  return s;
}

// Class items equivalent to Oniguruma's \s (Unicode White_Space) and \w.
std::string space_items() { return "\\t-\\r\\x{85}\\p{Z}" + delta_items("Z"); }
std::string word_items() {
  return "\\p{L}\\p{M}\\p{Nd}\\p{Pc}" + delta_items("L") + delta_items("M") + delta_items("Nd") + delta_items("Pc");
}

[[noreturn]] void unsupported(std::string_view pattern, std::string_view what) {
  fail_invalid("regex pattern '{}': {} is not supported", pattern, what);
}

}  // namespace

std::string Regex::translate(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  size_t i = 0;
  const auto item = [&](const std::string& items, bool negate) {
    if (in_class) {
      out += items;
    } else {
      out += negate ? "[^" : "[";
      out += items;
      out += ']';
    }
  };
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 'p' || d == 'P') {
        bool negate = d == 'P';
        std::string name;
        size_t j = i + 2;
        if (j < p.size() && p[j] == '{') {
          const size_t close = p.find('}', j);
          if (close == std::string_view::npos) unsupported(p, "an unterminated \\p{");
          name = std::string(p.substr(j + 1, close - j - 1));
          j = close + 1;
        } else if (j < p.size()) {
          name = std::string(1, p[j]);
          j += 1;
        }
        if (!name.empty() && name[0] == '^') {
          negate = !negate;
          name.erase(0, 1);
        }
        const std::string prop = std::string(negate ? "\\P{" : "\\p{") + name + "}";
        const std::string extra = gc_in_property(name, "Lu") >= 0 ? delta_items(name) : std::string();
        if (extra.empty()) {
          out += prop;
        } else if (in_class) {
          out += negate ? prop : "\\p{" + name + "}" + extra;  // no way to subtract inside a class
        } else {
          out += negate ? "[^" : "[";
          out += "\\p{" + name + "}" + extra;
          out += ']';
        }
        i = j;
        continue;
      }
      switch (d) {
        case 's':
          item(space_items(), false);
          break;
        case 'S':
          if (in_class) {
            out += "\\S";  // PCRE2's; differs from Oniguruma's only at U+0085
          } else {
            item(space_items(), true);
          }
          break;
        case 'w':
          item(word_items(), false);
          break;
        case 'W':
          if (in_class) unsupported(p, "\\W inside a character class");
          item(word_items(), true);
          break;
        case 'd':
          item("\\p{Nd}" + delta_items("Nd"), false);
          break;
        case 'D':
          if (in_class) unsupported(p, "\\D inside a character class");
          item("\\p{Nd}" + delta_items("Nd"), true);
          break;
        case 'h':
          item("0-9a-fA-F", false);
          break;
        case 'H':
          if (in_class) unsupported(p, "\\H inside a character class");
          item("0-9a-fA-F", true);
          break;
        case 'u': {
          size_t n = 0;
          while (n < 4 && i + 2 + n < p.size() && std::isxdigit(static_cast<unsigned char>(p[i + 2 + n]))) ++n;
          if (n != 4) unsupported(p, "\\u without four hex digits");
          out += "\\x{";
          out += p.substr(i + 2, 4);
          out += '}';
          i += 6;
          continue;
        }
        default:
          out += c;
          out += d;
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (in_class) {
      if (c == ']') {
        in_class = false;
      } else if (c == '[') {
        if (i + 1 < p.size() && p[i + 1] == ':') {
          const size_t close = p.find(":]", i + 2);
          if (close == std::string_view::npos) unsupported(p, "an unterminated POSIX class");
          out += p.substr(i, close + 2 - i);
          i = close + 2;
          continue;
        }
        unsupported(p, "a nested character class");
      } else if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        unsupported(p, "character class intersection (&&)");
      }
    }
    out += c;
    ++i;
  }
  return out;
}

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

namespace {

// Per-thread match state, shared by every regex (one ovector pair is all kiln reads).
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

Regex::Regex(std::string_view onig_pattern, std::string_view where) : translated_(translate(onig_pattern)) {
  compile(where);
}

Regex Regex::literal(std::string_view text, std::string_view where) {
  Regex r;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) r.translated_ += '\\';
    r.translated_ += c;
  }
  r.compile(where);
  return r;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

void Regex::compile(std::string_view where) {
  code_ = std::make_unique<Code>();
  int err = 0;
  PCRE2_SIZE off = 0;
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated_.data()), translated_.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &off, nullptr);
  if (!code_->code)
    fail_invalid("{}: regex does not compile ({} at offset {} of PCRE2 pattern '{}')", where, pcre2_message(err), off,
                 translated_);
  code_->jit = pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE) == 0;
}

size_t Regex::next_char(std::string_view s, size_t pos) {
  const size_t n = utf8_sequence_length(s, pos);
  return n ? n : 1;
}

bool Regex::search(std::string_view s, size_t pos, size_t& begin, size_t& end) const {
  auto& st = match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data() ? s.data() : "");
  // The tokenizer validates its input once, so the per-call UTF check is skipped.
  const int rc = code_->jit ? pcre2_jit_match(code_->code, subject, s.size(), pos, 0, st.data, st.context)
                            : pcre2_match(code_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail_invalid("regex '{}' failed on a {}-byte input: {}", translated_, s.size(), pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
  begin = ov[0];
  end = ov[1];
  return true;
}

}  // namespace kiln::tokenizer
