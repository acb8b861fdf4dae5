#include "storage/replica.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

constexpr std::int64_t kFormatVersion = 1;

// The metadata every replica carries, whatever it replicates. docs/architecture.md describes it.
constexpr const char* kMetadataSchema = R"sql(
CREATE TABLE IF NOT EXISTS lattice_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_local(
  id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, hlc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lattice_sites(
  idx INTEGER PRIMARY KEY, site_id BLOB NOT NULL UNIQUE, seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS lattice_tables(
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  dropped INTEGER NOT NULL DEFAULT 0, future INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS lattice_columns(
  table_id INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
  key_position INTEGER NOT NULL, dropped INTEGER NOT NULL DEFAULT 0,
  future INTEGER NOT NULL DEFAULT 0, affinity INTEGER,
  PRIMARY KEY (table_id, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_migrations(
  version INTEGER PRIMARY KEY, sql TEXT NOT NULL, applied_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lattice_schema_history(
  version INTEGER PRIMARY KEY, manifest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lattice_column_added(
  table_id INTEGER NOT NULL, col INTEGER NOT NULL, site INTEGER NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (table_id, col, site)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_future_values(
  table_id INTEGER NOT NULL, pk BLOB NOT NULL, col INTEGER NOT NULL, value ANY,
  PRIMARY KEY (table_id, pk, col)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_local_log(seq INTEGER PRIMARY KEY, tag INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lattice_counter_undo(
  seq INTEGER NOT NULL, table_id INTEGER NOT NULL, pk BLOB NOT NULL, col INTEGER NOT NULL,
  had INTEGER NOT NULL, cl INTEGER, part_seq INTEGER, total INTEGER,
  PRIMARY KEY (seq, table_id, pk, col)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_origin_log(
  site BLOB NOT NULL, seq INTEGER NOT NULL, tag INTEGER NOT NULL,
  PRIMARY KEY (site, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_held(
  table_id INTEGER NOT NULL, pk BLOB NOT NULL, reason TEXT NOT NULL,
  constraint_name TEXT NOT NULL, message TEXT NOT NULL, vals BLOB NOT NULL,
  key_json TEXT NOT NULL, row_json TEXT NOT NULL, since INTEGER NOT NULL,
  PRIMARY KEY (table_id, pk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lattice_superseded(
  id INTEGER PRIMARY KEY, table_id INTEGER NOT NULL, pk BLOB NOT NULL, hlc INTEGER NOT NULL,
  site BLOB NOT NULL, key_json TEXT NOT NULL, row_json TEXT NOT NULL, message TEXT NOT NULL,
  at INTEGER NOT NULL, UNIQUE (table_id, pk, hlc, site));
CREATE VIEW IF NOT EXISTS lattice_conflicts AS
  SELECT 'held' AS kind, t.name AS "table", h.key_json AS "key", h.reason AS reason,
         h.constraint_name AS "constraint", h.message AS message, h.row_json AS "row",
         h.since AS at, h.table_id AS table_id, h.pk AS pk, NULL AS log_id
    FROM lattice_held h JOIN lattice_tables t ON t.id = h.table_id
  UNION ALL
  SELECT 'superseded', t.name, s.key_json, 'superseded', '', s.message, s.row_json, s.at,
         s.table_id, s.pk, s.id
    FROM lattice_superseded s JOIN lattice_tables t ON t.id = s.table_id;
CREATE TRIGGER IF NOT EXISTS lattice_conflicts_dismiss INSTEAD OF DELETE ON lattice_conflicts
  WHEN OLD.kind = 'superseded' BEGIN
  DELETE FROM lattice_superseded WHERE id = OLD.log_id;
END;
)sql";

// The generation of the capture triggers this build creates. A replica whose triggers are older
// gets them recreated when it is opened (lattice_meta 'triggers_version').
constexpr std::int64_t kTriggersVersion = 8;

Replica::Impl& impl_of(sqlite3_context* ctx) {
  return *static_cast<Replica::Impl*>(sqlite3_user_data(ctx));
}

void fn_capture_enabled(sqlite3_context* ctx, int, sqlite3_value**) {
  sqlite3_result_int(ctx, impl_of(ctx).capture_enabled ? 1 : 0);
}

void fn_seq(sqlite3_context* ctx, int, sqlite3_value**) {
  auto& impl = impl_of(ctx);
  try {
    impl.ensure_transaction_clock();
    sqlite3_result_int64(ctx, static_cast<sqlite3_int64>(impl.txn_seq));
  } catch (const std::exception& e) {
    sqlite3_result_error(ctx, e.what(), -1);
  }
}

void fn_hlc(sqlite3_context* ctx, int, sqlite3_value**) {
  auto& impl = impl_of(ctx);
  try {
    impl.ensure_transaction_clock();
    sqlite3_result_int64(ctx, static_cast<sqlite3_int64>(impl.txn_hlc.value));
  } catch (const std::exception& e) {
    sqlite3_result_error(ctx, e.what(), -1);
  }
}

// A random identity for the current local transaction (lattice_local_log): two copies of one
// replica file that each write their transaction `seq` almost surely give them different tags,
// even in the same millisecond, which is what lets a relay tell their histories apart.
void fn_txn_tag(sqlite3_context* ctx, int, sqlite3_value**) {
  auto& impl = impl_of(ctx);
  try {
    impl.ensure_transaction_clock();
    sqlite3_result_int64(ctx, static_cast<sqlite3_int64>(impl.txn_tag));
  } catch (const std::exception& e) {
    sqlite3_result_error(ctx, e.what(), -1);
  }
}

void fn_pk(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  // On the path of every captured write: pack straight from the arguments.
  thread_local std::string packed;
  pack_primary_key_values(argc, argv, packed);
  sqlite3_result_blob64(ctx, packed.data(), packed.size(), SQLITE_TRANSIENT);
}

// lattice_id(): a random positive 63-bit integer, for INTEGER PRIMARY KEY ids that stay unique
// across devices that insert offline (docs/data-quality.md).
void fn_id(sqlite3_context* ctx, int, sqlite3_value**) {
  auto& impl = impl_of(ctx);
  std::uint64_t id = 0;
  while (id == 0) id = impl.id_source() >> 1;
  sqlite3_result_int64(ctx, static_cast<sqlite3_int64>(id));
}

// lattice_negative_zero(x): 1 when x is the real -0.0. SQLite compares -0.0 equal to 0.0, and
// only a column without affinity keeps the sign, so the capture triggers of such columns ask.
void fn_negative_zero(sqlite3_context* ctx, int, sqlite3_value** argv) {
  const bool negative_zero = sqlite3_value_type(argv[0]) == SQLITE_FLOAT &&
                             sqlite3_value_double(argv[0]) == 0.0 &&
                             std::signbit(sqlite3_value_double(argv[0]));
  sqlite3_result_int(ctx, negative_zero ? 1 : 0);
}

void fn_replicate(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  auto& impl = impl_of(ctx);
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    sqlite3_result_error(ctx, "lattice_replicate: the first argument must be a table name", -1);
    return;
  }
  std::string table(reinterpret_cast<const char*>(sqlite3_value_text(argv[0])));
  std::string spec = "{}";
  if (argc > 1 && sqlite3_value_type(argv[1]) != SQLITE_NULL)
    spec = reinterpret_cast<const char*>(sqlite3_value_text(argv[1]));
  try {
    impl.replicate(table, spec);
    sqlite3_result_int(ctx, 1);
  } catch (const Error& e) {
    impl.pending_error = e;
    sqlite3_result_error(ctx, e.what(), -1);
  } catch (const std::exception& e) {
    sqlite3_result_error(ctx, e.what(), -1);
  }
}

// Refuses schema changes to replicated tables and to Lattice's own tables and triggers: they
// would silently stop capture or break the metadata (schema evolution is future work).
//
// In merge mode it also keeps application triggers from writing replicated tables: the
// statements apply() prepares have the triggers compiled in, and an INSERT or an UPDATE of a
// replicated table inside a trigger that is not Lattice's is ignored (SQLite leaves such an
// INSERT out and such a column unchanged). Their effect was captured on the device that made
// the write, and travels with it; writes to other tables (a search index, a local log) happen.
int on_authorize(void* data, int action, const char* a1, const char* a2, const char*,
                 const char* trigger) {
  auto* impl = static_cast<Replica::Impl*>(data);
  if (impl->merging && trigger && lower_case(trigger).rfind("lattice_", 0) != 0 && a1 &&
      (action == SQLITE_INSERT || action == SQLITE_UPDATE) && impl->table_by_name(a1))
    return SQLITE_IGNORE;
  if (impl->internal_ddl) return SQLITE_OK;
  // A DROP TABLE of a replicated table, run by Replica::exec, drops its capture triggers too.
  if (impl->altering && action == SQLITE_DROP_TRIGGER) return SQLITE_OK;
  std::string_view target;
  const bool schema_change = action == SQLITE_ALTER_TABLE || action == SQLITE_DROP_TABLE;
  if (action == SQLITE_ALTER_TABLE && a2) target = a2;
  if ((action == SQLITE_DROP_TABLE || action == SQLITE_DROP_TRIGGER) && a1) target = a1;
  if (target.empty()) return SQLITE_OK;
  const std::string name = lower_case(target);
  if (name.rfind("lattice_", 0) == 0) {
    impl->pending_error = Error(ErrorCode::kSchema, "'" + std::string(target) +
                                                        "' belongs to Lattice and cannot be "
                                                        "altered or dropped");
    return SQLITE_DENY;
  }
  if (impl->table_by_name(name) && !(schema_change && impl->altering)) {
    impl->pending_error = Error(
        ErrorCode::kSchema,
        "table '" + std::string(target) +
            "' is replicated: alter or drop it with Replica::exec, Replica::migrate or "
            "lattice_replica_exec, which keep its replication in step (docs/schema-evolution.md)");
    return SQLITE_DENY;
  }
  return SQLITE_OK;
}

// Columns the catalog gained after its first release (schema evolution): added to older files.
void upgrade_catalog(Replica::Impl& impl) {
  const std::pair<const char*, const char*> added[] = {
      {"lattice_tables", "dropped INTEGER NOT NULL DEFAULT 0"},
      {"lattice_tables", "future INTEGER NOT NULL DEFAULT 0"},
      {"lattice_columns", "dropped INTEGER NOT NULL DEFAULT 0"},
      {"lattice_columns", "future INTEGER NOT NULL DEFAULT 0"},
      {"lattice_columns", "affinity INTEGER"}};
  for (const auto& [table, column] : added) {
    const std::string name(column, std::string_view(column).find(' '));
    Statement has(impl.db, std::string("SELECT count(*) FROM pragma_table_info('") + table +
                               "') WHERE name = '" + name + "'");
    has.step();
    if (has.column_int(0) > 0) continue;
    has = Statement();
    impl.internal_ddl = true;
    exec_sql(impl.db, std::string("ALTER TABLE ") + table + " ADD COLUMN " + column);
    impl.internal_ddl = false;
  }
}

int on_commit(void* data) {
  auto* impl = static_cast<Replica::Impl*>(data);
  if (impl->capture_enabled) impl->local_commit = true;
  impl->txn_seq = 0;
  impl->added_this_transaction.clear();
  impl->adopted_this_transaction.clear();
  return 0;
}

void on_rollback(void* data) {
  auto* impl = static_cast<Replica::Impl*>(data);
  impl->txn_seq = 0;
  impl->pending_events.clear();
  impl->added_this_transaction.clear();
  impl->adopted_this_transaction.clear();
  impl->catalog_schema_version = -1;  // the transaction may have changed the catalog
}

// In merge mode, a row of a replicated table that an application trigger deleted: Lattice
// undoes it once its own statement is done (Projection), since no trigger may change the
// replicated state during a merge.
void record_side_delete(Replica::Impl& impl, sqlite3* db, TableInfo& info) {
  Replica::Impl::SideDelete side;
  side.table = &info;
  for (const auto& column : info.columns) {
    sqlite3_value* v = nullptr;
    sqlite3_preupdate_old(db, column.table_position, &v);
    side.row.push_back(v ? value_from_sqlite(v) : crdt::Value{});
  }
  if (impl.merge_target == &info &&
      pack_primary_key(
          {side.row.begin(), side.row.begin() + static_cast<std::ptrdiff_t>(info.key_count)}) ==
          impl.merge_target_pk)
    return;
  impl.side_deletes.push_back(std::move(side));
}

// Records local writes to replicated tables for the change listeners.
void on_preupdate(void* data, sqlite3* db, int op, const char* db_name, const char* table,
                  sqlite3_int64, sqlite3_int64) {
  auto* impl = static_cast<Replica::Impl*>(data);
  if (std::string_view(db_name) != "main") return;
  if (impl->merging) {
    if (op != SQLITE_DELETE) return;
    if (TableInfo* info = impl->table_by_name(table)) record_side_delete(*impl, db, *info);
    return;
  }
  if (impl->listeners.empty() || !impl->capture_enabled) return;
  TableInfo* info = impl->table_by_name(table);
  if (!info) return;
  ChangeEvent event;
  event.origin = ChangeEvent::Origin::kLocal;
  event.table = info->name;
  event.deleted = op == SQLITE_DELETE;
  auto read = [&](bool new_values, int position) {
    sqlite3_value* v = nullptr;
    (new_values ? sqlite3_preupdate_new : sqlite3_preupdate_old)(db, position, &v);
    return v ? value_from_sqlite(v) : crdt::Value{};
  };
  for (std::size_t i = 0; i < info->key_count; ++i)
    event.primary_key.push_back(read(op != SQLITE_DELETE, info->columns[i].table_position));
  if (op != SQLITE_DELETE) {
    for (const auto& column : info->columns) {
      if (column.key_position) continue;
      if (op == SQLITE_UPDATE &&
          read(false, column.table_position) == read(true, column.table_position))
        continue;
      event.columns.push_back(column.name);
    }
  }
  impl->pending_events.push_back(std::move(event));
}

}  // namespace

std::string lower_case(std::string_view text) {
  std::string out(text);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

const ColumnInfo* TableInfo::column(crdt::ColumnId column_id) const {
  for (const auto& c : columns)
    if (c.id == column_id) return &c;
  for (const auto& c : future_columns)
    if (c.id == column_id) return &c;
  return nullptr;
}

std::string TableInfo::key_where() const {
  std::string out;
  for (std::size_t i = 0; i < key_count; ++i)
    out += std::string(i ? " AND " : "") + quote_identifier(columns[i].name) + " = ?";
  return out;
}

crdt::TableSchema TableInfo::schema() const {
  crdt::TableSchema schema;
  schema.id = id;
  schema.name = name;
  schema.primary_key_columns = static_cast<std::uint32_t>(key_count);
  for (const auto& c : columns) schema.columns.push_back({c.id, c.name, c.kind, c.affinity});
  for (const auto& c : future_columns) schema.columns.push_back({c.id, c.name, c.kind, c.affinity});
  return schema;
}

Replica::Impl::Impl(ReplicaOptions opts)
    : options(std::move(opts)), clock(options.physical_clock, options.max_clock_drift_ms) {}

Replica::Impl::~Impl() {
  if (group) {  // an open group is undone; no catalog reload on the way out
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    group.reset();
  }
  // Statements must be finalized before the connection closes.
  merge_statements.clear();
  tables.clear();
  read_local = Statement();
  read_schema_version = Statement();
  read_data_version = Statement();
  insert_site = Statement();
  any_held = Statement();
  if (db) sqlite3_close_v2(db);
}

void Replica::Impl::ensure_transaction_clock() {
  if (txn_seq != 0) return;
  read_local.reset();
  if (!read_local.step()) throw Error(ErrorCode::kInternal, "lattice_local has no row");
  const auto seq = static_cast<std::uint64_t>(read_local.column_int(0));
  const crdt::Hlc persisted{static_cast<std::uint64_t>(read_local.column_int(1))};
  read_local.reset();
  // Another process may have written later than our in-memory clock knows.
  clock.adopt(persisted);
  txn_hlc = clock.now();
  txn_seq = seq + 1;
  txn_tag = tag_source() >> 1;  // 63 bits: a positive SQLite integer
}

void Replica::Impl::load_sites() {
  sites.clear();
  site_index.clear();
  remote_held = crdt::VersionVector();
  Statement select(db, "SELECT idx, site_id, seq FROM lattice_sites ORDER BY idx");
  while (select.step()) {
    const auto idx = select.column_int(0);
    const crdt::SiteId id = crdt::SiteId::from_bytes(select.column_blob(1));
    if (static_cast<std::size_t>(idx) >= sites.size()) sites.resize(idx + 1);
    sites[idx] = id;
    site_index[id] = idx;
    const auto seq = select.column_int(2);
    if (idx > 0 && seq > 0) remote_held.advance(id, static_cast<std::uint64_t>(seq));
  }
  if (!sites.empty()) site = sites[0];
  // Read inside a transaction, the raises are still its own: only a reading outside one is
  // what was committed.
  if (sqlite3_get_autocommit(db)) seqs_raised = false;
}

std::int64_t Replica::Impl::local_site_index(const crdt::SiteId& id) {
  auto it = site_index.find(id);
  if (it != site_index.end()) return it->second;
  const auto idx = static_cast<std::int64_t>(sites.size());
  insert_site.reset();
  insert_site.bind(1, idx).bind_blob(2, id.as_bytes());
  insert_site.run();
  sites.push_back(id);
  site_index[id] = idx;
  sites_stale = true;  // the transaction may yet roll back
  return idx;
}

std::int64_t Replica::Impl::read_pragma(Statement& pragma) {
  if (!read_schema_version) {
    read_schema_version = Statement(db, "PRAGMA schema_version");
    read_data_version = Statement(db, "PRAGMA data_version");
  }
  pragma.reset();
  pragma.step();
  const auto value = pragma.column_int(0);
  pragma.reset();
  return value;
}

void Replica::Impl::sites_current_in_transaction() {
  const auto data_version = read_pragma(read_data_version);
  if (data_version == sites_data_version) return;
  load_sites();
  sites_data_version = data_version;
  sites_stale = true;  // read inside a transaction
}

void Replica::Impl::refresh() {
  const auto schema_version = read_pragma(read_schema_version);
  if (schema_version != catalog_schema_version) {
    load_catalog();
    catalog_schema_version = schema_version;
  }
  // PRAGMA data_version moves only when another connection commits. What is read inside a
  // transaction may yet be rolled back (a group's merges: Replica::begin_group), so only a
  // reading outside one is taken as final.
  const auto data_version = read_pragma(read_data_version);
  // A transaction that raised what remote_held holds and then ended without its commit being
  // seen (a rollback) left it too high.
  const bool rolled_back = seqs_raised && sqlite3_get_autocommit(db);
  if (sites_stale || rolled_back || data_version != sites_data_version) {
    load_sites();
    sites_stale = !sqlite3_get_autocommit(db);
    sites_data_version = data_version;
  }
}

TableInfo* Replica::Impl::table_by_name(std::string_view name) {
  auto it = tables_by_name.find(lower_case(name));
  return it == tables_by_name.end() ? nullptr : it->second;
}

Statement& Replica::Impl::cached(const std::string& sql) {
  auto it = merge_statements.find(sql);
  if (it == merge_statements.end()) it = merge_statements.emplace(sql, Statement(db, sql)).first;
  it->second.reset();
  return it->second;
}

std::uint64_t Replica::Impl::local_seq() {
  read_local.reset();
  const std::uint64_t seq =
      read_local.step() ? static_cast<std::uint64_t>(read_local.column_int(0)) : 0;
  read_local.reset();
  return seq;
}

crdt::VersionVector Replica::Impl::version_vector() {
  crdt::VersionVector vv;
  // Another connection to the file may have rekeyed it (Replica::rekey).
  Statement& own = cached("SELECT site_id FROM lattice_sites WHERE idx = 0");
  if (own.step()) site = crdt::SiteId::from_bytes(own.column_blob(0));
  own.reset();
  vv.advance(site, local_seq());
  Statement& select = cached("SELECT site_id, seq FROM lattice_sites WHERE idx > 0 AND seq > 0");
  while (select.step())
    vv.advance(crdt::SiteId::from_bytes(select.column_blob(0)),
               static_cast<std::uint64_t>(select.column_int(1)));
  return vv;
}

void Replica::Impl::deliver_events() {
  if (pending_events.empty() || !sqlite3_get_autocommit(db)) return;
  std::vector<ChangeEvent> events;
  events.swap(pending_events);
  if (listeners.empty()) return;
  // A listener may unsubscribe itself; iterate over a copy.
  auto copy = listeners;
  for (auto& [handle, listener] : copy) listener(events);
}

namespace {

Error wrong_key(const std::string& path) {
  return Error(ErrorCode::kKey, "cannot open replica '" + path +
                                    "': the key does not decrypt it (another key, or the file is "
                                    "not encrypted)");
}

// Reads the file's first page, so that a key that does not fit it (or its absence) is told as
// such rather than as a corrupt database; an encrypted file also keeps WAL mode, its page size
// and its reserved bytes (encrypted_vfs.hpp).
void open_with_key(sqlite3* db, const std::string& path, bool encrypted) {
  if (encrypted) {
    int reserve = kReservedBytes;  // taken by a new file only
    sqlite3_file_control(db, "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  }
  const int rc = sqlite3_exec(db, "SELECT count(*) FROM sqlite_schema", nullptr, nullptr, nullptr);
  if (rc == SQLITE_IOERR_AUTH) throw wrong_key(path);
  if (rc == SQLITE_NOTADB && !encrypted)
    throw Error(ErrorCode::kKey, "cannot open replica '" + path +
                                     "': not a database, or an encrypted replica opened without "
                                     "its key");
  if (rc != SQLITE_OK) throw_sqlite(db, rc, "cannot open replica '" + path + "'");
  if (!encrypted) return;
  exec_sql(db, "PRAGMA page_size=" + std::to_string(kEncryptedPageSize));  // a new file's
  // A new file turns to WAL mode in a transaction of the rollback journal's mode, which for an
  // encrypted file is in memory (the VFS refuses a journal file: it would hold plaintext pages).
  Statement pages(db, "PRAGMA page_count");
  pages.step();
  if (pages.column_int(0) == 0) exec_sql(db, "PRAGMA journal_mode=MEMORY");
  pages = Statement();
  int reserve = -1;
  sqlite3_file_control(db, "main", SQLITE_FCNTL_RESERVE_BYTES, &reserve);
  Statement page_size(db, "PRAGMA page_size");
  page_size.step();
  if (reserve != kReservedBytes || page_size.column_int(0) != kEncryptedPageSize)
    throw Error(ErrorCode::kKey, "cannot open replica '" + path +
                                     "' with a key: the file is not an encrypted replica");
}

}  // namespace

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replica::~Replica() = default;

void Replica::rotate_key(const FileKey& new_key) {
  sqlite3* db = impl_->db;
  if (!impl_->key_registration)
    throw Error(ErrorCode::kState, "this replica is not encrypted: there is no key to rotate");
  if (!sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "a key cannot be rotated inside an open transaction");
  // In WAL mode every connection keeps a shared lock on the file while it is open, so the
  // exclusive lock that locking_mode=EXCLUSIVE takes at the next write (and keeps) means no
  // other connection has the file open. Then the WAL is emptied into the file, which the VFS
  // rewrites page by page.
  exec_sql(db, "PRAGMA locking_mode=EXCLUSIVE");
  try {
    const int rc = sqlite3_exec(db, "BEGIN EXCLUSIVE; COMMIT", nullptr, nullptr, nullptr);
    if ((rc & 0xff) == SQLITE_BUSY)
      throw Error(ErrorCode::kBusy,
                  "another connection has this replica open; close it (stop a SyncClient on the "
                  "same file) and rotate the key again");
    if (rc != SQLITE_OK) throw_sqlite(db, rc, "cannot lock the replica to rotate its key");
    int log = -1, done = -1;
    const int checkpoint =
        sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
    if (checkpoint != SQLITE_OK)
      throw_sqlite(db, checkpoint, "cannot empty the write-ahead log to rotate the key");
    if (log != 0 || done != 0)
      throw Error(ErrorCode::kBusy, "the write-ahead log could not be emptied to rotate the key");
    rotate_file_key(db, *impl_->key_registration, new_key);
    impl_->options.encryption_key = new_key;
  } catch (...) {
    sqlite3_exec(db, "PRAGMA locking_mode=NORMAL; SELECT count(*) FROM sqlite_schema", nullptr,
                 nullptr, nullptr);
    throw;
  }
  // Back to shared locking: the next read releases the exclusive lock.
  exec_sql(db, "PRAGMA locking_mode=NORMAL; SELECT count(*) FROM sqlite_schema");
}

std::unique_ptr<Replica> Replica::open(const std::string& path, ReplicaOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  const auto& key = impl->options.encryption_key;
  if (key) impl->key_registration = std::make_unique<FileKeyRegistration>(path, *key);
  const int rc = sqlite3_open_v2(path.c_str(), &impl->db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 key ? encrypted_vfs_name() : nullptr);
  if (rc != SQLITE_OK) {
    if (impl->db && sqlite3_extended_errcode(impl->db) == SQLITE_IOERR_AUTH) throw wrong_key(path);
    std::string message = impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc);
    throw Error(ErrorCode::kIo, "cannot open replica '" + path + "': " + message);
  }
  sqlite3* db = impl->db;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, impl->options.busy_timeout_ms);
  open_with_key(db, path, key.has_value());
  exec_sql(db, "PRAGMA journal_mode=WAL");
  exec_sql(db, "PRAGMA synchronous=" + impl->options.synchronous);
  const std::string& temp_store = impl->options.temp_store;
  if (temp_store != "MEMORY" && temp_store != "FILE" && temp_store != "DEFAULT")
    throw Error(ErrorCode::kInvalidArgument,
                "ReplicaOptions::temp_store is '" + temp_store + "': MEMORY, FILE or DEFAULT");
  exec_sql(db, "PRAGMA temp_store=" + temp_store);
  if (impl->options.cache_size_kib < 0)
    throw Error(ErrorCode::kInvalidArgument, "ReplicaOptions::cache_size_kib is negative");
  if (impl->options.cache_size_kib > 0)
    exec_sql(db, "PRAGMA cache_size=-" + std::to_string(impl->options.cache_size_kib));
  // recursive_triggers stays off, as in plain SQLite, so that an application's trigger that
  // updates its own table does not recurse; the rows REPLACE removes are captured by the
  // triggers lattice_replicate creates for tables with unique constraints (catalog.cpp).
  // Foreign keys are enforced: every replica must agree on which rows may stand
  // (docs/data-quality.md).
  exec_sql(db, std::string("PRAGMA foreign_keys=") + (impl->options.foreign_keys ? "ON" : "OFF"));

  const int flags = SQLITE_UTF8;
  void* data = impl.get();
  sqlite3_create_function_v2(db, "lattice_capture_enabled", 0, flags, data, fn_capture_enabled,
                             nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_seq", 0, flags, data, fn_seq, nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_hlc", 0, flags, data, fn_hlc, nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_txn_tag", 0, flags, data, fn_txn_tag, nullptr, nullptr,
                             nullptr);
  sqlite3_create_function_v2(db, "lattice_pk", -1, flags | SQLITE_DETERMINISTIC, data, fn_pk,
                             nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_id", 0, flags, data, fn_id, nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_negative_zero", 1, flags | SQLITE_DETERMINISTIC, data,
                             fn_negative_zero, nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_replicate", 1, flags | SQLITE_DIRECTONLY, data,
                             fn_replicate, nullptr, nullptr, nullptr);
  sqlite3_create_function_v2(db, "lattice_replicate", 2, flags | SQLITE_DIRECTONLY, data,
                             fn_replicate, nullptr, nullptr, nullptr);
  sqlite3_commit_hook(db, on_commit, data);
  sqlite3_rollback_hook(db, on_rollback, data);
  sqlite3_preupdate_hook(db, on_preupdate, data);
  sqlite3_set_authorizer(db, on_authorize, data);

  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    exec_sql(db, kMetadataSchema);
    upgrade_catalog(*impl);
    Statement format(db, "SELECT value FROM lattice_meta WHERE key = 'format_version'");
    if (format.step()) {
      const auto found = format.column_int(0);
      if (found > kFormatVersion)
        throw Error(ErrorCode::kUnsupportedVersion,
                    "replica '" + path + "' has metadata format " + std::to_string(found) +
                        "; this build of Lattice reads format " + std::to_string(kFormatVersion));
    } else {
      exec_sql(db, "INSERT INTO lattice_meta VALUES ('format_version', " +
                       std::to_string(kFormatVersion) + ")");
    }
    format = Statement();
    Statement site(db, "SELECT site_id FROM lattice_sites WHERE idx = 0");
    if (site.step()) {
      impl->site = crdt::SiteId::from_bytes(site.column_blob(0));
    } else {
      if (impl->options.new_site_id) {
        impl->site = impl->options.new_site_id();
      } else {
        std::random_device entropy;
        impl->site = crdt::SiteId::random(entropy);
      }
      Statement insert(db, "INSERT INTO lattice_sites(idx, site_id, seq) VALUES (0, ?, 0)");
      insert.bind_blob(1, impl->site.as_bytes()).run();
      exec_sql(db, "INSERT INTO lattice_local VALUES (0, 0, 0)");
    }
    site = Statement();
    impl->read_local = Statement(db, "SELECT seq, hlc FROM lattice_local WHERE id = 0");
    impl->insert_site = Statement(db, "INSERT INTO lattice_sites(idx, site_id) VALUES (?, ?)");
    impl->any_held = Statement(db, "SELECT EXISTS (SELECT 1 FROM lattice_held)");
    impl->refresh();
    Statement triggers(db, "SELECT value FROM lattice_meta WHERE key = 'triggers_version'");
    const std::int64_t triggers_version = triggers.step() ? triggers.column_int(0) : 1;
    triggers = Statement();
    if (triggers_version < kTriggersVersion) {
      impl->recreate_triggers();
      exec_sql(db, "INSERT OR REPLACE INTO lattice_meta VALUES ('triggers_version', " +
                       std::to_string(kTriggersVersion) + ")");
    }
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  impl->refresh();
  impl->recover_clock();
  impl->local_commit = true;  // rows may have been held when the file was last closed
  impl->settle_after_local_writes();
  return std::unique_ptr<Replica>(new Replica(std::move(impl)));
}

namespace {

// The statement that failed, on one line and short enough for an error message: a script's
// error names its failing statement, not the rest of the script.
std::string statement_excerpt(std::string_view sql) {
  std::string out;
  for (char c : sql) {
    if (c == ';') break;
    const bool space = std::isspace(static_cast<unsigned char>(c)) != 0;
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
    if (out.size() >= 160) return out + "...";
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

// Runs `body`; when SQLite failed because of an error raised inside its call stack, throws
// that error instead of SQLite's generic one. Events of a failed statement are dropped, since
// its writes were rolled back.
template <class Body>
void Replica::Impl::run_statements(Body&& body) {
  const std::size_t mark = pending_events.size();
  try {
    body();
  } catch (const Error&) {
    if (pending_events.size() > mark) pending_events.resize(mark);
    deliver_events();
    if (pending_error) {
      Error error = std::move(*pending_error);
      pending_error.reset();
      throw error;
    }
    throw;
  }
  settle_after_local_writes();
  deliver_events();
}

void Replica::exec(std::string_view sql, const RowCallback& on_row) {
  sqlite3* db = impl_->db;
  const char* cursor = sql.data();
  const char* end = sql.data() + sql.size();
  while (cursor < end) {
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    impl_->pending_error.reset();
    // ALTER TABLE or DROP TABLE of a replicated table: a schema change, run with the catalog.
    std::optional<AlterStatement> change = parse_alter(std::string_view(cursor, end - cursor));
    if (change) {
      impl_->refresh();
      if (!impl_->table_by_name(change->table)) change.reset();
    }
    impl_->altering = change.has_value();
    const int rc = sqlite3_prepare_v2(db, cursor, static_cast<int>(end - cursor), &raw, &tail);
    impl_->altering = false;
    if (rc != SQLITE_OK) {
      if (impl_->pending_error) throw *impl_->pending_error;  // the authorizer's reason
      throw_sqlite(db, rc, statement_excerpt(std::string_view(cursor, end - cursor)));
    }
    const std::string_view text(cursor, static_cast<std::size_t>(tail - cursor));
    cursor = tail;
    if (!raw) continue;  // whitespace or a comment
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> stmt(raw, sqlite3_finalize);
    impl_->pending_error.reset();
    if (change) {
      stmt.reset();
      impl_->run_statements([&] {
        impl_->alter(*change, [&] {
          // Prepared again: the triggers it would have seen are gone.
          impl_->altering = true;
          sqlite3_stmt* again = nullptr;
          const int prepared =
              sqlite3_prepare_v2(db, text.data(), static_cast<int>(text.size()), &again, nullptr);
          std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> owned(again, sqlite3_finalize);
          int step = prepared;
          if (prepared == SQLITE_OK)
            while ((step = sqlite3_step(again)) == SQLITE_ROW) {
            }
          impl_->altering = false;
          if (prepared != SQLITE_OK || step != SQLITE_DONE)
            throw_sqlite(db, prepared != SQLITE_OK ? prepared : step, statement_excerpt(text));
        });
      });
      continue;
    }
    impl_->run_statements([&] {
      std::vector<std::string> names;
      for (int i = 0; i < sqlite3_column_count(raw); ++i)
        names.emplace_back(sqlite3_column_name(raw, i));
      for (;;) {
        const int step = sqlite3_step(raw);
        if (step == SQLITE_DONE) break;
        if (step != SQLITE_ROW) throw_sqlite(db, step, statement_excerpt(text));
        if (!on_row) continue;
        std::vector<crdt::Value> row;
        row.reserve(names.size());
        for (int i = 0; i < static_cast<int>(names.size()); ++i)
          row.push_back(value_from_sqlite(sqlite3_column_value(raw, i)));
        on_row(names, row);
      }
    });
  }
}

QueryResult Replica::query(std::string_view sql, const std::vector<crdt::Value>& params) {
  QueryResult result;
  impl_->pending_error.reset();
  impl_->run_statements([&] {
    Statement stmt(impl_->db, sql);
    for (std::size_t i = 0; i < params.size(); ++i) stmt.bind(static_cast<int>(i + 1), params[i]);
    for (int i = 0; i < stmt.column_count(); ++i) result.columns.emplace_back(stmt.column_name(i));
    while (stmt.step()) {
      std::vector<crdt::Value> row;
      for (int i = 0; i < stmt.column_count(); ++i) row.push_back(stmt.column(i));
      result.rows.push_back(std::move(row));
    }
  });
  return result;
}

void Replica::replicate(std::string_view table, std::string_view column_types_json) {
  impl_->replicate(table, column_types_json);
}

crdt::Changeset Replica::changes_since(const crdt::VersionVector& holder) {
  return impl_->changes_since(holder, 0);
}

crdt::Changeset Replica::changes_since(const crdt::VersionVector& holder, std::size_t max_changes) {
  return impl_->changes_since(holder, max_changes == 0 ? 1 : max_changes);
}

ApplyResult Replica::apply(const crdt::Changeset& changeset) {
  return impl_->apply(changeset, nullptr);
}

ApplyResult Replica::apply(const crdt::Changeset& changeset, const OriginTxns& origin) {
  return impl_->apply(changeset, &origin);
}

ApplyResult Replica::apply_all(std::size_t count, const ChangesetSource& changeset_at) {
  return impl_->apply_all(count, changeset_at, nullptr);
}

void Replica::begin_group() { impl_->begin_group(); }

ApplyResult Replica::merge_in_group(const crdt::Changeset& changeset, const OriginTxns& origin) {
  return impl_->merge_in_group(changeset, origin);
}

void Replica::commit_group() { impl_->commit_group(); }
void Replica::rollback_group() { impl_->rollback_group(); }
bool Replica::group_open() const { return impl_->group != nullptr; }

crdt::VersionVector Replica::version_vector() { return impl_->version_vector(); }

const crdt::SiteId& Replica::site_id() const { return impl_->site; }

namespace {

// The affinity as schema_description() writes it.
const char* affinity_word(Affinity affinity) {
  switch (affinity) {
    case Affinity::kText:
      return "text";
    case Affinity::kNumeric:
      return "numeric";
    case Affinity::kInteger:
      return "integer";
    case Affinity::kReal:
      return "real";
    case Affinity::kBlob:
      break;
  }
  return "none";
}

}  // namespace

std::string Replica::schema_description() {
  impl_->refresh();
  std::map<std::string, const TableInfo*> by_name;
  for (const auto& [id, table] : impl_->tables)
    if (!table->future_table) by_name[lower_case(table->name)] = table.get();
  std::string out;
  for (const auto& [name, table] : by_name) {
    if (!out.empty()) out += ';';
    out += name + '(';
    for (std::size_t i = 0; i < table->columns.size(); ++i) {
      const ColumnInfo& c = table->columns[i];
      if (i) out += ',';
      out += lower_case(c.name) + ' ' + affinity_word(c.affinity) + ' ' +
             (c.key_position ? "key" : crdt::column_kind_name(c.kind));
    }
    out += ')';
  }
  return out;
}

SchemaManifest Replica::schema_manifest() {
  impl_->refresh();
  SchemaManifest out;
  out.dropped_tables = impl_->dropped_tables;
  for (const auto& [id, table] : impl_->tables) {
    if (table->future_table) continue;
    ManifestTable t{id, lower_case(table->name), {}};
    for (const ColumnInfo& c : table->columns)
      t.columns.push_back({c.id, lower_case(c.name), affinity_word(c.affinity),
                           c.key_position ? "key" : crdt::column_kind_name(c.kind)});
    // Key columns in key order, the others by id: the order format_manifest writes.
    std::stable_sort(t.columns.begin(), t.columns.end(), [](const auto& a, const auto& b) {
      if ((a.kind == "key") != (b.kind == "key")) return a.kind == "key";
      return a.kind != "key" && a.id < b.id;
    });
    if (!table->dropped_columns.empty()) out.dropped_columns[id] = table->dropped_columns;
    out.tables.push_back(std::move(t));
  }
  return out;
}

std::uint64_t Replica::local_changes_after(const crdt::VersionVector& peer) {
  const std::uint64_t own = impl_->version_vector().get(impl_->site);
  const std::uint64_t held = peer.get(impl_->site);
  return own > held ? own - held : 0;
}

int Replica::subscribe(ChangeListener listener) {
  const int handle = impl_->next_listener++;
  impl_->listeners[handle] = std::move(listener);
  return handle;
}

void Replica::unsubscribe(int handle) { impl_->listeners.erase(handle); }

sqlite3* Replica::connection() const { return impl_->db; }

void Replica::run_on_connection(const std::function<void(sqlite3*)>& body) {
  impl_->pending_error.reset();
  impl_->run_statements([&] { body(impl_->db); });
}

}  // namespace lattice::storage
