#include "kiln/cli/text_tokens.h"

#include <fstream>
#include <sstream>
#include <string>

#include "kiln/core/error.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

std::vector<int32_t> tokenize_text_file(const std::filesystem::path& model_dir, const std::filesystem::path& text) {
  const auto tok_path = model_dir / "tokenizer.json";
  if (!std::filesystem::exists(tok_path))
    fail(ErrorKind::Usage, "--text needs the model's tokenizer: {} does not exist (pass --tokens instead)",
         tok_path.string());
  std::ifstream f(text, std::ios::binary);
  if (!f) fail_io("--text {}: cannot open the file", text.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail_io("--text {}: read error", text.string());
  return tokenizer::Tokenizer::from_file(tok_path).encode(std::move(ss).str());
}

}  // namespace kiln::cli
