#pragma once
// The relay's pure decisions about a device's hello: how its replicated schema differs from the
// namespace's, the SQL that adopts an admin device's schema, and whether its own history agrees
// with the relay's origin log (docs/protocol.md, "Rekey"). No I/O, so each is tested directly.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "crdt/txn_tag.hpp"
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

// Whether the device's own history in `hello` agrees with what the relay holds of its site id:
// nullopt when it does, else the last own transaction the two share, which the device keeps
// under the old id when it rekeys. `relay_log` is the relay's origin log of the site from
// hello.acked_seq on, `relay_seq` the relay's version vector entry for it.
std::optional<std::uint64_t> fork_point(const transport::Hello& hello,
                                        const std::vector<crdt::TxnTag>& relay_log,
                                        std::uint64_t relay_seq);

}  // namespace lattice::relay
