#pragma once
// The lattice-relay program as functions: its two commands' flags, parsed into plain structs,
// and the loop that serves the hub over WebSocket/TLS until SIGTERM or SIGINT. relay_main.cpp
// only dispatches. The flags are documented in docs/relay.md.

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "relay/hub.hpp"

namespace lattice::relay {

// `lattice-relay serve ...`
struct ServeConfig {
  std::string host;  // an IP address literal ("localhost" is taken as 127.0.0.1)
  std::uint16_t port = 0;
  std::string data_dir;
  std::string key_file;
  // Holds the key (64 hexadecimal digits) the namespace files and their snapshots are encrypted
  // under at rest (docs/encryption.md); empty: plain SQLite files.
  std::string data_key_file;
  // A libpq connection string: the relay is one of a cluster whose log is in that PostgreSQL
  // database (docs/cluster.md). Empty: a relay alone.
  std::string cluster_db;
  // A relay of a cluster stores a snapshot of a namespace with devices here once its log has
  // grown by this many positions since the newest one, and prunes the log below it and what
  // every relay reported applying within `cluster_prune_grace_seconds` (docs/cluster.md,
  // "Pruning"). A relay silent longer than the grace holds nothing back: it rebuilds its replica
  // from the snapshot when it returns.
  std::int64_t cluster_snapshot_every = 10'000;
  int cluster_prune_grace_seconds = 600;
  std::string tls_cert_file;
  std::string tls_key_file;
  bool insecure = false;
  // Addresses or networks of proxies (haproxy with send-proxy-v2) whose connections begin with
  // a PROXY protocol v2 header naming the device (docs/cluster.md, "haproxy in front").
  std::vector<std::string> proxy_protocol_from;
  std::string schema_file;  // empty: new namespaces start without tables
  // <schema_dir>/<namespace>.sql, when it exists, is the new namespace's schema instead.
  // Without either, a namespace adopts the first admin device's replicated schema.
  std::string schema_dir;
  HubLimits limits;
  std::size_t max_queue_bytes = 8u << 20;  // per connection outbound queue
  int handshake_timeout_seconds = 30;
  int shutdown_grace_seconds = 10;  // after SIGTERM, the longest wait for peers' close frames
  // GET /snapshot/NAMESPACE gives the same file while it is younger than this (Hub::snapshot).
  int snapshot_max_age_seconds = 60;
  // Before authentication (transport/websocket_server.hpp): the hello's deadline after the
  // WebSocket upgrade, and unauthenticated connections per source address and in all. The total
  // is lowered further to a quarter of what the open-files limit leaves after a reserve.
  int hello_timeout_seconds = 10;
  std::size_t max_unauthenticated = 256;
  std::size_t max_unauthenticated_per_source = 32;
  double max_connects_per_source_per_second = 5;
  // Threads that run the connections (TLS, WebSocket framing, socket reads and writes). With
  // 1, the hub (merges, fan-out) shares it; with more, the hub has a thread of its own. Group
  // commits' disk syncs have another either way. 1 by default: on 2 cores shared with their
  // load, more threads cost more CPU per delivery in hand-offs than they gained
  // (docs/benchmarks.md, "Network threads").
  unsigned threads = 1;
};

// `lattice-relay token ...`
struct TokenConfig {
  std::string key_file;
  std::string ns;
  std::string subject = "device";
  std::string rights;  // as given: "read,write"
  std::string ttl;     // as given: "1h"
};

// `lattice-relay rotate-data-key ...`
struct RotateDataKeyConfig {
  std::string data_dir;
  std::string data_key_file;      // the key the namespace files are encrypted under now
  std::string new_data_key_file;  // the key they are to be encrypted under
};

// Parse the arguments after the command name. Throw Error(kInvalidArgument) naming the flag
// that is unknown, missing, repeated, without its value or with a bad one.
ServeConfig parse_serve_args(const std::vector<std::string>& args);
TokenConfig parse_token_args(const std::vector<std::string>& args);
RotateDataKeyConfig parse_rotate_data_key_args(const std::vector<std::string>& args);

// Loads the key file, then signs a token issued now for `ttl`. Throws Error (kIo for the key
// file, kInvalidArgument for the rest).
std::string make_token(const TokenConfig& config, std::int64_t now_unix);

// Re-encrypts every namespace file of the data directory under the new key (each crash-safe,
// storage::Replica::rotate_key) and deletes the snapshot files written under the old one
// (caches: the relay writes them again). Runs only while no relay serves the directory (both
// take its lock, `lattice-relay.lock`). A file already under the new key is left as it is, so
// that running it again finishes an interrupted rotation. Writes one line per file to `out`;
// returns how many it re-encrypted. Throws Error: kBusy while a relay serves the directory,
// kKey naming a file that neither key opens (nothing after it is touched), kIo.
int rotate_data_key(const RotateDataKeyConfig& config, std::ostream& out);

// Serves until SIGTERM or SIGINT, then shuts down gracefully (docs/relay.md) and returns 0.
// Writes exactly one line, `listening on HOST:PORT`, to `out` (flushed) once accepting; log lines
// go to `log`. Throws Error for a failure to start (unreadable key, schema or TLS files, an
// address that cannot be bound, a data directory that cannot be created, one another relay or
// a key rotation is using: kBusy).
int serve(const ServeConfig& config, std::ostream& out, std::ostream& log);

}  // namespace lattice::relay
