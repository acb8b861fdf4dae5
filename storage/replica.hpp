#pragma once
// A local replica: one SQLite file whose replicated tables are written with plain SQL and
// merged with other replicas' changes. docs/architecture.md explains the flow and the
// metadata tables; storage/detail/replica_impl.hpp is where they are defined.

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/changeset.hpp"
#include "crdt/hlc.hpp"
#include "crdt/site_id.hpp"
#include "crdt/txn_tag.hpp"
#include "crdt/value.hpp"
#include "crdt/version_vector.hpp"
#include "storage/encrypted_vfs.hpp"
#include "storage/schema_manifest.hpp"

namespace lattice::storage {

struct ReplicaOptions {
  // The wall clock the hybrid logical clock reads. Injected by tests.
  crdt::HybridClock::PhysicalClock physical_clock = crdt::HybridClock::system_clock_ms;
  // How far in the future a remote timestamp may be before apply() refuses it.
  std::uint64_t max_clock_drift_ms = crdt::HybridClock::kDefaultMaxDriftMs;
  // PRAGMA synchronous: "FULL" survives power loss; "NORMAL" (WAL) survives process crashes.
  std::string synchronous = "NORMAL";
  // PRAGMA temp_store: where SQLite keeps statement journals, temporary tables and sorts.
  // "MEMORY" by default: every write to a replicated table runs capture triggers, which make
  // SQLite keep a statement journal, and on disk ("FILE", or "DEFAULT") one that once outgrew
  // 64 KiB went on being written to a temporary file for every statement of the transaction
  // (about half the cost of a replicated write, docs/benchmarks.md). "FILE" suits a device
  // that sorts more than it has memory for.
  std::string temp_store = "MEMORY";
  // SQLite's page cache for this connection, in KiB (PRAGMA cache_size=-N); 0 keeps SQLite's
  // default, 2,000 KiB. A replicated table's metadata about doubles the pages a write touches,
  // and an encrypted replica decrypts every page it reads past the cache, so a cache the size
  // of the replicated tables' working set pays (docs/benchmarks.md, docs/encryption.md).
  int cache_size_kib = 0;
  // How long a statement waits for another connection's write lock.
  int busy_timeout_ms = 5000;
  // Makes the site id of a new replica file. Empty: 128 bits from std::random_device.
  // Injected by simulations that must replay exactly.
  std::function<crdt::SiteId()> new_site_id;
  // PRAGMA foreign_keys on this connection. Merges enforce declared foreign keys whatever this
  // says (docs/data-quality.md); turning it off only lets this device's own writes break them.
  bool foreign_keys = true;
  // Encrypts the file at rest under this 256-bit key (docs/encryption.md): every page of the
  // database and of its write-ahead log, with AES-256-GCM. A new file is created encrypted; an
  // existing one opens only under the key it was created with. Unset, the file is plain SQLite.
  // Opening an encrypted file without its key, or a plain one with a key, fails with kKey.
  std::optional<FileKey> encryption_key;
};

// One row touched by a committed transaction, local or merged.
struct ChangeEvent {
  enum class Origin { kLocal, kMerged };
  Origin origin = Origin::kLocal;
  std::string table;
  std::vector<crdt::Value> primary_key;
  std::vector<std::string> columns;  // the columns written; empty for a delete
  bool deleted = false;
  // Set when a merge took the row out of its table because it breaks a declared constraint: it
  // is held in the lattice_conflicts view (docs/data-quality.md). "unique", "check", "not_null",
  // "foreign_key", "type" or "trigger"; `deleted` is true.
  std::string conflict;
};

// SQLite's type affinity of a column from its declared type (https://sqlite.org/datatype3.html,
// "Determination Of Column Affinity"). Two replicas must agree on it, or the same value would be
// stored differently on each.
crdt::Affinity affinity_of_declared_type(std::string_view declared_type);

// Where two digests (Replica::digest) differ, one sentence per table, e.g.
// "table todo: 12 rows here, 13 there, contents differ"; empty when they agree.
std::vector<std::string> compare_digests(const std::string& here, const std::string& there);

// Called after a transaction commits, on the thread that committed it, with every row it touched.
using ChangeListener = std::function<void(const std::vector<ChangeEvent>&)>;

struct ApplyResult {
  std::size_t received = 0;  // column changes in the changeset
  std::size_t applied = 0;   // of those, the ones that won and changed this replica
};

using crdt::TxnTag;

// The transactions a device says it wrote itself, given with the changeset that carries them
// (apply): the relay keeps them to recognise later which history a device holds.
struct OriginTxns {
  crdt::SiteId site;
  std::vector<TxnTag> txns;
};

// What Replica::check() finds in a replica file.
struct TableCheck {
  std::string table;
  std::int64_t shown = 0;       // rows in the table
  std::int64_t held = 0;        // live rows held out of it by a constraint (lattice_conflicts)
  std::int64_t superseded = 0;  // lost concurrent inserts kept in lattice_conflicts
};
struct CheckReport {
  std::vector<TableCheck> tables;
  // One sentence each: metadata and table that disagree, missing capture triggers, rows that
  // break a foreign key, counters that are not the sum of their parts, SQLite's quick_check.
  // Empty when the replica is sound; held rows are not problems.
  std::vector<std::string> problems;
};

// Rows of a query: column names, then each row's values.
struct QueryResult {
  std::vector<std::string> columns;
  std::vector<std::vector<crdt::Value>> rows;
};

// A row Replica::bulk_write() left out, and why.
struct BulkRowError {
  std::size_t row = 0;  // index into the rows given
  std::string column;   // the column at fault when one is known ("a, b" for several), else empty
  std::string reason;   // one sentence: SQLite's constraint message or Lattice's refusal
};

struct BulkResult {
  std::size_t inserted = 0;          // rows whose key was absent from the table
  std::size_t updated = 0;           // rows present, with some given column different
  std::size_t unchanged = 0;         // rows present with every given column equal: nothing written
  std::vector<BulkRowError> errors;  // in row order
};

// How Replica::bulk_write() writes a replicated table.
enum class BulkPath {
  // The fastest path that gives the same result: the direct one (capture suspended, metadata
  // written by bulk.cpp) for a table no application trigger or ON CONFLICT clause acts on, the
  // statements otherwise.
  kAuto,
  // Always the statements, captured by the triggers like any application write.
  kStatements,
};

// A replica file. Not thread-safe: one thread at a time uses one Replica. Several processes
// may open the same file; SQLite's locking serializes their writes.
class Replica {
 public:
  // Opens (creating if missing) the replica at `path` (":memory:" for a private in-memory one).
  // Creates the metadata tables and a site id on first open. Throws Error: kIo when the file
  // cannot be opened, kUnsupportedVersion when it was written by a newer Lattice.
  static std::unique_ptr<Replica> open(const std::string& path, ReplicaOptions options = {});

  ~Replica();
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  // Re-encrypts this replica's file (opened with ReplicaOptions::encryption_key) under
  // `new_key`, in place (docs/encryption.md, "Rotating the key"). It needs the file to itself:
  // it waits up to busy_timeout_ms for other connections to close it (a SyncClient on the same
  // file: stop it first) and then fails with kBusy, changing nothing. Meanwhile other
  // connections cannot read or write the file, so nothing written before or after is lost. A
  // rotation cut short (a crash, a full disk) leaves the file under the old key: whoever opens
  // it next puts the old pages back. Throws Error: kState when this replica is not encrypted or
  // a transaction is open, kBusy, kCorrupt when a page fails to authenticate, kIo.
  void rotate_key(const FileKey& new_key);

  // Runs one or more SQL statements (they may hold BEGIN and COMMIT). `on_row`, when given,
  // receives every result row of every statement. Throws Error(kSql) naming the statement.
  using RowCallback = std::function<void(const std::vector<std::string>& columns,
                                         const std::vector<crdt::Value>& row)>;
  void exec(std::string_view sql, const RowCallback& on_row = nullptr);
  // Runs one statement with positional parameters and collects its rows.
  QueryResult query(std::string_view sql, const std::vector<crdt::Value>& params = {});

  // --- Schema changes (docs/schema-evolution.md) ------------------------------------------
  //
  // A replicated table changes with ordinary SQL through exec(): ALTER TABLE ... ADD COLUMN,
  // RENAME COLUMN, RENAME TO, DROP COLUMN, and DROP TABLE; a new table is replicated with
  // lattice_replicate. Cells keep their history across renames, a dropped column's stop
  // travelling, and changes from devices on other schema versions merge as far as both have
  // the tables and columns (the rest is kept and joins when this replica migrates).

  // Runs `sql`, the migration numbered `version`, once: in one transaction, unless this
  // replica's schema version is already `version` or later. Returns whether it ran. Throws
  // Error(kSchema) when migration `version` ran before with other SQL, kInvalidArgument for a
  // version below 1, and whatever `sql` throws (then nothing of it is applied).
  bool migrate(std::int64_t version, std::string_view sql);
  // The version of the last migration run (0: none).
  std::int64_t schema_version();

  // The replicated schema with its stable ids (schema_manifest.hpp), dropped ids included.
  SchemaManifest schema_manifest();
  // The manifest this replica had right after migration `version` ran (migrate or migrate_to),
  // "" if no migration of that number ran here. Every version is kept.
  std::string schema_manifest_at(std::int64_t version);

  // Brings this replica's replicated schema to `target` as migration `version` (0: no number),
  // in one transaction: renames, added and dropped columns and tables, by id, so a renamed
  // column keeps its cells; new tables and columns take the ids `target` gives them. This is how
  // a relay follows the schema of an admin device. Returns whether it ran (false when `version`
  // ran before with the same result, or the replica is at a later version). Throws
  // Error(kSchema) naming the table or column when `target` cannot be reached (a key or a
  // column type that differs, an id a dropped table or column reserved) or when migration
  // `version` ran before with another result; nothing is applied then.
  bool migrate_to(std::int64_t version, const SchemaManifest& target);

  // Makes `table` replicated; `column_types_json` maps column names to "lww" or "counter"
  // (absent columns are "lww"). The same as SELECT lattice_replicate(...). Throws Error(kSchema)
  // naming the table and the reason when it cannot be replicated.
  void replicate(std::string_view table, std::string_view column_types_json = "{}");

  // Every change that a holder of `holder` lacks, with since = `holder` and until = this
  // replica's version vector. Costs in proportion to what the holder lacks.
  crdt::Changeset changes_since(const crdt::VersionVector& holder);

  // The same, cut after about `max_changes` column changes at a transaction boundary (a single
  // larger transaction goes whole); `until` then covers only what was extracted, so calling
  // again with `until` as the holder continues where this one stopped.
  crdt::Changeset changes_since(const crdt::VersionVector& holder, std::size_t max_changes);

  // Merges `changeset` in one transaction. Idempotent; the order of changesets does not matter.
  // Throws Error naming what was wrong (kUnknownTable, kUnknownColumn, kTypeMismatch,
  // kClockDrift, kSql, kState when called inside an open transaction), and then the replica is
  // exactly as it was.
  ApplyResult apply(const crdt::Changeset& changeset);
  // The same, also recording `origin` in the origin log (origin_log()) in the same transaction.
  ApplyResult apply(const crdt::Changeset& changeset, const OriginTxns& origin);

  // Merges `count` changesets in one transaction, in the order given: `changeset_at(i)` is
  // called once per changeset, in order, and the reference it returns need only live until the
  // next call (so a caller can decode files one at a time). Each changeset is checked as apply()
  // checks it; any error rolls all of them back. The results add up.
  using ChangesetSource = std::function<const crdt::Changeset&(std::size_t)>;
  ApplyResult apply_all(std::size_t count, const ChangesetSource& changeset_at);

  // --- Group commit (a relay merging what several devices sent, docs/protocol.md) ------------

  // Opens a group: one transaction in which merge_in_group() merges changesets one at a time,
  // each whole or not at all, and commit_group() makes all of them durable with one commit (one
  // disk sync instead of one per changeset). Until the group ends, version_vector() and
  // origin_log() see the merges made in it, and nothing else may write through this Replica
  // (apply() and apply_all() throw kState). Throws Error(kState) inside an open transaction.
  void begin_group();
  // Merges `changeset` in the open group, recording `origin` as apply() does. Throws the errors
  // apply() throws, and then this changeset alone is undone: the group stays open with the
  // merges made before it, unless SQLite itself ended the transaction (kIo, a full disk), which
  // closes the group with nothing kept. kState without an open group.
  ApplyResult merge_in_group(const crdt::Changeset& changeset, const OriginTxns& origin);
  // Commits the group; listeners then get the events of all its merges. On Error (kIo, kBusy,
  // kSql) nothing of the group was kept, and the group is closed.
  void commit_group();
  // Undoes every merge of the open group and closes it. Destroying the Replica does the same.
  void rollback_group();
  // True from begin_group() until the group is committed, rolled back or ended by SQLite.
  bool group_open() const;

  // --- Bulk writes (imports, docs/import-export.md) ------------------------------------------

  // Writes `rows` (each one value per name in `columns`) into `table` in one transaction, each
  // row as this statement would, in the order given:
  //   INSERT INTO table(columns) VALUES (...) ON CONFLICT(<primary key>) DO UPDATE
  //     SET <each non-key column> = excluded.<column> WHERE <any of them differs>
  // so a row whose key is absent is inserted (columns not given take their defaults), a present
  // row gets the given values, and a row equal in every given column (type and bytes, as the
  // capture triggers compare) is left alone. For a replicated table the writes are this
  // replica's own, with the metadata the capture triggers would record, all under one sequence
  // number; when nothing changed, no sequence number is taken and nothing is written. Listeners
  // get the events of the rows written.
  //
  // A row SQLite refuses (NOT NULL, CHECK, UNIQUE, FOREIGN KEY, a STRICT type, a trigger) or
  // Lattice refuses (a NULL key, an id SQLite would pick, a counter value that is not an
  // integer) is left out entirely and reported in BulkResult::errors; the others commit.
  //
  // `table` needs a primary key (replicated or not); `columns` names each of its columns at
  // most once, all of its key columns included. Throws Error, and then nothing was written:
  // kInvalidArgument (an unknown, repeated or generated column, a missing key column, a row of
  // another size), kSchema (no such table, no primary key), kState (inside an open
  // transaction), kBusy, kSql or kIo for a failure that is not one row's.
  BulkResult bulk_write(std::string_view table, const std::vector<std::string>& columns,
                        const std::vector<std::vector<crdt::Value>>& rows,
                        BulkPath path = BulkPath::kAuto);

  // --- Snapshots (a new device's first sync, docs/architecture.md "Snapshots") ---------------

  // Writes this replica's replicated state, as of one moment, to a new SQLite file at `path`:
  // every replicated table with its metadata, the site table, held rows and the values kept for
  // a later schema version. Not in it: non-replicated tables, the logs of own and of devices'
  // transactions, migrations, superseded inserts. Returns the version vector the snapshot
  // holds. Costs about as much as copying those tables (SQLite copies their records as they
  // are). `encrypted`: the file is encrypted under this replica's key, as the replica is (a
  // relay with --data-key-file keeps its snapshots so, and reads them back as plaintext with
  // EncryptedFileReader to send them); otherwise it is plain SQLite whatever this replica is.
  // `with_origin_log`: the snapshot also holds the origin log (origin_log()), which a relay
  // needs to tell copies of a device's file apart: for another relay of a cluster
  // (docs/cluster.md, "Pruning"), not for devices.
  // Throws Error: kIo when `path` exists or cannot be written (then it is removed), kState
  // inside an open transaction or group, or when `encrypted` and this replica is not.
  crdt::VersionVector write_snapshot(const std::string& path, bool encrypted = false,
                                     bool with_origin_log = false);

  // Installs the snapshot at `path` (write_snapshot) into this replica, which must have written
  // and merged nothing yet (a new device whose schema is in place). Afterwards it holds the
  // snapshot's rows, metadata and version vector (and its origin log, when it has one), and
  // keeps its own site id: its later writes are its own, and changes made after the snapshot
  // merge as usual. Returns the new version
  // vector. In one transaction: on any error the replica is exactly as it was. Listeners are
  // not called for the rows installed; read the tables again. Throws Error: kState (not empty,
  // inside a transaction or group, or an application trigger deleted replicated rows during
  // the install), kSchema (the replicated schema differs, naming the first difference; or rows
  // break a constraint, foreign keys included, that this replica declares and the snapshot's
  // source did not: a merge would hold them, so sync change by change), kCorrupt (not a
  // snapshot, a file cut short, views or triggers in it, metadata that disagrees with its rows),
  // kUnsupportedVersion (a newer snapshot format),
  // kCopiedReplica (the snapshot holds changes under this replica's own site id), kClockDrift,
  // kIo, kBusy.
  crdt::VersionVector install_snapshot(const std::string& path);

  // True when install_snapshot would not refuse this replica as not empty: it has written and
  // merged nothing and holds no replicated row. Another connection may write in the meantime;
  // install_snapshot checks again. Throws Error: kIo, kBusy.
  bool accepts_snapshot();

  // --- Telling copies of a replica file apart (docs/protocol.md, "Rekey") ---------------------

  // This replica's own transactions with `from` <= seq <= `through`, from the local log, in
  // order. The log keeps the last acknowledged transaction and every later one.
  std::vector<TxnTag> local_log(std::uint64_t from, std::uint64_t through);
  // The highest own sequence number a relay has acknowledged holding (0: none).
  std::uint64_t acknowledged();
  // The highest own sequence number whose tag the log may no longer hold: acknowledged(), or,
  // in a file whose triggers predate version 6 (which kept only the last 10,000 own
  // transactions), the last one the log dropped. What a hello calls acked_seq: a relay counts
  // the transactions up to it without tags.
  std::uint64_t untagged_through();
  // Records that a relay durably holds this replica's own transactions up to `seq`, and drops
  // the log entries that can no longer be needed. Never moves backwards.
  void acknowledge(std::uint64_t seq);
  // What apply() recorded for `site` with seq >= `from`, in order, at most `max` entries.
  std::vector<TxnTag> origin_log(const crdt::SiteId& site, std::uint64_t from, std::size_t max);
  // Takes a new site id (ReplicaOptions::new_site_id, or random) after another copy of this
  // file wrote under the current one. Own transactions up to `keep_through` stay under the old
  // id (its entry in the version vector becomes `keep_through`); later ones move to the new id,
  // renumbered from 1 in order, with their clocks, values and counter increments unchanged, so
  // they count as new changes to send. Throws Error(kInvalidArgument) when `keep_through` is
  // past this replica's own last transaction, kState inside an open transaction.
  void rekey(std::uint64_t keep_through);

  // The changes this replica holds, per site.
  crdt::VersionVector version_vector();
  const crdt::SiteId& site_id() const;

  // The replicated schema in one canonical line, equal on two replicas exactly when their
  // replicated tables, columns, column types and SQLite type affinities agree, e.g.
  // "todo(id text key,title text lww,votes integer counter);user(id none key,name none lww)".
  // Each column is "name affinity kind", affinity one of none, text, numeric, integer, real.
  // Tables by name.
  std::string schema_description();

  // A digest of the replicated state: one line per replicated table, by name,
  // "<table> <row count> <SHA-256 of its rows in key order, hex>". Equal on two replicas
  // exactly when their replicated tables hold the same rows (values and SQLite types).
  std::string digest();

  // Checks that the metadata and the application's tables agree, and counts what is held.
  // Reads only. Throws Error(kBusy) when another connection holds the file locked.
  CheckReport check();

  // The number of local transactions whose changes a peer holding `peer` lacks.
  std::uint64_t local_changes_after(const crdt::VersionVector& peer);

  // Registers `listener`; returns a handle for unsubscribe().
  int subscribe(ChangeListener listener);
  void unsubscribe(int handle);

  // The raw connection, for callers that need SQLite directly. Owned by the Replica; the
  // lattice SQL functions are registered on it.
  sqlite3* connection() const;

  // For callers that prepare and step statements on connection() themselves (the C API): runs
  // `body` the way exec() and query() run theirs. When `body` throws Error after a Lattice hook
  // refused something inside SQLite (the authorizer, lattice_replicate), that hook's error is
  // thrown instead; the events of writes made by a failed `body` are dropped; the events of
  // committed writes are delivered to the listeners when `body` returns.
  void run_on_connection(const std::function<void(sqlite3*)>& body);

  struct Impl;

 private:
  explicit Replica(std::unique_ptr<Impl> impl);
  // migrate (target null) and migrate_to share one transaction's steps.
  bool run_migration(std::int64_t version, std::string_view sql, const SchemaManifest* target);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lattice::storage
