#pragma once
// Keeps a replica file in sync with a relay (docs/protocol.md): connects over WebSocket/TLS,
// runs one SyncSession per connection, reconnects with exponential backoff and jitter, and
// notices writes that other connections and processes make to the file.
//
// The client opens its own storage::Replica on the file and uses it only on its own thread,
// where it also runs its network I/O; the application keeps using its own Replica (SQLite's
// locking serializes the two). Writes the application makes reach the client by polling
// `PRAGMA data_version` (every SyncClientOptions::poll_interval), which changes whenever another
// connection commits.
//
// Thread-safety: every public member may be called from any thread, except that stop() (and
// the destructor) must not be called from the status callback.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "crdt/version_vector.hpp"
#include "engine/sync/sync_session.hpp"
#include "storage/replica.hpp"
#include "transport/frame.hpp"

namespace lattice::engine {

// A snapshot of what the client is doing.
struct SyncStatus {
  SyncState state = SyncState::kOffline;
  // Local transactions the relay has not acknowledged, as far as the client knows (before the
  // first welcome: every local transaction the file holds).
  std::uint64_t pending = 0;
  // The latest failure, for people ("connect to 127.0.0.1:4433: Connection refused",
  // "unauthorized: token expired"); empty when none happened yet. Not cleared by a later
  // success.
  std::string last_error;
  // The code of the latest error frame from the relay, if there was one.
  std::optional<transport::WireError> last_wire_error;
  // True after an error the relay says reconnecting cannot fix (protocol_version, unauthorized,
  // forbidden, schema_mismatch): the client stays offline until stopped.
  bool fatal = false;
  // What the relay is known to hold: from its last welcome and acknowledgements (it kept all of
  // it durably before saying so). Empty before the first welcome.
  crdt::VersionVector relay_held;
  // True when the relay has acknowledged every local change and this replica holds what the
  // relay said it held (SyncSession::in_sync).
  bool in_sync = false;
  // Set once this replica started from a snapshot of the namespace
  // (SyncClientOptions::bootstrap_from_snapshot): the snapshot's size in bytes. 0 otherwise.
  std::uint64_t snapshot_installed_bytes = 0;
};

struct SyncClientOptions {
  // PEM certificates to trust besides the system's (a CA, or the relay's self-signed one).
  std::string ca_file;
  // Allows ws:// to a host that is not loopback (refused otherwise).
  bool allow_insecure_remote = false;
  // Reconnect delays: the first after min_backoff, doubling up to max_backoff, each with
  // jitter (a uniformly random value between half the delay and the delay). Back to
  // min_backoff once a connection reaches `live`.
  std::chrono::milliseconds min_backoff{100};
  std::chrono::milliseconds max_backoff{30'000};
  // How often PRAGMA data_version is read to notice other connections' writes.
  std::chrono::milliseconds poll_interval{50};
  // Largest frame accepted from the relay.
  std::size_t max_frame_bytes = transport::kDefaultMaxFrameBytes;
  // Bound on one connection attempt (resolve, TCP, TLS, WebSocket handshake).
  std::chrono::milliseconds connect_timeout{10'000};
  // Called on the client's own thread whenever the status changes (state, pending, last error,
  // in_sync), one call at a time. It must not block for long (the client's I/O waits) and must
  // not call stop(); the other members are fine.
  std::function<void(const SyncStatus&)> on_status;
  // For the client's own Replica.
  storage::ReplicaOptions replica_options;
  // Called on the client's own thread when the relay refuses the token as unauthorized (it
  // expired, on an open connection, at a hello or at a snapshot download), with the relay's
  // reason. Return a new token
  // to reconnect with it at once; return an empty string to give up (the client then stays
  // offline: SyncStatus::fatal). Empty function: an unauthorized error is fatal. It may block
  // while it fetches a token (the client's I/O waits), but must not call stop().
  std::function<std::string(const std::string& reason)> renew_token;
  // A replica that has written and merged nothing (storage::Replica::accepts_snapshot) starts
  // from a snapshot of the namespace instead of receiving every change: the client downloads
  // the relay's snapshot (GET /snapshot/NAMESPACE, same host, TLS and token) into
  // `<replica_path>-snapshot`, installs it (storage::Replica::install_snapshot), removes the
  // file, then syncs what changed since as usual. The state meanwhile is kSyncing. A download
  // cut off resumes where it stopped at the next attempt, after a restart too. The client syncs
  // change by change instead, and does not try again, when the relay offers no snapshot (a
  // relay older than protocol 4, a refused token), the install refuses it (the application
  // wrote meanwhile, or its schema declares a constraint the relay's does not and its rows
  // break it), or after snapshot_attempts downloads that the relay answered with an error or
  // cut off before any byte (an unreachable relay is waited for, as for the WebSocket). Off:
  // always change by change.
  bool bootstrap_from_snapshot = true;
  std::uint32_t snapshot_attempts = 3;
  // Largest snapshot downloaded; a larger one is synced change by change.
  std::uint64_t max_snapshot_bytes = std::uint64_t{64} << 30;
};

class SyncClient {
 public:
  // Stores the arguments; nothing happens until start(). `url` is wss://HOST:PORT/NAMESPACE
  // (transport/websocket_client.hpp), `token` the bearer token for that namespace.
  SyncClient(std::string replica_path, std::string url, std::string token,
             SyncClientOptions options = {});
  // Stops (see stop()).
  ~SyncClient();
  SyncClient(const SyncClient&) = delete;
  SyncClient& operator=(const SyncClient&) = delete;

  // Opens the replica and checks the URL on the calling thread, then starts the client's thread
  // which connects and keeps reconnecting until stop(). Throws Error: kInvalidArgument for a
  // malformed URL or a refused ws:// URL, the errors of storage::Replica::open, kState when
  // already started.
  void start();
  // Closes the connection (a WebSocket close, waiting up to about 2 s for it) and joins the
  // client's thread. Idempotent; a stopped client cannot be started again.
  void stop();

  // Blocks until the client is in sync (SyncStatus::in_sync) with every write committed to the
  // file before the call included, or until `timeout`. Returns true when in sync; false on
  // timeout, after a fatal error, or when the client is not running.
  bool wait_until_in_sync(std::chrono::milliseconds timeout);

  // This replica's digest and the relay's (storage::Replica::digest), taken on the client's
  // thread and asked of the relay over the connection. Empty when not connected or when no
  // answer came within `timeout`. Compare them with storage::compare_digests.
  struct Digests {
    std::string local;
    std::string relay;
  };
  std::optional<Digests> digests(std::chrono::milliseconds timeout);

  SyncStatus status() const;
  SyncState state() const;
  std::uint64_t pending() const;
  std::string last_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lattice::engine
