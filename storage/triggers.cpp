// The capture triggers and metadata tables of a replicated table: the SQL lattice_replicate
// creates (and Replica::open recreates after an upgrade). docs/architecture.md ("A local write")
// shows their effect; docs/crdt-semantics.md says what each write means; docs/data-quality.md
// why REPLACE, ids and held rows need the triggers below.
//
// Every trigger runs only WHEN lattice_capture_enabled(): merges write the same tables with
// capture suspended, and a connection Lattice did not open lacks the function, so its writes to
// a replicated table fail instead of going uncaptured.

#include "storage/detail/replica_impl.hpp"

namespace lattice::storage {

std::string sql_literal(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string key_expression(const TableInfo& t, const char* row) {
  std::string out = "lattice_pk(";
  for (std::size_t i = 0; i < t.key_count; ++i) {
    if (i) out += ", ";
    out += std::string(row) + "." + quote_identifier(t.columns[i].name);
  }
  return out + ")";
}

namespace {

// The SQL text of one table's triggers, built step by step: one method per trigger.
class TriggerWriter {
 public:
  explicit TriggerWriter(const TableInfo& t)
      : t_(t),
        id_(std::to_string(t.id)),
        table_(quote_identifier(t.name)),
        rows_(t.rows_table()),
        cells_(t.cells_table()),
        counters_(t.counters_table()),
        replaced_(t.replaced_table()),
        new_key_(key_expression(t, "NEW")),
        old_key_(key_expression(t, "OLD")) {}

  std::string all() {
    auto_id_guard();
    replace_candidates();
    insert();
    delete_();
    key_guard();
    lww_update();
    counter_updates();
    discard_held();
    return sql_;
  }

 private:
  // Persists this transaction's sequence number and clock once, at its first write.
  static constexpr const char* kBump =
      "UPDATE lattice_local SET seq = lattice_seq(), hlc = lattice_hlc() "
      "WHERE id = 0 AND seq < lattice_seq();\n";

  std::string name(const ColumnInfo& c) const { return quote_identifier(c.name); }

  std::string trigger(const std::string& suffix, const std::string& when_and_on) const {
    return "CREATE TRIGGER lattice_" + id_ + "_" + suffix + " " + when_and_on;
  }

  // A column's value changed, exactly as the merge sees values: byte for byte (COLLATE BINARY,
  // so 'alice' -> 'Alice' counts in a NOCASE column), type included (1 -> 1.0), and the sign of
  // a zero in a column without affinity (the only kind that keeps -0.0).
  std::string changed(const ColumnInfo& c) const {
    const std::string n = name(c);
    std::string out = "(OLD." + n + " IS NOT NEW." + n + " COLLATE BINARY OR typeof(OLD." + n +
                      ") <> typeof(NEW." + n + ")";
    if (c.affinity == Affinity::kBlob)
      out += " OR lattice_negative_zero(OLD." + n + ") <> lattice_negative_zero(NEW." + n + ")";
    return out + ")";
  }

  std::string counter_check(const ColumnInfo& c) const {
    return "SELECT RAISE(ABORT, " +
           sql_literal("lattice: counter column " + t_.name + "." + c.name +
                       " takes integer values only (a sum past 2^63-1 is not an integer)") +
           ") WHERE typeof(NEW." + name(c) + ") <> 'integer';\n";
  }

  // Keeps the local counter component as it was before this transaction first changed it, so
  // that Replica::rekey can split later increments off to a new site id. An upsert clause, not
  // INSERT OR IGNORE: inside a trigger, the conflict policy of the statement that fired it
  // overrides OR IGNORE, and an application's INSERT ... ON CONFLICT DO UPDATE that changed a
  // counter twice in one transaction then failed on the second entry.
  std::string counter_undo(const ColumnInfo& c, const std::string& key) const {
    const std::string col = std::to_string(c.id);
    return "INSERT INTO lattice_counter_undo(seq, table_id, pk, col, had, cl, part_seq, total) "
           "SELECT lattice_seq(), " +
           id_ + ", " + key + ", " + col +
           ", x.pk IS NOT NULL, x.cl, x.seq, x.total FROM (SELECT 1) LEFT JOIN " + counters_ +
           " x ON x.pk = " + key + " AND x.col = " + col +
           " AND x.site = 0 WHERE true ON CONFLICT DO NOTHING;\n";
  }

  // INTEGER PRIMARY KEY: an id SQLite picks itself (max + 1) would be picked again by every
  // device that inserts offline, and the rows would merge into one. Such inserts are refused;
  // lattice_id() gives ids unique across devices. (In a BEFORE trigger, an id SQLite is about to
  // pick reads as -1, so an explicit -1 is refused too.)
  void auto_id_guard() {
    if (!t_.rowid_key) return;
    const std::string key = name(t_.columns[0]);
    sql_ +=
        trigger("auto_id", "BEFORE INSERT ON " + table_ +
                               " WHEN lattice_capture_enabled() AND NEW." + key + " = -1 BEGIN\n");
    sql_ += "SELECT RAISE(ABORT, " +
            sql_literal("lattice: table " + t_.name +
                        " is replicated: give each new row an id "
                        "unique across devices, e.g. INSERT INTO " +
                        t_.name + "(" + t_.columns[0].name +
                        ", ...) VALUES (lattice_id(), ...); an id SQLite "
                        "picks (the largest plus one) is picked again by other devices that "
                        "insert offline") +
            ");\nEND;\n";
  }

  // With recursive_triggers off (plain SQLite's default), the rows an INSERT OR REPLACE or
  // UPDATE OR REPLACE deletes to make room under a UNIQUE constraint fire no delete trigger.
  // Before such a write, the rows it could displace are noted in lattice_replaced_<id>; after
  // it, those that are gone are captured as deleted. A statement that fails or is ignored
  // leaves notes that the next one clears, and a note only counts for a row that is missing
  // from the table and still alive in the metadata.
  std::string conflicting_rows(const std::string& row) const {
    std::string any;
    for (const auto& u : t_.uniques) {
      std::string all;
      for (std::size_t i = 0; i < u.columns.size(); ++i) {
        const std::string n = name(t_.columns[u.columns[i]]);
        all += std::string(all.empty() ? "" : " AND ") + "x." + n + " = " + row + "." + n +
               " COLLATE " + u.collations[i];
      }
      any += std::string(any.empty() ? "" : " OR ") + "(" + all + ")";
    }
    std::string same_key;
    for (std::size_t i = 0; i < t_.key_count; ++i) {
      const std::string n = name(t_.columns[i]);
      same_key += std::string(i ? " AND " : "") + "x." + n + " IS " + row + "." + n;
    }
    return "(" + any + ") AND NOT (" + same_key + ")";
  }

  void note_candidates(const std::string& event) {
    std::string keys;
    for (std::size_t i = 0; i < t_.key_count; ++i) keys += ", x." + name(t_.columns[i]);
    const std::string where = conflicting_rows("NEW");
    sql_ += trigger("replace_" + event, "BEFORE " + event_clause(event) + " ON " + table_ +
                                            " WHEN lattice_capture_enabled() AND EXISTS "
                                            "(SELECT 1 FROM " +
                                            table_ + " x WHERE " + where + ") BEGIN\n");
    sql_ += "DELETE FROM " + replaced_ + ";\n";
    sql_ += "INSERT INTO " + replaced_ + " SELECT " + new_key_ + ", " + key_expression(t_, "x") +
            keys + " FROM " + table_ + " x WHERE " + where + " ON CONFLICT DO NOTHING;\nEND;\n";
  }

  std::string event_clause(const std::string& event) const {
    if (event == "insert") return "INSERT";
    std::string columns;
    for (const auto& u : t_.uniques)
      for (std::size_t c : u.columns)
        if (columns.find(name(t_.columns[c])) == std::string::npos)
          columns += std::string(columns.empty() ? "" : ", ") + name(t_.columns[c]);
    return "UPDATE OF " + columns;
  }

  // The statements that capture the deletes of the rows a REPLACE displaced.
  std::string capture_replaced() const {
    std::string gone;
    for (std::size_t i = 0; i < t_.key_count; ++i) {
      const std::string n = name(t_.columns[i]);
      gone += std::string(i ? " AND " : "") + "x." + n + " = p.k" + std::to_string(i);
    }
    const std::string displaced =
        "(SELECT p.pk FROM " + replaced_ + " p WHERE p.ins_pk = " + new_key_ +
        " AND NOT EXISTS (SELECT 1 FROM " + table_ + " x WHERE " + gone + "))";
    std::string sql;
    sql += "DELETE FROM " + cells_ + " WHERE pk IN " + displaced + ";\n";
    sql += "DELETE FROM " + counters_ + " WHERE pk IN " + displaced + ";\n";
    sql += "UPDATE " + rows_ +
           " SET cl = cl + 1, hlc = lattice_hlc(), site = 0, seq = lattice_seq() WHERE cl % 2 = 1 "
           "AND pk IN " +
           displaced + ";\n";
    sql += "DELETE FROM " + replaced_ + " WHERE ins_pk = " + new_key_ + ";\n";
    return sql;
  }

  void replace_candidates() {
    if (t_.uniques.empty()) return;
    note_candidates("insert");
    note_candidates("update");
    sql_ += trigger("replace_update_done", "AFTER " + event_clause("update") + " ON " + table_ +
                                               " WHEN lattice_capture_enabled() AND EXISTS "
                                               "(SELECT 1 FROM " +
                                               replaced_ + " WHERE ins_pk = " + new_key_ +
                                               ") BEGIN\n" + kBump);
    sql_ += capture_replaced() + "END;\n";
  }

  void insert() {
    std::string key_null;
    for (std::size_t i = 0; i < t_.key_count; ++i)
      key_null += std::string(i ? " OR " : "") + "NEW." + name(t_.columns[i]) + " IS NULL";
    sql_ +=
        trigger("insert", "AFTER INSERT ON " + table_ + " WHEN lattice_capture_enabled() BEGIN\n");
    sql_ += "SELECT RAISE(ABORT, " +
            sql_literal("lattice: the primary key of a row of " + t_.name + " may not be NULL") +
            ") WHERE " + key_null + ";\n";
    // SQLite takes the real 1.0 and the integer 1 for the same key; only a column without
    // affinity would store both as given, so such a column takes no reals as keys.
    for (std::size_t i = 0; i < t_.key_count; ++i) {
      const ColumnInfo& c = t_.columns[i];
      if (c.affinity != Affinity::kBlob) continue;
      sql_ += "SELECT RAISE(ABORT, " +
              sql_literal("lattice: key column " + t_.name + "." + c.name +
                          " has no type, so a real key such as 1.0 would be the integer key 1 "
                          "to SQLite but another key to other devices; use integer, text or "
                          "blob keys, or declare the column's type") +
              ") WHERE typeof(NEW." + name(c) + ") = 'real';\n";
    }
    for (const auto& c : t_.columns)
      if (c.kind == crdt::ColumnKind::kCounter) sql_ += counter_check(c);
    sql_ += kBump;
    if (!t_.uniques.empty()) sql_ += capture_replaced();
    // The values of a later version's columns that this replica keeps aside (future columns,
    // docs/schema-evolution.md) are not this write's: each keeps the version it had. One at
    // the row's version gets an override at it before the row takes this write's; in a new
    // incarnation, those of the last one are gone with it.
    // Only tables that have future columns pay for them: merge.cpp recreates a table's
    // triggers when its first future column arrives.
    const bool has_future = !t_.future_columns.empty();
    const std::string future =
        "lattice_future_values WHERE table_id = " + id_ + " AND pk = " + new_key_;
    if (has_future) {
      // An upsert clause, not INSERT OR IGNORE, which an INSERT OR REPLACE that fired this
      // trigger would turn into a replace: a second replace then gave the column the first
      // one's version, as if this device had written a column it does not have.
      sql_ += "INSERT INTO " + cells_ + "(pk, col, cl, hlc, site, seq) SELECT r.pk, " +
              "f.col, r.cl, r.hlc, r.site, r.seq FROM " + rows_ +
              " r JOIN lattice_future_values f ON f.table_id = " + id_ +
              " AND f.pk = r.pk WHERE r.pk = " + new_key_ +
              " AND r.cl % 2 = 1 ON CONFLICT DO NOTHING;\n";
      sql_ += "DELETE FROM " + future + " AND NOT EXISTS (SELECT 1 FROM " + rows_ +
              " WHERE pk = " + new_key_ + " AND cl % 2 = 1);\n";
    }
    sql_ += "INSERT INTO " + rows_ + "(pk, cl, hlc, site, seq) VALUES (" + new_key_ +
            ", 1, lattice_hlc(), 0, lattice_seq()) ON CONFLICT(pk) DO UPDATE SET "
            "cl = cl + 1 - (cl % 2), hlc = excluded.hlc, site = 0, seq = excluded.seq;\n";
    sql_ += "DELETE FROM " + cells_ + " WHERE pk = " + new_key_ +
            (has_future ? " AND col NOT IN (SELECT col FROM " + future + ")" : std::string()) +
            ";\n";
    for (const auto& c : t_.columns) {
      if (c.kind != crdt::ColumnKind::kCounter) continue;
      const std::string col = std::to_string(c.id);
      // The local component is what makes the counter read NEW.c in this incarnation.
      sql_ += counter_undo(c, new_key_);
      sql_ +=
          "INSERT INTO " + counters_ + "(pk, col, site, cl, seq, total) SELECT r.pk, " + col +
          ", 0, r.cl, lattice_seq(), NEW." + name(c) + " - coalesce((SELECT sum(x.total) FROM " +
          counters_ + " x WHERE x.pk = r.pk AND x.col = " + col +
          " AND x.site <> 0 AND x.cl = r.cl), 0) FROM " + rows_ + " r WHERE r.pk = " + new_key_ +
          " ON CONFLICT(pk, col, site) DO UPDATE SET cl = excluded.cl, seq = excluded.seq, "
          "total = excluded.total;\n";
    }
    sql_ += "END;\n";
  }

  void delete_() {
    sql_ +=
        trigger("delete", "AFTER DELETE ON " + table_ + " WHEN lattice_capture_enabled() BEGIN\n") +
        kBump;
    sql_ += "INSERT INTO " + rows_ + "(pk, cl, hlc, site, seq) VALUES (" + old_key_ +
            ", 2, lattice_hlc(), 0, lattice_seq()) ON CONFLICT(pk) DO UPDATE SET "
            "cl = cl + (cl % 2), hlc = excluded.hlc, site = 0, seq = excluded.seq;\n";
    sql_ += "DELETE FROM " + cells_ + " WHERE pk = " + old_key_ + ";\n";
    sql_ += "DELETE FROM " + counters_ + " WHERE pk = " + old_key_ + ";\n";
    if (!t_.future_columns.empty())
      sql_ += "DELETE FROM lattice_future_values WHERE table_id = " + id_ +
              " AND pk = " + old_key_ + ";\n";
    sql_ += "END;\n";
  }

  // A row's key is its identity on every device. For an INTEGER PRIMARY KEY table the key is
  // the rowid, which `UPDATE ... SET rowid = ...` (or _rowid_, oid) changes without naming the
  // column, so those names are guarded too.
  void key_guard() {
    std::string key_changed, key_columns;
    for (std::size_t i = 0; i < t_.key_count; ++i) {
      const std::string c = name(t_.columns[i]);
      key_changed += std::string(i ? " OR " : "") + "OLD." + c + " IS NOT NEW." + c;
      key_columns += std::string(i ? ", " : "") + c;
    }
    if (t_.rowid_key) key_columns += ", rowid, _rowid_, oid";
    sql_ += trigger("update_key", "BEFORE UPDATE OF " + key_columns + " ON " + table_ +
                                      " WHEN lattice_capture_enabled() AND (" + key_changed +
                                      ") BEGIN\n");
    sql_ += "SELECT RAISE(ABORT, " +
            sql_literal("lattice: the primary key of a replicated row cannot change (table " +
                        t_.name + "); delete the row and insert it under the new key") +
            ");\nEND;\n";
  }

  // One trigger for every last-writer-wins column, so an UPDATE of several columns enters one
  // trigger program and bumps the clock once; each changed column gets its cell version.
  void lww_update() {
    std::string names, any_changed, changed_ids;
    for (const auto& c : t_.columns) {
      if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
      names += std::string(names.empty() ? "" : ", ") + name(c);
      any_changed += std::string(any_changed.empty() ? "" : " OR ") + changed(c);
      changed_ids += std::string(changed_ids.empty() ? "" : " UNION ALL ") + "SELECT " +
                     std::to_string(c.id) + " AS col WHERE " + changed(c);
    }
    if (names.empty()) return;
    sql_ +=
        trigger("update", "AFTER UPDATE OF " + names + " ON " + table_ +
                              " WHEN lattice_capture_enabled() AND (" + any_changed + ") BEGIN\n") +
        kBump;
    sql_ += "INSERT INTO " + cells_ + "(pk, col, cl, hlc, site, seq) SELECT r.pk, c.col, r.cl, " +
            "lattice_hlc(), 0, lattice_seq() FROM " + rows_ + " r, (" + changed_ids +
            ") c WHERE r.pk = " + new_key_ +
            " ON CONFLICT(pk, col) DO UPDATE SET cl = excluded.cl, hlc = excluded.hlc, "
            "site = 0, seq = excluded.seq;\nEND;\n";
  }

  // Counters record the delta, column by column.
  void counter_updates() {
    for (const auto& c : t_.columns) {
      if (c.kind != crdt::ColumnKind::kCounter) continue;
      const std::string n = name(c), col = std::to_string(c.id);
      sql_ += trigger("update_" + col, "AFTER UPDATE OF " + n + " ON " + table_ +
                                           " WHEN lattice_capture_enabled() AND " + changed(c) +
                                           " BEGIN\n");
      sql_ += counter_check(c) + kBump + counter_undo(c, new_key_);
      sql_ += "INSERT INTO " + counters_ + "(pk, col, site, cl, seq, total) SELECT r.pk, " + col +
              ", 0, r.cl, lattice_seq(), NEW." + n + " - OLD." + n + " FROM " + rows_ +
              " r WHERE r.pk = " + new_key_ +
              " ON CONFLICT(pk, col, site) DO UPDATE SET total = CASE WHEN cl = excluded.cl "
              "THEN total + excluded.total ELSE excluded.total END, cl = excluded.cl, "
              "seq = excluded.seq;\nEND;\n";
    }
  }

  // DELETE FROM lattice_conflicts WHERE ... on a held row discards it: a local delete of the row,
  // captured like any other, so every replica drops it.
  void discard_held() {
    sql_ += trigger("discard",
                    "INSTEAD OF DELETE ON lattice_conflicts WHEN OLD.kind = 'held' AND "
                    "OLD.table_id = " +
                        id_ + " AND lattice_capture_enabled() BEGIN\n") +
            kBump;
    sql_ += "UPDATE " + rows_ +
            " SET cl = cl + (cl % 2), hlc = lattice_hlc(), site = 0, seq = lattice_seq() WHERE "
            "pk = OLD.pk;\n";
    sql_ += "DELETE FROM " + cells_ + " WHERE pk = OLD.pk;\n";
    sql_ += "DELETE FROM " + counters_ + " WHERE pk = OLD.pk;\n";
    sql_ += "DELETE FROM lattice_held WHERE table_id = " + id_ + " AND pk = OLD.pk;\nEND;\n";
  }

  const TableInfo& t_;
  const std::string id_, table_, rows_, cells_, counters_, replaced_, new_key_, old_key_;
  std::string sql_;
};

}  // namespace

std::string capture_triggers_sql(const TableInfo& t) { return TriggerWriter(t).all(); }

// Every own transaction's tag in lattice_local_log (docs/protocol.md, "Rekey"). The log and the
// counter undo log keep every transaction no relay has acknowledged: a relay asks the tag of
// each one it counts, and a rekey splits counters through the undo log. Only an
// acknowledgement trims them (Replica::acknowledge). Before triggers version 6 they kept only
// the last 10,000, and a device with more unsent transactions could never send them.
std::string local_log_trigger_sql() {
  return "CREATE TRIGGER lattice_local_logged AFTER UPDATE OF seq ON lattice_local "
         "WHEN lattice_capture_enabled() AND NEW.seq > OLD.seq BEGIN\n"
         "INSERT OR REPLACE INTO lattice_local_log(seq, tag) VALUES (NEW.seq, lattice_txn_tag());\n"
         "END;\n";
}

// Rowid tables with a UNIQUE key rather than WITHOUT ROWID: a captured write then appends to
// the table and to the (site, seq) index (whose entries end in the rowid, not the packed key),
// so only the key's own index takes a write at a random place. Counter totals must stay
// integers: a sum past 2^63-1 (which SQLite turns into a real) fails the write instead.
std::string metadata_tables_sql(const TableInfo& t) {
  const std::string rows = t.rows_table(), cells = t.cells_table(), counters = t.counters_table();
  std::string sql =
      "CREATE TABLE IF NOT EXISTS " + rows +
      "(pk BLOB NOT NULL UNIQUE, cl INTEGER NOT NULL, hlc INTEGER NOT NULL,"
      " site INTEGER NOT NULL, seq INTEGER NOT NULL);\n"
      "CREATE INDEX IF NOT EXISTS " +
      rows + "_by_seq ON " + rows +
      "(site, seq);\n"
      "CREATE TABLE IF NOT EXISTS " +
      cells +
      "(pk BLOB NOT NULL, col INTEGER NOT NULL, cl INTEGER NOT NULL, hlc INTEGER NOT NULL,"
      " site INTEGER NOT NULL, seq INTEGER NOT NULL, UNIQUE (pk, col));\n"
      "CREATE INDEX IF NOT EXISTS " +
      cells + "_by_seq ON " + cells +
      "(site, seq);\n"
      "CREATE TABLE IF NOT EXISTS " +
      counters +
      "(pk BLOB NOT NULL, col INTEGER NOT NULL, site INTEGER NOT NULL, cl INTEGER NOT NULL,"
      " seq INTEGER NOT NULL, total INTEGER NOT NULL CHECK (typeof(total) = 'integer'),"
      " UNIQUE (pk, col, site));\n"
      "CREATE INDEX IF NOT EXISTS " +
      counters + "_by_seq ON " + counters + "(site, seq);\n";
  if (!t.uniques.empty()) {
    sql += "CREATE TABLE IF NOT EXISTS " + t.replaced_table() +
           "(ins_pk BLOB NOT NULL, pk BLOB NOT NULL";
    for (std::size_t i = 0; i < t.key_count; ++i) sql += ", k" + std::to_string(i);
    sql += ", PRIMARY KEY (ins_pk, pk)) WITHOUT ROWID;\n";
  }
  return sql;
}

}  // namespace lattice::storage
