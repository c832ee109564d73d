// An RFC 4180 CSV reader: comma-separated fields, optionally double-quoted; inside quotes a
// doubled quote `""` is one `"`, and commas and line breaks are data. Records end with LF or
// CRLF. Every row must have the same number of fields. Errors throw examples::FileError naming
// the source and the line.
//
// Choices beyond the RFC, stated:
// - a completely empty line (no characters before its line break) is skipped, so a final
//   line break or a blank line between records adds no row;
// - a `"` inside an unquoted field is kept as data (as Python's csv module does);
// - after a closing quote only a comma or a line break may follow, anything else is an error;
// - a UTF-8 byte-order mark at the start is ignored; bytes are otherwise kept as they are
//   (quoted line breaks stay as written, CRLF included).
#pragma once

#include <lora/error.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "errors.hpp"

namespace data {

/// One record: its fields and the 1-based line of the source on which it starts.
struct CsvRow {
  std::vector<std::string> fields;
  std::size_t line = 0;
};

namespace detail {

/// A cursor over the text that counts lines as it moves.
class CsvScanner {
 public:
  CsvScanner(std::string_view text, std::string source) : text_(text), source_(std::move(source)) {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
  }

  bool done() const { return pos_ >= text_.size(); }
  std::size_t line() const { return line_; }

  /// The record starting at the cursor (the cursor must not be at the end).
  CsvRow row() {
    CsvRow r;
    r.line = line_;
    while (true) {
      r.fields.push_back(field());
      if (done() || at_line_break()) {
        skip_line_break();
        return r;
      }
      ++pos_;  // the comma
    }
  }

  /// Skips empty lines; true if a record follows.
  bool skip_empty_lines() {
    while (!done() && at_line_break()) skip_line_break();
    return !done();
  }

  [[noreturn]] void fail(std::size_t line, const std::string& what) const {
    throw examples::FileError(examples::str(source_, ":", line, ": ", what));
  }

 private:
  bool at_line_break() const {
    return text_[pos_] == '\n' || (text_[pos_] == '\r' && pos_ + 1 < text_.size() && text_[pos_ + 1] == '\n');
  }
  void skip_line_break() {
    if (done()) return;
    pos_ += text_[pos_] == '\r' ? 2u : 1u;
    ++line_;
  }

  std::string field() { return !done() && text_[pos_] == '"' ? quoted_field() : plain_field(); }

  std::string plain_field() {
    const std::size_t start = pos_;
    while (!done() && text_[pos_] != ',' && !at_line_break()) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  std::string quoted_field() {
    const std::size_t start_line = line_;
    std::string out;
    ++pos_;  // the opening quote
    while (true) {
      if (done())
        fail(start_line, "unterminated quoted field (no closing '\"' before the end of the file); "
                         "check the quoting of this record");
      const char c = text_[pos_++];
      if (c == '\n') ++line_;
      if (c != '"') {
        out += c;
      } else if (!done() && text_[pos_] == '"') {
        out += '"';
        ++pos_;
      } else {
        break;
      }
    }
    if (!done() && text_[pos_] != ',' && !at_line_break())
      fail(line_, examples::str("unexpected character '", text_[pos_],
                                    "' after a closing quote; a quote inside a quoted field must be doubled (\"\")"));
    return out;
  }

  std::string_view text_;
  std::string source_;
  std::size_t pos_ = 0;
  std::size_t line_ = 1;
};

}  // namespace detail

/// Parses CSV text. `source` names it in error messages (a file name). `expected_fields`:
/// the number of fields every row must have; 0 means "as many as the first row".
inline std::vector<CsvRow> parse_csv(std::string_view text, const std::string& source,
                                     std::size_t expected_fields = 0) {
  detail::CsvScanner scan(text, source);
  std::vector<CsvRow> rows;
  while (scan.skip_empty_lines()) {
    CsvRow r = scan.row();
    if (expected_fields == 0) expected_fields = r.fields.size();
    if (r.fields.size() != expected_fields)
      scan.fail(r.line, examples::str("row has ", r.fields.size(), " fields, expected ", expected_fields,
                                          "; check for an unquoted comma or a missing field"));
    rows.push_back(std::move(r));
  }
  return rows;
}

/// Reads and parses a CSV file (see parse_csv).
inline std::vector<CsvRow> read_csv(const std::filesystem::path& path, std::size_t expected_fields = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw examples::FileError(
        examples::str("cannot open CSV file ", path.string(), "; check that the path exists"));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_csv(text.str(), path.string(), expected_fields);
}

}  // namespace data
