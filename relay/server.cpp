#include "relay/server.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "crdt/error.hpp"
#if LATTICE_RELAY_CLUSTER
#include "relay/cluster_log.hpp"
#include "relay/detail/random_hex.hpp"
#endif
#include "relay/metrics.hpp"
#include "relay/token.hpp"
#include "storage/encrypted_vfs.hpp"
#include "transport/frame.hpp"
#include "transport/proxy_protocol.hpp"
#include "transport/websocket_server.hpp"

namespace lattice::relay {

namespace {

Error usage_error(const std::string& message) {
  return Error(ErrorCode::kInvalidArgument, message);
}

// Flags as `--name value` or `--name=value`; each at most once.
class FlagReader {
 public:
  FlagReader(const std::vector<std::string>& args, std::vector<std::string> with_value,
             std::vector<std::string> switches) {
    auto known = [](const std::vector<std::string>& list, const std::string& name) {
      return std::find(list.begin(), list.end(), name) != list.end();
    };
    for (std::size_t i = 0; i < args.size(); ++i) {
      const std::string& arg = args[i];
      if (arg.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), value;
      bool has_value = false;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (known(switches, name)) {
        if (has_value) throw usage_error("--" + name + " takes no value");
        value = "true";
      } else if (known(with_value, name)) {
        if (!has_value) {
          if (i + 1 >= args.size()) throw usage_error("--" + name + " needs a value");
          value = args[++i];
        }
      } else {
        throw usage_error("unknown flag --" + name);
      }
      if (!values_.emplace(name, value).second) throw usage_error("--" + name + " given twice");
    }
  }

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  std::string require(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) throw usage_error("--" + name + " is required");
    if (it->second.empty()) throw usage_error("--" + name + " is empty");
    return it->second;
  }

 private:
  std::map<std::string, std::string> values_;
};

std::uint64_t parse_count(const std::string& flag, const std::string& text, std::uint64_t min,
                          std::uint64_t max) {
  std::uint64_t value = 0;
  bool ok = !text.empty() && text.size() <= 19;
  for (char c : text) {
    if (c < '0' || c > '9') ok = false;
    if (ok) value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (!ok || value < min || value > max)
    throw usage_error("--" + flag + " must be a whole number from " + std::to_string(min) + " to " +
                      std::to_string(max) + ", not '" + text + "'");
  return value;
}

void parse_listen(const std::string& text, ServeConfig& config) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw usage_error("--listen must be HOST:PORT, not '" + text + "'");
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  config.host = host;
  config.port =
      static_cast<std::uint16_t>(parse_count("listen's port", text.substr(colon + 1), 0, 65535));
}

std::string read_file(const std::string& what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, "cannot read " + what + " '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(ErrorCode::kIo, "cannot read " + what + " '" + path + "'");
  return text.str();
}

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Raises the process's open-files limit to its hard limit and returns it (at most 2^20).
std::size_t raise_open_files_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return static_cast<std::size_t>(std::min<rlim_t>(limit.rlim_cur, rlim_t{1} << 20));
}

// A connection of the network threads as the hub sees it: its handlers run on the hub's thread
// (posted there, in the order the connection's strand called them), and its calls go straight
// to the connection, which carries them out on its strand. The frame is copied on the way.
class HubThreadConnection final : public transport::Connection {
 public:
  HubThreadConnection(std::shared_ptr<transport::Connection> inner, boost::asio::io_context& hub)
      : inner_(std::move(inner)), hub_(hub) {}

  void set_handlers(Handlers handlers) override {
    auto shared = std::make_shared<Handlers>(std::move(handlers));
    boost::asio::io_context* hub = &hub_;
    Handlers posted;
    if (shared->on_frame)
      posted.on_frame = [hub, shared](std::string_view frame) {
        boost::asio::post(*hub, [shared, frame = std::string(frame)] { shared->on_frame(frame); });
      };
    if (shared->on_close)
      posted.on_close = [hub, shared](const std::string& reason) {
        boost::asio::post(*hub, [shared, reason] { shared->on_close(reason); });
      };
    // A drain is stale when frames the hub sent since had not reached the queue yet: the hub
    // paces a catch-up by it, and would queue a round on top of the one still waiting.
    if (shared->on_drained)
      posted.on_drained = [hub, shared, weak = std::weak_ptr<transport::Connection>(inner_)] {
        boost::asio::post(*hub, [shared, weak] {
          const auto inner = weak.lock();
          if (inner && inner->unsent_frames() == 0) shared->on_drained();
        });
      };
    inner_->set_handlers(std::move(posted));
  }
  void send(std::string frame) override { inner_->send(std::move(frame)); }
  void close(const std::string& reason) override { inner_->close(reason); }
  std::string peer() const override { return inner_->peer(); }
  void authenticated() override { inner_->authenticated(); }
  std::size_t unsent_frames() const override { return inner_->unsent_frames(); }

 private:
  std::shared_ptr<transport::Connection> inner_;
  boost::asio::io_context& hub_;
};

// Runs a task on the hub's thread for a network thread's HTTP request that needs the hub
// (GET /metrics, GET /snapshot/NS), and waits for its result, at most `timeout`. Throws
// Error(kBusy) when the hub does not get to it in time (it is stopping, or busy); rethrows what
// the task throws. A task may run after a timeout: it must own what it uses (captures by value,
// or what outlives the hub's loop). When the hub shares the network's only thread, the task
// runs at once.
struct OnHubThread {
  boost::asio::io_context& hub;
  bool same_thread;

  template <class Task>
  auto operator()(Task task, std::chrono::milliseconds timeout = std::chrono::seconds(10)) const
      -> decltype(task()) {
    if (same_thread) return task();
    auto packaged = std::make_shared<std::packaged_task<decltype(task())()>>(std::move(task));
    auto result = packaged->get_future();
    boost::asio::post(hub, [packaged] { (*packaged)(); });
    if (result.wait_for(timeout) != std::future_status::ready)
      throw Error(ErrorCode::kBusy, "the relay is busy or stopping; try again");
    return result.get();
  }
};

// Wakes a thread waiting in poll() from another thread: an eventfd, readable after signal()
// until take().
class Wakeup {
 public:
  Wakeup() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0)
      throw Error(ErrorCode::kIo, std::string("cannot create an eventfd: ") + std::strerror(errno));
  }
  ~Wakeup() { ::close(fd_); }
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  void signal() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(fd_, &one, sizeof one);  // full: still readable
  }
  // Whether signal() was called since the last take().
  bool take() const {
    std::uint64_t count = 0;
    return ::read(fd_, &count, sizeof count) == static_cast<ssize_t>(sizeof count) && count > 0;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

// What a relay of a cluster last saw of its PostgreSQL, for /healthz, /metrics and the log:
// written by the follower and by every use of the log (the disk thread's appends, the reads
// before a hello), read on any thread. A change of reachability is logged once.
class ClusterStatus {
 public:
  explicit ClusterStatus(std::function<void(const std::string&)> log) : log_(std::move(log)) {}

  void reached() {
    const std::lock_guard lock(mutex_);
    if (!error_) return;
    error_.reset();
    log_("the cluster's log (PostgreSQL) is reachable again");
  }
  void lost(const std::string& why) {
    const std::lock_guard lock(mutex_);
    if (!error_)
      log_(
          "the cluster's log (PostgreSQL) is unreachable; nothing is acknowledged until it is "
          "back: " +
          why);
    error_ = why;
  }
  void relistened() {
    const std::lock_guard lock(mutex_);
    ++relistens_;
  }
  // The follower: notifications received, namespaces listened to, batches taken from
  // notifications rather than read.
  void notified(std::size_t namespaces) {
    const std::lock_guard lock(mutex_);
    notifications_ += namespaces;
  }
  void carried(std::size_t batches) {
    const std::lock_guard lock(mutex_);
    carried_ += batches;
  }
  void following(std::size_t namespaces) {
    const std::lock_guard lock(mutex_);
    followed_ = namespaces;
  }
  // The heads of the log at a sweep, against this relay's applied positions: a head behind a
  // position means the log lost what this relay applied (restored from a backup), and the
  // relay would pass over what is logged again at those positions.
  void swept(std::map<std::string, std::int64_t> heads,
             const std::map<std::string, std::int64_t>& applied, double queue_usage) {
    const std::lock_guard lock(mutex_);
    std::optional<std::string> behind;
    for (const auto& [ns, position] : applied) {
      const auto head = heads.count(ns) ? heads.at(ns) : 0;
      if (head < position) {
        behind = "the cluster's log of '" + ns + "' ends at position " + std::to_string(head) +
                 ", before this relay's " + std::to_string(position) +
                 " (restored from a backup?): start this relay on an empty data directory";
        break;
      }
    }
    if (behind && !log_behind_) log_(*behind);
    log_behind_ = std::move(behind);
    heads_ = std::move(heads);
    queue_usage_ = queue_usage;
  }

  // Pruning (keep_up_cluster): a snapshot stored, a namespace's log pruned through `position`,
  // a round done or failed (logged once until a round succeeds).
  void snapshot_stored() {
    const std::lock_guard lock(mutex_);
    ++snapshots_stored_;
  }
  void pruned(const std::string& ns, std::int64_t position) {
    const std::lock_guard lock(mutex_);
    pruned_[ns] = position;
  }
  void upkeep_done() {
    const std::lock_guard lock(mutex_);
    if (upkeep_error_) log_("pruning the cluster's log works again");
    upkeep_error_.reset();
  }
  void upkeep_failed(const std::string& why) {
    const std::lock_guard lock(mutex_);
    ++upkeep_failures_;
    if (!upkeep_error_) log_("cannot snapshot or prune the cluster's log (tried again): " + why);
    upkeep_error_ = why;
  }

  // Why the relay is degraded, if it is.
  std::optional<std::string> degraded() const {
    const std::lock_guard lock(mutex_);
    if (error_) return "degraded: the cluster's log (PostgreSQL) is unreachable: " + *error_;
    if (log_behind_) return "degraded: " + *log_behind_;
    return std::nullopt;
  }

  void render(MetricsWriter& m, const Hub& hub) const {
    const std::lock_guard lock(mutex_);
    m.gauge("lattice_relay_cluster_reachable",
            "1 while the cluster's log (PostgreSQL) answers, 0 after a failure until it does.",
            error_ ? 0 : 1);
    m.counter("lattice_relay_cluster_relistens_total",
              "LISTEN connections opened again after one was lost.", relistens_);
    m.counter("lattice_relay_cluster_notifications_total",
              "Namespaces the follower was notified of (LISTEN), counted once per wake-up.",
              notifications_);
    m.counter("lattice_relay_cluster_batches_carried_total",
              "Batches of the log the follower took from notifications (groups of under 3,900 "
              "bytes), without reading the log.",
              carried_);
    m.gauge("lattice_relay_cluster_followed_namespaces",
            "Namespaces whose appends the follower listens to: those with devices here.",
            static_cast<double>(followed_));
    m.gauge("lattice_relay_cluster_notification_queue_usage",
            "pg_notification_queue_usage() at the last sweep (0 to 1; at 1 appends fail).",
            queue_usage_);
    std::map<std::string, double> heads, applied;
    for (const auto& [ns, head] : heads_) heads[ns] = static_cast<double>(head);
    for (const auto& [ns, position] : hub.cluster_positions())
      applied[ns] = static_cast<double>(position);
    m.labeled_gauge(
        "lattice_relay_cluster_log_head",
        "The last position of the log of each namespace with devices here, at the last sweep.",
        "namespace", heads);
    m.labeled_gauge("lattice_relay_cluster_applied_position",
                    "The last position of each open namespace's log merged into this relay.",
                    "namespace", applied);
    m.counter("lattice_relay_cluster_groups_held_total",
              "Group commits the cluster's log did not take; their batches waited, "
              "unacknowledged, and were tried again.",
              hub.counters().cluster_groups_held);
    m.gauge("lattice_relay_cluster_batches_waiting",
            "Device batches waiting, unacknowledged, for the cluster's log to take them.",
            static_cast<double>(hub.batches_waiting_for_cluster()));
    m.counter("lattice_relay_cluster_snapshots_stored_total",
              "Snapshots of namespaces this relay stored in the cluster's database.",
              snapshots_stored_);
    std::map<std::string, double> pruned;
    for (const auto& [ns, position] : pruned_) pruned[ns] = static_cast<double>(position);
    m.labeled_gauge("lattice_relay_cluster_log_pruned",
                    "The last position pruned from each namespace's log, as this relay last "
                    "pruned it.",
                    "namespace", pruned);
    m.counter("lattice_relay_cluster_upkeep_failures_total",
              "Rounds of reporting, snapshotting and pruning that failed (tried again).",
              upkeep_failures_);
    m.counter("lattice_relay_cluster_hydrations_total",
              "Replicas of a namespace rebuilt here from its snapshot because the log was pruned "
              "past them.",
              hub.counters().cluster_hydrations);
  }

 private:
  std::function<void(const std::string&)> log_;
  mutable std::mutex mutex_;
  std::optional<std::string> error_;
  std::optional<std::string> log_behind_;  // swept()
  std::uint64_t relistens_ = 0;
  std::uint64_t notifications_ = 0;
  std::uint64_t carried_ = 0;
  std::size_t followed_ = 0;
  double queue_usage_ = 0;
  std::map<std::string, std::int64_t> heads_;
  std::uint64_t snapshots_stored_ = 0;
  std::uint64_t upkeep_failures_ = 0;
  std::map<std::string, std::int64_t> pruned_;
  std::optional<std::string> upkeep_error_;
};

std::string render_metrics(const Hub& hub, const transport::WebSocketServer& server,
                           const ClusterStatus* cluster) {
  const HubCounters& hc = hub.counters();
  const transport::WebSocketServerCounters& sc = server.counters();
  MetricsWriter m;
  m.gauge("lattice_relay_connections", "Open device connections (WebSocket, handed to the hub).",
          static_cast<double>(hub.connection_count()));
  m.gauge("lattice_relay_namespaces", "Namespaces whose replica is open.",
          static_cast<double>(hub.namespace_count()));
  std::map<std::string, double> by_version;
  for (const auto& [version, devices] : hub.devices_by_schema_version())
    by_version[std::to_string(version)] = static_cast<double>(devices);
  m.labeled_gauge("lattice_relay_devices",
                  "Connected devices by the schema version (last migration) they run.",
                  "schema_version", by_version);
  m.counter("lattice_relay_schema_changes_total",
            "Schemas a namespace took from a device with an admin token (its first included).",
            hc.schema_changes);
  m.counter("lattice_relay_connections_accepted_total", "WebSocket connections accepted.",
            hc.connections_accepted);
  m.counter("lattice_relay_changes_merged_total",
            "Column changes from devices that won and changed a namespace's replica.",
            hc.changes_merged);
  m.counter("lattice_relay_changes_sent_total", "Column changes sent to devices.", hc.changes_sent);
  m.counter("lattice_relay_rekeys_total",
            "Devices told to take a new site id because another copy of their replica file "
            "wrote under it.",
            hc.rekeys);
  m.counter("lattice_relay_pieced_batches_in_total",
            "Device batches (transactions too large for one frame) that arrived in pieces.",
            hc.pieced_batches_in);
  m.counter("lattice_relay_pieced_changesets_out_total",
            "Changesets too large for one frame sent to devices in pieces.",
            hc.pieced_changesets_out);
  m.counter("lattice_relay_following_deltas_total",
            "Deltas sent with only the version vector entries that moved since the last one.",
            hc.following_deltas);
  m.counter("lattice_relay_bytes_in_total", "Bytes of frames received from devices.", hc.bytes_in);
  m.counter("lattice_relay_bytes_out_total", "Bytes of frames queued for devices.", hc.bytes_out);
  std::map<std::string, std::uint64_t> rejected = hc.rejected;
  for (const auto& [reason, count] : sc.rejected) rejected[reason] += count;
  m.labeled_counter("lattice_relay_rejected_frames_total",
                    "Frames answered with an error frame (then a close), by error code name.",
                    "reason", rejected);
  m.counter("lattice_relay_slow_consumers_total",
            "Connections dropped because their outbound queue overflowed.", sc.slow_consumers);
  m.counter("lattice_relay_handshake_failures_total",
            "TLS or WebSocket handshakes that failed or timed out.", sc.handshake_failures);
  m.counter("lattice_relay_http_requests_total", "Plain HTTP requests (healthz, metrics, other).",
            sc.http_requests);
  m.gauge("lattice_relay_unauthenticated_connections",
          "Connections not yet authenticated (TCP, TLS, HTTP or awaiting the hello).",
          static_cast<double>(server.unauthenticated_connections()));
  m.counter("lattice_relay_refused_at_accept_total",
            "Connections closed at accept: too many unauthenticated from their address, or the "
            "relay's connection limit.",
            sc.refused_at_accept);
  m.counter("lattice_relay_evicted_unauthenticated_total",
            "Unauthenticated connections closed to make room for newer ones.",
            sc.evicted_unauthenticated);
  m.counter("lattice_relay_hello_timeouts_total",
            "WebSocket connections closed for sending no accepted hello in time.",
            sc.hello_timeouts);
  m.counter("lattice_relay_proxy_header_failures_total",
            "Connections from a --proxy-protocol-from proxy closed for a missing, malformed or "
            "late PROXY header.",
            sc.proxy_header_failures);
  m.counter("lattice_relay_group_commits_total",
            "Commits of merged changes frames (each frame a namespace received meanwhile in "
            "one transaction and one disk sync).",
            hc.group_commits);
  m.counter("lattice_relay_grouped_batches_total", "Changes frames merged by those commits.",
            hc.grouped_batches);
  m.counter("lattice_relay_cluster_batches_applied_total",
            "Batches of the cluster's log (--cluster-db) taken into this relay's replicas.",
            hc.cluster_batches_applied);
  m.counter("lattice_relay_cluster_batches_skipped_total",
            "Of those, batches this relay could not read (bytes that do not decode, a value of "
            "another type than its column's) and passed over.",
            hc.cluster_batches_skipped);
  m.counter("lattice_relay_snapshots_written_total",
            "Namespace snapshots written for GET /snapshot/NAMESPACE (at most one per namespace "
            "per --snapshot-max-age).",
            hc.snapshots_written);
  m.counter("lattice_relay_snapshots_sent_total", "Snapshot downloads completed, whole or resumed.",
            sc.snapshots_sent);
  m.counter("lattice_relay_snapshot_bytes_sent_total", "Snapshot bytes sent.",
            sc.snapshot_bytes_sent);
  m.histogram("lattice_relay_merge_seconds",
              "Time of one group commit: merging the changes frames a namespace received "
              "meanwhile into its replica, durable commit included.",
              LatencyHistogram::kBounds, hc.merge_seconds.counts, hc.merge_seconds.sum);
  if (cluster) cluster->render(m, hub);
  return m.text();
}

#if LATTICE_RELAY_CLUSTER
// Batches of the cluster's log read (and merged) at once.
constexpr std::size_t kClusterReadBatches = 2000;
// Bytes of batches appended to the cluster's log in one statement, at most (plus one batch).
constexpr std::size_t kClusterAppendBytes = 64u << 20;

// A connection to the cluster's log that opens again at the next use after a failure. One
// caller at a time: a group's commit runs on the disk thread, or on the hub's when it settles
// the group first (CommitJob).
class ClusterConnection {
 public:
  // `name`: the connection's application_name in pg_stat_activity.
  ClusterConnection(std::string conninfo, std::string name, ClusterStatus& status)
      : conninfo_(std::move(conninfo)), name_(std::move(name)), status_(status) {}

  // Runs `use` with the log, connecting first if needed; after an error the connection is
  // dropped (the next call reconnects), the status says PostgreSQL is unreachable, and the
  // error goes on.
  template <class Use>
  auto with(Use use) -> decltype(use(std::declval<ClusterLog&>())) {
    const std::lock_guard lock(mutex_);
    try {
      if (!log_) log_ = std::make_unique<ClusterLog>(conninfo_, name_);
      auto result = use(*log_);
      status_.reached();
      return result;
    } catch (const std::exception& e) {
      log_.reset();
      status_.lost(e.what());
      throw;
    }
  }

 private:
  std::string conninfo_, name_;
  ClusterStatus& status_;
  std::mutex mutex_;
  std::unique_ptr<ClusterLog> log_;
};

std::vector<ClusterBatch> cluster_batches(std::vector<LogEntry> entries) {
  std::vector<ClusterBatch> out;
  out.reserve(entries.size());
  for (LogEntry& e : entries)
    out.push_back(
        ClusterBatch{e.position, e.site, e.first_seq, std::move(e.batch), std::move(e.origin_log)});
  return out;
}

// A relay of a cluster (docs/cluster.md): batches are appended to the log on the disk thread,
// before their commit; the log is read on the hub's thread before a hello is answered.
void join_cluster(HubOptions& hub_options, const std::string& conninfo, ClusterStatus& status,
                  const Wakeup& follower) {
  auto append_connection =
      std::make_shared<ClusterConnection>(conninfo, "lattice-relay append", status);
  auto read_connection =
      std::make_shared<ClusterConnection>(conninfo, "lattice-relay read", status);
  read_connection->with([](ClusterLog&) { return 0; });  // PostgreSQL reachable at start
  hub_options.log_to_cluster = [append_connection](const std::string& ns,
                                                   const std::vector<ClusterBatch>& batches) {
    // One statement for the group: one commit (one sync of PostgreSQL's WAL) however many
    // batches it merged, as the relay's own file has; several for a group of more than
    // kClusterAppendBytes, far below PostgreSQL's limit of 1 GB for one value (a group that
    // fails part-way is tried again whole, and what was logged keeps its positions).
    append_connection->with([&](ClusterLog& log) {
      std::vector<LogEntry> entries;
      std::size_t bytes = 0;
      for (std::size_t i = 0; i < batches.size(); ++i) {
        const ClusterBatch& b = batches[i];
        entries.push_back(LogEntry{0, b.site, b.first_seq, b.bytes, b.origin_log});
        bytes += b.bytes.size();
        if (bytes >= kClusterAppendBytes || i + 1 == batches.size()) {
          log.append_all(ns, entries);
          entries.clear();
          bytes = 0;
        }
      }
      return 0;
    });
  };
  hub_options.read_cluster = [read_connection](const std::string& ns, std::int64_t after) {
    return read_connection->with([&](ClusterLog& log) {
      LogRead read = log.read(ns, after, kClusterReadBatches);
      return ClusterRead{cluster_batches(std::move(read.entries)), read.pruned};
    });
  };
  // The follower listens to a namespace's appends from its first device on, at once.
  hub_options.first_device = [&follower](const std::string&) { follower.signal(); };
  hub_options.fetch_cluster_snapshot = [read_connection](const std::string& ns,
                                                         const std::string& path) {
    return read_connection->with([&](ClusterLog& log) -> std::optional<ClusterSnapshot> {
      const auto snapshot = log.fetch_snapshot(ns, path);
      if (!snapshot) return std::nullopt;
      return ClusterSnapshot{snapshot->position, snapshot->schema_version, snapshot->manifest};
    });
  };
}

// How a relay of a cluster takes part in pruning its log (docs/cluster.md, "Pruning").
struct ClusterUpkeep {
  std::string relay;  // this process's name in lattice_relay_positions
  std::int64_t snapshot_every = 10'000;
  std::chrono::seconds grace{600};
  std::string snapshot_dir;  // where a snapshot is written before it is stored
};

// Every so often (a quarter of the grace, at most 10 s): reports the positions this relay
// applied in the namespaces with devices here, stores a snapshot of those whose log grew by
// `snapshot_every` since the newest, and prunes their logs. A failure is logged and tried again
// at the next round; it does not stop the follower.
void keep_up_cluster(ClusterLog& log, Hub& hub, const OnHubThread& hub_call,
                     const std::atomic<bool>& stop, ClusterStatus& status,
                     const ClusterUpkeep& upkeep,
                     const std::map<std::string, std::int64_t>& positions) {
  log.report_positions(upkeep.relay, positions);
  std::vector<std::string> names;
  for (const auto& entry : positions) names.push_back(entry.first);
  const auto snapshots = log.snapshot_positions(names);
  for (const auto& [ns, position] : positions) {
    if (stop) return;
    const auto newest = snapshots.count(ns) ? snapshots.at(ns) : 0;
    bool stored = false;
    if (position - newest >= upkeep.snapshot_every) {
      const std::string path = (std::filesystem::path(upkeep.snapshot_dir) /
                                (ns + ".cluster-upload." + upkeep.relay + ".snapshot"))
                                   .string();
      std::error_code ec;
      std::filesystem::create_directories(upkeep.snapshot_dir, ec);
      std::filesystem::remove(path, ec);
      try {
        const auto snapshot = hub_call(
            [&hub, &stop, ns = ns, path]() -> std::optional<ClusterSnapshot> {
              if (stop) return std::nullopt;
              return hub.cluster_snapshot(ns, path);
            },
            std::chrono::minutes(10));
        if (snapshot)
          stored = log.put_snapshot(
              ns, LogSnapshot{snapshot->position, snapshot->schema_version, snapshot->manifest},
              path);
      } catch (...) {
        std::filesystem::remove(path, ec);
        throw;
      }
      std::filesystem::remove(path, ec);
      if (stored) status.snapshot_stored();
    }
    if (stored || newest > 0) status.pruned(ns, log.prune(ns, upkeep.grace));
  }
}

// Entries of `ns` a notification carried: those after `position` are handed to the hub as a
// read of the log would be, when they continue from it. Returns whether they took the
// namespace to their last position (or there was nothing to take); false when they do not
// start right after `position` (a notification lost, or a read still to do): the caller reads.
bool apply_carried(const std::string& ns, std::vector<LogEntry> entries, std::int64_t& position,
                   Hub& hub, const OnHubThread& hub_call, const std::atomic<bool>& stop,
                   ClusterStatus& status) {
  std::erase_if(entries, [position](const LogEntry& e) { return e.position <= position; });
  if (entries.empty()) return true;
  if (entries.front().position != position + 1) return false;
  const std::int64_t last = entries.back().position;
  const std::size_t count = entries.size();
  const auto applied = hub_call(
      [&hub, &stop, ns, batches = cluster_batches(std::move(entries))] {
        return stop ? std::nullopt : hub.apply_from_cluster(ns, batches);
      },
      std::chrono::minutes(10));
  if (!applied) return true;  // not open here any more: nothing to read either
  status.carried(count);
  position = std::max(position, *applied);
  return position >= last;
}

// The follower, until `stop`: woken by NOTIFY, and every second whatever came, it reads what
// other relays appended to the namespaces with devices here and hands it to the hub, on its
// thread; what a notification carried (a small group) it hands over without reading it. It
// listens only to those namespaces (ClusterLog::follow), from the moment one gains its first
// device (`wakeup`, signalled by the hub) until a sweep finds it without devices: a namespace
// without devices here costs nothing, and a hello reads the log first.
// The sweep reads the heads of those namespaces (and the notification queue's usage, for
// /metrics) and reads the log only of those behind. After a failure it reconnects, 100 ms
// later, then at most a second apart.
void follow_cluster(const std::string& conninfo, Hub& hub, boost::asio::io_context& io,
                    const std::atomic<bool>& stop, ClusterStatus& status,
                    const ClusterUpkeep& upkeep, const Wakeup& wakeup) {
  const OnHubThread hub_call{io, false};
  std::unique_ptr<ClusterLog> log;
  std::map<std::string, std::int64_t> positions;  // the namespaces followed, and where
  bool connected_before = false;
  auto last_sweep = std::chrono::steady_clock::now() - std::chrono::hours(1);
  auto last_upkeep = std::chrono::steady_clock::now();
  const auto upkeep_every = std::clamp<std::chrono::milliseconds>(
      upkeep.grace / 4, std::chrono::milliseconds(250), std::chrono::seconds(10));
  std::chrono::milliseconds backoff{0};
  while (!stop) {
    try {
      if (!log) {
        log = std::make_unique<ClusterLog>(conninfo, "lattice-relay listen");
        if (connected_before) status.relistened();
        connected_before = true;
        last_sweep -= std::chrono::hours(1);  // what came while not listening
      }
      std::set<std::string> woken;
      std::map<std::string, std::vector<LogEntry>> carried;
      for (auto& appended : log->wait_for_appends(std::chrono::milliseconds(250), wakeup.fd())) {
        woken.insert(appended.ns);
        if (!appended.entries.empty()) carried[appended.ns] = std::move(appended.entries);
      }
      status.notified(woken.size());
      const bool joined = wakeup.take();
      const bool sweep = std::chrono::steady_clock::now() - last_sweep > std::chrono::seconds(1);
      if (woken.empty() && !sweep && !joined) continue;
      std::map<std::string, std::int64_t> heads;
      if (sweep || joined) {
        // Which namespaces have devices here, and the positions they applied. Between these,
        // a notification is followed from the position the last read reached, without a
        // round trip through the hub's thread: one thread to wake less before a delivery.
        positions = hub_call([&hub, &stop] {
          return stop ? std::map<std::string, std::int64_t>{}
                      : hub.cluster_positions(/*with_devices_only=*/true);
        });
        std::set<std::string> names;
        for (const auto& entry : positions) names.insert(entry.first);
        // What was appended to a namespace before its LISTEN took effect: read once.
        for (auto& ns : log->follow(names)) {
          carried.erase(ns);
          woken.insert(std::move(ns));
        }
        status.following(log->followed());
        if (sweep) {
          last_sweep = std::chrono::steady_clock::now();
          heads = log->heads({names.begin(), names.end()});
          status.swept(heads, positions, log->notification_queue_usage());
        }
      }
      for (auto& [ns, position] : positions) {
        const auto notified = carried.find(ns);
        const bool taken =
            notified != carried.end() &&
            apply_carried(ns, std::move(notified->second), position, hub, hub_call, stop, status);
        if (sweep ? heads[ns] <= position : taken || !woken.count(ns)) continue;
        for (;;) {
          LogRead read = log->read(ns, position, kClusterReadBatches);
          if ((read.entries.empty() && read.pruned <= position) || stop) break;
          const auto applied = hub_call(
              [&hub, &stop, ns = ns, pruned = read.pruned,
               batches = cluster_batches(std::move(read.entries))] {
                return stop ? std::nullopt : hub.apply_from_cluster(ns, batches, pruned);
              },
              std::chrono::minutes(10));
          if (!applied || *applied == position) break;
          position = *applied;
        }
      }
      if (std::chrono::steady_clock::now() - last_upkeep >= upkeep_every) {
        last_upkeep = std::chrono::steady_clock::now();
        try {
          keep_up_cluster(*log, hub, hub_call, stop, status, upkeep, positions);
          status.upkeep_done();
        } catch (const std::exception& e) {
          if (!log->connected()) throw;  // PostgreSQL itself: reconnect as for any read
          status.upkeep_failed(e.what());
        }
      }
      status.reached();
      backoff = {};
    } catch (const std::exception& e) {
      status.lost(e.what());
      log.reset();
      backoff =
          std::clamp(backoff * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(1000));
      for (auto waited = std::chrono::milliseconds(0); waited < backoff && !stop;
           waited += std::chrono::milliseconds(10))
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}
#endif  // LATTICE_RELAY_CLUSTER

// The data directory's lock (flock on <data>/lattice-relay.lock), held by a serving relay and by
// a key rotation for as long as they run: two relays on one directory would write the same
// files, and a rotation under a running relay would leave it reading pages under a key it no
// longer has. Released with the process, however it ends.
class DataDirLock {
 public:
  explicit DataDirLock(const std::string& data_dir) {
    const std::string path = (std::filesystem::path(data_dir) / "lattice-relay.lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) throw Error(ErrorCode::kIo, "cannot open '" + path + "': " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      ::close(fd_);
      if (error == EWOULDBLOCK)
        throw Error(ErrorCode::kBusy,
                    "another lattice-relay (serving, or rotating its data key) "
                    "is using the data directory '" +
                        data_dir + "'");
      throw Error(ErrorCode::kIo, "cannot lock '" + path + "': " + std::strerror(error));
    }
  }
  ~DataDirLock() { ::close(fd_); }
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  int fd_ = -1;
};

// The namespace files of a data directory (`*.db`; not the empty ones, created and never
// written), in name order. Throws Error(kIo) when the directory cannot be listed.
std::vector<std::string> namespace_files(const std::string& data_dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir, ec)) {
    std::error_code entry_error;
    if (entry.is_regular_file(entry_error) && entry.path().extension() == ".db" &&
        entry.file_size(entry_error) != 0 && !entry_error)
      files.push_back(entry.path().string());
  }
  if (ec) throw Error(ErrorCode::kIo, "cannot list '" + data_dir + "': " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Refuses to start on namespace files the data key does not open (written under another key,
// plain files with a key, encrypted ones without): the relay would otherwise fail every device
// of those namespaces. Reads one page of each file.
void check_namespace_files(const std::string& data_dir,
                           const std::optional<storage::FileKey>& key) {
  for (const std::string& path : namespace_files(data_dir)) {
    if (key && !storage::file_opens_under(path, *key))
      throw Error(ErrorCode::kKey, "namespace file '" + path +
                                       "' is not encrypted under the key of --data-key-file "
                                       "(another key, or a plain file)");
    if (!key) {
      char header[16] = {};
      std::ifstream(path, std::ios::binary).read(header, sizeof header);
      if (std::memcmp(header, "SQLite format 3", sizeof header) != 0)
        throw Error(ErrorCode::kKey, "namespace file '" + path +
                                         "' is not a plain SQLite file: an encrypted one needs "
                                         "--data-key-file");
    }
  }
}

}  // namespace

ServeConfig parse_serve_args(const std::vector<std::string>& args) {
  const FlagReader flags(args,
                         {"listen",
                          "data",
                          "key-file",
                          "data-key-file",
                          "cluster-db",
                          "proxy-protocol-from",
                          "cluster-snapshot-every",
                          "cluster-prune-grace",
                          "tls-cert",
                          "tls-key",
                          "schema",
                          "schema-dir",
                          "max-frame-bytes",
                          "max-batch-changes",
                          "max-transaction-bytes",
                          "max-changes-per-second",
                          "max-connections-per-token",
                          "max-queue-bytes",
                          "handshake-timeout",
                          "shutdown-grace",
                          "max-hello-bytes",
                          "hello-timeout",
                          "max-unauthenticated",
                          "max-unauthenticated-per-source",
                          "max-bytes-per-second",
                          "max-digests-per-minute",
                          "max-hellos-per-minute",
                          "max-catch-up-bytes-per-second",
                          "max-connects-per-source-per-second",
                          "snapshot-max-age",
                          "threads"},
                         {"insecure"});
  ServeConfig config;
  parse_listen(flags.require("listen"), config);
  config.data_dir = flags.require("data");
  config.key_file = flags.require("key-file");
  config.data_key_file = flags.get("data-key-file");
  if (flags.has("data-key-file") && config.data_key_file.empty())
    throw usage_error("--data-key-file is empty");
  if (flags.has("proxy-protocol-from")) {
    std::stringstream list(flags.get("proxy-protocol-from"));
    for (std::string entry; std::getline(list, entry, ',');)
      config.proxy_protocol_from.push_back(entry);
    try {
      if (config.proxy_protocol_from.empty()) throw usage_error("it is empty");
      transport::proxy_protocol::TrustedProxies check(config.proxy_protocol_from);
    } catch (const Error& e) {
      throw usage_error(std::string("--proxy-protocol-from: ") + e.what());
    }
  }
  config.cluster_db = flags.get("cluster-db");
  if (flags.has("cluster-db") && config.cluster_db.empty())
    throw usage_error("--cluster-db is empty");
  if (flags.has("cluster-snapshot-every"))
    config.cluster_snapshot_every = static_cast<std::int64_t>(
        parse_count("cluster-snapshot-every", flags.get("cluster-snapshot-every"), 1, 1ull << 40));
  // A duration flag in seconds (positive), at most `max_text`; errors name the flag.
  const auto duration = [&flags](const char* flag, int& into, std::int64_t max_seconds,
                                 const char* max_text) {
    if (!flags.has(flag)) return;
    std::int64_t seconds = 0;
    try {
      seconds = parse_duration(flags.get(flag));
    } catch (const Error& e) {
      throw usage_error(std::string("--") + flag + ": " + e.what());
    }
    if (seconds > max_seconds) throw usage_error(std::string("--") + flag + " is over " + max_text);
    into = static_cast<int>(seconds);
  };
  constexpr std::int64_t kHour = 3600, kThirtyDays = 30 * 86400;
  duration("cluster-prune-grace", config.cluster_prune_grace_seconds, kThirtyDays, "30d");
  if (config.cluster_db.empty() &&
      (flags.has("cluster-snapshot-every") || flags.has("cluster-prune-grace")))
    throw usage_error("--cluster-snapshot-every and --cluster-prune-grace need --cluster-db");
  config.insecure = flags.has("insecure");
  config.tls_cert_file = flags.get("tls-cert");
  config.tls_key_file = flags.get("tls-key");
  if (config.insecure && (flags.has("tls-cert") || flags.has("tls-key")))
    throw usage_error("--insecure and --tls-cert/--tls-key exclude each other");
  if (!config.insecure && (config.tls_cert_file.empty() || config.tls_key_file.empty()))
    throw usage_error(
        "TLS needs --tls-cert FILE and --tls-key FILE (or --insecure for plain ws://)");
  config.schema_file = flags.get("schema");
  if (flags.has("schema") && config.schema_file.empty()) throw usage_error("--schema is empty");
  config.schema_dir = flags.get("schema-dir");
  if (flags.has("schema-dir") && config.schema_dir.empty())
    throw usage_error("--schema-dir is empty");

  constexpr std::uint64_t kMaxFrame = 1ull << 30;
  if (flags.has("max-frame-bytes"))
    config.limits.max_frame_bytes =
        parse_count("max-frame-bytes", flags.get("max-frame-bytes"), 64, kMaxFrame);
  if (flags.has("max-batch-changes"))
    config.limits.max_batch_changes =
        parse_count("max-batch-changes", flags.get("max-batch-changes"), 1, 1ull << 32);
  if (flags.has("max-transaction-bytes"))
    config.limits.max_transaction_bytes =
        parse_count("max-transaction-bytes", flags.get("max-transaction-bytes"), 1024, 1ull << 34);
  if (flags.has("max-changes-per-second"))
    config.limits.max_changes_per_second = static_cast<double>(
        parse_count("max-changes-per-second", flags.get("max-changes-per-second"), 1, 1ull << 40));
  if (flags.has("max-connections-per-token"))
    config.limits.max_connections_per_token = parse_count(
        "max-connections-per-token", flags.get("max-connections-per-token"), 1, 1u << 20);
  if (flags.has("max-queue-bytes"))
    config.max_queue_bytes =
        parse_count("max-queue-bytes", flags.get("max-queue-bytes"), 1024, 1ull << 34);
  duration("handshake-timeout", config.handshake_timeout_seconds, kHour, "1h");
  duration("shutdown-grace", config.shutdown_grace_seconds, kHour, "1h");
  duration("snapshot-max-age", config.snapshot_max_age_seconds, kThirtyDays, "30d");
  auto rate = [&](const char* flag, double& into) {
    if (flags.has(flag))
      into = static_cast<double>(parse_count(flag, flags.get(flag), 1, 1ull << 40));
  };
  rate("max-bytes-per-second", config.limits.max_bytes_per_second);
  rate("max-digests-per-minute", config.limits.max_digests_per_minute);
  rate("max-hellos-per-minute", config.limits.max_hellos_per_minute);
  rate("max-catch-up-bytes-per-second", config.limits.max_catch_up_bytes_per_second);
  rate("max-connects-per-source-per-second", config.max_connects_per_source_per_second);
  if (flags.has("max-hello-bytes"))
    config.limits.max_hello_bytes = parse_count("max-hello-bytes", flags.get("max-hello-bytes"),
                                                1024, config.limits.max_frame_bytes);
  duration("hello-timeout", config.hello_timeout_seconds, kHour, "1h");
  if (flags.has("threads"))
    config.threads = static_cast<unsigned>(parse_count("threads", flags.get("threads"), 1, 256));
  if (flags.has("max-unauthenticated"))
    config.max_unauthenticated =
        parse_count("max-unauthenticated", flags.get("max-unauthenticated"), 1, 1u << 20);
  if (flags.has("max-unauthenticated-per-source"))
    config.max_unauthenticated_per_source = parse_count(
        "max-unauthenticated-per-source", flags.get("max-unauthenticated-per-source"), 1, 1u << 20);
  return config;
}

TokenConfig parse_token_args(const std::vector<std::string>& args) {
  const FlagReader flags(args, {"key-file", "ns", "rights", "ttl", "subject"}, {});
  TokenConfig config;
  config.key_file = flags.require("key-file");
  config.ns = flags.require("ns");
  config.rights = flags.require("rights");
  config.ttl = flags.require("ttl");
  if (flags.has("subject")) config.subject = flags.require("subject");
  // A token for a name the relay always refuses is useless: refused here, at minting.
  if (!transport::valid_namespace(config.ns))
    throw usage_error("--ns '" + config.ns +
                      "' is not a namespace name: 1 to 64 letters, digits, '_' or '-'");
  if (config.subject.size() > 128 ||
      std::any_of(config.subject.begin(), config.subject.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    throw usage_error("--subject must be at most 128 characters without control characters");
  parse_rights(config.rights);  // flag errors before touching the key file
  parse_duration(config.ttl);
  return config;
}

RotateDataKeyConfig parse_rotate_data_key_args(const std::vector<std::string>& args) {
  const FlagReader flags(args, {"data", "data-key-file", "new-data-key-file"}, {});
  RotateDataKeyConfig config;
  config.data_dir = flags.require("data");
  config.data_key_file = flags.require("data-key-file");
  config.new_data_key_file = flags.require("new-data-key-file");
  return config;
}

int rotate_data_key(const RotateDataKeyConfig& config, std::ostream& out) {
  if (!std::filesystem::is_directory(config.data_dir))
    throw Error(ErrorCode::kIo, "'" + config.data_dir + "' is not a directory");
  const storage::FileKey old_key = storage::read_file_key(config.data_key_file);
  const storage::FileKey new_key = storage::read_file_key(config.new_data_key_file);
  const DataDirLock lock(config.data_dir);
  int rotated = 0;
  for (const std::string& path : namespace_files(config.data_dir)) {
    if (storage::file_opens_under(path, new_key)) {
      out << "already under the new key: " << path << "\n";
      continue;
    }
    if (!storage::file_opens_under(path, old_key))
      throw Error(ErrorCode::kKey, "namespace file '" + path +
                                       "' is encrypted under neither --data-key-file nor "
                                       "--new-data-key-file (or is a plain file); files after "
                                       "it in name order are left as they are");
    storage::ReplicaOptions options;
    options.encryption_key = old_key;
    storage::Replica::open(path, options)->rotate_key(new_key);
    out << "rotated: " << path << "\n" << std::flush;
    ++rotated;
  }
  // Snapshots under the old key: the relay writes new ones when devices ask.
  const auto snapshots = std::filesystem::path(config.data_dir) / "snapshots";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(snapshots, ec))
    if (entry.is_regular_file(ec)) std::filesystem::remove(entry.path(), ec);
  return rotated;
}

std::string make_token(const TokenConfig& config, std::int64_t now_unix) {
  const KeyRing ring = KeyRing::load(config.key_file);
  TokenClaims claims;
  claims.subject = config.subject;
  claims.ns = config.ns;
  claims.rights = parse_rights(config.rights);
  claims.issued_at = now_unix;
  claims.expires_at = now_unix + parse_duration(config.ttl);
  return ring.sign(claims);
}

int serve(const ServeConfig& config, std::ostream& out, std::ostream& log) {
  const KeyRing ring = KeyRing::load(config.key_file);
  const std::string schema_sql =
      config.schema_file.empty() ? "" : read_file("schema file", config.schema_file);
  // Every file the relay creates (replicas, their WAL and shared-memory files) is its user's
  // alone: 0600, in a 0700 data directory, whatever umask it was started with.
  ::umask(077);
  std::error_code fs_error;
  std::filesystem::create_directories(config.data_dir, fs_error);
  if (fs_error || !std::filesystem::is_directory(config.data_dir))
    throw Error(ErrorCode::kIo, "cannot create the data directory '" + config.data_dir +
                                    "': " + (fs_error ? fs_error.message() : "not a directory"));
  std::filesystem::permissions(config.data_dir, std::filesystem::perms::owner_all, fs_error);
  if (fs_error)
    throw Error(ErrorCode::kIo, "cannot make the data directory '" + config.data_dir +
                                    "' private (0700): " + fs_error.message());

  const DataDirLock data_dir_lock(config.data_dir);
  std::optional<storage::FileKey> data_key;
  if (!config.data_key_file.empty()) data_key = storage::read_file_key(config.data_key_file);
  check_namespace_files(config.data_dir, data_key);

  // Log lines come from the hub's thread and from every network thread.
  std::mutex log_mutex;
  auto write_log = [&log, &log_mutex](const std::string& line) {
    const std::lock_guard lock(log_mutex);
    log << "lattice-relay: " << line << std::endl;
  };

  HubOptions hub_options;
  hub_options.data_dir = config.data_dir;
  hub_options.replica_options.encryption_key = data_key;
  hub_options.schema_sql = schema_sql;
  hub_options.schema_dir = config.schema_dir;
  hub_options.limits = config.limits;
  // A catch-up round must fit in the connection's queue with room for the frames around it.
  hub_options.limits.catch_up_round_bytes =
      std::min(hub_options.limits.catch_up_round_bytes, config.max_queue_bytes / 4);
  const Authenticator hub_authenticate = [ring](std::string_view token) {
    const TokenClaims claims = ring.verify(token, unix_now());
    return Grant{claims.subject, claims.ns, claims.rights, claims.expires_at};
  };
  hub_options.authenticate = hub_authenticate;
  hub_options.unix_now = unix_now;
  hub_options.now_seconds = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  // Merged changes are on disk, power loss included, before the ack that says so. A relay of a
  // cluster acknowledges once PostgreSQL has committed instead: its file is a cache the log
  // rebuilds (a transaction lost with the power rolls back with its applied position, and the
  // next hello reads the log again), so its commits need not wait for the disk.
  hub_options.replica_options.synchronous = config.cluster_db.empty() ? "FULL" : "NORMAL";

  // The connections (TLS, WebSocket framing, socket reads and writes) run on `network`. With
  // one thread, that is the hub's `io`, run by this thread, as everything else: no hand-offs.
  // With several, `network` has threads of its own, each connection on a strand, and the hub
  // keeps this one: merges, fan-out, and every handler of a connection, posted here. Both are
  // declared before the hub, which holds connections to the end: their sockets belong to them.
  const unsigned threads = std::max(1u, config.threads);
  const bool one_thread = threads == 1;
  boost::asio::io_context network_threads_context(static_cast<int>(threads));
  boost::asio::io_context io(1);
  boost::asio::io_context& network = one_thread ? io : network_threads_context;
  const OnHubThread on_hub_thread{io, one_thread};
  // Group commit: the changes frames read before the posted task runs share its commit.
  hub_options.defer = [&io](std::function<void()> task) { boost::asio::post(io, std::move(task)); };
  // The commits' disk syncs run on their own thread, in order, so that the network is never
  // held up by the disk. Declared before the hub: the hub waits for a commit it started.
  boost::asio::thread_pool disk(1);
  hub_options.offload = [&disk](std::function<void()> task) {
    boost::asio::post(disk, std::move(task));
  };
  // A group the cluster's log did not take is tried again on a timer of the hub's thread.
  hub_options.defer_for = [&io](std::chrono::milliseconds delay, std::function<void()> task) {
    auto timer = std::make_shared<boost::asio::steady_timer>(io, delay);
    timer->async_wait([timer, task = std::move(task)](const boost::system::error_code& ec) {
      if (!ec) task();
    });
  };
  std::optional<ClusterStatus> cluster_status;
  std::optional<Wakeup> follower_wakeup;
  if (!config.cluster_db.empty()) {
#if LATTICE_RELAY_CLUSTER
    cluster_status.emplace(write_log);
    follower_wakeup.emplace();
    join_cluster(hub_options, config.cluster_db, *cluster_status, *follower_wakeup);
#else
    throw Error(ErrorCode::kInvalidArgument,
                "--cluster-db: this lattice-relay was built without libpq (a cross build) and "
                "cannot join a cluster");
#endif
  }
  Hub hub(std::move(hub_options));

  transport::WebSocketServerOptions server_options;
  server_options.host = config.host;
  server_options.port = config.port;
  server_options.tls_cert_file = config.tls_cert_file;
  server_options.tls_key_file = config.tls_key_file;
  server_options.insecure = config.insecure;
  server_options.max_frame_bytes = config.limits.max_frame_bytes;
  server_options.max_hello_bytes = config.limits.max_hello_bytes;
  server_options.max_outbound_bytes = config.max_queue_bytes;
  server_options.hello_timeout_seconds = config.hello_timeout_seconds;
  server_options.max_unauthenticated_per_source = config.max_unauthenticated_per_source;
  server_options.max_connects_per_source_per_second = config.max_connects_per_source_per_second;
  server_options.proxy_protocol_from = config.proxy_protocol_from;
  // The relay's own files (replicas, three per open namespace, the key and schema files) keep
  // a reserve of the open-files limit; of the rest, unauthenticated connections get a quarter
  // at most, so that devices still get in while an attacker holds its share.
  const std::size_t open_files = raise_open_files_limit();
  const std::size_t reserve = std::max<std::size_t>(64, open_files / 8);
  server_options.max_connections = open_files > reserve + 16 ? open_files - reserve : 16;
  server_options.max_unauthenticated = std::max<std::size_t>(
      4, std::min(config.max_unauthenticated, server_options.max_connections / 4));
  write_log("open files limit " + std::to_string(open_files) + ": at most " +
            std::to_string(server_options.max_connections) + " connections, " +
            std::to_string(server_options.max_unauthenticated) + " of them unauthenticated");
  server_options.handshake_timeout_seconds = config.handshake_timeout_seconds;
  server_options.threads = threads;
  server_options.on_connection =
      [&hub, &io, one_thread](std::shared_ptr<transport::Connection> connection, std::string ns) {
        if (one_thread) return hub.accept(std::move(connection), ns);
        auto on_hub = std::make_shared<HubThreadConnection>(std::move(connection), io);
        boost::asio::post(io, [&hub, on_hub = std::move(on_hub), ns = std::move(ns)]() mutable {
          hub.accept(std::move(on_hub), ns);
        });
      };
  // GET /snapshot/NAMESPACE: the token of a device that may read the namespace. On a network
  // thread; the token is checked there, the hub's part runs on the hub's thread.
  server_options.snapshot = [&hub, on_hub_thread, &hub_authenticate, data_key,
                             max_age = config.snapshot_max_age_seconds](const std::string& ns,
                                                                        const std::string& token) {
    using transport::SnapshotAnswer;
    if (token.empty())
      return SnapshotAnswer{401, "", "", "a snapshot needs the header Authorization: Bearer TOKEN",
                            {},  {}};
    Grant grant;
    try {
      grant = hub_authenticate(token);
    } catch (const Error& e) {
      return SnapshotAnswer{401, "", "", e.what(), {}, {}};
    }
    if (auto refusal = read_refusal(grant, ns))
      return SnapshotAnswer{403, "", "", refusal->what(), {}, {}};
    try {
      // Writing a namespace's first snapshot can take a while: 30 s before a 503.
      const SnapshotFile file = on_hub_thread(
          [&hub, ns, max_age] { return hub.snapshot(ns, max_age); }, std::chrono::seconds(30));
      SnapshotAnswer answer{200, file.path, file.etag, "", {}, {}};
      if (data_key) {
        // Encrypted on disk like the namespace's file; sent decrypted (over TLS).
        auto reader = std::make_shared<storage::EncryptedFileReader>(file.path, *data_key);
        answer.source = SnapshotAnswer::Source{
            reader->size(), [reader](std::uint64_t offset, unsigned char* out, std::size_t n) {
              return reader->read(offset, out, n);
            }};
      }
      answer.admit = [&hub, on_hub_thread, token](std::uint64_t bytes, std::uint64_t file_bytes) {
        return on_hub_thread([&hub, token, bytes, file_bytes] {
          return hub.admit_snapshot(token, bytes, file_bytes);
        });
      };
      return answer;
    } catch (const Error& e) {
      const int status = e.code() == ErrorCode::kInvalidArgument ? 404
                         : e.code() == ErrorCode::kBusy          ? 503
                                                                 : 500;
      return SnapshotAnswer{status, "", "", e.what(), {}, {}};
    }
  };
  const transport::WebSocketServer* server_view = nullptr;
  const ClusterStatus* cluster_view = cluster_status ? &*cluster_status : nullptr;
  server_options.metrics = [&hub, on_hub_thread, &server_view, cluster_view] {
    try {
      return on_hub_thread([&hub, &server_view, cluster_view] {
        return render_metrics(hub, *server_view, cluster_view);
      });
    } catch (const Error& e) {
      return std::string("# ") + e.what() + "\n";
    }
  };
  if (cluster_view) server_options.health = [cluster_view] { return cluster_view->degraded(); };
  server_options.log = write_log;
  transport::WebSocketServer server(network, std::move(server_options));
  server_view = &server;

  // The cluster log's follower (below) stops with the hub.
  std::atomic<bool> follower_stop = false, follower_done = config.cluster_db.empty();
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  boost::asio::steady_timer grace(io);
  boost::asio::steady_timer poll(io);
  std::function<void()> wait_for_peers = [&] {
    if (server.open_connections() == 0) {
      grace.cancel();  // nothing left to wait for: let io.run() return
      return;
    }
    poll.expires_after(std::chrono::milliseconds(20));
    poll.async_wait([&](const boost::system::error_code& ec) {
      if (!ec) wait_for_peers();
    });
  };
  signals.async_wait([&](const boost::system::error_code& ec, int signal_number) {
    if (ec) return;
    write_log(std::string("received ") + (signal_number == SIGINT ? "SIGINT" : "SIGTERM") +
              ": stopping");
    // The hub's shutting_down error frames go out first, then the server closes what is left
    // (connections still in their handshake, HTTP clients) and stops accepting.
    follower_stop = true;
    hub.shutdown();
    server.stop();
    grace.expires_after(std::chrono::seconds(config.shutdown_grace_seconds));
    grace.async_wait([&](const boost::system::error_code& wait_ec) {
      if (wait_ec) return;
      write_log("some peers did not answer the close frame in time; exiting anyway");
      io.stop();
    });
    wait_for_peers();
  });

  // The network threads run until the hub's loop below is over. One that fails (an exception
  // out of a handler: a bug) stops the relay, and serve() throws it.
  auto network_work = boost::asio::make_work_guard(network_threads_context);
  const unsigned own_network_threads = one_thread ? 0 : threads;
  std::atomic<unsigned> network_running = own_network_threads;
  std::mutex failure_mutex;
  std::exception_ptr failure;
  std::vector<std::thread> network_threads;
  for (unsigned i = 0; i < own_network_threads; ++i)
    network_threads.emplace_back([&] {
      try {
        network_threads_context.run();
      } catch (...) {
        {
          const std::lock_guard lock(failure_mutex);
          if (!failure) failure = std::current_exception();
        }
        network_threads_context.stop();
        io.stop();
      }
      --network_running;
    });

  // A relay of a cluster follows the log on a thread of its own.
  std::thread follower;
#if LATTICE_RELAY_CLUSTER
  ClusterUpkeep upkeep;
  upkeep.relay = detail::random_hex(8);
  upkeep.snapshot_every = config.cluster_snapshot_every;
  upkeep.grace = std::chrono::seconds(config.cluster_prune_grace_seconds);
  upkeep.snapshot_dir = (std::filesystem::path(config.data_dir) / "snapshots").string();
#endif
  if (!config.cluster_db.empty())
    follower = std::thread([&] {
#if LATTICE_RELAY_CLUSTER
      follow_cluster(config.cluster_db, hub, io, follower_stop, *cluster_status, upkeep,
                     *follower_wakeup);
#endif
      follower_done = true;
    });

  write_log(one_thread ? std::string("1 thread for connections and the hub")
                       : std::to_string(threads) + " network threads, and one for the hub");
  server.start();
  out << "listening on "
      << (config.host.find(':') != std::string::npos ? "[" + config.host + "]" : config.host) << ":"
      << server.port() << "\n"
      << std::flush;
  io.run();
  poll.cancel();
  // The network threads may wait for the hub (an HTTP request in on_hub_thread): the hub keeps
  // answering until they are gone.
  network_work.reset();
  network_threads_context.stop();
  while (network_running > 0) {
    io.restart();
    io.run_for(std::chrono::milliseconds(10));
  }
  for (auto& thread : network_threads) thread.join();
  follower_stop = true;
  while (!follower_done) {  // it may wait for the hub's thread
    io.restart();
    io.run_for(std::chrono::milliseconds(10));
  }
  if (follower.joinable()) follower.join();
  if (failure) std::rethrow_exception(failure);
  write_log("stopped");
  return 0;
}

}  // namespace lattice::relay
