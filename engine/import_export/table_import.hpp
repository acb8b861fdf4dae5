#pragma once
// Importing a CSV, NDJSON or JSON file into a table of a replica: each record becomes a row,
// written by its primary key (inserted when new, updated when different, left alone when
// equal), as this replica's own writes that sync like any other. docs/import-export.md is the
// user's guide: the formats, the mapping file, the errors file, the limits.
//
//   lattice::ImportOptions options;
//   options.format = lattice::DataFormat::kCsv;
//   options.errors_path = "rejected.csv";
//   lattice::ImportResult r = lattice::import_file(*replica, "customers", "customers.csv",
//   options);
//   // r.inserted, r.updated, r.unchanged, r.rejected

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/import_export/data_format.hpp"
#include "engine/import_export/read_limits.hpp"
#include "storage/replica.hpp"

namespace lattice::engine {

struct ImportProgress {
  std::uint64_t records = 0;        // records read and handled so far
  std::uint64_t total_records = 0;  // records in the file (counted before anything is written)
  std::uint64_t rejected = 0;       // of `records`, those refused
};

// A record that was not imported, and why.
struct ImportRejection {
  std::uint64_t record = 0;  // 1 for the file's first record (a CSV header is not a record)
  std::uint64_t line = 0;    // the line it starts on (for a JSON array file, its first line)
  std::string column;        // the column at fault ("a, b" for several), empty when none is
  std::string reason;        // one sentence: "'2024-13-45' is not a date: month 13"
  // The record as read (CSV: its fields; NDJSON: its line; JSON: the element) or, for a row the
  // table refused (a constraint, a trigger), the values it would have written, as CSV. At most
  // 4 KiB.
  std::string data;
};

struct ImportOptions {
  DataFormat format = DataFormat::kCsv;
  // The mapping file's text (JSON). Empty: CSV headers and JSON member names are the table's
  // column names, and each column's type follows its declared type.
  std::string mapping;
  // Where to write the rejected records, as CSV with the columns record, line, column, reason,
  // data (replaced if it exists). Empty: none written.
  std::string errors_path;
  // Rows per transaction; a batch also ends after about 64 MiB of values. Larger batches are
  // faster (each is written in key order, and each commit rewrites the index pages it touched)
  // and hold more in memory: about 40 MB for 100,000 rows of four short columns.
  std::size_t batch_rows = 100'000;
  ReadLimits limits;  // the mapping's "limits" override these
  // Called on the calling thread after each batch commits, and once before the first.
  std::function<void(const ImportProgress&)> on_progress;
  // How rows are written (storage::Replica::bulk_write); kStatements is for tests.
  storage::BulkPath bulk_path = storage::BulkPath::kAuto;
};

struct ImportResult {
  std::uint64_t records = 0;    // records in the file
  std::uint64_t inserted = 0;   // rows that were not in the table
  std::uint64_t updated = 0;    // rows that were, with some imported column different
  std::uint64_t unchanged = 0;  // rows equal in every imported column: nothing written
  std::uint64_t rejected = 0;   // records refused (see errors_path)
  std::vector<ImportRejection> first_rejections;  // the first 20, in record order
};

// Imports the file at `path` into `table` (replicated or not; it needs a primary key), in one
// transaction per batch. The file is read twice: first as a whole, so that a file that cannot
// be read to its end (not a text file, an unclosed quote, JSON that is not an array of objects,
// over a limit) is refused before anything is written; then to import it. A record that does
// not fit (a value that does not convert to its column's type, the wrong number of CSV fields,
// a constraint of the table, a trigger's refusal) is rejected alone and the others imported.
// Importing the same file again changes nothing. Listeners get the events of the rows written.
//
// Throws Error, naming the file, record or column at fault: kIo (the file cannot be read, the
// errors file cannot be written), kCorrupt (the file as a whole cannot be read), kTooLarge
// (over max_file_bytes or max_records), kInvalidArgument (a bad mapping, a CSV header or
// mapping that names no column of the table, a key column not imported), kSchema (no such
// table, no primary key), kState (inside an open transaction), kBusy. Batches committed before
// an error thrown after the first one (a full disk) stay; importing again completes the file.
ImportResult import_file(storage::Replica& replica, std::string_view table, const std::string& path,
                         const ImportOptions& options = {});

}  // namespace lattice::engine
