#pragma once
// The relay's hub: namespaces, each a replica file merged with the same storage code as the
// devices, and the protocol conversation with every connected device (docs/protocol.md).
// It sees connections only through transport::Connection, so the deterministic simulation
// runs it over loopback connections and lattice-relay over WebSocket/TLS.
//
// Not thread-safe: every call, and every connection callback, runs on one thread (the hub's);
// only a group commit's disk sync may run on another (HubOptions::offload).

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "transport/connection.hpp"
#include "transport/snapshot_refusal.hpp"

namespace lattice::relay {

// What a valid token grants. Rights bits are those of relay/token.hpp: read 1, write 2, admin 4.
struct Grant {
  std::string subject;
  std::string ns;
  unsigned rights = 0;
  std::int64_t expires_at = 0;  // Unix seconds; 0: never (tests)
};
constexpr unsigned kGrantRead = 1, kGrantWrite = 2, kGrantAdmin = 4;

// Checks a bearer token. Throws Error(kUnauthorized) naming why it is not valid.
using Authenticator = std::function<Grant(std::string_view token)>;

// Why `grant` may not read namespace `ns`: Error(kUnauthorized) for a token of another
// namespace, Error(kForbidden) for one without the read right; nothing when it may. What a
// hello and GET /snapshot/NAMESPACE check.
std::optional<Error> read_refusal(const Grant& grant, const std::string& ns);

struct HubLimits {
  std::size_t max_frame_bytes = 16u << 20;
  // The first frame, before the device is authenticated: a hello is a few KiB.
  std::size_t max_hello_bytes = 64u << 10;
  std::size_t max_batch_changes = 100'000;
  // One batch sent in pieces (protocol 3: a transaction too large for one frame): the bytes of
  // its changeset, counting every unfinished batch of one token together. max_batch_changes
  // does not apply to it; the token's changes and bytes budgets pay for it afterwards.
  std::size_t max_transaction_bytes = 128u << 20;
  // Budgets per token, shared by all the connections that present it (a token bucket each:
  // a burst, refilled at the rate). Past one, the request is refused with rate_limited.
  double max_changes_per_second = 200'000;  // column changes merged; burst: one full batch
  double max_bytes_per_second = 32u << 20;  // bytes of frames received; burst: one full frame
  double max_digests_per_minute = 6;        // digest requests; burst: 8
  double max_hellos_per_minute = 30;        // hellos (reconnects); burst: 64
  // Bytes of catch-up sent; burst: 16 MiB. A hello finding the token in debt is refused; a
  // larger first catch-up still starts, and the token owes it.
  double max_catch_up_bytes_per_second = 2u << 20;
  std::size_t max_connections_per_token = 64;
  // Changes the relay sends a device in one frame; a larger catch-up goes in several.
  std::size_t max_outgoing_batch_changes = 50'000;
  // Bytes of catch-up queued for a device at a time; the next round goes when the connection's
  // queue drains, so a large catch-up neither overflows it nor holds up other devices.
  std::size_t catch_up_round_bytes = 2u << 20;
  // A changeset the relay sends whose encoding is larger goes in pieces of this size (to
  // devices of protocol 3 on), a round (catch_up_round_bytes) at a time.
  std::size_t piece_bytes = 1u << 20;
};

// A changes batch in the durable log of a relay cluster (docs/cluster.md): its position there
// (0 until it has one), the device that wrote it, the changeset's bytes as merged, and the tags
// of the device's transactions it covers (its changes frame's origin log): with them every relay
// tells the device from a copy of its replica file, as the one that received the batch does.
struct ClusterBatch {
  std::int64_t position = 0;
  crdt::SiteId site;
  std::uint64_t first_seq = 0;
  std::string bytes;
  std::vector<crdt::TxnTag> origin_log;
};

// What a read of the cluster's log found: batches after a position, and the last position
// pruned from the log (entries up to it are gone; a relay that applied less hydrates from the
// namespace's snapshot first).
struct ClusterRead {
  std::vector<ClusterBatch> batches;
  std::int64_t pruned = 0;
};

// A snapshot of a namespace for another relay of a cluster (Hub::cluster_snapshot): it holds
// every batch of the log up to `position`, under the schema `manifest` (storage::format_manifest)
// of version `schema_version`.
struct ClusterSnapshot {
  std::int64_t position = 0;
  std::int64_t schema_version = 0;
  std::string manifest;
};

struct HubOptions {
  std::string data_dir;  // one replica file per namespace: <data_dir>/<namespace>.db
  // Run once on a namespace's new replica to create its tables: <schema_dir>/<namespace>.sql
  // when that file exists, else schema_sql. With neither, the namespace adopts the replicated
  // schema of the first device whose token has the admin right.
  std::string schema_dir;
  std::string schema_sql;
  HubLimits limits;
  Authenticator authenticate;
  std::function<double()> now_seconds;  // for rate limits; injected by tests
  // The Unix time in seconds, for tokens' expiry on open connections. Empty: not enforced.
  std::function<std::int64_t()> unix_now;
  storage::ReplicaOptions replica_options;
  // Runs `task` later on the hub's thread, after the frames already received (lattice-relay:
  // asio::post). With it, the hub commits in groups: the changes frames a namespace received
  // meanwhile are merged in one transaction with one disk sync, then each is acknowledged and
  // what they added is fanned out once. Empty: each changes frame is merged when it arrives.
  std::function<void(std::function<void()>)> defer;
  // Runs `task` on another thread (lattice-relay: its disk thread), one task at a time, in the
  // order given. With it and defer, a group's commit (its disk sync) runs there: the hub's thread
  // goes on reading, acknowledging and fanning out the other namespaces' frames and queueing this
  // one's for its next group, and acknowledges the group when the task hands it back (through
  // defer). A hello, a digest, a catch-up round or a snapshot of the namespace waits for the
  // sync first. Empty: the commit runs on the hub's thread.
  std::function<void(std::function<void()>)> offload;
  // Runs `task` on the hub's thread after `delay` (lattice-relay: an asio timer). Only what
  // waits for the cluster's log uses it (log_to_cluster).
  std::function<void(std::chrono::milliseconds delay, std::function<void()> task)> defer_for;

  // A relay of a cluster (docs/cluster.md) sets both; a relay alone neither.
  // Appends the batches a group merged to the cluster's log, before the group is committed and
  // acknowledged; throws when it cannot. Runs where the commit runs (offload). Nothing of a
  // group it failed is kept or acknowledged: with defer_for, its batches wait in the namespace
  // (their devices stay connected) and the group is tried again, 100 ms later, then at most a
  // second apart, until the log takes it; without, the group fails as one whose disk sync failed
  // (devices are told kInternal and send again when they reconnect).
  std::function<void(const std::string& ns, const std::vector<ClusterBatch>& batches)>
      log_to_cluster;
  // Reads the cluster's log of `ns` after position `after`, in order (at most a few thousand
  // batches at once). The hub reads it before it answers a hello, so that a device sees every
  // change another relay acknowledged before it connected. Runs on the hub's thread.
  std::function<ClusterRead(const std::string& ns, std::int64_t after)> read_cluster;
  // Writes the newest snapshot of `ns` (another relay's cluster_snapshot) to the new file
  // `path` and describes it; nothing when there is none. The hub calls it when the log is
  // pruned past what its replica of `ns` applied, then rebuilds that replica from it.
  std::function<std::optional<ClusterSnapshot>(const std::string& ns, const std::string& path)>
      fetch_cluster_snapshot;
  // Called on the hub's thread when a namespace gains its first device (lattice-relay: wakes
  // the follower of the cluster's log, which then listens to the namespace's appends).
  std::function<void(const std::string& ns)> first_device;
};

// Durations of the relay's merges, in seconds, for the merge latency histogram of /metrics:
// one per group commit (every changes frame merged in it, the commit included). Counts are per
// bucket, not cumulative.
struct LatencyHistogram {
  static constexpr std::array<double, 13> kBounds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
  std::array<std::uint64_t, kBounds.size() + 1> counts{};  // the last one: over 5 s
  std::uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

struct HubCounters {
  std::uint64_t connections_accepted = 0;
  std::uint64_t changes_merged = 0;     // column changes that won at the relay
  std::uint64_t changes_sent = 0;       // column changes sent to devices
  std::uint64_t rekeys = 0;             // devices told to take a new site id (copied replica files)
  std::uint64_t pieced_batches_in = 0;  // device batches that arrived in pieces (protocol 3)
  std::uint64_t pieced_changesets_out = 0;  // changesets sent to devices in pieces
  std::uint64_t following_deltas = 0;       // deltas that followed the last one (protocol 5)
  std::uint64_t schema_changes = 0;         // namespaces brought to an admin device's schema
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::map<std::string, std::uint64_t> rejected;  // by wire error name
  LatencyHistogram merge_seconds;                 // every group commit
  std::uint64_t group_commits = 0;                // commits of merged changes frames
  std::uint64_t grouped_batches = 0;              // changes frames merged in them
  std::uint64_t snapshots_written = 0;            // namespace snapshots written (Hub::snapshot)
  std::uint64_t catch_up_extractions = 0;         // changes_since calls for devices catching up
  std::uint64_t cluster_batches_applied = 0;      // batches of the cluster's log taken here
  std::uint64_t cluster_batches_skipped = 0;      // of those, the ones it could not read
  std::uint64_t cluster_groups_held = 0;  // group commits the cluster's log failed, to try again
  std::uint64_t cluster_hydrations = 0;   // replicas rebuilt from a snapshot of the cluster's log
};

// A namespace's snapshot as Hub::snapshot keeps it: its file and the ETag that names it.
struct SnapshotFile {
  std::string path;
  std::string etag;  // quoted, unique to this file: a download resumes only on the same file
};

class Hub {
 public:
  explicit Hub(HubOptions options);
  ~Hub();
  Hub(const Hub&) = delete;
  Hub& operator=(const Hub&) = delete;

  // Takes over a new connection that asked for namespace `ns` (the URL path). The hub keeps it
  // until it closes.
  void accept(std::shared_ptr<transport::Connection> connection, const std::string& ns);

  // Merges and acknowledges the changes frames awaiting their group commit, then sends every
  // device a shutting_down error and closes its connection. Destroying the hub without it
  // drops those frames unacknowledged, as a relay killed before its commit would.
  void shutdown();

  // The relay's replica of `ns`, created (with the schema) on first use. Throws Error
  // (kInvalidArgument) for a namespace name other than 1 to 64 of [A-Za-z0-9_-].
  storage::Replica& replica(const std::string& ns);

  // A snapshot of `ns` (storage::Replica::write_snapshot) under <data_dir>/snapshots/, for a new
  // device to download instead of catching up change by change (docs/relay.md, "Snapshots").
  // The changes frames awaiting their group commit are committed first. The same file is given
  // again while it is younger than `max_age_seconds`, so that downloads cost the relay one
  // snapshot per period however many devices ask; a newer one replaces it (a download in
  // progress keeps reading the file it opened). Throws Error as replica() does, and kIo.
  SnapshotFile snapshot(const std::string& ns, double max_age_seconds);

  // Whether `token` may be sent `bytes` of a snapshot of `file_bytes` (a whole one or the rest
  // of one): a budget per token of snapshot bytes, four whole files at once (a download, its
  // retry, devices of one token joining together) or a catch-up's burst if more, refilled at
  // HubLimits::max_catch_up_bytes_per_second, so that a reader cannot make the relay send its
  // namespace faster than a catch-up would. Returns why not, with when to retry. Without
  // HubOptions::now_seconds: always.
  using SnapshotRefusal = transport::SnapshotRefusal;
  std::optional<SnapshotRefusal> admit_snapshot(const std::string& token, std::uint64_t bytes,
                                                std::uint64_t file_bytes);

  // A relay of a cluster: merges `batches` of the cluster's log of `ns` (in order, from the
  // namespace's applied position on; those before it are skipped), records the position
  // reached in the namespace's replica in the same transaction, and fans out what they added to
  // the devices here. Returns the applied position, or nothing when `ns` is not open here (it
  // catches up from the log when it opens). While a group's commit of the namespace is in
  // flight, the batches wait for it and are merged once it is settled: then it returns the
  // last position taken, and a read that continues from there is right (one that finds the
  // replica's position behind later reads the rest again). Throws Error when the replica fails.
  // `pruned`: the log's last pruned position as the read that found `batches` saw it; when the
  // replica applied less, it is rebuilt from the namespace's snapshot first
  // (HubOptions::fetch_cluster_snapshot), and the namespace's devices are disconnected (they
  // catch up when they connect again).
  std::optional<std::int64_t> apply_from_cluster(const std::string& ns,
                                                 const std::vector<ClusterBatch>& batches,
                                                 std::int64_t pruned = 0);
  // A relay of a cluster: writes a snapshot of `ns`, origin log included, to the new file
  // `path` for another relay to hydrate from (docs/cluster.md, "Pruning"), after committing
  // the batches awaiting their group commit. It holds every batch of the log up to the
  // position it returns (and maybe later ones: merges are idempotent). Throws Error as
  // replica() does, and kIo.
  ClusterSnapshot cluster_snapshot(const std::string& ns, const std::string& path);
  // The applied positions of the namespaces open here; with `with_devices_only`, of those with
  // a device connected here (the others need not follow the log: a hello reads it first).
  std::map<std::string, std::int64_t> cluster_positions(bool with_devices_only = false) const;

  // Tokens the hub keeps budgets for: those with open connections, and those that still owe
  // their budgets time (HubLimits); the others are forgotten as new ones come.
  std::size_t token_budget_count() const;
  std::size_t connection_count() const;
  // Namespaces whose last group commit runs on the offload thread, not yet acknowledged.
  std::size_t commits_in_flight() const;
  // Device batches waiting for the cluster's log to take them (HubOptions::log_to_cluster).
  std::size_t batches_waiting_for_cluster() const;
  std::size_t namespace_count() const;
  // Live device connections by the schema version their hello gave (0: none, or protocol 3).
  std::map<std::uint64_t, std::size_t> devices_by_schema_version() const;
  const HubCounters& counters() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lattice::relay
