#pragma once
// The device's side of one connection to a relay (docs/protocol.md): hello, catch-up, then
// local changes out and other devices' changes in. Written against transport::Connection, so
// the simulation tests drive it over loopback connections; SyncClient adds reconnection.
//
// Not thread-safe: every call and connection callback runs on one thread.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "crdt/version_vector.hpp"
#include "storage/replica.hpp"
#include "transport/connection.hpp"
#include "transport/frame.hpp"

namespace lattice::engine {

enum class SyncState { kOffline, kConnecting, kSyncing, kLive };

// "offline", "connecting", "syncing", "live".
const char* sync_state_name(SyncState state);

class SyncSession {
 public:
  struct Options {
    std::string ns;
    std::string token;
    std::size_t max_batch_changes = 50'000;  // under the relay's limit (docs/protocol.md)
    // A batch of one transaction larger than max_batch_changes, or whose changeset is larger
    // than piece_bytes, goes in pieces of this size (relays of protocol 3 on), a few at a time.
    std::size_t piece_bytes = 1u << 20;
    // The largest changeset accepted from the relay in pieces.
    std::size_t max_transaction_bytes = 256u << 20;
  };
  struct Events {
    std::function<void(SyncState)> on_state;
    // An error frame from the relay; the connection closes after it.
    std::function<void(const transport::ErrorFrame&)> on_error;
    // The relay said another copy of this replica file wrote under its site id; the replica
    // has taken a new one (storage::Replica::rekey) and the connection closes. Reconnect.
    std::function<void(const transport::Rekey&)> on_rekey;
    // The connection closed (after an error or not). The session is done.
    std::function<void(const std::string& reason)> on_closed;
  };

  SyncSession(storage::Replica& replica, std::shared_ptr<transport::Connection> connection,
              Options options, Events events);
  ~SyncSession();

  // Sends the hello. Call once.
  void start();
  // Sends local changes the relay lacks, if connected. Call after local writes.
  void push_local_changes();
  // Asks the relay for the digest of its replica of the namespace (storage::Replica::digest);
  // `on_digest` receives it when it arrives. Only when connected.
  void request_digest(std::function<void(const std::string& digest)> on_digest);

  // Closes the connection.
  void close(const std::string& reason);

  SyncState state() const { return state_; }
  // True when the relay has acknowledged every local change and this replica holds everything
  // the relay held when it last said so.
  bool in_sync();
  // Local transactions the relay has not acknowledged.
  std::uint64_t pending();
  // What the relay is known to hold.
  const crdt::VersionVector& relay_held() const { return relay_held_; }

 private:
  void on_frame(std::string_view bytes);
  void on_changes(transport::Changes& changes);
  void on_delta(transport::Delta& delta);
  // A changeset from the relay, decoded: merged, and what it says the relay holds learnt.
  // Throws Error, which the caller answers with bad_changeset.
  crdt::Changeset decode_from_relay(std::string_view bytes);
  void merge_from_relay(crdt::Changeset changeset);
  void refuse_changeset(const std::string& why);  // bad_changeset
  void refuse_frame(const std::string& why);      // malformed
  // Sends the next few pieces of outgoing_; after the last, what was written meanwhile.
  void send_pieces();
  void set_state(SyncState state);
  // Records in the replica what the relay holds of its own transactions.
  void acknowledge();
  void send(const transport::Frame& frame);

  storage::Replica& replica_;
  std::shared_ptr<transport::Connection> connection_;
  Options options_;
  Events events_;
  SyncState state_ = SyncState::kOffline;
  bool closed_ = false;
  crdt::VersionVector relay_held_;
  std::uint64_t next_batch_ = 1;
  std::string hello_schema_;  // the schema manifest the hello presented
  std::map<std::uint64_t, crdt::VersionVector> in_flight_;  // batch -> its `until`
  std::uint32_t protocol_ = 0;                              // from the welcome
  // A batch going out in pieces: the changes frame of its last bytes, and how far it has gone.
  std::optional<transport::Changes> outgoing_;
  std::size_t outgoing_at_ = 0;
  // Pieces from the relay, until their changes frame, and the number they carry (0 from a
  // relay that does not number them).
  std::string incoming_;
  std::uint64_t incoming_batch_ = 0;
  // The last group whose delta came, or whose number came with the acknowledgement of the one
  // batch it merged, and its `until` (protocol 5): the next delta may follow it.
  std::uint64_t delta_group_ = 0;
  crdt::VersionVector delta_until_;
  // Other sites' changes this replica holds beyond what the relay does (from changeset files):
  // never sent, stepped over when extracting what to send.
  crdt::VersionVector skipped_;
  std::uint64_t next_nonce_ = 1;
  std::map<std::uint64_t, std::function<void(const std::string&)>> digest_waiters_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace lattice::engine
