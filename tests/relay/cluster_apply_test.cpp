// How a relay of a cluster takes batches of the cluster's log (Hub::apply_from_cluster): in
// order from its applied position, which it keeps in the namespace's file across restarts;
// what it took before is passed over, a gap is refused with nothing changed, a batch it cannot
// read is counted and passed over so that the log never stops for good. No PostgreSQL here:
// the log is a vector.

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "relay/hub.hpp"
#include "storage/sqlite.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

struct ClusterRelay {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("lattice-cluster-apply-" + std::to_string(::getpid()));
  std::unique_ptr<relay::Hub> hub;

  ClusterRelay() {
    std::filesystem::remove_all(dir);
    start();
  }
  ~ClusterRelay() {
    hub.reset();
    std::filesystem::remove_all(dir);
  }
  void start() {
    hub.reset();
    relay::HubOptions options;
    options.data_dir = dir.string();
    options.schema_sql = test::kTodoSchema;
    // Both set make the hub a relay of a cluster (it keeps its position in the file).
    options.log_to_cluster = [](const std::string&, const std::vector<relay::ClusterBatch>&) {};
    options.read_cluster = [](const std::string&, std::int64_t) { return relay::ClusterRead{}; };
    hub = std::make_unique<relay::Hub>(options);
  }
  std::int64_t rows() {
    storage::Statement count(hub->replica("board").connection(), "SELECT count(*) FROM todo");
    count.step();
    return count.column_int(0);
  }
};

// Batch `position` of the log: the changes a device made since `since`.
relay::ClusterBatch batch_at(std::int64_t position, storage::Replica& device,
                             const crdt::VersionVector& since) {
  const crdt::Changeset changes = device.changes_since(since);
  return relay::ClusterBatch{position,
                             device.site_id(),
                             since.get(device.site_id()) + 1,
                             crdt::encode_changeset(changes),
                             {}};
}

TEST_CASE("a relay of a cluster takes the log in order from its applied position") {
  ClusterRelay relay;
  CHECK_FALSE(relay.hub->apply_from_cluster("board", {}));  // not open here
  relay.hub->replica("board");

  auto device = test::open_todo_replica();
  std::vector<relay::ClusterBatch> log;
  for (int i = 1; i <= 3; ++i) {
    const crdt::VersionVector before = device->version_vector();
    storage::exec_sql(device->connection(), "INSERT INTO todo(id, title) VALUES ('t" +
                                                std::to_string(i) + "', 'from the log')");
    log.push_back(batch_at(i, *device, before));
  }
  CHECK(relay.hub->apply_from_cluster("board", {log[0], log[1]}) == 2);
  CHECK(relay.rows() == 2);
  // Read again from an older position: what was taken is passed over.
  CHECK(relay.hub->apply_from_cluster("board", log) == 3);
  CHECK(relay.rows() == 3);
  CHECK(relay.hub->counters().cluster_batches_applied == 3);

  // A gap is refused, nothing of the call taken.
  const crdt::VersionVector before = device->version_vector();
  storage::exec_sql(device->connection(), "INSERT INTO todo(id, title) VALUES ('t5', 'late')");
  const relay::ClusterBatch fifth = batch_at(5, *device, before);
  CHECK_THROWS_AS(relay.hub->apply_from_cluster("board", {fifth}), Error);
  CHECK(relay.rows() == 3);
  CHECK(relay.hub->cluster_positions().at("board") == 3);

  // A batch for a table this relay does not have is kept for a later schema, as a device's
  // would be; one it cannot read at all is counted and passed over.
  auto other = storage::Replica::open(":memory:");
  storage::exec_sql(other->connection(),
                    "CREATE TABLE bird(id TEXT PRIMARY KEY, name TEXT);"
                    "SELECT lattice_replicate('bird');"
                    "INSERT INTO bird VALUES ('b1', 'wren')");
  const relay::ClusterBatch foreign = batch_at(4, *other, crdt::VersionVector{});
  relay::ClusterBatch garbage = fifth;
  garbage.position = 6;
  garbage.bytes = "not a changeset";
  CHECK(relay.hub->apply_from_cluster("board", {foreign, fifth, garbage}) == 6);
  CHECK(relay.hub->counters().cluster_batches_skipped == 1);
  CHECK(relay.rows() == 4);

  // The position is in the namespace's file: a restarted relay goes on from it.
  relay.start();
  relay.hub->replica("board");
  CHECK(relay.hub->cluster_positions().at("board") == 6);
  CHECK(relay.hub->apply_from_cluster("board", log) == 6);
  CHECK(relay.rows() == 4);
}

TEST_CASE("the transaction tags of a logged batch are this relay's too") {
  // Without them a relay that took a device's batches from the log would take the device, when
  // it connects here, for a copy of its own file, and have it move those transactions to a new
  // site id: sent again, a counter's increments would count twice.
  ClusterRelay relay;
  relay.hub->replica("board");
  auto device = test::open_todo_replica();
  const crdt::VersionVector before = device->version_vector();
  storage::exec_sql(device->connection(), "INSERT INTO todo(id, title) VALUES ('t1', 'tagged')");
  storage::exec_sql(device->connection(), "UPDATE todo SET votes = votes + 1 WHERE id = 't1'");
  relay::ClusterBatch batch = batch_at(1, *device, before);
  batch.origin_log = device->local_log(1, 2);
  REQUIRE(batch.origin_log.size() == 2);
  CHECK(relay.hub->apply_from_cluster("board", {batch}) == 1);
  CHECK(relay.hub->replica("board").origin_log(device->site_id(), 1, 10) == batch.origin_log);
}

}  // namespace
}  // namespace lattice
