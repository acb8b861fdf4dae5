#pragma once
// What the deterministic simulations of the relay share (simulation_test.cpp: the storm of
// faults; mixed_version_simulation_test.cpp: devices on several schema versions): a seeded
// loopback network on a virtual clock, replicas whose clocks and site ids come from it, the hub,
// and devices that connect to it over links with seeded faults and reconnect after a close.
// The same seed replays the same run exactly.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/sync/sync_session.hpp"
#include "relay/hub.hpp"
#include "storage/replica.hpp"
#include "transport/loopback.hpp"

namespace lattice::sim {

constexpr const char* kNamespace = "board";
constexpr std::uint64_t kEpochMs = 1'800'000'000'000;  // virtual time 0

// One device: its replica and, while connected, one sync session.
struct SimDevice {
  std::string name;
  std::string token = "device-token";
  std::unique_ptr<storage::Replica> replica;
  std::unique_ptr<engine::SyncSession> session;
  bool wants_online = true;
  bool connect_pending = false;
  std::string closed_because;  // the last session's close reason
  bool link_in_order = false;  // the last session's link neither reorders nor duplicates
};

class Harness {
 public:
  explicit Harness(std::uint64_t seed) : net_(seed), rng_(seed ^ 0x9e3779b97f4a7c15ull) {}
  virtual ~Harness() = default;
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

 protected:
  std::size_t pick(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }

  // Clocks on the virtual time, site ids from the seed, no fsync.
  storage::ReplicaOptions replica_options();

  // The hub's options for a relay keeping its files in `data_dir`: small outgoing batches,
  // catch-ups in rounds and changesets in pieces, group commits on the virtual clock, so that
  // every path runs. No authenticator.
  relay::HubOptions hub_options(const std::filesystem::path& data_dir);
  // The same, for a namespace created with `schema_sql` where every token is a device's with
  // the read and write rights.
  relay::HubOptions device_hub_options(const std::filesystem::path& data_dir,
                                       const std::string& schema_sql);

  // Half the connections are like TCP: delayed, in order, never duplicated; the other half
  // also reorder and duplicate frames, which no WebSocket does but which stresses merges. On
  // those, changesets in pieces mostly arrive out of order: refused (a piece names its offset
  // and its changeset's number, and so does the last frame), the device reconnects.
  transport::LoopbackNetwork::Faults link_faults();

  // Opens a session for `d` to relay_for(d) when it wants to be online and has none; without a
  // relay, tries again later. After a close the device reconnects (reconnect_delay).
  void connect(SimDevice& d);
  // The relay `d` connects to now: hub_, or one of a cluster's (null: none is up).
  virtual relay::Hub* relay_for(SimDevice& d) {
    (void)d;
    return hub_.get();
  }
  void schedule_reconnect(SimDevice& d);

  // Hooks: a session of `d` was told to rekey; how long `d` waits before reconnecting after
  // its session closed (d.closed_because says why).
  virtual void on_rekey(SimDevice& d) { (void)d; }
  virtual double reconnect_delay(SimDevice& d) {
    (void)d;
    return 10 + static_cast<double>(pick(200));
  }

  transport::LoopbackNetwork net_;
  std::mt19937_64 rng_;
  transport::LoopbackNetwork::Faults faults_{1, 40, 0.03};
  std::unique_ptr<relay::Hub> hub_;
};

// A hub and a few devices over clean links (1 ms, in order, never duplicated), for tests that
// step a scenario by hand rather than storm it; the relay's files in a fresh directory, removed
// at the end.
class SmallWorld : public Harness {
 public:
  // `prefix` names the directory (seed_directory).
  SmallWorld(std::uint64_t seed, const std::string& prefix);
  ~SmallWorld() override;

 protected:
  // A device with an in-memory replica made by `schema_sql`, not connected yet.
  SimDevice& add_device(const std::string& name, const std::string& schema_sql);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SimDevice>> devices_;
};

// Which seeds a simulation runs: LATTICE_SIM_SEED=<seed> replays that one alone; otherwise
// seeds 1 to LATTICE_SIM_SEEDS, or to `fallback` without it.
std::optional<std::uint64_t> replayed_seed();
std::uint64_t seed_count(std::uint64_t fallback);
// The seeds of seed_count(fallback) this process runs. With LATTICE_SIM_SHARD=k/m (ctest runs
// the m shares side by side, one per core), the k-th of m runs of consecutive seeds, when
// every share has at least `min_share` seeds (a test checks what its storm did from that many on);
// otherwise share 1 runs them all and the others none.
std::vector<std::uint64_t> seeds_to_run(std::uint64_t fallback, std::uint64_t min_share);

// A fresh directory for one seed's files, named after the process and the seed.
std::filesystem::path seed_directory(const std::string& prefix, std::uint64_t seed);

}  // namespace lattice::sim
