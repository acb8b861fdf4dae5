// Snapshots: a replica's replicated state as one SQLite file (Replica::write_snapshot), and its
// installation into an empty replica (Replica::install_snapshot), for a new device's first
// sync without replaying every change (docs/architecture.md, "Snapshots").
//
// Both directions copy whole tables with `INSERT INTO x SELECT * FROM y` between the replica
// and the snapshot file attached to its connection. Between two tables of the same definition,
// the destination empty and without triggers, SQLite copies the records and index entries as
// they are, in order (its "transfer optimization"), without decoding them: that is what makes a
// snapshot cost a fraction of merging the same rows. The capture triggers are therefore dropped
// for the copy and recreated after it; a table with an application trigger is copied row by
// row, with the trigger acting as it does in a merge.

#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>

#include "storage/detail/replica_impl.hpp"

namespace lattice::storage {

namespace {

constexpr const char* kSchema = "lattice_snapshot";
constexpr std::int64_t kSnapshotFormat = 1;

// Lattice's own tables a snapshot carries, besides each replicated table's own.
constexpr const char* kCatalogTables[] = {
    "lattice_sites",         "lattice_tables", "lattice_columns", "lattice_column_added",
    "lattice_future_values", "lattice_held",   "lattice_local"};

std::string in(const std::string& table) { return std::string(kSchema) + "." + table; }

std::int64_t scalar(sqlite3* db, const std::string& sql) {
  Statement select(db, sql);
  return select.step() ? select.column_int(0) : 0;
}

// The snapshot file attached to the replica's connection for the life of the guard, and the
// transaction both are read and written in. Any failure rolls the transaction back and detaches
// the file before the caller sees the error.
class Attached {
 public:
  // `what_it_is` names the file in an error: "a Lattice snapshot" when one is read (a file
  // SQLite cannot attach is then corrupt), empty when a new one is written.
  Attached(sqlite3* db, const std::string& path, const std::string& what_it_is) : db_(db) {
    try {
      Statement attach(db, "ATTACH ? AS " + std::string(kSchema));
      attach.bind(1, path).run();
    } catch (const Error& e) {
      if (what_it_is.empty()) throw;
      throw Error(ErrorCode::kCorrupt,
                  "'" + path + "' is not " + what_it_is + " (" + e.what() + ")");
    }
  }
  ~Attached() {
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_exec(db_, ("DETACH " + std::string(kSchema)).c_str(), nullptr, nullptr, nullptr);
  }
  Attached(const Attached&) = delete;
  Attached& operator=(const Attached&) = delete;

 private:
  sqlite3* db_;
};

// The tables of a replicated table a snapshot holds: its metadata, and the table itself unless
// it is a later version's table this replica only keeps.
std::vector<std::string> tables_of(const TableInfo& t) {
  std::vector<std::string> out{t.rows_table(), t.cells_table(), t.counters_table()};
  if (!t.future_table) out.push_back(t.name);
  return out;
}

// `INSERT INTO to SELECT * FROM from`, the form SQLite's transfer optimization needs, when the
// two tables have the same stored columns in the same order; else by column name (a table with
// generated columns, or one whose columns another version ordered differently).
void copy_table(sqlite3* db, const std::string& from_schema, const std::string& to_schema,
                const std::string& table) {
  auto columns = [&](const std::string& schema) {
    std::vector<std::string> out;
    // The schema goes as the argument: "schema.pragma_table_xinfo(t)" reads main's table.
    Statement info(db, "SELECT name, hidden FROM pragma_table_xinfo(?, ?)");
    info.bind(1, table).bind(2, schema);
    bool generated = false;
    while (info.step()) {
      if (info.column_int(1) != 0) generated = true;
      out.push_back(info.column_text(0));
    }
    if (generated) out.clear();
    return out;
  };
  const auto from = columns(from_schema), to = columns(to_schema);
  const std::string target = to_schema + "." + quote_identifier(table);
  const std::string source = from_schema + "." + quote_identifier(table);
  if (!from.empty() && from == to) {
    exec_sql(db, "INSERT INTO " + target + " SELECT * FROM " + source);
    return;
  }
  std::string list;
  Statement info(db, "SELECT name FROM pragma_table_xinfo(?, ?) WHERE hidden = 0");
  info.bind(1, table).bind(2, to_schema);
  while (info.step())
    list += std::string(list.empty() ? "" : ", ") + quote_identifier(info.column_text(0));
  exec_sql(db, "INSERT INTO " + target + "(" + list + ") SELECT " + list + " FROM " + source);
}

// The CREATE statement of a table or index as main's schema holds it, moved into the snapshot:
// SQLite keeps it as "CREATE <kind> <name as written>...", so the schema name goes in front of
// the name.
std::string create_in_snapshot(const std::string& sql, const std::string& kind) {
  const std::string head = "CREATE " + kind + " ";
  if (sql.rfind(head, 0) != 0)
    throw Error(ErrorCode::kInternal, "snapshot: unexpected schema text: " + sql.substr(0, 60));
  return head + kSchema + "." + sql.substr(head.size());
}

// Throws Error(kSchema) naming the first row that one of the two queries (over main and over the
// snapshot) returns and the other does not.
void require_same_rows(sqlite3* db, const std::string& select_main,
                       const std::string& select_snapshot, const std::string& what) {
  Statement diff(db, "SELECT * FROM (" + select_main + " EXCEPT " + select_snapshot +
                         ") UNION ALL SELECT * FROM (" + select_snapshot + " EXCEPT " +
                         select_main + ") LIMIT 1");
  if (!diff.step()) return;
  std::string row;
  for (int i = 0; i < diff.column_count(); ++i) {
    row += std::string(i ? ", " : "") + diff.column_name(i) + " " +
           (diff.column_is_null(i) ? std::string("NULL") : diff.column_text(i));
  }
  throw Error(ErrorCode::kSchema,
              "install_snapshot: the snapshot's replicated schema differs "
              "from this replica's (" +
                  what + ": " + row +
                  "); migrate this replica to the snapshot's schema version, "
                  "or sync it change by change");
}

// Why install_snapshot refuses this replica as not empty ("it has written changes"), or
// nothing when it holds nothing replicated: no own change, no other site, no row.
std::optional<std::string> why_not_empty(Replica::Impl& impl) {
  sqlite3* db = impl.db;
  if (scalar(db, "SELECT seq FROM main.lattice_local WHERE id = 0") != 0)
    return "it has written changes";
  if (scalar(db, "SELECT count(*) FROM main.lattice_sites") != 1) return "it has merged changes";
  if (scalar(db, "SELECT count(*) FROM main.lattice_held") != 0 ||
      scalar(db, "SELECT count(*) FROM main.lattice_future_values") != 0)
    return "it holds rows";
  for (const auto& [id, t] : impl.tables)
    for (const auto& name : tables_of(*t))
      if (scalar(db, "SELECT EXISTS (SELECT 1 FROM main." + quote_identifier(name) + ")"))
        return "table " + name + " has rows";
  return std::nullopt;
}

// A snapshot's rows that this replica's own constraints refuse: its source (a relay whose tables
// declare fewer constraints than the application's) shows rows that this replica would hold. A
// merge holds them (docs/data-quality.md); an install cannot, so it is refused, and the replica
// syncs change by change instead.
Error stricter(const std::string& table, const std::string& what) {
  return Error(ErrorCode::kSchema,
               "install_snapshot: rows of table " + table +
                   " in the snapshot break a constraint of this replica (" + what +
                   "); its source does not declare it, so sync this replica change by change, "
                   "which holds such rows");
}

}  // namespace

crdt::VersionVector Replica::write_snapshot(const std::string& path, bool encrypted,
                                            bool with_origin_log) {
  Impl& impl = *impl_;
  if (!sqlite3_get_autocommit(impl.db) || impl.group)
    throw Error(ErrorCode::kState,
                "write_snapshot cannot run inside an open transaction or group; commit first");
  if (encrypted && !impl.options.encryption_key)
    throw Error(ErrorCode::kState,
                "write_snapshot: an encrypted snapshot needs an encrypted replica");
  std::error_code ec;
  if (std::filesystem::exists(path, ec))
    throw Error(ErrorCode::kIo, "write_snapshot: '" + path + "' exists; give a new file");
  crdt::VersionVector vector;
  try {
    // Registered before it is attached: the VFS encrypts it under the replica's key.
    std::optional<FileKeyRegistration> key;
    if (encrypted) key.emplace(path, *impl.options.encryption_key);
    // No foreign keys in force on this connection: with them, SQLite copies a table that
    // declares one row by row.
    MergeMode mode(impl);
    Attached attached(impl.db, path, "");
    if (encrypted) {
      int reserve = kReservedBytes;
      sqlite3_file_control(impl.db, kSchema, SQLITE_FCNTL_RESERVE_BYTES, &reserve);
      exec_sql(impl.db, "PRAGMA " + std::string(kSchema) +
                            ".page_size = " + std::to_string(kEncryptedPageSize));
    }
    exec_sql(impl.db, "PRAGMA " + std::string(kSchema) + ".journal_mode = OFF");
    exec_sql(impl.db, "PRAGMA " + std::string(kSchema) + ".synchronous = OFF");
    exec_sql(impl.db, "BEGIN");
    impl.refresh();
    vector = impl.version_vector();

    std::vector<std::string> tables(std::begin(kCatalogTables), std::end(kCatalogTables));
    if (with_origin_log) tables.emplace_back("lattice_origin_log");
    for (const auto& [id, t] : impl.tables)
      for (auto& name : tables_of(*t)) tables.push_back(std::move(name));
    std::set<std::string> wanted;
    for (const auto& name : tables) wanted.insert(lower_case(name));

    // Tables first, then their indexes (an index is made on an empty table and filled by the
    // copy, in key order).
    std::vector<std::pair<std::string, std::string>> creates;  // (kind, sql)
    {
      Statement schema(impl.db,
                       "SELECT type, tbl_name, sql FROM main.sqlite_schema WHERE type IN "
                       "('table', 'index') AND sql IS NOT NULL ORDER BY type = 'index'");
      while (schema.step()) {
        if (!wanted.count(lower_case(schema.column_text(1)))) continue;
        std::string sql = schema.column_text(2);
        const std::string kind = schema.column_text(0) == "table" ? "TABLE" : "INDEX";
        // A UNIQUE index is written "CREATE UNIQUE INDEX".
        creates.emplace_back(sql.rfind("CREATE UNIQUE INDEX ", 0) == 0 ? "UNIQUE INDEX" : kind,
                             std::move(sql));
      }
    }
    for (const auto& [kind, sql] : creates) exec_sql(impl.db, create_in_snapshot(sql, kind));
    exec_sql(impl.db, "CREATE TABLE " + in("lattice_snapshot_info") +
                          "(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID");
    Statement info(impl.db, "INSERT INTO " + in("lattice_snapshot_info") + " VALUES (?, ?)");
    info.bind(1, "format").bind(2, kSnapshotFormat).run();
    info.reset();
    info.bind(1, "site").bind_blob(2, impl.site.as_bytes()).run();
    info = Statement();
    for (const auto& name : tables) copy_table(impl.db, "main", kSchema, name);
    exec_sql(impl.db, "COMMIT");
  } catch (...) {
    std::filesystem::remove(path, ec);
    throw;
  }
  return vector;
}

bool Replica::accepts_snapshot() {
  Impl& impl = *impl_;
  impl.refresh();
  return !why_not_empty(impl);
}

crdt::VersionVector Replica::install_snapshot(const std::string& path) {
  Impl& impl = *impl_;
  sqlite3* db = impl.db;
  if (!sqlite3_get_autocommit(db) || impl.group)
    throw Error(ErrorCode::kState,
                "install_snapshot cannot run inside an open transaction or group; commit first");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(ErrorCode::kIo, "install_snapshot: no snapshot file '" + path + "'");
  crdt::Hlc newest;
  try {
    MergeMode mode(impl);
    Attached attached(db, path, "a Lattice snapshot");

    // What the file is: whole, a snapshot of a format this build reads, nothing in it that
    // would run.
    {
      // A download broken off leaves a prefix of the file. SQLite finds most prefixes
      // malformed, but not one that ends inside the last page: it reads that page with zeros
      // for the missing bytes, and the rows in it would install garbled, or leave the replica
      // malformed. SQLite writes whole pages, so the file is its page count times its page
      // size, exactly.
      std::int64_t pages = 0, page_size = 0, found = 0;
      try {
        pages = scalar(db, "PRAGMA " + std::string(kSchema) + ".page_count");
        page_size = scalar(db, "PRAGMA " + std::string(kSchema) + ".page_size");
      } catch (const Error& e) {
        throw Error(ErrorCode::kCorrupt, "install_snapshot: '" + path +
                                             "' is not a Lattice snapshot (" + e.what() + ")");
      }
      const std::uintmax_t size = std::filesystem::file_size(path, ec);
      if (ec || size != static_cast<std::uintmax_t>(pages * page_size))
        throw Error(ErrorCode::kCorrupt,
                    "install_snapshot: '" + path + "' is cut short or damaged: " +
                        std::to_string(size) + " bytes, where its header counts " +
                        std::to_string(pages) + " pages of " + std::to_string(page_size));
      try {
        Statement format(
            db, "SELECT value FROM " + in("lattice_snapshot_info") + " WHERE key = 'format'");
        found = format.step() ? format.column_int(0) : 0;
      } catch (const Error& e) {
        throw Error(ErrorCode::kCorrupt, "install_snapshot: '" + path +
                                             "' is not a Lattice snapshot (" + e.what() + ")");
      }
      if (found == 0)
        throw Error(ErrorCode::kCorrupt,
                    "install_snapshot: '" + path + "' is not a Lattice snapshot");
      if (found > kSnapshotFormat)
        throw Error(ErrorCode::kUnsupportedVersion,
                    "install_snapshot: '" + path + "' has snapshot format " +
                        std::to_string(found) + "; this build reads format " +
                        std::to_string(kSnapshotFormat));
    }
    if (scalar(db, "SELECT count(*) FROM " + in("sqlite_schema") +
                       " WHERE type NOT IN ('table', 'index')") != 0)
      throw Error(ErrorCode::kCorrupt, "install_snapshot: '" + path +
                                           "' holds views or triggers; a snapshot holds "
                                           "only tables and their indexes");
    exec_sql(db, "BEGIN IMMEDIATE");
    impl.refresh();

    if (auto why = why_not_empty(impl))
      throw Error(ErrorCode::kState, "install_snapshot: this replica is not empty (" + *why +
                                         "); a snapshot is installed only into a replica that "
                                         "has written and merged nothing");

    // The same replicated schema, id for id.
    require_same_rows(db, "SELECT id, name, dropped, future FROM main.lattice_tables",
                      "SELECT id, name, dropped, future FROM " + in("lattice_tables"), "table");
    const std::string columns =
        "table_id, id, name, kind, key_position, dropped, future, affinity FROM ";
    require_same_rows(db, "SELECT " + columns + "main.lattice_columns",
                      "SELECT " + columns + in("lattice_columns"), "column");

    // Sites: the snapshot's own (index 0 there) takes the next free index here.
    if (scalar(db, "SELECT count(*) FROM " + in("lattice_sites") + " WHERE site_id = (SELECT " +
                       "site_id FROM main.lattice_sites WHERE idx = 0)") != 0)
      throw Error(ErrorCode::kCopiedReplica,
                  "install_snapshot: the snapshot holds changes written under this replica's "
                  "site id, so this file is a copy of a replica that synced before");
    const std::int64_t source_index = scalar(db, "SELECT max(idx) + 1 FROM " + in("lattice_sites"));
    const std::string remap =
        "CASE site WHEN 0 THEN " + std::to_string(source_index) + " ELSE site END";
    exec_sql(db,
             "INSERT INTO main.lattice_sites(idx, site_id, seq) SELECT idx, site_id, seq FROM " +
                 in("lattice_sites") + " WHERE idx > 0");
    exec_sql(db, "INSERT INTO main.lattice_sites(idx, site_id, seq) SELECT " +
                     std::to_string(source_index) + ", s.site_id, l.seq FROM " +
                     in("lattice_sites") + " s, " + in("lattice_local") +
                     " l WHERE s.idx = 0 AND l.id = 0 AND l.seq > 0");

    // The rows: capture triggers out of the way so that SQLite can copy the tables as they are.
    for (const auto& [id, t] : impl.tables)
      if (!t->future_table) impl.drop_table_triggers(id);
    for (const auto& [id, t] : impl.tables) {
      try {
        for (const auto& name : tables_of(*t)) copy_table(db, kSchema, "main", name);
      } catch (const Error&) {
        if ((sqlite3_errcode(db) & 0xff) != SQLITE_CONSTRAINT) throw;
        throw stricter(t->name, sqlite3_errmsg(db));
      }
      // Only a snapshot of a replica that wrote has changes of index 0. Asked of the snapshot:
      // the same UPDATE on the table just filled costs as much as its copy, even to change
      // nothing. Seq 0 is no change: the version a merge stores for a column never written
      // (cl 0, no stamp, site 0, seq 0) names no site on any replica, and a relay, which writes
      // nothing, has such cells (a row whose delete arrived before any insert); moved to
      // source_index, which only a writer's snapshot gives a site, they named a site the
      // replica does not have, and the next merge into the row failed.
      for (const std::string& meta : {t->rows_table(), t->cells_table(), t->counters_table()})
        if (scalar(db, "SELECT EXISTS (SELECT 1 FROM " + in(meta) + " WHERE site = 0 AND seq > 0)"))
          exec_sql(db, "UPDATE main." + meta + " SET site = " + std::to_string(source_index) +
                           " WHERE site = 0 AND seq > 0");
    }
    exec_sql(db,
             "INSERT OR REPLACE INTO main.lattice_column_added(table_id, col, site, seq) "
             "SELECT table_id, col, " +
                 remap + ", seq FROM " + in("lattice_column_added"));
    exec_sql(db,
             "INSERT INTO main.lattice_future_values SELECT * FROM " + in("lattice_future_values"));
    exec_sql(db, "INSERT INTO main.lattice_held SELECT * FROM " + in("lattice_held"));
    if (scalar(db, "SELECT count(*) FROM " + in("sqlite_schema") +
                       " WHERE type = 'table' AND name = 'lattice_origin_log'") != 0)
      exec_sql(db,
               "INSERT OR IGNORE INTO main.lattice_origin_log(site, seq, tag) "
               "SELECT site, seq, tag FROM " +
                   in("lattice_origin_log"));
    if (!impl.side_deletes.empty())
      throw Error(ErrorCode::kState,
                  "install_snapshot: an application trigger deleted rows of a replicated table "
                  "during the install; sync this replica change by change");
    for (const auto& [id, t] : impl.tables)
      if (!t->future_table) impl.recreate_table_triggers(*t);

    // What the snapshot claims, checked: each table's live rows are shown or held, foreign keys
    // hold, and no clock is further ahead than a merge would take.
    for (const auto& [id, t] : impl.tables) {
      for (const std::string& meta : {t->rows_table(), t->cells_table()})
        newest = std::max(newest, crdt::Hlc{static_cast<std::uint64_t>(scalar(
                                      db, "SELECT coalesce(max(hlc), 0) FROM main." + meta))});
      if (t->future_table) continue;
      const std::int64_t live =
          scalar(db, "SELECT count(*) FROM main." + t->rows_table() + " WHERE cl % 2 = 1");
      const std::int64_t shown =
          scalar(db, "SELECT count(*) FROM main." + quote_identifier(t->name));
      const std::int64_t held = scalar(
          db, "SELECT count(*) FROM main.lattice_held WHERE table_id = " + std::to_string(id));
      if (live != shown + held)
        throw Error(ErrorCode::kCorrupt, "install_snapshot: table " + t->name +
                                             " of the snapshot has " + std::to_string(live) +
                                             " live rows in its metadata but " +
                                             std::to_string(shown) + " in the table and " +
                                             std::to_string(held) + " held");
    }
    if (impl.any_foreign_keys) {
      Statement orphans(db,
                        "SELECT \"table\", \"parent\", count(*) FROM "
                        "main.pragma_foreign_key_check GROUP BY 1, 2 LIMIT 1");
      if (orphans.step())
        throw stricter(orphans.column_text(0),
                       std::to_string(orphans.column_int(2)) + " row(s) refer to rows of " +
                           orphans.column_text(1) + " that the snapshot lacks");
    }
    impl.clock.check_drift(newest);
    Statement keep_clock(db, "UPDATE main.lattice_local SET hlc = max(hlc, ?) WHERE id = 0");
    keep_clock.bind(1, static_cast<std::int64_t>(newest.value)).run();
    keep_clock = Statement();
    exec_sql(db, "COMMIT");
  } catch (...) {
    impl.load_catalog();
    impl.load_sites();
    throw;
  }
  impl.clock.observe(newest);
  impl.load_catalog();
  impl.load_sites();
  // Rows the snapshot's source held for a constraint this replica does not declare may stand
  // here: retried as after a local write.
  impl.local_commit = true;
  impl.settle_after_local_writes();
  return impl.version_vector();
}

}  // namespace lattice::storage
