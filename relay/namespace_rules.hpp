#pragma once
// The relay's pure decisions about a device's hello: how its replicated schema differs from the
// namespace's, the SQL that adopts an admin device's schema, and whether its own history agrees
// with the relay's origin log (docs/protocol.md, "Rekey"). No I/O, so each is tested directly.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "crdt/txn_tag.hpp"
#include "storage/schema_manifest.hpp"
#include "transport/frame.hpp"

namespace lattice::relay {

// The first table or column where two schema descriptions (storage::Replica::
// schema_description) differ, for an error message: "table 'todo' differs: relay has (...),
// device has (...)", "table 'x' is missing on the device", ...
std::string first_difference(const std::string& relay, const std::string& device);

// The SQL that creates and replicates the tables of a schema description
// ("todo(id key,title lww,votes counter);..."): key columns first, in key order. Declared types
// and constraints are the device's business; the relay only merges. Throws Error(kSchema)
// naming what does not parse.
std::string adoption_sql(const std::string& description);

// How a device's replicated schema (protocol 4: its manifest and migration number) stands to
// the namespace's (docs/relay.md, "Schema versions"):
//   kSame      the same tables and columns, whatever the numbers say;
//   kBehind    an older version whose every table and column the namespace has (perhaps
//              renamed) or has dropped: it syncs, and keeps aside what it has no place for yet;
//   kAhead     a newer version: an admin device brings it to the namespace, others wait;
//   kMismatch  a version the namespace had with another schema, or tables or columns that
//              conflict (another key, type or kind), or a schema no version of it had.
// `recorded` is the namespace's manifest text at the device's version ("" if none recorded).
// `why` names the first difference, for the error frame.
struct SchemaVerdict {
  enum class Kind { kSame, kBehind, kAhead, kMismatch };
  Kind kind = Kind::kSame;
  std::string why;
};
SchemaVerdict judge_schema(const storage::SchemaManifest& relay, std::int64_t relay_version,
                           const std::string& recorded, const storage::SchemaManifest& device,
                           std::int64_t device_version);

// Whether the device's own history in `hello` agrees with what the relay holds of its site id:
// nullopt when it does, else the last own transaction the two share, which the device keeps
// under the old id when it rekeys. `relay_log` is the relay's origin log of the site from
// hello.acked_seq on, `relay_seq` the relay's version vector entry for it.
std::optional<std::uint64_t> fork_point(const transport::Hello& hello,
                                        const std::vector<crdt::TxnTag>& relay_log,
                                        std::uint64_t relay_seq);

}  // namespace lattice::relay
