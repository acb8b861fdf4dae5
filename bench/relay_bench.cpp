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
//   acks_1000                           1,000 devices all writing: acknowledged writes per second
//   merge                               one device pushes batches of 50,000 changes
//   idle_memory                         relay RSS per idle TLS connection
//   catchup                             a new device receives a namespace of 1,000,000 changes
//                                       (engine::SyncSession into a replica file), against a
//                                       copy of the relay's database file
//   vector_cost                         the same load with 10 and with 500 writing sites
//   cluster                             the same load on a relay alone and on 1, 2 and 3 relays
//                                       of a cluster over PostgreSQL (started here)
// The relay process is killed on every path (RAII, a signal handler, and PR_SET_PDEATHSIG).
//
// This file reads the options and runs the scenarios: the relay and the devices are in
// relay_fleet.hpp, the scenarios in relay_scenarios.hpp, what lattice-bench shares in
// support.hpp.

#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "bench/relay_fleet.hpp"
#include "bench/relay_scenarios.hpp"
#include "bench/support.hpp"

#ifndef LATTICE_RELAY_PATH
#define LATTICE_RELAY_PATH ""
#endif

namespace {

using namespace lattice::bench;

constexpr const char* kUsage =
    R"(usage: lattice-relay-bench [--quick] [--scenario NAME]... [--relay PATH] [--dir DIR]
                           [--tmpfs] [--writer-window N] [--seconds S] [--relay-threads N]
  --quick            a smoke run: small counts, 2-second runs
  --scenario NAME    fanout_10, fanout_100, fanout_1000, capacity_100, capacity_1000,
                     acks_1000, merge, idle_memory, catchup, vector_cost, cluster
                     (repeatable; default: all)
  --relay PATH       the lattice-relay executable (default: the one built beside this program)
  --dir DIR          where to make the temporary directory (default $TMPDIR or /tmp)
  --tmpfs            put the relay's data directory in /dev/shm: fsync costs nothing there, to
                     separate the relay's CPU cost from the disk's sync latency
  --writer-window N  at most N unacknowledged batches per writer; writes made meanwhile go
                     together in the next batch (default 0: one batch per write, at once)
  --relay-threads N  the relay's network threads (lattice-relay serve --threads N; default: its
                     own, one per core)
  --seconds S        measured seconds per fan-out run or capacity step (default 10; quick 2)
Prints one JSON object per scenario on stdout, progress on stderr.
)";

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
    } else if (arg == "--relay-threads") {
      options.relay_threads = static_cast<unsigned>(std::stoul(value()));
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

const std::vector<std::string> kScenarios = {
    "fanout_10", "fanout_100",  "fanout_1000", "capacity_100", "capacity_1000", "acks_1000",
    "merge",     "idle_memory", "catchup",     "vector_cost",  "cluster"};

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

  TempDir work(options.dir, "lattice-relay-bench-");
  std::optional<TempDir> shm;
  if (options.tmpfs) shm.emplace("/dev/shm", "lattice-relay-bench-");
  Context ctx{options, make_setup(work.path(), options.relay), work.path(),
              shm ? shm->path() : work.path()};
  if (options.relay_threads > 0)
    ctx.setup.relay_flags = {"--threads", std::to_string(options.relay_threads)};
  // connect_websocket builds a TLS context per connection and loads the system's default
  // trust store into it (144 certificates on Debian: ~40 ms of CPU each time, measured). A
  // trust store holding only the relay's certificate keeps 1,000 connections from costing the
  // load generator a minute; verification stays on.
  const fs::path empty_dir = work.path() / "no-ca-dir";
  fs::create_directories(empty_dir);
  setenv("SSL_CERT_FILE", ctx.setup.cert().c_str(), 1);
  setenv("SSL_CERT_DIR", empty_dir.c_str(), 1);

  std::printf(
      "%s\n",
      Json()
          .str("scenario", "meta")
          .str("commit", source_commit())
          .boolean("source_modified", source_modified())
          .str("build_type", build_type())
          .str("compiler", compiler())
          .integer("nproc", static_cast<std::int64_t>(std::thread::hardware_concurrency()))
          .str("loadavg", loadavg())
          .boolean("tls", true)
          .str("relay_data", options.tmpfs ? "tmpfs (/dev/shm)" : "disk (" + options.dir + ")")
          .integer("writer_window", static_cast<std::int64_t>(options.writer_window))
          .integer("relay_threads", static_cast<std::int64_t>(options.relay_threads))
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
      } else if (name == "acks_1000") {
        line = acks(ctx, name, options.quick ? 200 : 1000,
                    options.quick ? std::vector<double>{20, 50}
                                  : std::vector<double>{100, 250, 500, 1000, 2500, 5000, 10000});
      } else if (name == "merge") {
        line = merge(ctx);
      } else if (name == "vector_cost") {
        line = vector_cost(ctx);
      } else if (name == "cluster") {
        line = cluster(ctx);
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
