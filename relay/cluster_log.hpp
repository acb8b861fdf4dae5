// The durable, ordered log of a relay cluster (docs/cluster.md): every changes batch a relay of
// the cluster accepted, per namespace, in PostgreSQL. Relays append a device's batch before they
// acknowledge it, and apply the log, in order, to their own replicas of the namespace.
//
// Positions are 1, 2, 3, ... per namespace, assigned under a lock on the namespace's head row,
// so position order is commit order: a reader that has seen position P never later finds a
// smaller one committed (the "skipped sequences" of Sync Gateway, where a shared counter was
// read out of commit order, cannot happen). A batch is logged once per (namespace, site, first
// sequence), however often its append is retried after a lost answer.
//
// One ClusterLog is one libpq connection, used by one thread at a time; calls block. Errors of
// the connection or of the server are Error(kIo) naming what failed; after one, the connection
// may be gone: reconnect() opens it again.

#ifndef LATTICE_RELAY_CLUSTER_LOG_HPP
#define LATTICE_RELAY_CLUSTER_LOG_HPP

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/site_id.hpp"
#include "crdt/txn_tag.hpp"

namespace lattice::relay {

// One batch of the log.
struct LogEntry {
  std::int64_t position = 0;  // 1, 2, ... within its namespace
  crdt::SiteId site;          // the device that wrote it
  std::uint64_t first_seq = 0;
  std::string batch;  // the changeset's bytes, as the device sent them
  // The tags of the device's transactions the batch covers (its origin log).
  std::vector<crdt::TxnTag> origin_log;
};

// What ClusterLog::read found: entries, and how far the log is pruned.
struct LogRead {
  std::vector<LogEntry> entries;
  // The last position pruned (0: none). Entries up to it are gone: a reader that has applied
  // less than it installs the namespace's snapshot (fetch_snapshot) first.
  std::int64_t pruned = 0;
};

// A snapshot of a namespace in the log's database: a relay's replica of it (written with its
// origin log, storage::Replica::write_snapshot) holding every entry up to `position`, and the
// schema it was taken under, for a relay that must migrate an empty replica to it first.
struct LogSnapshot {
  std::int64_t position = 0;
  std::int64_t schema_version = 0;
  std::string manifest;  // storage::format_manifest of the replica's schema
  std::uint64_t bytes = 0;
};

// What the notifications of one namespace said during a wait (ClusterLog::wait_for_appends).
struct LogAppended {
  std::string ns;
  // The entries they carried, in position order: every entry appended by each notifying
  // transaction when all of them were small enough to travel in their notifications; empty
  // when any one was not (or came from a release whose notifications carry none): read() them.
  std::vector<LogEntry> entries;
};

class ClusterLog {
 public:
  // Connects with `conninfo` (a libpq connection string, "host=... dbname=..." or a
  // postgresql:// URI; a connection attempt gives up after 5 s unless it sets connect_timeout)
  // and creates the log's tables and function when they are missing (the
  // first relay of a cluster; several at once are fine). `application_name` names the
  // connection in pg_stat_activity unless the conninfo names it. Throws Error(kIo).
  explicit ClusterLog(const std::string& conninfo,
                      const std::string& application_name = "lattice-relay");
  ~ClusterLog();
  ClusterLog(const ClusterLog&) = delete;
  ClusterLog& operator=(const ClusterLog&) = delete;

  // Appends `batch`, written by `site` from sequence `first_seq` on, with the tags of the
  // transactions it covers, to the log of `ns`, and
  // returns its position once PostgreSQL has committed it (durable when the server runs with
  // fsync and synchronous_commit on, its defaults). A batch already logged under the same (ns,
  // site, first_seq) is not logged again: its position is returned.
  std::int64_t append(const std::string& ns, const crdt::SiteId& site, std::uint64_t first_seq,
                      std::string_view batch, const std::vector<crdt::TxnTag>& origin_log = {});

  // Appends `entries` (their positions ignored) to the log of `ns` in one statement and one
  // transaction: one commit, one disk sync of PostgreSQL's WAL, one notification, however many
  // there are; the notification carries the entries logged when they fit (wait_for_appends).
  // Returns their positions, in order; an entry already logged under the same (ns, site,
  // first_seq), or given twice, keeps its first position. All or none are logged.
  std::vector<std::int64_t> append_all(const std::string& ns, const std::vector<LogEntry>& entries);

  // The last position of `ns` (0 when nothing is logged).
  std::int64_t head(const std::string& ns);
  // The last positions of `namespaces`, in one query; those with nothing logged are absent.
  std::map<std::string, std::int64_t> heads(const std::vector<std::string>& namespaces);

  // How full PostgreSQL's queue of notifications not yet read by every listener is, 0 to 1
  // (pg_notification_queue_usage()): a listener that stops reading fills it, and at 1 every
  // append fails.
  double notification_queue_usage();

  // The entries of `ns` after position `after`, in order, at most `max`, and the last position
  // pruned, both as of one moment. When `after` is below the pruned position, the entries
  // returned start after it. An entry whose row does not decode (a site id or origin of the
  // wrong length) comes with its position and nothing else: no batch a relay could merge.
  // At most `max_bytes` of batches come at once, and always the first entry, however large.
  LogRead read(const std::string& ns, std::int64_t after, std::size_t max,
               std::size_t max_bytes = 64u << 20);

  // --- Pruning (docs/cluster.md, "Pruning") ------------------------------------------------

  // Records the positions `relay` (a name unique to the process) has applied, per namespace.
  // prune() keeps every entry a relay that reported within its grace has not applied.
  void report_positions(const std::string& relay,
                        const std::map<std::string, std::int64_t>& positions);
  // Stores the snapshot file at `path` as the newest of `ns`, in pieces of a few MiB, and
  // drops the older ones; does nothing when one as new is there already or another connection
  // is storing one of `ns`. Returns whether it stored it. A reader of the older one
  // (fetch_snapshot) keeps reading what it began with.
  bool put_snapshot(const std::string& ns, const LogSnapshot& snapshot, const std::string& path);
  // The positions of the newest snapshots of `namespaces`; those without one are absent.
  std::map<std::string, std::int64_t> snapshot_positions(
      const std::vector<std::string>& namespaces);
  // Writes the newest snapshot of `ns` to the new file `path` and describes it; nothing when
  // `ns` has none.
  std::optional<LogSnapshot> fetch_snapshot(const std::string& ns, const std::string& path);
  // Deletes the entries of `ns` up to the newest snapshot's position or the lowest position a
  // relay that reported within `grace` has applied, whichever is lower (nothing without a
  // snapshot); forgets relays silent for ten graces. Returns the last position pruned.
  std::int64_t prune(const std::string& ns, std::chrono::seconds grace);

  // Asks PostgreSQL to tell this connection of the appends to `namespaces`, and of no others
  // (LISTEN to one channel per namespace, UNLISTEN those no longer wanted), so that a relay is
  // not woken by namespaces it has no devices in. Returns the namespaces newly followed: what
  // was appended to them before their LISTEN took effect was not notified here, so a reader
  // reads their logs once. A notification is only a wake-up: it is lost with the connection,
  // so after reconnect() (which listens again to the same namespaces) and on a timer a reader
  // compares head() with what it applied.
  std::vector<std::string> follow(const std::set<std::string>& namespaces);
  // How many namespaces follow() listens to.
  std::size_t followed() const;
  // Waits up to `timeout` for notifications, or until `wake_fd` (when not -1) is readable;
  // returns the followed namespaces appended to (each once, in name order), with the entries
  // the notifications carried; empty when none came. A notification is a hint: entries it
  // carried are those the log holds at their positions, but a reader that lacks the positions
  // before them, or got none, reads the log. Throws Error(kIo) when the connection is lost.
  // Does not read from `wake_fd`.
  std::vector<LogAppended> wait_for_appends(std::chrono::milliseconds timeout, int wake_fd = -1);

  // Opens the connection again (after an error), listening to what follow() asked for.
  void reconnect();

  // Whether the connection is open (false after it was lost: reconnect()).
  bool connected() const;

  // This connection's backend process id (pg_backend_pid()), for tests that terminate it.
  int backend_pid() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lattice::relay

#endif  // LATTICE_RELAY_CLUSTER_LOG_HPP
