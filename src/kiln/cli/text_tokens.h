// `--text FILE` of the commands that read a text (perplexity, bench): the file tokenized
// with the model directory's tokenizer.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace kiln::cli {

// Throws kiln::Error: Usage when DIR/tokenizer.json does not exist, IO when the text
// cannot be read, Usage when it is not valid UTF-8.
std::vector<int32_t> tokenize_text_file(const std::filesystem::path& model_dir, const std::filesystem::path& text);

}  // namespace kiln::cli
