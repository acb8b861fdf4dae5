#pragma once
// Why a snapshot's bytes may not go now (GET /snapshot/NAMESPACE, docs/relay.md "Snapshots"):
// what the hub's budget decides and the server answers as 429 Too Many Requests, with
// `message` as its body and `retry_after_seconds` as its Retry-After header (none when 0).

#include <cstdint>
#include <string>

namespace lattice::transport {

struct SnapshotRefusal {
  std::string message;                    // one line, naming the budget and the wait
  std::uint64_t retry_after_seconds = 0;  // when the bytes asked for will be there
};

}  // namespace lattice::transport
