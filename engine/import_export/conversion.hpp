#pragma once
// Values as a file gives them (CSV text, JSON scalars) turned into the values a column stores:
// the types and normalizations of an import's mapping (docs/import-export.md, "The mapping
// file"). Pure functions: no I/O, no SQLite.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/value.hpp"
#include "storage/json_reader.hpp"

namespace lattice::engine {

// A value as the file gives it, before conversion. Views into the record it came from.
struct SourceValue {
  enum class Kind {
    kMissing,     // no such field or member
    kNull,        // JSON null
    kText,        // a CSV field or a JSON string
    kInteger,     // a JSON integer that fits in 64 bits
    kReal,        // any other JSON number
    kBoolean,     // JSON true or false
    kStructured,  // a JSON object or array
  };
  Kind kind = Kind::kMissing;
  // kText: the text. kInteger, kReal: the number as written, when known. kStructured: its JSON.
  std::string_view text;
  bool quoted = false;     // kText: a quoted CSV field, or a JSON string (never NULL when empty)
  bool from_json = false;  // the value comes from a JSON record, not a CSV field
  std::int64_t integer = 0;
  double real = 0;
  bool boolean = false;
  const boost::json::value* json = nullptr;  // kStructured
};

// What a column's values are converted to (docs/import-export.md lists the accepted forms).
enum class ValueType {
  kText,      // text, as it is
  kInteger,   // a 64-bit integer
  kReal,      // a double
  kNumber,    // an integer when the value is one, else a real
  kBoolean,   // 1 or 0, from true/false, yes/no, y/n, t/f, on/off, 1/0
  kDate,      // text 'YYYY-MM-DD'
  kDatetime,  // text 'YYYY-MM-DD HH:MM:SS[.fff]', in UTC when the value names its offset
  kBlob,      // bytes, from hex ('\x' or '0x' prefix allowed) or base64
  kJson,      // text holding JSON: an object or array as it is, other values as JSON
  kAny,       // the file's own type: JSON types as they are; for CSV, a quoted field is text,
              // an unquoted one an integer or real when it reads as one, `\x...` a blob, else
              // text
};

// "text", "integer", ..., "any"; and back (nullopt for an unknown name).
const char* value_type_name(ValueType type);
std::optional<ValueType> value_type_from_name(std::string_view name);

// How one column's values are read.
struct ValueFormat {
  ValueType type = ValueType::kAny;
  bool trim = false;  // strip spaces and tabs around text (other types always ignore them)
  enum class Case { kKeep, kLower, kUpper };
  Case letter_case = Case::kKeep;  // of ASCII letters in text
  char decimal = '.';              // the decimal separator of numbers
  std::string thousands;           // a digit-group separator to drop from numbers, or empty
  // Dates: a pattern of %Y %m %d %H %M %S %f %I %p %b %z %% and literal characters, "epoch"
  // (seconds since 1970-01-01 UTC) or "epoch_ms"; empty: ISO 8601.
  std::string date_format;
  enum class BlobEncoding { kHex, kBase64 };
  BlobEncoding blob_encoding = BlobEncoding::kHex;
  std::vector<std::string> null_texts;       // texts that stand for NULL, compared after trimming
  std::optional<crdt::Value> default_value;  // for a missing or NULL value; already converted
};

// `value` as compact JSON text, the form an import stores JSON in: no spaces, numbers as
// crdt::json_value writes them (`1.5`, `100.0`, `12`; not Boost.JSON's `1.5E0`, `1E2`).
std::string json_text(const boost::json::value& value);

// A JSON value (nullptr: a missing member) as a SourceValue. An object or array is serialized
// into `storage`, which the result's text then views; both must outlive the result.
SourceValue source_from_json(const boost::json::value* value, std::string& storage);

// Converts `source` by `format`: the value to store, or nullopt with `error` set to a short
// reason naming the value ("'2024-13-45' is not a date: month 13", "'12a' is not an integer").
// A missing value, JSON null, an unquoted empty CSV field, or a text in null_texts is the
// default when there is one, else NULL.
std::optional<crdt::Value> convert_value(const ValueFormat& format, const SourceValue& source,
                                         std::string& error);

// Checks a date pattern (ValueFormat::date_format); returns why it is not one, or empty.
std::string check_date_format(std::string_view pattern);

// The offset of the first byte of `text` that is not part of valid UTF-8, or npos.
using storage::invalid_utf8_at;  // storage/json_reader.hpp

}  // namespace lattice::engine
