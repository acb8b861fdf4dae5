#include "engine/import_export/table_export.hpp"

#include <sqlite3.h>

#include <boost/json/parse.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "engine/import_export/conversion.hpp"
#include "engine/import_export/csv.hpp"
#include "engine/import_export/mapping.hpp"
#include "storage/sqlite.hpp"

namespace lattice::engine {

namespace {

constexpr std::size_t kChunkBytes = 1 << 16;

bool blank(std::string_view text) {
  for (char c : text)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != ';') return false;
  return true;
}

// The SELECT for a table or view name, or nullopt when `what` names none.
std::optional<std::string> select_for_name(sqlite3* db, std::string_view what) {
  storage::Statement found(db,
                           "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') "
                           "AND name = ? COLLATE NOCASE");
  found.bind(1, what);
  if (!found.step()) return std::nullopt;
  const std::string name = found.column_text(0), type = found.column_text(1);
  found = storage::Statement();
  std::string sql = "SELECT * FROM " + storage::quote_identifier(name);
  if (type != "table") return sql;
  storage::Statement keys(db, "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk");
  keys.bind(1, name);
  std::string order;
  while (keys.step())
    order += (order.empty() ? " ORDER BY " : ", ") + storage::quote_identifier(keys.column_text(0));
  return sql + order;
}

class Writer {
 public:
  Writer(DataFormat format, const std::function<void(std::string_view)>& write)
      : format_(format), write_(write) {}

  // `json_columns[i]`: column i is declared JSON, so its text is written as the JSON it holds.
  void begin(const std::vector<std::string>& names, const std::vector<bool>& json_columns) {
    names_ = names;
    json_columns_ = json_columns;
    if (format_ == DataFormat::kCsv) {
      for (std::size_t i = 0; i < names.size(); ++i) {
        if (i) out_ += ',';
        append_csv_text(out_, names[i], ',', false);
      }
      out_ += '\n';
    } else {
      for (const auto& name : names) quoted_names_.push_back(crdt::json_quote(name));
      if (format_ == DataFormat::kJson) out_ += "[";
    }
  }

  void row(std::uint64_t number, const std::vector<crdt::Value>& values) {
    if (format_ == DataFormat::kCsv) {
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (i) out_ += ',';
        append_csv_value(out_, values[i], ',');
      }
      out_ += '\n';
    } else {
      if (format_ == DataFormat::kJson) out_ += number == 1 ? "\n" : ",\n";
      out_ += '{';
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (const auto* s = std::get_if<std::string>(&values[i])) {
          const std::size_t bad = invalid_utf8_at(*s);
          if (bad != std::string::npos)
            throw Error(ErrorCode::kInvalidArgument,
                        "row " + std::to_string(number) + ", column " + names_[i] +
                            ": the text is not valid UTF-8 (byte " + std::to_string(bad + 1) +
                            "), which JSON cannot carry; export it as csv");
        }
        if (i) out_ += ", ";
        out_ += quoted_names_[i];
        out_ += ": ";
        append_json(i, values[i]);
      }
      out_ += '}';
      if (format_ == DataFormat::kNdjson) out_ += '\n';
    }
    if (out_.size() >= kChunkBytes) flush();
  }

  void end(std::uint64_t rows) {
    if (format_ == DataFormat::kJson) out_ += rows ? "\n]\n" : "]\n";
    flush();
  }

 private:
  // A JSON column's text as the JSON it holds (import reads it back into the same text when it
  // is compact, as import stores it); any other value, or text that is not JSON, as it is.
  void append_json(std::size_t column, const crdt::Value& value) {
    const auto* text = std::get_if<std::string>(&value);
    if (text && json_columns_[column]) {
      boost::json::error_code ec;
      const boost::json::value parsed =
          boost::json::parse(boost::json::string_view(text->data(), text->size()), ec);
      if (!ec && !parsed.is_null()) {
        out_ += json_text(parsed);
        return;
      }
    }
    out_ += crdt::json_value(value);
  }

  void flush() {
    if (out_.empty()) return;
    write_(out_);
    out_.clear();
  }

  DataFormat format_;
  const std::function<void(std::string_view)>& write_;
  std::vector<std::string> names_, quoted_names_;
  std::vector<bool> json_columns_;
  std::string out_;
};

}  // namespace

ExportResult export_rows(storage::Replica& replica, std::string_view table_or_query,
                         DataFormat format, const std::function<void(std::string_view)>& write) {
  ExportResult result;
  replica.run_on_connection([&](sqlite3* db) {
    std::string sql;
    if (auto select = select_for_name(db, table_or_query)) {
      sql = *select;
    } else {
      sql = std::string(table_or_query);
    }
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    const int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &raw, &tail);
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
    const std::string what = "'" + std::string(table_or_query) + "'";
    if (rc != SQLITE_OK)
      throw Error(ErrorCode::kInvalidArgument,
                  what + " is neither a table or view of this replica nor a query it can run (" +
                      sqlite3_errmsg(db) + ")");
    if (!raw || !blank(tail))
      throw Error(ErrorCode::kInvalidArgument,
                  what + ": export takes a table or view name, or one SQL statement");
    if (!sqlite3_stmt_readonly(raw) || sqlite3_column_count(raw) == 0)
      throw Error(ErrorCode::kInvalidArgument,
                  what + ": export runs only statements that read rows (a SELECT)");
    std::vector<std::string> names;
    std::vector<bool> json_columns;
    for (int i = 0; i < sqlite3_column_count(raw); ++i) {
      const char* name = sqlite3_column_name(raw, i);
      names.emplace_back(name ? name : "");
      const char* declared = sqlite3_column_decltype(raw, i);
      json_columns.push_back(declared &&
                             default_type(declared, storage::affinity_of_declared_type(declared),
                                          false) == ValueType::kJson);
    }
    Writer writer(format, write);
    writer.begin(names, json_columns);
    std::vector<crdt::Value> values(names.size());
    for (;;) {
      const int step = sqlite3_step(raw);
      if (step == SQLITE_DONE) break;
      if (step != SQLITE_ROW) storage::throw_sqlite(db, step, sql);
      for (int i = 0; i < static_cast<int>(names.size()); ++i)
        values[static_cast<std::size_t>(i)] =
            storage::value_from_sqlite(sqlite3_column_value(raw, i));
      writer.row(++result.rows, values);
    }
    writer.end(result.rows);
  });
  return result;
}

ExportResult export_file(storage::Replica& replica, std::string_view table_or_query,
                         DataFormat format, const std::string& path) {
  const std::string temporary = path + ".tmp";
  std::FILE* f = std::fopen(temporary.c_str(), "wb");
  if (!f) throw Error(ErrorCode::kIo, "cannot write '" + temporary + "': " + std::strerror(errno));
  ExportResult result;
  try {
    result = export_rows(replica, table_or_query, format, [&](std::string_view bytes) {
      if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
        throw Error(ErrorCode::kIo, "cannot write '" + temporary + "': " + std::strerror(errno));
    });
    if (std::fflush(f) != 0)
      throw Error(ErrorCode::kIo, "cannot write '" + temporary + "': " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(temporary.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(temporary.c_str());
    throw Error(ErrorCode::kIo, "cannot write '" + temporary + "'");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error(ErrorCode::kIo, "cannot rename '" + temporary + "' to '" + path + "'");
  }
  return result;
}

}  // namespace lattice::engine
