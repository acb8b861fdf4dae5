#include "bench/relay_fleet.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <variant>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "transport/websocket_client.hpp"

namespace lattice::bench {

namespace {

// Children to kill if this process is interrupted (async-signal-safe access only).
constexpr int kMaxChildren = 8;
volatile sig_atomic_t g_children[kMaxChildren] = {};

// Records a child to kill if this process is interrupted, and forgets it once it is reaped.
void remember_child(pid_t pid) {
  for (auto& slot : g_children)
    if (slot == 0) {
      slot = pid;
      return;
    }
}
void forget_child(pid_t pid) {
  for (auto& slot : g_children)
    if (slot == pid) slot = 0;
}

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

// Several processes' CPU, summed (CpuMeter's figures).
class CpuMeters {
 public:
  explicit CpuMeters(const std::vector<std::string>& pids) {
    for (const auto& pid : pids) meters_.emplace_back(pid);
  }
  double percent() const { return sum(&CpuMeter::percent); }
  double wait_percent() const { return sum(&CpuMeter::wait_percent); }
  double seconds() const { return sum(&CpuMeter::seconds); }

 private:
  // A process that exited meanwhile reads as no time at all: it counts nothing, not less.
  double sum(double (CpuMeter::*figure)() const) const {
    double total = 0;
    for (const CpuMeter& m : meters_) total += std::max(0.0, (m.*figure)());
    return total;
  }
  std::vector<CpuMeter> meters_;
};

}  // namespace

void on_fatal_signal(int sig) {
  for (int i = 0; i < kMaxChildren; ++i)
    if (g_children[i] > 0) ::kill(static_cast<pid_t>(g_children[i]), SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

Setup make_setup(const fs::path& dir, const std::string& relay) {
  Setup setup{dir, relay, "", {}};
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

RelayProcess::RelayProcess(const Setup& setup, const fs::path& data, std::vector<std::string> extra,
                           bool tls)
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
  argv.insert(argv.end(), setup.relay_flags.begin(), setup.relay_flags.end());
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
  remember_child(pid_);
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

void RelayProcess::stop() {
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
  forget_child(pid_);
}

PostgresProcess::PostgresProcess() {
  std::string bin = "/usr/lib/postgresql/15/bin";
  if (!fs::exists(bin + "/initdb"))
    throw std::runtime_error("PostgreSQL 15 is not installed (" + bin + "): run make setup");
  // A directory of its own: as root the server runs as postgres, who cannot enter the bench's.
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/lattice-bench-pg.XXXXXX";
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
  dir_ = pattern;
  const passwd* postgres = geteuid() == 0 ? getpwnam("postgres") : nullptr;
  if (geteuid() == 0) {
    if (!postgres) throw std::runtime_error("running as root, PostgreSQL needs the user postgres");
    if (chown(dir_.c_str(), postgres->pw_uid, postgres->pw_gid) != 0)
      throw std::runtime_error("cannot give " + dir_.string() + " to postgres");
  }
  std::vector<std::string> initdb{bin + "/initdb",
                                  "-D",
                                  (dir_ / "data").string(),
                                  "-U",
                                  "lattice",
                                  "--auth=trust",
                                  "-E",
                                  "UTF8",
                                  "--no-instructions"};
  if (postgres) initdb.insert(initdb.begin(), {"runuser", "-u", "postgres", "--"});
  if (run_program(initdb, dir_ / "initdb.log") != 0)
    throw std::runtime_error("initdb failed: " + read_file(dir_ / "initdb.log"));
  {
    // A free port: bound, read, closed.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
      throw std::runtime_error("cannot find a free port");
    ::close(fd);
    port_ = ntohs(address.sin_port);
  }
  std::vector<std::string> argv{
      bin + "/postgres", "-D", (dir_ / "data").string(),     "-p", std::to_string(port_), "-k",
      dir_.string(),     "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const std::string log = (dir_ / "server.log").string();
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    if (postgres && (setgid(postgres->pw_gid) != 0 || setuid(postgres->pw_uid) != 0)) _exit(124);
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // after setuid, which clears it
    if (getppid() != parent) _exit(125);
    if (!freopen("/dev/null", "r", stdin) || !freopen(log.c_str(), "w", stdout) ||
        !freopen(log.c_str(), "a", stderr))
      _exit(126);
    execv(args[0], args.data());
    _exit(127);
  }
  remember_child(pid_);
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (run_program({bin + "/pg_isready", "-q", "-h", "127.0.0.1", "-p", std::to_string(port_)},
                     dir_ / "pg_isready.log") != 0) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("PostgreSQL exited at start: " + read_file(log));
    }
    if (Clock::now() > deadline) throw std::runtime_error("PostgreSQL did not start in 30 s");
    std::this_thread::sleep_for(milliseconds(50));
  }
}

PostgresProcess::~PostgresProcess() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGQUIT);  // immediate shutdown
  int status = 0;
  waitpid(pid_, &status, 0);
  forget_child(pid_);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::string PostgresProcess::conninfo() const {
  return "host=127.0.0.1 port=" + std::to_string(port_) + " user=lattice dbname=postgres";
}

std::vector<std::string> PostgresProcess::pids() const {
  std::vector<std::string> out{std::to_string(pid_)};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    const std::string stat = read_file(entry.path() / "stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(stat.substr(close + 2));
    std::string state, ppid;
    if (fields >> state >> ppid && ppid == std::to_string(pid_)) out.push_back(name);
  }
  return out;
}

transport::Changes changes_frame(storage::Replica& replica, std::uint64_t batch,
                                 const crdt::Changeset& changeset) {
  transport::Changes frame;
  frame.batch = batch;
  frame.changeset = crdt::encode_changeset(changeset);
  const crdt::SiteId& own = replica.site_id();
  frame.origin_log = replica.local_log(changeset.since.get(own) + 1, changeset.until.get(own));
  return frame;
}

Fleet::Fleet(const Setup& setup, const RelayProcess& relay, int devices, int writers,
             std::size_t writer_window, bool hello)
    : Fleet(setup, std::vector<const RelayProcess*>{&relay}, devices, writers, writer_window,
            hello) {}

Fleet::Fleet(const Setup& setup, std::vector<const RelayProcess*> relays, int devices, int writers,
             std::size_t writer_window, bool hello)
    : setup_(setup), relays_(std::move(relays)), writer_window_(writer_window), hello_(hello) {
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

Fleet::~Fleet() {
  writers_lane_.stop();
  readers_lane_.stop();
  for (auto& device : devices_)
    if (device->insert) sqlite3_finalize(device->insert);
  devices_.clear();
}

double Fleet::connect_all(milliseconds timeout) {
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

Json Fleet::run_load(Json json, double writes_per_second, double seconds, milliseconds drain,
                     const std::string& relay_pid) {
  return run_load(std::move(json), writes_per_second, seconds, drain,
                  std::vector<std::string>{relay_pid});
}

Json Fleet::run_load(Json json, double writes_per_second, double seconds, milliseconds drain,
                     const std::vector<std::string>& server_pids) {
  const int receivers = static_cast<int>(devices_.size()) - 1;
  writers_lane_.call([this] { writer_stats_ = {}; });
  readers_lane_.call([this] { reader_stats_ = {}; });
  issued_ = 0;
  lag_ms_.clear();
  CpuMeters relay_cpu(server_pids);
  CpuMeter bench_cpu("self");
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
  const std::uint64_t acked = w.ack_ms.size();
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
      .integer("acked", static_cast<std::int64_t>(acked))
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
  last_ack_p99_ = ack.p99;
  last_unacked_ = issued_ > acked ? issued_ - acked : 0;
  return json;
}

void Fleet::start_connecting(Lane& lane, std::vector<Device*> devices) {
  auto queue = std::make_shared<std::vector<Device*>>(std::move(devices));
  std::reverse(queue->begin(), queue->end());
  for (int i = 0; i < 64; ++i) net::post(lane.io, [this, queue] { connect_next(queue); });
}

void Fleet::connect_next(const std::shared_ptr<std::vector<Device*>>& queue) {
  if (queue->empty()) return;
  Device* device = queue->back();
  queue->pop_back();
  transport::ClientOptions options;
  options.ca_file = setup_.cert().string();
  options.connect_timeout = std::chrono::seconds(30);
  options.idle_timeout = std::chrono::seconds(120);
  options.max_frame_bytes = 64u << 20;
  transport::connect_websocket(
      device->lane->io, relays_[static_cast<std::size_t>(device->index) % relays_.size()]->url(),
      options,
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

void Fleet::note_failure(const std::string& what) {
  std::lock_guard<std::mutex> lock(failure_mutex_);
  if (failure_.empty()) failure_ = what;
  ++failed_;
}
std::string Fleet::first_failure() {
  std::lock_guard<std::mutex> lock(failure_mutex_);
  return failure_.empty() ? "none (timed out)" : failure_;
}

void Fleet::on_frame(Device& device, std::string_view bytes) {
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
  // A delta (protocol 5) is decoded as a changes frame is; one that follows the last carries
  // only the vector entries that moved, which is what it saves a device.
  const std::string* changeset_bytes = nullptr;
  if (auto* changes = std::get_if<transport::Changes>(&frame))
    changeset_bytes = &changes->changeset;
  if (auto* delta = std::get_if<transport::Delta>(&frame)) changeset_bytes = &delta->changeset;
  if (changeset_bytes) {
    const std::int64_t arrived = now_ns();
    crdt::Changeset changeset = crdt::decode_changeset(*changeset_bytes);
    std::optional<crdt::ColumnId> sent_column, writer_column;
    for (const auto& table : changeset.tables)
      if (table.name == "item")
        for (const auto& column : table.columns) {
          if (column.name == "sent") sent_column = column.id;
          if (column.name == "writer") writer_column = column.id;
        }
    if (sent_column)
      for (const auto& row : changeset.rows) {
        const std::int64_t* sent = nullptr;
        bool own = false;  // a group commit's delta brings its senders' rows back to them too
        for (const auto& [column, value] : row.liveness_values) {
          if (column == *sent_column) sent = std::get_if<std::int64_t>(&value);
          if (writer_column && column == *writer_column) {
            const auto* writer = std::get_if<std::int64_t>(&value);
            own = writer && *writer == device.index;
          }
        }
        if (sent && !own && window_.contains(*sent)) {
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

void Fleet::write(Device& device, std::int64_t sent_ns) {
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

void Fleet::push(Device& device) {
  if (!device.connection) return;
  const crdt::Changeset changeset = device.replica->changes_since(device.sent, 50'000);
  device.sent.merge(changeset.until);
  const std::uint64_t batch = device.next_batch++;
  device.in_flight[batch] = std::move(device.unsent);
  device.unsent.clear();
  device.connection->send(
      transport::encode_frame(changes_frame(*device.replica, batch, changeset)));
}

}  // namespace lattice::bench
