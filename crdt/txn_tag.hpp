#pragma once
// A device's own transaction as the rekey protocol knows it (docs/protocol.md, "Rekey").

#include <cstdint>

namespace lattice::crdt {

// A transaction's sequence number and a random 63-bit tag. Two copies of one replica file that
// each wrote their transaction `seq` almost surely tagged them differently, so equal tags mean
// one history up to that transaction.
struct TxnTag {
  std::uint64_t seq = 0;
  std::uint64_t tag = 0;
  bool operator==(const TxnTag&) const = default;
};

}  // namespace lattice::crdt
