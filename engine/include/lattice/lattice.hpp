#pragma once
// The C++ API applications link against (target lattice::engine).
//
//   auto replica = lattice::Replica::open("todo.db");
//   replica->exec("CREATE TABLE IF NOT EXISTS todo(id TEXT PRIMARY KEY, title TEXT, "
//                 "votes INTEGER NOT NULL DEFAULT 0)");
//   replica->exec("SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}')");
//   replica->exec("INSERT INTO todo(id, title) VALUES ('a', 'buy milk')");
//   std::string bytes = lattice::encode(replica->changes_since(peer_vector));
//   other->apply(lattice::decode(bytes));
//
//   lattice::SyncClient sync("todo.db", "wss://relay.example:4433/board", token);
//   sync.start();  // keeps todo.db in sync on its own thread until sync.stop()
//
// Replica is documented in storage/replica.hpp, Changeset and VersionVector in crdt/,
// SyncClient in engine/sync/sync_client.hpp, import_file and export_rows in
// engine/import_export/table_import.hpp and table_export.hpp.

#include <string>
#include <string_view>

#include "crdt/changeset.hpp"
#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "crdt/version_vector.hpp"
#include "engine/import_export/table_export.hpp"
#include "engine/import_export/table_import.hpp"
#include "engine/sync/sync_client.hpp"
#include "storage/replica.hpp"

namespace lattice {

using crdt::Changeset;
using crdt::SiteId;
using crdt::Value;
using crdt::VersionVector;
using engine::data_format_from_name;
using engine::data_format_name;
using engine::DataFormat;
using engine::export_file;
using engine::export_rows;
using engine::ExportResult;
using engine::import_file;
using engine::ImportOptions;
using engine::ImportProgress;
using engine::ImportRejection;
using engine::ImportResult;
using engine::ReadLimits;
using engine::sync_state_name;
using engine::SyncClient;
using engine::SyncClientOptions;
using engine::SyncState;
using engine::SyncStatus;
using storage::ApplyResult;
using storage::BulkPath;
using storage::BulkResult;
using storage::BulkRowError;
using storage::ChangeEvent;
using storage::CheckReport;
using storage::compare_digests;
using storage::QueryResult;
using storage::Replica;
using storage::ReplicaOptions;

// The bytes of `changeset` (docs/changeset-format.md).
inline std::string encode(const Changeset& changeset) { return crdt::encode_changeset(changeset); }

// A changeset from untrusted bytes. Throws Error naming what was wrong.
inline Changeset decode(std::string_view bytes) { return crdt::decode_changeset(bytes); }

}  // namespace lattice
