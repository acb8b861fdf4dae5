// lattice-relay-bench: the relay under load (issue 3's performance goals, docs/benchmarks.md).
//
// Starts a real `lattice-relay serve` on 127.0.0.1 (port 0, TLS with a self-signed certificate
// made by the openssl CLI, a fresh data directory) and plays the devices in this process over
// our own WebSocket/TLS client (transport::connect_websocket). The devices of the fan-out
// scenarios speak the protocol's frames directly and keep no replica of what they receive:
// writers hold an in-memory storage::Replica, so what they send is a real changeset that the
// relay merges; every device decodes every changes frame it receives (frame and changeset) and
// reads the send time that the writer put in the row. One clock (steady_clock, this process)
// stamps both ends. Writers run on one io_context thread, the other devices on a second.
//
// Scenarios (--scenario NAME, default all), each bounded in time, print one JSON line each:
//   fanout_10, fanout_100, fanout_1000   latency from a write to its arrival on every other
//                                       device, p50/p99/max, at a fixed write rate
//   capacity_100, capacity_1000         the write rate raised step by step until p99 > 50 ms
//   merge                               one device pushes batches of 50,000 changes
//   idle_memory                         relay RSS per idle TLS connection
//   catchup                             a new device receives a namespace of 1,000,000 changes
//                                       (engine::SyncSession into a replica file), against a
//                                       copy of the relay's database file
//   vector_cost                         the same load with 10 and with 500 writing sites
// The relay process is killed on every path (RAII, a signal handler, and PR_SET_PDEATHSIG).

#include <signal.h>
#include <sqlite3.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "engine/sync/sync_session.hpp"
#include "storage/replica.hpp"
#include "transport/frame.hpp"
#include "transport/websocket_client.hpp"

#ifndef LATTICE_SOURCE_DIR
#define LATTICE_SOURCE_DIR ""
#endif
#ifndef LATTICE_BUILD_TYPE
#define LATTICE_BUILD_TYPE "unknown"
#endif
#ifndef LATTICE_RELAY_PATH
#define LATTICE_RELAY_PATH ""
#endif
#if defined(__clang__)
#define LATTICE_BENCH_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define LATTICE_BENCH_COMPILER "g++ " __VERSION__
#else
#define LATTICE_BENCH_COMPILER "unknown"
#endif

namespace {

namespace fs = std::filesystem;
namespace net = boost::asio;
using namespace lattice;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kUsage =
    R"(usage: lattice-relay-bench [--quick] [--scenario NAME]... [--relay PATH] [--dir DIR]
                           [--tmpfs] [--writer-window N] [--seconds S]
  --quick            a smoke run: small counts, 2-second runs
  --scenario NAME    fanout_10, fanout_100, fanout_1000, capacity_100, capacity_1000, merge,
                     idle_memory, catchup, vector_cost (repeatable; default: all)
  --relay PATH       the lattice-relay executable (default: the one built beside this program)
  --dir DIR          where to make the temporary directory (default $TMPDIR or /tmp)
  --tmpfs            put the relay's data directory in /dev/shm: fsync costs nothing there, to
                     separate the relay's CPU cost from the disk's sync latency
  --writer-window N  at most N unacknowledged batches per writer; writes made meanwhile go
                     together in the next batch (default 0: one batch per write, at once)
  --seconds S        measured seconds per fan-out run or capacity step (default 10; quick 2)
Prints one JSON object per scenario on stdout, progress on stderr.
)";

constexpr const char* kNamespace = "bench";
constexpr const char* kSchema =
    "CREATE TABLE item(id TEXT PRIMARY KEY, sent INTEGER, writer INTEGER, body TEXT);\n"
    "SELECT lattice_replicate('item');\n";
constexpr int kChangesPerRow = 3;  // sent, writer, body
constexpr double kGoalP99Ms = 50;

struct Options {
  bool quick = false;
  std::vector<std::string> scenarios;
  std::string relay;
  std::string dir;
  bool tmpfs = false;
  std::size_t writer_window = 0;
  double seconds = 10;
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

void progress(const std::string& line) { std::fprintf(stderr, "relay-bench: %s\n", line.c_str()); }

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The first line a shell command prints, or "" when it fails.
std::string command_output(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "";
  char buffer[4096];
  std::string out;
  if (std::fgets(buffer, sizeof buffer, pipe.get())) out = buffer;
  return trim(out);
}

std::string fixed(double value, int digits = 2) {
  if (!std::isfinite(value)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

// One JSON object, fields in the order they are added.
class Json {
 public:
  Json& num(const std::string& key, double value, int digits = 2) {
    return raw(key, fixed(value, digits));
  }
  Json& integer(const std::string& key, std::int64_t value) {
    return raw(key, std::to_string(value));
  }
  Json& str(const std::string& key, const std::string& value) {
    return raw(key, crdt::json_quote(value));
  }
  Json& boolean(const std::string& key, bool value) { return raw(key, value ? "true" : "false"); }
  Json& raw(const std::string& key, const std::string& value) {
    text_ += (text_.empty() ? "{" : ", ") + crdt::json_quote(key) + ": " + value;
    return *this;
  }
  std::string text() const { return text_.empty() ? "{}" : text_ + "}"; }

 private:
  std::string text_;
};

// --- Processes, /proc ---------------------------------------------------------------------

// Children to kill if this process is interrupted (async-signal-safe access only).
constexpr int kMaxChildren = 8;
volatile sig_atomic_t g_children[kMaxChildren] = {};

void on_fatal_signal(int sig) {
  for (int i = 0; i < kMaxChildren; ++i)
    if (g_children[i] > 0) ::kill(static_cast<pid_t>(g_children[i]), SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

struct CpuTicks {
  long long utime = 0, stime = 0;
  long long total() const { return utime + stime; }
};

CpuTicks cpu_ticks(const std::string& pid) {
  const std::string stat = read_file("/proc/" + pid + "/stat");
  CpuTicks ticks;
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return ticks;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  // After the command: state is field 3; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) ticks.utime = std::stoll(field);
    if (i == 15) ticks.stime = std::stoll(field);
  }
  return ticks;
}

// A field of /proc/PID/status in KiB (VmRSS, VmHWM), or -1.
long long status_kib(const std::string& pid, const std::string& key) {
  std::istringstream lines(read_file("/proc/" + pid + "/status"));
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  return -1;
}

std::string loadavg() {
  std::istringstream in(read_file("/proc/loadavg"));
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Nanoseconds the threads of a process spent waiting for a core while runnable (the second
// field of /proc/PID/task/TID/schedstat), summed over its threads.
double runqueue_wait_s(const std::string& pid) {
  double total = 0;
  std::error_code ec;
  for (const auto& task : fs::directory_iterator("/proc/" + pid + "/task", ec)) {
    std::istringstream in(read_file(task.path() / "schedstat"));
    double run = 0, wait = 0;
    if (in >> run >> wait) total += wait / 1e9;
  }
  return total;
}

// CPU used by a process over a stretch of wall time, as a percentage of one core, and the time
// its threads were runnable but waiting for a core (the machine is shared).
class CpuMeter {
 public:
  explicit CpuMeter(std::string pid) : pid_(std::move(pid)) { restart(); }
  void restart() {
    start_ = cpu_ticks(pid_);
    wait_ = runqueue_wait_s(pid_);
    wall_ = Clock::now();
  }
  // Seconds of waiting for a core, as a percentage of the wall time since the start.
  double wait_percent() const {
    const double wall = std::chrono::duration<double>(Clock::now() - wall_).count();
    return wall > 0 ? 100.0 * (runqueue_wait_s(pid_) - wait_) / wall : 0;
  }
  double percent() const {
    const double wall = std::chrono::duration<double>(Clock::now() - wall_).count();
    return wall > 0 ? 100.0 * seconds() / wall : 0;
  }
  // CPU seconds used since the start.
  double seconds() const {
    const double ticks = static_cast<double>(cpu_ticks(pid_).total() - start_.total());
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

 private:
  std::string pid_;
  CpuTicks start_;
  double wait_ = 0;
  Clock::time_point wall_;
};

// A temporary directory, removed with everything in it when the run ends.
class TempDir {
 public:
  explicit TempDir(const std::string& parent) {
    std::string pattern = (fs::path(parent) / "lattice-relay-bench-XXXXXX").string();
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error("cannot create a temporary directory in '" + parent + "'");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs a program to completion with its output in `out_file`; returns its exit status.
int run_program(std::vector<std::string> argv, const fs::path& out_file) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (!freopen(out_file.c_str(), "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(126);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// What every relay of the run shares: certificate, key file, schema, one token.
struct Setup {
  fs::path dir;
  std::string relay;
  std::string token;
  fs::path cert() const { return dir / "cert.pem"; }
  fs::path key() const { return dir / "key.pem"; }
  fs::path keys() const { return dir / "relay.keys"; }
  fs::path schema() const { return dir / "schema.sql"; }
};

Setup make_setup(const fs::path& dir, const std::string& relay) {
  Setup setup{dir, relay, ""};
  if (run_program(
          {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days",
           "1", "-keyout", setup.key().string(), "-out", setup.cert().string()},
          dir / "openssl.out") != 0)
    throw std::runtime_error("openssl req failed: cannot make the test certificate");
  std::ofstream(setup.keys()) << "bench 0123456789abcdef0123456789abcdef0123456789abcdef\n";
  std::filesystem::permissions(
      setup.keys(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  std::ofstream(setup.schema()) << kSchema;
  if (run_program({relay, "token", "--key-file", setup.keys().string(), "--ns", kNamespace,
                   "--rights", "read,write", "--ttl", "2h"},
                  dir / "token.out") != 0)
    throw std::runtime_error("lattice-relay token failed");
  setup.token = trim(read_file(dir / "token.out"));
  return setup;
}

// A `lattice-relay serve` child on 127.0.0.1, port 0. SIGTERM then SIGKILL when destroyed.
class RelayProcess {
 public:
  RelayProcess(const Setup& setup, const fs::path& data, std::vector<std::string> extra,
               bool tls = true)
      : tls_(tls),
        out_(setup.dir / ("relay" + std::to_string(++starts_) + ".out")),
        err_(setup.dir / ("relay" + std::to_string(starts_) + ".err")) {
    std::vector<std::string> argv = {setup.relay,
                                     "serve",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--data",
                                     data.string(),
                                     "--key-file",
                                     setup.keys().string(),
                                     "--schema",
                                     setup.schema().string(),
                                     "--max-connections-per-token",
                                     "100000"};
    // Every device of the load comes from 127.0.0.1 with one token: the per-source and
    // per-token limits that protect a relay from one address would refuse most of them.
    for (const char* limit : {"--max-connects-per-source-per-second",
                              "--max-unauthenticated-per-source", "--max-hellos-per-minute"}) {
      argv.push_back(limit);
      argv.push_back("1000000");
    }
    if (tls) {
      for (const std::string& arg : {std::string("--tls-cert"), setup.cert().string(),
                                     std::string("--tls-key"), setup.key().string()})
        argv.push_back(arg);
    } else {
      argv.push_back("--insecure");
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with the bench, however it ends
      if (getppid() != parent) _exit(125);
      if (!freopen(out_.c_str(), "w", stdout) || !freopen(err_.c_str(), "w", stderr)) _exit(126);
      execv(args[0], args.data());
      _exit(127);
    }
    for (auto& slot : g_children)
      if (slot == 0) {
        slot = pid_;
        break;
      }
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline) {
      const std::string out = read_file(out_);
      const auto at = out.find("listening on ");
      if (at != std::string::npos && out.find('\n', at) != std::string::npos) {
        const std::string line = out.substr(at, out.find('\n', at) - at);
        port_ = std::stoi(line.substr(line.rfind(':') + 1));
        return;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        throw std::runtime_error("lattice-relay exited at start: " + read_file(err_));
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    throw std::runtime_error("lattice-relay did not print 'listening on' within 20 s");
  }
  ~RelayProcess() { stop(); }
  RelayProcess(const RelayProcess&) = delete;
  RelayProcess& operator=(const RelayProcess&) = delete;

  // SIGTERM, up to 15 s for a clean exit, then SIGKILL.
  void stop() {
    if (reaped_ || pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    const auto deadline = Clock::now() + std::chrono::seconds(15);
    while (waitpid(pid_, &status, WNOHANG) != pid_) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    reaped_ = true;
    for (auto& slot : g_children)
      if (slot == pid_) slot = 0;
  }

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

// --- Latency statistics -------------------------------------------------------------------

struct Percentiles {
  double p50 = NAN, p99 = NAN, max = NAN;
};

// Percentiles over `samples` plus `missing` samples counted as infinitely late.
Percentiles percentiles(std::vector<double> samples, std::size_t missing = 0) {
  Percentiles p;
  const std::size_t n = samples.size() + missing;
  if (n == 0) return p;
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const std::size_t rank = std::min(n - 1, static_cast<std::size_t>(std::ceil(q * n)) - 1);
    return rank < samples.size() ? samples[rank] : INFINITY;
  };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.max = missing ? INFINITY : samples.back();
  return p;
}

std::string percentiles_json(const Percentiles& p) {
  return Json().num("p50", p.p50, 3).num("p99", p.p99, 3).num("max", p.max, 3).text();
}

// --- Devices ------------------------------------------------------------------------------

// A device's changes frame, with the origin log that lists every own transaction it covers
// (the relay counts no other: docs/protocol.md, "What a peer may claim").
transport::Changes changes_frame(storage::Replica& replica, std::uint64_t batch,
                                 const crdt::Changeset& changeset) {
  transport::Changes frame;
  frame.batch = batch;
  frame.changeset = crdt::encode_changeset(changeset);
  const crdt::SiteId& own = replica.site_id();
  frame.origin_log = replica.local_log(changeset.since.get(own) + 1, changeset.until.get(own));
  return frame;
}

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

struct Window {
  std::atomic<std::int64_t> start{INT64_MAX};
  std::atomic<std::int64_t> end{INT64_MAX};
  bool contains(std::int64_t sent) const { return sent >= start.load() && sent < end.load(); }
};

class Fleet;

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
        std::size_t writer_window, bool hello = true)
      : setup_(setup), relay_(relay), writer_window_(writer_window), hello_(hello) {
    auto templ = storage::Replica::open(":memory:");
    templ->exec(kSchema);
    fingerprint_ = storage::format_manifest(templ->schema_manifest());
    for (int i = 0; i < devices; ++i) {
      auto device = std::make_unique<Device>();
      device->fleet = this;
      device->index = i;
      const bool writer = i < writers;
      device->lane = writer ? &writers_lane_ : &readers_lane_;
      device->stats = writer ? &writer_stats_ : &reader_stats_;
      if (writer) {
        device->replica = storage::Replica::open(":memory:");
        device->replica->exec(kSchema);
        if (sqlite3_prepare_v2(device->replica->connection(),
                               "INSERT INTO item(id, sent, writer, body) VALUES (?, ?, ?, ?)", -1,
                               &device->insert, nullptr) != SQLITE_OK)
          throw std::runtime_error("cannot prepare the writers' insert");
      }
      devices_.push_back(std::move(device));
    }
    writers_ = writers;
    writers_lane_.start();
    readers_lane_.start();
  }

  ~Fleet() {
    writers_lane_.stop();
    readers_lane_.stop();
    for (auto& device : devices_)
      if (device->insert) sqlite3_finalize(device->insert);
    devices_.clear();
  }

  // Connects every device (at most 64 handshakes at once per lane) and sends its hello; waits
  // until each one has its welcome and first changes frame. Throws after `timeout`.
  double connect_all(milliseconds timeout) {
    const auto start = Clock::now();
    std::vector<Device*> writers, readers;
    for (auto& d : devices_) (d->replica ? writers : readers).push_back(d.get());
    start_connecting(writers_lane_, std::move(writers));
    start_connecting(readers_lane_, std::move(readers));
    const auto deadline = start + timeout;
    while (ready_.load() < devices_.size()) {
      if (Clock::now() > deadline || failed_.load() > 0)
        throw std::runtime_error(std::to_string(ready_.load()) + " of " +
                                 std::to_string(devices_.size()) +
                                 " devices connected; first failure: " + first_failure());
      std::this_thread::sleep_for(milliseconds(5));
    }
    return ms_since(start);
  }

  // Writes at `writes_per_second` in all, round robin over the writers, for `seconds`; then
  // waits for the deliveries to drain (at most `drain`). Returns the step's figures.
  Json run_load(Json json, double writes_per_second, double seconds, milliseconds drain,
                const std::string& relay_pid) {
    const int receivers = static_cast<int>(devices_.size()) - 1;
    writers_lane_.call([this] { writer_stats_ = {}; });
    readers_lane_.call([this] { reader_stats_ = {}; });
    issued_ = 0;
    lag_ms_.clear();
    CpuMeter relay_cpu(relay_pid), bench_cpu("self");
    const std::string load_before = loadavg();
    const std::int64_t start = now_ns();
    const std::int64_t end = start + static_cast<std::int64_t>(seconds * 1e9);
    window_.start = start;
    window_.end = end;
    std::promise<void> done;
    writers_lane_.call([&] {
      auto timer = std::make_shared<net::steady_timer>(writers_lane_.io);
      auto tick = std::make_shared<std::function<void()>>();
      *tick = [this, timer, tick, start, end, writes_per_second, &done] {
        const std::int64_t now = now_ns();
        // Write i is due at start + i / rate; every write is stamped before the window ends.
        const std::uint64_t due =
            1 + static_cast<std::uint64_t>(static_cast<double>(std::min(now, end) - start) * 1e-9 *
                                           writes_per_second);
        while (issued_ < due) {
          const std::int64_t t = now_ns();
          if (t >= end) break;
          const double scheduled = static_cast<double>(start) + issued_ * 1e9 / writes_per_second;
          lag_ms_.push_back((static_cast<double>(t) - scheduled) / 1e6);
          write(*devices_[issued_ % writers_], t);
          ++issued_;
        }
        if (now >= end) {
          timer->cancel();
          *tick = nullptr;  // breaks the cycle
          done.set_value();
          return;
        }
        timer->expires_after(std::chrono::microseconds(500));
        timer->async_wait([tick](const boost::system::error_code& ec) {
          if (!ec && *tick) (*tick)();
        });
      };
      (*tick)();
    });
    done.get_future().wait();
    const double relay_pct = relay_cpu.percent(), bench_pct = bench_cpu.percent();
    const double relay_wait_pct = relay_cpu.wait_percent();
    const std::uint64_t expected = issued_ * static_cast<std::uint64_t>(receivers);
    const auto drain_deadline = Clock::now() + drain;
    std::uint64_t received = 0;
    for (;;) {
      received = writers_lane_.call([this] { return writer_stats_.deliveries; }) +
                 readers_lane_.call([this] { return reader_stats_.deliveries; });
      if (received >= expected || Clock::now() > drain_deadline) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
    const double last_arrival_s = static_cast<double>(now_ns() - start) / 1e9;
    // CPU over the writes and the drain, per delivery: what the load costs whatever share of
    // the cores the other processes of the machine left us.
    const double relay_cpu_s = relay_cpu.seconds(), bench_cpu_s = bench_cpu.seconds();
    LaneStats w = writers_lane_.call([this] { return writer_stats_; });
    LaneStats r = readers_lane_.call([this] { return reader_stats_; });
    std::vector<double> latency = std::move(w.latency_ms);
    latency.insert(latency.end(), r.latency_ms.begin(), r.latency_ms.end());
    const std::uint64_t missing = expected > received ? expected - received : 0;
    const Percentiles lat = percentiles(std::move(latency), missing);
    const Percentiles ack = percentiles(std::move(w.ack_ms));
    const Percentiles lag = percentiles(lag_ms_);
    json.integer("devices", static_cast<std::int64_t>(devices_.size()))
        .integer("writers", writers_)
        .num("target_writes_per_s", writes_per_second, 0)
        .num("target_deliveries_per_s", writes_per_second * receivers, 0)
        .integer("writes", static_cast<std::int64_t>(issued_))
        .num("writes_per_s", static_cast<double>(issued_) / seconds, 0)
        .integer("deliveries", static_cast<std::int64_t>(received))
        .num("deliveries_per_s", static_cast<double>(received) / seconds, 0)
        .integer("missing", static_cast<std::int64_t>(missing))
        .raw("latency_ms", percentiles_json(lat))
        .raw("ack_ms", percentiles_json(ack))
        .raw("generator_lag_ms", percentiles_json(lag))
        .num("relay_cpu_pct", relay_pct, 0)
        .num("bench_cpu_pct", bench_pct, 0)
        .num("relay_waiting_for_cpu_pct", relay_wait_pct, 0)
        .num("relay_cpu_us_per_delivery",
             received ? relay_cpu_s * 1e6 / static_cast<double>(received) : NAN, 2)
        .num("bench_cpu_us_per_delivery",
             received ? bench_cpu_s * 1e6 / static_cast<double>(received) : NAN, 2)
        .num("seconds", seconds, 1)
        .num("last_arrival_s", last_arrival_s, 2)
        .integer("errors", static_cast<std::int64_t>(w.errors + r.errors))
        .integer("closed", static_cast<std::int64_t>(w.closed + r.closed))
        .str("loadavg_before", load_before)
        .boolean("p99_under_50ms", lat.p99 < kGoalP99Ms && missing * 100 <= expected);
    if (!w.first_error.empty() || !r.first_error.empty())
      json.str("first_error", w.first_error.empty() ? r.first_error : w.first_error);
    last_p99_ = lat.p99;
    last_missing_ = missing;
    return json;
  }

  double last_p99() const { return last_p99_; }

 private:
  void start_connecting(Lane& lane, std::vector<Device*> devices) {
    auto queue = std::make_shared<std::vector<Device*>>(std::move(devices));
    std::reverse(queue->begin(), queue->end());
    for (int i = 0; i < 64; ++i) net::post(lane.io, [this, queue] { connect_next(queue); });
  }

  void connect_next(const std::shared_ptr<std::vector<Device*>>& queue) {
    if (queue->empty()) return;
    Device* device = queue->back();
    queue->pop_back();
    transport::ClientOptions options;
    options.ca_file = setup_.cert().string();
    options.connect_timeout = std::chrono::seconds(30);
    options.idle_timeout = std::chrono::seconds(120);
    options.max_frame_bytes = 64u << 20;
    transport::connect_websocket(
        device->lane->io, relay_.url(), options,
        [this, device, queue](std::optional<Error> error,
                              std::shared_ptr<transport::Connection> connection) {
          if (error) {
            note_failure(error->what());
            return;
          }
          device->connection = std::move(connection);
          device->connection->set_handlers(transport::Connection::Handlers{
              [this, device](std::string_view bytes) { on_frame(*device, bytes); },
              [device](const std::string& reason) {
                ++device->stats->closed;
                if (device->stats->first_error.empty())
                  device->stats->first_error = "closed: " + reason;
              },
              {}});
          if (!hello_) {
            ++ready_;
            return connect_next(queue);
          }
          transport::Hello hello;
          if (device->replica) {
            hello.site = device->replica->site_id();
          } else {
            std::mt19937_64 rng(0x5eed0000u + static_cast<unsigned>(device->index));
            hello.site = crdt::SiteId::random(rng);
          }
          hello.ns = kNamespace;
          hello.token = setup_.token;
          hello.schema_fingerprint = fingerprint_;
          device->connection->send(transport::encode_frame(hello));
          connect_next(queue);
        });
  }

  void note_failure(const std::string& what) {
    std::lock_guard<std::mutex> lock(failure_mutex_);
    if (failure_.empty()) failure_ = what;
    ++failed_;
  }
  std::string first_failure() {
    std::lock_guard<std::mutex> lock(failure_mutex_);
    return failure_.empty() ? "none (timed out)" : failure_;
  }

  void on_frame(Device& device, std::string_view bytes) {
    LaneStats& stats = *device.stats;
    ++stats.frames;
    transport::Frame frame;
    try {
      frame = transport::decode_frame(bytes, 64u << 20);
    } catch (const Error& e) {
      ++stats.errors;
      if (stats.first_error.empty()) stats.first_error = e.what();
      return;
    }
    if (auto* changes = std::get_if<transport::Changes>(&frame)) {
      const std::int64_t arrived = now_ns();
      crdt::Changeset changeset = crdt::decode_changeset(changes->changeset);
      crdt::ColumnId sent_column = 0;
      bool found = false;
      for (const auto& table : changeset.tables)
        if (table.name == "item")
          for (const auto& column : table.columns)
            if (column.name == "sent") {
              sent_column = column.id;
              found = true;
            }
      if (found)
        for (const auto& row : changeset.rows)
          for (const auto& [column, value] : row.liveness_values)
            if (column == sent_column) {
              const auto* sent = std::get_if<std::int64_t>(&value);
              if (sent && window_.contains(*sent)) {
                ++stats.deliveries;
                stats.latency_ms.push_back(static_cast<double>(arrived - *sent) / 1e6);
              }
            }
      if (!device.caught_up) {
        device.caught_up = true;
        ++ready_;
      }
    } else if (auto* ack = std::get_if<transport::Ack>(&frame)) {
      auto it = device.in_flight.find(ack->batch);
      if (it != device.in_flight.end()) {
        const std::int64_t now = now_ns();
        for (std::int64_t sent : it->second)
          if (window_.contains(sent)) stats.ack_ms.push_back(static_cast<double>(now - sent) / 1e6);
        device.in_flight.erase(it);
      }
      if (!device.unsent.empty()) push(device);
    } else if (std::holds_alternative<transport::Welcome>(frame)) {
      device.welcomed = true;
    } else if (auto* error = std::get_if<transport::ErrorFrame>(&frame)) {
      if (error->code == transport::WireError::kShuttingDown) return;
      ++stats.errors;
      if (stats.first_error.empty())
        stats.first_error =
            std::string(transport::wire_error_name(error->code)) + ": " + error->message;
      note_failure(stats.first_error);
    } else if (auto* ping = std::get_if<transport::Ping>(&frame)) {
      device.connection->send(transport::encode_frame(transport::Pong{ping->nonce}));
    }
  }

  // One write on a writer: a row stamped with its send time, then (window permitting) a batch
  // with every change of this writer the relay has not been sent.
  void write(Device& device, std::int64_t sent_ns) {
    const std::string id =
        "w" + std::to_string(device.index) + "-" + std::to_string(device.next_row++);
    static const std::string body(32, 'x');
    sqlite3_stmt* s = device.insert;
    sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, sent_ns);
    sqlite3_bind_int64(s, 3, device.index);
    sqlite3_bind_text(s, 4, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
      throw std::runtime_error(std::string("insert: ") +
                               sqlite3_errmsg(device.replica->connection()));
    sqlite3_reset(s);
    device.unsent.push_back(sent_ns);
    if (writer_window_ == 0 || device.in_flight.size() < writer_window_) push(device);
  }

  void push(Device& device) {
    if (!device.connection) return;
    const crdt::Changeset changeset = device.replica->changes_since(device.sent, 50'000);
    device.sent.merge(changeset.until);
    const std::uint64_t batch = device.next_batch++;
    device.in_flight[batch] = std::move(device.unsent);
    device.unsent.clear();
    device.connection->send(
        transport::encode_frame(changes_frame(*device.replica, batch, changeset)));
  }

  const Setup& setup_;
  const RelayProcess& relay_;
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
};

// --- Scenarios ----------------------------------------------------------------------------

struct Context {
  Options options;
  Setup setup;
  fs::path work;       // temporary files of the bench
  fs::path data_root;  // where relays' data directories go (work, or /dev/shm with --tmpfs)
  int runs = 0;

  fs::path fresh_data() {
    const fs::path dir = data_root / ("data" + std::to_string(++runs));
    fs::create_directories(dir);
    return dir;
  }
};

std::string fanout(Context& ctx, const std::string& name, int devices, int writers,
                   double writes_per_second) {
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
  Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
  const double connect_ms = fleet.connect_all(std::chrono::seconds(120));
  progress(name + ": " + std::to_string(devices) + " devices connected in " + fixed(connect_ms, 0) +
           " ms; writing " + fixed(writes_per_second, 0) + "/s for " + fixed(seconds, 0) + " s");
  Json json = fleet.run_load(Json().str("scenario", name), writes_per_second, seconds,
                             std::chrono::seconds(10), relay.pid());
  json.num("connect_ms", connect_ms, 0).integer("relay_rss_kib", relay.rss_kib());
  return json.text();
}

std::string capacity(Context& ctx, const std::string& name, int devices, int writers,
                     std::vector<double> steps) {
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
  Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
  fleet.connect_all(std::chrono::seconds(120));
  std::string step_lines;
  double best = 0;
  double best_writes = 0;
  for (double writes : steps) {
    progress(name + ": " + fixed(writes, 0) + " writes/s (" + fixed(writes * (devices - 1), 0) +
             " deliveries/s) for " + fixed(seconds, 0) + " s");
    Json step = fleet.run_load(Json(), writes, seconds, std::chrono::seconds(10), relay.pid());
    const std::string text = step.text();
    step_lines += (step_lines.empty() ? "" : ", ") + text;
    progress(name + ": " + text);
    const bool pass = text.find("\"p99_under_50ms\": true") != std::string::npos;
    if (!pass) break;
    best = writes * (devices - 1);
    best_writes = writes;
    // Let the relay's queues empty before the next step.
    std::this_thread::sleep_for(milliseconds(500));
  }
  return Json()
      .str("scenario", name)
      .integer("devices", devices)
      .integer("writers", writers)
      .num("capacity_deliveries_per_s", best, 0)
      .num("capacity_writes_per_s", best_writes, 0)
      .num("goal_deliveries_per_s", 200000, 0)
      .boolean("goal_met", best >= 200000)
      .raw("steps", "[" + step_lines + "]")
      .text();
}

// The hub compares each device's version vector with the relay's on every fan-out. The same
// load (500 devices, the same write rate) with 10 writing sites, then with every device a
// writing site (each writes once before the measured run), shows what that costs as
// namespaces collect sites.
std::string vector_cost(Context& ctx) {
  const int devices = ctx.options.quick ? 100 : 500;
  const double rate = 10;
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  auto one = [&](int writers) {
    RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
    Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
    fleet.connect_all(std::chrono::seconds(180));
    if (writers > 10) {
      // Every writer writes once: the relay's vector gets an entry per device.
      const double warm_rate = 100;
      fleet.run_load(Json(), warm_rate, writers / warm_rate, std::chrono::seconds(120),
                     relay.pid());
      std::this_thread::sleep_for(milliseconds(1000));
    }
    progress("vector_cost: " + std::to_string(writers) + " writing sites, " + fixed(rate, 0) +
             " writes/s");
    return fleet
        .run_load(Json().integer("sites", writers), rate, seconds, std::chrono::seconds(15),
                  relay.pid())
        .text();
  };
  const std::string few = one(10);
  const std::string many = one(devices);
  return Json()
      .str("scenario", "vector_cost")
      .raw("sites_10", few)
      .raw("sites_" + std::to_string(devices), many)
      .text();
}

// One device pushes `batches` batches of about 50,000 changes of fresh rows, all at once; the
// relay merges them one after another.
std::string merge(Context& ctx) {
  const int batches = ctx.options.quick ? 2 : 10;
  const int rows_per_batch = 50'000 / kChangesPerRow;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {"--max-changes-per-second", "1000000000000"});
  auto replica = storage::Replica::open(":memory:");
  replica->exec(kSchema);
  std::vector<std::string> frames;
  std::size_t changes = 0, bytes = 0;
  {
    sqlite3* db = replica->connection();
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO item(id, sent, writer, body) VALUES (?, ?, 0, ?)", -1, &s,
                       nullptr);
    const std::string body(32, 'x');
    crdt::VersionVector sent;
    for (int b = 0; b < batches; ++b) {
      sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
      for (int r = 0; r < rows_per_batch; ++r) {
        const std::string id = "m" + std::to_string(b) + "-" + std::to_string(r);
        sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 2, r);
        sqlite3_bind_text(s, 3, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
        sqlite3_step(s);
        sqlite3_reset(s);
      }
      sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      const crdt::Changeset cs = replica->changes_since(sent, 60'000);
      sent.merge(cs.until);
      changes += cs.change_count();
      frames.push_back(
          transport::encode_frame(changes_frame(*replica, static_cast<std::uint64_t>(b + 1), cs)));
      bytes += frames.back().size();
    }
    sqlite3_finalize(s);
  }
  progress("merge: " + std::to_string(batches) + " batches, " + std::to_string(changes) +
           " changes, " + std::to_string(bytes) + " bytes; sending");

  Lane lane;
  std::shared_ptr<transport::Connection> connection;
  std::promise<std::string> welcomed;
  std::promise<void> all_acked;
  std::vector<double> ack_at_ms(batches, NAN);
  Clock::time_point sent_at;
  int acks = 0;
  std::string failure;
  transport::ClientOptions options;
  options.ca_file = ctx.setup.cert().string();
  options.max_frame_bytes = 64u << 20;
  options.idle_timeout = std::chrono::seconds(120);
  bool welcome_set = false, done_set = false;
  Lane::StopOnExit stop_lane{lane};
  lane.start();
  lane.call([&] {
    transport::connect_websocket(
        lane.io, relay.url(), options,
        [&](std::optional<Error> error, std::shared_ptr<transport::Connection> c) {
          if (error) {
            welcome_set = true;
            welcomed.set_value(error->what());
            return;
          }
          connection = c;
          connection->set_handlers(transport::Connection::Handlers{
              [&](std::string_view bytes_in) {
                const transport::Frame frame = transport::decode_frame(bytes_in, 64u << 20);
                if (std::holds_alternative<transport::Welcome>(frame) && !welcome_set) {
                  welcome_set = true;
                  welcomed.set_value("");
                } else if (auto* ack = std::get_if<transport::Ack>(&frame)) {
                  if (ack->batch >= 1 && ack->batch <= static_cast<std::uint64_t>(batches))
                    ack_at_ms[ack->batch - 1] = ms_since(sent_at);
                  if (++acks == batches && !done_set) {
                    done_set = true;
                    all_acked.set_value();
                  }
                } else if (auto* e = std::get_if<transport::ErrorFrame>(&frame)) {
                  failure = std::string(transport::wire_error_name(e->code)) + ": " + e->message;
                  if (!done_set) {
                    done_set = true;
                    all_acked.set_value();
                  }
                }
              },
              [&](const std::string& reason) {
                if (failure.empty()) failure = "closed: " + reason;
                if (!done_set) {
                  done_set = true;
                  all_acked.set_value();
                }
              },
              {}});
          transport::Hello hello;
          hello.site = replica->site_id();
          hello.ns = kNamespace;
          hello.token = ctx.setup.token;
          hello.schema_fingerprint = storage::format_manifest(replica->schema_manifest());
          connection->send(transport::encode_frame(hello));
        });
  });
  auto welcome_future = welcomed.get_future();
  if (welcome_future.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    throw std::runtime_error("merge: no welcome within 30 s");
  if (const std::string e = welcome_future.get(); !e.empty())
    throw std::runtime_error("merge: " + e);
  CpuMeter relay_cpu(relay.pid());
  lane.call([&] {
    sent_at = Clock::now();
    for (auto& frame : frames) connection->send(std::move(frame));
  });
  auto acked = all_acked.get_future();
  if (acked.wait_for(std::chrono::seconds(120)) != std::future_status::ready)
    failure = "not every batch acknowledged within 120 s";
  const double relay_pct = relay_cpu.percent(), relay_cpu_s = relay_cpu.seconds();
  const double relay_wait_pct = relay_cpu.wait_percent();
  const std::string failure_text = lane.call([&] { return failure; });  // written on the lane
  const double total_ms = ack_at_ms.empty() ? NAN : ack_at_ms.back();
  std::vector<double> per_batch;
  for (int i = 0; i < batches; ++i)
    per_batch.push_back(ack_at_ms[i] - (i ? ack_at_ms[i - 1] : 0.0));
  // The relay's own merge time (decode not included, commit included) from /metrics.
  const std::string merge_sum =
      command_output("curl -sk --max-time 10 https://127.0.0.1:" + std::to_string(relay.port()) +
                     "/metrics | grep '^lattice_relay_merge_seconds_sum' | awk '{print $2}'");
  lane.call([&] {
    if (connection) connection->close("done");
  });
  relay.stop();
  lane.stop();
  const double merge_s = merge_sum.empty() ? NAN : std::stod(merge_sum);
  const Percentiles batch_ms = percentiles(per_batch);
  Json json;
  json.str("scenario", "merge")
      .integer("batches", batches)
      .integer("changes", static_cast<std::int64_t>(changes))
      .integer("bytes", static_cast<std::int64_t>(bytes))
      .num("first_send_to_last_ack_ms", total_ms, 1)
      .num("changes_per_s", static_cast<double>(changes) / (total_ms / 1000), 0)
      .raw("ms_between_acks", percentiles_json(batch_ms))
      .num("relay_apply_seconds_sum", merge_s, 3)
      .num("relay_apply_changes_per_s", static_cast<double>(changes) / merge_s, 0)
      .num("relay_cpu_pct", relay_pct, 0)
      .num("relay_cpu_s", relay_cpu_s, 2)
      .num("relay_waiting_for_cpu_pct", relay_wait_pct, 0)
      .num("changes_per_relay_cpu_s", static_cast<double>(changes) / relay_cpu_s, 0)
      .num("goal_changes_per_s", 100000, 0)
      .boolean("goal_met", static_cast<double>(changes) / (total_ms / 1000) >= 100000)
      .str("loadavg", loadavg());
  if (!failure_text.empty()) json.str("failure", failure_text);
  return json.text();
}

struct IdleFigures {
  int devices = 0;
  long long opened = 0, before = 0, after = 0, hwm = 0;
  double connect_ms = 0;
  double kib_per_connection() const { return static_cast<double>(after - before) / devices; }
};

// Relay RSS before and after `devices` connections that then stay idle: live devices (hello,
// welcome, catch-up) or, without `hello`, bare WebSockets; over TLS or plain.
IdleFigures idle_once(Context& ctx, int devices, bool tls, bool hello) {
  IdleFigures f;
  f.devices = devices;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {}, tls);
  // The namespace's replica is opened by the first hello; open it before the baseline.
  std::this_thread::sleep_for(milliseconds(300));
  {
    Fleet first(ctx.setup, relay, 1, 0, 0);
    first.connect_all(std::chrono::seconds(30));
    std::this_thread::sleep_for(milliseconds(500));
    f.opened = relay.rss_kib();
  }
  std::this_thread::sleep_for(milliseconds(500));
  f.before = relay.rss_kib();
  Fleet fleet(ctx.setup, relay, devices, 0, 0, hello);
  f.connect_ms = fleet.connect_all(std::chrono::seconds(180));
  std::this_thread::sleep_for(milliseconds(ctx.options.quick ? 500 : 2000));
  f.after = relay.rss_kib();
  f.hwm = relay.hwm_kib();
  return f;
}

std::string idle_memory(Context& ctx) {
  const int devices = ctx.options.quick ? 100 : 1000;
  const IdleFigures live = idle_once(ctx, devices, true, true);
  const IdleFigures bare = idle_once(ctx, devices, true, false);
  const IdleFigures plain = idle_once(ctx, devices, false, true);
  const double per = live.kib_per_connection();
  return Json()
      .str("scenario", "idle_memory")
      .integer("connections", devices)
      .num("connect_ms", live.connect_ms, 0)
      .integer("relay_rss_kib_namespace_open", live.opened)
      .integer("relay_rss_kib_before", live.before)
      .integer("relay_rss_kib_after", live.after)
      .integer("relay_hwm_kib", live.hwm)
      .num("kib_per_connection", per, 1)
      .num("kib_per_tls_websocket_without_hello", bare.kib_per_connection(), 1)
      .num("kib_per_device_without_tls", plain.kib_per_connection(), 1)
      .num("goal_kib_per_connection", 64, 0)
      .boolean("goal_met", per <= 64)
      .text();
}

// Wraps a connection to call `after_frame` after each frame its user handled.
class TapConnection : public transport::Connection {
 public:
  TapConnection(std::shared_ptr<transport::Connection> inner, std::function<void()> after_frame)
      : inner_(std::move(inner)), after_frame_(std::move(after_frame)) {}
  void set_handlers(Handlers handlers) override {
    if (handlers.on_frame) {
      auto on_frame = std::move(handlers.on_frame);
      auto after = after_frame_;
      handlers.on_frame = [on_frame, after](std::string_view bytes) {
        on_frame(bytes);
        after();
      };
    }
    inner_->set_handlers(std::move(handlers));
  }
  void send(std::string frame) override { inner_->send(std::move(frame)); }
  void close(const std::string& reason) override { inner_->close(reason); }
  std::string peer() const override { return inner_->peer(); }

 private:
  std::shared_ptr<transport::Connection> inner_;
  std::function<void()> after_frame_;
};

// Builds DATA/bench.db offline: the relay's schema and `rows` rows written as one transaction
// of the relay's own replica, checkpointed into the main file.
std::size_t build_namespace(const fs::path& data, int rows) {
  storage::ReplicaOptions options;
  options.synchronous = "OFF";
  auto replica = storage::Replica::open((data / "bench.db").string(), options);
  replica->exec(kSchema);
  sqlite3* db = replica->connection();
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO item(id, sent, writer, body) VALUES (?, ?, 0, ?)", -1, &s,
                     nullptr);
  const std::string body(32, 'x');
  // Transactions of 10,000 rows, as a busy namespace would have.
  for (int r = 0; r < rows; ++r) {
    if (r % 10'000 == 0) sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    char id[32];
    std::snprintf(id, sizeof id, "c%08d", r);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, r);
    sqlite3_bind_text(s, 3, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
    sqlite3_step(s);
    sqlite3_reset(s);
    if (r % 10'000 == 9'999 || r == rows - 1) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  sqlite3_finalize(s);
  sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
  return static_cast<std::size_t>(rows);
}

struct CatchupRun {
  std::string failure;
  double welcome_ms = NAN, caught_up_ms = NAN;
  std::size_t frames = 0;
  long long relay_hwm_kib = 0;
  double relay_cpu_pct = 0, relay_cpu_s = 0, device_cpu_s = 0;
};

// A new device (a replica file, engine::SyncSession) connects and catches up.
CatchupRun catch_up_once(Context& ctx, const fs::path& data, std::vector<std::string> extra,
                         const fs::path& device_file, int rows, milliseconds timeout) {
  RelayProcess relay(ctx.setup, data, std::move(extra));
  CatchupRun run;
  std::error_code ignored;
  fs::remove(device_file, ignored);
  fs::remove(device_file.string() + "-wal", ignored);
  fs::remove(device_file.string() + "-shm", ignored);
  auto replica = storage::Replica::open(device_file.string());
  replica->exec(kSchema);
  Lane lane;
  std::unique_ptr<engine::SyncSession> session;
  std::promise<void> finished;
  bool finished_set = false;
  auto finish = [&](const std::string& failure) {
    if (finished_set) return;
    finished_set = true;
    run.failure = failure;
    finished.set_value();
  };
  CpuMeter relay_cpu(relay.pid()), device_cpu("self");
  const auto start = Clock::now();
  transport::ClientOptions options;
  options.ca_file = ctx.setup.cert().string();
  options.max_frame_bytes = 64u << 20;
  options.idle_timeout = std::chrono::seconds(300);
  Lane::StopOnExit stop_lane{lane};
  lane.start();
  lane.call([&] {
    transport::connect_websocket(
        lane.io, relay.url(), options,
        [&](std::optional<Error> error, std::shared_ptr<transport::Connection> c) {
          if (error) return finish(error->what());
          auto tap = std::make_shared<TapConnection>(std::move(c), [&] {
            ++run.frames;
            if (!session || finished_set) return;
            if (std::isnan(run.welcome_ms) && session->state() != engine::SyncState::kConnecting)
              run.welcome_ms = ms_since(start);
            if (session->state() == engine::SyncState::kLive &&
                replica->version_vector().dominates(session->relay_held())) {
              run.caught_up_ms = ms_since(start);
              finish("");
            }
          });
          engine::SyncSession::Events events;
          events.on_error = [&](const transport::ErrorFrame& e) {
            finish(std::string(transport::wire_error_name(e.code)) + ": " + e.message);
          };
          events.on_closed = [&](const std::string& reason) { finish("closed: " + reason); };
          session = std::make_unique<engine::SyncSession>(
              *replica, tap, engine::SyncSession::Options{kNamespace, ctx.setup.token, 50'000},
              std::move(events));
          session->start();
        });
  });
  auto done = finished.get_future();
  if (done.wait_for(timeout) != std::future_status::ready)
    lane.call([&] { finish("not caught up within " + std::to_string(timeout.count()) + " ms"); });
  run.relay_cpu_pct = relay_cpu.percent();
  run.relay_cpu_s = relay_cpu.seconds();
  run.device_cpu_s = device_cpu.seconds();
  run.relay_hwm_kib = relay.hwm_kib();
  lane.call([&] { session.reset(); });
  relay.stop();
  lane.stop();
  if (run.failure.empty()) {
    // Caught up means every row is in the device's table.
    const auto count = replica->query("SELECT count(*) FROM item");
    const auto* n = count.rows.empty() ? nullptr : std::get_if<std::int64_t>(&count.rows[0][0]);
    if (!n || *n != rows)
      run.failure = "the device holds " + (n ? std::to_string(*n) : std::string("?")) + " of " +
                    std::to_string(rows) + " rows";
  }
  return run;
}

std::string catchup(Context& ctx) {
  const int rows = ctx.options.quick ? 20'000 : (1'000'000 + kChangesPerRow - 1) / kChangesPerRow;
  const fs::path data = ctx.fresh_data();
  const auto build_start = Clock::now();
  build_namespace(data, rows);
  const double build_ms = ms_since(build_start);
  const std::uintmax_t db_bytes = fs::file_size(data / "bench.db");
  // The reference: copying the relay's database file (page cache warm, no fsync).
  const fs::path copy = ctx.work / "copy.db";
  std::vector<double> copy_ms;
  for (int i = 0; i < 3; ++i) {
    std::error_code ignored;
    fs::remove(copy, ignored);
    const auto t = Clock::now();
    fs::copy_file(data / "bench.db", copy);
    copy_ms.push_back(ms_since(t));
  }
  std::sort(copy_ms.begin(), copy_ms.end());
  fs::remove(copy);
  progress("catchup: namespace of " + std::to_string(rows) + " rows (" +
           std::to_string(rows * kChangesPerRow) + " changes, " + std::to_string(db_bytes) +
           " bytes) built in " + fixed(build_ms, 0) + " ms; copy " + fixed(copy_ms[1], 1) + " ms");

  const fs::path device_file = ctx.work / "device.db";
  const milliseconds timeout(ctx.options.quick ? 30'000 : 180'000);
  // First with the relay's default limits, then with an outbound queue large enough to hold
  // the whole catch-up (the relay queues all of it at the hello).
  const CatchupRun with_defaults = catch_up_once(ctx, data, {}, device_file, rows, timeout);
  progress("catchup with default limits: " + (with_defaults.failure.empty()
                                                  ? fixed(with_defaults.caught_up_ms, 0) + " ms"
                                                  : with_defaults.failure));
  const CatchupRun raised =
      catch_up_once(ctx, data, {"--max-queue-bytes", "2147483648"}, device_file, rows, timeout);
  progress("catchup with --max-queue-bytes 2 GiB: " +
           (raised.failure.empty() ? fixed(raised.caught_up_ms, 0) + " ms" : raised.failure));
  const double changes = static_cast<double>(rows) * kChangesPerRow;
  auto run_json = [&](const CatchupRun& run) {
    Json json;
    json.boolean("ok", run.failure.empty());
    if (!run.failure.empty()) json.str("reason", run.failure);
    json.num("welcome_ms", run.welcome_ms, 1)
        .num("caught_up_ms", run.caught_up_ms, 0)
        .num("changes_per_s", changes / (run.caught_up_ms / 1000), 0)
        .num("ratio_to_copy", run.caught_up_ms / copy_ms[1], 0)
        .integer("frames", static_cast<std::int64_t>(run.frames))
        .num("relay_cpu_pct", run.relay_cpu_pct, 0)
        .num("relay_cpu_s", run.relay_cpu_s, 2)
        .num("device_cpu_s", run.device_cpu_s, 2)
        .integer("relay_hwm_kib", run.relay_hwm_kib);
    return json.text();
  };
  return Json()
      .str("scenario", "catchup")
      .integer("rows", rows)
      .num("changes", changes, 0)
      .integer("db_bytes", static_cast<std::int64_t>(db_bytes))
      .num("build_ms", build_ms, 0)
      .num("copy_ms", copy_ms[1], 2)
      .raw("default_limits", run_json(with_defaults))
      .raw("max_queue_2gib", run_json(raised))
      .str("loadavg", loadavg())
      .text();
}

// --- Main ---------------------------------------------------------------------------------

std::string find_relay(const char* argv0) {
  std::vector<fs::path> candidates;
  if (std::string(LATTICE_RELAY_PATH).size()) candidates.emplace_back(LATTICE_RELAY_PATH);
  std::error_code ec;
  const fs::path self = fs::canonical("/proc/self/exe", ec);
  if (!ec) candidates.push_back(self.parent_path().parent_path() / "relay" / "lattice-relay");
  candidates.push_back(fs::path(argv0).parent_path() / ".." / "relay" / "lattice-relay");
  for (const auto& c : candidates)
    if (fs::exists(c, ec)) return fs::absolute(c).string();
  throw std::invalid_argument("cannot find lattice-relay beside this program; pass --relay PATH");
}

Options parse_options(int argc, char** argv) {
  Options options;
  if (const char* tmp = std::getenv("TMPDIR"); tmp && *tmp) options.dir = tmp;
  if (options.dir.empty()) options.dir = "/tmp";
  bool seconds_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--scenario") {
      options.scenarios.push_back(value());
    } else if (arg == "--relay") {
      options.relay = value();
    } else if (arg == "--dir") {
      options.dir = value();
    } else if (arg == "--tmpfs") {
      options.tmpfs = true;
    } else if (arg == "--writer-window") {
      options.writer_window = static_cast<std::size_t>(std::stoul(value()));
    } else if (arg == "--seconds") {
      options.seconds = std::stod(value());
      seconds_set = true;
      if (!(options.seconds > 0 && options.seconds <= 120))
        throw std::invalid_argument("--seconds takes 0 < S <= 120");
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  if (options.quick && !seconds_set) options.seconds = 2;
  return options;
}

// True when a scenario's line reports neither a failure nor a device's protocol error.
bool scenario_ok(const std::string& line) {
  return line.find("\"failure\"") == std::string::npos &&
         line.find("\"first_error\"") == std::string::npos;
}

const std::vector<std::string> kScenarios = {"fanout_10",    "fanout_100",    "fanout_1000",
                                             "capacity_100", "capacity_1000", "merge",
                                             "idle_memory",  "catchup",       "vector_cost"};

int run(Options options, const char* argv0) {
  if (options.relay.empty()) options.relay = find_relay(argv0);
  if (options.scenarios.empty()) options.scenarios = kScenarios;
  for (const auto& s : options.scenarios)
    if (std::find(kScenarios.begin(), kScenarios.end(), s) == kScenarios.end())
      throw std::invalid_argument("unknown scenario '" + s + "'");

  // 1,000 devices need 1,000 sockets here and in the relay (which inherits this limit).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 65536);
    setrlimit(RLIMIT_NOFILE, &files);
  }
  getrlimit(RLIMIT_NOFILE, &files);

  TempDir work(options.dir);
  std::optional<TempDir> shm;
  if (options.tmpfs) shm.emplace("/dev/shm");
  Context ctx{options, make_setup(work.path(), options.relay), work.path(),
              shm ? shm->path() : work.path()};
  // connect_websocket builds a TLS context per connection and loads the system's default
  // trust store into it (144 certificates on Debian: ~40 ms of CPU each time, measured). A
  // trust store holding only the relay's certificate keeps 1,000 connections from costing the
  // load generator a minute; verification stays on.
  const fs::path empty_dir = work.path() / "no-ca-dir";
  fs::create_directories(empty_dir);
  setenv("SSL_CERT_FILE", ctx.setup.cert().c_str(), 1);
  setenv("SSL_CERT_DIR", empty_dir.c_str(), 1);

  const std::string dir = LATTICE_SOURCE_DIR;
  const std::string git = dir.empty() ? "git" : "git -C '" + dir + "'";
  const std::string commit = command_output(git + " rev-parse --short HEAD 2>/dev/null");
  const bool modified =
      !command_output(git + " status --porcelain --untracked-files=no 2>/dev/null").empty();
  std::printf(
      "%s\n",
      Json()
          .str("scenario", "meta")
          .str("commit", commit.empty() ? "unknown" : commit)
          .boolean("source_modified", modified)
          .str("build_type", LATTICE_BUILD_TYPE)
          .str("compiler", LATTICE_BENCH_COMPILER)
          .integer("nproc", static_cast<std::int64_t>(std::thread::hardware_concurrency()))
          .str("loadavg", loadavg())
          .boolean("tls", true)
          .str("relay_data", options.tmpfs ? "tmpfs (/dev/shm)" : "disk (" + options.dir + ")")
          .integer("writer_window", static_cast<std::int64_t>(options.writer_window))
          .integer("open_files_limit", static_cast<std::int64_t>(files.rlim_cur))
          .boolean("quick", options.quick)
          .text()
          .c_str());
  std::fflush(stdout);

  int failures = 0;
  for (const auto& name : options.scenarios) {
    progress("scenario " + name);
    std::string line;
    try {
      if (name == "fanout_10") {
        line = fanout(ctx, name, 10, 10, options.quick ? 50 : 100);
      } else if (name == "fanout_100") {
        line = fanout(ctx, name, 100, 10, options.quick ? 200 : 1000);
      } else if (name == "fanout_1000") {
        line = fanout(ctx, name, options.quick ? 200 : 1000, 10, options.quick ? 20 : 100);
      } else if (name == "capacity_100") {
        line = capacity(ctx, name, 100, 10,
                        options.quick
                            ? std::vector<double>{100, 200}
                            : std::vector<double>{100, 250, 500, 1000, 1500, 2000, 3000, 4000});
      } else if (name == "capacity_1000") {
        line = capacity(ctx, name, options.quick ? 200 : 1000, 10,
                        options.quick ? std::vector<double>{10, 20}
                                      : std::vector<double>{20, 50, 100, 150, 200, 250, 300, 400});
      } else if (name == "merge") {
        line = merge(ctx);
      } else if (name == "vector_cost") {
        line = vector_cost(ctx);
      } else if (name == "idle_memory") {
        line = idle_memory(ctx);
      } else if (name == "catchup") {
        line = catchup(ctx);
      }
    } catch (const std::exception& e) {
      line = Json().str("scenario", name).str("failure", e.what()).text();
    }
    // A scenario that could not run, or whose devices saw protocol errors, fails the run.
    if (!scenario_ok(line)) ++failures;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGINT, on_fatal_signal);
  signal(SIGTERM, on_fatal_signal);
  signal(SIGHUP, on_fatal_signal);
  signal(SIGPIPE, SIG_IGN);
  try {
    return run(parse_options(argc, argv), argv[0]);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "lattice-relay-bench: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lattice-relay-bench: %s\n", e.what());
    return 1;
  }
}
