// Replica::bulk_write(): many rows into one table in one transaction, each as the upsert its
// contract (storage/replica.hpp) names. docs/import-export.md describes the imports built on it.
//
// Two paths give the same result:
//   - Statements: the upsert itself, per row, captured by the triggers like any application
//     write. For tables that application triggers or ON CONFLICT clauses act on (their writes
//     must be captured too), for tables that are not replicated, and on request.
//   - Direct: the application row written with capture suspended, and the metadata the capture
//     triggers (triggers.cpp) would record for that row written here, statement for statement,
//     with the key packed here instead of by lattice_pk() in SQL. A captured insert costs about
//     six plain inserts (docs/benchmarks.md); this costs about two.
// Rows are independent in both, except through UNIQUE constraints and foreign keys to the same
// table; without those, the direct path writes a batch in key order, which keeps the B-trees'
// pages hot, and the outcome is that of the given order.
//
// A row that SQLite refuses fails as a statement, so nothing of it stays. A row refused after
// its application write (a counter past 2^63-1, a default that is not an integer, a deferred
// foreign key that would fail the commit) makes the fast pass give up: it is rolled back and
// the batch written again with a savepoint around each row, which is slower but undoes exactly
// that row.

#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

// The columns SQLite's message names: "NOT NULL constraint failed: t.a", "UNIQUE constraint
// failed: t.a, t.b", "cannot store TEXT value in INTEGER column t.b". Empty when it names none.
std::string columns_named(std::string_view message, std::string_view table) {
  const std::string lower = lower_case(message), prefix = lower_case(table) + ".";
  std::string out;
  for (std::size_t at = lower.find(prefix); at != std::string::npos;
       at = lower.find(prefix, at + 1)) {
    if (at > 0 && lower[at - 1] != ' ' && lower[at - 1] != ',') continue;
    std::size_t end = at + prefix.size();
    while (end < message.size() && message[end] != ',' && message[end] != ' ' &&
           message[end] != ')')
      ++end;
    out += std::string(out.empty() ? "" : ", ") +
           std::string(message.substr(at + prefix.size(), end - at - prefix.size()));
  }
  return out;
}

// SQLite's message for a row a CHECK constraint refuses: this, then the constraint's
// expression, or its name when it has one.
constexpr std::string_view kCheckFailed = "CHECK constraint failed: ";

// The columns of the table that `expression` names, in the table's order.
template <typename Table>
std::string columns_in(std::string_view expression, const Table& t) {
  const auto identifier = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
           static_cast<unsigned char>(c) >= 0x80;
  };
  std::set<std::string> words;
  const std::string lower = lower_case(expression);
  for (std::size_t i = 0; i < lower.size();) {
    std::size_t end = i;
    while (end < lower.size() && identifier(lower[end])) ++end;
    if (end > i) words.insert(lower.substr(i, end - i));
    i = std::max(end, i + 1);
  }
  std::string out;
  for (const auto& c : t.columns)
    if (words.count(lower_case(c.name))) out += std::string(out.empty() ? "" : ", ") + c.name;
  return out;
}

// A refusal of one row, with the column at fault when known.
struct Refusal {
  std::string column;
  std::string reason;
};

// Thrown inside the fast pass when a row was refused after its application write: the batch is
// written again with a savepoint per row.
struct RetryCarefully {};

// Failures that belong to one row rather than to the whole write.
bool row_failure(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_CONSTRAINT || primary == SQLITE_MISMATCH || primary == SQLITE_TOOBIG ||
         primary == SQLITE_RANGE;
}

// One column of the target table.
struct Column {
  std::string name;
  int key_position = 0;
  crdt::ColumnKind kind = crdt::ColumnKind::kLww;
  Affinity affinity = Affinity::kBlob;
  crdt::ColumnId id = 0;
  std::optional<std::size_t> given;  // its index in the caller's `columns`
};

// The table as bulk_write sees it, and which path writes it.
struct Target {
  std::string name;
  std::vector<Column> columns;  // keys first, in key order
  std::size_t key_count = 0;
  TableInfo* replicated = nullptr;
  bool rowid_key = false;
  bool direct = false;    // the direct path applies
  bool sortable = false;  // rows commute: no UNIQUE beyond the key, no foreign key to itself
};

bool exists(sqlite3* db, const std::string& sql, std::string_view table) {
  Statement s(db, sql);
  s.bind(1, table);
  return s.step();
}

Target describe(Replica::Impl& impl, std::string_view table, const std::vector<std::string>& given,
                BulkPath path) {
  sqlite3* db = impl.db;
  Statement found(db,
                  "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ? "
                  "COLLATE NOCASE");
  found.bind(1, table);
  if (!found.step())
    throw Error(ErrorCode::kSchema,
                "cannot write rows into '" + std::string(table) + "': there is no such table");
  Target t;
  t.name = found.column_text(0);
  const std::string create_sql = lower_case(found.column_is_null(1) ? "" : found.column_text(1));
  found = Statement();
  t.replicated = impl.table_by_name(t.name);

  Statement info(db, "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)");
  info.bind(1, t.name);
  std::vector<std::string> generated;
  while (info.step()) {
    const auto hidden = info.column_int(3);
    if (hidden == 2 || hidden == 3) generated.push_back(lower_case(info.column_text(0)));
    if (hidden != 0) continue;
    Column c;
    c.name = info.column_text(0);
    c.affinity = affinity_of_declared_type(info.column_text(1));
    c.key_position = static_cast<int>(info.column_int(2));
    t.columns.push_back(std::move(c));
  }
  info = Statement();
  std::stable_sort(t.columns.begin(), t.columns.end(), [](const Column& a, const Column& b) {
    auto rank = [](const Column& c) { return c.key_position ? c.key_position : 1 << 20; };
    return rank(a) < rank(b);
  });
  for (const auto& c : t.columns)
    if (c.key_position) ++t.key_count;
  if (t.key_count == 0)
    throw Error(ErrorCode::kSchema, "cannot write rows into '" + t.name +
                                        "': it has no PRIMARY KEY, so a row that is already "
                                        "there cannot be told from a new one");
  if (t.replicated) {
    for (auto& c : t.columns)
      if (const auto* info_column = [&]() -> const ColumnInfo* {
            for (const auto& r : t.replicated->columns)
              if (lower_case(r.name) == lower_case(c.name)) return &r;
            return nullptr;
          }()) {
        c.kind = info_column->kind;
        c.id = info_column->id;
      }
    t.rowid_key = t.replicated->rowid_key;
  }

  for (std::size_t i = 0; i < given.size(); ++i) {
    const std::string name = lower_case(given[i]);
    auto it = std::find_if(t.columns.begin(), t.columns.end(),
                           [&](const Column& c) { return lower_case(c.name) == name; });
    if (it == t.columns.end()) {
      const bool is_generated =
          std::find(generated.begin(), generated.end(), name) != generated.end();
      throw Error(ErrorCode::kInvalidArgument,
                  "table '" + t.name + "' has no column '" + given[i] + "'" +
                      (is_generated ? " that can be written: it is generated" : ""));
    }
    if (it->given)
      throw Error(ErrorCode::kInvalidArgument,
                  "column '" + it->name + "' of table '" + t.name + "' is given twice");
    it->given = i;
  }
  for (std::size_t i = 0; i < t.key_count; ++i)
    if (!t.columns[i].given)
      throw Error(
          ErrorCode::kInvalidArgument,
          "rows for table '" + t.name + "' must give its key column '" + t.columns[i].name + "'");

  // Writes that must be captured as well: an application trigger's, and those of a REPLACE
  // that a conflict clause declared in the table may turn an insert or update into; and the
  // cascades of foreign keys that refer to this table's columns.
  const bool own_triggers =
      exists(db,
             "SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE "
             "NOCASE AND name NOT GLOB 'lattice_[0-9]*_*' UNION ALL SELECT 1 FROM "
             "sqlite_temp_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE",
             t.name);
  const bool cascades = exists(db,
                               "SELECT 1 FROM sqlite_schema s, pragma_foreign_key_list(s.name) f "
                               "WHERE s.type = 'table' AND f.\"table\" = ?1 COLLATE NOCASE AND "
                               "f.on_update NOT IN ('NO ACTION', 'RESTRICT')",
                               t.name);
  const bool conflict_clause = create_sql.find("conflict") != std::string::npos;
  t.direct =
      t.replicated && path == BulkPath::kAuto && !own_triggers && !cascades && !conflict_clause;
  const bool self_reference = exists(db,
                                     "SELECT 1 FROM pragma_foreign_key_list(?1) WHERE \"table\" "
                                     "= ?1 COLLATE NOCASE",
                                     t.name);
  t.sortable = t.replicated && t.replicated->uniques.empty() && !self_reference;
  return t;
}

class BulkWriter {
 public:
  BulkWriter(Replica::Impl& impl, Target& target, const std::vector<std::string>& columns,
             const std::vector<std::vector<crdt::Value>>& rows)
      : impl_(impl), db_(impl.db), t_(target), given_(columns), rows_(rows) {}

  BulkResult run();

 private:
  enum class Outcome { kInserted, kUpdated, kUnchanged };

  void prepare();
  void prepare_metadata();
  void write_all(bool careful);
  void sort_by_key(std::vector<std::size_t>& order) const;
  std::optional<Refusal> check(const std::vector<crdt::Value>& row) const;
  // Writes one row; returns its outcome or why it was refused before anything was written.
  // Throws Refusal when it was refused after its application write.
  std::variant<Outcome, Refusal> write_row(const std::vector<crdt::Value>& row);
  std::variant<Outcome, Refusal> write_direct(const std::vector<crdt::Value>& row);
  std::variant<Outcome, Refusal> write_statement(const std::vector<crdt::Value>& row);
  void record_insert(const std::vector<crdt::Value>& row);
  void record_update(const std::vector<crdt::Value>& row, const std::string& pk,
                     const std::vector<std::size_t>& changed,
                     const std::vector<crdt::Value>& old_counters);
  // The key as stored: SQLite converts a value to its column's affinity on insert.
  std::optional<std::vector<crdt::Value>> stored_key(const std::vector<crdt::Value>& row) const;
  void first_write();
  void run_metadata(Statement& s);
  Refusal refusal_of(int rc, const std::string& message) const;
  std::string named_check(std::string_view name) const;
  void event(std::vector<crdt::Value> key, std::vector<std::string> columns);

  const Column& key(std::size_t i) const { return t_.columns[i]; }
  void bind_given(Statement& s, const std::vector<crdt::Value>& row) {
    for (std::size_t i = 0; i < row.size(); ++i) s.bind_borrowed(static_cast<int>(i + 1), row[i]);
  }

  Replica::Impl& impl_;
  sqlite3* db_;
  Target& t_;
  const std::vector<std::string>& given_;
  const std::vector<std::vector<crdt::Value>>& rows_;

  // The given non-key columns, and the counters among them, by index into t_.columns.
  std::vector<std::size_t> set_columns_, counter_columns_;
  bool counters_not_given_ = false;
  Statement insert_, probe_, update_, upsert_, readback_;
  Statement bump_, rows_insert_, rows_reinsert_, cells_clear_, cell_set_, undo_fresh_, undo_,
      counter_fresh_, counter_set_, counter_add_;
  bool bumped_ = false;
  std::vector<ChangeEvent> events_;
  std::size_t pending_start_ = 0;  // Replica::Impl::pending_events before this write
  BulkResult result_;
};

void BulkWriter::prepare() {
  const std::string table = quote_identifier(t_.name);
  std::string names, params, keys, key_where, sets, changed;
  for (std::size_t i = 0; i < given_.size(); ++i) {
    names += std::string(i ? ", " : "") + quote_identifier(given_[i]);
    params += std::string(i ? ", " : "") + "?" + std::to_string(i + 1);
  }
  for (std::size_t i = 0; i < t_.key_count; ++i) {
    const std::string n = quote_identifier(key(i).name);
    keys += std::string(i ? ", " : "") + n;
    key_where += std::string(i ? " AND " : "") + n + " = ?" + std::to_string(*key(i).given + 1);
  }
  // Changed as the capture triggers compare (triggers.cpp, changed()): byte for byte, type
  // included, the sign of a zero where a column without affinity keeps it. Against a bound
  // parameter, the comparison applies the column's affinity to it first, as an insert would;
  // only a column without affinity needs its type compared too.
  std::string flags;
  for (std::size_t c = t_.key_count; c < t_.columns.size(); ++c) {
    const Column& col = t_.columns[c];
    if (!col.given) {
      if (col.kind == crdt::ColumnKind::kCounter) counters_not_given_ = true;
      continue;
    }
    set_columns_.push_back(c);
    if (col.kind == crdt::ColumnKind::kCounter) counter_columns_.push_back(c);
    const std::string n = quote_identifier(col.name), p = "?" + std::to_string(*col.given + 1);
    sets += std::string(sets.empty() ? "" : ", ") + n + " = " + p;
    std::string flag = "(" + n + " IS NOT " + p + " COLLATE BINARY";
    std::string excluded = "(" + table + "." + n + " IS NOT excluded." + n + " COLLATE BINARY";
    if (col.affinity == Affinity::kBlob) {
      flag += " OR typeof(" + n + ") <> typeof(" + p + ") OR lattice_negative_zero(" + n +
              ") <> lattice_negative_zero(" + p + ")";
      excluded += " OR typeof(" + table + "." + n + ") <> typeof(excluded." + n +
                  ") OR lattice_negative_zero(" + table + "." + n +
                  ") <> lattice_negative_zero(excluded." + n + ")";
    }
    flags += ", " + flag + ")";
    changed += std::string(changed.empty() ? "" : " OR ") + excluded + ")";
  }
  std::string counters;
  for (std::size_t c : counter_columns_) counters += ", " + quote_identifier(t_.columns[c].name);

  probe_ = Statement(
      db_, "SELECT " + keys + flags + counters + " FROM " + table + " WHERE " + key_where);
  if (!t_.direct) {
    std::string upsert =
        "INSERT INTO " + table + "(" + names + ") VALUES (" + params + ") ON CONFLICT(" + keys;
    if (set_columns_.empty()) {
      upsert += ") DO NOTHING";
    } else {
      upsert += ") DO UPDATE SET ";
      for (std::size_t i = 0; i < set_columns_.size(); ++i) {
        const std::string n = quote_identifier(t_.columns[set_columns_[i]].name);
        upsert += std::string(i ? ", " : "") + n + " = excluded." + n;
      }
      upsert += " WHERE " + changed;
    }
    upsert_ = Statement(db_, upsert);
    return;
  }
  insert_ = Statement(db_, "INSERT INTO " + table + "(" + names + ") VALUES (" + params +
                               ") ON CONFLICT(" + keys + ") DO NOTHING");
  if (!sets.empty())
    update_ = Statement(db_, "UPDATE " + table + " SET " + sets + " WHERE " + key_where);
  std::string all_counters;
  for (const auto& c : t_.columns)
    if (c.kind == crdt::ColumnKind::kCounter) all_counters += ", " + quote_identifier(c.name);
  readback_ =
      Statement(db_, "SELECT " + keys + all_counters + " FROM " + table + " WHERE " + key_where);
  prepare_metadata();
}

// The statements of the capture triggers (triggers.cpp), with the key and the values bound.
void BulkWriter::prepare_metadata() {
  const TableInfo& info = *t_.replicated;
  const std::string rows = info.rows_table(), cells = info.cells_table(),
                    parts = info.counters_table();
  bump_ = Statement(db_, "UPDATE lattice_local SET seq = ?1, hlc = ?2 WHERE id = 0 AND seq < ?1");
  rows_insert_ = Statement(db_, "INSERT INTO " + rows +
                                    "(pk, cl, hlc, site, seq) VALUES (?1, 1, ?2, 0, ?3) "
                                    "ON CONFLICT(pk) DO NOTHING");
  rows_reinsert_ = Statement(db_, "UPDATE " + rows +
                                      " SET cl = cl + 1 - (cl % 2), hlc = ?2, site = 0, seq = ?3 "
                                      "WHERE pk = ?1");
  cells_clear_ = Statement(db_, "DELETE FROM " + cells + " WHERE pk = ?1");
  cell_set_ = Statement(db_, "INSERT INTO " + cells +
                                 "(pk, col, cl, hlc, site, seq) SELECT r.pk, ?2, r.cl, ?3, 0, ?4 "
                                 "FROM " +
                                 rows +
                                 " r WHERE r.pk = ?1 ON CONFLICT(pk, col) DO UPDATE SET "
                                 "cl = excluded.cl, hlc = excluded.hlc, site = 0, seq = "
                                 "excluded.seq");
  if (!info.has_counters) return;
  undo_fresh_ = Statement(db_,
                          "INSERT OR IGNORE INTO lattice_counter_undo(seq, table_id, pk, col, "
                          "had, cl, part_seq, total) VALUES (?1, ?2, ?3, ?4, 0, NULL, NULL, NULL)");
  undo_ = Statement(db_,
                    "INSERT OR IGNORE INTO lattice_counter_undo(seq, table_id, pk, col, had, cl, "
                    "part_seq, total) SELECT ?1, ?2, ?3, ?4, x.pk IS NOT NULL, x.cl, x.seq, "
                    "x.total FROM (SELECT 1) LEFT JOIN " +
                        parts + " x ON x.pk = ?3 AND x.col = ?4 AND x.site = 0");
  counter_fresh_ = Statement(db_, "INSERT INTO " + parts +
                                      "(pk, col, site, cl, seq, total) VALUES (?1, ?2, 0, 1, ?3, "
                                      "?4)");
  counter_set_ = Statement(
      db_,
      "INSERT INTO " + parts + "(pk, col, site, cl, seq, total) SELECT r.pk, ?2, 0, r.cl, ?3, " +
          "?4 - coalesce((SELECT sum(x.total) FROM " + parts +
          " x WHERE x.pk = r.pk AND x.col = ?2 AND x.site <> 0 AND x.cl = r.cl), 0) FROM " + rows +
          " r WHERE r.pk = ?1 ON CONFLICT(pk, col, site) DO UPDATE SET cl = excluded.cl, "
          "seq = excluded.seq, total = excluded.total");
  counter_add_ = Statement(
      db_, "INSERT INTO " + parts +
               "(pk, col, site, cl, seq, total) SELECT r.pk, ?2, 0, r.cl, ?3, " + "?4 - ?5 FROM " +
               rows +
               " r WHERE r.pk = ?1 ON CONFLICT(pk, col, site) DO UPDATE SET total = CASE WHEN cl "
               "= excluded.cl THEN total + excluded.total ELSE excluded.total END, cl = "
               "excluded.cl, seq = excluded.seq");
}

// What the capture triggers refuse before a row is written, said as they say it.
std::optional<Refusal> BulkWriter::check(const std::vector<crdt::Value>& row) const {
  for (std::size_t i = 0; i < t_.key_count; ++i) {
    const Column& c = key(i);
    const crdt::Value& v = row[*c.given];
    if (std::holds_alternative<std::monostate>(v))
      return Refusal{c.name, "the primary key of a row of " + t_.name + " may not be NULL"};
    if (c.affinity == Affinity::kBlob && std::holds_alternative<double>(v))
      return Refusal{c.name, "key column " + t_.name + "." + c.name +
                                 " has no type, so a real key such as 1.0 would be the integer "
                                 "key 1 to SQLite but another key to other devices"};
  }
  if (t_.rowid_key) {
    const crdt::Value& id = row[*key(0).given];
    if (const auto* i = std::get_if<std::int64_t>(&id); i && *i == -1)
      return Refusal{key(0).name, "table " + t_.name +
                                      " is replicated, and SQLite would pick the id -1 itself "
                                      "(give ids unique across devices, e.g. lattice_id())"};
  }
  for (std::size_t c : counter_columns_) {
    const Column& col = t_.columns[c];
    if (!std::holds_alternative<std::int64_t>(row[*col.given]) || col.affinity == Affinity::kText ||
        col.affinity == Affinity::kReal)
      return Refusal{col.name, "counter column " + t_.name + "." + col.name +
                                   " takes integer values only, not " +
                                   crdt::value_type_name(row[*col.given])};
  }
  return std::nullopt;
}

std::optional<std::vector<crdt::Value>> BulkWriter::stored_key(
    const std::vector<crdt::Value>& row) const {
  std::vector<crdt::Value> out;
  out.reserve(t_.key_count);
  for (std::size_t i = 0; i < t_.key_count; ++i) {
    const crdt::Value& v = row[*key(i).given];
    bool as_given = true;
    switch (key(i).affinity) {
      case Affinity::kBlob:
        break;
      case Affinity::kText:
        as_given = std::holds_alternative<std::string>(v) || std::holds_alternative<crdt::Blob>(v);
        break;
      case Affinity::kInteger:
      case Affinity::kNumeric:
        as_given = std::holds_alternative<std::int64_t>(v) || std::holds_alternative<crdt::Blob>(v);
        break;
      case Affinity::kReal:
        as_given = std::holds_alternative<double>(v) || std::holds_alternative<crdt::Blob>(v);
        break;
    }
    if (!as_given) return std::nullopt;
    out.push_back(v);
  }
  return out;
}

Refusal BulkWriter::refusal_of(int, const std::string& message) const {
  std::string column = columns_named(message, t_.name);
  if (column.empty() && message.rfind(kCheckFailed, 0) == 0) {
    const std::string_view checked = std::string_view(message).substr(kCheckFailed.size());
    column = columns_in(checked, t_);
    if (column.empty()) column = columns_in(named_check(checked), t_);
  }
  return Refusal{column, message};
}

// The expression of the CHECK constraint called `name` ("positive_price"), read from the
// table's declaration; empty if there is none.
std::string BulkWriter::named_check(std::string_view name) const {
  Statement declared(db_, "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?");
  declared.bind(1, t_.name);
  if (!declared.step()) return "";
  const std::string sql = declared.column_text(0), lower = lower_case(sql);
  const std::string wanted = lower_case(name);
  for (std::size_t at = lower.find(wanted); at != std::string::npos;
       at = lower.find(wanted, at + 1)) {
    // CONSTRAINT name CHECK ( expression ), the name perhaps quoted.
    std::size_t before = lower.find_last_not_of(" \t\r\n\"`[", at == 0 ? 0 : at - 1);
    if (before == std::string::npos || before < 9 ||
        lower.compare(before - 9, 10, "constraint") != 0)
      continue;
    std::size_t open = lower.find_first_not_of(" \t\r\n\"`]", at + wanted.size());
    if (open == std::string::npos || lower.compare(open, 5, "check") != 0) continue;
    open = lower.find('(', open + 5);
    if (open == std::string::npos) continue;
    int depth = 0;
    for (std::size_t end = open; end < sql.size(); ++end) {
      if (sql[end] == '(') ++depth;
      if (sql[end] == ')' && --depth == 0) return sql.substr(open + 1, end - open - 1);
    }
  }
  return "";
}

void BulkWriter::first_write() {
  if (bumped_) return;
  impl_.ensure_transaction_clock();
  // The bump's own trigger logs the transaction (lattice_local_log) only while capture is on.
  impl_.capture_enabled = true;
  try {
    bump_.bind(1, static_cast<std::int64_t>(impl_.txn_seq))
        .bind(2, static_cast<std::int64_t>(impl_.txn_hlc.value));
    bump_.run();
  } catch (...) {
    impl_.capture_enabled = false;
    throw;
  }
  impl_.capture_enabled = false;
  bumped_ = true;
}

// A metadata statement: its failure is the row's (a counter past 2^63-1 fails the CHECK on
// totals, as it fails the trigger's statement), and comes after the row's application write.
void BulkWriter::run_metadata(Statement& s) {
  std::string message;
  const int rc = s.try_run(message);
  if (rc == SQLITE_DONE) return;
  if (row_failure(rc)) throw refusal_of(rc, message);
  throw_sqlite(db_, rc, message);
}

void BulkWriter::event(std::vector<crdt::Value> key_values, std::vector<std::string> columns) {
  if (impl_.listeners.empty()) return;
  ChangeEvent e;
  e.origin = ChangeEvent::Origin::kLocal;
  e.table = t_.name;
  e.primary_key = std::move(key_values);
  e.columns = std::move(columns);
  events_.push_back(std::move(e));
}

// The AFTER INSERT trigger's statements (triggers.cpp, insert()).
void BulkWriter::record_insert(const std::vector<crdt::Value>& row) {
  std::optional<std::vector<crdt::Value>> key_values = stored_key(row);
  std::vector<crdt::Value> counter_values;
  if (!key_values || counters_not_given_) {
    readback_.reset();
    for (std::size_t i = 0; i < t_.key_count; ++i)
      readback_.bind_borrowed(static_cast<int>(*key(i).given + 1), row[*key(i).given]);
    if (!readback_.step()) throw Error(ErrorCode::kInternal, "an inserted row is not there");
    key_values.emplace();
    for (std::size_t i = 0; i < t_.key_count; ++i)
      key_values->push_back(readback_.column(static_cast<int>(i)));
    for (int i = static_cast<int>(t_.key_count); i < readback_.column_count(); ++i)
      counter_values.push_back(readback_.column(i));
    readback_.reset();
  } else {
    for (const auto& c : t_.columns)
      if (c.kind == crdt::ColumnKind::kCounter) counter_values.push_back(row[*c.given]);
  }
  const std::string pk = pack_primary_key(*key_values);
  first_write();
  const auto seq = static_cast<std::int64_t>(impl_.txn_seq);
  const auto hlc = static_cast<std::int64_t>(impl_.txn_hlc.value);

  rows_insert_.bind_blob(1, pk).bind(2, hlc).bind(3, seq);
  run_metadata(rows_insert_);
  const bool fresh = sqlite3_changes(db_) == 1;
  if (!fresh) {
    // A deleted row comes back in a new incarnation; a held one keeps its own.
    rows_reinsert_.bind_blob(1, pk).bind(2, hlc).bind(3, seq);
    run_metadata(rows_reinsert_);
    cells_clear_.bind_blob(1, pk);
    run_metadata(cells_clear_);
  }
  std::size_t n = 0;
  for (const auto& c : t_.columns) {
    if (c.kind != crdt::ColumnKind::kCounter) continue;
    const crdt::Value& value = counter_values[n++];
    if (!std::holds_alternative<std::int64_t>(value))
      throw Refusal{c.name, "counter column " + t_.name + "." + c.name +
                                " takes integer values only, not " + crdt::value_type_name(value)};
    const auto col = static_cast<std::int64_t>(c.id);
    const auto table_id = static_cast<std::int64_t>(t_.replicated->id);
    Statement& undo = fresh ? undo_fresh_ : undo_;
    undo.bind(1, seq).bind(2, table_id).bind_blob(3, pk).bind(4, col);
    run_metadata(undo);
    Statement& part = fresh ? counter_fresh_ : counter_set_;
    part.bind_blob(1, pk).bind(2, col).bind(3, seq).bind(4, std::get<std::int64_t>(value));
    run_metadata(part);
  }
  if (!impl_.listeners.empty()) {
    std::vector<std::string> columns;
    for (std::size_t c = t_.key_count; c < t_.columns.size(); ++c)
      columns.push_back(t_.columns[c].name);
    event(std::move(*key_values), std::move(columns));
  }
}

// The AFTER UPDATE triggers' statements (triggers.cpp, lww_update() and counter_updates()), for
// the columns whose value changed.
void BulkWriter::record_update(const std::vector<crdt::Value>& row, const std::string& pk,
                               const std::vector<std::size_t>& changed,
                               const std::vector<crdt::Value>& old_counters) {
  first_write();
  const auto seq = static_cast<std::int64_t>(impl_.txn_seq);
  const auto hlc = static_cast<std::int64_t>(impl_.txn_hlc.value);
  for (std::size_t c : changed) {
    const Column& col = t_.columns[c];
    if (col.kind != crdt::ColumnKind::kLww) continue;
    cell_set_.bind_blob(1, pk).bind(2, static_cast<std::int64_t>(col.id)).bind(3, hlc).bind(4, seq);
    run_metadata(cell_set_);
  }
  for (std::size_t n = 0; n < counter_columns_.size(); ++n) {
    const Column& col = t_.columns[counter_columns_[n]];
    if (std::find(changed.begin(), changed.end(), counter_columns_[n]) == changed.end()) continue;
    const auto id = static_cast<std::int64_t>(col.id);
    undo_.bind(1, seq)
        .bind(2, static_cast<std::int64_t>(t_.replicated->id))
        .bind_blob(3, pk)
        .bind(4, id);
    run_metadata(undo_);
    counter_add_.bind_blob(1, pk).bind(2, id).bind(3, seq);
    counter_add_.bind_borrowed(4, row[*col.given]).bind_borrowed(5, old_counters[n]);
    run_metadata(counter_add_);
  }
}

std::variant<BulkWriter::Outcome, Refusal> BulkWriter::write_direct(
    const std::vector<crdt::Value>& row) {
  std::string message;
  insert_.reset();
  bind_given(insert_, row);
  int rc = insert_.try_run(message);
  if (rc != SQLITE_DONE) {
    if (row_failure(rc)) return refusal_of(rc, message);
    throw_sqlite(db_, rc, message);
  }
  if (sqlite3_changes(db_) == 1) {
    record_insert(row);
    return Outcome::kInserted;
  }
  // The key is there: compare, then update the columns given.
  probe_.reset();
  bind_given(probe_, row);
  if (!probe_.step()) {
    probe_.reset();
    return Refusal{"", "SQLite ignored the row"};
  }
  std::vector<crdt::Value> key_values;
  for (std::size_t i = 0; i < t_.key_count; ++i)
    key_values.push_back(probe_.column(static_cast<int>(i)));
  std::vector<std::size_t> changed;
  for (std::size_t i = 0; i < set_columns_.size(); ++i)
    if (probe_.column_int(static_cast<int>(t_.key_count + i)) != 0)
      changed.push_back(set_columns_[i]);
  std::vector<crdt::Value> old_counters;
  for (std::size_t i = 0; i < counter_columns_.size(); ++i)
    old_counters.push_back(probe_.column(static_cast<int>(t_.key_count + set_columns_.size() + i)));
  probe_.reset();
  if (changed.empty()) return Outcome::kUnchanged;
  update_.reset();
  bind_given(update_, row);
  rc = update_.try_run(message);
  if (rc != SQLITE_DONE) {
    if (row_failure(rc)) return refusal_of(rc, message);
    throw_sqlite(db_, rc, message);
  }
  record_update(row, pack_primary_key(key_values), changed, old_counters);
  if (!impl_.listeners.empty()) {
    std::vector<std::string> columns;
    for (std::size_t c : changed) columns.push_back(t_.columns[c].name);
    event(std::move(key_values), std::move(columns));
  }
  return Outcome::kUpdated;
}

std::variant<BulkWriter::Outcome, Refusal> BulkWriter::write_statement(
    const std::vector<crdt::Value>& row) {
  probe_.reset();
  bind_given(probe_, row);
  const bool present = probe_.step();
  probe_.reset();
  std::string message;
  upsert_.reset();
  bind_given(upsert_, row);
  const int rc = upsert_.try_run(message);
  if (rc != SQLITE_DONE) {
    // RAISE(ROLLBACK) in a trigger ends the whole transaction, not just the row.
    if (row_failure(rc) && !sqlite3_get_autocommit(db_)) return refusal_of(rc, message);
    throw_sqlite(db_, rc, message);
  }
  if (sqlite3_changes(db_) == 0) {
    if (present) return Outcome::kUnchanged;
    return Refusal{"", "a trigger or conflict clause of " + t_.name + " ignored the row"};
  }
  return present ? Outcome::kUpdated : Outcome::kInserted;
}

std::variant<BulkWriter::Outcome, Refusal> BulkWriter::write_row(
    const std::vector<crdt::Value>& row) {
  if (auto refusal = check(row)) return *refusal;
  return t_.direct ? write_direct(row) : write_statement(row);
}

// Rows in key order, rows of one key in the order given. The common key, one text column, is
// sorted as bytes (as its BINARY index orders it) without going through crdt::Value.
void BulkWriter::sort_by_key(std::vector<std::size_t>& order) const {
  const std::size_t first = *key(0).given;
  const bool text_keys =
      t_.key_count == 1 && std::all_of(rows_.begin(), rows_.end(), [&](const auto& row) {
        return std::holds_alternative<std::string>(row[first]);
      });
  if (text_keys) {
    struct Entry {
      std::string_view key;
      std::size_t index;
    };
    std::vector<Entry> entries;
    entries.reserve(rows_.size());
    for (std::size_t i = 0; i < rows_.size(); ++i)
      entries.push_back({std::get<std::string>(rows_[i][first]), i});
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      const int c = a.key.compare(b.key);
      return c < 0 || (c == 0 && a.index < b.index);
    });
    for (std::size_t i = 0; i < entries.size(); ++i) order[i] = entries[i].index;
    return;
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    for (std::size_t i = 0; i < t_.key_count; ++i) {
      const crdt::Value &x = rows_[a][*key(i).given], &y = rows_[b][*key(i).given];
      if (x < y) return true;
      if (y < x) return false;
    }
    return false;
  });
}

void BulkWriter::write_all(bool careful) {
  result_ = BulkResult();
  events_.clear();
  if (impl_.pending_events.size() > pending_start_) impl_.pending_events.resize(pending_start_);
  bumped_ = false;
  std::vector<std::size_t> order(rows_.size());
  std::iota(order.begin(), order.end(), 0);
  if (t_.direct && t_.sortable) sort_by_key(order);
  for (std::size_t index : order) {
    const std::size_t events_mark = events_.size(), pending_mark = impl_.pending_events.size();
    if (careful) exec_sql(db_, "SAVEPOINT lattice_bulk_row");
    std::variant<Outcome, Refusal> outcome;
    try {
      outcome = write_row(rows_[index]);
      int deferred = 0, highest = 0;
      if (careful && std::holds_alternative<Outcome>(outcome) &&
          sqlite3_db_status(db_, SQLITE_DBSTATUS_DEFERRED_FKS, &deferred, &highest, 0) ==
              SQLITE_OK &&
          deferred > 0)
        throw Refusal{"",
                      "FOREIGN KEY constraint failed (a deferred foreign key of " + t_.name + ")"};
    } catch (const Refusal& refusal) {
      if (!careful) throw RetryCarefully{};
      exec_sql(db_, "ROLLBACK TO lattice_bulk_row");
      outcome = refusal;
    }
    if (careful) exec_sql(db_, "RELEASE lattice_bulk_row");
    if (const auto* refusal = std::get_if<Refusal>(&outcome)) {
      // The listeners hear nothing of a row that was not written (the pre-update hook saw the
      // statement path's attempt).
      events_.resize(events_mark);
      if (impl_.pending_events.size() > pending_mark) impl_.pending_events.resize(pending_mark);
      result_.errors.push_back({index, refusal->column, refusal->reason});
      continue;
    }
    switch (std::get<Outcome>(outcome)) {
      case Outcome::kInserted:
        ++result_.inserted;
        break;
      case Outcome::kUpdated:
        ++result_.updated;
        break;
      case Outcome::kUnchanged:
        ++result_.unchanged;
        break;
    }
  }
  std::sort(result_.errors.begin(), result_.errors.end(),
            [](const BulkRowError& a, const BulkRowError& b) { return a.row < b.row; });
}

BulkResult BulkWriter::run() {
  prepare();
  pending_start_ = impl_.pending_events.size();
  // The direct path writes with capture suspended; the commit is made with capture on, so that
  // it counts as a local write transaction (held rows are retried after it). A careful pass
  // replaces a failed fast one in a new transaction (a savepoint around the fast pass would
  // copy every page it changes to a sub-journal), under the same sequence number and clock
  // when no other connection wrote in between.
  struct {
    std::uint64_t seq = 0, tag = 0;
    crdt::Hlc hlc;
  } clock;
  for (bool careful : {false, true}) {
    exec_sql(db_, "BEGIN IMMEDIATE");
    try {
      if (clock.seq != 0) {
        Statement local(db_, "SELECT seq FROM lattice_local WHERE id = 0");
        if (local.step() && static_cast<std::uint64_t>(local.column_int(0)) + 1 == clock.seq) {
          impl_.txn_seq = clock.seq;
          impl_.txn_hlc = clock.hlc;
          impl_.txn_tag = clock.tag;
        }
      }
      {
        std::optional<CaptureSuspended> suspended;
        if (t_.direct) suspended.emplace(impl_);
        write_all(careful);
      }
      // A deferred foreign key would fail the commit: find its row in the careful pass.
      int deferred = 0, highest = 0;
      if (!careful &&
          sqlite3_db_status(db_, SQLITE_DBSTATUS_DEFERRED_FKS, &deferred, &highest, 0) ==
              SQLITE_OK &&
          deferred > 0)
        throw RetryCarefully{};
      exec_sql(db_, "COMMIT");
      break;
    } catch (const RetryCarefully&) {
      clock.seq = impl_.txn_seq;
      clock.hlc = impl_.txn_hlc;
      clock.tag = impl_.txn_tag;
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    } catch (...) {
      if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }
  impl_.pending_events.insert(impl_.pending_events.end(), std::make_move_iterator(events_.begin()),
                              std::make_move_iterator(events_.end()));
  return std::move(result_);
}

}  // namespace

BulkResult Replica::bulk_write(std::string_view table, const std::vector<std::string>& columns,
                               const std::vector<std::vector<crdt::Value>>& rows, BulkPath path) {
  Impl& impl = *impl_;
  if (!sqlite3_get_autocommit(impl.db))
    throw Error(ErrorCode::kState,
                "bulk writes cannot run inside an open transaction; commit first");
  impl.refresh();
  Target target = describe(impl, table, columns, path);
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (rows[i].size() != columns.size())
      throw Error(ErrorCode::kInvalidArgument, "row " + std::to_string(i) + " has " +
                                                   std::to_string(rows[i].size()) + " values for " +
                                                   std::to_string(columns.size()) + " columns");
  BulkResult result;
  if (!rows.empty()) result = BulkWriter(impl, target, columns, rows).run();
  impl.settle_after_local_writes();
  impl.deliver_events();
  return result;
}

}  // namespace lattice::storage
