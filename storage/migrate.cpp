// Schema changes of replicated tables (docs/schema-evolution.md): ALTER TABLE statements run
// through Replica::exec keep the catalog and the capture triggers in step, and
// Replica::migrate runs a numbered migration once.
//
// A table and its columns keep the ids they were given (crdt/ names cells by id), so a rename
// keeps every cell's history, an added column gets the id its name gives on every device, and
// a dropped column's id stays reserved.

#include <cctype>
#include <map>
#include <optional>
#include <set>

#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "storage/detail/projection.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

// SQL tokens, enough to read an ALTER TABLE statement: words, quoted identifiers, strings and
// single characters; comments and white space skipped.
struct Token {
  enum class Kind { kWord, kQuoted, kString, kOther, kEnd } kind = Kind::kEnd;
  std::string text;  // the identifier (unquoted) or the character
  std::size_t begin = 0, end = 0;
};

class Tokenizer {
 public:
  explicit Tokenizer(std::string_view sql) : sql_(sql) {}

  Token next() {
    skip();
    Token t;
    t.begin = pos_;
    if (pos_ >= sql_.size()) return t;
    const char c = sql_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (pos_ < sql_.size() && (std::isalnum(static_cast<unsigned char>(sql_[pos_])) ||
                                    sql_[pos_] == '_' || sql_[pos_] == '$'))
        ++pos_;
      t.kind = Token::Kind::kWord;
      t.text = std::string(sql_.substr(t.begin, pos_ - t.begin));
    } else if (c == '"' || c == '`' || c == '[' || c == '\'') {
      const char close = c == '[' ? ']' : c;
      ++pos_;
      while (pos_ < sql_.size()) {
        if (sql_[pos_] == close) {
          if (close != ']' && pos_ + 1 < sql_.size() && sql_[pos_ + 1] == close) {
            t.text += close;
            pos_ += 2;
            continue;
          }
          break;
        }
        t.text += sql_[pos_++];
      }
      if (pos_ >= sql_.size())
        throw Error(ErrorCode::kSql, "unterminated quote in '" + std::string(sql_) + "'");
      ++pos_;
      t.kind = c == '\'' ? Token::Kind::kString : Token::Kind::kQuoted;
    } else {
      ++pos_;
      t.kind = Token::Kind::kOther;
      t.text = std::string(1, c);
    }
    t.end = pos_;
    return t;
  }

  std::size_t position() {
    skip();
    return pos_;
  }

 private:
  void skip() {
    for (;;) {
      while (pos_ < sql_.size() && std::isspace(static_cast<unsigned char>(sql_[pos_]))) ++pos_;
      if (sql_.substr(pos_, 2) == "--") {
        while (pos_ < sql_.size() && sql_[pos_] != '\n') ++pos_;
      } else if (sql_.substr(pos_, 2) == "/*") {
        const auto end = sql_.find("*/", pos_ + 2);
        pos_ = end == std::string_view::npos ? sql_.size() : end + 2;
      } else {
        return;
      }
    }
  }

  std::string_view sql_;
  std::size_t pos_ = 0;
};

bool is_word(const Token& t, const char* word) {
  return t.kind == Token::Kind::kWord && lower_case(t.text) == word;
}

bool is_name(const Token& t) {
  return t.kind == Token::Kind::kWord || t.kind == Token::Kind::kQuoted ||
         t.kind == Token::Kind::kString;
}

}  // namespace

std::optional<AlterStatement> parse_alter(std::string_view sql) {
  Tokenizer tokens(sql);
  const Token verb = tokens.next();
  if (is_word(verb, "drop")) {
    if (!is_word(tokens.next(), "table")) return std::nullopt;
    Token name = tokens.next();
    if (is_word(name, "if")) {
      if (!is_word(tokens.next(), "exists")) return std::nullopt;
      name = tokens.next();
    }
    if (!is_name(name)) return std::nullopt;
    Token after = tokens.next();
    if (after.kind == Token::Kind::kOther && after.text == ".") {
      if (lower_case(name.text) != "main") return std::nullopt;
      name = tokens.next();
      if (!is_name(name)) return std::nullopt;
    }
    AlterStatement out;
    out.kind = AlterStatement::Kind::kDropTable;
    out.table = name.text;
    return out;
  }
  if (!is_word(verb, "alter")) return std::nullopt;
  if (!is_word(tokens.next(), "table")) return std::nullopt;
  AlterStatement out;
  Token name = tokens.next();
  if (!is_name(name)) return std::nullopt;
  Token after = tokens.next();
  if (after.kind == Token::Kind::kOther && after.text == ".") {
    if (lower_case(name.text) != "main") return std::nullopt;  // another schema: not ours
    name = tokens.next();
    if (!is_name(name)) return std::nullopt;
    after = tokens.next();
  }
  out.table = name.text;
  auto name_after = [&](const char* optional_word) {
    Token t = tokens.next();
    if (is_word(t, optional_word)) t = tokens.next();
    if (!is_name(t))
      throw Error(ErrorCode::kSql, "cannot read the column name in '" + std::string(sql) + "'");
    return t;
  };
  if (is_word(after, "rename")) {
    const std::size_t mark = tokens.position();
    Token t = tokens.next();
    if (is_word(t, "to")) {
      out.kind = AlterStatement::Kind::kRenameTable;
      const Token to = tokens.next();
      if (!is_name(to)) return std::nullopt;
      out.new_name = to.text;
      return out;
    }
    (void)mark;
    if (is_word(t, "column")) t = tokens.next();
    if (!is_name(t)) return std::nullopt;
    out.kind = AlterStatement::Kind::kRenameColumn;
    out.column = t.text;
    if (!is_word(tokens.next(), "to")) return std::nullopt;
    const Token to = tokens.next();
    if (!is_name(to)) return std::nullopt;
    out.new_name = to.text;
    return out;
  }
  if (is_word(after, "add")) {
    out.kind = AlterStatement::Kind::kAddColumn;
    out.column = name_after("column").text;
    return out;
  }
  if (is_word(after, "drop")) {
    out.kind = AlterStatement::Kind::kDropColumn;
    out.column = name_after("column").text;
    return out;
  }
  return std::nullopt;
}

void Replica::Impl::alter(const AlterStatement& statement, const std::function<void()>& run) {
  TableInfo* table = table_by_name(statement.table);
  if (!table) throw Error(ErrorCode::kInternal, "alter of a table that is not replicated");
  const crdt::TableId id = table->id;
  const std::string name = table->name;
  auto column_named = [&](const std::string& column) -> const ColumnInfo& {
    for (const auto& c : table->columns)
      if (lower_case(c.name) == lower_case(column)) return c;
    throw Error(ErrorCode::kSchema,
                "table '" + name + "' has no replicated column '" + column + "'");
  };
  if (statement.kind == AlterStatement::Kind::kRenameColumn ||
      statement.kind == AlterStatement::Kind::kDropColumn) {
    const ColumnInfo& c = column_named(statement.column);
    if (c.key_position)
      throw Error(
          ErrorCode::kSchema,
          "column '" + name + "." + c.name +
              "' is part of the primary key, which names "
              "each row on every device: it cannot be " +
              (statement.kind == AlterStatement::Kind::kDropColumn ? "dropped" : "renamed"));
  }

  exec_sql(db, "SAVEPOINT lattice_alter");
  try {
    internal_ddl = true;
    // The capture triggers name the table's columns; SQLite would refuse to drop a column they
    // use. They go, and come back for the table as it is after the change.
    drop_table_triggers(id);
    run();  // the application's ALTER TABLE itself

    switch (statement.kind) {
      case AlterStatement::Kind::kRenameTable: {
        Statement rename(db, "UPDATE lattice_tables SET name = ? WHERE id = ?");
        rename.bind(1, statement.new_name).bind(2, static_cast<std::int64_t>(id)).run();
        break;
      }
      case AlterStatement::Kind::kRenameColumn: {
        const ColumnInfo& c = column_named(statement.column);
        Statement rename(db, "UPDATE lattice_columns SET name = ? WHERE table_id = ? AND id = ?");
        rename.bind(1, statement.new_name)
            .bind(2, static_cast<std::int64_t>(id))
            .bind(3, static_cast<std::int64_t>(c.id))
            .run();
        break;
      }
      case AlterStatement::Kind::kDropColumn: {
        const ColumnInfo& c = column_named(statement.column);
        Statement drop(db, "UPDATE lattice_columns SET dropped = 1 WHERE table_id = ? AND id = ?");
        drop.bind(1, static_cast<std::int64_t>(id)).bind(2, static_cast<std::int64_t>(c.id)).run();
        // Its cells stop travelling: nothing is left to send of them.
        exec_sql(db,
                 "DELETE FROM " + table->cells_table() + " WHERE col = " + std::to_string(c.id));
        exec_sql(db,
                 "DELETE FROM " + table->counters_table() + " WHERE col = " + std::to_string(c.id));
        break;
      }
      case AlterStatement::Kind::kAddColumn:
        add_column(*table, statement.column);
        break;
      case AlterStatement::Kind::kDropTable: {
        // Its metadata goes with it; its id and name stay reserved, and changes peers still
        // send for it are dropped.
        for (const std::string& meta : {table->rows_table(), table->cells_table(),
                                        table->counters_table(), table->replaced_table()})
          exec_sql(db, "DROP TABLE IF EXISTS " + meta);
        const std::string where = " WHERE table_id = " + std::to_string(id);
        exec_sql(db,
                 "DELETE FROM lattice_held" + where + ";\nDELETE FROM lattice_superseded" + where +
                     ";\nDELETE FROM lattice_column_added" + where +
                     ";\nDELETE FROM lattice_counter_undo" + where +
                     ";\nUPDATE lattice_tables SET dropped = 1 WHERE id = " + std::to_string(id));
        break;
      }
    }
    load_catalog();
    catalog_schema_version = -1;
    if (statement.kind == AlterStatement::Kind::kAddColumn) {
      TableInfo& altered = *tables.at(id);
      std::set<crdt::ColumnId> joined;
      for (const auto& c : altered.columns)
        if (adopted_this_transaction.count({id, c.id})) joined.insert(c.id);
      if (!joined.empty()) fill_from_future(altered, joined, false);
    }
    if (statement.kind != AlterStatement::Kind::kDropTable) {
      TableInfo* altered = tables.at(id).get();
      exec_sql(db, metadata_tables_sql(*altered));
      exec_sql(db, capture_triggers_sql(*altered));
    }
    internal_ddl = false;
    exec_sql(db, "RELEASE lattice_alter");
  } catch (...) {
    internal_ddl = false;
    sqlite3_exec(db, "ROLLBACK TO lattice_alter; RELEASE lattice_alter", nullptr, nullptr, nullptr);
    load_catalog();
    catalog_schema_version = -1;
    throw;
  }
}

void Replica::Impl::fill_from_future(TableInfo& t, const std::set<crdt::ColumnId>& columns,
                                     bool insert_rows) {
  // The values merges kept aside, by row.
  std::map<std::string, std::vector<std::pair<const ColumnInfo*, crdt::Value>>> rows;
  auto column = [&](crdt::ColumnId id) -> const ColumnInfo* {
    for (const auto& c : t.columns)
      if (c.id == id && columns.count(id)) return &c;
    return nullptr;
  };
  {
    Statement values(db, "SELECT pk, col, value FROM lattice_future_values WHERE table_id = ?");
    values.bind(1, static_cast<std::int64_t>(t.id));
    while (values.step())
      if (const ColumnInfo* c = column(static_cast<crdt::ColumnId>(values.column_int(1))))
        rows[std::string(values.column_blob(0))].emplace_back(c, values.column(2));
    // A counter's value is the sum of its parts in the row's incarnation.
    Statement sums(db,
                   "SELECT c.pk, c.col, sum(c.total) FROM " + t.counters_table() + " c JOIN " +
                       t.rows_table() +
                       " r ON r.pk = c.pk AND r.cl = c.cl WHERE r.cl % 2 = 1 GROUP BY c.pk, c.col");
    while (sums.step())
      if (const ColumnInfo* c = column(static_cast<crdt::ColumnId>(sums.column_int(1))))
        if (c->kind == crdt::ColumnKind::kCounter)
          rows[std::string(sums.column_blob(0))].emplace_back(c, sums.column(2));
    if (insert_rows) {
      Statement live(db, "SELECT pk FROM " + t.rows_table() + " WHERE cl % 2 = 1");
      while (live.step()) rows[std::string(live.column_blob(0))];
    }
  }
  // Written as merges write: capture off, application triggers kept from replicated tables,
  // constraints checked (a row that breaks one is held).
  std::vector<ChangeEvent> events;
  {
    CaptureSuspended suspended(*this);
    const bool was_merging = merging;
    merging = true;
    try {
      Projection projection(*this, events);
      for (auto& [pk, values] : rows) {
        MergedRow m;
        m.table = &t;
        m.pk = pk;
        m.key = unpack_primary_key(pk, t.key_count);
        m.alive = true;
        m.was_alive = !insert_rows;
        m.changed = std::move(values);
        if (m.changed.empty() && !insert_rows) continue;
        projection.place(m);
      }
    } catch (...) {
      merging = was_merging;
      throw;
    }
    merging = was_merging;
  }
  std::string ids;
  for (crdt::ColumnId id : columns)
    ids += std::string(ids.empty() ? "" : ", ") + std::to_string(id);
  exec_sql(db, "DELETE FROM lattice_future_values WHERE table_id = " + std::to_string(t.id) +
                   " AND col IN (" + ids + ")");
  pending_events.insert(pending_events.end(), std::make_move_iterator(events.begin()),
                        std::make_move_iterator(events.end()));
}

namespace {

// The declared type that gives a column the affinity a manifest names.
std::string declared_type(const ManifestColumn& c) {
  static const std::map<std::string, std::string> kDeclared = {{"none", ""},
                                                               {"text", " TEXT"},
                                                               {"numeric", " NUMERIC"},
                                                               {"integer", " INTEGER"},
                                                               {"real", " REAL"}};
  auto it = kDeclared.find(c.affinity);
  return (it == kDeclared.end() ? std::string() : it->second) +
         (c.kind == "counter" ? " NOT NULL DEFAULT 0" : "");
}

// SELECT lattice_replicate(table, '{"c": "counter", ...}') for the table's counters, or "".
std::string replicate_sql(const std::string& table, const std::vector<const ManifestColumn*>& all,
                          bool always) {
  std::string types;
  for (const ManifestColumn* c : all)
    if (c->kind == "counter")
      types += (types.empty() ? "" : ", ") + crdt::json_quote(c->name) + ": \"counter\"";
  if (types.empty() && !always) return "";
  return "SELECT lattice_replicate(" + quote_literal(table) + ", " +
         quote_literal("{" + types + "}") + ");\n";
}

std::vector<const ManifestColumn*> key_columns(const ManifestTable& t) {
  std::vector<const ManifestColumn*> out;
  for (const auto& c : t.columns)
    if (c.kind == "key") out.push_back(&c);
  return out;
}

// The statements that take a replica from `from` to `to`, matching tables and columns by id:
// drops first (their names may be taken again), then renames, then additions. The ids of what
// is added go into `table_hints` and `column_hints`.
std::string migration_sql(
    const SchemaManifest& from, const SchemaManifest& to,
    std::map<std::string, crdt::TableId>& table_hints,
    std::map<std::pair<crdt::TableId, std::string>, crdt::ColumnId>& column_hints) {
  auto fail = [](const std::string& why) {
    return Error(ErrorCode::kSchema, "cannot migrate to the other schema: " + why);
  };
  std::string sql;
  for (const auto& t : from.tables)
    if (!to.table(t.id)) sql += "DROP TABLE " + quote_identifier(t.name) + ";\n";
  for (const auto& t : to.tables) {
    const ManifestTable* have = from.table(t.id);
    if (!have) continue;
    const auto keys = key_columns(t), had_keys = key_columns(*have);
    bool same_key = keys.size() == had_keys.size();
    for (std::size_t i = 0; same_key && i < keys.size(); ++i)
      same_key = keys[i]->id == had_keys[i]->id && keys[i]->affinity == had_keys[i]->affinity;
    if (!same_key) throw fail("table '" + t.name + "' has another primary key");
    const std::string table = quote_identifier(t.name);
    if (have->name != t.name)
      sql += "ALTER TABLE " + quote_identifier(have->name) + " RENAME TO " + table + ";\n";
    for (const auto& c : have->columns)
      if (!t.column(c.id))
        sql += "ALTER TABLE " + table + " DROP COLUMN " + quote_identifier(c.name) + ";\n";
    std::vector<const ManifestColumn*> added;
    for (const auto& c : t.columns) {
      if (c.kind == "key") {
        if (have->column(c.id)->name != c.name)
          throw fail("key column '" + t.name + "." + c.name + "' has another name");
        continue;
      }
      const ManifestColumn* mine = have->column(c.id);
      if (!mine) {
        auto dropped = from.dropped_columns.find(t.id);
        if (dropped != from.dropped_columns.end() && dropped->second.count(c.id))
          throw fail("column '" + t.name + "." + c.name +
                     "' has the id of a column dropped here, which stays reserved");
        added.push_back(&c);
        continue;
      }
      if (mine->affinity != c.affinity || mine->kind != c.kind)
        throw fail("column '" + t.name + "." + c.name + "' is " + mine->affinity + " " +
                   mine->kind + " here but " + c.affinity + " " + c.kind + " there");
      if (mine->name != c.name)
        sql += "ALTER TABLE " + table + " RENAME COLUMN " + quote_identifier(mine->name) + " TO " +
               quote_identifier(c.name) + ";\n";
    }
    for (const ManifestColumn* c : added) {
      sql += "ALTER TABLE " + table + " ADD COLUMN " + quote_identifier(c->name) +
             declared_type(*c) + ";\n";
      column_hints[{t.id, c->name}] = c->id;
    }
    sql += replicate_sql(t.name, added, false);
  }
  for (const auto& t : to.tables) {
    if (from.table(t.id)) continue;
    if (from.dropped_tables.count(t.id))
      throw fail("table '" + t.name + "' has the id of a table dropped here, which stays reserved");
    std::string columns, keys;
    std::vector<const ManifestColumn*> all;
    for (const auto& c : t.columns) {
      columns += (columns.empty() ? "" : ", ") + quote_identifier(c.name) + declared_type(c);
      if (c.kind == "key") keys += (keys.empty() ? "" : ", ") + quote_identifier(c.name);
      column_hints[{t.id, c.name}] = c.id;
      all.push_back(&c);
    }
    table_hints[t.name] = t.id;
    sql += "CREATE TABLE " + quote_identifier(t.name) + "(" + columns + ", PRIMARY KEY (" + keys +
           "));\n" + replicate_sql(t.name, all, true);
  }
  return sql;
}

}  // namespace

std::int64_t Replica::schema_version() {
  Statement select(impl_->db, "SELECT coalesce(max(version), 0) FROM lattice_migrations");
  select.step();
  return select.column_int(0);
}

std::string Replica::schema_manifest_at(std::int64_t version) {
  Statement select(impl_->db, "SELECT manifest FROM lattice_schema_history WHERE version = ?");
  select.bind(1, version);
  return select.step() ? select.column_text(0) : std::string();
}

bool Replica::migrate(std::int64_t version, std::string_view sql) {
  if (version < 1)
    throw Error(ErrorCode::kInvalidArgument,
                "migration versions start at 1, not " + std::to_string(version));
  return run_migration(version, sql, nullptr);
}

bool Replica::migrate_to(std::int64_t version, const SchemaManifest& target) {
  if (version < 0)
    throw Error(ErrorCode::kInvalidArgument,
                "migration versions start at 1 (0: none), not " + std::to_string(version));
  return run_migration(version, {}, &target);
}

bool Replica::run_migration(std::int64_t version, std::string_view sql,
                            const SchemaManifest* target) {
  sqlite3* db = impl_->db;
  if (!sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "migrate cannot run inside an open transaction; commit first");
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    Statement before(db, "SELECT sql FROM lattice_migrations WHERE version = ?");
    before.bind(1, version);
    if (version > 0 && before.step()) {
      const std::string ran_before = before.column_text(0);
      before = Statement();
      if (target) {
        const std::string had = schema_manifest_at(version);
        if (had != format_manifest(*target))
          throw Error(ErrorCode::kSchema,
                      "migration " + std::to_string(version) +
                          " ran here before with another result: " +
                          (had.empty() ? std::string("its schema was not recorded")
                                       : manifest_difference(parse_manifest(had), *target,
                                                             "replica", "other side")));
      } else if (ran_before != sql) {
        throw Error(ErrorCode::kSchema, "migration " + std::to_string(version) +
                                            " ran before with other SQL; a migration's number "
                                            "names one change: give this one a new number");
      }
      exec_sql(db, "COMMIT");
      return false;
    }
    before = Statement();
    if (version > 0 && version <= schema_version()) {
      exec_sql(db, "COMMIT");
      return false;
    }
    std::string ran(sql);
    if (target) {
      ran =
          migration_sql(schema_manifest(), *target, impl_->table_id_hints, impl_->column_id_hints);
      exec(ran);
      impl_->table_id_hints.clear();
      impl_->column_id_hints.clear();
      const SchemaManifest now = schema_manifest();
      if (format_manifest(now) != format_manifest(*target))
        throw Error(ErrorCode::kSchema,
                    "migrating to the other schema left a difference: " +
                        manifest_difference(now, *target, "replica", "other side"));
    } else {
      exec(sql);
    }
    if (version > 0) {
      Statement record(db,
                       "INSERT INTO lattice_migrations(version, sql, applied_at) VALUES (?, ?, ?)");
      record.bind(1, version)
          .bind(2, ran)
          .bind(3, static_cast<std::int64_t>(impl_->clock.wall_ms()))
          .run();
      Statement history(db,
                        "INSERT OR REPLACE INTO lattice_schema_history(version, manifest) "
                        "VALUES (?, ?)");
      history.bind(1, version).bind(2, format_manifest(schema_manifest())).run();
    }
    exec_sql(db, "COMMIT");
  } catch (...) {
    impl_->table_id_hints.clear();
    impl_->column_id_hints.clear();
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    impl_->load_catalog();
    impl_->catalog_schema_version = -1;
    throw;
  }
  impl_->settle_after_local_writes();
  impl_->deliver_events();
  return true;
}

}  // namespace lattice::storage
