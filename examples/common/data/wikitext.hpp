// WikiText raw text for causal language modelling: lines -> one token stream -> blocks.
//
// How blocks are built and perplexity is computed
// ------------------------------------------------
// 1. Lines. The file is read as lines, each keeping its final "\n" (wiki.valid.raw has 3,760
//    lines, wiki.test.raw 4,358). Lines of white space only (WikiText's blank lines are " \n")
//    are dropped, as HF's `wikitext` loader turns them into "" which tokenizes to nothing.
//    Heading lines (" = Title = \n", " = = Section = = \n") are kept as ordinary text.
// 2. Token stream. Each kept line is tokenized on its own, its "\n" included, and the ids are
//    concatenated in file order. Nothing is added: no BOS/EOS, no separator. This is what HF's
//    run_clm.py does (tokenize each row, then concatenate), and it keeps tokenizer calls
//    small. With GPT-2's byte-level BPE it gives the same ids as tokenizing the kept lines
//    joined into one text: every kept WikiText line starts with one space and ends with
//    " \n", and the GPT-2 pre-tokenizer splits there anyway.
// 3. Blocks. The stream is cut into consecutive, non-overlapping blocks of block_size tokens.
//    The last block keeps the remaining tokens (HF's group_texts drops them); when batched it
//    is padded with attention mask 0 and label -100.
// 4. Predictions. labels = input_ids (the model shifts them): the logits at position t
//    predict the token at t + 1 of the same block. So every token is predicted exactly once,
//    except the first token of each block, which is context only; padding is never a target.
//    Predicted tokens = stream length - number of blocks. No context crosses a block boundary
//    (no sliding window), which gives a somewhat higher perplexity than a strided evaluation.
// 5. Perplexity = exp(sum of the NLL, in nats, of every predicted token of the split / number
//    of predicted tokens): one token-weighted mean over the whole split, not a mean of
//    per-batch or per-block means (models::causal_lm_nll_sum() and TokenNll::perplexity()).
#pragma once

#include <lora/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "errors.hpp"

namespace data {

/// Text -> token ids. Any tokenizer fits; this header does not depend on one.
using Tokenize = std::function<std::vector<std::int64_t>(const std::string&)>;

/// Every line of a text file, each with its final "\n" (a last line without one is kept as is).
inline std::vector<std::string> read_lines(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw examples::FileError(
        examples::str("cannot open text file ", path.string(), "; check that the path exists"));
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!in.eof()) line += '\n';
    lines.push_back(std::move(line));
    line.clear();
  }
  return lines;
}

/// True if `line` holds only spaces, tabs, CR or LF.
inline bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

/// The lines that are not blank (rule 1).
inline std::vector<std::string> text_lines(const std::vector<std::string>& lines) {
  std::vector<std::string> kept;
  for (const auto& l : lines)
    if (!is_blank(l)) kept.push_back(l);
  return kept;
}

/// The ids of each line, concatenated (rule 2).
inline std::vector<std::int64_t> token_stream(const std::vector<std::string>& lines, const Tokenize& tokenize) {
  if (!tokenize) throw examples::DataError("token_stream: no tokenizer given");
  std::vector<std::int64_t> stream;
  for (const auto& l : lines) {
    const auto ids = tokenize(l);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  return stream;
}

/// Consecutive blocks of block_size ids; the last holds the rest (rule 3).
inline std::vector<std::vector<std::int64_t>> make_blocks(const std::vector<std::int64_t>& stream,
                                                          std::int64_t block_size) {
  if (block_size < 2)
    throw examples::DataError(examples::str("block_size is ", block_size,
                                                "; it must be at least 2 (a block's first token is never predicted)"));
  std::vector<std::vector<std::int64_t>> blocks;
  const auto bs = static_cast<std::size_t>(block_size);
  for (std::size_t start = 0; start < stream.size(); start += bs) {
    const auto end = std::min(start + bs, stream.size());
    blocks.emplace_back(stream.begin() + static_cast<std::ptrdiff_t>(start),
                        stream.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return blocks;
}

/// Tokens that are prediction targets: every token but the first of each block (rule 4).
inline std::int64_t predicted_tokens(const std::vector<std::vector<std::int64_t>>& blocks) {
  std::int64_t n = 0;
  for (const auto& b : blocks) n += static_cast<std::int64_t>(b.size()) - 1;
  return n;
}

/// A split ready for batching with collate_lm() (batching.hpp, max_len = block_size).
struct LmSplit {
  std::vector<std::vector<std::int64_t>> blocks;
  std::int64_t lines = 0;      ///< kept (non-blank) lines
  std::int64_t tokens = 0;     ///< length of the token stream
  std::int64_t predicted = 0;  ///< prediction targets, the denominator of perplexity
};

/// Reads a WikiText raw file and builds its blocks (rules 1-4).
inline LmSplit load_wikitext(const std::filesystem::path& path, const Tokenize& tokenize, std::int64_t block_size) {
  const auto lines = text_lines(read_lines(path));
  if (lines.empty())
    throw examples::FileError(examples::str(path.string(), " holds no text lines; is it a WikiText .raw file?"));
  const auto stream = token_stream(lines, tokenize);
  LmSplit s;
  s.blocks = make_blocks(stream, block_size);
  s.lines = static_cast<std::int64_t>(lines.size());
  s.tokens = static_cast<std::int64_t>(stream.size());
  s.predicted = predicted_tokens(s.blocks);
  return s;
}

}  // namespace data
