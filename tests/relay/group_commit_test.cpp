// The relay's group commit with its disk sync on another thread (HubOptions::offload): nothing
// is acknowledged or fanned out before the group is durable, the hub goes on receiving while it
// syncs, what must see the namespace durable (a hello) settles it first, and a relay stopped on
// either side of the sync loses nothing it acknowledged. The offload thread here is a queue the
// test runs by hand, so each step happens exactly where the test says.

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <string>

#include "crdt/error.hpp"
#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

class GroupCommit : sim::SmallWorld {
 public:
  explicit GroupCommit(bool cluster = false)
      : SmallWorld(11, "lattice-group-commit"), cluster_(cluster) {
    start_relay();
  }
  ~GroupCommit() override {
    // As SmallWorld's, but before the queued syncs go: the hub abandons the one not started.
    for (auto& d : devices_) d->session.reset();
    hub_.reset();
  }

  void start_relay() {
    relay::HubOptions options = device_hub_options(dir_, test::kTodoSchema);
    options.offload = [this](std::function<void()> task) { syncs_.push_back(std::move(task)); };
    if (cluster_) {
      // A relay of a cluster whose log is a vector, unreachable while `log_down`.
      options.log_to_cluster = [this](const std::string&,
                                      const std::vector<relay::ClusterBatch>& batches) {
        if (log_down) throw Error(ErrorCode::kIo, "PostgreSQL: cannot connect: refused");
        for (const relay::ClusterBatch& b : batches)
          if (std::none_of(log.begin(), log.end(), [&](const relay::ClusterBatch& l) {
                return l.site == b.site && l.first_seq == b.first_seq;
              }))
            log.push_back(b);
      };
      options.read_cluster = [this](const std::string&, std::int64_t after) {
        if (log_down) throw Error(ErrorCode::kIo, "PostgreSQL: cannot connect: refused");
        (void)after;
        return relay::ClusterRead{};
      };
      options.defer_for = [this](std::chrono::milliseconds delay, std::function<void()> task) {
        timers.emplace_back(delay, std::move(task));
      };
    }
    hub_ = std::make_unique<relay::Hub>(options);
  }
  void stop_relay() { hub_.reset(); }

  sim::SimDevice& device(const std::string& name) {
    sim::SimDevice& d = add_device(name, test::kTodoSchema);
    connect(d);
    run();
    return d;
  }
  void write(sim::SimDevice& d, const std::string& id) {
    d.replica->exec("INSERT INTO todo(id, title) VALUES ('" + id + "', 'from " + d.name + "')");
    if (d.session) d.session->push_local_changes();
  }
  // Delivers frames and runs the hub's deferred tasks until nothing is left but the disk syncs.
  void run() { REQUIRE(net_.run_until_idle(1'000'000)); }
  std::size_t syncs_waiting() const { return syncs_.size(); }
  // The oldest disk sync the hub handed over runs (on "the disk thread").
  void run_sync() {
    REQUIRE_FALSE(syncs_.empty());
    auto task = std::move(syncs_.front());
    syncs_.pop_front();
    task();
  }
  // Rows of the relay's file as another connection reads them: what is durable.
  int rows_on_disk() {
    sqlite3* db = nullptr;
    const std::string path = (dir_ / (std::string(sim::kNamespace) + ".db")).string();
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* count = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT count(*) FROM todo", -1, &count, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(count) == SQLITE_ROW);
    const int rows = sqlite3_column_int(count, 0);
    sqlite3_finalize(count);
    sqlite3_close(db);
    return rows;
  }
  const relay::HubCounters& counters() { return hub_->counters(); }
  relay::Hub& hub() { return *hub_; }

  // A relay of a cluster: its log, whether the log fails, and the hub's timers (delay, task),
  // which the test fires by hand.
  bool log_down = false;
  std::vector<relay::ClusterBatch> log;
  std::deque<std::pair<std::chrono::milliseconds, std::function<void()>>> timers;
  std::chrono::milliseconds fire_timer() {
    REQUIRE_FALSE(timers.empty());
    auto [delay, task] = std::move(timers.front());
    timers.pop_front();
    task();
    return delay;
  }

 private:
  bool cluster_ = false;
  std::deque<std::function<void()>> syncs_;
};

std::string todo(sim::SimDevice& d) { return test::dump_table(*d.replica, "todo"); }

TEST_CASE("a group is acknowledged and fanned out only once its disk sync has run") {
  GroupCommit relay;
  sim::SimDevice& alice = relay.device("alice");
  sim::SimDevice& bob = relay.device("bob");

  relay.write(alice, "a1");
  relay.run();
  // Merged, and its sync handed to the disk thread: not durable, so neither acknowledged nor
  // sent on.
  REQUIRE(relay.syncs_waiting() == 1);
  CHECK(relay.hub().commits_in_flight() == 1);
  CHECK(alice.session->pending() == 1);
  CHECK(relay.rows_on_disk() == 0);
  CHECK(todo(bob).find("a1") == std::string::npos);

  // Meanwhile the hub goes on receiving: bob's batch waits for the next group, not for a
  // second sync beside the first.
  relay.write(bob, "b1");
  relay.run();
  CHECK(relay.syncs_waiting() == 1);
  CHECK(bob.session->pending() == 1);

  relay.run_sync();
  CHECK(relay.rows_on_disk() == 1);
  CHECK(alice.session->pending() == 1);  // durable; the ack goes from the hub's thread
  relay.run();
  CHECK(alice.session->pending() == 0);
  CHECK(todo(bob).find("a1") != std::string::npos);
  // The sync's completion started bob's group.
  REQUIRE(relay.syncs_waiting() == 1);
  CHECK(bob.session->pending() == 1);
  CHECK(todo(alice).find("b1") == std::string::npos);

  relay.run_sync();
  relay.run();
  CHECK(relay.syncs_waiting() == 0);
  CHECK(relay.hub().commits_in_flight() == 0);
  CHECK(alice.session->in_sync());
  CHECK(bob.session->in_sync());
  CHECK(todo(alice) == todo(bob));
  CHECK(relay.rows_on_disk() == 2);
  CHECK(relay.counters().group_commits == 2);
}

TEST_CASE("a hello during a disk sync is welcomed with what the group merged") {
  GroupCommit relay;
  sim::SimDevice& alice = relay.device("alice");
  relay.write(alice, "a1");
  relay.run();
  REQUIRE(relay.syncs_waiting() == 1);

  // The newcomer's catch-up reads the replica: the hub runs the sync itself rather than read
  // a group that may yet fail, or wait behind the disk thread's queue.
  sim::SimDevice& carol = relay.device("carol");
  CHECK(relay.hub().commits_in_flight() == 0);
  CHECK(carol.session->in_sync());
  CHECK(todo(carol) == todo(alice));
  CHECK(alice.session->pending() == 0);
  CHECK(relay.rows_on_disk() == 1);

  // The disk thread's task finds the job done and does nothing twice.
  relay.run_sync();
  relay.run();
  CHECK(relay.counters().group_commits == 1);
  CHECK(relay.syncs_waiting() == 0);
}

TEST_CASE("a relay stopped on either side of a disk sync loses nothing it acknowledged") {
  GroupCommit relay;
  sim::SimDevice& alice = relay.device("alice");

  // Stopped before the sync ran: the group is rolled back, never acknowledged, and the device
  // sends it again to the next relay.
  relay.write(alice, "a1");
  relay.run();
  REQUIRE(relay.syncs_waiting() == 1);
  relay.stop_relay();
  relay.run_sync();  // abandoned: it must not commit a group of a hub that is gone
  CHECK(relay.rows_on_disk() == 0);
  relay.start_relay();
  relay.run();  // alice's session closed with the relay; she reconnects and resends
  REQUIRE(alice.session);
  CHECK(alice.session->pending() == 1);
  REQUIRE(relay.syncs_waiting() == 1);
  relay.run_sync();
  relay.run();
  CHECK(alice.session->in_sync());
  CHECK(relay.rows_on_disk() == 1);

  // Stopped after the sync, before the acknowledgement: durable, unacknowledged. The next
  // relay holds it, and the device's hello learns so without merging it again.
  relay.write(alice, "a2");
  relay.run();
  REQUIRE(relay.syncs_waiting() == 1);
  relay.run_sync();
  relay.stop_relay();
  CHECK(relay.rows_on_disk() == 2);
  CHECK(alice.session->pending() == 1);
  relay.start_relay();
  relay.run();
  REQUIRE(alice.session);
  CHECK(alice.session->in_sync());
  CHECK(relay.counters().changes_merged == 0);
  CHECK(relay.syncs_waiting() == 0);
}

TEST_CASE("a relay of a cluster holds a group its log fails, unacknowledged, and tries again") {
  GroupCommit relay(/*cluster=*/true);
  sim::SimDevice& alice = relay.device("alice");
  sim::SimDevice& bob = relay.device("bob");
  relay.log_down = true;

  relay.write(alice, "a1");
  relay.run();
  relay.run_sync();  // the append fails: nothing is committed
  relay.run();
  CHECK(relay.rows_on_disk() == 0);
  CHECK(relay.counters().cluster_groups_held == 1);
  CHECK(relay.hub().batches_waiting_for_cluster() == 1);
  // Alice is still connected, unacknowledged; bob got nothing.
  REQUIRE(alice.session);
  CHECK(alice.session->state() == engine::SyncState::kLive);
  CHECK(alice.session->pending() == 1);
  CHECK(relay.hub().connection_count() == 2);
  CHECK(todo(bob).find("a1") == std::string::npos);

  // Bob's batch waits behind hers: no group is tried before the retry.
  relay.write(bob, "b1");
  relay.run();
  CHECK(relay.syncs_waiting() == 0);
  CHECK(relay.hub().batches_waiting_for_cluster() == 2);

  // Retries while the log stays down come further apart, up to a second.
  std::vector<long> delays;
  for (int i = 0; i < 6; ++i) {
    REQUIRE(relay.timers.size() == 1);
    delays.push_back(static_cast<long>(relay.fire_timer().count()));
    relay.run();
    relay.run_sync();
    relay.run();
  }
  CHECK(delays == std::vector<long>{100, 200, 400, 800, 1000, 1000});
  CHECK(relay.rows_on_disk() == 0);
  CHECK(alice.session->pending() == 1);
  CHECK(bob.session->pending() == 1);
  CHECK(relay.log.empty());

  // Back: one group takes both, each logged once, acknowledged and sent on.
  relay.log_down = false;
  relay.fire_timer();
  relay.run();
  relay.run_sync();
  relay.run();
  CHECK(relay.timers.empty());
  CHECK(relay.rows_on_disk() == 2);
  CHECK(relay.log.size() == 2);
  CHECK(relay.hub().batches_waiting_for_cluster() == 0);
  CHECK(alice.session->in_sync());
  CHECK(bob.session->in_sync());
  CHECK(todo(alice) == todo(bob));
  CHECK(todo(alice).find("b1") != std::string::npos);

  // The next failure starts again from 100 ms.
  relay.log_down = true;
  relay.write(alice, "a2");
  relay.run();
  relay.run_sync();
  relay.run();
  REQUIRE(relay.timers.size() == 1);
  relay.log_down = false;
  CHECK(relay.fire_timer().count() == 100);
  relay.run();
  relay.run_sync();
  relay.run();
  CHECK(alice.session->in_sync());
  CHECK(todo(bob).find("a2") != std::string::npos);
  CHECK(relay.log.size() == 3);
}

}  // namespace
}  // namespace lattice
