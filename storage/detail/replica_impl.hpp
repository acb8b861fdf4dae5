#pragma once
// Private state of a Replica, shared by replica.cpp (connection, capture functions, hooks),
// catalog.cpp (lattice_replicate and the catalog), merge.cpp (apply) and extract.cpp
// (changes_since). Not part of the public interface.

#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "crdt/changeset.hpp"
#include "crdt/error.hpp"
#include "crdt/hlc.hpp"
#include "storage/replica.hpp"
#include "storage/sqlite.hpp"

namespace lattice::storage {

struct ColumnInfo {
  crdt::ColumnId id = 0;
  std::string name;
  crdt::ColumnKind kind = crdt::ColumnKind::kLww;
  int key_position = 0;    // 1-based position in the primary key, 0 when not a key column
  int table_position = 0;  // index among the table's columns (for the pre-update hook)
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

  std::string rows_table() const { return "lattice_rows_" + std::to_string(id); }
  std::string cells_table() const { return "lattice_cells_" + std::to_string(id); }
  std::string counters_table() const { return "lattice_counters_" + std::to_string(id); }

  const ColumnInfo* column(crdt::ColumnId column_id) const;
  crdt::TableSchema schema() const;

  // Prepared on first use.
  Statement select_row, select_cells, select_counters, upsert_row, upsert_cell, delete_cell,
      upsert_counter, select_values, delete_user_row;
  std::map<std::string, Statement> write_user_row;  // keyed by "i:" / "u:" and column ids
};

struct Replica::Impl {
  sqlite3* db = nullptr;
  ReplicaOptions options;
  crdt::HybridClock clock;
  crdt::SiteId site;

  std::vector<crdt::SiteId> sites;  // by local index; 0 is this replica
  std::map<crdt::SiteId, std::int64_t> site_index;

  std::map<crdt::TableId, std::unique_ptr<TableInfo>> tables;
  std::map<std::string, TableInfo*> tables_by_name;  // lower-case names
  std::int64_t catalog_schema_version = -1;

  bool capture_enabled = true;
  std::uint64_t txn_seq = 0;  // 0 until the current transaction's first captured write
  crdt::Hlc txn_hlc;
  std::uint64_t txn_tag = 0;  // lattice_txn_tag() of the current transaction
  // Seeded once per connection from std::random_device: tags need only be unlikely to repeat
  // across copies of a file, and a syscall per transaction would cost more than the write.
  std::mt19937_64 tag_source{std::random_device{}()};

  std::map<int, ChangeListener> listeners;
  int next_listener = 1;
  std::vector<ChangeEvent> pending_events;

  // An error raised inside SQLite's call stack (the authorizer, lattice_replicate) that SQLite
  // can only report as a generic failure; exec() and query() throw this one instead.
  std::optional<Error> pending_error;

  Statement read_local, insert_site;

  explicit Impl(ReplicaOptions opts);
  ~Impl();

  // The (seq, hlc) of the current write transaction, allocated at its first captured write.
  void ensure_transaction_clock();

  // Reloads the catalog when another connection changed the schema, and the site table.
  void refresh();
  void load_catalog();
  void load_sites();
  TableInfo* table_by_name(std::string_view name);

  // The local index of `site`, adding it to lattice_sites when new.
  std::int64_t local_site_index(const crdt::SiteId& site);

  crdt::VersionVector version_vector();

  void replicate(std::string_view table, std::string_view column_types_json);
  crdt::Changeset changes_since(const crdt::VersionVector& holder, std::size_t max_changes);
  ApplyResult apply(const crdt::Changeset& changeset, const OriginTxns* origin);
  void rekey(std::uint64_t keep_through, const crdt::SiteId& new_site);

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

std::string lower_case(std::string_view text);

}  // namespace lattice::storage
