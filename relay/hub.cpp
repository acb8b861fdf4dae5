#include "relay/hub.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "relay/detail/random_hex.hpp"
#include "relay/namespace_rules.hpp"
#include "storage/sqlite.hpp"
#include "transport/claims.hpp"
#include "transport/frame.hpp"

namespace lattice::relay {

namespace {

// The transactions a changeset covers: its sequence numbers past `since`, over every site.
std::uint64_t transactions_in(const crdt::Changeset& changeset) {
  std::uint64_t count = 0;
  for (const auto& [site, seq] : changeset.until.entries())
    count += seq - std::min(seq, changeset.since.get(site));
  return count;
}

using transport::valid_namespace;
using transport::WireError;

// The operator's numbered migrations of a namespace, DIR/NAME/<number>[-words].sql, run in
// order, each once: those at or below the replica's schema version are skipped (a device with
// an admin token may have brought that version first).
void run_operator_migrations(storage::Replica& replica, const std::filesystem::path& dir) {
  std::map<std::int64_t, std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    std::size_t digits = 0;
    while (digits < name.size() && std::isdigit(static_cast<unsigned char>(name[digits]))) ++digits;
    const bool sql = name.size() > 4 && name.compare(name.size() - 4, 4, ".sql") == 0;
    if (!sql) continue;
    if (digits == 0 || digits > 15 ||
        (digits < name.size() - 4 && name[digits] != '-' && name[digits] != '_'))
      throw Error(ErrorCode::kInvalidArgument,
                  "migration file '" + entry.path().string() +
                      "' is not named <number>.sql or <number>-<words>.sql");
    const std::int64_t version = std::stoll(name.substr(0, digits));
    if (version < 1)
      throw Error(ErrorCode::kInvalidArgument,
                  "migration file '" + entry.path().string() + "': numbers start at 1");
    if (!files.emplace(version, entry.path()).second)
      throw Error(ErrorCode::kInvalidArgument, "migrations '" + files[version].string() +
                                                   "' and '" + entry.path().string() +
                                                   "' have the same number");
  }
  for (const auto& [version, file] : files) {
    if (version <= replica.schema_version()) continue;
    std::ifstream in(file, std::ios::binary);
    std::ostringstream sql;
    sql << in.rdbuf();
    if (!in) throw Error(ErrorCode::kIo, "cannot read the migration file '" + file.string() + "'");
    try {
      replica.migrate(version, sql.str());
    } catch (const Error& e) {
      throw Error(e.code(), "migration file '" + file.string() + "': " + e.what());
    }
  }
}

// 32 random hexadecimal digits, for names of files no other may take.
std::string random_id() { return detail::random_hex(16); }

}  // namespace

struct Namespace;

struct Peer : std::enable_shared_from_this<Peer> {
  enum class Phase { kAwaitingHello, kLive, kClosed };

  std::uint64_t id = 0;  // connection order
  std::shared_ptr<transport::Connection> connection;
  std::string ns;
  Namespace* space = nullptr;
  Phase phase = Phase::kAwaitingHello;
  Grant grant;
  crdt::SiteId site;
  // Own transactions of this device up to here are the relay's too, identically.
  std::uint64_t confirmed_own = 0;
  // The hello's acked_seq: own transactions up to it may be counted without a tag (a relay
  // restored from a backup lacks some it once acknowledged; transport/claims.hpp).
  std::uint64_t untagged_through = 0;
  // The device's own transactions the relay has seen listed (hello and pushes): seq -> tag.
  std::map<std::uint64_t, std::uint64_t> own_history;
  std::string token;
  // What the device is known to hold. While `at_head`, only a lower bound: the device holds
  // everything the relay holds, and fan-out sends it each merge without comparing vectors.
  crdt::VersionVector known;
  bool at_head = false;
  // Still receiving its catch-up or the pieces of a large changeset, paced by the
  // connection's on_drained; fan-out skips it.
  bool catching_up = false;
  std::size_t catch_up_changes = 0;  // changes per catch-up frame, halved while too large
  std::uint32_t protocol = 0;        // the version spoken on this connection
  std::uint64_t schema_version = 0;  // the hello's: the device's last migration
  // A batch arriving in pieces: its number and the bytes so far (counted in the token's
  // TokenBudget::buffered).
  std::optional<std::uint64_t> incoming_batch;
  std::string incoming;
  // A changeset going out in pieces, how much of it has gone, and its number on this
  // connection (1, 2, 3, ...), carried by its pieces and its changes frame.
  std::shared_ptr<const std::string> outgoing;
  std::size_t outgoing_at = 0;
  std::uint64_t outgoing_batch = 0;
  // The last group (Namespace::last_delta) whose delta this connection carried, or whose
  // acknowledgement told it the number, 0 for none: the next delta may follow it with only the
  // vector entries that moved (protocol 5).
  std::uint64_t delta_group = 0;
};

// A token bucket: up to `capacity` at once, refilled at `rate` per second.
struct Bucket {
  double level = -1;  // < 0 before first use: starts full
  double time = 0;

  double refill(double capacity, double rate, double now) {
    level = level < 0 && time == 0 ? capacity : std::min(capacity, level + (now - time) * rate);
    time = now;
    return level;
  }
  // Takes `amount` if the bucket holds it; with `debt`, takes it anyway (the level may go
  // below zero, and the next take waits for the refill).
  bool take(double amount, double capacity, double rate, double now, bool debt = false) {
    if (refill(capacity, rate, now) < amount && !debt) return false;
    level -= amount;
    return true;
  }
};

// The bursts of the budgets counted per request (HubLimits): a fleet sharing one token may all
// reconnect at once, and a few people may verify at once.
constexpr double kHelloBurst = 64, kDigestBurst = 8;
// Catch-up bytes a token may start at once: a hello finding its bucket below zero is refused,
// so a large first catch-up starts (and the token owes it) but no other follows at once.
constexpr double kCatchUpBurst = 16u << 20;

// What one token may still do: its connections and budgets (HubLimits), shared by every
// connection that presents it, so that opening more connections buys nothing.
struct TokenBudget {
  std::size_t connections = 0;
  Bucket changes, bytes, digests, hellos, catch_up, snapshots;
  double snapshots_capacity = 0;  // of the last snapshot admitted (it grows with the file)
  std::size_t buffered = 0;       // bytes of batches arriving in pieces (HubLimits)
};

// Peers in the order they connected, not by address, so that fan-out order (and with it a
// simulation's schedule) is the same on every run.
struct ByConnectOrder {
  bool operator()(const std::shared_ptr<Peer>& a, const std::shared_ptr<Peer>& b) const {
    return a->id < b->id;
  }
};
using PeerSet = std::set<std::shared_ptr<Peer>, ByConnectOrder>;

// A device's changes frame, received whole and within the limits, awaiting its group commit.
struct PendingBatch {
  std::shared_ptr<Peer> peer;
  std::uint64_t batch = 0;
  crdt::Changeset changeset;
  std::vector<crdt::TxnTag> origin_log;
};

// What a group commit does for one batch once the group is durable.
struct Committed {
  std::shared_ptr<Peer> peer;
  std::uint64_t batch = 0;
  bool merged = false;           // false: acknowledged only (it skipped own transactions)
  std::uint64_t own_before = 0;  // the relay's entry for the peer's site before the merge
};

// Why a group's commit failed: the cluster's log refused or could not be reached (the group
// may be tried again), or the replica failed.
struct CommitFailure {
  std::string what;
  bool cluster = false;
};

// A group's commit: `before_commit` (a relay of a cluster: the group's batches appended to the
// cluster's log) first; when it throws, the group is not committed.
std::optional<CommitFailure> commit_group(storage::Replica& replica,
                                          const std::function<void()>& before_commit) {
  try {
    if (before_commit) before_commit();
  } catch (const std::exception& e) {
    return CommitFailure{e.what(), true};
  }
  try {
    replica.commit_group();
  } catch (const std::exception& e) {
    return CommitFailure{e.what(), false};
  }
  return std::nullopt;
}

// A group's commit handed to HubOptions::offload. Whichever thread claims it first runs it: the
// offload thread, or the hub's when something must see the namespace durable now (settle), so
// that such a wait never queues behind the offload thread's other tasks, and a simulation whose
// offload runs on the hub's own thread, later, never waits at all.
class CommitJob {
 public:
  CommitJob(storage::Replica& replica, std::function<void()> before_commit)
      : replica_(replica), before_commit_(std::move(before_commit)) {}

  // Commits the group unless a thread claimed it already or the hub abandoned it.
  void run() {
    {
      std::lock_guard lock(mutex_);
      if (state_ != State::kQueued) return;
      state_ = State::kRunning;
    }
    std::optional<CommitFailure> failure = commit_group(replica_, before_commit_);
    {
      std::lock_guard lock(mutex_);
      failure_ = std::move(failure);
      state_ = State::kFinished;
    }
    finished_.notify_all();
  }

  // Runs the commit, or waits for the thread running it; returns why it failed, if it did.
  std::optional<CommitFailure> wait() {
    run();
    std::unique_lock lock(mutex_);
    finished_.wait(lock, [this] { return state_ == State::kFinished; });
    return failure_;
  }

  // For a hub going away: true if the commit never started and now never will (the caller
  // rolls the group back); else waits until it has run.
  bool abandon() {
    std::unique_lock lock(mutex_);
    if (state_ == State::kQueued) {
      state_ = State::kAbandoned;
      return true;
    }
    finished_.wait(lock, [this] { return state_ == State::kFinished; });
    return false;
  }

 private:
  enum class State { kQueued, kRunning, kFinished, kAbandoned };
  storage::Replica& replica_;
  std::function<void()> before_commit_;
  std::mutex mutex_;
  std::condition_variable finished_;
  State state_ = State::kQueued;
  std::optional<CommitFailure> failure_;
};

// What merging a device's batch changes in its Peer, kept by a group of a relay of a cluster so
// that a group the log failed can be undone and merged again later.
struct PeerMergeState {
  std::shared_ptr<Peer> peer;
  std::uint64_t confirmed_own = 0;
  std::map<std::uint64_t, std::uint64_t> own_history;
};

// A group commit from its merges to its acknowledgements.
struct Group {
  std::vector<PendingBatch> batches;
  std::vector<Committed> committed;  // the batches merged or acknowledged only, in order
  crdt::VersionVector before;        // the relay's vector before the group
  std::uint64_t merged = 0;          // column changes that won (HubCounters::changes_merged)
  std::chrono::steady_clock::time_point start;
  std::shared_ptr<CommitJob> job;  // the commit, when offloaded
  // A relay of a cluster: each peer's state before its first merge in the group.
  std::vector<PeerMergeState> peers_before;
};

// A group commit's number among those of its namespace that moved the relay's vector, and the
// number of the one before when this one begins where that one ended (else 0).
struct GroupNumber {
  std::uint64_t group = 0;
  std::uint64_t previous = 0;
};

// The table in a namespace's replica that keeps the last position of the cluster's log merged
// into it (a relay of a cluster; docs/cluster.md). Not replicated: it is this relay's.
constexpr const char* kClusterPositionTable = "relay_cluster_position";

struct Namespace {
  std::string name;
  std::unique_ptr<storage::Replica> replica;
  std::string schema;
  PeerSet peers;                      // live ones
  std::vector<PendingBatch> pending;  // in the order received
  bool commit_scheduled = false;
  // The group whose commit runs on the offload thread: until it is settled, nothing else on
  // the hub's thread uses the replica, and the next group waits.
  std::optional<Group> committing;
  // The namespace's group commits that moved its vector, numbered 1, 2, 3, ... (the numbers
  // of their deltas): the last number given, and the vector that group ended at.
  std::uint64_t last_delta = 0;
  crdt::VersionVector last_delta_until;
  // A relay of a cluster: the last position of the cluster's log merged here
  // (kClusterPositionTable in the replica).
  std::int64_t cluster_applied = 0;
  // A relay of a cluster whose log failed the last group: the batches wait in `pending` (at
  // most one per device) and no group is committed until the retry, `cluster_retry` after the
  // failure (doubling from 100 ms to 1 s while the log keeps failing).
  bool waiting_for_cluster = false;
  std::chrono::milliseconds cluster_retry{0};
  // A relay of a cluster: batches of the log that came while a group's commit was in flight,
  // merged once it is settled (Hub::apply_from_cluster does not wait for the disk).
  std::vector<ClusterBatch> cluster_waiting;
  // The last snapshot written (Hub::snapshot) and when, by the steady clock.
  std::optional<SnapshotFile> snapshot;
  std::chrono::steady_clock::time_point snapshot_at;
};

struct Hub::Impl {
  HubOptions options;
  HubCounters counters;
  std::map<std::string, std::unique_ptr<Namespace>> spaces;
  PeerSet peers;  // every open connection
  std::uint64_t next_peer_id = 0;
  std::map<std::string, TokenBudget> tokens;
  // budget_of forgets settled tokens when `tokens` has this many entries.
  std::size_t sweep_tokens_at = 64;
  bool stopping = false;
  // Deferred tasks (HubOptions::defer) hold it weakly: one that runs after the hub is gone
  // does nothing.
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  Namespace& space(const std::string& ns);
  void send(Peer& peer, const transport::Frame& frame);
  // Sends a frame already encoded (the same bytes for several devices).
  void send_encoded(Peer& peer, std::string bytes);
  void fail(Peer& peer, WireError code, const std::string& message);
  void on_frame(const std::shared_ptr<Peer>& peer, std::string_view bytes);
  void on_first_frame(const std::shared_ptr<Peer>& peer, std::string_view bytes);
  void on_hello(const std::shared_ptr<Peer>& peer, const transport::Hello& hello);
  // The device's schema against the namespace's; false once the peer failed.
  bool check_schema(Peer& peer, Namespace& space, const transport::Hello& hello);
  bool check_schema_description(Peer& peer, Namespace& space, const transport::Hello& hello);
  // A device's changes and their pieces, from a token with the write right (on_frame checks).
  void on_piece(const std::shared_ptr<Peer>& peer, transport::ChangesPiece& piece);
  // Queues the batch for the namespace's next group commit (HubOptions::defer), or, without
  // defer, commits it at once.
  void on_changes(const std::shared_ptr<Peer>& peer, transport::Changes& changes);
  // Group commit: merges every batch the namespace received since the last one, in order, in
  // one transaction, then commits it (HubOptions::offload: on the other thread), acknowledges
  // each batch and fans out what they added. Nothing while the previous group is committing:
  // the commit's completion starts the next.
  void commit_pending(Namespace& space);
  // The group's commit is done: acknowledges every batch and fans out what the group added.
  void finish_group(Namespace& space, Group& group);
  // The group is lost (the disk, not a device): rolls back what is left of it and fails each
  // of its devices with kInternal; they send their batches again when they reconnect.
  void abort_group(Namespace& space, Group& group, const CommitFailure& failure);
  // A group the cluster's log failed: its peers' merge state is restored and its batches wait
  // in the namespace for the retry (Namespace::waiting_for_cluster).
  void hold_group(Namespace& space, Group& group);
  // Merges the group's batches; returns what appends them to the cluster's log, if anything
  // must be.
  std::function<void()> merge_group(Namespace& space, Group& group);
  // Waits for the namespace's offloaded commit, if any, and finishes its group: afterwards the
  // replica is the hub thread's to use.
  void settle(Namespace& space);
  // Everything received for the namespace so far is merged, durable and acknowledged.
  void commit_now(Namespace& space);
  // A relay of a cluster: merges batches of the cluster's log past the namespace's applied
  // position in one transaction with the new position, then fans out what they added.
  void apply_cluster(Namespace& space, const std::vector<ClusterBatch>& batches);
  // Reads and applies the cluster's log of the namespace up to its head (read_cluster).
  void catch_up_from_cluster(Namespace& space);
  // The log is pruned past what the namespace's replica applied: disconnects its devices and
  // rebuilds the replica from the namespace's snapshot (fetch_cluster_snapshot).
  void hydrate_from_cluster(Namespace& space, std::int64_t pruned);
  // Opens the namespace's replica file (replica_file) and reads its schema and applied position.
  void open_replica(Namespace& space);
  // Opens the replica file of namespace `ns` at `file`, creating its schema (schema_dir,
  // schema_sql) and, in a cluster, its table of the applied position.
  std::unique_ptr<storage::Replica> open_replica_file(const std::string& ns,
                                                      const std::filesystem::path& file);
  std::filesystem::path replica_file(const Namespace& space) const;
  // One batch of a group: checked against what the relay holds so far (the group's earlier
  // merges included) and merged; nullopt after refusing or rekeying the peer.
  std::optional<Committed> merge_pending(Namespace& space, PendingBatch& pending);
  // The changeset of a device's changes frame, joined with its pieces, decoded and within the
  // limits; nullopt after refusing the peer.
  std::optional<crdt::Changeset> receive_batch(Peer& peer, transport::Changes& changes);
  // Sends the live devices of the namespace what the group commit that moved the relay from
  // `before` to `after` added; not to `from` (null: none), the sender of all of it.
  void fan_out(Namespace& space, const Peer* from, GroupNumber number,
               const crdt::VersionVector& before, const crdt::VersionVector& after);
  // A device at the relay's head that is not sent the next merge whole: from now on, `known`
  // says what it holds (`held`, the relay's vector it had reached).
  void leave_head(Peer& peer, const crdt::VersionVector& held);
  // The bytes of a peer's unfinished batch, taken from it; they no longer count against its
  // token's TokenBudget::buffered.
  std::string take_pieces(Peer& peer);
  void on_close(const std::shared_ptr<Peer>& peer);
  // Tells every device the relay is stopping and closes its connection.
  void stop();
  // True (after closing it with unauthorized) when the peer's token has expired.
  bool expired(Peer& peer);
  // The budget of `token`, a new one if the hub has none. Before adding one, now and then
  // (when the table has doubled since), forgets the tokens without connections that owe
  // nothing: a token that owed something when its last connection closed, or that only
  // downloaded snapshots, has no close left that would drop it, and devices renew their tokens.
  TokenBudget& budget_of(const std::string& token);
  // Whether any of `budget`'s buckets is still below full at `now`: the token owes the relay
  // time, and forgetting it would refill its budgets.
  bool owes(TokenBudget& budget, double now) const;
  // Takes `amount` from the bucket `which` of the peer's token; false (after refusing the peer
  // with rate_limited, naming `what`) when over. Without a clock (now_seconds) budgets are off.
  bool spend(Peer& peer, Bucket TokenBudget::*which, double amount, double capacity, double rate,
             const std::string& what, bool debt = false);
  void rekey(Peer& peer, std::uint64_t keep_through);
  // The last own transaction of `peer` that the relay holds identically (from either copy).
  std::uint64_t shared_prefix(Peer& peer);
  // The relay's origin log of `peer`'s site id from seq `from` on, at most `max` entries.
  std::map<std::uint64_t, std::uint64_t> origin_tags(Peer& peer, std::uint64_t from,
                                                     std::size_t max);
  void send_changes(Peer& peer, const crdt::Changeset& changeset,
                    std::shared_ptr<const std::string> bytes);
  GroupNumber number_group(Namespace& space, const crdt::VersionVector& before,
                           const crdt::VersionVector& after);
  // The group's delta for the devices at the head, extracted and encoded once: the changeset's
  // bytes, and the delta frames every device of protocol 5 at the head gets, one with the whole
  // changeset and (with a previous group) one that follows that group's.
  struct HeadDelta {
    GroupNumber number;
    crdt::Changeset changeset;
    std::shared_ptr<const std::string> whole;
    std::string whole_frame;
    std::string following_frame;
  };
  HeadDelta head_delta(Namespace& space, GroupNumber number, const crdt::VersionVector& before);
  // Sends a device at the head the group's delta: a delta frame from protocol 5 on (following
  // the last one it got when it can), a changes frame before.
  void send_head_delta(Peer& peer, const HeadDelta& delta);
  // Sends pieces of peer.outgoing until `sent` reaches a round; returns the new `sent`.
  std::size_t send_pieces(Peer& peer, std::size_t sent);
  // Sends the next round of a device's catch-up (HubLimits::catch_up_round_bytes).
  void continue_catch_up(Peer& peer, bool first);
};

Namespace& Hub::Impl::space(const std::string& ns) {
  auto it = spaces.find(ns);
  if (it != spaces.end()) {
    if (!it->second->replica) open_replica(*it->second);  // a hydration failed to reopen it
    return *it->second;
  }
  if (!valid_namespace(ns))
    throw Error(ErrorCode::kInvalidArgument,
                "namespace '" + ns + "' is not 1 to 64 letters, digits, '_' or '-'");
  std::filesystem::create_directories(options.data_dir);
  auto space = std::make_unique<Namespace>();
  space->name = ns;
  open_replica(*space);
  return *spaces.emplace(ns, std::move(space)).first->second;
}

std::filesystem::path Hub::Impl::replica_file(const Namespace& space) const {
  return std::filesystem::path(options.data_dir) / (space.name + ".db");
}

void Hub::Impl::open_replica(Namespace& space) {
  space.replica = open_replica_file(space.name, replica_file(space));
  space.schema = space.replica->schema_description();
  space.cluster_applied = 0;
  if (options.log_to_cluster) {
    storage::Statement position(space.replica->connection(),
                                std::string("SELECT position FROM ") + kClusterPositionTable);
    if (position.step()) space.cluster_applied = position.column_int(0);
  }
}

std::unique_ptr<storage::Replica> Hub::Impl::open_replica_file(const std::string& ns,
                                                               const std::filesystem::path& file) {
  auto replica = storage::Replica::open(file.string(), options.replica_options);
  // Files made by an older relay or another umask become private too (SQLite gives the WAL and
  // shared-memory files the database file's mode when it creates them).
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::error_code ignored;
    std::filesystem::permissions(
        file.string() + suffix,
        std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, ignored);
  }
  const auto migrations = std::filesystem::path(options.schema_dir) / ns;
  if (!options.schema_dir.empty() && std::filesystem::is_directory(migrations)) {
    try {
      run_operator_migrations(*replica, migrations);
    } catch (const Error& e) {
      throw Error(ErrorCode::kSchema, e.what());  // the operator's to fix, not the device's
    }
  } else if (replica->schema_description().empty()) {
    const auto schema_file = std::filesystem::path(options.schema_dir) / (ns + ".sql");
    if (!options.schema_dir.empty() && std::filesystem::exists(schema_file)) {
      std::ifstream in(schema_file, std::ios::binary);
      std::ostringstream sql;
      sql << in.rdbuf();
      if (!in)
        throw Error(ErrorCode::kIo, "cannot read the schema file '" + schema_file.string() + "'");
      replica->exec(sql.str());
    } else if (!options.schema_sql.empty()) {
      replica->exec(options.schema_sql);
    }
  }
  if (options.log_to_cluster)
    storage::exec_sql(replica->connection(),
                      std::string("CREATE TABLE IF NOT EXISTS ") + kClusterPositionTable +
                          "(id INTEGER PRIMARY KEY CHECK (id = 0), position INTEGER NOT NULL)");
  return replica;
}

void Hub::Impl::send(Peer& peer, const transport::Frame& frame) {
  if (peer.phase == Peer::Phase::kClosed) return;
  send_encoded(peer, transport::encode_frame(frame));
}

void Hub::Impl::send_encoded(Peer& peer, std::string bytes) {
  if (peer.phase == Peer::Phase::kClosed) return;
  counters.bytes_out += bytes.size();
  peer.connection->send(std::move(bytes));
}

void Hub::Impl::fail(Peer& peer, WireError code, const std::string& message) {
  if (peer.phase == Peer::Phase::kClosed) return;
  ++counters.rejected[transport::wire_error_name(code)];
  send(peer, transport::ErrorFrame{code, message});
  peer.connection->close(std::string(transport::wire_error_name(code)) + ": " + message);
  if (peer.space) peer.space->peers.erase(peer.shared_from_this());
  peer.phase = Peer::Phase::kClosed;
}

std::map<std::uint64_t, std::uint64_t> Hub::Impl::origin_tags(Peer& peer, std::uint64_t from,
                                                              std::size_t max) {
  std::map<std::uint64_t, std::uint64_t> tags;
  for (const crdt::TxnTag& t : peer.space->replica->origin_log(peer.site, from, max))
    tags[t.seq] = t.tag;
  return tags;
}

std::uint64_t Hub::Impl::shared_prefix(Peer& peer) {
  std::uint64_t keep = peer.confirmed_own;
  auto it = peer.own_history.upper_bound(keep);
  if (it == peer.own_history.end()) return keep;
  const auto logged = origin_tags(peer, it->first, peer.own_history.size());
  for (; it != peer.own_history.end() && it->first == keep + 1; ++it) {
    auto at = logged.find(it->first);
    if (at == logged.end() || at->second != it->second) break;
    keep = it->first;
  }
  return keep;
}

void Hub::Impl::rekey(Peer& peer, std::uint64_t keep_through) {
  ++counters.rekeys;
  send(peer, transport::Rekey{"site id " + peer.site.to_hex() +
                                  " has another history at the relay (a copied or restored "
                                  "replica file); keep transactions through " +
                                  std::to_string(keep_through) + " and take a new site id",
                              keep_through});
  // The device closes once it has rekeyed: closing here could lose the frame on the way.
  // Until then nothing it sends is read.
  if (peer.space) peer.space->peers.erase(peer.shared_from_this());
  peer.phase = Peer::Phase::kClosed;
}

bool Hub::Impl::expired(Peer& peer) {
  if (!options.unix_now || peer.grant.expires_at == 0) return false;
  const std::int64_t now = options.unix_now();
  if (now < peer.grant.expires_at) return false;
  fail(peer, WireError::kUnauthorized,
       "token expired " + std::to_string(now - peer.grant.expires_at) +
           " s ago on this open connection; renew it and reconnect");
  return true;
}

void Hub::Impl::send_changes(Peer& peer, const crdt::Changeset& changeset,
                             std::shared_ptr<const std::string> bytes) {
  // Nothing more goes to a device whose token has expired, even if it never sends a frame.
  if (expired(peer)) return leave_head(peer, changeset.since);
  counters.changes_sent += changeset.change_count();
  // At the head, the changeset is the delta of the relay's last merge: the device holds its
  // `since` already, and stays at the head if it arrives whole.
  const bool whole = peer.protocol < 3 || bytes->size() <= options.limits.piece_bytes;
  if (!whole) leave_head(peer, changeset.since);
  if (!peer.at_head) peer.known.merge(changeset.until);
  if (whole) return send(peer, transport::Changes{0, *bytes, {}});
  // Too large for one frame: in pieces, a round at a time, and nothing else for this device
  // until they are out (continue_catch_up then sends what was merged meanwhile).
  ++counters.pieced_changesets_out;
  peer.outgoing = std::move(bytes);
  peer.outgoing_at = 0;
  ++peer.outgoing_batch;
  peer.catching_up = true;
  send_pieces(peer, 0);
}

void Hub::Impl::leave_head(Peer& peer, const crdt::VersionVector& held) {
  if (!peer.at_head) return;
  peer.at_head = false;
  peer.known.merge(held);  // what the relay held, all of which the device has
}

std::size_t Hub::Impl::send_pieces(Peer& peer, std::size_t sent) {
  const std::size_t piece = std::max<std::size_t>(options.limits.piece_bytes, 1);
  while (peer.outgoing && sent < options.limits.catch_up_round_bytes &&
         peer.phase == Peer::Phase::kLive) {
    const std::string& bytes = *peer.outgoing;
    const std::size_t left = bytes.size() - peer.outgoing_at;
    if (left <= piece) {
      send(peer, transport::Changes{peer.outgoing_batch, bytes.substr(peer.outgoing_at), {}});
      peer.outgoing.reset();
      peer.outgoing_at = 0;
      return sent + left;
    }
    send(peer, transport::ChangesPiece{peer.outgoing_batch, peer.outgoing_at,
                                       bytes.substr(peer.outgoing_at, piece)});
    peer.outgoing_at += piece;
    sent += piece;
  }
  return sent;
}

void Hub::Impl::on_frame(const std::shared_ptr<Peer>& peer, std::string_view bytes) {
  if (peer->phase == Peer::Phase::kClosed) return;
  counters.bytes_in += bytes.size();
  if (peer->phase == Peer::Phase::kAwaitingHello) return on_first_frame(peer, bytes);
  if (expired(*peer)) return;
  if (bytes.size() > options.limits.max_frame_bytes)
    return fail(*peer, WireError::kFrameTooLarge,
                "frame of " + std::to_string(bytes.size()) + " bytes is over the limit of " +
                    std::to_string(options.limits.max_frame_bytes));
  transport::Frame frame;
  try {
    frame = transport::decode_frame(bytes, options.limits.max_frame_bytes);
  } catch (const Error& e) {
    return fail(*peer, WireError::kMalformed, e.what());
  }
  // The frames of a batch sent in pieces arrive at the network's pace and are all needed: they
  // are never refused for the budget but leave the token owing it (its next frames wait).
  const bool piece = std::holds_alternative<transport::ChangesPiece>(frame) ||
                     (peer->incoming_batch && std::holds_alternative<transport::Changes>(frame));
  if (!spend(*peer, &TokenBudget::bytes, static_cast<double>(bytes.size()),
             static_cast<double>(options.limits.max_frame_bytes),
             options.limits.max_bytes_per_second,
             "bytes per second: " +
                 std::to_string(static_cast<std::uint64_t>(options.limits.max_bytes_per_second)),
             /*debt=*/piece))
    return;
  if (std::holds_alternative<transport::Hello>(frame))
    return fail(*peer, WireError::kMalformed, "a second hello on one connection");
  auto* changes = std::get_if<transport::Changes>(&frame);
  auto* part = std::get_if<transport::ChangesPiece>(&frame);
  if ((changes || part) && !(peer->grant.rights & kGrantWrite))
    return fail(*peer, WireError::kForbidden,
                "token of '" + peer->grant.subject + "' lacks the write right; changes refused");
  if (changes) return on_changes(peer, *changes);
  if (part) return on_piece(peer, *part);
  if (auto* ping = std::get_if<transport::Ping>(&frame))
    return send(*peer, transport::Pong{ping->nonce});
  if (auto* request = std::get_if<transport::DigestRequest>(&frame)) {
    // A digest hashes the whole namespace: a few bytes that cost the relay milliseconds.
    if (!spend(*peer, &TokenBudget::digests, 1, kDigestBurst,
               options.limits.max_digests_per_minute / 60,
               "digests per minute: " + std::to_string(static_cast<std::uint64_t>(
                                            options.limits.max_digests_per_minute))))
      return;
    commit_now(*peer->space);  // the digest covers every batch acknowledged before it
    return send(*peer, transport::Digest{request->nonce, peer->space->replica->digest()});
  }
  if (std::holds_alternative<transport::Pong>(frame)) return;
  if (auto* error = std::get_if<transport::ErrorFrame>(&frame)) {
    peer->connection->close("device error: " + error->message);
    return;
  }
  fail(*peer, WireError::kMalformed, "a device may not send this frame type");
}

void Hub::Impl::on_first_frame(const std::shared_ptr<Peer>& peer, std::string_view bytes) {
  // Before authentication a frame costs the relay as little as possible: a small size limit,
  // and the token is checked before anything after it in the hello is decoded.
  if (bytes.size() > options.limits.max_hello_bytes)
    return fail(*peer, WireError::kFrameTooLarge,
                "a first frame of " + std::to_string(bytes.size()) +
                    " bytes is over the limit of " +
                    std::to_string(options.limits.max_hello_bytes) + " before authentication");
  std::optional<transport::HelloCredentials> credentials;
  try {
    credentials = transport::peek_hello(bytes);
  } catch (const Error& e) {
    return fail(*peer, WireError::kMalformed, e.what());
  }
  if (!credentials) return fail(*peer, WireError::kMalformed, "the first frame must be a hello");
  using transport::kMinProtocolVersion;
  using transport::kProtocolVersion;
  // A device names the newest version it speaks; the connection speaks the older of that and
  // ours, so a newer device still talks to this relay. Only versions too old are refused.
  const std::uint32_t version = credentials->protocol_version;
  if (version < kMinProtocolVersion)
    return fail(*peer, WireError::kProtocolVersion,
                "protocol version " + std::to_string(version) +
                    " is not supported; this relay speaks versions " +
                    std::to_string(kMinProtocolVersion) + " to " +
                    std::to_string(kProtocolVersion));
  if (credentials->ns != peer->ns)
    return fail(*peer, WireError::kMalformed,
                "hello names namespace '" + credentials->ns + "' but the connection is for '" +
                    peer->ns + "'");
  try {
    peer->grant = options.authenticate(credentials->token);
  } catch (const Error& e) {
    return fail(*peer, WireError::kUnauthorized, e.what());
  }
  transport::Frame frame;
  try {
    frame = transport::decode_frame(bytes, options.limits.max_hello_bytes);
  } catch (const Error& e) {
    return fail(*peer, WireError::kMalformed, e.what());
  }
  on_hello(peer, std::get<transport::Hello>(frame));
}

bool Hub::Impl::check_schema_description(Peer& peer, Namespace& space,
                                         const transport::Hello& hello) {
  // Protocol 2 and 3: the description must equal the namespace's.
  if (space.schema.empty() && !hello.schema_fingerprint.empty()) {
    if (!(peer.grant.rights & kGrantAdmin)) {
      fail(peer, WireError::kSchemaMismatch,
           "namespace '" + peer.ns +
               "' has no replicated tables yet: the relay's operator sets them (--schema) or a "
               "device with an admin token connects first");
      return false;
    }
    try {
      space.replica->exec(adoption_sql(hello.schema_fingerprint));
    } catch (const Error& e) {
      fail(peer, WireError::kSchemaMismatch, e.what());
      return false;
    }
    space.schema = space.replica->schema_description();
  }
  if (hello.schema_fingerprint != space.schema) {
    fail(peer, WireError::kSchemaMismatch,
         "the device's replicated schema differs from namespace '" + peer.ns +
             "': " + first_difference(space.schema, hello.schema_fingerprint));
    return false;
  }
  return true;
}

bool Hub::Impl::check_schema(Peer& peer, Namespace& space, const transport::Hello& hello) {
  using Kind = SchemaVerdict::Kind;
  if (hello.protocol_version < 4) return check_schema_description(peer, space, hello);
  storage::SchemaManifest device;
  try {
    device = storage::parse_manifest(hello.schema_fingerprint);
  } catch (const Error& e) {
    fail(peer, WireError::kMalformed, std::string("hello.schema_fingerprint: ") + e.what());
    return false;
  }
  const bool admin = peer.grant.rights & kGrantAdmin;
  storage::Replica& replica = *space.replica;
  const storage::SchemaManifest relay = replica.schema_manifest();
  const std::int64_t relay_version = replica.schema_version();
  if (hello.schema_version > static_cast<std::uint64_t>(INT64_MAX)) {
    fail(peer, WireError::kMalformed, "hello.schema_version is past 2^63-1");
    return false;
  }
  const auto device_version = static_cast<std::int64_t>(hello.schema_version);
  SchemaVerdict verdict;
  if (relay.empty() && !device.empty()) {
    // A namespace without a schema takes the first admin device's; nobody else creates tables.
    if (!admin) {
      fail(peer, WireError::kSchemaMismatch,
           "namespace '" + peer.ns +
               "' has no replicated tables yet: the relay's operator sets them (--schema) or a "
               "device with an admin token connects first");
      return false;
    }
    verdict.kind = Kind::kAhead;
  } else {
    verdict = judge_schema(
        relay, relay_version,
        device_version < relay_version ? replica.schema_manifest_at(device_version) : std::string(),
        device, device_version);
  }
  switch (verdict.kind) {
    case Kind::kSame:
    case Kind::kBehind:
      break;
    case Kind::kAhead:
      if (!admin) {
        fail(peer, WireError::kSchemaAhead,
             "namespace '" + peer.ns +
                 "' does not have the device's schema version yet: " + verdict.why +
                 "; the device keeps its changes and waits until a device with an admin token "
                 "or the relay's operator brings that version");
        return false;
      }
      try {
        replica.migrate_to(device_version, device);
        // (migrate_to does nothing for a number the namespace has passed: an empty namespace
        // whose operator's migrations dropped every table, say.)
        if (storage::format_manifest(replica.schema_manifest()) != storage::format_manifest(device))
          throw Error(ErrorCode::kSchema, "the namespace is at version " +
                                              std::to_string(replica.schema_version()) +
                                              " already, with another schema");
      } catch (const Error& e) {
        fail(peer, WireError::kSchemaMismatch,
             "namespace '" + peer.ns + "' cannot take the device's schema: " + e.what());
        return false;
      }
      ++counters.schema_changes;
      space.schema = replica.schema_description();
      break;
    case Kind::kMismatch:
      fail(peer, WireError::kSchemaMismatch,
           "the device's replicated schema conflicts with namespace '" + peer.ns +
               "': " + verdict.why);
      return false;
  }
  return true;
}

std::optional<Error> read_refusal(const Grant& grant, const std::string& ns) {
  if (grant.ns != ns)
    return Error(ErrorCode::kUnauthorized,
                 "token is for namespace '" + grant.ns + "', not '" + ns + "'");
  if (!(grant.rights & kGrantRead))
    return Error(ErrorCode::kForbidden, "token lacks the read right");
  return std::nullopt;
}

void Hub::Impl::on_hello(const std::shared_ptr<Peer>& peer, const transport::Hello& hello) {
  // on_first_frame checked the version, the namespace and the token (peer->grant).
  if (auto why = transport::check_vector(hello.held, "hello.held"))
    return fail(*peer, WireError::kMalformed, *why);
  if (hello.acked_seq > hello.held.get(hello.site))
    return fail(*peer, WireError::kMalformed,
                "hello.acked_seq " + std::to_string(hello.acked_seq) +
                    " is past the device's own last transaction " +
                    std::to_string(hello.held.get(hello.site)));
  if (auto refusal = read_refusal(peer->grant, peer->ns))
    return fail(
        *peer,
        refusal->code() == ErrorCode::kForbidden ? WireError::kForbidden : WireError::kUnauthorized,
        refusal->what());
  peer->token = hello.token;
  const HubLimits& limits = options.limits;
  if (++budget_of(hello.token).connections > limits.max_connections_per_token)
    return fail(*peer, WireError::kTooManyConnections,
                "more than " + std::to_string(limits.max_connections_per_token) +
                    " connections with one token");
  if (!spend(*peer, &TokenBudget::hellos, 1, kHelloBurst, limits.max_hellos_per_minute / 60,
             "hellos (reconnects) per minute: " + std::to_string(limits.max_hellos_per_minute)))
    return;
  // A catch-up already paid for in advance: one hello cannot start another while the token
  // owes the last ones.
  if (!spend(*peer, &TokenBudget::catch_up, 0, kCatchUpBurst, limits.max_catch_up_bytes_per_second,
             "catch-up bytes per second: " +
                 std::to_string(static_cast<std::uint64_t>(limits.max_catch_up_bytes_per_second))))
    return;

  Namespace* space = nullptr;
  try {
    space = &this->space(peer->ns);
  } catch (const Error& e) {
    // A namespace name the relay refuses, or one it cannot open (its file, its migrations).
    return fail(
        *peer,
        e.code() == ErrorCode::kInvalidArgument ? WireError::kMalformed : WireError::kInternal,
        e.what());
  }
  settle(*space);  // what follows reads the replica, and the welcome says what it holds
  if (options.read_cluster) {
    // Every change another relay of the cluster acknowledged before this hello.
    try {
      catch_up_from_cluster(*space);
    } catch (const Error& e) {
      return fail(*peer, WireError::kInternal,
                  std::string("the relay cannot read the cluster's log: ") + e.what());
    }
  }
  if (!check_schema(*peer, *space, hello)) return;

  // A copy of a replica file presents its site id with a history of its own; the first to
  // arrive keeps the id, this one is told to move its later transactions to a new one.
  // The relay's log where the hello's can be compared with it, and its first entry past the
  // device's head, if any: a bounded read whatever either side holds.
  const crdt::VersionVector relay_held = space->replica->version_vector();
  std::vector<crdt::TxnTag> relay_log =
      space->replica->origin_log(hello.site, hello.acked_seq, hello.own_log.size() + 1);
  const std::uint64_t head = hello.held.get(hello.site);
  if (relay_log.empty() || relay_log.back().seq <= head)
    for (const crdt::TxnTag& t : space->replica->origin_log(hello.site, head + 1, 1))
      relay_log.push_back(t);
  const auto keep = fork_point(hello, relay_log, relay_held.get(hello.site));
  peer->site = hello.site;
  if (keep) return rekey(*peer, *keep);
  peer->confirmed_own = relay_held.get(hello.site);
  peer->untagged_through = std::min(hello.acked_seq, hello.held.get(hello.site));
  for (const crdt::TxnTag& t : hello.own_log) peer->own_history[t.seq] = t.tag;
  peer->space = space;
  peer->phase = Peer::Phase::kLive;
  peer->known = hello.held;
  const bool first_device = space->peers.empty();
  space->peers.insert(peer);
  if (first_device && options.first_device) options.first_device(space->name);
  peer->connection->authenticated();
  peer->protocol = std::min(hello.protocol_version, transport::kProtocolVersion);
  peer->schema_version = hello.schema_version;
  send(*peer, transport::Welcome{peer->protocol, relay_held});
  // What the device lacks, in frames of bounded size, a round at a time; the first frame always
  // goes (empty or not) so the device knows when it has caught up.
  peer->catching_up = true;
  peer->catch_up_changes = options.limits.max_outgoing_batch_changes;
  continue_catch_up(*peer, /*first=*/true);
}

void Hub::Impl::continue_catch_up(Peer& peer, bool first) {
  if (!peer.catching_up || peer.phase != Peer::Phase::kLive) return;
  // Against what the relay holds now: merges made meanwhile were not forwarded to this device
  // (on_changes skips devices still catching up), so they go here.
  std::size_t sent = send_pieces(peer, 0);
  if (peer.outgoing) return;  // on_drained calls again
  settle(*peer.space);
  if (peer.phase != Peer::Phase::kLive) return;
  const crdt::VersionVector held = peer.space->replica->version_vector();
  while (first || !peer.known.dominates(held)) {
    first = false;
    if (sent >= options.limits.catch_up_round_bytes) return;  // on_drained calls again
    // A frame must fit a round: halve the changes per frame until it does. A transaction is
    // never cut, so one larger than a round goes whole (in pieces), extracted once: halving
    // would extract it again and again, holding the relay's thread for as many times as long.
    crdt::Changeset chunk;
    std::string bytes;
    for (;;) {
      chunk = peer.space->replica->changes_since(peer.known, peer.catch_up_changes);
      ++counters.catch_up_extractions;
      bytes = crdt::encode_changeset(chunk);
      const std::size_t count = chunk.change_count();
      if (bytes.size() <= options.limits.catch_up_round_bytes || count <= 1 ||
          transactions_in(chunk) <= 1)
        break;
      const std::size_t fewer = std::min(peer.catch_up_changes, count) / 2;
      if (fewer == 0 || fewer == peer.catch_up_changes) break;
      peer.catch_up_changes = fewer;
    }
    sent += bytes.size();
    if (options.now_seconds)
      tokens[peer.token].catch_up.take(static_cast<double>(bytes.size()), kCatchUpBurst,
                                       options.limits.max_catch_up_bytes_per_second,
                                       options.now_seconds(), /*debt=*/true);
    send_changes(peer, chunk, std::make_shared<const std::string>(std::move(bytes)));
    if (peer.phase != Peer::Phase::kLive || peer.outgoing) return;
  }
  peer.catching_up = false;
  peer.at_head = true;  // it has everything the relay holds: fan-out keeps it there
}

void Hub::Impl::on_piece(const std::shared_ptr<Peer>& peer, transport::ChangesPiece& piece) {
  if (peer->protocol < 3)
    return fail(*peer, WireError::kMalformed,
                "changes_piece frames need protocol 3; this connection speaks " +
                    std::to_string(peer->protocol));
  if (peer->incoming_batch && *peer->incoming_batch != piece.batch)
    return fail(*peer, WireError::kMalformed,
                "a piece of batch " + std::to_string(piece.batch) + " before the end of batch " +
                    std::to_string(*peer->incoming_batch));
  if (piece.offset != peer->incoming.size())
    return fail(*peer, WireError::kMalformed,
                "a piece of batch " + std::to_string(piece.batch) + " at offset " +
                    std::to_string(piece.offset) + " where " +
                    std::to_string(peer->incoming.size()) + " was next");
  // Held in memory until the batch is whole: bounded per token, whatever its connections.
  TokenBudget& budget = tokens[peer->token];
  if (budget.buffered + piece.piece.size() > options.limits.max_transaction_bytes)
    return fail(*peer, WireError::kBatchTooLarge,
                "batch " + std::to_string(piece.batch) + " in pieces is over the limit of " +
                    std::to_string(options.limits.max_transaction_bytes) +
                    " bytes for one transaction (every unfinished batch of this token counted)");
  budget.buffered += piece.piece.size();
  peer->incoming_batch = piece.batch;
  peer->incoming += piece.piece;
}

std::string Hub::Impl::take_pieces(Peer& peer) {
  std::string bytes;
  if (!peer.incoming_batch) return bytes;
  auto it = tokens.find(peer.token);
  if (it != tokens.end())
    it->second.buffered -= std::min(it->second.buffered, peer.incoming.size());
  peer.incoming_batch.reset();
  bytes.swap(peer.incoming);
  return bytes;
}

std::optional<crdt::Changeset> Hub::Impl::receive_batch(Peer& peer, transport::Changes& changes) {
  // The last bytes of a batch that came in pieces complete it.
  const bool pieced = peer.incoming_batch.has_value();
  if (pieced) {
    if (*peer.incoming_batch != changes.batch) {
      fail(peer, WireError::kMalformed,
           "changes of batch " + std::to_string(changes.batch) + " before the end of batch " +
               std::to_string(*peer.incoming_batch) + "'s pieces");
      return std::nullopt;
    }
    const std::size_t total = peer.incoming.size() + changes.changeset.size();
    if (total > options.limits.max_transaction_bytes) {
      fail(peer, WireError::kBatchTooLarge,
           "batch " + std::to_string(changes.batch) + " of " + std::to_string(total) +
               " bytes is over the limit of " +
               std::to_string(options.limits.max_transaction_bytes) + " bytes for one transaction");
      return std::nullopt;
    }
    ++counters.pieced_batches_in;
    std::string joined = take_pieces(peer);
    joined += changes.changeset;
    changes.changeset = std::move(joined);
  }
  crdt::Changeset changeset;
  try {
    crdt::DecodeLimits limits;
    limits.max_bytes =
        pieced ? options.limits.max_transaction_bytes : options.limits.max_frame_bytes;
    changeset = crdt::decode_changeset(changes.changeset, limits);
  } catch (const Error& e) {
    fail(peer, WireError::kBadChangeset, e.what());
    return std::nullopt;
  }
  std::string().swap(changes.changeset);
  const std::size_t count = changeset.change_count();
  if (!pieced && count > options.limits.max_batch_changes) {
    fail(peer, WireError::kBatchTooLarge,
         "batch of " + std::to_string(count) + " changes is over the limit of " +
             std::to_string(options.limits.max_batch_changes));
    return std::nullopt;
  }
  // One transaction larger than a batch is merged whole, and the token owes it.
  if (!spend(peer, &TokenBudget::changes, static_cast<double>(count),
             static_cast<double>(options.limits.max_batch_changes),
             options.limits.max_changes_per_second,
             "changes per second: " +
                 std::to_string(static_cast<std::uint64_t>(options.limits.max_changes_per_second)),
             /*debt=*/pieced))
    return std::nullopt;
  return changeset;
}

void Hub::Impl::on_changes(const std::shared_ptr<Peer>& peer, transport::Changes& changes) {
  Namespace& space = *peer->space;
  // While the cluster's log is unreachable a device's batch waits; a device waits for its
  // acknowledgement before it sends the next, and one that does not is not kept waiting too.
  if (space.waiting_for_cluster &&
      std::any_of(space.pending.begin(), space.pending.end(),
                  [&](const PendingBatch& p) { return p.peer == peer; }))
    return fail(*peer, WireError::kInternal,
                "batch " + std::to_string(changes.batch) +
                    " came before the relay could store the previous one (its cluster's log is "
                    "unreachable); send it again after that one is acknowledged");
  std::optional<crdt::Changeset> received = receive_batch(*peer, changes);
  if (!received) return;
  space.pending.push_back(
      PendingBatch{peer, changes.batch, std::move(*received), std::move(changes.origin_log)});
  if (!options.defer) return commit_pending(space);
  if (space.commit_scheduled) return;
  space.commit_scheduled = true;
  options.defer([this, alive = std::weak_ptr<bool>(alive), ns = space.name] {
    if (alive.expired()) return;
    auto it = spaces.find(ns);
    if (it != spaces.end()) commit_pending(*it->second);
  });
}

void Hub::Impl::commit_pending(Namespace& space) {
  space.commit_scheduled = false;
  if (space.committing || space.pending.empty() || space.waiting_for_cluster) return;
  Group group;
  group.batches.swap(space.pending);
  storage::Replica& replica = *space.replica;
  group.start = std::chrono::steady_clock::now();
  group.before = replica.version_vector();
  const std::uint64_t merged_before = counters.changes_merged;
  std::optional<CommitFailure> failure;
  std::function<void()> before_commit;
  try {
    replica.begin_group();
    before_commit = merge_group(space, group);
    if (!options.offload || !options.defer) failure = commit_group(replica, before_commit);
  } catch (const Error& e) {  // merge_pending rethrows only what ends the group
    failure = CommitFailure{e.what()};
  }
  group.merged = counters.changes_merged - merged_before;
  if (failure) return abort_group(space, group, *failure);
  if (!options.offload || !options.defer) return finish_group(space, group);
  // The disk sync runs on the offload thread; this one goes on with other frames. The task
  // holds the job, not the hub: a hub destroyed meanwhile abandons the job first (~Hub).
  group.job = std::make_shared<CommitJob>(replica, std::move(before_commit));
  space.committing = std::move(group);
  options.offload([this, job = space.committing->job, defer = options.defer,
                   alive = std::weak_ptr<bool>(alive), ns = space.name] {
    job->run();
    defer([this, job, alive, ns] {
      if (alive.expired()) return;
      auto it = spaces.find(ns);
      if (it == spaces.end()) return;
      Namespace& space = *it->second;
      if (space.committing && space.committing->job == job) settle(space);
      commit_pending(space);  // the frames that arrived during the sync
    });
  });
}

std::function<void()> Hub::Impl::merge_group(Namespace& space, Group& group) {
  // A relay of a cluster logs what it merged before it commits (and acknowledges) it.
  std::vector<ClusterBatch> to_log;
  for (PendingBatch& pending : group.batches) {
    if (pending.peer->phase != Peer::Phase::kLive) continue;
    if (options.log_to_cluster &&
        std::none_of(group.peers_before.begin(), group.peers_before.end(),
                     [&](const PeerMergeState& s) { return s.peer == pending.peer; }))
      group.peers_before.push_back(
          PeerMergeState{pending.peer, pending.peer->confirmed_own, pending.peer->own_history});
    std::optional<Committed> done = merge_pending(space, pending);
    if (!done) continue;
    // Logged under the device's first transaction the relay did not hold: the same key for a
    // retry of the batch, or for the batch sent again to another relay, whatever its `since`
    // says (a vector may leave entries out). A batch bringing nothing new is not logged.
    if (done->merged && options.log_to_cluster &&
        pending.changeset.until.get(pending.peer->site) > done->own_before)
      to_log.push_back(ClusterBatch{0, pending.peer->site, done->own_before + 1,
                                    crdt::encode_changeset(pending.changeset), pending.origin_log});
    group.committed.push_back(std::move(*done));
  }
  if (to_log.empty()) return {};
  return [log = options.log_to_cluster, ns = space.name, to_log = std::move(to_log)] {
    log(ns, to_log);
  };
}

void Hub::Impl::settle(Namespace& space) {
  if (!space.committing) return;
  Group group = std::move(*space.committing);
  space.committing.reset();
  if (auto failure = group.job->wait())
    abort_group(space, group, *failure);
  else
    finish_group(space, group);
  if (space.cluster_waiting.empty()) return;
  std::vector<ClusterBatch> waiting = std::move(space.cluster_waiting);
  space.cluster_waiting.clear();
  try {
    apply_cluster(space, waiting);
  } catch (const Error&) {
    // As when the follower's apply fails: the next read of the log starts from the position
    // the replica holds, and tries again.
  }
}

void Hub::Impl::commit_now(Namespace& space) {
  settle(space);
  commit_pending(space);
  settle(space);
}

void Hub::Impl::abort_group(Namespace& space, Group& group, const CommitFailure& failure) {
  // Nothing of the group was kept and nothing of it is acknowledged.
  space.replica->rollback_group();
  counters.changes_merged -= group.merged;
  if (failure.cluster && options.defer_for && !stopping) return hold_group(space, group);
  for (const PendingBatch& pending : group.batches)
    fail(*pending.peer, WireError::kInternal,
         "the relay could not store batch " + std::to_string(pending.batch) + ": " + failure.what);
}

void Hub::Impl::hold_group(Namespace& space, Group& group) {
  ++counters.cluster_groups_held;
  for (PeerMergeState& before : group.peers_before) {
    before.peer->confirmed_own = before.confirmed_own;
    before.peer->own_history = std::move(before.own_history);
  }
  // The group's batches go first again, before those that came meanwhile.
  std::vector<PendingBatch> waiting;
  for (PendingBatch& pending : group.batches)
    if (pending.peer->phase == Peer::Phase::kLive) waiting.push_back(std::move(pending));
  for (PendingBatch& pending : space.pending) waiting.push_back(std::move(pending));
  space.pending = std::move(waiting);
  space.cluster_retry = std::clamp(space.cluster_retry * 2, std::chrono::milliseconds(100),
                                   std::chrono::milliseconds(1000));
  space.waiting_for_cluster = true;
  options.defer_for(space.cluster_retry,
                    [this, alive = std::weak_ptr<bool>(alive), ns = space.name] {
                      if (alive.expired()) return;
                      auto it = spaces.find(ns);
                      if (it == spaces.end()) return;
                      it->second->waiting_for_cluster = false;
                      commit_pending(*it->second);
                    });
}

void Hub::Impl::finish_group(Namespace& space, Group& group) {
  counters.merge_seconds.observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - group.start).count());
  ++counters.group_commits;
  counters.grouped_batches += group.batches.size();
  space.cluster_retry = {};
  // Nothing is acknowledged before it is durable.
  const crdt::VersionVector after = space.replica->version_vector();
  const bool moved = group.merged != 0 || !(after == group.before);
  const GroupNumber number = moved ? number_group(space, group.before, after) : GroupNumber{};
  // A group of one merge is all its sender's: it holds that already, and is sent nothing of it.
  // Its acknowledgement says the group's number (protocol 5), so that the next delta it gets
  // may follow this group's, whose `until` is the acknowledgement's vector.
  Peer* sole_sender = nullptr;
  std::size_t merges = 0;
  for (const Committed& c : group.committed)
    if (c.merged) ++merges, sole_sender = c.peer.get();
  if (merges != 1) sole_sender = nullptr;
  for (const Committed& c : group.committed) {
    if (c.peer.get() == sole_sender && moved && c.peer->at_head && c.peer->protocol >= 5) {
      send(*c.peer, transport::Ack{c.batch, after, number.group});
      c.peer->delta_group = number.group;
    } else {
      send(*c.peer, transport::Ack{c.batch, after});
    }
    if (!c.merged) continue;
    // Another live copy of this device's replica file now lags a history that is not its own:
    // it must move its later transactions to a new site id before it writes over these.
    if (after.get(c.peer->site) > c.own_before)
      for (const auto& other :
           std::vector<std::shared_ptr<Peer>>(space.peers.begin(), space.peers.end()))
        if (other != c.peer && other->phase == Peer::Phase::kLive && other->site == c.peer->site)
          rekey(*other, shared_prefix(*other));
  }
  if (moved) fan_out(space, sole_sender, number, group.before, after);
}

void Hub::Impl::apply_cluster(Namespace& space, const std::vector<ClusterBatch>& batches) {
  settle(space);
  storage::Replica& replica = *space.replica;
  const crdt::VersionVector before = replica.version_vector();
  std::int64_t applied = space.cluster_applied;
  replica.begin_group();
  try {
    for (const ClusterBatch& batch : batches) {
      if (batch.position <= applied) continue;
      if (batch.position != applied + 1)
        throw Error(ErrorCode::kInternal, "the cluster's log of '" + space.name + "' skips from " +
                                              std::to_string(applied) + " to " +
                                              std::to_string(batch.position));
      // The relay that logged it checked it as it checks a device's. What this relay's disk or
      // state refuses stops the namespace's log here until it is fixed, and so does a clock
      // ahead of this relay's by more than the drift allowed (the relay that took it had a
      // clock ahead of this one: in a while the batch is taken). Tables and columns this relay
      // does not have are kept for a later schema, as a device's are. What it cannot read at
      // all (bytes that do not decode, a value of another type than the column's) is passed
      // over and counted, so that the log does not stop for good.
      try {
        counters.changes_merged +=
            replica
                .merge_in_group(crdt::decode_changeset(batch.bytes),
                                storage::OriginTxns{batch.site, batch.origin_log})
                .applied;
      } catch (const Error& e) {
        const bool relay_side = e.code() == ErrorCode::kIo || e.code() == ErrorCode::kBusy ||
                                e.code() == ErrorCode::kState || e.code() == ErrorCode::kInternal ||
                                e.code() == ErrorCode::kClockDrift;
        if (relay_side || !replica.group_open()) throw;
        ++counters.cluster_batches_skipped;
      }
      ++counters.cluster_batches_applied;
      applied = batch.position;
    }
    storage::Statement position(replica.connection(), std::string("INSERT OR REPLACE INTO ") +
                                                          kClusterPositionTable + " VALUES (0, ?)");
    position.bind(1, applied).run();
    replica.commit_group();
  } catch (...) {
    if (replica.group_open()) replica.rollback_group();
    throw;
  }
  space.cluster_applied = applied;
  const crdt::VersionVector after = replica.version_vector();
  if (after == before) return;
  fan_out(space, nullptr, number_group(space, before, after), before, after);
}

void Hub::Impl::catch_up_from_cluster(Namespace& space) {
  for (;;) {
    const ClusterRead read = options.read_cluster(space.name, space.cluster_applied);
    if (read.pruned > space.cluster_applied) {
      hydrate_from_cluster(space, read.pruned);
      continue;
    }
    if (read.batches.empty()) return;
    apply_cluster(space, read.batches);
  }
}

void Hub::Impl::hydrate_from_cluster(Namespace& space, std::int64_t pruned) {
  if (!options.fetch_cluster_snapshot)
    throw Error(ErrorCode::kInternal, "the cluster's log of '" + space.name +
                                          "' is pruned past what this relay applied, and the "
                                          "relay has no way to fetch its snapshot");
  settle(space);
  // Its devices were told what the replica about to be replaced holds: they connect again and
  // catch up by version vector, as from any relay.
  for (const auto& peer :
       std::vector<std::shared_ptr<Peer>>(space.peers.begin(), space.peers.end()))
    fail(*peer, WireError::kInternal,
         "the relay is rebuilding its replica of namespace '" + space.name +
             "' from the cluster's snapshot (the log was pruned past it); connect again");
  space.pending.clear();
  space.waiting_for_cluster = false;

  // The new replica is made beside the old one, which stays whole until it is replaced.
  const auto file = replica_file(space);
  const auto dir = std::filesystem::path(options.data_dir) / "snapshots";
  std::filesystem::create_directories(dir);
  const std::string id = random_id();
  const std::string snapshot_path = (dir / (space.name + ".cluster." + id + ".snapshot")).string();
  const std::filesystem::path fresh = file.string() + ".hydrating-" + id;
  struct Cleanup {
    std::vector<std::string> paths;
    ~Cleanup() {
      std::error_code ec;
      for (const auto& p : paths) std::filesystem::remove(p, ec);
    }
  } cleanup{{snapshot_path, fresh.string(), fresh.string() + "-wal", fresh.string() + "-shm",
             fresh.string() + "-journal"}};
  const auto snapshot = options.fetch_cluster_snapshot(space.name, snapshot_path);
  if (!snapshot || snapshot->position < pruned)
    throw Error(ErrorCode::kInternal,
                "the cluster's log of '" + space.name + "' is pruned through position " +
                    std::to_string(pruned) + " but its newest snapshot " +
                    (snapshot ? "ends at " + std::to_string(snapshot->position) : "is missing"));
  {
    auto replica = open_replica_file(space.name, fresh);
    if (!snapshot->manifest.empty() && replica->schema_version() < snapshot->schema_version)
      replica->migrate_to(snapshot->schema_version, storage::parse_manifest(snapshot->manifest));
    replica->install_snapshot(snapshot_path);
    storage::Statement position(
        replica->connection(),
        std::string("INSERT OR REPLACE INTO ") + kClusterPositionTable + " VALUES (0, ?)");
    position.bind(1, snapshot->position).run();
  }  // closed: its WAL is checkpointed into the file
  space.replica.reset();
  for (const char* suffix : {"-wal", "-shm", "-journal"}) {
    std::error_code ec;
    std::filesystem::remove(file.string() + suffix, ec);
  }
  std::error_code renamed;
  std::filesystem::rename(fresh, file, renamed);
  open_replica(space);  // the new file, or the old one if the rename failed
  if (renamed)
    throw Error(ErrorCode::kIo, "cannot replace '" + file.string() + "': " + renamed.message());
  if (space.snapshot) {
    // A download in progress keeps reading the file it opened.
    std::error_code ec;
    std::filesystem::remove(space.snapshot->path, ec);
    space.snapshot.reset();
  }
  space.last_delta = 0;
  ++counters.cluster_hydrations;
}

std::optional<Committed> Hub::Impl::merge_pending(Namespace& space, PendingBatch& pending) {
  Peer& peer = *pending.peer;
  crdt::Changeset& changeset = pending.changeset;
  const std::vector<crdt::TxnTag>& origin_log = pending.origin_log;
  const crdt::VersionVector before = space.replica->version_vector();
  // A batch that skips some of the device's own transactions (an earlier batch was lost or is
  // still on its way) is not merged: merged out of order, two copies' transactions under one
  // site id could interleave. The acknowledgement tells the device where to resend from.
  if (changeset.since.get(peer.site) > before.get(peer.site))
    return Committed{pending.peer, pending.batch, false, before.get(peer.site)};
  // Nothing is merged on a claim the relay cannot check: a device speaks only for its own site.
  if (auto why = transport::check_device_changes(changeset, origin_log, peer.site, before,
                                                 peer.untagged_through)) {
    fail(peer, WireError::kBadChangeset, *why);
    return std::nullopt;
  }
  changeset = transport::without_held_own(std::move(changeset), peer.site, before.get(peer.site));
  // A copy that got its own transactions in first was told apart by the live-copy check
  // (commit_pending); this catches one that pushes a history the relay's origin log
  // contradicts.
  if (!origin_log.empty()) {
    const auto logged = origin_tags(peer, origin_log.front().seq, origin_log.size());
    for (const crdt::TxnTag& t : origin_log) {
      auto it = logged.find(t.seq);
      if (it != logged.end() && it->second != t.tag) {
        rekey(peer, t.seq - 1);
        return std::nullopt;
      }
    }
  }
  storage::ApplyResult result;
  try {
    result = space.replica->merge_in_group(changeset, storage::OriginTxns{peer.site, origin_log});
  } catch (const Error& e) {
    // The relay's disk or state is not the device's fault: it may send the batch again.
    const bool relay_side = e.code() == ErrorCode::kIo || e.code() == ErrorCode::kBusy ||
                            e.code() == ErrorCode::kState || e.code() == ErrorCode::kInternal;
    if (relay_side && !space.replica->group_open()) throw;  // the group is lost: fails them all
    fail(peer, relay_side ? WireError::kInternal : WireError::kBadChangeset, e.what());
    return std::nullopt;
  }
  counters.changes_merged += result.applied;
  // A device at the relay's head stays there: this merge's delta is its own changes.
  if (!peer.at_head) peer.known.merge(changeset.until);
  peer.confirmed_own = std::max(peer.confirmed_own, changeset.until.get(peer.site));
  for (const crdt::TxnTag& t : origin_log) peer.own_history[t.seq] = t.tag;
  // Only what the relay does not hold yet can matter to shared_prefix().
  peer.own_history.erase(peer.own_history.begin(),
                         peer.own_history.upper_bound(peer.confirmed_own));
  return Committed{pending.peer, pending.batch, true, before.get(peer.site)};
}

void Hub::Impl::fan_out(Namespace& space, const Peer* from, GroupNumber number,
                        const crdt::VersionVector& before, const crdt::VersionVector& after) {
  // The relay's group commits of a namespace are totally ordered, and a device at the relay's
  // head held everything it held before this one: the same delta, extracted and encoded once,
  // serves every such device, with no vector compared (a namespace collects a site per device
  // that ever wrote, so a comparison per device per merge grows with both). A device still
  // catching up gets its own (continue_catch_up); one behind for another reason, its own here.
  std::optional<HeadDelta> delta;
  for (const auto& other :
       std::vector<std::shared_ptr<Peer>>(space.peers.begin(), space.peers.end())) {
    if (other.get() == from || other->phase != Peer::Phase::kLive || other->catching_up) continue;
    if (other->at_head) {
      if (!delta) delta = head_delta(space, number, before);
      // Rows or not: a device must also learn when the relay's vector moves. Should the delta
      // not reach it whole in one frame, the device leaves the head with its vector.
      send_head_delta(*other, *delta);
      continue;
    }
    const crdt::Changeset own = space.replica->changes_since(other->known);
    if (!own.rows.empty() || !other->known.dominates(own.until))
      send_changes(*other, own, std::make_shared<const std::string>(crdt::encode_changeset(own)));
    if (other->phase == Peer::Phase::kLive && !other->catching_up && other->known.dominates(after))
      other->at_head = true;
  }
}

GroupNumber Hub::Impl::number_group(Namespace& space, const crdt::VersionVector& before,
                                    const crdt::VersionVector& after) {
  // Compared once per group, not per device.
  GroupNumber number;
  if (space.last_delta != 0 && space.last_delta_until == before) number.previous = space.last_delta;
  number.group = ++space.last_delta;
  space.last_delta_until = after;
  return number;
}

Hub::Impl::HeadDelta Hub::Impl::head_delta(Namespace& space, GroupNumber number,
                                           const crdt::VersionVector& before) {
  HeadDelta delta;
  delta.number = number;
  delta.changeset = space.replica->changes_since(before);
  delta.whole = std::make_shared<const std::string>(crdt::encode_changeset(delta.changeset));
  delta.whole_frame = transport::encode_frame(transport::Delta{number.group, 0, *delta.whole});
  if (number.previous != 0) {
    // What a device that got the previous group's delta needs: no since (it is that one's
    // until) and only the entries of until that moved. The same rows, encoded with those
    // vectors in place of the whole ones (not a copy of the rows).
    crdt::Changeset& c = delta.changeset;
    crdt::VersionVector since = std::move(c.since), until = std::move(c.until);
    c.since = crdt::VersionVector();
    c.until = crdt::VersionVector();
    for (const auto& [site, seq] : until.entries())
      if (seq > since.get(site)) c.until.advance(site, seq);
    delta.following_frame = transport::encode_frame(
        transport::Delta{number.group, number.previous, crdt::encode_changeset(c)});
    c.since = std::move(since);
    c.until = std::move(until);
  }
  return delta;
}

void Hub::Impl::send_head_delta(Peer& peer, const HeadDelta& delta) {
  if (peer.protocol < 5 || delta.whole->size() > options.limits.piece_bytes || expired(peer))
    return send_changes(peer, delta.changeset, delta.whole);
  counters.changes_sent += delta.changeset.change_count();
  const GroupNumber& n = delta.number;
  if (n.previous != 0 && peer.delta_group == n.previous) {
    ++counters.following_deltas;
    send_encoded(peer, delta.following_frame);
  } else {
    send_encoded(peer, delta.whole_frame);
  }
  peer.delta_group = n.group;
}

bool Hub::Impl::spend(Peer& peer, Bucket TokenBudget::*which, double amount, double capacity,
                      double rate, const std::string& what, bool debt) {
  if (!options.now_seconds) return true;
  Bucket& bucket = tokens[peer.token].*which;
  if (bucket.take(amount, capacity, rate, options.now_seconds(), debt)) return true;
  fail(peer, WireError::kRateLimited,
       "over this token's budget of " + what + "; reconnect after a back-off");
  return false;
}

bool Hub::Impl::owes(TokenBudget& b, double now) const {
  const HubLimits& l = options.limits;
  auto below = [now](Bucket& bucket, double capacity, double rate) {
    return bucket.refill(capacity, rate, now) < capacity;
  };
  return below(b.changes, static_cast<double>(l.max_batch_changes), l.max_changes_per_second) ||
         below(b.bytes, static_cast<double>(l.max_frame_bytes), l.max_bytes_per_second) ||
         below(b.digests, kDigestBurst, l.max_digests_per_minute / 60) ||
         below(b.hellos, kHelloBurst, l.max_hellos_per_minute / 60) ||
         below(b.catch_up, kCatchUpBurst, l.max_catch_up_bytes_per_second) ||
         (b.snapshots_capacity > 0 &&
          below(b.snapshots, b.snapshots_capacity, l.max_catch_up_bytes_per_second));
}

TokenBudget& Hub::Impl::budget_of(const std::string& token) {
  if (options.now_seconds && tokens.size() >= sweep_tokens_at && !tokens.count(token)) {
    const double now = options.now_seconds();
    for (auto it = tokens.begin(); it != tokens.end();)
      it = it->second.connections == 0 && !owes(it->second, now) ? tokens.erase(it) : std::next(it);
    // Amortized: the next sweep waits until as many entries again have come.
    sweep_tokens_at = std::max<std::size_t>(64, 2 * tokens.size());
  }
  return tokens[token];
}

void Hub::Impl::on_close(const std::shared_ptr<Peer>& peer) {
  if (!peers.count(peer)) return;
  if (peer->space) peer->space->peers.erase(peer);
  take_pieces(*peer);
  peer->outgoing.reset();
  if (!peer->token.empty()) {
    // A token's budgets outlive its connections while it owes anything: reconnecting must not
    // refill them. Once every bucket is full again the entry goes.
    auto it = tokens.find(peer->token);
    if (it != tokens.end() && --it->second.connections == 0 &&
        (!options.now_seconds || !owes(it->second, options.now_seconds())))
      tokens.erase(it);
  }
  peer->phase = Peer::Phase::kClosed;
  peers.erase(peer);
}

void LatencyHistogram::observe(double seconds) {
  std::size_t bucket = 0;
  while (bucket < kBounds.size() && seconds > kBounds[bucket]) ++bucket;
  ++counts[bucket];
  ++count;
  sum += seconds;
}

Hub::Hub(HubOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  // Snapshots of an earlier run are stale, and no download of them can be in progress.
  if (!impl_->options.data_dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(std::filesystem::path(impl_->options.data_dir) / "snapshots",
                                ignored);
  }
}

// Like a relay killed between reading frames and their commit: batches awaiting their group
// commit are dropped unacknowledged (their devices send them again). shutdown() commits them.
// A commit running on the offload thread is waited for (it may be durable, and is not
// acknowledged); one not yet started is rolled back.
Hub::~Hub() {
  impl_->stop();
  for (auto& [name, space] : impl_->spaces)
    if (space->committing && space->committing->job->abandon()) space->replica->rollback_group();
}

void Hub::accept(std::shared_ptr<transport::Connection> connection, const std::string& ns) {
  auto peer = std::make_shared<Peer>();
  peer->id = impl_->next_peer_id++;
  peer->connection = std::move(connection);
  peer->ns = ns;
  impl_->peers.insert(peer);
  ++impl_->counters.connections_accepted;
  std::weak_ptr<Peer> weak = peer;
  Impl* impl = impl_.get();
  peer->connection->set_handlers(
      transport::Connection::Handlers{[impl, weak](std::string_view bytes) {
                                        if (auto p = weak.lock()) impl->on_frame(p, bytes);
                                      },
                                      [impl, weak](const std::string&) {
                                        if (auto p = weak.lock()) impl->on_close(p);
                                      },
                                      [impl, weak] {
                                        if (auto p = weak.lock())
                                          impl->continue_catch_up(*p, false);
                                      }});
  if (impl_->stopping) impl_->fail(*peer, WireError::kShuttingDown, "the relay is stopping");
}

void Hub::shutdown() {
  // What was received is merged and acknowledged before the devices are told.
  if (!impl_->stopping)
    for (auto& [name, space] : impl_->spaces) impl_->commit_now(*space);
  impl_->stop();
}

void Hub::Impl::stop() {
  stopping = true;
  for (const auto& peer : std::vector<std::shared_ptr<Peer>>(peers.begin(), peers.end())) {
    fail(*peer, WireError::kShuttingDown, "the relay is stopping");
    on_close(peer);
    peer->connection->set_handlers({});  // the hub may be gone when the close completes
  }
}

storage::Replica& Hub::replica(const std::string& ns) {
  Namespace& space = impl_->space(ns);
  impl_->settle(space);
  return *space.replica;
}

std::optional<Hub::SnapshotRefusal> Hub::admit_snapshot(const std::string& token,
                                                        std::uint64_t bytes,
                                                        std::uint64_t file_bytes) {
  if (!impl_->options.now_seconds) return std::nullopt;
  const double rate = impl_->options.limits.max_catch_up_bytes_per_second;
  const double capacity = std::max(kCatchUpBurst, 4 * static_cast<double>(file_bytes));
  // The entry stays while the token owes anything (as for its connections' budgets), and is
  // swept once it does not: devices renew their tokens, so a relay that runs for months sees
  // many, and each download must not leave an entry behind for good.
  TokenBudget& budget = impl_->budget_of(token);
  budget.snapshots_capacity = capacity;
  Bucket& bucket = budget.snapshots;
  if (bucket.take(static_cast<double>(bytes), capacity, rate, impl_->options.now_seconds()))
    return std::nullopt;
  const double wait = rate > 0 ? (static_cast<double>(bytes) - bucket.level) / rate : 0;
  const auto seconds = static_cast<std::uint64_t>(std::max(1.0, std::ceil(wait)));
  return SnapshotRefusal{"over this token's budget of snapshot bytes (" +
                             std::to_string(static_cast<std::uint64_t>(rate)) +
                             " per second after four snapshots at once); retry in " +
                             std::to_string(seconds) + " s",
                         seconds};
}

std::optional<std::int64_t> Hub::apply_from_cluster(const std::string& ns,
                                                    const std::vector<ClusterBatch>& batches,
                                                    std::int64_t pruned) {
  if (impl_->spaces.find(ns) == impl_->spaces.end()) return std::nullopt;
  Namespace& space = impl_->space(ns);  // reopens its replica if a hydration could not
  if (space.committing && pruned <= space.cluster_applied) {
    // A group's commit is in flight (on the disk thread, waiting for the log): the batches are
    // merged when it is settled, rather than the hub's thread waiting for it here.
    std::int64_t last = space.cluster_waiting.empty() ? space.cluster_applied
                                                      : space.cluster_waiting.back().position;
    for (const ClusterBatch& batch : batches)
      if (batch.position > last) {
        space.cluster_waiting.push_back(batch);
        last = batch.position;
      }
    return last;
  }
  if (pruned > space.cluster_applied) impl_->hydrate_from_cluster(space, pruned);
  impl_->apply_cluster(space, batches);
  return space.cluster_applied;
}

ClusterSnapshot Hub::cluster_snapshot(const std::string& ns, const std::string& path) {
  Namespace& space = impl_->space(ns);
  // What devices were told is merged is in the snapshot too.
  impl_->commit_now(space);
  storage::Replica& replica = *space.replica;
  replica.write_snapshot(path, /*encrypted=*/false, /*with_origin_log=*/true);
  return ClusterSnapshot{space.cluster_applied, replica.schema_version(),
                         storage::format_manifest(replica.schema_manifest())};
}

std::map<std::string, std::int64_t> Hub::cluster_positions(bool with_devices_only) const {
  std::map<std::string, std::int64_t> out;
  for (const auto& [name, space] : impl_->spaces)
    if (!with_devices_only || !space->peers.empty()) out[name] = space->cluster_applied;
  return out;
}

SnapshotFile Hub::snapshot(const std::string& ns, double max_age_seconds) {
  Namespace& space = impl_->space(ns);
  const auto now = std::chrono::steady_clock::now();
  if (space.snapshot &&
      std::chrono::duration<double>(now - space.snapshot_at).count() < max_age_seconds)
    return *space.snapshot;
  // What devices were told is merged is in the snapshot too.
  impl_->commit_now(space);
  const std::filesystem::path dir = std::filesystem::path(impl_->options.data_dir) / "snapshots";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(ErrorCode::kIo, "cannot create '" + dir.string() + "': " + ec.message());
  const std::string id = random_id();
  SnapshotFile file{(dir / (ns + "." + id + ".snapshot")).string(), "\"" + id + "\""};
  space.replica->write_snapshot(file.path,
                                impl_->options.replica_options.encryption_key.has_value());
  // A download of the previous one keeps reading the file it opened.
  if (space.snapshot) std::filesystem::remove(space.snapshot->path, ec);
  space.snapshot = file;
  space.snapshot_at = now;
  ++impl_->counters.snapshots_written;
  return file;
}

std::size_t Hub::token_budget_count() const { return impl_->tokens.size(); }

std::size_t Hub::connection_count() const { return impl_->peers.size(); }
std::size_t Hub::commits_in_flight() const {
  std::size_t n = 0;
  for (const auto& [name, space] : impl_->spaces) n += space->committing.has_value();
  return n;
}
std::size_t Hub::batches_waiting_for_cluster() const {
  std::size_t n = 0;
  for (const auto& [name, space] : impl_->spaces)
    if (space->waiting_for_cluster) n += space->pending.size();
  return n;
}
std::size_t Hub::namespace_count() const { return impl_->spaces.size(); }

std::map<std::uint64_t, std::size_t> Hub::devices_by_schema_version() const {
  std::map<std::uint64_t, std::size_t> out;
  for (const auto& peer : impl_->peers)
    if (peer->phase == Peer::Phase::kLive) ++out[peer->schema_version];
  return out;
}
const HubCounters& Hub::counters() const { return impl_->counters; }

}  // namespace lattice::relay
