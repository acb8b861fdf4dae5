// The projection of the replicated state onto the application's tables: which live rows are
// shown and which are held (storage/detail/projection.hpp states the rule;
// docs/data-quality.md explains it to application developers, with examples).

#include "storage/detail/projection.hpp"

#include <algorithm>
#include <chrono>

#include "crdt/json.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

// Nested undo of deletes application triggers made (an undo may fire triggers again).
constexpr int kMaxUndoDepth = 8;
// Attempts to write one row, each evicting the rows that lost a unique value to it.
constexpr int kMaxWriteAttempts = 64;

std::string key_json(const std::vector<crdt::Value>& key) {
  std::string out = "[";
  for (std::size_t i = 0; i < key.size(); ++i)
    out += std::string(i ? ", " : "") + crdt::json_value(key[i]);
  return out + "]";
}

std::string row_json(const TableInfo& t, const std::vector<crdt::Value>& row) {
  std::string out = "{";
  for (std::size_t i = 0; i < t.columns.size(); ++i)
    out += std::string(i ? ", " : "") + crdt::json_quote(t.columns[i].name) + ": " +
           crdt::json_value(row[i]);
  return out + "}";
}

std::string describe_key(const TableInfo& t, const std::vector<crdt::Value>& key) {
  return "row " + key_json(key) + " of " + t.name;
}

std::vector<crdt::Value> key_of(const TableInfo& t, const std::vector<crdt::Value>& row) {
  return {row.begin(), row.begin() + static_cast<std::ptrdiff_t>(t.key_count)};
}

std::string all_columns(const TableInfo& t, const char* prefix = "") {
  std::string out;
  for (const auto& c : t.columns)
    out += std::string(out.empty() ? "" : ", ") + prefix + quote_identifier(c.name);
  return out;
}

std::optional<std::size_t> column_named(const TableInfo& t, std::string_view name) {
  for (std::size_t i = 0; i < t.columns.size(); ++i)
    if (lower_case(t.columns[i].name) == lower_case(name)) return i;
  return std::nullopt;
}

// What SQLite's message says after "<kind> constraint failed: ".
std::string after_colon(const std::string& message) {
  const auto at = message.find(": ");
  return at == std::string::npos ? message : message.substr(at + 2);
}

}  // namespace

Projection::Projection(Replica::Impl& impl, std::vector<ChangeEvent>& events)
    : impl_(impl), events_(events) {
  Statement counts(impl.db, "SELECT table_id, count(*) FROM lattice_held GROUP BY table_id");
  while (counts.step())
    held_counts_[static_cast<crdt::TableId>(counts.column_int(0))] = counts.column_int(1);
}

Statement& Projection::cached(const std::string& sql) { return impl_.cached(sql); }

Statement& Projection::cached(const std::string& key, const std::function<std::string()>& sql) {
  auto it = impl_.merge_statements.find(key);
  if (it == impl_.merge_statements.end())
    it = impl_.merge_statements.emplace(key, Statement(impl_.db, sql())).first;
  it->second.reset();
  return it->second;
}

void Projection::event(const TableInfo& t, const std::vector<crdt::Value>& key, bool deleted,
                       std::vector<std::string> columns, const std::string& conflict) {
  if (impl_.listeners.empty()) return;
  ChangeEvent e;
  e.origin = ChangeEvent::Origin::kMerged;
  e.table = t.name;
  e.primary_key = key;
  e.deleted = deleted;
  e.columns = std::move(columns);
  e.conflict = conflict;
  events_.push_back(std::move(e));
}

std::optional<std::vector<crdt::Value>> Projection::held_values(Replica::Impl& impl,
                                                                const TableInfo& t,
                                                                std::string_view pk) {
  Statement select(impl.db, "SELECT vals FROM lattice_held WHERE table_id = ? AND pk = ?");
  select.bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, pk);
  if (!select.step()) return std::nullopt;
  return held_row(t, select.column_blob(0), pk);
}

// lattice_held.vals: [column id, value, ...], so that a held row outlives a schema change. A
// column added since takes NULL until the row is written again; a dropped one is left out.
std::string pack_held(const TableInfo& t, const std::vector<crdt::Value>& row) {
  std::vector<crdt::Value> pairs;
  for (std::size_t i = 0; i < t.columns.size(); ++i) {
    pairs.emplace_back(static_cast<std::int64_t>(t.columns[i].id));
    pairs.push_back(row[i]);
  }
  return pack_values(pairs);
}

std::vector<crdt::Value> held_row(const TableInfo& t, std::string_view vals, std::string_view pk) {
  const std::vector<crdt::Value> pairs = unpack_value_list(vals);
  std::vector<crdt::Value> row(t.columns.size());
  const auto key = unpack_primary_key(pk, t.key_count);
  for (std::size_t i = 0; i < key.size(); ++i) row[i] = key[i];
  for (std::size_t i = 0; i + 1 < pairs.size(); i += 2) {
    if (pairs[i].index() != 1) continue;
    const auto id = static_cast<crdt::ColumnId>(std::get<std::int64_t>(pairs[i]));
    for (std::size_t c = t.key_count; c < t.columns.size(); ++c)
      if (t.columns[c].id == id) row[c] = pairs[i + 1];
  }
  return row;
}

bool Projection::is_held(const TableInfo& t, const std::string& pk) {
  if (held_counts_[t.id] == 0) return false;
  Statement& s = cached("SELECT 1 FROM lattice_held WHERE table_id = ? AND pk = ?");
  s.bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, pk);
  const bool held = s.step();
  s.reset();
  return held;
}

std::optional<Projection::Row> Projection::shown_row(TableInfo& t, const std::string& pk) {
  Statement& s = cached("shown " + std::to_string(t.id), [&] {
    return "SELECT " + all_columns(t) + " FROM " + quote_identifier(t.name) + " WHERE " +
           t.key_where();
  });
  const auto key = unpack_primary_key(pk, t.key_count);
  for (std::size_t i = 0; i < key.size(); ++i) s.bind(static_cast<int>(i + 1), key[i]);
  std::optional<Row> row;
  if (s.step()) {
    row.emplace();
    for (std::size_t i = 0; i < t.columns.size(); ++i)
      row->push_back(s.column(static_cast<int>(i)));
  }
  s.reset();
  return row;
}

// A row that comes alive with only some of its columns known (a cell that arrived before its
// insert) takes the table's defaults for the others, as an INSERT naming those columns would.
Projection::Row Projection::defaults(TableInfo& t, const std::vector<crdt::Value>& key) {
  Row row(t.columns.size());
  for (std::size_t i = 0; i < key.size(); ++i) row[i] = key[i];
  Statement info(impl_.db, "SELECT name, dflt_value FROM pragma_table_info(?)");
  info.bind(1, t.name);
  while (info.step()) {
    if (info.column_is_null(1)) continue;
    const auto index = column_named(t, info.column_text(0));
    if (!index || *index < t.key_count) continue;
    Statement value(impl_.db, "SELECT " + info.column_text(1));
    if (value.step()) row[*index] = value.column(0);
  }
  return row;
}

Projection::Claim Projection::claim(TableInfo& t, const std::string& pk) {
  Claim out;
  out.pk = pk;
  Statement& row = cached("SELECT hlc, site FROM " + t.rows_table() + " WHERE pk = ?");
  row.bind_blob(1, pk);
  std::uint64_t row_hlc = 0;
  std::int64_t row_site = 0;
  if (row.step()) {
    row_hlc = static_cast<std::uint64_t>(row.column_int(0));
    row_site = row.column_int(1);
  }
  row.reset();
  std::map<crdt::ColumnId, std::pair<std::uint64_t, std::int64_t>> overrides;
  Statement& cells = cached("SELECT col, hlc, site FROM " + t.cells_table() + " WHERE pk = ?");
  cells.bind_blob(1, pk);
  while (cells.step())
    overrides[static_cast<crdt::ColumnId>(cells.column_int(0))] = {
        static_cast<std::uint64_t>(cells.column_int(1)), cells.column_int(2)};
  cells.reset();
  bool first = true;
  for (const auto& u : t.uniques) {
    for (std::size_t c : u.columns) {
      if (c < t.key_count) continue;
      auto it = overrides.find(t.columns[c].id);
      const auto [hlc, site] = it != overrides.end()
                                   ? it->second
                                   : std::pair<std::uint64_t, std::int64_t>{row_hlc, row_site};
      const crdt::SiteId& id = impl_.sites.at(static_cast<std::size_t>(site));
      if (first || std::tie(hlc, id) > std::tie(out.hlc, out.site)) {
        out.hlc = hlc;
        out.site = id;
        first = false;
      }
    }
  }
  return out;
}

int Projection::run(Statement& statement, const TableInfo& t, const std::string& pk,
                    std::string& message) {
  impl_.merge_target = &t;
  impl_.merge_target_pk = pk;
  const int rc = statement.try_run(message);
  last_changes_ = sqlite3_changes(impl_.db);
  impl_.merge_target = nullptr;
  impl_.merge_target_pk.clear();
  if (rc != SQLITE_DONE && sqlite3_get_autocommit(impl_.db))
    throw Error(ErrorCode::kSql, "a trigger rolled back the merge while writing " +
                                     describe_key(t, unpack_primary_key(pk, t.key_count)) + ": " +
                                     message);
  if (!impl_.side_deletes.empty()) undo_side_deletes();
  return rc;
}

// An application trigger deleted a row of a replicated table during the merge. The replicated
// state still holds the row, so it goes back, with the values it had.
void Projection::undo_side_deletes() {
  if (++depth_ > kMaxUndoDepth) {
    --depth_;
    throw Error(ErrorCode::kSql,
                "application triggers keep deleting rows of replicated tables "
                "during a merge (more than 8 rounds of undo)");
  }
  auto deleted = std::move(impl_.side_deletes);
  impl_.side_deletes.clear();
  for (auto& side : deleted) {
    TableInfo& t = *side.table;
    const std::string pk = pack_primary_key(key_of(t, side.row));
    Statement& alive = cached("SELECT cl FROM " + t.rows_table() + " WHERE pk = ?");
    alive.bind_blob(1, pk);
    const bool live = alive.step() && alive.column_int(0) % 2 == 1;
    alive.reset();
    if (!live || is_held(t, pk)) continue;
    std::string message;
    Statement& insert = cached("INSERT OR IGNORE INTO " + quote_identifier(t.name) + "(" +
                               all_columns(t) + ") VALUES (" +
                               [&] {
                                 std::string marks;
                                 for (std::size_t i = 0; i < t.columns.size(); ++i)
                                   marks += i ? ", ?" : "?";
                                 return marks;
                               }() +
                               ")");
    for (std::size_t i = 0; i < side.row.size(); ++i)
      insert.bind(static_cast<int>(i + 1), side.row[i]);
    run(insert, t, pk, message);
  }
  --depth_;
}

std::optional<Projection::Refusal> Projection::refusal_of(TableInfo& t, const std::string& pk,
                                                          int rc, const std::string& message) {
  const std::string row = describe_key(t, unpack_primary_key(pk, t.key_count));
  auto refuse = [&](const char* reason, std::string constraint) {
    return Refusal{reason, constraint, row + " cannot be shown: " + message};
  };
  switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
      return refuse("unique", after_colon(message));
    case SQLITE_CONSTRAINT_CHECK:
      return refuse("check", after_colon(message));
    case SQLITE_CONSTRAINT_NOTNULL:
      return refuse("not_null", after_colon(message));
    case SQLITE_CONSTRAINT_DATATYPE:
      return refuse("type", message);
    case SQLITE_CONSTRAINT_FOREIGNKEY:  // only where foreign keys could not be turned off
      return refuse("foreign_key", message);
    case SQLITE_CONSTRAINT_TRIGGER:
    case SQLITE_CONSTRAINT_FUNCTION:
    case SQLITE_CONSTRAINT:
      return refuse("trigger", message);
    default:
      break;
  }
  throw_sqlite(impl_.db, rc, "writing " + row);
}

std::vector<std::string> Projection::conflicts(TableInfo& t, const UniqueIndex& index,
                                               const Row& row) {
  for (std::size_t c : index.columns)
    if (row[c].index() == 0) return {};  // NULLs are all distinct
  std::string sql =
      "SELECT " + key_expression(t, "x") + " FROM " + quote_identifier(t.name) + " x WHERE ";
  for (std::size_t i = 0; i < index.columns.size(); ++i)
    sql += "x." + quote_identifier(t.columns[index.columns[i]].name) + " = ? COLLATE " +
           index.collations[i] + " AND ";
  if (!index.where.empty()) sql += "(" + index.where + ") AND ";
  sql += "NOT (";
  for (std::size_t i = 0; i < t.key_count; ++i)
    sql += std::string(i ? " AND " : "") + "x." + quote_identifier(t.columns[i].name) + " IS ?";
  sql += ")";
  Statement& s = cached(sql);
  int at = 1;
  for (std::size_t c : index.columns) s.bind(at++, row[c]);
  for (std::size_t i = 0; i < t.key_count; ++i) s.bind(at++, row[i]);
  std::vector<std::string> out;
  while (s.step()) out.emplace_back(s.column_blob(0));
  s.reset();
  if (!out.empty() && !index.where.empty()) {
    // A partial index binds this row only when the row satisfies its predicate.
    std::string probe = "SELECT 1 FROM (SELECT ";
    for (std::size_t i = 0; i < t.columns.size(); ++i)
      probe += std::string(i ? ", " : "") + "? AS " + quote_identifier(t.columns[i].name);
    probe += ") WHERE (" + index.where + ")";
    Statement& p = cached(probe);
    for (std::size_t i = 0; i < row.size(); ++i) p.bind(static_cast<int>(i + 1), row[i]);
    const bool bound = p.step();
    p.reset();
    if (!bound) out.clear();
  }
  return out;
}

std::optional<Projection::Refusal> Projection::missing_parent(TableInfo& t, const Row& row) {
  for (const auto& fk : t.foreign_keys) {
    std::vector<crdt::Value> values;
    for (std::size_t c : fk.columns) values.push_back(row[c]);
    if (std::any_of(values.begin(), values.end(), [](const auto& v) { return v.index() == 0; }))
      continue;  // MATCH SIMPLE: a NULL in the key means no parent is needed
    std::vector<std::string> parent_columns = fk.parent_columns;
    TableInfo* parent = impl_.table_by_name(fk.parent);
    if (parent_columns.empty()) {
      if (parent) {
        for (std::size_t i = 0; i < parent->key_count; ++i)
          parent_columns.push_back(parent->columns[i].name);
      } else {
        Statement key(impl_.db, "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk");
        key.bind(1, fk.parent);
        while (key.step()) parent_columns.push_back(key.column_text(0));
      }
    }
    // A row that is its own parent.
    if (parent == &t) {
      bool self = parent_columns.size() == t.key_count;
      for (std::size_t i = 0; self && i < parent_columns.size(); ++i)
        self =
            lower_case(parent_columns[i]) == lower_case(t.columns[i].name) && values[i] == row[i];
      if (self) continue;
    }
    std::string sql = "SELECT 1 FROM " + quote_identifier(fk.parent) + " WHERE ";
    for (std::size_t i = 0; i < parent_columns.size(); ++i)
      sql += std::string(i ? " AND " : "") + quote_identifier(parent_columns[i]) + " = ?";
    Statement& s = cached(sql + " LIMIT 1");
    for (std::size_t i = 0; i < values.size(); ++i) s.bind(static_cast<int>(i + 1), values[i]);
    const bool found = s.step();
    s.reset();
    if (found) continue;
    return Refusal{"foreign_key", fk.label,
                   describe_key(t, key_of(t, row)) + " cannot be shown: its parent " +
                       key_json(values) + " in " + fk.parent +
                       " is not there (deleted, or itself held) (" + fk.label + ")"};
  }
  return std::nullopt;
}

std::optional<Projection::Refusal> Projection::write(
    TableInfo& t, const std::string& pk, const Row& row, bool insert,
    const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& changed) {
  if (!t.foreign_keys.empty())
    if (auto orphan = missing_parent(t, row)) return orphan;
  const std::string table = quote_identifier(t.name);
  // A row that is not shown is inserted; an INSERT without an upsert clause costs SQLite one
  // seek less per unique index. Its key is not in the table, but a table edited behind
  // Lattice's back may hold it: then the upsert, once.
  bool upsert = false;
  auto statement_key = [&] {
    std::string key =
        (insert ? (upsert ? "upsert " : "insert ") : "update ") + std::to_string(t.id);
    if (!insert)
      for (const auto& [c, v] : changed) key += " " + std::to_string(c->id);
    return key;
  };
  auto build = [&] {
    if (insert && !upsert) {
      std::string marks;
      for (std::size_t i = 0; i < t.columns.size(); ++i) marks += i ? ", ?" : "?";
      return "INSERT INTO " + table + "(" + all_columns(t) + ") VALUES (" + marks + ")";
    }
    if (insert) {
      std::string marks, updates, keys;
      for (std::size_t i = 0; i < t.columns.size(); ++i) {
        const std::string n = quote_identifier(t.columns[i].name);
        marks += i ? ", ?" : "?";
        if (i < t.key_count)
          keys += std::string(keys.empty() ? "" : ", ") + n;
        else
          updates += std::string(updates.empty() ? "" : ", ") + n + " = excluded." + n;
      }
      return "INSERT INTO " + table + "(" + all_columns(t) + ") VALUES (" + marks +
             ") ON CONFLICT(" + keys + ") DO " +
             (updates.empty() ? "NOTHING" : "UPDATE SET " + updates);
    }
    std::string sets;
    for (const auto& [c, v] : changed)
      sets += std::string(sets.empty() ? "" : ", ") + quote_identifier(c->name) + " = ?";
    return "UPDATE " + table + " SET " + sets + " WHERE " + t.key_where();
  };
  for (int attempt = 0; attempt < kMaxWriteAttempts; ++attempt) {
    Statement& s = cached(statement_key(), build);
    int at = 1;
    if (insert) {
      for (const auto& v : row) s.bind(at++, v);
    } else {
      for (const auto& [c, v] : changed) s.bind(at++, v);
      for (std::size_t i = 0; i < t.key_count; ++i) s.bind(at++, row[i]);
    }
    std::string message;
    const int rc = run(s, t, pk, message);
    if (rc == SQLITE_DONE) {
      if (last_changes_ > 0 || (insert && t.columns.size() == t.key_count)) return {};
      return Refusal{"trigger", "",
                     describe_key(t, key_of(t, row)) +
                         " cannot be shown: a trigger skipped writing it (RAISE(IGNORE))"};
    }
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && insert && !upsert) {
      upsert = true;
      continue;
    }
    auto refusal = refusal_of(t, pk, rc, message);
    if (refusal->reason != "unique") return refusal;

    // Which rows hold the value, and whether they claimed it first.
    std::vector<const UniqueIndex*> failed;
    for (const auto& u : t.uniques)
      if (refusal->constraint == u.label) failed.push_back(&u);
    if (failed.empty())
      for (const auto& u : t.uniques) failed.push_back(&u);
    const Claim mine = claim(t, pk);
    std::vector<std::pair<std::string, const UniqueIndex*>> losers;
    for (const UniqueIndex* u : failed) {
      for (const std::string& other : conflicts(t, *u, row)) {
        if (claim(t, other) < mine) {
          return Refusal{"unique", u->label,
                         describe_key(t, key_of(t, row)) + " cannot be shown: " +
                             describe_key(t, unpack_primary_key(other, t.key_count)) +
                             " took the same " + u->label + " earlier"};
        }
        losers.emplace_back(other, u);
      }
    }
    if (losers.empty()) return refusal;
    for (const auto& [other, u] : losers) {
      auto shown = shown_row(t, other);
      if (!shown) continue;
      hold_shown(t, other, *shown, *shown,
                 Refusal{"unique", u->label,
                         describe_key(t, key_of(t, *shown)) +
                             " cannot be shown: " + describe_key(t, key_of(t, row)) +
                             " took the same " + u->label + " earlier"});
    }
  }
  return Refusal{
      "unique", "",
      describe_key(t, key_of(t, row)) + " cannot be shown: its unique values keep conflicting"};
}

void Projection::record_held(TableInfo& t, const std::string& pk, const Row& row,
                             const Refusal& why) {
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  if (!is_held(t, pk)) ++held_counts_[t.id];
  Statement& s = cached(
      "INSERT INTO lattice_held(table_id, pk, reason, constraint_name, message, vals, key_json, "
      "row_json, since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(table_id, pk) DO UPDATE "
      "SET reason = excluded.reason, constraint_name = excluded.constraint_name, "
      "message = excluded.message, vals = excluded.vals, row_json = excluded.row_json");
  s.bind(1, static_cast<std::int64_t>(t.id))
      .bind_blob(2, pk)
      .bind(3, why.reason)
      .bind(4, why.constraint)
      .bind(5, why.message)
      .bind_blob(6, pack_held(t, row))
      .bind(7, key_json(key_of(t, row)))
      .bind(8, row_json(t, row))
      .bind(9, static_cast<std::int64_t>(now));
  s.run();
}

void Projection::remove_shown(TableInfo& t, const std::string& pk, const Row& shown) {
  Statement& s = cached("remove " + std::to_string(t.id), [&] {
    return "DELETE FROM " + quote_identifier(t.name) + " WHERE " + t.key_where();
  });
  for (std::size_t i = 0; i < t.key_count; ++i) s.bind(static_cast<int>(i + 1), shown[i]);
  std::string message;
  const int rc = run(s, t, pk, message);
  if (rc != SQLITE_DONE)
    throw_sqlite(impl_.db, rc, "deleting " + describe_key(t, key_of(t, shown)));
  if (last_changes_ == 0)
    throw Error(ErrorCode::kSql, "a trigger kept a merge from deleting " +
                                     describe_key(t, key_of(t, shown)) +
                                     " (RAISE(IGNORE) in a BEFORE DELETE trigger)");
  hold_children(t, shown);
}

void Projection::hold_shown(TableInfo& t, const std::string& pk, const Row& held, const Row& shown,
                            const Refusal& why) {
  record_held(t, pk, held, why);
  remove_shown(t, pk, shown);
  event(t, key_of(t, held), true, {}, why.reason);
}

// The rows of other tables whose foreign key pointed at `row` of `parent`, which is no longer
// shown: they wait, held, until a parent with that key is shown again.
void Projection::hold_children(TableInfo& parent, const Row& row) {
  for (auto& [id, child] : impl_.tables) {
    for (const auto& fk : child->foreign_keys) {
      if (lower_case(fk.parent) != lower_case(parent.name)) continue;
      std::vector<crdt::Value> values;
      bool usable = true;
      if (fk.parent_columns.empty()) {
        for (std::size_t i = 0; i < parent.key_count; ++i) values.push_back(row[i]);
      } else {
        for (const auto& name : fk.parent_columns) {
          const auto index = column_named(parent, name);
          if (!index)
            usable = false;
          else
            values.push_back(row[*index]);
        }
      }
      if (!usable || values.size() != fk.columns.size()) continue;
      std::string where;
      for (std::size_t i = 0; i < fk.columns.size(); ++i)
        where += std::string(i ? " AND " : "") +
                 quote_identifier(child->columns[fk.columns[i]].name) + " = ?";
      std::vector<Row> children;
      {
        Statement& s = cached("SELECT " + all_columns(*child) + " FROM " +
                              quote_identifier(child->name) + " WHERE " + where);
        for (std::size_t i = 0; i < values.size(); ++i) s.bind(static_cast<int>(i + 1), values[i]);
        while (s.step()) {
          Row r;
          for (std::size_t i = 0; i < child->columns.size(); ++i)
            r.push_back(s.column(static_cast<int>(i)));
          children.push_back(std::move(r));
        }
        s.reset();
      }
      for (const Row& c : children) {
        if (!missing_parent(*child, c)) continue;  // another parent row has that key
        const std::string pk = pack_primary_key(key_of(*child, c));
        hold_shown(*child, pk, c, c,
                   Refusal{"foreign_key", fk.label,
                           describe_key(*child, key_of(*child, c)) +
                               " cannot be shown: its "
                               "parent " +
                               key_json(values) + " in " + parent.name +
                               " is not there (deleted, or itself held) (" + fk.label + ")"});
      }
    }
  }
}

// Values of columns a later schema version has: kept while the row lives, until a migration
// adds the column (Replica::Impl::adopt_future_column).
void Projection::place_future(const MergedRow& m) {
  if (!m.alive) {
    Statement& gone = cached("DELETE FROM lattice_future_values WHERE table_id = ? AND pk = ?");
    gone.bind(1, static_cast<std::int64_t>(m.table->id)).bind_blob(2, m.pk).run();
    return;
  }
  Statement& unwritten =
      cached("DELETE FROM lattice_future_values WHERE table_id = ? AND pk = ? AND col = ?");
  for (const crdt::ColumnId column : m.unwritten) {
    unwritten.reset();
    unwritten.bind(1, static_cast<std::int64_t>(m.table->id))
        .bind_blob(2, m.pk)
        .bind(3, static_cast<std::int64_t>(column))
        .run();
  }
  Statement& keep = cached(
      "INSERT OR REPLACE INTO lattice_future_values(table_id, pk, col, value) VALUES (?, ?, ?, ?)");
  for (const auto& [column, value] : m.future) {
    keep.reset();
    keep.bind(1, static_cast<std::int64_t>(m.table->id))
        .bind_blob(2, m.pk)
        .bind(3, static_cast<std::int64_t>(column))
        .bind(4, value)
        .run();
  }
}

bool Projection::changes_parent_key(
    const TableInfo& t, const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& changed) {
  for (const auto& [id, child] : impl_.tables)
    for (const auto& fk : child->foreign_keys) {
      if (lower_case(fk.parent) != lower_case(t.name)) continue;
      for (const auto& name : fk.parent_columns)
        for (const auto& [c, v] : changed)
          if (lower_case(c->name) == lower_case(name)) return true;
    }
  return false;
}

void Projection::place(const MergedRow& merged) {
  // Columns a new incarnation left unwritten show their defaults: changes like any other.
  std::optional<MergedRow> reset;
  if (merged.alive && !merged.unwritten.empty() && !merged.table->future_table) {
    reset = merged;
    const Row defaulted = defaults(*merged.table, merged.key);
    for (const crdt::ColumnId id : merged.unwritten) {
      const ColumnInfo* c = merged.table->column(id);
      if (!c || merged.table->is_future(c)) continue;
      reset->changed.emplace_back(
          c, defaulted[static_cast<std::size_t>(c - merged.table->columns.data())]);
    }
  }
  const MergedRow& m = reset ? *reset : merged;
  TableInfo& t = *m.table;
  if (!t.future_columns.empty()) place_future(m);
  if (t.future_table) return;  // no table here yet: everything is in lattice_future_values
  auto held = held_counts_[t.id] ? held_values(impl_, t, m.pk) : std::nullopt;
  auto changed_names = [&] {
    std::vector<std::string> names;
    for (const auto& [c, v] : m.changed) names.push_back(c->name);
    return names;
  };

  if (!m.alive) {
    if (held) {
      Statement& s = cached("DELETE FROM lattice_held WHERE table_id = ? AND pk = ?");
      s.bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, m.pk).run();
      --held_counts_[t.id];
      event(t, m.key, true, {}, "");
    } else if (m.was_alive) {
      if (auto shown = shown_row(t, m.pk)) {
        remove_shown(t, m.pk, *shown);
        event(t, m.key, true, {}, "");
      }
    }
    return;
  }

  auto with_changes = [&](Row row) {
    for (const auto& [c, v] : m.changed) row[static_cast<std::size_t>(c - t.columns.data())] = v;
    return row;
  };
  if (held) {
    const Row row = with_changes(*held);
    if (auto refusal = write(t, m.pk, row, true, {})) {
      record_held(t, m.pk, row, *refusal);
      return;
    }
    Statement& s = cached("DELETE FROM lattice_held WHERE table_id = ? AND pk = ?");
    s.bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, m.pk).run();
    --held_counts_[t.id];
    std::vector<std::string> all;
    for (std::size_t i = t.key_count; i < t.columns.size(); ++i) all.push_back(t.columns[i].name);
    event(t, m.key, false, all, "");
    return;
  }

  std::optional<Row> shown = m.was_alive ? shown_row(t, m.pk) : std::nullopt;
  if (shown) {
    if (m.changed.empty()) return;
    const Row row = with_changes(*shown);
    if (auto refusal = write(t, m.pk, row, false, m.changed)) {
      hold_shown(t, m.pk, row, *shown, *refusal);
      return;
    }
    if (!impl_.listeners.empty()) event(t, m.key, false, changed_names(), "");
    // Children that pointed at a parent key this update changed have lost their parent.
    if (changes_parent_key(t, m.changed)) hold_children(t, *shown);
    return;
  }
  Row start(t.columns.size());
  for (std::size_t i = 0; i < m.key.size(); ++i) start[i] = m.key[i];
  if (m.changed.size() + t.key_count < t.columns.size()) start = defaults(t, m.key);
  const Row row = with_changes(start);
  if (auto refusal = write(t, m.pk, row, true, {})) {
    record_held(t, m.pk, row, *refusal);
    event(t, m.key, true, {}, refusal->reason);
    return;
  }
  if (!impl_.listeners.empty()) event(t, m.key, false, changed_names(), "");
}

void Projection::note_superseded(
    TableInfo& t, const std::string& pk, const std::vector<crdt::Value>& key,
    const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& incoming, bool incoming_wins,
    const crdt::Stamp& loser) {
  std::optional<Row> current = shown_row(t, pk);
  const bool held = !current;
  if (held) current = held_values(impl_, t, pk);
  if (!current) return;
  Row lost = *current;
  bool same = true;
  for (const auto& [c, v] : incoming) {
    auto& cell = lost[static_cast<std::size_t>(c - t.columns.data())];
    same = same && cell == v;
    if (!incoming_wins) cell = v;
  }
  if (same) return;
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  Statement& s = cached(
      "INSERT OR IGNORE INTO lattice_superseded(table_id, pk, hlc, site, key_json, row_json, "
      "message, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, static_cast<std::int64_t>(t.id))
      .bind_blob(2, pk)
      .bind(3, static_cast<std::int64_t>(loser.hlc.value))
      .bind_blob(4, loser.site.as_bytes())
      .bind(5, key_json(key))
      .bind(6, row_json(t, lost))
      .bind(7, describe_key(t, key) +
                   // A held row's key inserted again is most often its resolution, made after
                   // the insert it replaces: not two devices at once.
                   (held ? " was held here and inserted again (a resolution, or the same id "
                           "inserted elsewhere); the insert made by site "
                         : " was inserted on two devices at once; the insert made by site ") +
                   loser.site.to_hex() + " lost to the other, and these are its values")
      .bind(8, static_cast<std::int64_t>(now));
  s.run();
}

void Projection::settle() {
  // A held row whose key the application inserted again is resolved: the insert, a newer
  // write, is shown, and the held values are superseded.
  {
    std::vector<std::pair<TableInfo*, std::string>> resolved;
    Statement select(impl_.db, "SELECT table_id, pk FROM lattice_held");
    while (select.step()) {
      auto it = impl_.tables.find(static_cast<crdt::TableId>(select.column_int(0)));
      if (it != impl_.tables.end())
        resolved.emplace_back(it->second.get(), std::string(select.column_blob(1)));
    }
    select = Statement();
    for (auto& [t, pk] : resolved) {
      if (!shown_row(*t, pk)) continue;
      Statement& s = cached("DELETE FROM lattice_held WHERE table_id = ? AND pk = ?");
      s.bind(1, static_cast<std::int64_t>(t->id)).bind_blob(2, pk).run();
      --held_counts_[t->id];
    }
  }
  // Each round admits at least one row or ends; a row admitted may evict others, which are
  // retried in the next round and lose to it, so the rounds end.
  for (int round = 0; round < 1000; ++round) {
    struct Entry {
      Claim claim;
      TableInfo* table;
    };
    std::vector<Entry> entries;
    {
      Statement select(impl_.db, "SELECT table_id, pk FROM lattice_held");
      std::vector<std::pair<crdt::TableId, std::string>> held;
      while (select.step())
        held.emplace_back(static_cast<crdt::TableId>(select.column_int(0)),
                          std::string(select.column_blob(1)));
      for (auto& [id, pk] : held) {
        auto it = impl_.tables.find(id);
        if (it == impl_.tables.end()) continue;
        entries.push_back({claim(*it->second, pk), it->second.get()});
      }
    }
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return a.claim < b.claim; });
    bool progress = false;
    for (const Entry& e : entries) {
      TableInfo& t = *e.table;
      auto held = held_values(impl_, t, e.claim.pk);
      if (!held) continue;
      if (auto refusal = write(t, e.claim.pk, *held, true, {})) {
        record_held(t, e.claim.pk, *held, *refusal);
        continue;
      }
      Statement& s = cached("DELETE FROM lattice_held WHERE table_id = ? AND pk = ?");
      s.bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, e.claim.pk).run();
      --held_counts_[t.id];
      std::vector<std::string> all;
      for (std::size_t i = t.key_count; i < t.columns.size(); ++i) all.push_back(t.columns[i].name);
      event(t, key_of(t, *held), false, all, "");
      progress = true;
    }
    if (!progress) return;
  }
}

}  // namespace lattice::storage

namespace lattice::storage {

MergeMode::MergeMode(Replica::Impl& impl) : impl_(impl), suspended_(impl), foreign_keys_(false) {
  // Changing the pragma expires every prepared statement, so it is only turned off when some
  // table declares a foreign key (the only case where SQLite would act on one).
  if (impl.any_foreign_keys) {
    Statement enabled(impl.db, "PRAGMA foreign_keys");
    foreign_keys_ = enabled.step() && enabled.column_int(0) != 0;
    enabled = Statement();
    if (foreign_keys_) exec_sql(impl.db, "PRAGMA foreign_keys = OFF");
  }
  impl.merging = true;
}

MergeMode::~MergeMode() {
  impl_.merging = false;
  impl_.side_deletes.clear();
  if (foreign_keys_) sqlite3_exec(impl_.db, "PRAGMA foreign_keys = ON", nullptr, nullptr, nullptr);
}

void Replica::Impl::settle() {
  refresh();
  std::vector<ChangeEvent> events;
  {
    MergeMode mode(*this);
    exec_sql(db, "BEGIN IMMEDIATE");
    try {
      Projection projection(*this, events);
      projection.settle();
      exec_sql(db, "COMMIT");
    } catch (...) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }
  pending_events.insert(pending_events.end(), std::make_move_iterator(events.begin()),
                        std::make_move_iterator(events.end()));
}

void Replica::Impl::settle_after_local_writes() {
  if (!local_commit || !sqlite3_get_autocommit(db)) return;
  local_commit = false;
  any_held.reset();
  const bool held = any_held.step() && any_held.column_int(0) != 0;
  any_held.reset();
  if (!held) return;
  try {
    settle();
  } catch (const Error&) {
    local_commit = true;  // busy or failing: tried again after the next write
  }
}

}  // namespace lattice::storage
