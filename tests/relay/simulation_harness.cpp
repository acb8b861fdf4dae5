#include "tests/relay/simulation_harness.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace lattice::sim {

storage::ReplicaOptions Harness::replica_options() {
  storage::ReplicaOptions options;
  options.physical_clock = [this] { return kEpochMs + static_cast<std::uint64_t>(net_.now()); };
  options.new_site_id = [this] { return crdt::SiteId::random(rng_); };
  options.synchronous = "OFF";  // durability is not what these tests are about
  return options;
}

relay::HubOptions Harness::hub_options(const std::filesystem::path& data_dir) {
  relay::HubOptions options;
  options.data_dir = data_dir.string();
  options.replica_options = replica_options();
  options.limits.max_outgoing_batch_changes = 25;
  options.limits.catch_up_round_bytes = 4096;  // catch-ups in several rounds, paced by delivery
  options.limits.piece_bytes = 700;            // larger changesets in pieces (protocol 3)
  // Group commit: a commit runs 0 to 4 ms after the first frame it takes, and takes whatever
  // frames arrived meanwhile (a relay killed before it loses them unacknowledged).
  options.defer = [this](std::function<void()> task) {
    net_.post(static_cast<double>(pick(5)), std::move(task));
  };
  // The commit's disk sync on the relay's disk thread takes 0 to 3 ms, while frames keep
  // arriving; then its acknowledgements wait for their turn on the relay's thread (defer). A
  // relay killed meanwhile loses the group, or has it on disk unacknowledged.
  options.offload = [this](std::function<void()> task) {
    net_.post(static_cast<double>(pick(4)), std::move(task));
  };
  return options;
}

relay::HubOptions Harness::device_hub_options(const std::filesystem::path& data_dir,
                                              const std::string& schema_sql) {
  relay::HubOptions options = hub_options(data_dir);
  options.schema_sql = schema_sql;
  options.authenticate = [](std::string_view) {
    return relay::Grant{"device", kNamespace, relay::kGrantRead | relay::kGrantWrite};
  };
  return options;
}

transport::LoopbackNetwork::Faults Harness::link_faults() {
  transport::LoopbackNetwork::Faults f = faults_;
  if (pick(2) == 0) {
    f.in_order = true;
    f.duplicate = 0;
  }
  return f;
}

void Harness::connect(SimDevice& d) {
  if (d.session || !d.wants_online) return;
  relay::Hub* hub = relay_for(d);
  if (!hub) {
    schedule_reconnect(d);
    return;
  }
  const transport::LoopbackNetwork::Faults faults = link_faults();
  d.link_in_order = faults.in_order;
  auto [client, server] = net_.connect(d.name, faults);
  hub->accept(server, kNamespace);
  engine::SyncSession::Events events;
  events.on_rekey = [this, &d](const transport::Rekey&) { on_rekey(d); };
  events.on_closed = [this, &d](const std::string& reason) {
    d.closed_because = reason;
    // The session may not be destroyed from inside its own callback.
    net_.post(0, [this, &d] {
      d.session.reset();
      schedule_reconnect(d);
    });
  };
  // Small batches and pieces, so backlogs and catch-ups go in chunks and transactions of more
  // than 20 changes or 500 bytes in pieces.
  engine::SyncSession::Options options{kNamespace, d.token, 20};
  options.piece_bytes = 500;
  d.session = std::make_unique<engine::SyncSession>(*d.replica, client, options, events);
  d.session->start();
}

void Harness::schedule_reconnect(SimDevice& d) {
  if (d.connect_pending) return;
  d.connect_pending = true;
  net_.post(reconnect_delay(d), [this, &d] {
    d.connect_pending = false;
    connect(d);
  });
}

SmallWorld::SmallWorld(std::uint64_t seed, const std::string& prefix)
    : Harness(seed), dir_(seed_directory(prefix, seed)) {
  faults_ = transport::LoopbackNetwork::Faults{1, 1, 0, true};
  std::filesystem::remove_all(dir_);
}

SmallWorld::~SmallWorld() {
  for (auto& d : devices_) d->session.reset();
  hub_.reset();
  std::filesystem::remove_all(dir_);
}

SimDevice& SmallWorld::add_device(const std::string& name, const std::string& schema_sql) {
  auto d = std::make_unique<SimDevice>();
  d->name = name;
  d->replica = storage::Replica::open(":memory:", replica_options());
  d->replica->exec(schema_sql);
  devices_.push_back(std::move(d));
  return *devices_.back();
}

std::optional<std::uint64_t> replayed_seed() {
  if (const char* replay = std::getenv("LATTICE_SIM_SEED"))
    return std::strtoull(replay, nullptr, 10);
  return std::nullopt;
}

std::uint64_t seed_count(std::uint64_t fallback) {
  const char* count_text = std::getenv("LATTICE_SIM_SEEDS");
  return count_text ? std::strtoull(count_text, nullptr, 10) : fallback;
}

std::vector<std::uint64_t> seeds_to_run(std::uint64_t fallback, std::uint64_t min_share) {
  const std::uint64_t count = seed_count(fallback);
  std::uint64_t share = 1, shares = 1;
  if (const char* shard = std::getenv("LATTICE_SIM_SHARD")) {
    char* slash = nullptr;
    share = std::strtoull(shard, &slash, 10);
    shares = *slash == '/' ? std::strtoull(slash + 1, nullptr, 10) : 0;
    if (shares == 0 || share == 0 || share > shares) {
      std::fprintf(stderr, "LATTICE_SIM_SHARD=%s is not k/m with 1 <= k <= m\n", shard);
      std::exit(2);
    }
  }
  std::vector<std::uint64_t> seeds;
  if (count / shares < min_share) {
    if (share == 1)
      for (std::uint64_t seed = 1; seed <= count; ++seed) seeds.push_back(seed);
    return seeds;
  }
  // Consecutive seeds, not every m-th: a simulation may vary its world by the seed's parity.
  for (std::uint64_t seed = (share - 1) * count / shares + 1; seed <= share * count / shares;
       ++seed)
    seeds.push_back(seed);
  return seeds;
}

std::filesystem::path seed_directory(const std::string& prefix, std::uint64_t seed) {
  return std::filesystem::temp_directory_path() /
         (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(seed));
}

}  // namespace lattice::sim
