// Replica::check(): whether a replica's metadata and application tables agree, what is held,
// and the state of its constraints (`lattice check`, docs/cli.md).

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"

namespace lattice::storage {

namespace {

std::int64_t count_of(sqlite3* db, const std::string& sql) {
  Statement s(db, sql);
  return s.step() ? s.column_int(0) : 0;
}

// A few examples of the keys a query returns (JSON-ish, for the report).
std::string some_keys(sqlite3* db, const std::string& sql) {
  Statement s(db, sql + " LIMIT 3");
  std::string out;
  while (s.step()) out += std::string(out.empty() ? "" : ", ") + s.column_text(0);
  return out;
}

}  // namespace

CheckReport Replica::check() {
  impl_->refresh();
  sqlite3* db = impl_->db;
  CheckReport report;
  auto problem = [&](std::string text) { report.problems.push_back(std::move(text)); };

  {
    Statement quick(db, "PRAGMA quick_check");
    while (quick.step())
      if (quick.column_text(0) != "ok") problem("SQLite: " + quick.column_text(0));
  }

  exec_sql(db, "BEGIN");
  try {
    for (const auto& [id, table] : impl_->tables) {
      const TableInfo& t = *table;
      if (t.future_table) continue;
      const std::string name = quote_identifier(t.name), rows = t.rows_table();
      const std::string key = key_expression(t, name.c_str());
      TableCheck line;
      line.table = t.name;
      line.shown = count_of(db, "SELECT count(*) FROM " + name);
      line.held = count_of(
          db, "SELECT count(*) FROM lattice_held WHERE table_id = " + std::to_string(t.id));
      line.superseded = count_of(
          db, "SELECT count(*) FROM lattice_superseded WHERE table_id = " + std::to_string(t.id));
      const std::int64_t alive = count_of(db, "SELECT count(*) FROM " + rows + " WHERE cl % 2 = 1");
      report.tables.push_back(line);

      for (const char* trigger : {"insert", "delete", "update_key", "discard"})
        if (count_of(db, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name = '" +
                             std::string("lattice_") + std::to_string(t.id) + "_" + trigger +
                             "'") == 0)
          problem("table " + t.name + ": its capture trigger lattice_" + std::to_string(t.id) +
                  "_" + trigger + " is missing, so writes to it are not captured");
      for (const auto& index : t.unsupported_indexes)
        problem("table " + t.name + ": unique index '" + index +
                "' is on an expression, which merges cannot check");

      if (alive != line.shown + line.held) {
        const std::string lost =
            some_keys(db, "SELECT hex(pk) FROM " + rows +
                              " r WHERE cl % 2 = 1 AND NOT EXISTS (SELECT 1 FROM lattice_held h "
                              "WHERE h.table_id = " +
                              std::to_string(t.id) +
                              " AND h.pk = r.pk) AND r.pk NOT IN "
                              "(SELECT " +
                              key + " FROM " + name + ")");
        const std::string extra =
            some_keys(db, "SELECT hex(" + key + ") FROM " + name + " WHERE " + key +
                              " NOT IN (SELECT pk FROM " + rows + " WHERE cl % 2 = 1)");
        problem("table " + t.name + ": " + std::to_string(alive) + " rows live in the metadata, " +
                std::to_string(line.shown) + " shown and " + std::to_string(line.held) + " held" +
                (lost.empty() ? "" : "; live but missing (packed keys): " + lost) +
                (extra.empty() ? "" : "; shown without being live, never captured: " + extra));
      }
      const std::int64_t both = count_of(
          db, "SELECT count(*) FROM lattice_held h WHERE h.table_id = " + std::to_string(t.id) +
                  " AND h.pk IN (SELECT " + key + " FROM " + name + ")");
      if (both > 0)
        problem("table " + t.name + ": " + std::to_string(both) + " rows both shown and held");

      // Each counter shows the sum of its parts in the row's incarnation.
      for (const auto& c : t.columns) {
        if (c.kind != crdt::ColumnKind::kCounter) continue;
        const std::int64_t wrong = count_of(
            db,
            "SELECT count(*) FROM " + name + " t JOIN " + rows +
                " r ON r.pk = " + key_expression(t, "t") + " WHERE t." + quote_identifier(c.name) +
                " IS NOT (SELECT coalesce(sum(x.total), 0) FROM " + t.counters_table() +
                " x WHERE x.pk = r.pk AND x.col = " + std::to_string(c.id) + " AND x.cl = r.cl)");
        if (wrong > 0)
          problem("table " + t.name + ": counter " + c.name + " differs from the sum of its " +
                  "parts in " + std::to_string(wrong) + " rows");
      }
    }

    Statement fk(db, "PRAGMA foreign_key_check");
    while (fk.step()) {
      const std::string child = fk.column_text(0);
      if (!impl_->table_by_name(child)) continue;
      problem("table " + child + ": a row (rowid " + fk.column_text(1) +
              ") refers to a missing row of " + fk.column_text(2));
    }

    const std::int64_t own_seq = count_of(db, "SELECT seq FROM lattice_local WHERE id = 0");
    for (const auto& [id, table] : impl_->tables)
      for (const std::string& meta :
           {table->rows_table(), table->cells_table(), table->counters_table()}) {
        const std::int64_t top = count_of(db, "SELECT max(seq) FROM " + meta + " WHERE site = 0");
        if (top > own_seq)
          problem("table " + table->name + ": metadata names own change " + std::to_string(top) +
                  " past this replica's last sequence number " + std::to_string(own_seq));
      }
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return report;
}

}  // namespace lattice::storage
