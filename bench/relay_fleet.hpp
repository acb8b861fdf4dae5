#pragma once
// The two ends of lattice-relay-bench's load: a real `lattice-relay serve` child on 127.0.0.1
// (TLS with a self-signed certificate made by the openssl CLI, killed on every path), and a
// Fleet of devices in this process that connect to it over our own WebSocket/TLS client
// (transport::connect_websocket), speak the protocol's frames directly and time each write
// from its writer to every other device. One clock (steady_clock, this process) stamps both
// ends. Writers run on one io_context thread, the other devices on a second.

#include <sqlite3.h>
#include <sys/types.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/support.hpp"
#include "crdt/changeset.hpp"
#include "crdt/version_vector.hpp"
#include "storage/replica.hpp"
#include "transport/connection.hpp"
#include "transport/frame.hpp"

namespace lattice::bench {

namespace net = boost::asio;
using std::chrono::milliseconds;

// The namespace every device of the run writes to, and its one replicated table.
inline constexpr const char* kNamespace = "bench";
inline constexpr const char* kSchema =
    "CREATE TABLE item(id TEXT PRIMARY KEY, sent INTEGER, writer INTEGER, body TEXT);\n"
    "SELECT lattice_replicate('item');\n";
inline constexpr int kChangesPerRow = 3;  // sent, writer, body
inline constexpr double kGoalP99Ms = 50;

// --- Processes ------------------------------------------------------------------------------

// A handler for SIGINT, SIGTERM and SIGHUP: kills the relays still running, then dies of the
// signal (async-signal-safe).
void on_fatal_signal(int sig);

// What every relay of the run shares: certificate, key file, schema, one token.
struct Setup {
  fs::path dir;
  std::string relay;
  std::string token;
  std::vector<std::string> relay_flags;  // given to every `lattice-relay serve` (--relay-threads)
  fs::path cert() const { return dir / "cert.pem"; }
  fs::path key() const { return dir / "key.pem"; }
  fs::path keys() const { return dir / "relay.keys"; }
  fs::path schema() const { return dir / "schema.sql"; }
};

// Makes in `dir` the certificate and key (openssl req), the relay's key file, the schema, and
// a read-write token for kNamespace (`relay token`). Throws when a program fails.
Setup make_setup(const fs::path& dir, const std::string& relay);

// A `lattice-relay serve` child on 127.0.0.1, port 0. SIGTERM then SIGKILL when destroyed.
class RelayProcess {
 public:
  // Starts the relay on the data directory `data` with `extra` arguments, over TLS or plain,
  // and waits (up to 20 s) until it prints the port it listens on. Throws when it does not.
  RelayProcess(const Setup& setup, const fs::path& data, std::vector<std::string> extra,
               bool tls = true);
  ~RelayProcess() { stop(); }
  RelayProcess(const RelayProcess&) = delete;
  RelayProcess& operator=(const RelayProcess&) = delete;

  // SIGTERM, up to 15 s for a clean exit, then SIGKILL.
  void stop();

  std::string pid() const { return std::to_string(pid_); }
  int port() const { return port_; }
  std::string url() const {
    return (tls_ ? "wss://127.0.0.1:" : "ws://127.0.0.1:") + std::to_string(port_) + "/" +
           std::string(kNamespace);
  }
  std::string err() const { return read_file(err_); }
  long long rss_kib() const { return status_kib(pid(), "VmRSS"); }
  long long hwm_kib() const { return status_kib(pid(), "VmHWM"); }

 private:
  static inline int starts_ = 0;  // each relay writes its own output files
  bool tls_ = true;
  fs::path out_, err_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool reaped_ = false;
};

// A PostgreSQL 15 server for a cluster of relays (docs/cluster.md): initdb in a new temporary
// directory (removed when it is destroyed), then the
// server in the foreground on 127.0.0.1 and a free port, fsync and synchronous_commit on (its
// defaults), as the user postgres when this process is root. It dies with the bench
// (PR_SET_PDEATHSIG); stopped (immediate shutdown) when destroyed. Throws when it cannot start.
class PostgresProcess {
 public:
  PostgresProcess();
  ~PostgresProcess();
  PostgresProcess(const PostgresProcess&) = delete;
  PostgresProcess& operator=(const PostgresProcess&) = delete;

  // A libpq connection string for --cluster-db.
  std::string conninfo() const;
  // The server's processes now: the postmaster and its children (the relays' backends among
  // them), for their CPU.
  std::vector<std::string> pids() const;

 private:
  fs::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// --- Devices --------------------------------------------------------------------------------

// A device's changes frame, with the origin log that lists every own transaction it covers
// (the relay counts no other: docs/protocol.md, "What a peer may claim").
transport::Changes changes_frame(storage::Replica& replica, std::uint64_t batch,
                                 const crdt::Changeset& changeset);

// One io_context and the thread that runs it.
struct Lane {
  net::io_context io{1};
  net::executor_work_guard<net::io_context::executor_type> guard = net::make_work_guard(io);
  std::thread thread;
  ~Lane() { stop(); }
  void start() {
    thread = std::thread([this] { io.run(); });
  }
  void stop() {
    guard.reset();
    io.stop();
    if (thread.joinable()) thread.join();
  }
  // Stops `lane` when it goes out of scope: declared after the state its handlers use, while
  // the lane itself (its io_context) is declared before, so that connections die before it.
  struct StopOnExit {
    Lane& lane;
    ~StopOnExit() { lane.stop(); }
  };
  // Runs `fn` on the lane's thread and waits for it.
  template <class Fn>
  auto call(Fn fn) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto result = task.get_future();
    net::post(io, [&task] { task(); });
    return result.get();
  }
};

// What one lane's devices measured; touched only on the lane's thread.
struct LaneStats {
  std::vector<double> latency_ms;  // deliveries of writes sent inside the window
  std::vector<double> ack_ms;      // writes inside the window, send to ack
  std::uint64_t deliveries = 0;    // inside the window
  std::uint64_t frames = 0;
  std::uint64_t errors = 0;
  std::uint64_t closed = 0;
  std::string first_error;
};

// The measured stretch of a load, in now_ns(): writes sent inside it count.
struct Window {
  std::atomic<std::int64_t> start{INT64_MAX};
  std::atomic<std::int64_t> end{INT64_MAX};
  bool contains(std::int64_t sent) const { return sent >= start.load() && sent < end.load(); }
};

class Fleet;

// One device of a Fleet: its connection and, for a writer, the replica its writes go to.
struct Device {
  Fleet* fleet = nullptr;
  Lane* lane = nullptr;
  LaneStats* stats = nullptr;
  int index = 0;
  std::shared_ptr<transport::Connection> connection;
  bool welcomed = false;
  bool caught_up = false;  // the relay's first changes frame arrived
  // Writers only.
  std::unique_ptr<storage::Replica> replica;
  sqlite3_stmt* insert = nullptr;
  crdt::VersionVector sent;  // what this writer has sent
  std::uint64_t next_batch = 1;
  std::uint64_t next_row = 0;
  std::map<std::uint64_t, std::vector<std::int64_t>> in_flight;  // batch -> its writes' send times
  std::vector<std::int64_t> unsent;  // writes waiting for the window (--writer-window)
};

// A set of devices connected to one relay, spread over two lanes: writers on the first, the
// others on the second.
class Fleet {
 public:
  // Without `hello`, devices stop after the WebSocket handshake: a bare TLS connection.
  Fleet(const Setup& setup, const RelayProcess& relay, int devices, int writers,
        std::size_t writer_window, bool hello = true);
  // Devices spread over `relays`, device i on relay i modulo their number (relays of one
  // cluster): the writers too, so that most deliveries cross from one relay to another.
  Fleet(const Setup& setup, std::vector<const RelayProcess*> relays, int devices, int writers,
        std::size_t writer_window, bool hello = true);
  ~Fleet();

  // Connects every device (at most 64 handshakes at once per lane) and sends its hello; waits
  // until each one has its welcome and first changes frame. Throws after `timeout`.
  double connect_all(milliseconds timeout);

  // Writes at `writes_per_second` in all, round robin over the writers, for `seconds`; then
  // waits for the deliveries to drain (at most `drain`). Returns the step's figures.
  Json run_load(Json json, double writes_per_second, double seconds, milliseconds drain,
                const std::string& relay_pid);
  // The same, with the CPU of every process in `server_pids` summed as the relay's (several
  // relays and their PostgreSQL).
  Json run_load(Json json, double writes_per_second, double seconds, milliseconds drain,
                const std::vector<std::string>& server_pids);

  double last_p99() const { return last_p99_; }
  // Of the last run_load: the writes' send-to-acknowledgement p99, and how many writes had no
  // acknowledgement when it returned.
  double last_ack_p99() const { return last_ack_p99_; }
  std::uint64_t last_unacked() const { return last_unacked_; }

 private:
  void start_connecting(Lane& lane, std::vector<Device*> devices);
  void connect_next(const std::shared_ptr<std::vector<Device*>>& queue);
  void note_failure(const std::string& what);
  std::string first_failure();
  void on_frame(Device& device, std::string_view bytes);
  // One write on a writer: a row stamped with its send time, then (window permitting) a batch
  // with every change of this writer the relay has not been sent.
  void write(Device& device, std::int64_t sent_ns);
  void push(Device& device);

  const Setup& setup_;
  std::vector<const RelayProcess*> relays_;
  std::size_t writer_window_;
  bool hello_;
  std::string fingerprint_;
  Lane writers_lane_, readers_lane_;
  LaneStats writer_stats_, reader_stats_;
  std::vector<std::unique_ptr<Device>> devices_;
  int writers_ = 0;
  std::atomic<std::size_t> ready_{0};
  std::atomic<int> failed_{0};
  std::mutex failure_mutex_;
  std::string failure_;
  Window window_;
  std::uint64_t issued_ = 0;    // writers' lane only
  std::vector<double> lag_ms_;  // writers' lane only
  double last_p99_ = NAN;
  std::uint64_t last_missing_ = 0;
  double last_ack_p99_ = NAN;
  std::uint64_t last_unacked_ = 0;
};

}  // namespace lattice::bench
