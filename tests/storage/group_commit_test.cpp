// Group commit (Replica::begin_group): what a relay relies on when it merges the batches of
// several devices in one transaction and acknowledges each only after the commit.

#include <doctest/doctest.h>

#include <filesystem>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::Replica;
using test::TempDir;

storage::OriginTxns origin_of(Replica& device) { return storage::OriginTxns{device.site_id(), {}}; }

// Three devices' changes: a and b insert rows, c deletes the row both a and the group's replica
// hold already (so merging c's changeset deletes a row).
struct Devices {
  std::unique_ptr<Replica> a = test::open_todo_replica();
  std::unique_ptr<Replica> b = test::open_todo_replica();
  std::unique_ptr<Replica> c = test::open_todo_replica();
  Devices() {
    a->exec("INSERT INTO todo(id, title, votes) VALUES ('kettle', 'descale', 2)");
    b->exec("INSERT INTO todo(id, title) VALUES ('plant', 'water')");
    c->exec("INSERT INTO todo(id, title) VALUES ('bin', 'empty')");
  }
};

TEST_CASE("a group merges every batch in one commit, each seeing the merges before it") {
  Devices d;
  auto relay = test::open_todo_replica();
  int deliveries = 0;
  relay->subscribe([&](const std::vector<storage::ChangeEvent>&) { ++deliveries; });

  const crdt::Changeset from_a = d.a->changes_since({});
  const crdt::Changeset from_b = d.b->changes_since({});
  relay->begin_group();
  CHECK(relay->group_open());
  CHECK(relay->merge_in_group(from_a, origin_of(*d.a)).applied > 0);
  // The relay checks the next batch against what it holds, this group's merges included.
  CHECK(relay->version_vector().get(d.a->site_id()) == 1);
  CHECK(relay->merge_in_group(from_b, origin_of(*d.b)).applied > 0);
  CHECK(relay->version_vector().get(d.b->site_id()) == 1);
  CHECK(deliveries == 0);  // listeners hear of nothing before the commit
  relay->commit_group();
  CHECK_FALSE(relay->group_open());
  CHECK(deliveries == 1);

  // The same as merging them one by one.
  auto one_by_one = test::open_todo_replica();
  one_by_one->apply(from_a);
  one_by_one->apply(from_b);
  CHECK(test::dump_table(*relay, "todo") == test::dump_table(*one_by_one, "todo"));
  CHECK(relay->digest() == one_by_one->digest());
}

// A relay whose merge of c's batch fails halfway: the relay holds a's row, which c deletes, and
// the application's trigger refuses deletes, so the merge fails after c's metadata was written,
// at the delete of the row.
std::unique_ptr<Replica> relay_refusing_c(Devices& d) {
  auto relay = test::open_todo_replica();
  d.c->apply(d.a->changes_since({}));
  relay->apply(d.a->changes_since({}));
  d.c->exec("DELETE FROM todo WHERE id = 'kettle'");
  relay->exec(
      "CREATE TRIGGER keep_todos BEFORE DELETE ON todo BEGIN SELECT RAISE(ABORT, 'kept'); END");
  return relay;
}

TEST_CASE("a batch refused inside a group is undone alone; the others commit") {
  Devices d;
  auto relay = relay_refusing_c(d);
  auto expected = test::open_todo_replica();
  expected->apply(d.a->changes_since({}));
  expected->apply(d.b->changes_since({}));

  relay->begin_group();
  relay->merge_in_group(d.b->changes_since(relay->version_vector()), origin_of(*d.b));
  const auto after_b = relay->version_vector();
  CHECK_THROWS_AS(
      relay->merge_in_group(d.c->changes_since(relay->version_vector()), origin_of(*d.c)), Error);
  CHECK(relay->group_open());
  CHECK(relay->version_vector() == after_b);  // nothing of c's batch is left
  // A batch the relay cannot read at all is refused before anything is written.
  crdt::Changeset unknown = d.a->changes_since({});
  unknown.rows.at(0).table = 999;
  CHECK_THROWS_AS(relay->merge_in_group(unknown, origin_of(*d.a)), Error);
  relay->commit_group();

  CHECK(test::dump_table(*relay, "todo") == test::dump_table(*expected, "todo"));
  CHECK(relay->version_vector() == after_b);
  CHECK(relay->version_vector().get(d.c->site_id()) == 0);
}

TEST_CASE("a group rolled back, or never committed, leaves the file exactly as it was") {
  Devices d;
  const auto dir =
      std::filesystem::temp_directory_path() / ("lattice-group-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "relay.db").string();
  std::string before;
  {
    auto relay = test::open_todo_replica(file);
    relay->apply(d.a->changes_since({}));
    before = test::dump_everything(*relay);
    relay->begin_group();
    relay->merge_in_group(d.b->changes_since({}), origin_of(*d.b));
    // Nothing else writes while the group is open.
    CHECK_THROWS_AS(relay->apply(d.c->changes_since({})), Error);
    CHECK_THROWS_AS(relay->begin_group(), Error);
    relay->rollback_group();
    CHECK_FALSE(relay->group_open());
    CHECK(test::dump_everything(*relay) == before);

    relay->begin_group();
    relay->merge_in_group(d.c->changes_since({}), origin_of(*d.c));
    // Closed with the group open: like a relay killed before its commit.
  }
  auto reopened = Replica::open(file);
  CHECK(test::dump_everything(*reopened) == before);
  // The file takes merges again afterwards.
  reopened->begin_group();
  reopened->merge_in_group(d.c->changes_since({}), origin_of(*d.c));
  reopened->commit_group();
  CHECK(reopened->version_vector().get(d.c->site_id()) == 1);
  reopened.reset();
  std::filesystem::remove_all(dir);
}

// The replica keeps its sites in memory. A merge refused inside a group reads them again
// there, sites of the group's earlier merges included: those must not outlive the group's
// rollback.
TEST_CASE("a site added by a rolled-back group is added again by the next merge of it") {
  Devices d;
  auto relay = relay_refusing_c(d);
  relay->begin_group();
  relay->merge_in_group(d.b->changes_since(relay->version_vector()), origin_of(*d.b));
  CHECK_THROWS_AS(
      relay->merge_in_group(d.c->changes_since(relay->version_vector()), origin_of(*d.c)), Error);
  relay->rollback_group();
  CHECK(relay->version_vector().get(d.b->site_id()) == 0);

  relay->exec("DROP TRIGGER keep_todos");
  relay->apply(d.b->changes_since(relay->version_vector()));
  relay->apply(d.c->changes_since(relay->version_vector()));
  CHECK(relay->version_vector().get(d.b->site_id()) == 1);
  CHECK(relay->version_vector().get(d.c->site_id()) == d.c->version_vector().get(d.c->site_id()));
  // What a new device pulls from it names each change's site as it was written.
  auto fresh = test::open_todo_replica();
  fresh->apply(relay->changes_since({}));
  CHECK(fresh->version_vector() == relay->version_vector());
  CHECK(fresh->digest() == relay->digest());
}

// A merge compares a changeset's vectors with what the replica holds as kept in memory (the
// site table's sequences, raised by its own merges). A rolled-back group's raises must go with
// it: counted, they would let a later changeset that assumes them move the vector past changes
// the replica never received, and no peer would send those again.
TEST_CASE("what a rolled-back group merged of a site is not held by the next merge") {
  Devices d;
  auto relay = test::open_todo_replica();
  relay->apply(d.b->changes_since({}));  // b is known, at 1
  crdt::VersionVector held = d.b->version_vector();
  d.b->exec("UPDATE todo SET votes = 5 WHERE id = 'plant'");
  relay->begin_group();
  relay->merge_in_group(d.b->changes_since(held), origin_of(*d.b));
  CHECK(relay->version_vector().get(d.b->site_id()) == 2);
  relay->rollback_group();
  CHECK(relay->version_vector().get(d.b->site_id()) == 1);

  // b's next transaction, as a peer that held b's second one would be sent it.
  held = d.b->version_vector();
  d.b->exec("INSERT INTO todo(id, title) VALUES ('fern', 'mist')");
  const crdt::Changeset third = d.b->changes_since(held);
  REQUIRE(third.since.get(d.b->site_id()) == 2);
  relay->apply(third);
  CHECK(relay->version_vector().get(d.b->site_id()) == 1);

  // Asked again from what it holds, it gets everything.
  relay->apply(d.b->changes_since(relay->version_vector()));
  CHECK(relay->version_vector().get(d.b->site_id()) == 3);
  CHECK(relay->digest() == d.b->digest());
}

// The same memory must follow what other connections to the file commit.
TEST_CASE("a merge counts what another connection to the file merged of a site") {
  Devices d;
  TempDir dir;
  auto first = test::open_todo_replica(dir.file("r.db"));
  auto second = Replica::open(dir.file("r.db"));
  first->apply(d.b->changes_since({}));  // first reads b at 1
  crdt::VersionVector held = d.b->version_vector();
  d.b->exec("UPDATE todo SET votes = 1 WHERE id = 'plant'");
  second->apply(d.b->changes_since(held));  // b at 2, through the other connection
  held = d.b->version_vector();
  d.b->exec("UPDATE todo SET votes = 2 WHERE id = 'plant'");
  const crdt::Changeset third = d.b->changes_since(held);
  REQUIRE(third.since.get(d.b->site_id()) == 2);
  first->apply(third);
  CHECK(first->version_vector().get(d.b->site_id()) == 3);
  CHECK(second->version_vector().get(d.b->site_id()) == 3);
  CHECK(first->digest() == d.b->digest());
}

TEST_CASE("a group whose disk fills keeps the merges before the failure, or none of the group") {
  Devices d;
  auto relay = test::open_todo_replica();
  relay->apply(d.a->changes_since({}));
  const std::string before = test::dump_everything(*relay);
  // A batch far larger than the few pages left.
  auto big = test::open_todo_replica();
  big->exec("BEGIN");
  for (int i = 0; i < 2000; ++i)
    big->exec("INSERT INTO todo(id, title) VALUES ('row" + std::to_string(i) + "', '" +
              std::string(200, 'x') + "')");
  big->exec("COMMIT");
  const auto pages = std::get<std::int64_t>(relay->query("PRAGMA page_count").rows.at(0).at(0));
  relay->exec("PRAGMA max_page_count = " + std::to_string(pages + 8));

  relay->begin_group();
  relay->merge_in_group(d.b->changes_since({}), origin_of(*d.b));
  const auto after_b = relay->version_vector();
  CHECK_THROWS_AS(relay->merge_in_group(big->changes_since({}), origin_of(*big)), Error);
  if (relay->group_open()) {
    // SQLite undid the statement: the batch alone is undone, the group commits without it.
    relay->commit_group();
    CHECK(relay->version_vector() == after_b);
  } else {
    // SQLite ended the transaction: nothing of the group is kept, and nothing merges outside it.
    CHECK_THROWS_AS(relay->merge_in_group(d.c->changes_since({}), origin_of(*d.c)), Error);
    CHECK(test::dump_everything(*relay) == before);
  }
  CHECK(relay->version_vector().get(big->site_id()) == 0);
}

TEST_CASE("merge_in_group and commit_group need an open group") {
  Devices d;
  auto relay = test::open_todo_replica();
  CHECK_THROWS_AS(relay->merge_in_group(d.a->changes_since({}), origin_of(*d.a)), Error);
  CHECK_THROWS_AS(relay->commit_group(), Error);
  relay->rollback_group();  // nothing to undo: no effect
  relay->exec("BEGIN");
  CHECK_THROWS_AS(relay->begin_group(), Error);
  relay->exec("ROLLBACK");
}

}  // namespace
}  // namespace lattice
