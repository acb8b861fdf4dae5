// lattice_replicate(): validating a table, giving it stable ids, creating its metadata tables
// and the capture triggers; and loading the catalog back. docs/architecture.md shows the
// triggers' effect; docs/crdt-semantics.md says what each write means.

#include <algorithm>
#include <cctype>
#include <optional>
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
    c.affinity = affinity_of_declared_type(info.column_text(1));
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

// The predicate of a partial index, from its CREATE INDEX text: what follows the top-level WHERE
// after the column list. Quotes, brackets and comments are skipped, so a WHERE inside them does
// not count.
std::string partial_index_predicate(std::string_view sql) {
  int depth = 0;
  bool seen_columns = false;
  for (std::size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '\'' || c == '"' || c == '`' || c == '[') {
      const char close = c == '[' ? ']' : c;
      for (++i; i < sql.size() && sql[i] != close; ++i) {
      }
      continue;
    }
    if (c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      while (i < sql.size() && sql[i] != '\n') ++i;
      continue;
    }
    if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      const auto end = sql.find("*/", i + 2);
      i = end == std::string_view::npos ? sql.size() : end + 1;
      continue;
    }
    if (c == '(') ++depth;
    if (c == ')' && --depth == 0) seen_columns = true;
    if (seen_columns && depth == 0 && i + 5 <= sql.size() &&
        lower_case(sql.substr(i, 5)) == "where" &&
        (i == 0 || !std::isalnum(static_cast<unsigned char>(sql[i - 1]))) &&
        (i + 5 == sql.size() || !std::isalnum(static_cast<unsigned char>(sql[i + 5]))))
      return std::string(sql.substr(i + 5));
  }
  return {};
}

// What lattice_replicate refuses beyond the table's shape: anything SQLite would compare
// differently from the merge, which compares keys byte for byte.
void check_replicable(sqlite3* db, const TableInfo& t) {
  const std::string why = "table '" + t.name + "' cannot be replicated: ";
  for (std::size_t i = 0; i < t.key_count; ++i) {
    if (lower_case(t.key_collations[i]) != "binary")
      throw Error(ErrorCode::kSchema,
                  why + "key column '" + t.columns[i].name + "' compares with COLLATE " +
                      t.key_collations[i] +
                      ", so SQLite would take keys that differ (say 'a' and 'A') for one row "
                      "while every other device keeps them apart; use a BINARY key (for "
                      "example store lower(name) in the key column)");
  }
  for (const auto& index : t.unsupported_indexes)
    throw Error(ErrorCode::kSchema, why + "unique index '" + index +
                                        "' is on an expression, which merges cannot check; "
                                        "index a column that holds the expression's value");
  std::string null_key;
  for (std::size_t i = 0; i < t.key_count; ++i)
    null_key += std::string(i ? " OR " : "") + quote_identifier(t.columns[i].name) + " IS NULL";
  Statement nulls(db, "SELECT count(*) FROM " + quote_identifier(t.name) + " WHERE " + null_key);
  nulls.step();
  if (nulls.column_int(0) > 0)
    throw Error(ErrorCode::kSchema, why + std::to_string(nulls.column_int(0)) +
                                        " row(s) have a NULL in the primary key; give them a "
                                        "key or delete them first");
}

}  // namespace

Affinity affinity_of_declared_type(std::string_view declared_type) {
  const std::string type = lower_case(declared_type);
  if (type.find("int") != std::string::npos) return Affinity::kInteger;
  if (type.find("char") != std::string::npos || type.find("clob") != std::string::npos ||
      type.find("text") != std::string::npos)
    return Affinity::kText;
  if (type.empty() || type.find("blob") != std::string::npos) return Affinity::kBlob;
  if (type.find("real") != std::string::npos || type.find("floa") != std::string::npos ||
      type.find("doub") != std::string::npos)
    return Affinity::kReal;
  // STRICT tables' ANY keeps values as given, like no affinity.
  if (type == "any") return Affinity::kBlob;
  return Affinity::kNumeric;
}

void read_constraints(sqlite3* db, TableInfo& t) {
  t.uniques.clear();
  t.foreign_keys.clear();
  t.unsupported_indexes.clear();
  t.key_collations.assign(t.key_count, "BINARY");
  auto column_index = [&](std::string_view column) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < t.columns.size(); ++i)
      if (lower_case(t.columns[i].name) == lower_case(column)) return i;
    return std::nullopt;
  };

  bool has_pk_index = false;
  Statement indexes(db,
                    "SELECT l.name, l.origin, l.partial, s.sql FROM pragma_index_list(?) l "
                    "LEFT JOIN sqlite_schema s ON s.type = 'index' AND s.name = l.name "
                    "WHERE l.\"unique\" ORDER BY l.name");
  indexes.bind(1, t.name);
  Statement xinfo(db, "SELECT cid, name, coll FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno");
  while (indexes.step()) {
    const std::string index = indexes.column_text(0), origin = indexes.column_text(1);
    xinfo.reset();
    xinfo.bind(1, index);
    UniqueIndex u;
    u.name = index;
    bool on_expression = false;
    while (xinfo.step()) {
      const auto column = column_index(xinfo.column_is_null(1) ? "" : xinfo.column_text(1));
      if (xinfo.column_int(0) < 0 || !column) {
        on_expression = true;
        continue;
      }
      u.columns.push_back(*column);
      u.collations.push_back(xinfo.column_text(2));
      u.label += std::string(u.label.empty() ? "" : ", ") + t.name + "." + t.columns[*column].name;
    }
    if (origin == "pk") {
      has_pk_index = true;
      for (std::size_t i = 0; i < u.columns.size() && i < t.key_count; ++i)
        t.key_collations[i] = u.collations[i];
      continue;
    }
    if (on_expression) {
      t.unsupported_indexes.push_back(index);
      continue;
    }
    if (indexes.column_int(2) && !indexes.column_is_null(3))
      u.where = partial_index_predicate(indexes.column_text(3));
    t.uniques.push_back(std::move(u));
  }
  indexes = Statement();
  xinfo = Statement();

  // A lone INTEGER PRIMARY KEY is the rowid itself: SQLite makes no index for it.
  t.rowid_key = t.key_count == 1 && !has_pk_index && lower_case(t.columns[0].name) != "rowid" &&
                t.columns[0].affinity == Affinity::kInteger;

  Statement fks(db,
                "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?) "
                "ORDER BY id, seq");
  fks.bind(1, t.name);
  std::int64_t current = -1;
  while (fks.step()) {
    if (fks.column_int(0) != current) {
      current = fks.column_int(0);
      ForeignKey fk;
      fk.parent = fks.column_text(1);
      t.foreign_keys.push_back(std::move(fk));
    }
    ForeignKey& fk = t.foreign_keys.back();
    const auto column = column_index(fks.column_text(2));
    if (!column) continue;
    fk.columns.push_back(*column);
    if (!fks.column_is_null(3)) fk.parent_columns.push_back(fks.column_text(3));
  }
  for (auto& fk : t.foreign_keys) {
    std::string from;
    for (std::size_t c : fk.columns)
      from += std::string(from.empty() ? "" : ", ") + t.columns[c].name;
    std::string to;
    for (const auto& c : fk.parent_columns) to += std::string(to.empty() ? "" : ", ") + c;
    fk.label = t.name + "(" + from + ") -> " + fk.parent + (to.empty() ? "" : "(" + to + ")");
  }
}

void Replica::Impl::load_catalog() {
  tables.clear();
  tables_by_name.clear();
  {
    Statement fks(db,
                  "SELECT EXISTS (SELECT 1 FROM sqlite_schema s, pragma_foreign_key_list(s.name) "
                  "WHERE s.type = 'table')");
    any_foreign_keys = fks.step() && fks.column_int(0) != 0;
  }
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
      it->second.affinity = live.affinity;
      info->columns.push_back(it->second);
    }
    info->key_count = static_cast<std::size_t>(std::count_if(
        info->columns.begin(), info->columns.end(), [](const auto& c) { return c.key_position; }));
    info->has_counters = std::any_of(info->columns.begin(), info->columns.end(), [](const auto& c) {
      return c.kind == crdt::ColumnKind::kCounter;
    });
    read_constraints(db, *info);
    tables_by_name[lower_case(info->name)] = info.get();
    tables[info->id] = std::move(info);
  }
}

void Replica::Impl::replicate(std::string_view table_name, std::string_view column_types_json) {
  const std::string table(table_name);
  auto types = parse_column_types(column_types_json, table);
  // The catalog in memory may describe a replicate() that was rolled back since.
  refresh();

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
  read_constraints(db, info);
  check_replicable(db, info);

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
    exec_sql(db, capture_triggers_sql(info));

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
  // The next refresh() reads the catalog again: if this transaction or a savepoint around this
  // call is rolled back, the table is not replicated after all.
  catalog_schema_version = -1;
}

void Replica::Impl::recreate_triggers() {
  std::vector<std::string> names;
  Statement select(db,
                   "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name GLOB "
                   "'lattice_[0-9]*_*'");
  while (select.step()) names.push_back(select.column_text(0));
  select = Statement();
  internal_ddl = true;
  try {
    exec_sql(db, "DROP TRIGGER IF EXISTS lattice_local_logged;\n" + local_log_trigger_sql());
    for (const auto& name : names) exec_sql(db, "DROP TRIGGER " + quote_identifier(name));
    for (const auto& [id, table] : tables) {
      exec_sql(db, metadata_tables_sql(*table));
      exec_sql(db, capture_triggers_sql(*table));
    }
  } catch (...) {
    internal_ddl = false;
    throw;
  }
  internal_ddl = false;
}

}  // namespace lattice::storage
