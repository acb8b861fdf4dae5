#pragma once
// Records of a JSON file, read with Boost.JSON: NDJSON (one JSON object per line) or a JSON
// array of objects, streamed element by element so that memory is bounded by the largest
// record, not the file (docs/import-export.md, "JSON"). Pure: bytes come from a ByteSource.

#include <boost/json/value.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/import_export/read_limits.hpp"

namespace lattice::engine {

struct JsonRecord {
  boost::json::value value;  // an object (null when `error` is set)
  std::uint64_t number = 0;  // 1 for the file's first record
  std::uint64_t line = 0;    // the line it starts on, from 1
  // Set when the record is refused on its own: not an object, over the record limit, and for
  // NDJSON a line that is not JSON or nests too deep. Why, in a short sentence.
  std::string error;
  // NDJSON: the line (cut at 4 KiB), for the errors file. Empty for an array's element.
  std::string text;
};

class JsonRecordReader {
 public:
  enum class Layout { kLines, kArray };

  // With `keep_values` false the records are checked and counted but their values not built:
  // the pass that checks a whole file before anything is written.
  JsonRecordReader(ByteSource source, Layout layout, const ReadLimits& limits,
                   bool keep_values = true);
  ~JsonRecordReader();
  JsonRecordReader(const JsonRecordReader&) = delete;
  JsonRecordReader& operator=(const JsonRecordReader&) = delete;

  // Reads the next record; false at the end. Throws, naming the line, Error(kCorrupt) for what
  // stops the whole file from being read: a NUL byte (not a text file) and, for an array file,
  // anything that is not a JSON array (a syntax error, invalid UTF-8, text after it);
  // Error(kTooLarge) for an array file nested deeper than the limit; Error(kIo) from the source.
  bool next(JsonRecord& record);

  std::uint64_t bytes_read() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace lattice::engine
