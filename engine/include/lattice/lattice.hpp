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
// Replica is documented in storage/replica.hpp, Changeset and VersionVector in crdt/.

#include <string>
#include <string_view>

#include "crdt/changeset.hpp"
#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "crdt/version_vector.hpp"
#include "storage/replica.hpp"

namespace lattice {

using crdt::Changeset;
using crdt::SiteId;
using crdt::Value;
using crdt::VersionVector;
using storage::ApplyResult;
using storage::ChangeEvent;
using storage::QueryResult;
using storage::Replica;
using storage::ReplicaOptions;

// The bytes of `changeset` (docs/changeset-format.md).
inline std::string encode(const Changeset& changeset) { return crdt::encode_changeset(changeset); }

// A changeset from untrusted bytes. Throws Error naming what was wrong.
inline Changeset decode(std::string_view bytes) { return crdt::decode_changeset(bytes); }

}  // namespace lattice
