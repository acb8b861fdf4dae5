#pragma once
// The scenarios of lattice-relay-bench (docs/benchmarks.md). Each starts its own relays on
// fresh data directories, is bounded in time, and returns the one JSON line it reports; a line
// with a "failure" or "first_error" field tells that it did not run cleanly. Throws when it
// cannot run at all.

#include <cstddef>
#include <string>
#include <vector>

#include "bench/relay_fleet.hpp"
#include "bench/support.hpp"

namespace lattice::bench {

// The command line of lattice-relay-bench.
struct Options {
  bool quick = false;
  std::vector<std::string> scenarios;
  std::string relay;
  std::string dir;
  bool tmpfs = false;
  std::size_t writer_window = 0;
  unsigned relay_threads = 0;  // 0: the relay's default (one network thread per core)
  double seconds = 10;
};

// What the scenarios of one run share.
struct Context {
  Options options;
  Setup setup;
  fs::path work;       // temporary files of the bench
  fs::path data_root;  // where relays' data directories go (work, or /dev/shm with --tmpfs)
  int runs = 0;

  // A new, empty data directory for a relay.
  fs::path fresh_data() {
    const fs::path dir = data_root / ("data" + std::to_string(++runs));
    fs::create_directories(dir);
    return dir;
  }
};

// A progress line on stderr.
void progress(const std::string& line);

// Latency from a write to its arrival on every other device, p50/p99/max, with `devices`
// devices of which `writers` write, at `writes_per_second` in all.
std::string fanout(Context& ctx, const std::string& name, int devices, int writers,
                   double writes_per_second);

// The write rate raised step by step through `steps` (writes per second) until p99 > 50 ms.
std::string capacity(Context& ctx, const std::string& name, int devices, int writers,
                     std::vector<double> steps);

// Acknowledged writes per second with every one of `devices` devices a writer: the write rate
// raised through `steps` (writes per second in all) until a write is left unacknowledged or
// the send-to-acknowledgement p99 passes 50 ms. What group commit is for: one fsync per frame
// capped this at 250 to 300 per second.
std::string acks(Context& ctx, const std::string& name, int devices, std::vector<double> steps);

// Relays of a cluster (docs/cluster.md) against a relay alone, in one run: the same load (100
// devices, 10 writers, 1,000 writes a second; devices spread over the relays) on a relay alone
// and on 1, 2 and 3 relays over one PostgreSQL, with delivery and acknowledgement latency and
// CPU per delivery summed over every relay and PostgreSQL process (with 2 relays, also the CPU
// of a third that has the namespace open but no device in it); then the highest write rate
// acknowledged within 50 ms p99, alone and on one relay of a cluster.
std::string cluster(Context& ctx);

// The hub compares each device's version vector with the relay's on every fan-out. The same
// load (500 devices, the same write rate) with 10 writing sites, then with every device a
// writing site (each writes once before the measured run), shows what that costs as
// namespaces collect sites.
std::string vector_cost(Context& ctx);

// One device pushes `batches` batches of about 50,000 changes of fresh rows, all at once; the
// relay merges them one after another.
std::string merge(Context& ctx);

// Relay RSS per idle connection: live devices over TLS, bare TLS WebSockets, and live devices
// without TLS.
std::string idle_memory(Context& ctx);

// A new device (engine::SyncSession into a replica file) receives a namespace of 1,000,000
// changes, against a copy of the relay's database file; with the relay's default limits, then
// with an outbound queue that holds the whole catch-up.
std::string catchup(Context& ctx);

}  // namespace lattice::bench
