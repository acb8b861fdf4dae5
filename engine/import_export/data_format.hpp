#pragma once
// The file formats of imports and exports (docs/import-export.md).

#include <optional>
#include <string_view>

namespace lattice::engine {

enum class DataFormat {
  kCsv,     // RFC 4180 CSV with a header line
  kNdjson,  // one JSON object per line
  kJson,    // one JSON array of objects
};

// "csv", "ndjson", "json"; and back (nullopt for another name).
const char* data_format_name(DataFormat format);
std::optional<DataFormat> data_format_from_name(std::string_view name);

}  // namespace lattice::engine
