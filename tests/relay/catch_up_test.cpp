// A device's catch-up through the hub over a clean loopback link: how often the relay extracts
// what the device lacks. Extraction runs on the relay's only thread, so extracting a large
// transaction more than once holds every device of the relay that much longer.

#include <doctest/doctest.h>

#include <filesystem>

#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

class CatchUp : sim::Harness {
 public:
  CatchUp() : Harness(7), dir_(sim::seed_directory("lattice-catch-up", 7)) {
    faults_ = transport::LoopbackNetwork::Faults{1, 1, 0, true};
    std::filesystem::remove_all(dir_);
    relay::HubOptions options = device_hub_options(dir_, test::kTodoSchema);
    hub_ = std::make_unique<relay::Hub>(options);
  }
  ~CatchUp() override {
    for (auto& d : devices_) d->session.reset();
    hub_.reset();
    std::filesystem::remove_all(dir_);
  }

  sim::SimDevice& device(const std::string& name) {
    auto d = std::make_unique<sim::SimDevice>();
    d->name = name;
    d->replica = storage::Replica::open(":memory:", replica_options());
    d->replica->exec(test::kTodoSchema);
    devices_.push_back(std::move(d));
    return *devices_.back();
  }
  void sync(sim::SimDevice& d) {
    if (d.session)
      d.session->push_local_changes();
    else
      connect(d);
    REQUIRE(net_.run_until_idle(1'000'000));
    REQUIRE(d.session);
    REQUIRE(d.session->in_sync());
  }
  const relay::HubCounters& counters() { return hub_->counters(); }

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<sim::SimDevice>> devices_;
};

TEST_CASE("one transaction larger than a catch-up round is extracted once, then goes in pieces") {
  CatchUp world;
  sim::SimDevice& writer = world.device("writer");
  // 500 rows of 3 column changes each in one transaction: 60 times the relay's 25 changes per
  // outgoing frame, and many times its 4 KiB round.
  writer.replica->exec(
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
      "INSERT INTO todo(id, title, votes) SELECT 'row' || i, 'a title long enough', i FROM n");
  world.sync(writer);

  sim::SimDevice& newcomer = world.device("newcomer");
  const std::uint64_t extractions = world.counters().catch_up_extractions;
  const std::uint64_t pieced = world.counters().pieced_changesets_out;
  world.sync(newcomer);
  CHECK(world.counters().catch_up_extractions - extractions == 1);
  CHECK(world.counters().pieced_changesets_out - pieced == 1);
  CHECK(test::dump_table(*newcomer.replica, "todo") == test::dump_table(*writer.replica, "todo"));

  // Behind it, many small transactions: frames of several of them still shrink to fit a round.
  for (int i = 0; i < 40; ++i)
    writer.replica->exec("INSERT INTO todo(id, title) VALUES ('small" + std::to_string(i) +
                         "', 'x')");
  world.sync(writer);
  sim::SimDevice& third = world.device("third");
  world.sync(third);
  CHECK(test::dump_table(*third.replica, "todo") == test::dump_table(*writer.replica, "todo"));
}

}  // namespace
}  // namespace lattice
