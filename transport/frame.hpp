#pragma once
// The frames of the sync protocol, as plain data, and their byte form (msgpack; specified in
// docs/protocol.md). Pure: no sockets, no SQLite.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "crdt/site_id.hpp"
#include "crdt/txn_tag.hpp"
#include "crdt/version_vector.hpp"

namespace lattice::transport {

// Protocol versions this build speaks. A hello with another version is refused with an error
// frame that names these.
constexpr std::uint32_t kProtocolVersion = 5;
constexpr std::uint32_t kMinProtocolVersion = 2;

// Codes of error frames. Stable numbers: clients switch on them.
enum class WireError : std::uint32_t {
  kProtocolVersion = 1,      // unsupported protocol version
  kMalformed = 2,            // a frame that does not decode, or a frame out of order
  kUnauthorized = 3,         // missing, expired, badly signed or wrong-namespace token
  kForbidden = 4,            // the token lacks the right (e.g. a read-only token sending changes)
  kSchemaMismatch = 5,       // the device's replicated tables differ from the namespace's
  kBadChangeset = 6,         // a changeset that does not decode or does not apply
  kFrameTooLarge = 7,        // over the frame size limit
  kBatchTooLarge = 8,        // over the changes-per-batch limit
  kRateLimited = 9,          // over the changes-per-second limit
  kTooManyConnections = 10,  // over the connections-per-token limit
  kSlowConsumer = 11,        // the outbound queue overflowed; reconnect to catch up
  kShuttingDown = 12,        // the relay is stopping
  kInternal = 13,            // a relay-side failure
  kSchemaAhead = 14,         // the device's schema is a version the namespace does not have yet
};

// "unauthorized", "frame_too_large", ...
const char* wire_error_name(WireError code);

// Device -> relay, first frame of every connection.
struct Hello {
  std::uint32_t protocol_version = kProtocolVersion;
  crdt::SiteId site;
  std::string ns;  // namespace
  std::string token;
  crdt::VersionVector held;  // what the device holds
  // Protocol 4 on: the device's schema manifest (storage/schema_manifest.hpp); before: its
  // schema description.
  std::string schema_fingerprint;
  // The device's own history since the relay last acknowledged it: the highest own sequence
  // number acknowledged, and its own transactions from that one through held[site].
  std::uint64_t acked_seq = 0;
  std::vector<crdt::TxnTag> own_log;
  // Protocol 4 on: the number of the device's last migration (0: none). Not on the wire before.
  std::uint64_t schema_version = 0;
  bool operator==(const Hello&) const = default;
};

// Relay -> device, the answer to an accepted hello.
struct Welcome {
  std::uint32_t protocol_version = kProtocolVersion;
  crdt::VersionVector held;  // what the relay holds
  bool operator==(const Welcome&) const = default;
};

// Either direction: an encoded changeset (crdt/changeset_codec.hpp). `batch` numbers a device's
// batches so the relay can acknowledge them; the relay's batches carry 0.
struct Changes {
  std::uint64_t batch = 0;
  std::string changeset;
  // From a device: its own transactions that this changeset covers (the relay's origin log).
  std::vector<crdt::TxnTag> origin_log;
  bool operator==(const Changes&) const = default;
};

// Relay -> device: batch `batch` is merged and durable; `held` is the relay's vector after it.
struct Ack {
  std::uint64_t batch = 0;
  crdt::VersionVector held;
  // Protocol 5 on, not 0 when the batch was all its group merged: the group's number. Its
  // sender gets no delta of it (it holds all of it), but the next delta may follow this group's,
  // whose `until` is `held` (see Delta). Not on the wire when 0.
  std::uint64_t group = 0;
  bool operator==(const Ack&) const = default;
};

// Either direction. After sending one the sender closes the connection.
struct ErrorFrame {
  WireError code = WireError::kInternal;
  std::string message;
  bool operator==(const ErrorFrame&) const = default;
};

struct Ping {
  std::uint64_t nonce = 0;
  bool operator==(const Ping&) const = default;
};

struct Pong {
  std::uint64_t nonce = 0;
  bool operator==(const Pong&) const = default;
};

// Relay -> device: another device presents the same site id (a copied replica file); take a
// new site id and send your unacknowledged changes again under it.
struct Rekey {
  std::string reason;
  // Own transactions up to this one are the relay's too; later ones must move to a new site id.
  std::uint64_t keep_through = 0;
  bool operator==(const Rekey&) const = default;
};

// Device -> relay: asks for the digest of the namespace's replicated state.
struct DigestRequest {
  std::uint64_t nonce = 0;
  bool operator==(const DigestRequest&) const = default;
};

// Relay -> device: the digest, in the form storage::format_digest writes (one line per table:
// name, row count, SHA-256 of its rows).
struct Digest {
  std::uint64_t nonce = 0;
  std::string summary;
  bool operator==(const Digest&) const = default;
};

// Either direction, protocol 3 on: bytes of the changeset of a changes frame too large for one
// frame (one large transaction). The pieces of one changeset follow each other, each at the
// offset where the last ended (the first at 0), then the changes frame with the same batch
// number carries the last bytes (and the origin log); the receiver joins them and treats the
// whole as that one changes frame. Only to a peer whose hello or welcome said protocol 3 or
// later.
struct ChangesPiece {
  std::uint64_t batch = 0;
  std::uint64_t offset = 0;  // of this piece's first byte in the changeset
  std::string piece;
  bool operator==(const ChangesPiece&) const = default;
};

// Relay -> device, protocol 5 on: the delta of the relay's group commit number `group` (counted
// per namespace), for a device at the relay's head (docs/protocol.md, "Deltas"). With
// `previous` 0 the changeset is whole. Otherwise it follows group `previous`, the last group
// whose delta (or whose number, in an ack) this connection carried: its `since` is empty and
// stands for that group's `until`, and its `until` holds only the entries that moved. A namespace's
// vector has an entry per device that ever wrote; a changes frame carries two of them whole.
struct Delta {
  std::uint64_t group = 0;
  std::uint64_t previous = 0;
  std::string changeset;
  bool operator==(const Delta&) const = default;
};

using Frame = std::variant<Hello, Welcome, Changes, Ack, ErrorFrame, Ping, Pong, Rekey,
                           DigestRequest, Digest, ChangesPiece, Delta>;

constexpr std::size_t kDefaultMaxFrameBytes = 16u << 20;

// The protocol's rule for namespace names (docs/protocol.md): 1 to 64 of A-Z a-z 0-9 _ -. The
// relay makes them file names, so nothing else (no '.', no '/') ever passes.
bool valid_namespace(std::string_view ns);

std::string encode_frame(const Frame& frame);

// Decodes bytes from an untrusted peer. Throws lattice::Error naming what was wrong: kTooLarge
// past `max_bytes`, kCorrupt for anything that does not decode as a frame. (Unknown protocol
// versions decode; refusing them is the hub's job, so it can answer with an error frame.)
Frame decode_frame(std::string_view bytes, std::size_t max_bytes = kDefaultMaxFrameBytes);

// What a relay checks of a hello before anything else: read from the first fields of the bytes
// without decoding the rest, so that a bad token is refused before the frame's vectors and logs
// cost anything. nullopt when the bytes are a frame of another type; throws Error(kCorrupt) as
// decode_frame does when they do not start as a frame, or when these fields do not decode.
// A hello that passes still goes through decode_frame.
struct HelloCredentials {
  std::uint32_t protocol_version = 0;
  std::string ns;
  std::string token;
};
std::optional<HelloCredentials> peek_hello(std::string_view bytes);

}  // namespace lattice::transport
