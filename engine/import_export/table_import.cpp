// import_file(): a file's records into rows, in batches through Replica::bulk_write. The readers
// (csv.cpp, json_records.cpp), the mapping (mapping.cpp) and the conversions (conversion.cpp)
// are pure; this file opens the files, plans which field feeds which column, and keeps the
// counts and the errors file.

#include "engine/import_export/table_import.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <unordered_map>

#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "engine/import_export/conversion.hpp"
#include "engine/import_export/csv.hpp"
#include "engine/import_export/json_records.hpp"
#include "engine/import_export/mapping.hpp"

namespace lattice::engine {

namespace {

namespace json = boost::json;

constexpr std::size_t kKeptData = 4096;
constexpr std::size_t kKeptRejections = 20;
constexpr std::size_t kBatchBytes = std::size_t{64} << 20;

std::string lower(std::string_view text) {
  std::string out(text);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string cut(std::string text) {
  if (text.size() > kKeptData) text.resize(kKeptData);
  return text;
}

// An open file, closed when it goes.
struct File {
  std::FILE* f = nullptr;
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (f) std::fclose(f);
  }
};

ByteSource source_of(std::FILE* f, const std::string& path) {
  return [f, path](char* buffer, std::size_t size) {
    const std::size_t n = std::fread(buffer, 1, size, f);
    if (n == 0 && std::ferror(f))
      throw Error(ErrorCode::kIo, "cannot read '" + path + "': " + std::strerror(errno));
    return n;
  };
}

// Runs `body`, naming the file in the message of any error it throws.
template <class Body>
auto in_file(const std::string& path, Body&& body) {
  try {
    return body();
  } catch (const Error& e) {
    throw Error(e.code(), "'" + path + "': " + e.what());
  }
}

struct TableColumn {
  std::string name;
  std::string declared_type;
  crdt::Affinity affinity = crdt::Affinity::kBlob;
  int key_position = 0;
  bool counter = false;
  crdt::Value table_default;  // the column's DEFAULT, for a record that lacks it
};

// One column the import writes, and where its value comes from.
struct Target {
  const TableColumn* column = nullptr;
  ValueFormat format;
  std::size_t field = 0;  // CSV: the field's index
  std::string pointer;    // JSON: a JSON Pointer, or
  std::string member;     // a member name
};

class Importer {
 public:
  Importer(storage::Replica& replica, std::string_view table, const std::string& path,
           const ImportOptions& options)
      : replica_(replica), table_(table), path_(path), options_(options), limits_(options.limits) {}

  ImportResult run();

 private:
  void describe_table();
  void check_file(std::FILE* f);
  void plan_csv(const CsvRecord& header);
  void plan_json();
  void finish_plan();
  void import_csv(std::FILE* f);
  void import_json(std::FILE* f);
  const json::value* locate(const Target& target, const json::value& record) const;
  std::string unknown_member(const json::object& object) const;
  std::optional<crdt::Value> value_for(const Target& target, const SourceValue& source,
                                       std::string& error) const;
  void add_row(std::uint64_t record, std::uint64_t line, std::vector<crdt::Value> row);
  void reject(ImportRejection rejection);
  void flush();
  void drop_superseded();
  void progress();
  const TableColumn* column_named(std::string_view name) const;

  storage::Replica& replica_;
  std::string table_;
  std::string path_;
  const ImportOptions& options_;
  ReadLimits limits_;
  std::optional<Mapping> mapping_;

  std::vector<TableColumn> columns_;
  std::vector<Target> targets_;
  std::vector<std::string> target_names_;
  std::size_t csv_fields_ = 0;  // fields every CSV record must have
  CsvRecord header_;

  std::vector<std::vector<crdt::Value>> rows_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> row_records_;  // (record, line) per row
  std::size_t batch_bytes_ = 0;
  std::vector<ImportRejection> pending_;  // rejections of the current batch
  std::uint64_t read_ = 0;
  std::optional<std::uint64_t> reported_;  // records at the last progress report
  File errors_;
  ImportResult result_;
};

const TableColumn* Importer::column_named(std::string_view name) const {
  for (const auto& c : columns_)
    if (c.name == name) return &c;
  const std::string wanted = lower(name);
  for (const auto& c : columns_)
    if (lower(c.name) == wanted) return &c;
  return nullptr;
}

void Importer::describe_table() {
  const auto found = replica_.query(
      "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE",
      {crdt::Value{table_}});
  if (found.rows.empty())
    throw Error(ErrorCode::kSchema, "cannot import into '" + table_ + "': there is no such table");
  table_ = std::get<std::string>(found.rows[0][0]);
  const auto info = replica_.query(
      "SELECT name, type, pk, dflt_value FROM pragma_table_xinfo(?) WHERE hidden = 0",
      {crdt::Value{table_}});
  const auto kinds = replica_.query(
      "SELECT c.name FROM lattice_columns c JOIN lattice_tables t ON t.id = c.table_id "
      "WHERE t.name = ? COLLATE NOCASE AND c.kind = 'counter'",
      {crdt::Value{table_}});
  for (const auto& row : info.rows) {
    TableColumn c;
    c.name = std::get<std::string>(row[0]);
    c.declared_type = std::get<std::string>(row[1]);
    c.affinity = storage::affinity_of_declared_type(c.declared_type);
    c.key_position = static_cast<int>(std::get<std::int64_t>(row[2]));
    for (const auto& k : kinds.rows)
      if (lower(std::get<std::string>(k[0])) == lower(c.name)) c.counter = true;
    if (const auto* expression = std::get_if<std::string>(&row[3])) {
      try {
        const auto value = replica_.query("SELECT " + *expression);
        if (!value.rows.empty()) c.table_default = value.rows[0][0];
      } catch (const Error&) {
        // A default SQLite evaluates per row (none can name a column): NULL here.
      }
    }
    columns_.push_back(std::move(c));
  }
  if (std::none_of(columns_.begin(), columns_.end(), [](const auto& c) { return c.key_position; }))
    throw Error(ErrorCode::kSchema, "cannot import into '" + table_ +
                                        "': it has no PRIMARY KEY, so a record cannot be matched "
                                        "with the row it updates");
}

// The first pass: the whole file is read, so that what would stop the import half-way stops it
// before anything is written; it also counts the records, for the progress line.
void Importer::check_file(std::FILE* f) {
  std::uint64_t records = 0;
  auto count = [&] {
    if (++records > limits_.max_records)
      throw Error(ErrorCode::kTooLarge, "more than " + std::to_string(limits_.max_records) +
                                            " records (the limit max_records)");
  };
  in_file(path_, [&] {
    if (options_.format == DataFormat::kCsv) {
      CsvReader reader(source_of(f, path_), mapping_ ? mapping_->delimiter : ',', limits_);
      CsvRecord record;
      const bool header = !mapping_ || mapping_->header;
      if (header) {
        if (!reader.next(header_))
          throw Error(ErrorCode::kInvalidArgument,
                      "the file is empty: a CSV file needs a header "
                      "line naming its columns");
        if (!header_.error.empty())
          throw Error(ErrorCode::kInvalidArgument, "the header line: " + header_.error);
      }
      while (reader.next(record)) {
        if (!header && records == 0) header_ = record;
        count();
      }
    } else {
      JsonRecordReader reader(source_of(f, path_),
                              options_.format == DataFormat::kJson
                                  ? JsonRecordReader::Layout::kArray
                                  : JsonRecordReader::Layout::kLines,
                              limits_, false);
      JsonRecord record;
      while (reader.next(record)) count();
    }
    return 0;
  });
  result_.records = records;
  if (std::fseek(f, 0, SEEK_SET) != 0)
    throw Error(ErrorCode::kIo, "cannot read '" + path_ + "' again: " + std::strerror(errno));
}

void Importer::plan_csv(const CsvRecord& header) {
  csv_fields_ = header.count;
  const bool named = !mapping_ || mapping_->header;
  auto field_named = [&](const std::string& name) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < header.count; ++i)
      if (header.fields[i].text == name) return i;
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < header.count; ++i)
      if (lower(header.fields[i].text) == lower(name)) found = i;
    return found;
  };
  auto header_list = [&] {
    std::string out;
    for (std::size_t i = 0; i < header.count; ++i) out += (i ? ", " : "") + header.fields[i].text;
    return out;
  };
  if (named) {
    for (std::size_t i = 0; i < header.count; ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (lower(header.fields[i].text) == lower(header.fields[j].text))
          throw Error(ErrorCode::kInvalidArgument,
                      "'" + path_ + "': its header names '" + header.fields[i].text + "' twice");
  }
  if (!mapping_) {
    for (std::size_t i = 0; i < header.count; ++i) {
      const TableColumn* c = column_named(header.fields[i].text);
      if (!c) {
        std::string names;
        for (const auto& column : columns_) names += (names.empty() ? "" : ", ") + column.name;
        throw Error(ErrorCode::kInvalidArgument,
                    "'" + path_ + "': the header's column '" + header.fields[i].text +
                        "' is no column of table " + table_ + " (" + names +
                        "); map the file's columns with a mapping file (--map)");
      }
      Target t;
      t.column = c;
      t.field = i;
      targets_.push_back(std::move(t));
    }
    return;
  }
  for (const auto& m : mapping_->columns) {
    Target t;
    t.column = column_named(m.column);
    if (m.source_number) {
      if (m.source_number > header.count)
        throw Error(ErrorCode::kInvalidArgument,
                    "mapping: column '" + m.column + "': the file's records have " +
                        std::to_string(header.count) + " fields, not " +
                        std::to_string(m.source_number));
      t.field = m.source_number - 1;
    } else {
      auto field = field_named(m.source);
      if (!field)
        throw Error(ErrorCode::kInvalidArgument, "mapping: column '" + m.column + "': '" + path_ +
                                                     "' has no column '" + m.source +
                                                     "' in its header (" + header_list() + ")");
      t.field = *field;
    }
    targets_.push_back(std::move(t));
  }
}

void Importer::plan_json() {
  if (!mapping_) {
    for (const auto& c : columns_) {
      Target t;
      t.column = &c;
      t.member = c.name;
      targets_.push_back(std::move(t));
    }
    return;
  }
  for (const auto& m : mapping_->columns) {
    Target t;
    t.column = column_named(m.column);
    if (m.source_number)
      throw Error(ErrorCode::kInvalidArgument,
                  "mapping: column '" + m.column +
                      "': a column number is a CSV source; name a JSON member or Pointer");
    if (m.source[0] == '/') {
      for (std::size_t i = 0; i < m.source.size(); ++i)
        if (m.source[i] == '~' &&
            (i + 1 >= m.source.size() || (m.source[i + 1] != '0' && m.source[i + 1] != '1')))
          throw Error(ErrorCode::kInvalidArgument,
                      "mapping: column '" + m.column + "': '" + m.source +
                          "' is not a JSON Pointer ('~' must be followed by 0 or 1)");
      t.pointer = m.source;
    } else {
      t.member = m.source;
    }
    targets_.push_back(std::move(t));
  }
}

// Types, defaults, and the checks that need both the table and the mapping.
void Importer::finish_plan() {
  for (std::size_t i = 0; i < targets_.size(); ++i) {
    Target& t = targets_[i];
    const ColumnMapping* m = mapping_ ? &mapping_->columns[i] : nullptr;
    if (!t.column) {
      std::string names;
      for (const auto& column : columns_) names += (names.empty() ? "" : ", ") + column.name;
      throw Error(ErrorCode::kInvalidArgument, "mapping: table " + table_ + " has no column '" +
                                                   m->column + "' (" + names + ")");
    }
    for (std::size_t j = 0; j < i; ++j)
      if (targets_[j].column == t.column)
        throw Error(ErrorCode::kInvalidArgument,
                    "mapping: column '" + t.column->name + "' is mapped twice");
    if (m) t.format = m->format;
    if (!m || !m->type_given)
      t.format.type = default_type(t.column->declared_type, t.column->affinity, t.column->counter);
    if (m && m->default_source) {
      SourceValue s;
      std::string text;
      if (const auto* str = std::get_if<std::string>(&*m->default_source)) {
        text = *str;
        s.kind = SourceValue::Kind::kText;
        s.text = text;
        s.quoted = true;
        s.from_json = true;
      } else if (const auto* i64 = std::get_if<std::int64_t>(&*m->default_source)) {
        s.kind = SourceValue::Kind::kInteger;
        s.integer = *i64;
      } else {
        s.kind = SourceValue::Kind::kReal;
        s.real = std::get<double>(*m->default_source);
      }
      std::string error;
      ValueFormat plain = t.format;
      auto converted = convert_value(plain, s, error);
      if (!converted)
        throw Error(ErrorCode::kInvalidArgument,
                    "mapping: column '" + t.column->name + "', \"default\": " + error);
      t.format.default_value = *converted;
    }
    target_names_.push_back(t.column->name);
  }
  for (const auto& c : columns_) {
    if (!c.key_position) continue;
    if (std::none_of(targets_.begin(), targets_.end(),
                     [&](const Target& t) { return t.column == &c; }))
      throw Error(ErrorCode::kInvalidArgument,
                  (mapping_ ? "mapping: " : "'" + path_ + "': ") + std::string("the key column '") +
                      c.name + "' of " + table_ +
                      " is not imported, and rows are matched by their key");
  }
}

std::optional<crdt::Value> Importer::value_for(const Target& target, const SourceValue& source,
                                               std::string& error) const {
  if (source.kind == SourceValue::Kind::kMissing && !target.format.default_value)
    return target.column->table_default;
  return convert_value(target.format, source, error);
}

void Importer::reject(ImportRejection rejection) {
  rejection.data = cut(std::move(rejection.data));
  pending_.push_back(std::move(rejection));
}

void Importer::add_row(std::uint64_t record, std::uint64_t line, std::vector<crdt::Value> row) {
  for (const auto& v : row) {
    if (const auto* s = std::get_if<std::string>(&v)) batch_bytes_ += s->size();
    if (const auto* b = std::get_if<crdt::Blob>(&v)) batch_bytes_ += b->bytes.size();
    batch_bytes_ += 16;
  }
  rows_.push_back(std::move(row));
  row_records_.emplace_back(record, line);
  if (rows_.size() >= options_.batch_rows || batch_bytes_ >= kBatchBytes) flush();
}

// Leaves in the batch only the last row of each key (the later record wins), so that a file
// giving a key twice is written once, and importing it again writes nothing. The rows left out
// count as unchanged. A row with a NULL key stays, for bulk_write to reject.
void Importer::drop_superseded() {
  std::unordered_map<std::string, std::size_t> last;  // key -> its last row
  std::vector<bool> keep(rows_.size(), true);
  std::size_t dropped = 0;
  for (std::size_t r = 0; r < rows_.size(); ++r) {
    std::string key;
    bool null_key = false;
    for (std::size_t i = 0; i < targets_.size(); ++i) {
      if (targets_[i].column->key_position == 0) continue;
      null_key = null_key || rows_[r][i].index() == 0;
      key += crdt::json_value(rows_[r][i]);
      key += '\0';
    }
    if (null_key) continue;
    auto [it, inserted] = last.try_emplace(std::move(key), r);
    if (!inserted) {
      keep[it->second] = false;
      it->second = r;
      ++dropped;
    }
  }
  if (dropped == 0) return;
  std::size_t out = 0;
  for (std::size_t r = 0; r < rows_.size(); ++r) {
    if (!keep[r]) continue;
    rows_[out] = std::move(rows_[r]);
    row_records_[out] = row_records_[r];
    ++out;
  }
  rows_.resize(out);
  row_records_.resize(out);
  result_.unchanged += dropped;
}

void Importer::flush() {
  drop_superseded();
  if (!rows_.empty()) {
    const storage::BulkResult written =
        replica_.bulk_write(table_, target_names_, rows_, options_.bulk_path);
    result_.inserted += written.inserted;
    result_.updated += written.updated;
    result_.unchanged += written.unchanged;
    for (const auto& e : written.errors) {
      ImportRejection r;
      r.record = row_records_[e.row].first;
      r.line = row_records_[e.row].second;
      r.column = e.column;
      r.reason = e.reason;
      for (std::size_t i = 0; i < rows_[e.row].size(); ++i) {
        if (i) r.data += ',';
        append_csv_value(r.data, rows_[e.row][i], ',');
      }
      reject(std::move(r));
    }
  }
  std::sort(pending_.begin(), pending_.end(),
            [](const ImportRejection& a, const ImportRejection& b) { return a.record < b.record; });
  for (auto& r : pending_) {
    ++result_.rejected;
    if (errors_.f) {
      std::string line = std::to_string(r.record) + "," + std::to_string(r.line) + ",";
      if (!r.column.empty()) append_csv_text(line, r.column, ',', false);
      line += ',';
      append_csv_text(line, r.reason, ',', false);
      line += ',';
      append_csv_text(line, r.data, ',', false);
      line += '\n';
      if (std::fwrite(line.data(), 1, line.size(), errors_.f) != line.size())
        throw Error(ErrorCode::kIo,
                    "cannot write '" + options_.errors_path + "': " + std::strerror(errno));
    }
    if (result_.first_rejections.size() < kKeptRejections)
      result_.first_rejections.push_back(std::move(r));
  }
  if (errors_.f && std::fflush(errors_.f) != 0)
    throw Error(ErrorCode::kIo,
                "cannot write '" + options_.errors_path + "': " + std::strerror(errno));
  pending_.clear();
  rows_.clear();
  row_records_.clear();
  batch_bytes_ = 0;
  progress();
}

void Importer::progress() {
  if (!options_.on_progress || (reported_ && read_ == *reported_)) return;
  reported_ = read_;
  options_.on_progress({read_, result_.records, result_.rejected});
}

void Importer::import_csv(std::FILE* f) {
  CsvReader reader(source_of(f, path_), mapping_ ? mapping_->delimiter : ',', limits_);
  CsvRecord record;
  if (!mapping_ || mapping_->header) in_file(path_, [&] { return reader.next(record); });
  std::uint64_t number = 0;
  while (in_file(path_, [&] { return reader.next(record); })) {
    ++number;
    ++read_;
    auto data = [&] {
      std::string out;
      for (std::size_t i = 0; i < record.count; ++i) {
        if (i) out += mapping_ ? mapping_->delimiter : ',';
        // As read: quoted when it was (an unquoted empty field stays empty, NULL).
        const CsvField& field = record.fields[i];
        if (field.quoted || !field.text.empty())
          append_csv_text(out, field.text, mapping_ ? mapping_->delimiter : ',', field.quoted);
        if (out.size() > kKeptData) break;
      }
      return out;
    };
    if (!record.error.empty()) {
      reject({number, record.line, "", record.error, data()});
      continue;
    }
    if (record.count != csv_fields_) {
      reject({number, record.line, "",
              "the record has " + std::to_string(record.count) + " fields, the " +
                  (mapping_ && !mapping_->header ? "first record " : "header ") +
                  std::to_string(csv_fields_),
              data()});
      continue;
    }
    std::vector<crdt::Value> row;
    row.reserve(targets_.size());
    bool ok = true;
    for (const auto& t : targets_) {
      const CsvField& field = record.fields[t.field];
      SourceValue source;
      source.kind = SourceValue::Kind::kText;
      source.text = field.text;
      source.quoted = field.quoted;
      std::string error;
      auto value = value_for(t, source, error);
      if (!value) {
        reject({number, record.line, t.column->name, error, data()});
        ok = false;
        break;
      }
      row.push_back(std::move(*value));
    }
    if (ok) add_row(number, record.line, std::move(row));
  }
}

// The value a target takes from a JSON record: its Pointer, or its member (without a mapping,
// matched without regard to case as columns are), or nullptr.
const json::value* Importer::locate(const Target& t, const json::value& record) const {
  if (!t.pointer.empty()) {
    json::error_code ec;
    return record.find_pointer(json::string_view(t.pointer.data(), t.pointer.size()), ec);
  }
  const json::object& object = record.get_object();
  if (const auto* v = object.if_contains(json::string_view(t.member.data(), t.member.size())))
    return v;
  if (!mapping_)
    for (const auto& member : object)
      if (lower(std::string_view(member.key().data(), member.key().size())) == lower(t.member))
        return &member.value();
  return nullptr;
}

// Without a mapping, a member that names no column: a misspelt name would otherwise be dropped
// silently. Empty when there is none.
std::string Importer::unknown_member(const json::object& object) const {
  if (mapping_) return {};
  for (const auto& member : object) {
    const std::string_view key(member.key().data(), member.key().size());
    if (!column_named(key)) return std::string(key);
  }
  return {};
}

void Importer::import_json(std::FILE* f) {
  JsonRecordReader reader(source_of(f, path_),
                          options_.format == DataFormat::kJson ? JsonRecordReader::Layout::kArray
                                                               : JsonRecordReader::Layout::kLines,
                          limits_, true);
  JsonRecord record;
  std::vector<std::string> storage(targets_.size());
  while (in_file(path_, [&] { return reader.next(record); })) {
    ++read_;
    auto data = [&] {
      return !record.text.empty()     ? record.text
             : record.value.is_null() ? std::string()
                                      : cut(json_text(record.value));
    };
    if (!record.error.empty()) {
      reject({record.number, record.line, "", record.error, data()});
      continue;
    }
    if (const std::string unknown = unknown_member(record.value.get_object()); !unknown.empty()) {
      reject({record.number, record.line, "",
              "the member '" + unknown + "' is no column of table " + table_ +
                  "; map the file's members with a mapping file (--map)",
              data()});
      continue;
    }
    std::vector<crdt::Value> row;
    row.reserve(targets_.size());
    bool ok = true;
    for (std::size_t i = 0; i < targets_.size() && ok; ++i) {
      const SourceValue source = source_from_json(locate(targets_[i], record.value), storage[i]);
      std::string error;
      auto value = value_for(targets_[i], source, error);
      if (value) {
        row.push_back(std::move(*value));
      } else {
        reject({record.number, record.line, targets_[i].column->name, error, data()});
        ok = false;
      }
    }
    if (ok) add_row(record.number, record.line, std::move(row));
  }
}

ImportResult Importer::run() {
  if (options_.batch_rows == 0)
    throw Error(ErrorCode::kInvalidArgument, "batch_rows must be at least 1");
  if (!options_.mapping.empty()) mapping_ = parse_mapping(options_.mapping, limits_);
  describe_table();

  std::error_code ec;
  const auto status = std::filesystem::status(path_, ec);
  if (ec || !std::filesystem::exists(status))
    throw Error(ErrorCode::kIo, "cannot read '" + path_ + "': no such file");
  if (!std::filesystem::is_regular_file(status))
    throw Error(ErrorCode::kIo,
                "cannot import '" + path_ + "': not a regular file (the file is read twice)");
  const auto size = std::filesystem::file_size(path_, ec);
  if (!ec && size > limits_.max_file_bytes)
    throw Error(ErrorCode::kTooLarge, "'" + path_ + "': " + std::to_string(size) +
                                          " bytes, over the limit max_file_bytes (" +
                                          std::to_string(limits_.max_file_bytes) + ")");
  File input;
  input.f = std::fopen(path_.c_str(), "rb");
  if (!input.f) throw Error(ErrorCode::kIo, "cannot read '" + path_ + "': " + std::strerror(errno));

  check_file(input.f);
  if (options_.format == DataFormat::kCsv) {
    plan_csv(header_);
  } else {
    plan_json();
  }
  finish_plan();

  if (!options_.errors_path.empty()) {
    errors_.f = std::fopen(options_.errors_path.c_str(), "wb");
    if (!errors_.f)
      throw Error(ErrorCode::kIo,
                  "cannot write '" + options_.errors_path + "': " + std::strerror(errno));
    const char* header = "record,line,column,reason,data\n";
    if (std::fputs(header, errors_.f) < 0)
      throw Error(ErrorCode::kIo, "cannot write '" + options_.errors_path + "'");
  }
  progress();
  if (options_.format == DataFormat::kCsv) {
    import_csv(input.f);
  } else {
    import_json(input.f);
  }
  flush();
  // A large batch grew the write-ahead log; give the space back (a reader holding it keeps it).
  try {
    replica_.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  } catch (const Error&) {
  }
  if (errors_.f) {
    const int closed = std::fclose(errors_.f);
    errors_.f = nullptr;
    if (closed != 0)
      throw Error(ErrorCode::kIo,
                  "cannot write '" + options_.errors_path + "': " + std::strerror(errno));
  }
  return std::move(result_);
}

}  // namespace

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::kCsv:
      return "csv";
    case DataFormat::kNdjson:
      return "ndjson";
    case DataFormat::kJson:
      break;
  }
  return "json";
}

std::optional<DataFormat> data_format_from_name(std::string_view name) {
  for (DataFormat f : {DataFormat::kCsv, DataFormat::kNdjson, DataFormat::kJson})
    if (name == data_format_name(f)) return f;
  return std::nullopt;
}

ImportResult import_file(storage::Replica& replica, std::string_view table, const std::string& path,
                         const ImportOptions& options) {
  return Importer(replica, table, path, options).run();
}

}  // namespace lattice::engine
