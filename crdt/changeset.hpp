#pragma once
// A changeset: the unit of exchange between replicas, as plain data. Its byte format is in
// docs/changeset-format.md and crdt/changeset_codec.hpp; its meaning is:
//   "here is every change the sender held in `until` that a holder of `since` lacks".
// A receiver whose own version vector dominates `since` may therefore count `until` as held
// once the changeset is merged.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "crdt/hlc.hpp"
#include "crdt/row.hpp"
#include "crdt/site_id.hpp"
#include "crdt/txn_tag.hpp"
#include "crdt/value.hpp"
#include "crdt/version_vector.hpp"

namespace lattice::crdt {

enum class ColumnKind : std::uint8_t { kLww = 0, kCounter = 1 };

// "lww" or "counter".
const char* column_kind_name(ColumnKind kind);

// SQLite's type affinity of a column (https://sqlite.org/datatype3.html): how the column stores
// the values it is given. Two replicas whose columns differ in it would store one value two ways.
enum class Affinity : std::uint8_t { kBlob = 0, kText = 1, kNumeric = 2, kInteger = 3, kReal = 4 };

// "BLOB (none)", "TEXT", "NUMERIC", "INTEGER" or "REAL".
const char* affinity_name(Affinity affinity);

struct ColumnSchema {
  ColumnId id = 0;
  std::string name;
  ColumnKind kind = ColumnKind::kLww;
  // Empty in a changeset of format 1, which did not carry it.
  std::optional<Affinity> affinity = Affinity::kBlob;
  bool operator==(const ColumnSchema&) const = default;
};

// The sender's catalog entry for a table, so a receiver can check ids against names and kinds.
// `columns` lists the primary-key columns first, in key order, then the rest.
struct TableSchema {
  TableId id = 0;
  std::string name;
  std::uint32_t primary_key_columns = 0;
  std::vector<ColumnSchema> columns;
  bool operator==(const TableSchema&) const = default;
};

// A write's identity and version. `site` indexes Changeset::sites.
struct ChangeStamp {
  std::uint64_t causal_length = 0;
  Hlc hlc;
  std::uint32_t site = 0;
  std::uint64_t seq = 0;
  bool operator==(const ChangeStamp&) const = default;
};

// A last-writer-wins cell written after the row's liveness event.
struct CellChange {
  ColumnId column = 0;
  ChangeStamp stamp;
  Value value;
  bool operator==(const CellChange&) const = default;
};

// One site's component of a counter cell.
struct CounterChange {
  ColumnId column = 0;
  std::uint32_t site = 0;
  CounterPart part;
  bool operator==(const CounterChange&) const = default;
};

// Everything a changeset says about one row.
struct RowChange {
  TableId table = 0;
  // The primary key, packed (see storage/primary_key.hpp): opaque bytes here.
  std::string primary_key;
  // The row's liveness event, with the values of the columns last written by it.
  std::optional<ChangeStamp> liveness;
  std::vector<std::pair<ColumnId, Value>> liveness_values;
  std::vector<CellChange> cells;
  std::vector<CounterChange> counters;
  bool operator==(const RowChange&) const = default;

  // Column changes this row carries (each value or component counts one, a bare liveness one).
  std::size_t change_count() const;
};

// Who wrote a changeset: the replica's site id and its latest own transactions (at most
// kMaxLog), so that a receiver with the same site id, a copy of that replica file, learns where
// the two histories part (docs/data-quality.md, "Copies and restored backups").
struct Origin {
  static constexpr std::size_t kMaxLog = 32;
  SiteId site;
  std::vector<TxnTag> log;  // ascending sequence numbers
  bool operator==(const Origin&) const = default;
};

struct Changeset {
  // Written by this build; it reads every version from 1 up (docs/changeset-format.md).
  static constexpr std::uint32_t kFormatVersion = 2;

  std::uint32_t format_version = kFormatVersion;
  VersionVector since;
  VersionVector until;
  std::vector<SiteId> sites;
  std::vector<TableSchema> tables;
  std::vector<RowChange> rows;
  // Empty in format 1, and when the writer did not say (a changeset built by hand).
  std::optional<Origin> origin;

  std::size_t change_count() const;
  bool operator==(const Changeset&) const = default;
};

}  // namespace lattice::crdt
