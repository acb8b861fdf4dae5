#pragma once
// What one side of a sync connection may claim to the other, checked before anything is merged
// (docs/protocol.md, "What a peer may claim"). The rule: a device speaks only for its own site
// id. Its changesets carry its own writes, never another site's; its version vectors may say
// of another site no more than the relay already holds; what it says of its own site is bounded
// and listed transaction by transaction in its origin log. Pure functions over crdt data, shared
// by the relay (which refuses) and the device (which sends only what passes and clamps what the
// relay tells it).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "crdt/changeset.hpp"
#include "crdt/site_id.hpp"
#include "crdt/txn_tag.hpp"
#include "crdt/version_vector.hpp"

namespace lattice::transport {

// No sequence number or causal length a peer sends may exceed this (2^62): a counter that starts
// there needs 2^62 more transactions before a signed 64-bit value overflows, so no arithmetic
// on a received value, on either side, ever wraps.
constexpr std::uint64_t kMaxSequence = std::uint64_t{1} << 62;

// Entries of a version vector in a frame: sites that ever wrote to one namespace.
constexpr std::size_t kMaxVectorEntries = 65'536;
// Entries of a transaction log in a frame (hello.own_log, changes.origin_log): 16 bytes each,
// so 1 MiB of log. A device lists at most this many own transactions per frame.
constexpr std::size_t kMaxLogEntries = 65'536;

// Why `vector` (named `what` in the message) is not a sane claim: an entry over kMaxSequence or
// more entries than kMaxVectorEntries. nullopt when it is fine.
std::optional<std::string> check_vector(const crdt::VersionVector& vector, const char* what);

// Why a changes frame from the device whose site id is `device` cannot be merged by a relay
// that holds `relay_held`, or nullopt when it can. `untagged_through` is the highest own
// transaction the device may count without listing it in `origin_log` (its hello's acked_seq,
// for a relay restored from a backup that lacks transactions it once acknowledged). Checked:
//   - every sequence number and causal length, in the vectors, the stamps, the counter parts and
//     the log, is at most kMaxSequence;
//   - every stamp and counter part is of the device's own site (it never relays others' writes);
//   - `until` claims of another site no more than `relay_held` holds;
//   - the device's own stamps are within its own `until`, and every own transaction `until`
//     adds beyond `relay_held` (and beyond `untagged_through`) is listed in `origin_log`, whose
//     entries are increasing and lie within (since, until] of the device's own site.
// The message names the first violation, e.g. "changeset claims site 3f…a1 through 1000000,
// but the relay holds it through 12; a device speaks only for its own site".
std::optional<std::string> check_device_changes(const crdt::Changeset& changeset,
                                                const std::vector<crdt::TxnTag>& origin_log,
                                                const crdt::SiteId& device,
                                                const crdt::VersionVector& relay_held,
                                                std::uint64_t untagged_through);

// What a relay merges of a device's changeset that passed check_device_changes: without the
// device's own stamps and counter parts up to `held`, what the relay already holds of its site.
// An honest device sends those again only when an acknowledgement was lost, and the relay has
// them; anything else at those sequence numbers is another history, which no vector would ever
// carry to the other devices.
crdt::Changeset without_held_own(crdt::Changeset changeset, const crdt::SiteId& device,
                                 std::uint64_t held);

// What a device sends of a changeset it extracted for the relay (storage's changes_since):
// only its own site's stamps and counter parts (rows left with nothing are dropped), and an
// `until` that says nothing of other sites beyond `since`. Changes of other sites that reached
// this replica by other means (changeset files) go to the relay from their own device.
crdt::Changeset own_changes_only(crdt::Changeset changeset, const crdt::SiteId& own);

// What a device merges of a changeset from the relay: the relay speaks for every site but this
// device's own, of which it may claim no more than `own_head`, the device's last own
// transaction. Own stamps and counter parts past `own_head` are dropped and `until` is clamped
// to it, so no relay can move this device's sequence counter.
crdt::Changeset clamp_own_claims(crdt::Changeset changeset, const crdt::SiteId& own,
                                 std::uint64_t own_head);

}  // namespace lattice::transport
