// Schema changes of replicated tables while devices are offline, and devices on different
// schema versions exchanging changes (docs/schema-evolution.md).

#include <doctest/doctest.h>

#include <filesystem>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::Replica;

// Version 1 of an app's schema.
constexpr const char* kV1 =
    "CREATE TABLE task(id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0);"
    "SELECT lattice_replicate('task');";
// Version 2: a due date, a vote counter, a tag table.
constexpr const char* kV2 =
    "ALTER TABLE task ADD COLUMN due TEXT;"
    "ALTER TABLE task ADD COLUMN votes INTEGER NOT NULL DEFAULT 0;"
    "SELECT lattice_replicate('task', '{\"votes\": \"counter\"}');"
    "CREATE TABLE tag(task TEXT, name TEXT, PRIMARY KEY (task, name));"
    "SELECT lattice_replicate('tag');";

std::unique_ptr<Replica> open_v1(std::uint64_t behind_ms = 0) {
  storage::ReplicaOptions options;
  options.physical_clock = [behind_ms] { return crdt::HybridClock::system_clock_ms() - behind_ms; };
  auto r = Replica::open(":memory:", options);
  r->migrate(1, kV1);
  return r;
}

void sync(Replica& from, Replica& to) { to.apply(from.changes_since(to.version_vector())); }
void sync_both(Replica& a, Replica& b) {
  sync(a, b);
  sync(b, a);
}

crdt::Value one(Replica& r, const std::string& sql) { return r.query(sql).rows.at(0).at(0); }
std::int64_t count(Replica& r, const std::string& sql) {
  return std::get<std::int64_t>(one(r, sql));
}

TEST_CASE("a migration runs once; its number names one change") {
  auto r = open_v1();
  CHECK(r->schema_version() == 1);
  CHECK(r->migrate(2, kV2));
  CHECK_FALSE(r->migrate(2, kV2));
  CHECK_FALSE(r->migrate(1, kV1));
  CHECK(r->schema_version() == 2);
  CHECK_THROWS_WITH_AS(r->migrate(2, "ALTER TABLE task ADD COLUMN other TEXT"),
                       doctest::Contains("ran before with other SQL"), Error);
  CHECK_THROWS_AS(r->migrate(0, "SELECT 1"), Error);
  // A migration that fails leaves nothing behind.
  CHECK_THROWS_AS(r->migrate(3, "ALTER TABLE task ADD COLUMN note TEXT; SELECT nonsense()"), Error);
  CHECK(r->schema_version() == 2);
  CHECK(count(*r, "SELECT count(*) FROM pragma_table_info('task') WHERE name = 'note'") == 0);
  r->exec("INSERT INTO task(id, title) VALUES ('a', 'still captured')");
  CHECK(r->changes_since({}).rows.size() == 1);
}

TEST_CASE("a column added to a replicated table with rows is captured, costs no change, syncs") {
  auto a = open_v1(), b = open_v1();
  a->exec("INSERT INTO task(id, title) VALUES ('a', 'one'), ('b', 'two')");
  sync(*a, *b);
  const auto before = a->version_vector();
  a->migrate(2, kV2);
  CHECK(a->version_vector() == before);  // the ALTER itself is no change to send
  CHECK(a->changes_since(before).rows.empty());
  a->exec("UPDATE task SET due = '2027-01-01', votes = votes + 2 WHERE id = 'a'");
  b->migrate(2, kV2);
  b->exec("UPDATE task SET votes = votes + 3 WHERE id = 'a'");
  sync_both(*a, *b);
  for (auto* r : {a.get(), b.get()}) {
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"2027-01-01"});
    CHECK(count(*r, "SELECT votes FROM task WHERE id = 'a'") == 5);
  }
  CHECK(a->digest() == b->digest());
}

TEST_CASE(
    "a rename keeps every cell's history, and a write made before it lands in the renamed column") {
  auto a = open_v1(), b = open_v1();
  a->exec("INSERT INTO task(id, title) VALUES ('a', 'draft')");
  sync(*a, *b);
  b->exec("UPDATE task SET title = 'written offline, before the rename' WHERE id = 'a'");
  a->migrate(2, "ALTER TABLE task RENAME COLUMN title TO summary");
  sync(*b, *a);  // b has not migrated: its write names the old column
  CHECK(one(*a, "SELECT summary FROM task WHERE id = 'a'") ==
        crdt::Value{"written offline, before the rename"});
  a->exec("UPDATE task SET summary = 'after' WHERE id = 'a'");
  b->migrate(2, "ALTER TABLE task RENAME COLUMN title TO summary");
  sync_both(*a, *b);
  CHECK(one(*b, "SELECT summary FROM task WHERE id = 'a'") == crdt::Value{"after"});
  CHECK(a->digest() == b->digest());
  // And a table renamed the same way.
  a->migrate(3, "ALTER TABLE task RENAME TO todo");
  b->exec("INSERT INTO task(id, summary) VALUES ('b', 'to the old name')");
  sync(*b, *a);
  CHECK(one(*a, "SELECT summary FROM todo WHERE id = 'b'") == crdt::Value{"to the old name"});
}

TEST_CASE(
    "a dropped column's cells stop travelling, and an old device's writes to it are dropped") {
  auto a = open_v1(), b = open_v1();
  a->exec("INSERT INTO task(id, title, done) VALUES ('a', 'x', 1)");
  sync(*a, *b);
  a->migrate(2, "ALTER TABLE task DROP COLUMN done");
  b->exec("UPDATE task SET done = 0, title = 'y' WHERE id = 'a'");
  sync(*b, *a);
  CHECK(one(*a, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"y"});
  a->exec("UPDATE task SET title = 'z' WHERE id = 'a'");
  const auto cs = a->changes_since({});
  for (const auto& column : cs.tables.at(0).columns) CHECK(column.name != "done");
  // A key column stays.
  CHECK_THROWS_WITH_AS(a->exec("ALTER TABLE task DROP COLUMN id"),
                       doctest::Contains("cannot drop PRIMARY KEY column"), Error);
  CHECK_THROWS_WITH_AS(a->exec("ALTER TABLE task RENAME COLUMN id TO key"),
                       doctest::Contains("part of the primary key"), Error);
  // A dropped table's changes are dropped too, and its name is not taken again.
  a->migrate(3, "DROP TABLE task");
  b->exec("INSERT INTO task(id, title) VALUES ('c', 'late')");
  CHECK_NOTHROW(sync(*b, *a));
  a->exec("CREATE TABLE task(id TEXT PRIMARY KEY)");
  CHECK_THROWS_WITH_AS(a->replicate("task"), doctest::Contains("was dropped"), Error);
}

TEST_CASE(
    "devices on two schema versions lose nothing, and the old one catches up when it migrates") {
  auto a = open_v1(2000), b = open_v1(1000), c = open_v1();
  a->exec("INSERT INTO task(id, title) VALUES ('a', 'shared')");
  sync(*a, *b);
  sync(*a, *c);
  a->migrate(2, kV2);
  a->exec(
      "UPDATE task SET due = 'friday', votes = votes + 1 WHERE id = 'a';"
      "INSERT INTO tag VALUES ('a', 'home'), ('a', 'urgent')");
  // b, still on version 1, takes all of it, keeps what it has no place for yet...
  sync(*a, *b);
  CHECK(count(*b, "SELECT count(*) FROM pragma_table_info('task')") == 3);
  // ...writes to what it knows, without overwriting what it does not...
  b->exec("UPDATE task SET title = 'edited on version 1' WHERE id = 'a'");
  sync(*b, *a);
  CHECK(one(*a, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"edited on version 1"});
  CHECK(one(*a, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"friday"});
  // ...and passes it on to c, on version 1 too, by files.
  sync(*b, *c);
  // Then each migrates, and shows what newer devices wrote.
  for (auto* r : {b.get(), c.get()}) {
    r->migrate(2, kV2);
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"friday"});
    CHECK(count(*r, "SELECT votes FROM task WHERE id = 'a'") == 1);
    CHECK(count(*r, "SELECT count(*) FROM tag") == 2);
    CHECK(r->digest() == a->digest());
  }
}

TEST_CASE("adding a column to a large replicated table is instant and writes no change") {
  const auto dir =
      std::filesystem::temp_directory_path() / ("lattice-evolution-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "big.db").string();
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  auto r = Replica::open(path);
  r->migrate(1, kV1);
  r->exec(
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
      "INSERT INTO task(id, title) SELECT 'k' || i, 'title ' || i FROM n");
  r->exec("PRAGMA wal_checkpoint(TRUNCATE)");
  const auto vv = r->version_vector();
  const auto size = std::filesystem::file_size(path);
  const auto started = std::chrono::steady_clock::now();
  r->migrate(2, "ALTER TABLE task ADD COLUMN due TEXT NOT NULL DEFAULT 'never'");
  const auto elapsed = std::chrono::steady_clock::now() - started;
  r->exec("PRAGMA wal_checkpoint(TRUNCATE)");
  MESSAGE("ADD COLUMN on 100,000 replicated rows: "
          << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms, file +"
          << (std::filesystem::file_size(path) - size) << " bytes");
  CHECK(elapsed < std::chrono::seconds(1));
  CHECK(std::filesystem::file_size(path) - size <= 64 * 1024);
  CHECK(r->version_vector() == vv);
  CHECK(r->changes_since(vv).rows.empty());
  CHECK(count(*r, "SELECT count(*) FROM task WHERE due = 'never'") == 100000);
  r.reset();
  std::filesystem::remove_all(dir);
}

// Replicas on a clock the test moves, so that which write is later is certain.
struct ManualClock {
  std::uint64_t now = 1'800'000'000'000;
  std::unique_ptr<Replica> open(int version) {
    storage::ReplicaOptions options;
    options.physical_clock = [this] { return now; };
    auto r = Replica::open(":memory:", options);
    if (version >= 1) r->migrate(1, kV1);
    if (version >= 2) r->migrate(2, kV2);
    return r;
  }
};

TEST_CASE("a replica merges after a migration with the columns it has now") {
  // Merges cache their statements per table; they named the columns as they were before the
  // migration, and the next merge wrote too few values ("column index out of range").
  ManualClock clock;
  auto relay = clock.open(1), old = clock.open(1), updated = clock.open(2);
  old->exec("INSERT INTO task(id, title) VALUES ('a', 'from v1')");
  sync(*old, *relay);
  relay->migrate(2, kV2);
  updated->exec("INSERT INTO task(id, title, due) VALUES ('b', 'from v2', 'monday')");
  sync(*updated, *relay);
  CHECK(one(*relay, "SELECT due FROM task WHERE id = 'b'") == crdt::Value{"monday"});
}

TEST_CASE("an old device's insert carries no value of a newer column it learnt from other rows") {
  // The old device knew 'due' as a future column from row 'a'; its own insert of 'b' sent due
  // = NULL at the insert's version, which won over the newer device's earlier value.
  ManualClock clock;
  auto newer = clock.open(2), old = clock.open(1);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'x', 'monday')");
  sync(*newer, *old);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('b', 'y', 'tuesday')");
  clock.now += 10;
  old->exec("INSERT INTO task(id, title) VALUES ('b', 'z')");
  sync(*old, *newer);
  CHECK(one(*newer, "SELECT title FROM task WHERE id = 'b'") == crdt::Value{"z"});
  CHECK(one(*newer, "SELECT due FROM task WHERE id = 'b'") == crdt::Value{"tuesday"});
}

TEST_CASE("an old device's INSERT OR REPLACE keeps the versions of newer columns") {
  // The replace dropped the row's overrides and moved its version: the value the old device
  // kept aside went out at the replace's version, over a later write it had not seen.
  ManualClock clock;
  auto newer = clock.open(2), old = clock.open(1);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'x', 'monday')");
  sync(*newer, *old);
  clock.now += 10;
  newer->exec("UPDATE task SET due = 'friday' WHERE id = 'a'");
  clock.now += 10;
  old->exec("INSERT OR REPLACE INTO task(id, title) VALUES ('a', 'replaced')");
  sync_both(*old, *newer);
  for (Replica* r : {newer.get(), old.get()})
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"replaced"});
  CHECK(one(*newer, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"friday"});
  old->migrate(2, kV2);
  CHECK(one(*old, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"friday"});
}

TEST_CASE("a column a migration adds is not at the versions of rows written without it") {
  // The relay merged an old device's later insert, then migrated: the new column counted as
  // written at that insert's version, and a newer device's earlier value of it lost.
  ManualClock clock;
  auto relay = clock.open(1), old = clock.open(1), newer = clock.open(2);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'x', 'monday')");
  clock.now += 10;
  old->exec("INSERT INTO task(id, title) VALUES ('a', 'y')");
  sync(*old, *relay);
  relay->migrate(2, kV2);
  sync(*newer, *relay);
  sync(*relay, *newer);
  for (Replica* r : {relay.get(), newer.get()}) {
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"y"});
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"monday"});
  }
  CHECK(relay->digest() == newer->digest());
}

TEST_CASE("an old device's delete and re-insert clears a newer column everywhere alike") {
  auto newer = open_v1(), older = open_v1(), relay = open_v1();
  newer->migrate(2, kV2);
  relay->migrate(2, kV2);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'one', '2027-01-01')");
  sync(*newer, *relay);
  sync(*relay, *older);
  // The old device deletes the row and inserts it again: a new incarnation without `due`.
  older->exec("DELETE FROM task WHERE id = 'a'");
  older->exec("INSERT INTO task(id, title) VALUES ('a', 'two')");
  sync(*older, *relay);
  sync(*relay, *newer);
  CHECK(one(*relay, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"two"});
  CHECK(one(*newer, "SELECT due FROM task WHERE id = 'a'") ==
        one(*relay, "SELECT due FROM task WHERE id = 'a'"));
  CHECK(newer->digest() == relay->digest());
}

TEST_CASE("a newer column written before an old device's re-insert is cleared in either order") {
  // The newer device updated `due` while the old device deleted and inserted the row again. The
  // relay merged the re-insert first and showed due NULL; the newer device, merging the
  // re-insert over its live row, kept its own value from the incarnation that had ended.
  ManualClock clock;
  auto relay = clock.open(2), newer = clock.open(2), older = clock.open(1);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'one', 'monday')");
  sync(*newer, *relay);
  sync(*relay, *older);
  clock.now += 10;
  newer->exec("UPDATE task SET due = 'friday' WHERE id = 'a'");
  clock.now += 10;
  older->exec("DELETE FROM task WHERE id = 'a'");
  older->exec("INSERT INTO task(id, title) VALUES ('a', 'two')");
  sync(*older, *relay);
  sync(*newer, *relay);
  sync(*older, *newer);
  for (Replica* r : {relay.get(), newer.get()}) {
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"two"});
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{});
  }
  CHECK(newer->digest() == relay->digest());
  // The same for a device that keeps `due` aside as a future column, and then migrates.
  auto middle = clock.open(1);
  sync(*newer, *middle);  // learns due, then the re-insert
  middle->migrate(2, kV2);
  CHECK(one(*middle, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{});
  CHECK(middle->digest() == relay->digest());
}

TEST_CASE("an old device's second INSERT OR REPLACE keeps a newer column's version too") {
  // The first replace gave `due` an override at the version the row had; the second replaced
  // it with the first replace's own version, as if the old device had written `due` then: its
  // kept value went out over a newer device's later write.
  ManualClock clock;
  auto newer = clock.open(2), old = clock.open(1);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('a', 'x', 'monday')");
  sync(*newer, *old);
  clock.now += 10;
  newer->exec("UPDATE task SET due = 'friday' WHERE id = 'a'");
  clock.now += 10;
  old->exec("INSERT OR REPLACE INTO task(id, title) VALUES ('a', 'first')");
  clock.now += 10;
  old->exec("INSERT OR REPLACE INTO task(id, title) VALUES ('a', 'second')");
  sync_both(*old, *newer);
  old->migrate(2, kV2);
  for (Replica* r : {newer.get(), old.get()}) {
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"second"});
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'a'") == crdt::Value{"friday"});
  }
  CHECK(old->digest() == newer->digest());
}

TEST_CASE(
    "an old device's own insert never wrote a newer column it keeps aside, before or after it "
    "migrates") {
  // The old device knew `due` as a future column. Its insert of a row counted as writing `due`
  // at the insert's version: a newer device's earlier value of it lost in the old device's
  // merge, and once the old device had migrated it sent due = NULL at that version.
  ManualClock clock;
  auto newer = clock.open(2), old = clock.open(1);
  newer->exec("INSERT INTO task(id, title, due) VALUES ('known', 'x', 'monday')");
  sync(*newer, *old);  // `due` is a future column on the old device now
  clock.now += 10;
  newer->exec("INSERT INTO task(id, title, due) VALUES ('c', 'newer', 'tuesday')");
  newer->exec("INSERT INTO task(id, title, due) VALUES ('d', 'newer', 'wednesday')");
  clock.now += 10;
  old->exec("INSERT INTO task(id, title) VALUES ('c', 'old')");
  old->exec("INSERT INTO task(id, title) VALUES ('d', 'old')");
  sync(*newer, *old);  // the old device merges c before it migrates
  old->exec("UPDATE task SET title = 'old again' WHERE id = 'd'");
  old->migrate(2, kV2);  // and sends d after it migrated
  sync(*old, *newer);
  for (Replica* r : {newer.get(), old.get()}) {
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'c'") == crdt::Value{"old"});
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'c'") == crdt::Value{"tuesday"});
    CHECK(one(*r, "SELECT title FROM task WHERE id = 'd'") == crdt::Value{"old again"});
    CHECK(one(*r, "SELECT due FROM task WHERE id = 'd'") == crdt::Value{"wednesday"});
  }
  CHECK(old->digest() == newer->digest());
}

TEST_CASE("a rekey keeps what a migration's added column predates") {
  // The replica added `due` after its first transaction, then was told to move its later
  // transactions to a new site id (a copied file). Renumbered, the insert made after the
  // migration counted as written before it: its value of `due` never went out.
  auto copy = open_v1(), other = open_v1();
  copy->exec("INSERT INTO task(id, title) VALUES ('before', 'x')");
  const std::uint64_t fork = copy->version_vector().get(copy->site_id());
  copy->migrate(2, kV2);
  copy->exec("INSERT INTO task(id, title, due) VALUES ('after', 'y', 'monday')");
  copy->rekey(fork);
  other->migrate(2, kV2);
  sync(*copy, *other);
  CHECK(one(*other, "SELECT due FROM task WHERE id = 'after'") == crdt::Value{"monday"});
  CHECK(one(*other, "SELECT due FROM task WHERE id = 'before'") == crdt::Value{});
  CHECK(other->digest() == copy->digest());
}

}  // namespace
}  // namespace lattice
