// A replica file copied to a second device: both copies write under one site id, and rekey
// separates them so that, once everything is exchanged, nothing is lost and nothing counts twice.

#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using storage::Replica;
using storage::TxnTag;

using test::TempDir;

// What a device sends a relay: every change the relay lacks, with the tags of its own
// transactions among them. Returns how many own transactions went.
std::size_t push(Replica& device, Replica& relay) {
  const crdt::VersionVector relay_held = relay.version_vector();
  const crdt::Changeset changeset = device.changes_since(relay_held);
  const crdt::SiteId site = device.site_id();
  storage::OriginTxns origin{site,
                             device.local_log(relay_held.get(site) + 1, changeset.until.get(site))};
  relay.apply(changeset, origin);
  device.acknowledge(relay.version_vector().get(site));
  return origin.txns.size();
}

void pull(Replica& relay, Replica& device) {
  device.apply(relay.changes_since(device.version_vector()));
}

// The relay's rule, in its simplest form: the last own transaction both logs agree on.
std::uint64_t fork_point(Replica& device, Replica& relay) {
  const std::uint64_t acked = device.acknowledged();
  const auto theirs = relay.origin_log(device.site_id(), acked, 1'000'000);
  const auto mine = device.local_log(acked, device.version_vector().get(device.site_id()));
  std::uint64_t agreed = acked;
  for (const TxnTag& t : theirs)
    for (const TxnTag& m : mine)
      if (m == t) agreed = std::max(agreed, t.seq);
  return agreed;
}

std::int64_t votes(Replica& replica, const std::string& id) {
  return std::get<std::int64_t>(
      replica.query("SELECT votes FROM todo WHERE id = ?", {crdt::Value{id}}).rows.at(0).at(0));
}

std::string title(Replica& replica, const std::string& id) {
  return std::get<std::string>(
      replica.query("SELECT title FROM todo WHERE id = ?", {crdt::Value{id}}).rows.at(0).at(0));
}

TEST_CASE("the local log holds one tagged entry per own transaction, pruned by acknowledge") {
  auto replica = test::open_todo_replica();
  replica->exec("INSERT INTO todo(id, title) VALUES ('a', 'one'), ('b', 'two')");
  replica->exec(
      "BEGIN; UPDATE todo SET title = 'x' WHERE id = 'a'; "
      "UPDATE todo SET votes = votes + 1 WHERE id = 'b'; COMMIT");
  replica->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'a'");
  const auto log = replica->local_log(0, 100);
  REQUIRE(log.size() == 3);
  CHECK(log[0].seq == 1);
  CHECK(log[2].seq == 3);
  CHECK(log[0].tag != log[1].tag);
  CHECK(replica->local_log(2, 2).size() == 1);

  replica->acknowledge(2);
  CHECK(replica->acknowledged() == 2);
  CHECK(replica->local_log(0, 100).size() == 2);  // the acknowledged one stays, to compare
  replica->acknowledge(1);                        // never backwards
  CHECK(replica->acknowledged() == 2);
  replica->acknowledge(99);  // never past what was written here
  CHECK(replica->acknowledged() == 3);
}

TEST_CASE("merged changes are not logged as own transactions") {
  auto a = test::open_todo_replica();
  auto b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('a', 'one')");
  b->apply(a->changes_since(b->version_vector()));
  CHECK(b->local_log(0, 100).empty());
}

TEST_CASE("rekey refuses a fork point past its own transactions and leaves the replica as it was") {
  auto replica = test::open_todo_replica();
  replica->exec("INSERT INTO todo(id, title) VALUES ('a', 'one')");
  const std::string before = test::dump_everything(*replica);
  const crdt::SiteId site = replica->site_id();
  try {
    replica->rekey(2);
    FAIL("rekey past the head was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK(std::string(e.what()).find("past this replica's last own transaction 1") !=
          std::string::npos);
  }
  CHECK(test::dump_everything(*replica) == before);
  CHECK(replica->site_id() == site);
  replica->exec("BEGIN");
  CHECK_THROWS_AS(replica->rekey(0), Error);
  replica->exec("ROLLBACK");
}

// Both copies hold the same unacknowledged transactions from before the copy (one of them a
// counter increment), then each writes its own. The first to reach the relay keeps the site id;
// the second rekeys after the fork point the logs agree on.
TEST_CASE("a copied replica rekeys after the fork: nothing lost, nothing counted twice") {
  TempDir dir;
  auto relay = test::open_todo_replica(dir.file("relay.db"));
  {
    auto original = test::open_todo_replica(dir.file("a.db"));
    original->exec(
        "INSERT INTO todo(id, title, votes) VALUES ('x', 'shared', 10), "
        "('y', 'other', 0), ('z', 'doomed', 0)");
    push(*original, *relay);
    original->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'x'");  // not yet pushed
  }
  fs::copy_file(dir.file("a.db"), dir.file("b.db"));
  auto a = Replica::open(dir.file("a.db"));
  auto b = Replica::open(dir.file("b.db"));
  REQUIRE(a->site_id() == b->site_id());

  a->exec("UPDATE todo SET votes = votes + 2 WHERE id = 'x'");
  a->exec("UPDATE todo SET title = 'from a' WHERE id = 'y'");
  b->exec("UPDATE todo SET votes = votes + 5 WHERE id = 'x'");
  b->exec("UPDATE todo SET votes = votes + 7 WHERE id = 'y'");
  b->exec("DELETE FROM todo WHERE id = 'z'");
  b->exec("INSERT INTO todo(id, title, votes) VALUES ('w', 'new on b', 3)");

  CHECK(push(*a, *relay) == 3);  // the shared increment and a's two transactions
  const crdt::SiteId old_site = b->site_id();
  const std::uint64_t keep = fork_point(*b, *relay);
  CHECK(keep == 2);  // the insert (acknowledged) and the shared increment
  b->rekey(keep);
  CHECK(b->site_id() != old_site);
  CHECK(b->version_vector().get(old_site) == 2);
  CHECK(b->version_vector().get(b->site_id()) == 4);
  CHECK(b->local_log(0, 100).size() == 4);

  push(*b, *relay);
  pull(*relay, *b);
  pull(*relay, *a);
  CHECK(votes(*relay, "x") == 10 + 1 + 2 + 5);
  CHECK(votes(*relay, "y") == 7);
  CHECK(title(*relay, "y") == "from a");
  CHECK(relay->query("SELECT count(*) FROM todo WHERE id = 'z'").rows[0][0] ==
        crdt::Value{std::int64_t{0}});
  CHECK(votes(*relay, "w") == 3);
  CHECK(a->digest() == relay->digest());
  CHECK(b->digest() == relay->digest());

  // Writes after the rekey go out under the new id, and only once.
  b->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'x'");
  push(*b, *relay);
  pull(*relay, *a);
  CHECK(votes(*a, "x") == 19);
  CHECK(a->digest() == b->digest());
}

// A replica restored from an old backup holds fewer of its own transactions than the relay:
// it takes a new id for its future writes and sends nothing twice.
TEST_CASE("a replica behind its own site's history rekeys without resending") {
  TempDir dir;
  auto relay = test::open_todo_replica(dir.file("relay.db"));
  {
    auto device = test::open_todo_replica(dir.file("device.db"));
    device->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'kept', 1)");
    push(*device, *relay);
  }
  fs::copy_file(dir.file("device.db"), dir.file("backup.db"));
  {
    auto device = Replica::open(dir.file("device.db"));
    device->exec("UPDATE todo SET votes = votes + 4 WHERE id = 'x'");
    push(*device, *relay);
  }
  auto restored = Replica::open(dir.file("backup.db"));
  restored->exec("UPDATE todo SET votes = votes + 10 WHERE id = 'x'");
  const std::uint64_t keep = fork_point(*restored, *relay);
  CHECK(keep == 1);
  restored->rekey(keep);
  push(*restored, *relay);
  pull(*relay, *restored);
  CHECK(votes(*relay, "x") == 15);
  CHECK(restored->digest() == relay->digest());
}

TEST_CASE("another connection to a rekeyed file sees the new site id") {
  TempDir dir;
  auto first = test::open_todo_replica(dir.file("r.db"));
  auto second = Replica::open(dir.file("r.db"));
  first->exec("INSERT INTO todo(id, title) VALUES ('a', 'one')");
  first->rekey(0);
  CHECK(second->version_vector() == first->version_vector());
  second->exec("INSERT INTO todo(id, title) VALUES ('b', 'two')");
  CHECK(first->version_vector().get(first->site_id()) == 2);
  CHECK(second->site_id() == first->site_id());
}

// Each connection keeps the file's sites in memory and reads them again only when another
// connection has committed: a site one connection adds must be known to the other before it
// adds sites of its own, or both would give the same index to different sites.
TEST_CASE("two connections to one file merge changes of different sites") {
  TempDir dir;
  auto first = test::open_todo_replica(dir.file("r.db"));
  auto second = Replica::open(dir.file("r.db"));
  auto x = test::open_todo_replica(), y = test::open_todo_replica(), z = test::open_todo_replica();
  x->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'from x', 1)");
  y->exec("INSERT INTO todo(id, title, votes) VALUES ('y', 'from y', 2)");
  z->exec("INSERT INTO todo(id, title, votes) VALUES ('z', 'from z', 3)");

  pull(*x, *first);   // first learns site x
  pull(*y, *second);  // second: y, after x
  pull(*z, *first);   // first: z, after y
  x->exec("UPDATE todo SET votes = votes + 10 WHERE id = 'x'");
  pull(*x, *second);

  for (Replica* r : {first.get(), second.get()}) {
    const crdt::VersionVector held = r->version_vector();
    CHECK(held.get(x->site_id()) == 2);
    CHECK(held.get(y->site_id()) == 1);
    CHECK(held.get(z->site_id()) == 1);
    CHECK(votes(*r, "x") == 11);
    CHECK(title(*r, "z") == "from z");
  }
  // What the file holds is attributed to the right sites: a fresh replica that pulls it
  // holds each site's sequence as that site wrote it.
  auto fresh = test::open_todo_replica();
  pull(*first, *fresh);
  CHECK(fresh->version_vector() == second->version_vector());
  pull(*y, *x);
  pull(*z, *x);
  CHECK(fresh->digest() == x->digest());
}

}  // namespace
}  // namespace lattice
