// lattice_replicate(): validating a table, giving it stable ids, creating its metadata tables
// and the capture triggers; and loading the catalog back. docs/architecture.md shows the
// triggers' effect; docs/crdt-semantics.md says what each write means.

#include <algorithm>
#include <set>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"

namespace lattice::storage {

namespace {

// Stable ids from names: two devices that replicate the same table independently agree on its
// ids, and the ids stay with the table and columns when they are renamed later.
std::uint32_t stable_id(std::string_view name) {
  std::uint32_t hash = 2166136261u;
  for (char c : lower_case(name)) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 16777619u;
  }
  hash &= 0x7fffffffu;
  return hash == 0 ? 1 : hash;
}

// Parses {"column": "lww" | "counter", ...}.
std::map<std::string, crdt::ColumnKind> parse_column_types(std::string_view json,
                                                           std::string_view table) {
  auto fail = [&](const std::string& why) -> Error {
    return Error(ErrorCode::kInvalidArgument,
                 "column types for table '" + std::string(table) + "': " + why);
  };
  std::map<std::string, crdt::ColumnKind> out;
  std::size_t i = 0;
  auto skip = [&] {
    while (i < json.size() && std::isspace(static_cast<unsigned char>(json[i]))) ++i;
  };
  auto expect = [&](char c) {
    skip();
    if (i >= json.size() || json[i] != c)
      throw fail(std::string("expected '") + c + "' at offset " + std::to_string(i));
    ++i;
  };
  auto string = [&] {
    skip();
    if (i >= json.size() || json[i] != '"')
      throw fail("expected a string at offset " + std::to_string(i));
    std::string s;
    for (++i; i < json.size() && json[i] != '"'; ++i) {
      if (json[i] == '\\') {
        if (++i >= json.size()) break;
      }
      s += json[i];
    }
    if (i >= json.size()) throw fail("unterminated string");
    ++i;
    return s;
  };
  expect('{');
  skip();
  if (i < json.size() && json[i] == '}') {
    ++i;
  } else {
    for (;;) {
      std::string column = string();
      expect(':');
      std::string kind = string();
      if (kind == "lww")
        out[lower_case(column)] = crdt::ColumnKind::kLww;
      else if (kind == "counter")
        out[lower_case(column)] = crdt::ColumnKind::kCounter;
      else
        throw fail("column '" + column + "' has unknown type '" + kind + "' (known: lww, counter)");
      skip();
      if (i < json.size() && json[i] == ',') {
        ++i;
        continue;
      }
      expect('}');
      break;
    }
  }
  skip();
  if (i != json.size()) throw fail("unexpected text at offset " + std::to_string(i));
  return out;
}

std::string key_expression(const TableInfo& t, const char* row) {
  std::string out = "lattice_pk(";
  for (std::size_t i = 0; i < t.key_count; ++i) {
    if (i) out += ", ";
    out += std::string(row) + "." + quote_identifier(t.columns[i].name);
  }
  return out + ")";
}

// SQL string literal.
std::string literal(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string trigger_sql(const TableInfo& t) {
  const std::string id = std::to_string(t.id);
  const std::string table = quote_identifier(t.name);
  const std::string rows = t.rows_table(), cells = t.cells_table(), counters = t.counters_table();
  const std::string new_key = key_expression(t, "NEW"), old_key = key_expression(t, "OLD");
  // Persists this transaction's sequence number and clock once, at its first write.
  const std::string bump =
      "UPDATE lattice_local SET seq = lattice_seq(), hlc = lattice_hlc() "
      "WHERE id = 0 AND seq < lattice_seq();\n";
  std::string sql;

  std::string key_null, key_changed, key_columns;
  for (std::size_t i = 0; i < t.key_count; ++i) {
    const std::string c = quote_identifier(t.columns[i].name);
    key_null += std::string(i ? " OR " : "") + "NEW." + c + " IS NULL";
    key_changed += std::string(i ? " OR " : "") + "OLD." + c + " IS NOT NEW." + c;
    key_columns += std::string(i ? ", " : "") + c;
  }
  auto counter_check = [&](const ColumnInfo& c) {
    return "SELECT RAISE(ABORT, " +
           literal("lattice: counter column " + t.name + "." + c.name +
                   " takes integer values only") +
           ") WHERE typeof(NEW." + quote_identifier(c.name) + ") <> 'integer';\n";
  };

  // Keeps the local counter component as it was before this transaction first changed it, so
  // that Replica::rekey can split later increments off to a new site id.
  auto counter_undo = [&](const ColumnInfo& c, const std::string& key) {
    const std::string col = std::to_string(c.id);
    return "INSERT OR IGNORE INTO lattice_counter_undo(seq, table_id, pk, col, had, cl, "
           "part_seq, total) SELECT lattice_seq(), " +
           id + ", " + key + ", " + col +
           ", x.pk IS NOT NULL, x.cl, x.seq, x.total FROM (SELECT 1) LEFT JOIN " + counters +
           " x ON x.pk = " + key + " AND x.col = " + col + " AND x.site = 0;\n";
  };

  sql += "CREATE TRIGGER lattice_" + id + "_insert AFTER INSERT ON " + table +
         " WHEN lattice_capture_enabled() BEGIN\n";
  sql += "SELECT RAISE(ABORT, " +
         literal("lattice: the primary key of a row of " + t.name + " may not be NULL") +
         ") WHERE " + key_null + ";\n";
  for (const auto& c : t.columns)
    if (c.kind == crdt::ColumnKind::kCounter) sql += counter_check(c);
  sql += bump;
  sql += "INSERT INTO " + rows + "(pk, cl, hlc, site, seq) VALUES (" + new_key +
         ", 1, lattice_hlc(), 0, lattice_seq()) ON CONFLICT(pk) DO UPDATE SET "
         "cl = cl + 1 - (cl % 2), hlc = excluded.hlc, site = 0, seq = excluded.seq;\n";
  sql += "DELETE FROM " + cells + " WHERE pk = " + new_key + ";\n";
  for (const auto& c : t.columns) {
    if (c.kind != crdt::ColumnKind::kCounter) continue;
    const std::string col = std::to_string(c.id);
    // The local component is what makes the counter read NEW.c in this incarnation.
    sql += counter_undo(c, new_key);
    sql += "INSERT INTO " + counters + "(pk, col, site, cl, seq, total) SELECT r.pk, " + col +
           ", 0, r.cl, lattice_seq(), NEW." + quote_identifier(c.name) +
           " - coalesce((SELECT sum(x.total) FROM " + counters +
           " x WHERE x.pk = r.pk AND x.col = " + col +
           " AND x.site <> 0 AND x.cl = r.cl), 0) FROM " + rows + " r WHERE r.pk = " + new_key +
           " ON CONFLICT(pk, col, site) DO UPDATE SET cl = excluded.cl, seq = excluded.seq, "
           "total = excluded.total;\n";
  }
  sql += "END;\n";

  sql += "CREATE TRIGGER lattice_" + id + "_delete AFTER DELETE ON " + table +
         " WHEN lattice_capture_enabled() BEGIN\n" + bump;
  sql += "INSERT INTO " + rows + "(pk, cl, hlc, site, seq) VALUES (" + old_key +
         ", 2, lattice_hlc(), 0, lattice_seq()) ON CONFLICT(pk) DO UPDATE SET "
         "cl = cl + (cl % 2), hlc = excluded.hlc, site = 0, seq = excluded.seq;\n";
  sql += "DELETE FROM " + cells + " WHERE pk = " + old_key + ";\n";
  sql += "DELETE FROM " + counters + " WHERE pk = " + old_key + ";\n";
  sql += "END;\n";

  sql += "CREATE TRIGGER lattice_" + id + "_update_key BEFORE UPDATE OF " + key_columns + " ON " +
         table + " WHEN lattice_capture_enabled() AND (" + key_changed + ") BEGIN\n";
  sql += "SELECT RAISE(ABORT, " +
         literal("lattice: the primary key of a replicated row cannot change (table " + t.name +
                 "); delete the row and insert it under the new key") +
         ");\nEND;\n";

  // One trigger for every last-writer-wins column, so an UPDATE of several columns enters one
  // trigger program and bumps the clock once; each changed column gets its cell version.
  auto changed = [](const std::string& name) {
    return "(OLD." + name + " IS NOT NEW." + name + " OR typeof(OLD." + name + ") <> typeof(NEW." +
           name + "))";
  };
  std::string lww_names, any_changed, changed_ids;
  for (const auto& c : t.columns) {
    if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
    const std::string name = quote_identifier(c.name);
    const std::string sep = lww_names.empty() ? "" : ", ";
    lww_names += sep + name;
    any_changed += std::string(any_changed.empty() ? "" : " OR ") + changed(name);
    changed_ids += std::string(changed_ids.empty() ? "" : " UNION ALL ") + "SELECT " +
                   std::to_string(c.id) + " AS col WHERE " + changed(name);
  }
  if (!lww_names.empty()) {
    sql += "CREATE TRIGGER lattice_" + id + "_update AFTER UPDATE OF " + lww_names + " ON " +
           table + " WHEN lattice_capture_enabled() AND (" + any_changed + ") BEGIN\n" + bump;
    sql += "INSERT INTO " + cells + "(pk, col, cl, hlc, site, seq) SELECT r.pk, c.col, r.cl, " +
           "lattice_hlc(), 0, lattice_seq() FROM " + rows + " r, (" + changed_ids +
           ") c WHERE r.pk = " + new_key +
           " ON CONFLICT(pk, col) DO UPDATE SET cl = excluded.cl, hlc = excluded.hlc, "
           "site = 0, seq = excluded.seq;\nEND;\n";
  }

  // Counters record the delta, column by column.
  for (const auto& c : t.columns) {
    if (c.kind != crdt::ColumnKind::kCounter) continue;
    const std::string name = quote_identifier(c.name), col = std::to_string(c.id);
    sql += "CREATE TRIGGER lattice_" + id + "_update_" + col + " AFTER UPDATE OF " + name + " ON " +
           table + " WHEN lattice_capture_enabled() AND " + changed(name) + " BEGIN\n";
    sql += counter_check(c) + bump + counter_undo(c, new_key);
    sql += "INSERT INTO " + counters + "(pk, col, site, cl, seq, total) SELECT r.pk, " + col +
           ", 0, r.cl, lattice_seq(), NEW." + name + " - OLD." + name + " FROM " + rows +
           " r WHERE r.pk = " + new_key +
           " ON CONFLICT(pk, col, site) DO UPDATE SET total = CASE WHEN cl = excluded.cl "
           "THEN total + excluded.total ELSE excluded.total END, cl = excluded.cl, "
           "seq = excluded.seq;\nEND;\n";
  }
  return sql;
}

// Rowid tables with a UNIQUE key rather than WITHOUT ROWID: a captured write then appends to
// the table and to the (site, seq) index (whose entries end in the rowid, not the packed key),
// so only the key's own index takes a write at a random place.
std::string metadata_tables_sql(const TableInfo& t) {
  const std::string rows = t.rows_table(), cells = t.cells_table(), counters = t.counters_table();
  return "CREATE TABLE " + rows +
         "(pk BLOB NOT NULL UNIQUE, cl INTEGER NOT NULL, hlc INTEGER NOT NULL,"
         " site INTEGER NOT NULL, seq INTEGER NOT NULL);\n"
         "CREATE INDEX " +
         rows + "_by_seq ON " + rows +
         "(site, seq);\n"
         "CREATE TABLE " +
         cells +
         "(pk BLOB NOT NULL, col INTEGER NOT NULL, cl INTEGER NOT NULL, hlc INTEGER NOT NULL,"
         " site INTEGER NOT NULL, seq INTEGER NOT NULL, UNIQUE (pk, col));\n"
         "CREATE INDEX " +
         cells + "_by_seq ON " + cells +
         "(site, seq);\n"
         "CREATE TABLE " +
         counters +
         "(pk BLOB NOT NULL, col INTEGER NOT NULL, site INTEGER NOT NULL, cl INTEGER NOT NULL,"
         " seq INTEGER NOT NULL, total INTEGER NOT NULL, UNIQUE (pk, col, site));\n"
         "CREATE INDEX " +
         counters + "_by_seq ON " + counters + "(site, seq);\n";
}

// Reads the table's columns from SQLite; fills names, key positions and table positions.
std::vector<ColumnInfo> read_columns(sqlite3* db, std::string_view table, bool for_replicate) {
  Statement info(db, "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)");
  info.bind(1, table);
  std::vector<ColumnInfo> columns;
  int position = 0;
  while (info.step()) {
    const int hidden = static_cast<int>(info.column_int(3));
    ColumnInfo c;
    c.name = info.column_text(0);
    c.key_position = static_cast<int>(info.column_int(2));
    c.table_position = position;
    if (hidden == 2 || hidden == 3) {
      if (for_replicate)
        throw Error(ErrorCode::kSchema, "table '" + std::string(table) +
                                            "' cannot be replicated: column '" + c.name +
                                            "' is generated; replicate the columns it is "
                                            "computed from instead");
      continue;  // generated columns are never replicated
    }
    if (hidden == 1) continue;  // virtual table hidden column
    ++position;
    columns.push_back(std::move(c));
  }
  std::stable_sort(columns.begin(), columns.end(), [](const ColumnInfo& a, const ColumnInfo& b) {
    auto rank = [](const ColumnInfo& c) { return c.key_position ? c.key_position : 1 << 20; };
    return rank(a) < rank(b);
  });
  return columns;
}

}  // namespace

void Replica::Impl::load_catalog() {
  tables.clear();
  tables_by_name.clear();
  Statement select_tables(db, "SELECT id, name FROM lattice_tables ORDER BY id");
  Statement select_columns(
      db, "SELECT id, name, kind, key_position FROM lattice_columns WHERE table_id = ?");
  while (select_tables.step()) {
    auto info = std::make_unique<TableInfo>();
    info->id = static_cast<crdt::TableId>(select_tables.column_int(0));
    info->name = select_tables.column_text(1);
    std::map<std::string, ColumnInfo> by_name;
    select_columns.reset();
    select_columns.bind(1, static_cast<std::int64_t>(info->id));
    while (select_columns.step()) {
      ColumnInfo c;
      c.id = static_cast<crdt::ColumnId>(select_columns.column_int(0));
      c.name = select_columns.column_text(1);
      c.kind = select_columns.column_text(2) == "counter" ? crdt::ColumnKind::kCounter
                                                          : crdt::ColumnKind::kLww;
      c.key_position = static_cast<int>(select_columns.column_int(3));
      by_name[lower_case(c.name)] = c;
    }
    // Table positions come from the live table (for the pre-update hook).
    for (auto& live : read_columns(db, info->name, false)) {
      auto it = by_name.find(lower_case(live.name));
      if (it == by_name.end()) continue;
      it->second.table_position = live.table_position;
      info->columns.push_back(it->second);
    }
    info->key_count = static_cast<std::size_t>(std::count_if(
        info->columns.begin(), info->columns.end(), [](const auto& c) { return c.key_position; }));
    info->has_counters = std::any_of(info->columns.begin(), info->columns.end(), [](const auto& c) {
      return c.kind == crdt::ColumnKind::kCounter;
    });
    tables_by_name[lower_case(info->name)] = info.get();
    tables[info->id] = std::move(info);
  }
}

void Replica::Impl::replicate(std::string_view table_name, std::string_view column_types_json) {
  const std::string table(table_name);
  auto types = parse_column_types(column_types_json, table);

  Statement exists(db, "SELECT name, type, sql FROM sqlite_schema WHERE name = ? COLLATE NOCASE");
  exists.bind(1, table_name);
  if (!exists.step() || exists.column_text(1) != "table")
    throw Error(ErrorCode::kSchema,
                "table '" + table + "' cannot be replicated: there is no such table");
  const std::string name = exists.column_text(0);
  const std::string create_sql = lower_case(exists.column_text(2));
  exists = Statement();
  if (create_sql.rfind("create virtual", 0) == 0)
    throw Error(ErrorCode::kSchema,
                "table '" + name + "' cannot be replicated: it is a virtual table");
  if (lower_case(name).rfind("lattice_", 0) == 0 || lower_case(name).rfind("sqlite_", 0) == 0)
    throw Error(ErrorCode::kSchema, "table '" + name +
                                        "' cannot be replicated: the names lattice_* and "
                                        "sqlite_* are reserved");

  TableInfo info;
  info.name = name;
  info.id = stable_id(name);
  info.columns = read_columns(db, name, true);
  info.key_count = static_cast<std::size_t>(std::count_if(
      info.columns.begin(), info.columns.end(), [](const auto& c) { return c.key_position; }));
  if (info.key_count == 0)
    throw Error(ErrorCode::kSchema,
                "table '" + name +
                    "' cannot be replicated: it has no PRIMARY KEY, and Lattice needs one to "
                    "name a row on every device");

  std::set<crdt::ColumnId> used_ids;
  for (auto& c : info.columns) {
    c.id = stable_id(c.name);
    if (!used_ids.insert(c.id).second)
      throw Error(ErrorCode::kSchema, "table '" + name + "' cannot be replicated: column '" +
                                          c.name +
                                          "' has the same stable id as another column; "
                                          "rename one of them");
    auto it = types.find(lower_case(c.name));
    if (it == types.end()) continue;
    if (c.key_position && it->second != crdt::ColumnKind::kLww)
      throw Error(ErrorCode::kSchema, "table '" + name + "' cannot be replicated: key column '" +
                                          c.name + "' cannot be a counter");
    c.kind = it->second;
    types.erase(it);
  }
  if (!types.empty())
    throw Error(ErrorCode::kSchema, "table '" + name +
                                        "' cannot be replicated: it has no column '" +
                                        types.begin()->first + "'");

  if (TableInfo* existing = table_by_name(name)) {
    bool same = existing->columns.size() == info.columns.size();
    for (std::size_t i = 0; same && i < info.columns.size(); ++i)
      same = existing->columns[i].id == info.columns[i].id &&
             existing->columns[i].kind == info.columns[i].kind;
    if (same) return;
    throw Error(ErrorCode::kSchema, "table '" + name +
                                        "' is already replicated with other columns or column "
                                        "types; changing a replicated schema is not supported yet");
  }
  for (const auto& [id, other] : tables)
    if (id == info.id)
      throw Error(ErrorCode::kSchema, "table '" + name +
                                          "' cannot be replicated: its stable id "
                                          "collides with table '" +
                                          other->name + "'");

  for (const auto& c : info.columns) {
    if (c.kind != crdt::ColumnKind::kCounter) continue;
    Statement bad(db, "SELECT count(*) FROM " + quote_identifier(name) + " WHERE typeof(" +
                          quote_identifier(c.name) + ") <> 'integer'");
    bad.step();
    if (bad.column_int(0) > 0)
      throw Error(ErrorCode::kSchema,
                  "table '" + name + "' cannot be replicated: counter column '" + c.name +
                      "' holds " + std::to_string(bad.column_int(0)) + " non-integer values");
  }

  exec_sql(db, "SAVEPOINT lattice_replicate");
  try {
    CaptureSuspended suspended(*this);
    Statement insert_table(db, "INSERT INTO lattice_tables(id, name) VALUES (?, ?)");
    insert_table.bind(1, static_cast<std::int64_t>(info.id)).bind(2, name).run();
    Statement insert_column(db, "INSERT INTO lattice_columns VALUES (?, ?, ?, ?, ?)");
    for (const auto& c : info.columns) {
      insert_column.reset();
      insert_column.bind(1, static_cast<std::int64_t>(info.id))
          .bind(2, static_cast<std::int64_t>(c.id))
          .bind(3, c.name)
          .bind(4, crdt::column_kind_name(c.kind))
          .bind(5, static_cast<std::int64_t>(c.key_position));
      insert_column.run();
    }
    exec_sql(db, metadata_tables_sql(info));
    exec_sql(db, trigger_sql(info));

    // Rows that exist already become this replica's writes.
    Statement count(db, "SELECT count(*) FROM " + quote_identifier(name));
    count.step();
    if (count.column_int(0) > 0) {
      ensure_transaction_clock();
      const std::string seq = std::to_string(txn_seq), hlc = std::to_string(txn_hlc.value);
      exec_sql(db, "UPDATE lattice_local SET seq = " + seq + ", hlc = " + hlc +
                       " WHERE id = 0 AND seq < " + seq);
      exec_sql(db, "INSERT INTO " + info.rows_table() + " SELECT " + key_expression(info, "t") +
                       ", 1, " + hlc + ", 0, " + seq + " FROM " + quote_identifier(name) + " t");
      for (const auto& c : info.columns) {
        if (c.kind != crdt::ColumnKind::kCounter) continue;
        exec_sql(db, "INSERT INTO " + info.counters_table() + " SELECT " +
                         key_expression(info, "t") + ", " + std::to_string(c.id) + ", 0, 1, " +
                         seq + ", t." + quote_identifier(c.name) + " FROM " +
                         quote_identifier(name) + " t");
      }
    }
    exec_sql(db, "RELEASE lattice_replicate");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK TO lattice_replicate; RELEASE lattice_replicate", nullptr, nullptr,
                 nullptr);
    throw;
  }
  load_catalog();
}

}  // namespace lattice::storage
