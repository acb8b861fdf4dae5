#pragma once
// CSV as imports read it and exports write it: RFC 4180 (fields separated by a delimiter,
// records by CRLF or LF, quoted fields with "" for a quote), plus the convention that tells NULL
// from the empty string (an unquoted empty field is NULL, "" is empty text) and text from
// numbers (docs/import-export.md, "CSV"). Pure: the reader pulls bytes from a ByteSource.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/value.hpp"
#include "engine/import_export/read_limits.hpp"

namespace lattice::engine {

struct CsvField {
  std::string text;
  bool quoted = false;
};

// One record. `fields` is reused from record to record: only the first `count` are this
// record's.
struct CsvRecord {
  std::vector<CsvField> fields;
  std::size_t count = 0;
  std::uint64_t line = 0;  // the line it starts on, from 1
  // Set when the record is refused on its own (text after a closing quote, a field or record
  // over its limit, too many fields): why, naming the field. Its fields are then incomplete.
  std::string error;
};

// Reads records one at a time. Blank lines are skipped; a UTF-8 byte order mark at the start is
// skipped.
class CsvReader {
 public:
  CsvReader(ByteSource source, char delimiter, const ReadLimits& limits);

  // Reads the next record into `record`; false at the end of the file. Throws Error(kCorrupt)
  // naming the line for what stops the whole file from being read: a NUL byte (not a text file)
  // and a quoted field that is never closed (it would swallow the rest of the file); Error(kIo)
  // from the source.
  bool next(CsvRecord& record);

  // Bytes consumed so far.
  std::uint64_t bytes_read() const { return consumed_ + pos_; }

 private:
  // The next byte without consuming it, or -1 at the end.
  int peek() {
    if (pos_ == end_ && !refill()) return -1;
    return static_cast<unsigned char>(buffer_[pos_]);
  }
  bool refill();
  void append(CsvRecord& record, CsvField& field, char c);
  [[noreturn]] void nul_byte() const;
  void skip_rest_of_record();

  ByteSource source_;
  char delimiter_;
  ReadLimits limits_;
  std::vector<char> buffer_;
  std::size_t pos_ = 0, end_ = 0;
  std::uint64_t consumed_ = 0;  // bytes before buffer_
  std::uint64_t line_ = 1;
  std::size_t record_bytes_ = 0;
  bool started_ = false;
};

// A value as export writes it in CSV: NULL as an empty field, text always quoted (so that an
// import tells '5' from 5, and '' from NULL), integers in decimal, reals in the shortest form
// that reads back exactly (always with a '.' or an exponent; the infinities as Infinity and
// -Infinity), blobs as \x and hex digits.
void append_csv_value(std::string& out, const crdt::Value& value, char delimiter);

// `text` as a CSV field: quoted when it holds the delimiter, a quote, a line break, is empty or
// has spaces at either end.
void append_csv_text(std::string& out, std::string_view text, char delimiter, bool always_quote);

}  // namespace lattice::engine
