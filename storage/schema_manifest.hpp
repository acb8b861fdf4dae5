#pragma once
// A replica's replicated schema as devices and the relay compare it (hello.schema_fingerprint
// from protocol 4 on; docs/protocol.md): every replicated table and column with the stable id
// it was given, its type affinity and its kind. Unlike Replica::schema_description(), it carries
// the ids, so it tells a renamed column (same id, new name) from a dropped one and a new one.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/row.hpp"

namespace lattice::storage {

struct ManifestColumn {
  crdt::ColumnId id = 0;
  std::string name;      // lower case
  std::string affinity;  // none, text, numeric, integer, real
  std::string kind;      // key, lww, counter
  bool operator==(const ManifestColumn&) const = default;
};

struct ManifestTable {
  crdt::TableId id = 0;
  std::string name;                     // lower case
  std::vector<ManifestColumn> columns;  // key columns in key order, then the others by id
  const ManifestColumn* column(crdt::ColumnId id) const;
  bool operator==(const ManifestTable&) const = default;
};

struct SchemaManifest {
  std::vector<ManifestTable> tables;  // by id
  // What the replica dropped (ids stay reserved). Read from a replica; not part of the text.
  std::set<crdt::TableId> dropped_tables;
  std::map<crdt::TableId, std::set<crdt::ColumnId>> dropped_columns;

  const ManifestTable* table(crdt::TableId id) const;
  bool empty() const { return tables.empty(); }
};

// The text form: tables by id, ';'-separated, each "name#id(column#id affinity kind,...)".
// Names are lower case with every byte outside [a-z0-9_] written %XX, ids in decimal.
// Equal schemas give equal texts.
std::string format_manifest(const SchemaManifest& manifest);

// Reads format_manifest's text; throws Error(kInvalidArgument) naming the part that is not
// well formed (at most 4096 tables and 2000 columns per table).
SchemaManifest parse_manifest(std::string_view text);

// The first difference between two manifests, for people: "table 'task' has column 'due' on
// the device only", ... `a_name` and `b_name` name the two sides ("relay", "device"). "" if equal.
std::string manifest_difference(const SchemaManifest& a, const SchemaManifest& b,
                                const std::string& a_name, const std::string& b_name);

}  // namespace lattice::storage
