// kiln::Error — the one exception type kiln throws for bad input, bad usage and I/O
// failures. Every message names the file, the tensor and what was expected; the CLI
// maps the kind to an exit code (usage/io -> 1, invalid artifact -> 2).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kiln {

enum class ErrorKind {
  Usage,    // bad command line or API misuse (exit 1)
  IO,       // a file cannot be opened, read or written (exit 1)
  Invalid,  // the artifact is not loadable: malformed, inconsistent, unsupported (exit 2)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }
  int exit_code() const noexcept { return kind_ == ErrorKind::Invalid ? 2 : 1; }

 private:
  ErrorKind kind_;
};

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(kind, fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_invalid(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::Invalid, fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_io(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::IO, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace kiln
