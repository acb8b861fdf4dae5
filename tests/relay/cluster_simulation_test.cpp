// The deterministic simulation in cluster mode (docs/cluster.md): three relays' hubs over one
// shared log, as `lattice-relay serve --cluster-db` runs them over PostgreSQL, and devices that
// connect to any of them. The log is a vector with PostgreSQL's guarantees: gapless positions in
// commit order, each (site, first sequence) logged once. Its faults: stretches where it cannot
// be reached (appends fail, so groups wait in the hub and are tried again; hellos are refused;
// followers skip their sweep), appends that commit and then lose their answer (the retry finds
// the batch logged), and notifications that are lost or late (the followers' sweep every second
// finds what they missed); half of them carry the batch, as PostgreSQL's do when it is small,
// which a relay takes without reading the log when it continues what it applied. Relays are
// killed and restarted, a third of the time with their files removed: a relay's files are
// caches the log rebuilds. Devices drop their connections, go offline, and reconnect to any
// relay. After the storm every device and every relay holds the same rows and digests, every
// relay has applied the whole log, and nothing a device wrote is lost: each row of its ledger
// (rows only it inserts and votes on) has all its votes everywhere.
// Relays store snapshots of the namespace and prune the log as lattice-relay does (below the
// newest snapshot and what every relay that reported within the grace applied), so a relay
// killed or without devices for a while finds the log pruned past its replica and rebuilds it
// from the snapshot, disconnecting its devices.
// A failing seed is printed; LATTICE_SIM_SEED=<seed> replays it alone.

#include <doctest/doctest.h>

#include <array>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "crdt/error.hpp"
#include "relay/hub.hpp"
#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using sim::kNamespace;
using transport::LoopbackNetwork;

// What a seed's storm did, summed over seeds and checked to have happened.
struct ClusterStats {
  int relay_kills = 0;
  int wiped_relays = 0;  // of those, restarted without their files
  int log_outages = 0;
  int lost_answers = 0;       // appends committed whose answer was lost
  int duplicate_appends = 0;  // appends of a batch already logged (retries, other relays)
  int lost_notifications = 0;
  int carried_batches = 0;            // batches relays took from notifications, not from the log
  std::uint64_t groups_held = 0;      // group commits the log failed, tried again
  std::uint64_t batches_applied = 0;  // batches relays took from the log
  std::uint64_t refused_hellos = 0;   // hellos answered internal: the log was unreachable
  int rekeys = 0;                     // devices told to take a new site id
  int snapshots = 0;                  // snapshots stored for the log
  int prunes = 0;                     // prunings that deleted entries
  std::uint64_t hydrations = 0;       // relays' replicas rebuilt from a snapshot

  ClusterStats& operator+=(const ClusterStats& o) {
    relay_kills += o.relay_kills;
    wiped_relays += o.wiped_relays;
    log_outages += o.log_outages;
    lost_answers += o.lost_answers;
    duplicate_appends += o.duplicate_appends;
    lost_notifications += o.lost_notifications;
    carried_batches += o.carried_batches;
    groups_held += o.groups_held;
    batches_applied += o.batches_applied;
    refused_hellos += o.refused_hellos;
    rekeys += o.rekeys;
    snapshots += o.snapshots;
    prunes += o.prunes;
    hydrations += o.hydrations;
    return *this;
  }
};

struct Device : sim::SimDevice {
  std::map<std::string, std::int64_t> ledger;  // row -> votes: rows only this device writes
};

class ClusterWorld : sim::Harness {
 public:
  static constexpr std::size_t kRelays = 3;
  static constexpr std::size_t kDevices = 5;

  ClusterWorld(std::uint64_t seed, std::filesystem::path dir)
      : Harness(seed), dir_(std::move(dir)) {
    std::filesystem::remove_all(dir_);
    for (std::size_t i = 0; i < kRelays; ++i) {
      start_relay(i);
      net_.post(static_cast<double>(pick(1000)), [this, i] { sweep(i); });
    }
    for (std::size_t i = 0; i < kDevices; ++i) {
      auto d = std::make_unique<Device>();
      d->name = "device" + std::to_string(i);
      d->replica = storage::Replica::open(":memory:", replica_options());
      d->replica->exec(test::kTodoSchema);
      devices_.push_back(std::move(d));
    }
    for (auto& d : devices_) connect(*d);
  }

  ~ClusterWorld() override {
    for (auto& d : devices_) d->session.reset();
    for (auto& relay : relays_) relay.reset();
    std::filesystem::remove_all(dir_);
  }

  void storm(int steps) {
    for (int step = 0; step < steps; ++step) {
      const auto action = pick(100);
      Device& d = *devices_[pick(devices_.size())];
      if (action < 50) {
        write(d);
      } else if (action < 62) {
        write_ledger(d);
      } else if (action < 68) {
        if (d.session) d.session->close("dropped by the simulation");
      } else if (action < 71) {
        d.wants_online = !d.wants_online;
        if (!d.wants_online && d.session) d.session->close("offline for a while");
        if (d.wants_online) connect(d);
      } else if (action < 74) {
        kill_relay(pick(kRelays));
      } else if (action < 76 && !log_down_) {
        ++stats_.log_outages;
        log_down_ = true;
        net_.post(100 + static_cast<double>(pick(1500)), [this] { log_down_ = false; });
      } else if (action < 82) {
        keep_up(pick(kRelays));
      }
      net_.run_until(net_.now() + static_cast<double>(pick(15)));
    }
  }

  // Ends every fault: the log is reachable, every relay up, every device online over clean
  // links; then the followers catch up until relays and devices agree.
  void heal() {
    faults_ = LoopbackNetwork::Faults{1, 1, 0};
    net_.run_until(net_.now() + 2000);  // outages end, killed relays restart
    log_down_ = false;
    for (std::size_t i = 0; i < kRelays; ++i)
      if (!relays_[i]) start_relay(i);
    for (auto& d : devices_) {
      d->wants_online = true;
      if (d->session) d->session->close("healing");
    }
    net_.run_until(net_.now() + 100);
    for (auto& d : devices_)
      if (!d->session) connect(*d);
    net_.run_until(net_.now() + 3000);
    // The periodic sweeps stop, so that the network can go idle; each relay then takes the
    // whole log, as it would for its next device's hello (a relay follows only the namespaces
    // with devices connected to it), at least once: one rebuilt from a snapshot holds what a
    // later position of the log brings, so it agrees before it has applied the whole log.
    sweeping_ = false;
    for (int round = 0; round < 20 && (round == 0 || !agreed()); ++round) {
      for (std::size_t i = 0; i < kRelays; ++i) {
        relays_[i]->replica(kNamespace);
        follow(i, /*every_namespace=*/true);
      }
      REQUIRE(net_.run_until_idle(5'000'000));
    }
  }

  void check() {
    storage::Replica& first = relays_[0]->replica(kNamespace);
    const std::string expected = test::dump_table(first, "todo");
    const std::string expected_vv = first.version_vector().to_json();
    const std::string expected_digest = first.digest();
    for (std::size_t i = 0; i < kRelays; ++i) {
      INFO("relay " << i);
      storage::Replica& r = relays_[i]->replica(kNamespace);
      REQUIRE(test::dump_table(r, "todo") == expected);
      REQUIRE(r.version_vector().to_json() == expected_vv);
      REQUIRE(r.digest() == expected_digest);
      REQUIRE(relays_[i]->cluster_positions().at(kNamespace) ==
              static_cast<std::int64_t>(log_.size()));
      REQUIRE(pruned_ <= static_cast<std::int64_t>(log_.size()));
      REQUIRE(relays_[i]->batches_waiting_for_cluster() == 0);
    }
    for (auto& d : devices_) {
      INFO(d->name);
      REQUIRE(test::dump_table(*d->replica, "todo") == expected);
      REQUIRE(d->replica->version_vector().to_json() == expected_vv);
      REQUIRE(d->replica->digest() == expected_digest);
      REQUIRE(d->session);
      REQUIRE(d->session->in_sync());
    }
    // Nothing a device wrote was lost or counted twice.
    for (auto& d : devices_)
      for (const auto& entry : d->ledger) {
        // (A structured binding cannot be captured by INFO's lambda in clang 14.)
        const std::string& key = entry.first;
        INFO("ledger row " << key);
        const auto row = first.query("SELECT votes FROM todo WHERE id = ?", {key});
        REQUIRE(row.rows.size() == 1);
        REQUIRE(std::get<std::int64_t>(row.rows[0][0]) == entry.second);
      }
    // The log holds each batch once, at gapless positions.
    std::set<std::pair<std::string, std::uint64_t>> keys;
    for (std::size_t i = 0; i < log_.size(); ++i) {
      REQUIRE(log_[i].position == static_cast<std::int64_t>(i + 1));
      REQUIRE(keys.insert({log_[i].site.to_hex(), log_[i].first_seq}).second);
    }
  }

  ClusterStats stats() {
    ClusterStats s = stats_;
    for (auto& relay : relays_)
      if (relay) add_counters(s, *relay);
    return s;
  }

 private:
  void on_rekey(sim::SimDevice&) override { ++stats_.rekeys; }

  relay::Hub* relay_for(sim::SimDevice&) override {
    std::vector<relay::Hub*> up;
    for (auto& relay : relays_)
      if (relay) up.push_back(relay.get());
    return up.empty() ? nullptr : up[pick(up.size())];
  }

  void start_relay(std::size_t i) {
    relay::HubOptions options =
        device_hub_options(dir_ / ("relay" + std::to_string(i)), test::kTodoSchema);
    options.log_to_cluster = [this, i](const std::string&,
                                       const std::vector<relay::ClusterBatch>& batches) {
      if (log_down_) throw Error(ErrorCode::kIo, "PostgreSQL: cannot connect: refused");
      for (const relay::ClusterBatch& b : batches) append(b, i);
      if (pick(20) == 0) {
        ++stats_.lost_answers;
        throw Error(ErrorCode::kIo, "PostgreSQL: server closed the connection unexpectedly");
      }
    };
    options.read_cluster = [this](const std::string&, std::int64_t after) {
      if (log_down_) throw Error(ErrorCode::kIo, "PostgreSQL: cannot connect: refused");
      return read(after);
    };
    options.fetch_cluster_snapshot =
        [this](const std::string&,
               const std::string& path) -> std::optional<relay::ClusterSnapshot> {
      if (log_down_) throw Error(ErrorCode::kIo, "PostgreSQL: cannot connect: refused");
      if (!snapshot_) return std::nullopt;
      std::filesystem::copy_file(snapshot_file(), path);
      return snapshot_;
    };
    options.defer_for = [this](std::chrono::milliseconds delay, std::function<void()> task) {
      net_.post(static_cast<double>(delay.count()), std::move(task));
    };
    relays_[i] = std::make_unique<relay::Hub>(options);
  }

  void kill_relay(std::size_t i) {
    if (!relays_[i]) return;
    ++stats_.relay_kills;
    add_counters(stats_, *relays_[i]);
    reported_.erase(i);
    relays_[i].reset();
    const bool wipe = pick(3) == 0;
    net_.post(50 + static_cast<double>(pick(500)), [this, i, wipe] {
      if (relays_[i]) return;
      if (wipe) {
        ++stats_.wiped_relays;
        std::filesystem::remove_all(dir_ / ("relay" + std::to_string(i)));
      }
      start_relay(i);
    });
  }

  static void add_counters(ClusterStats& s, const relay::Hub& hub) {
    s.groups_held += hub.counters().cluster_groups_held;
    s.batches_applied += hub.counters().cluster_batches_applied;
    s.hydrations += hub.counters().cluster_hydrations;
    const auto& rejected = hub.counters().rejected;
    if (auto it = rejected.find("internal"); it != rejected.end()) s.refused_hellos += it->second;
  }

  // The log's append: once per (site, first sequence); the other relays are notified, each
  // notification lost one time in five or late by up to 30 ms, half of them with the batch.
  void append(const relay::ClusterBatch& batch, std::size_t from) {
    if (!logged_.insert({batch.site.to_hex(), batch.first_seq}).second) {
      ++stats_.duplicate_appends;
      return;
    }
    relay::ClusterBatch entry = batch;
    entry.position = static_cast<std::int64_t>(log_.size()) + 1;
    log_.push_back(std::move(entry));
    for (std::size_t i = 0; i < kRelays; ++i) {
      if (i == from) continue;
      if (pick(5) == 0) {
        ++stats_.lost_notifications;
        continue;
      }
      if (pick(2) == 0)
        net_.post(static_cast<double>(pick(30)), [this, i] { follow(i); });
      else
        net_.post(static_cast<double>(pick(30)),
                  [this, i, carried = log_.back()] { take_carried(i, carried); });
    }
  }

  // What lattice-relay's follower does with a batch a notification carried: hands it to the
  // hub without reading the log when it comes right after the position the relay applied;
  // otherwise (a notification before it lost, or late) reads the log, as when woken.
  void take_carried(std::size_t i, const relay::ClusterBatch& carried) {
    relay::Hub* hub = relays_[i].get();
    if (!hub) return;
    const auto positions = hub->cluster_positions(/*with_devices_only=*/true);
    const auto it = positions.find(kNamespace);
    if (it == positions.end() || carried.position <= it->second) return;
    if (carried.position == it->second + 1) {
      try {
        const auto applied = hub->apply_from_cluster(kNamespace, {carried});
        ++stats_.carried_batches;
        if (!applied || *applied >= carried.position) return;
      } catch (const Error&) {
        return;  // a clock ahead of this relay's: the next sweep tries again
      }
    }
    follow(i);
  }

  // At most 40 entries after `after` (and after the pruned ones): a reader loops, as over
  // PostgreSQL.
  relay::ClusterRead read(std::int64_t after) const {
    relay::ClusterRead out;
    out.pruned = pruned_;
    for (auto i = static_cast<std::size_t>(std::max(after, pruned_));
         i < log_.size() && out.batches.size() < 40; ++i)
      out.batches.push_back(log_[i]);
    return out;
  }

  std::filesystem::path snapshot_file() const { return dir_ / "newest.snapshot"; }

  // What lattice-relay's keep_up_cluster does: reports the positions of the namespaces with
  // devices here, stores a snapshot when the log grew by 10 since the newest, and prunes below
  // it and every position reported within the grace (500 ms).
  void keep_up(std::size_t i) {
    relay::Hub* hub = relays_[i].get();
    if (!hub || log_down_) return;
    const auto positions = hub->cluster_positions(/*with_devices_only=*/true);
    if (auto it = positions.find(kNamespace); it != positions.end())
      reported_[i] = {it->second, net_.now()};
    else
      return;
    if (positions.at(kNamespace) - (snapshot_ ? snapshot_->position : 0) >= 10) {
      const auto fresh = dir_ / "fresh.snapshot";
      std::filesystem::remove(fresh);
      const relay::ClusterSnapshot taken = hub->cluster_snapshot(kNamespace, fresh.string());
      if (!snapshot_ || taken.position > snapshot_->position) {
        std::filesystem::rename(fresh, snapshot_file());
        snapshot_ = taken;
        ++stats_.snapshots;
      }
    }
    if (!snapshot_) return;
    std::int64_t upto = snapshot_->position;
    for (const auto& [relay, report] : reported_)
      if (net_.now() - report.second <= 500) upto = std::min(upto, report.first);
    if (upto > pruned_) {
      pruned_ = upto;
      ++stats_.prunes;
    }
  }

  // What a relay's follower does when woken: the namespaces with devices there (or all open
  // there), up to the head.
  void follow(std::size_t i, bool every_namespace = false) {
    relay::Hub* hub = relays_[i].get();
    if (!hub || log_down_) return;
    for (auto [ns, position] : hub->cluster_positions(/*with_devices_only=*/!every_namespace)) {
      for (;;) {
        const relay::ClusterRead got = read(position);
        if (got.batches.empty() && got.pruned <= position) break;
        std::optional<std::int64_t> applied;
        try {
          applied = hub->apply_from_cluster(ns, got.batches, got.pruned);
        } catch (const Error& e) {
          break;  // a clock ahead of this relay's: the next sweep tries again
        }
        if (!applied || *applied == position) break;
        position = *applied;
      }
    }
  }

  void sweep(std::size_t i) {
    if (!sweeping_) return;
    follow(i);
    keep_up(i);
    net_.post(1000, [this, i] { sweep(i); });
  }

  bool agreed() {
    std::optional<std::string> vv;
    for (auto& relay : relays_) {
      const std::string v = relay->replica(kNamespace).version_vector().to_json();
      if (vv && *vv != v) return false;
      vv = v;
    }
    for (auto& d : devices_)
      if (!d->session || !d->session->in_sync() || d->replica->version_vector().to_json() != *vv)
        return false;
    return true;
  }

  void write(Device& d) {
    const std::string key = "k" + std::to_string(pick(20));
    storage::Replica& r = *d.replica;
    switch (pick(5)) {
      case 0:
      case 1:
        r.query("INSERT INTO todo(id, title) VALUES (?, ?) ON CONFLICT DO NOTHING",
                {key, "t" + std::to_string(pick(1000))});
        break;
      case 2:
        r.query("UPDATE todo SET title = ? WHERE id = ?", {"t" + std::to_string(pick(1000)), key});
        break;
      case 3:
        r.query("UPDATE todo SET votes = votes + 1 WHERE id = ?", {key});
        break;
      default:
        r.query("DELETE FROM todo WHERE id = ?", {key});
        break;
    }
    if (d.session) d.session->push_local_changes();
  }

  // A row only this device writes: inserted, then voted up.
  void write_ledger(Device& d) {
    if (d.ledger.empty() || pick(3) == 0) {
      const std::string key = d.name + "-L" + std::to_string(d.ledger.size());
      d.replica->query("INSERT INTO todo(id, title) VALUES (?, 'ledger')", {key});
      d.ledger[key] = 0;
    } else {
      auto it = d.ledger.begin();
      std::advance(it, static_cast<long>(pick(d.ledger.size())));
      d.replica->query("UPDATE todo SET votes = votes + 1 WHERE id = ?", {it->first});
      ++it->second;
    }
    if (d.session) d.session->push_local_changes();
  }

  std::filesystem::path dir_;
  std::array<std::unique_ptr<relay::Hub>, kRelays> relays_;
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<relay::ClusterBatch> log_;
  std::set<std::pair<std::string, std::uint64_t>> logged_;
  std::int64_t pruned_ = 0;  // entries up to it are gone
  std::optional<relay::ClusterSnapshot> snapshot_;
  std::map<std::size_t, std::pair<std::int64_t, double>> reported_;  // relay -> (position, when)
  bool log_down_ = false;
  bool sweeping_ = true;
  ClusterStats stats_;
};

std::string describe(const ClusterStats& s) {
  std::ostringstream out;
  out << s.relay_kills << " relay kills (" << s.wiped_relays << " without their files), "
      << s.log_outages << " log outages, " << s.groups_held << " groups held and retried, "
      << s.refused_hellos << " connections refused internal, " << s.lost_answers
      << " lost append answers, " << s.duplicate_appends << " duplicate appends, "
      << s.lost_notifications << " lost notifications, " << s.carried_batches
      << " batches taken from notifications, " << s.batches_applied
      << " batches applied from the log, " << s.rekeys << " rekeys, " << s.snapshots
      << " snapshots, " << s.prunes << " prunings, " << s.hydrations << " relays hydrated";
  return out.str();
}

ClusterStats run_seed(std::uint64_t seed, int steps) {
  INFO("seed " << seed << " (replay with LATTICE_SIM_SEED=" << seed << ")");
  ClusterWorld world(seed, sim::seed_directory("lattice-cluster-sim", seed));
  world.storm(steps);
  world.heal();
  world.check();
  return world.stats();
}

TEST_CASE("relays of a cluster over one log agree with every device after a storm of faults") {
  if (const auto replay = sim::replayed_seed()) {
    MESSAGE(describe(run_seed(*replay, 250)));
    return;
  }
  const std::vector<std::uint64_t> seeds = sim::seeds_to_run(1000, 50);
  ClusterStats total;
  for (const std::uint64_t seed : seeds) total += run_seed(seed, 250);
  MESSAGE(seeds.size() << " seeds: " << describe(total));
  if (seeds.size() >= 50) {
    CHECK(total.relay_kills > 0);
    CHECK(total.wiped_relays > 0);
    CHECK(total.log_outages > 0);
    CHECK(total.groups_held > 0);
    CHECK(total.refused_hellos > 0);
    CHECK(total.lost_answers > 0);
    CHECK(total.duplicate_appends > 0);
    CHECK(total.lost_notifications > 0);
    CHECK(total.carried_batches > 0);
    CHECK(total.batches_applied > 0);
    CHECK(total.snapshots > 0);
    CHECK(total.prunes > 0);
    CHECK(total.hydrations > 0);
  }
}

}  // namespace
}  // namespace lattice
