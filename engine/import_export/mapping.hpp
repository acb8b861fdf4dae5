#pragma once
// An import's mapping file (docs/import-export.md, "The mapping file"): per target column, where
// its value comes from in each record (a CSV header, a CSV column number, or a JSON Pointer or
// member name), its type and normalizations; and the CSV settings and limits of the import.
// Parsed with Boost.JSON. Pure.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/changeset.hpp"
#include "engine/import_export/conversion.hpp"
#include "engine/import_export/read_limits.hpp"

namespace lattice::engine {

struct ColumnMapping {
  std::string column;  // the target column, as the mapping names it
  // Where the value comes from: a CSV header or a JSON member name; a JSON Pointer when it
  // starts with '/'; empty with `source_number` for a CSV column by number (from 1).
  std::string source;
  std::size_t source_number = 0;
  bool type_given = false;  // "type" was in the mapping; otherwise the column's own decides
  ValueFormat format;       // its default_value is not set: see default_source
  // "default", as the file gives it (booleans as 1 and 0); the import converts it by the
  // column's type.
  std::optional<crdt::Value> default_source;
};

struct Mapping {
  std::vector<ColumnMapping> columns;  // in the file's order
  char delimiter = ',';
  bool header = true;  // the CSV file's first record names its columns
};

// Parses a mapping file's text. Limits it sets ("limits": {...}) overwrite those in `limits`.
// Throws Error(kInvalidArgument) naming the member at fault: "mapping: column 'joined': unknown
// type 'dat' (known: text, integer, ...)".
Mapping parse_mapping(std::string_view text, ReadLimits& limits);

// The type a column's values take when the mapping names none: from its declared type (BOOL ->
// boolean, DATETIME or TIMESTAMP -> datetime, DATE -> date, JSON -> json, BLOB -> blob) or
// else its affinity (INTEGER -> integer, REAL -> real, NUMERIC -> number, TEXT -> text, none ->
// any); a counter is an integer.
ValueType default_type(std::string_view declared_type, crdt::Affinity affinity, bool counter);

}  // namespace lattice::engine
