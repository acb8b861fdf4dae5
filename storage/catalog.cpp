// lattice_replicate(): validating a table, giving it stable ids, creating its metadata tables
// and the capture triggers; and loading the catalog back. docs/architecture.md shows the
// triggers' effect; docs/crdt-semantics.md says what each write means.

#include <algorithm>
#include <boost/json/value.hpp>
#include <cctype>
#include <optional>
#include <set>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/json_reader.hpp"

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

// Parses {"column": "lww" | "counter", ...}. Column names are SQLite's, so two members naming
// one column in different case are as much a repeat as the same name twice.
std::map<std::string, crdt::ColumnKind> parse_column_types(std::string_view json,
                                                           std::string_view table) {
  auto fail = [&](const std::string& why) -> Error {
    return Error(ErrorCode::kInvalidArgument,
                 "column types for table '" + std::string(table) + "': " + why);
  };
  boost::json::value document;
  if (auto problem = read_json(json, 2, document)) {
    if (problem->kind == JsonProblem::Kind::kDuplicate)
      throw fail("column '" + problem->member + "' is given twice");
    throw fail("not valid JSON: " + problem->what + " at byte " + std::to_string(problem->offset));
  }
  if (!document.is_object())
    throw fail("expected a JSON object of column names and types, like {\"votes\": \"counter\"}");
  std::map<std::string, crdt::ColumnKind> out;
  for (const auto& member : document.get_object()) {
    const std::string column(member.key());
    const boost::json::string* kind = member.value().if_string();
    if (kind == nullptr)
      throw fail("column '" + column + "' has a type that is not a string (known: lww, counter)");
    crdt::ColumnKind parsed;
    if (*kind == "lww")
      parsed = crdt::ColumnKind::kLww;
    else if (*kind == "counter")
      parsed = crdt::ColumnKind::kCounter;
    else
      throw fail("column '" + column + "' has unknown type '" + std::string(*kind) +
                 "' (known: lww, counter)");
    if (!out.emplace(lower_case(column), parsed).second)
      throw fail("column '" + column + "' is given twice");
  }
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
  // The statements merges cache name a table's columns as they were when first prepared (keyed
  // by table id): after a rename, an added or a dropped column they would write the old ones.
  merge_statements.clear();
  tables.clear();
  tables_by_name.clear();
  {
    Statement fks(db,
                  "SELECT EXISTS (SELECT 1 FROM sqlite_schema s, pragma_foreign_key_list(s.name) "
                  "WHERE s.type = 'table')");
    any_foreign_keys = fks.step() && fks.column_int(0) != 0;
  }
  dropped_tables.clear();
  future_tables_by_name.clear();
  Statement select_tables(db, "SELECT id, name, dropped, future FROM lattice_tables ORDER BY id");
  Statement select_columns(
      db,
      "SELECT id, name, kind, key_position, dropped, future, affinity FROM lattice_columns "
      "WHERE table_id = ?");
  while (select_tables.step()) {
    if (select_tables.column_int(2)) {
      dropped_tables.insert(static_cast<crdt::TableId>(select_tables.column_int(0)));
      continue;
    }
    auto info = std::make_unique<TableInfo>();
    info->id = static_cast<crdt::TableId>(select_tables.column_int(0));
    info->name = select_tables.column_text(1);
    info->future_table = select_tables.column_int(3) != 0;
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
      if (select_columns.column_int(4)) {
        info->dropped_columns.insert(c.id);
        continue;
      }
      if (select_columns.column_int(5)) {
        c.affinity_known = !select_columns.column_is_null(6);
        c.affinity = static_cast<Affinity>(select_columns.column_int(6));
        info->future_columns.push_back(c);
        continue;
      }
      if (info->future_table) {
        c.affinity_known = !select_columns.column_is_null(6);
        c.affinity = static_cast<Affinity>(select_columns.column_int(6));
        info->columns.push_back(c);  // key columns only: the others are future columns
        continue;
      }
      by_name[lower_case(c.name)] = c;
    }
    if (info->future_table) {
      std::sort(
          info->columns.begin(), info->columns.end(),
          [](const ColumnInfo& a, const ColumnInfo& b) { return a.key_position < b.key_position; });
    }
    // Table positions come from the live table (for the pre-update hook).
    for (auto& live :
         info->future_table ? std::vector<ColumnInfo>{} : read_columns(db, info->name, false)) {
      auto it = by_name.find(lower_case(live.name));
      if (it == by_name.end()) continue;
      it->second.table_position = live.table_position;
      it->second.affinity = live.affinity;
      info->columns.push_back(it->second);
    }
    info->key_count = static_cast<std::size_t>(std::count_if(
        info->columns.begin(), info->columns.end(), [](const auto& c) { return c.key_position; }));
    auto counter = [](const auto& c) { return c.kind == crdt::ColumnKind::kCounter; };
    info->has_counters =
        std::any_of(info->columns.begin(), info->columns.end(), counter) ||
        std::any_of(info->future_columns.begin(), info->future_columns.end(), counter);
    if (info->future_table) {
      future_tables_by_name[lower_case(info->name)] = info.get();
    } else {
      read_constraints(db, *info);
      tables_by_name[lower_case(info->name)] = info.get();
    }
    tables[info->id] = std::move(info);
  }
  load_column_added();
}

void Replica::Impl::load_column_added() {
  for (auto& [id, table] : tables)
    for (auto& c : table->columns) c.added_after.clear();
  Statement added(db, "SELECT table_id, col, site, seq FROM lattice_column_added");
  while (added.step()) {
    auto table = tables.find(static_cast<crdt::TableId>(added.column_int(0)));
    if (table == tables.end()) continue;
    for (auto& c : table->second->columns)
      if (c.id == static_cast<crdt::ColumnId>(added.column_int(1)))
        c.added_after[added.column_int(2)] = static_cast<std::uint64_t>(added.column_int(3));
  }
}

crdt::TableId Replica::Impl::table_id_for(std::string_view name) const {
  auto hint = table_id_hints.find(lower_case(name));
  return hint != table_id_hints.end() ? hint->second : stable_id(name);
}

crdt::ColumnId Replica::Impl::column_id_for(crdt::TableId table, std::string_view name) const {
  auto hint = column_id_hints.find({table, lower_case(name)});
  return hint != column_id_hints.end() ? hint->second : stable_id(name);
}

void Replica::Impl::replicate(std::string_view table_name, std::string_view column_types_json) {
  const std::string table(table_name);
  auto types = parse_column_types(column_types_json, table);
  // The catalog in memory may describe a replicate() that was rolled back since.
  refresh();
  if (TableInfo* existing = table_by_name(table)) {
    update_kinds(*existing, types);
    return;
  }

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
  info.id = table_id_for(name);
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
    c.id = column_id_for(info.id, c.name);
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

  auto future = tables.find(info.id);
  if (future != tables.end() && future->second->future_table) {
    adopt_future_table(*future->second, info);
    return;
  }
  for (const auto& [id, other] : tables)
    if (id == info.id)
      throw Error(ErrorCode::kSchema, "table '" + name +
                                          "' cannot be replicated: its stable id "
                                          "collides with table '" +
                                          other->name + "'");
  if (dropped_tables.count(info.id))
    throw Error(ErrorCode::kSchema,
                "table '" + name +
                    "' cannot be replicated: a replicated table of that name (or stable id) was "
                    "dropped, and devices that have not migrated may still send its changes; "
                    "give the new table another name");

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
    Statement insert_column(db,
                            "INSERT INTO lattice_columns(table_id, id, name, kind, key_position) "
                            "VALUES (?, ?, ?, ?, ?)");
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

// lattice_replicate on a table already replicated: the column types must be the ones it has,
// except for columns added in the open transaction (ALTER TABLE ... ADD COLUMN), which may still
// become counters: that is how a migration adds a counter column.
void Replica::Impl::update_kinds(TableInfo& t,
                                 const std::map<std::string, crdt::ColumnKind>& types) {
  for (const auto& entry : types) {
    const std::string& column = entry.first;
    const bool known = std::any_of(t.columns.begin(), t.columns.end(), [&](const ColumnInfo& c) {
      return lower_case(c.name) == column;
    });
    if (!known)
      throw Error(ErrorCode::kSchema,
                  "table '" + t.name + "' has no replicated column '" + column + "'");
  }
  bool changed = false;
  for (const auto& c : t.columns) {
    if (c.key_position) continue;
    auto it = types.find(lower_case(c.name));
    const crdt::ColumnKind wanted = it == types.end() ? crdt::ColumnKind::kLww : it->second;
    if (wanted == c.kind) continue;
    if (!added_this_transaction.count({t.id, c.id}) || adopted_this_transaction.count({t.id, c.id}))
      throw Error(ErrorCode::kSchema,
                  "table '" + t.name + "' is replicated with column '" + c.name + "' as a " +
                      crdt::column_kind_name(c.kind) +
                      " column; a column's type cannot change (add a new column and copy the "
                      "values, docs/schema-evolution.md)");
    if (wanted == crdt::ColumnKind::kCounter) {
      // Its value in every existing row is the default; a counter's is the sum of its parts,
      // none yet: they agree only at 0.
      Statement bad(db, "SELECT count(*) FROM " + quote_identifier(t.name) + " WHERE typeof(" +
                            quote_identifier(c.name) + ") <> 'integer' OR " +
                            quote_identifier(c.name) + " <> 0");
      bad.step();
      if (bad.column_int(0) > 0)
        throw Error(ErrorCode::kSchema,
                    "counter column '" + t.name + "." + c.name +
                        "' must start at 0 in the rows the table holds (declare it INTEGER NOT "
                        "NULL DEFAULT 0)");
    }
    Statement set(db, "UPDATE lattice_columns SET kind = ? WHERE table_id = ? AND id = ?");
    set.bind(1, crdt::column_kind_name(wanted))
        .bind(2, static_cast<std::int64_t>(t.id))
        .bind(3, static_cast<std::int64_t>(c.id))
        .run();
    changed = true;
  }
  if (!changed) return;
  const crdt::TableId id = t.id;
  load_catalog();
  catalog_schema_version = -1;
  recreate_table_triggers(*tables.at(id));
}

void Replica::Impl::drop_table_triggers(crdt::TableId id) {
  std::vector<std::string> names;
  {
    Statement select(db, "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name GLOB ?");
    select.bind(1, "lattice_" + std::to_string(id) + "_*");
    while (select.step()) names.push_back(select.column_text(0));
  }
  const bool was = internal_ddl;
  internal_ddl = true;
  try {
    for (const auto& name : names) exec_sql(db, "DROP TRIGGER " + quote_identifier(name));
  } catch (...) {
    internal_ddl = was;
    throw;
  }
  internal_ddl = was;
}

void Replica::Impl::recreate_table_triggers(const TableInfo& t) {
  drop_table_triggers(t.id);
  internal_ddl = true;
  try {
    exec_sql(db, metadata_tables_sql(t));
    exec_sql(db, capture_triggers_sql(t));
  } catch (...) {
    internal_ddl = false;
    throw;
  }
  internal_ddl = false;
}

void Replica::Impl::add_column(TableInfo& t, const std::string& column) {
  // The live table has the column now; its declared name is the one SQLite kept.
  std::string name = column;
  for (const auto& live : read_columns(db, t.name, false))
    if (lower_case(live.name) == lower_case(column)) name = live.name;
  const crdt::ColumnId id = column_id_for(t.id, name);
  Affinity affinity = Affinity::kBlob;
  for (const auto& live : read_columns(db, t.name, false))
    if (lower_case(live.name) == lower_case(name)) affinity = live.affinity;
  Statement taken(db,
                  "SELECT name, dropped, future, affinity FROM lattice_columns WHERE table_id = ? "
                  "AND id = ?");
  taken.bind(1, static_cast<std::int64_t>(t.id)).bind(2, static_cast<std::int64_t>(id));
  if (taken.step()) {
    if (taken.column_int(2)) {
      // Newer devices have this column already: its cells are here, as a future column. It
      // joins the table, with the type they gave it.
      if (!taken.column_is_null(3) && static_cast<Affinity>(taken.column_int(3)) != affinity)
        throw Error(ErrorCode::kSchema,
                    "column '" + t.name + "." + name + "' has type affinity " +
                        affinity_name(affinity) + " here but " +
                        affinity_name(static_cast<Affinity>(taken.column_int(3))) +
                        " on the devices that added it first; declare it alike");
      taken = Statement();
      Statement adopt(db,
                      "UPDATE lattice_columns SET future = 0, name = ? WHERE table_id = ? AND "
                      "id = ?");
      adopt.bind(1, name)
          .bind(2, static_cast<std::int64_t>(t.id))
          .bind(3, static_cast<std::int64_t>(id))
          .run();
      // A row that came with a value of the column holds it at its version: an override says
      // so, since the watermark below would tell it apart from rows written here without it.
      Statement kept(db, "INSERT INTO " + t.cells_table() +
                             "(pk, col, cl, hlc, site, seq) SELECT r.pk, f.col, r.cl, r.hlc, "
                             "r.site, r.seq FROM " +
                             t.rows_table() +
                             " r JOIN lattice_future_values f ON f.table_id = ?1 AND f.pk = r.pk "
                             "AND f.col = ?2 WHERE r.cl % 2 = 1 ON CONFLICT DO NOTHING");
      kept.bind(1, static_cast<std::int64_t>(t.id)).bind(2, static_cast<std::int64_t>(id)).run();
      record_column_added(t.id, id);
      adopted_this_transaction.insert({t.id, id});
      return;
    }
    throw Error(ErrorCode::kSchema,
                "column '" + t.name + "." + name + "' would take the stable id of " +
                    (taken.column_int(1) ? "the dropped column '" : "column '") +
                    taken.column_text(0) + "'; choose another name");
  }
  taken = Statement();
  Statement insert(db,
                   "INSERT INTO lattice_columns(table_id, id, name, kind, key_position) "
                   "VALUES (?, ?, ?, 'lww', 0)");
  insert.bind(1, static_cast<std::int64_t>(t.id))
      .bind(2, static_cast<std::int64_t>(id))
      .bind(3, name)
      .run();
  record_column_added(t.id, id);
  added_this_transaction.insert({t.id, id});
}

// The rows this replica holds now were written without the column: their versions are not its
// version (ColumnInfo::added_after). What it holds is recorded rather than marked row by row,
// so that adding a column stays instant.
void Replica::Impl::record_column_added(crdt::TableId table, crdt::ColumnId column) {
  Statement watermark(db,
                      "INSERT OR REPLACE INTO lattice_column_added(table_id, col, site, seq) "
                      "SELECT ?1, ?2, idx, seq FROM lattice_sites WHERE idx > 0 AND seq > 0 "
                      "UNION ALL SELECT ?1, ?2, 0, seq FROM lattice_local WHERE seq > 0");
  watermark.bind(1, static_cast<std::int64_t>(table))
      .bind(2, static_cast<std::int64_t>(column))
      .run();
}

// lattice_replicate of a table newer devices already replicate: its rows are here, merged as a
// future table. The application's table takes them over, with the same key and column types.
void Replica::Impl::adopt_future_table(TableInfo& future, const TableInfo& local) {
  const std::string why = "table '" + local.name + "' cannot be replicated: ";
  bool same_key = future.key_count == local.key_count;
  for (std::size_t i = 0; same_key && i < local.key_count; ++i)
    same_key = future.columns[i].id == local.columns[i].id;
  if (!same_key)
    throw Error(ErrorCode::kSchema, why +
                                        "devices that replicate it already give it another "
                                        "primary key; declare the same key columns, in order");
  for (const auto& c : local.columns) {
    const ColumnInfo* theirs = future.column(c.id);
    if (!theirs) continue;
    if (theirs->kind != c.kind)
      throw Error(ErrorCode::kSchema, why + "column '" + c.name + "' is a " +
                                          crdt::column_kind_name(theirs->kind) +
                                          " column on the devices that replicate it already");
    if (theirs->affinity_known && theirs->affinity != c.affinity)
      throw Error(ErrorCode::kSchema, why + "column '" + c.name + "' has type affinity " +
                                          affinity_name(theirs->affinity) +
                                          " on the devices that replicate it already");
  }
  Statement rows(db, "SELECT count(*) FROM " + quote_identifier(local.name));
  rows.step();
  if (rows.column_int(0) > 0)
    throw Error(ErrorCode::kSchema,
                why +
                    "it holds rows of its own, and rows newer devices wrote are here already; "
                    "replicate it while it is empty");
  rows = Statement();

  exec_sql(db, "SAVEPOINT lattice_adopt");
  try {
    Statement table(db, "UPDATE lattice_tables SET future = 0, name = ? WHERE id = ?");
    table.bind(1, local.name).bind(2, static_cast<std::int64_t>(local.id)).run();
    Statement update(db,
                     "UPDATE lattice_columns SET future = 0, name = ?, kind = ?, key_position = ? "
                     "WHERE table_id = ? AND id = ?");
    Statement insert(db,
                     "INSERT INTO lattice_columns(table_id, id, name, kind, key_position) "
                     "VALUES (?, ?, ?, ?, ?)");
    std::set<crdt::ColumnId> joined;
    for (const auto& c : local.columns) {
      Statement& s = future.column(c.id) ? update : insert;
      s.reset();
      if (&s == &update)
        s.bind(1, c.name)
            .bind(2, crdt::column_kind_name(c.kind))
            .bind(3, static_cast<std::int64_t>(c.key_position))
            .bind(4, static_cast<std::int64_t>(local.id))
            .bind(5, static_cast<std::int64_t>(c.id));
      else
        s.bind(1, static_cast<std::int64_t>(local.id))
            .bind(2, static_cast<std::int64_t>(c.id))
            .bind(3, c.name)
            .bind(4, crdt::column_kind_name(c.kind))
            .bind(5, static_cast<std::int64_t>(c.key_position));
      s.run();
      if (!c.key_position) joined.insert(c.id);
    }
    load_catalog();
    catalog_schema_version = -1;
    TableInfo& adopted = *tables.at(local.id);
    exec_sql(db, metadata_tables_sql(adopted));
    exec_sql(db, capture_triggers_sql(adopted));
    fill_from_future(adopted, joined, true);
    exec_sql(db, "RELEASE lattice_adopt");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK TO lattice_adopt; RELEASE lattice_adopt", nullptr, nullptr, nullptr);
    load_catalog();
    catalog_schema_version = -1;
    throw;
  }
}

}  // namespace lattice::storage
