#pragma once
// Private state of a Replica, shared by replica.cpp (connection, capture functions, hooks),
// catalog.cpp (lattice_replicate and the catalog), merge.cpp (apply) and extract.cpp
// (changes_since). Not part of the public interface.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "crdt/changeset.hpp"
#include "crdt/error.hpp"
#include "crdt/hlc.hpp"
#include "storage/replica.hpp"
#include "storage/sqlite.hpp"

namespace lattice::storage {

// An ALTER TABLE statement as Replica::exec reads it before running it (migrate.cpp).
struct AlterStatement {
  enum class Kind { kRenameTable, kRenameColumn, kAddColumn, kDropColumn, kDropTable };
  Kind kind = Kind::kAddColumn;
  std::string table;
  std::string column;    // renamed, added or dropped
  std::string new_name;  // of a rename
};

// The ALTER TABLE or DROP TABLE statement `sql` begins with, or nothing when it begins with
// something else.
std::optional<AlterStatement> parse_alter(std::string_view sql);

using crdt::Affinity;
using crdt::affinity_name;

struct ColumnInfo {
  crdt::ColumnId id = 0;
  std::string name;
  crdt::ColumnKind kind = crdt::ColumnKind::kLww;
  int key_position = 0;    // 1-based position in the primary key, 0 when not a key column
  int table_position = 0;  // index among the table's columns (for the pre-update hook)
  Affinity affinity = Affinity::kBlob;
  bool affinity_known = true;  // false for a future column learnt from a format-1 changeset
  // A column a migration added here (lattice_column_added): what this replica held then, by
  // local site index. A row whose version is at or below it was written without the column,
  // so the column is not at the row's version: it was never written, until someone writes it.
  std::map<std::int64_t, std::uint64_t> added_after;
  bool predates(std::int64_t site, std::uint64_t seq) const {
    auto it = added_after.find(site);
    return it != added_after.end() && seq <= it->second;
  }
};

// A UNIQUE constraint or unique index of a replicated table other than its primary key: the
// rule merges check (docs/data-quality.md). Columns by index into TableInfo::columns.
struct UniqueIndex {
  std::string name;  // the index's name (sqlite_autoindex_... for constraints)
  std::vector<std::size_t> columns;
  std::vector<std::string> collations;  // per column, as the index compares it
  std::string where;                    // a partial index's predicate, empty otherwise
  std::string label;                    // "users.email", "users.a, users.b": SQLite's wording
};

// A FOREIGN KEY of a replicated table: a row is shown only while its parent row is.
struct ForeignKey {
  std::string parent;                // the parent table's name
  std::vector<std::size_t> columns;  // the child's columns, by index into TableInfo::columns
  std::vector<std::string> parent_columns;
  std::string label;  // "task.project_id -> project(id)"
};

// A replicated table: its catalog entry and the statements that read and write its metadata.
// Metadata tables (named by table id so a rename keeps them):
//   lattice_rows_<id>(pk, cl, hlc, site, seq)          row liveness and the row's default version
//   lattice_cells_<id>(pk, col, cl, hlc, site, seq)    columns written after the row's version
//   lattice_counters_<id>(pk, col, site, cl, seq, total)  one component per site and counter
// `site` is a local index into lattice_sites (0 is this replica).
struct TableInfo {
  crdt::TableId id = 0;
  std::string name;
  std::vector<ColumnInfo> columns;  // key columns first, in key order
  std::size_t key_count = 0;
  bool has_counters = false;  // any counter column: else the counters table is never read
  // A table newer peers replicate and this replica does not have yet: its rows are merged and
  // kept (metadata as for any table, every non-key value in lattice_future_values) and travel
  // on; `columns` holds its key columns only. lattice_replicate of a table with its name
  // adopts it (migrate.cpp).
  bool future_table = false;
  // Columns newer peers have and this replica's table does not have yet (a later schema
  // version): their cells are merged and kept (values in lattice_future_values) and travel on;
  // they join the table when a migration adds a column of that name (migrate.cpp).
  std::vector<ColumnInfo> future_columns;

  std::string rows_table() const { return "lattice_rows_" + std::to_string(id); }
  std::string cells_table() const { return "lattice_cells_" + std::to_string(id); }
  std::string counters_table() const { return "lattice_counters_" + std::to_string(id); }
  // Rows an INSERT OR REPLACE may displace, noted by the capture triggers (triggers.cpp).
  std::string replaced_table() const { return "lattice_replaced_" + std::to_string(id); }

  // The key is SQLite's rowid (a lone INTEGER PRIMARY KEY column).
  bool rowid_key = false;
  std::vector<UniqueIndex> uniques;
  std::vector<ForeignKey> foreign_keys;
  // Columns dropped since the table was replicated: their ids stay reserved, and changes a
  // peer still sends for them are dropped (migrate.cpp).
  std::set<crdt::ColumnId> dropped_columns;
  // Unique indexes Lattice cannot check at merge (on expressions), by name: lattice_replicate
  // refuses them; one created later is reported by `lattice check`.
  std::vector<std::string> unsupported_indexes;
  std::vector<std::string> key_collations;  // per key column, as the primary key compares it

  // A column of the table or a future one, by id; nullptr for a dropped or unknown id.
  const ColumnInfo* column(crdt::ColumnId column_id) const;
  bool is_future(const ColumnInfo* c) const {
    return !future_columns.empty() && c >= future_columns.data() &&
           c < future_columns.data() + future_columns.size();
  }
  crdt::TableSchema schema() const;
  std::string key_where() const;  // "k1" = ? AND "k2" = ?

  // Prepared on first use.
  Statement select_row, select_cells, select_counters, select_future, upsert_row, upsert_cell,
      delete_cell, upsert_counter, select_values, delete_user_row, select_user_row;
  std::map<std::string, Statement> write_user_row;  // keyed by "i:" / "u:" and column ids
};

struct Replica::Impl {
  // Makes the encrypting VFS know the file's key while the connection is open.
  std::unique_ptr<FileKeyRegistration> key_registration;
  sqlite3* db = nullptr;
  ReplicaOptions options;
  crdt::HybridClock clock;
  crdt::SiteId site;

  std::vector<crdt::SiteId> sites;  // by local index; 0 is this replica
  std::map<crdt::SiteId, std::int64_t> site_index;
  // What lattice_sites says this replica holds of every other site (seq > 0), read with the
  // site table and raised by this connection's merges: a merge compares a changeset's vectors
  // with it instead of reading the whole table (merge.cpp, merge_changeset). `seqs_raised`:
  // raised by a transaction not yet known to be committed.
  crdt::VersionVector remote_held;
  bool seqs_raised = false;

  std::map<crdt::TableId, std::unique_ptr<TableInfo>> tables;
  std::map<std::string, TableInfo*> tables_by_name;  // lower-case names
  std::set<crdt::TableId> dropped_tables;            // dropped from replication (migrate.cpp)
  std::map<std::string, TableInfo*> future_tables_by_name;  // a later version's tables
  std::int64_t catalog_schema_version = -1;
  bool any_foreign_keys = false;  // some table of the file declares a foreign key

  bool capture_enabled = true;
  // True while apply() or settle() write the application's tables (MergeMode): application
  // triggers may not write replicated tables then (the authorizer ignores their inserts and
  // updates; the deletes they make are recorded here and undone), docs/data-quality.md.
  bool merging = false;
  struct SideDelete {
    TableInfo* table = nullptr;
    std::vector<crdt::Value> row;  // every column, in TableInfo::columns order
  };
  std::vector<SideDelete> side_deletes;
  // The row Lattice itself is writing in merge mode: its own delete is not a side effect.
  const TableInfo* merge_target = nullptr;
  std::string merge_target_pk;
  // Lattice's own DDL on its triggers and views, which the authorizer otherwise refuses.
  bool internal_ddl = false;
  // Set while Replica::exec prepares and runs a schema change of a replicated table (alter).
  bool altering = false;
  // Columns added in the open transaction: lattice_replicate may still make them counters
  // (unless they were adopted: a later version's column keeps the type it has there).
  std::set<std::pair<crdt::TableId, crdt::ColumnId>> added_this_transaction;
  // While migrate_to runs: the ids its target gives new tables (by lower-case name) and new
  // columns (by table id and lower-case name), in place of the ids their names give.
  std::map<std::string, crdt::TableId> table_id_hints;
  std::map<std::pair<crdt::TableId, std::string>, crdt::ColumnId> column_id_hints;
  crdt::TableId table_id_for(std::string_view name) const;
  crdt::ColumnId column_id_for(crdt::TableId table, std::string_view name) const;
  std::set<std::pair<crdt::TableId, crdt::ColumnId>> adopted_this_transaction;
  // A local write transaction committed since held rows were last retried (settle).
  bool local_commit = false;
  std::uint64_t txn_seq = 0;  // 0 until the current transaction's first captured write
  crdt::Hlc txn_hlc;
  std::uint64_t txn_tag = 0;  // lattice_txn_tag() of the current transaction
  // Seeded once per connection from std::random_device: tags need only be unlikely to repeat
  // across copies of a file, and a syscall per transaction would cost more than the write.
  std::mt19937_64 tag_source{std::random_device{}()};
  // lattice_id(): random row ids (docs/data-quality.md, "INTEGER PRIMARY KEY").
  std::mt19937_64 id_source{std::random_device{}()};

  std::map<int, ChangeListener> listeners;
  int next_listener = 1;
  std::vector<ChangeEvent> pending_events;

  // An error raised inside SQLite's call stack (the authorizer, lattice_replicate) that SQLite
  // can only report as a generic failure; exec() and query() throw this one instead.
  std::optional<Error> pending_error;

  Statement read_local, insert_site, any_held;
  // Statements prepared once for the connection's life, by SQL text (cached(), and the
  // projection's in merge mode, projection.cpp).
  std::map<std::string, Statement> merge_statements;
  // The statement of `sql`, prepared on first use and kept for the connection's life, reset.
  // A caller that stops stepping before the last row resets it (an active statement keeps
  // its read snapshot).
  Statement& cached(const std::string& sql);

  explicit Impl(ReplicaOptions opts);
  ~Impl();

  // The (seq, hlc) of the current write transaction, allocated at its first captured write.
  void ensure_transaction_clock();

  // Reloads the catalog when the schema changed, and the site table when another connection
  // committed, or this one added a site or read them inside a transaction since it last read
  // them outside one (a rollback may undo what it read): a merge or an extraction on a file no
  // one else writes reads neither, so its cost does not grow with the sites that ever wrote.
  void refresh();
  Statement read_schema_version, read_data_version;  // prepared by the first refresh()
  bool sites_stale = true;
  std::int64_t sites_data_version = -1;
  // Inside a write transaction (BEGIN IMMEDIATE: no other connection can commit now), reads the
  // site table again if another connection committed since refresh() looked.
  void sites_current_in_transaction();
  std::int64_t read_pragma(Statement& pragma);
  void load_catalog();
  void load_sites();
  TableInfo* table_by_name(std::string_view name);

  // The local index of `site`, adding it to lattice_sites when new.
  std::int64_t local_site_index(const crdt::SiteId& site);

  crdt::VersionVector version_vector();
  // This replica's own last sequence number (lattice_local), 0 before its first write.
  std::uint64_t local_seq();

  void replicate(std::string_view table, std::string_view column_types_json);
  // Runs `run`, the application's ALTER TABLE of a replicated table, with the catalog and the
  // capture triggers kept in step (migrate.cpp). In a savepoint: all of it or nothing.
  void alter(const AlterStatement& statement, const std::function<void()>& run);
  // Records a column the live table has and the catalog lacks, as last-writer-wins.
  void add_column(TableInfo& table, const std::string& column);
  void record_column_added(crdt::TableId table, crdt::ColumnId column);
  void load_column_added();  // into ColumnInfo::added_after
  void update_kinds(TableInfo& table, const std::map<std::string, crdt::ColumnKind>& types);
  // Gives the table the values its newly joined future columns have (insert_rows: a future
  // table that joined, whose live rows all go in), then forgets them (migrate.cpp).
  void fill_from_future(TableInfo& table, const std::set<crdt::ColumnId>& columns,
                        bool insert_rows);
  void adopt_future_table(TableInfo& future, const TableInfo& local);
  void recreate_table_triggers(const TableInfo& table);
  void drop_table_triggers(crdt::TableId id);
  // Drops and recreates every replicated table's capture triggers (after an upgrade that
  // changed them). Inside the caller's transaction.
  void recreate_triggers();
  // Retries every held row (lattice_held) until none can be shown; in its own transaction.
  void settle();
  // After the application's own writes: settles when a write committed and rows are held.
  void settle_after_local_writes();
  crdt::Changeset changes_since(const crdt::VersionVector& holder, std::size_t max_changes);
  ApplyResult apply(const crdt::Changeset& changeset, const OriginTxns* origin);
  using ChangesetSource = Replica::ChangesetSource;
  ApplyResult apply_all(std::size_t count, const ChangesetSource& changeset_at,
                        const OriginTxns* origin);
  // Group commit (Replica::begin_group, merge.cpp): the open group's transaction and merge mode.
  struct MergeGroup;
  struct MergeGroupDelete {
    void operator()(MergeGroup* group) const;
  };
  std::unique_ptr<MergeGroup, MergeGroupDelete> group;
  void begin_group();
  ApplyResult merge_in_group(const crdt::Changeset& changeset, const OriginTxns& origin);
  void commit_group();
  void rollback_group();
  void rekey(std::uint64_t keep_through, const crdt::SiteId& new_site);
  // When this replica's own clock ran more than the drift bound ahead of its wall clock (a
  // clock set wrong for a while), stamps the own writes that no peer can have accepted again,
  // from the wall clock on, in their order (site_history.cpp). Outside any transaction.
  void recover_clock();

  void deliver_events();

  template <class Body>
  void run_statements(Body&& body);
};

// Turns capture off for the lifetime of the guard: writes made by merges are not changes of
// this replica and must not be captured again (no echo).
class CaptureSuspended {
 public:
  explicit CaptureSuspended(Replica::Impl& impl) : impl_(impl), was_(impl.capture_enabled) {
    impl_.capture_enabled = false;
  }
  ~CaptureSuspended() { impl_.capture_enabled = was_; }

 private:
  Replica::Impl& impl_;
  bool was_;
};

// Merge mode for the lifetime of the guard: capture suspended, Replica::Impl::merging set, and
// foreign keys not enforced by SQLite (Lattice's projection enforces them, docs/data-quality.md).
// Construct it outside any transaction: PRAGMA foreign_keys does nothing inside one.
class MergeMode {
 public:
  explicit MergeMode(Replica::Impl& impl);
  ~MergeMode();
  MergeMode(const MergeMode&) = delete;
  MergeMode& operator=(const MergeMode&) = delete;

 private:
  Replica::Impl& impl_;
  CaptureSuspended suspended_;
  bool foreign_keys_;
};

std::string lower_case(std::string_view text);

// SQL for a replicated table (triggers.cpp): its metadata tables (CREATE ... IF NOT EXISTS),
// its capture triggers, lattice_pk(<row>.k1, ...) for its key, and a string literal.
std::string metadata_tables_sql(const TableInfo& t);
std::string capture_triggers_sql(const TableInfo& t);
// The trigger that logs own transactions (kept until a relay acknowledges them).
std::string local_log_trigger_sql();
std::string key_expression(const TableInfo& t, const char* row);
std::string sql_literal(std::string_view text);

// Reads what SQLite declares about `t` (catalog.cpp): rowid key, unique indexes, foreign keys,
// affinities. `t.columns` must hold the table's columns, keys first.
void read_constraints(sqlite3* db, TableInfo& t);

}  // namespace lattice::storage
