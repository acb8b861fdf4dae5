#pragma once
// Exporting a table, or the rows of a query, as CSV, NDJSON or JSON (docs/import-export.md,
// "Export"). What export writes, import reads back to the same values and types.
//
//   lattice::export_file(*replica, "customers", lattice::DataFormat::kCsv, "customers.csv");
//   lattice::export_rows(*replica, "SELECT id, email FROM customers WHERE active",
//                        lattice::DataFormat::kNdjson,
//                        [](std::string_view bytes) { std::fwrite(bytes.data(), 1, bytes.size(),
//                        stdout); });

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "engine/import_export/data_format.hpp"
#include "storage/replica.hpp"

namespace lattice::engine {

struct ExportResult {
  std::uint64_t rows = 0;
};

// Writes the rows of `table_or_query` in `format`, in pieces handed to `write` in order (on the
// calling thread; it may throw, and the export stops with its error). `table_or_query` is the
// name of a table or view (its rows, a table's in primary-key order) or one read-only SQL
// statement that returns rows. CSV: a header line of the column names, then a line per row:
// NULL as an empty field, text always quoted, integers in decimal, reals in the shortest form
// that reads back exactly, blobs as \x and hex digits. NDJSON: an object per line. JSON: one
// array of objects. In JSON, members follow the columns' order; blobs are {"blob": "<hex>"};
// the text of a column declared JSON is written as the JSON it holds.
//
// Throws Error: kInvalidArgument (not a table, a view or one read-only statement returning
// rows; a text value that is not UTF-8, which JSON cannot carry, naming its row and column),
// kSql (the query fails), kBusy.
ExportResult export_rows(storage::Replica& replica, std::string_view table_or_query,
                         DataFormat format, const std::function<void(std::string_view)>& write);

// The same into the file at `path`, written through `path`.tmp and a rename so that a reader
// never sees half a file; on an error the file is left as it was. Throws Error(kIo) when the
// file cannot be written.
ExportResult export_file(storage::Replica& replica, std::string_view table_or_query,
                         DataFormat format, const std::string& path);

}  // namespace lattice::engine
