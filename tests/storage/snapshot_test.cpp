// Snapshots (Replica::write_snapshot, install_snapshot): a new device that installs one holds
// exactly what it would hold after merging every change, keeps its own identity, and goes on
// syncing change by change; anything else is refused with the replica left as it was.

#include <doctest/doctest.h>

#include <fstream>
#include <random>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "storage/sqlite.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::Replica;

// Cooks and their recipes: an INTEGER PRIMARY KEY table with a NOCASE UNIQUE handle and a
// counter, and a text-keyed table with a foreign key, a CHECK constraint and an index.
constexpr const char* kKitchen =
    "CREATE TABLE cook(id INTEGER PRIMARY KEY, handle TEXT NOT NULL UNIQUE COLLATE NOCASE, "
    "stars INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE recipe(id TEXT PRIMARY KEY, cook_id INTEGER REFERENCES cook(id), "
    "title TEXT NOT NULL, minutes REAL CHECK (minutes > 0), tags TEXT);"
    "CREATE INDEX recipe_by_cook ON recipe(cook_id);"
    "SELECT lattice_replicate('cook', '{\"stars\":\"counter\"}');"
    "SELECT lattice_replicate('recipe');";

std::unique_ptr<Replica> open_kitchen(const std::string& path = ":memory:",
                                      storage::ReplicaOptions options = {}) {
  auto replica = Replica::open(path, std::move(options));
  replica->migrate(1, kKitchen);
  return replica;
}

// What `to` lacks of `from`, merged.
void pull(Replica& to, Replica& from) { to.apply(from.changes_since(to.version_vector())); }

std::string conflicts(Replica& replica) {
  return test::dump_query(replica,
                          "SELECT kind, \"table\", \"key\", reason FROM lattice_conflicts "
                          "ORDER BY 1, 2, 3");
}

// Installing `path` into `device` fails with `code` and a message holding `words`, and leaves
// every row of the file, metadata included, as it was.
void check_refused(Replica& device, const std::string& path, ErrorCode code,
                   const std::string& words) {
  const std::string before = test::dump_everything(device);
  try {
    device.install_snapshot(path);
    FAIL("installed");
  } catch (const Error& e) {
    CHECK(e.code() == code);
    const std::string message = e.what();
    CHECK_MESSAGE(message.find(words) != std::string::npos, message);
  }
  CHECK(test::dump_everything(device) == before);
}

// A namespace as a relay holds it after three devices wrote: inserts, an update of one column,
// a delete, counter increments from two sites, and a held row (two cooks took the handle "Ana"
// offline; the later one is held).
struct Kitchen {
  std::unique_ptr<Replica> a = open_kitchen(), b = open_kitchen(), c = open_kitchen();
  std::unique_ptr<Replica> relay = open_kitchen();
  Kitchen() {
    a->exec("INSERT INTO cook(id, handle) VALUES (1, 'Ana'), (2, 'Bo')");
    c->exec("INSERT INTO cook(id, handle) VALUES (3, 'ana')");
    pull(*relay, *a);
    pull(*b, *relay);
    pull(*c, *relay);
    b->exec(
        "INSERT INTO recipe VALUES ('dal', 1, 'Dal', 40, 'lentils'), "
        "('pho', 2, 'Pho', 240, NULL), ('toast', 2, 'Toast', 3, 'quick');"
        "UPDATE cook SET stars = stars + 2 WHERE id = 2");
    pull(*relay, *b);
    pull(*c, *relay);
    c->exec(
        "UPDATE recipe SET title = 'Red dal' WHERE id = 'dal';"
        "DELETE FROM recipe WHERE id = 'toast';"
        "UPDATE cook SET stars = stars + 1 WHERE id = 2");
    pull(*relay, *c);
  }
};

TEST_CASE("an installed snapshot holds what merging every change gives, under the device's id") {
  Kitchen k;
  REQUIRE(conflicts(*k.relay).find("held") != std::string::npos);
  test::TempDir dir;
  const crdt::VersionVector written = k.relay->write_snapshot(dir.file("kitchen.snapshot"));
  CHECK(written == k.relay->version_vector());

  auto device = open_kitchen();
  const crdt::SiteId own = device->site_id();
  const crdt::VersionVector installed = device->install_snapshot(dir.file("kitchen.snapshot"));
  CHECK(device->site_id() == own);
  CHECK(installed == device->version_vector());
  CHECK(installed.get(own) == 0);
  for (const auto& site : {k.a->site_id(), k.b->site_id(), k.c->site_id()})
    CHECK(installed.get(site) == written.get(site));

  // The same rows, held rows and metadata as a replica that merged every change.
  auto merged = open_kitchen();
  pull(*merged, *k.relay);
  CHECK(device->digest() == merged->digest());
  CHECK(test::dump_table(*device, "cook") == test::dump_table(*merged, "cook"));
  CHECK(test::dump_table(*device, "recipe") == test::dump_table(*merged, "recipe"));
  CHECK(conflicts(*device) == conflicts(*merged));
  CHECK(device->check().problems.empty());
  CHECK(device->changes_since(k.relay->version_vector()).change_count() == 0);
  CHECK(k.relay->changes_since(device->version_vector()).change_count() == 0);

  // The device goes on as itself: its writes are captured under its own id, counters add to
  // what it installed, and the changes others make after the snapshot arrive as usual.
  device->exec(
      "BEGIN; UPDATE cook SET stars = stars + 5 WHERE id = 2;"
      "INSERT INTO recipe VALUES ('soup', 2, 'Soup', 30, NULL); COMMIT");
  CHECK(device->version_vector().get(own) == 1);
  k.a->exec("UPDATE recipe SET tags = 'spicy' WHERE id = 'pho'");
  pull(*k.a, *k.relay);
  k.a->exec("UPDATE recipe SET tags = 'spicy' WHERE id = 'pho'");
  pull(*k.relay, *k.a);
  pull(*k.relay, *device);
  pull(*device, *k.relay);
  pull(*merged, *k.relay);
  CHECK(device->digest() == k.relay->digest());
  CHECK(merged->digest() == k.relay->digest());
  CHECK(test::dump_query(*device, "SELECT stars FROM cook WHERE id = 2") == "int:8|\n");
  CHECK(device->check().problems.empty());
}

TEST_CASE("a relay's snapshot installs into a device whose tables order their columns otherwise") {
  // A relay creates a namespace's tables from the schema manifest, columns in id order; the
  // device's tables have them in the order its CREATE TABLE gave.
  Kitchen k;
  auto relay = Replica::open(":memory:");
  relay->migrate_to(1, k.a->schema_manifest());
  REQUIRE(test::dump_query(*relay, "SELECT group_concat(name) FROM pragma_table_info('recipe')") !=
          test::dump_query(*k.a, "SELECT group_concat(name) FROM pragma_table_info('recipe')"));
  pull(*relay, *k.relay);
  test::TempDir dir;
  // The relay's cook table lacks the device's UNIQUE handle: it shows both cooks called Ana,
  // of which a device holds one. The install refuses; the device syncs change by change.
  relay->write_snapshot(dir.file("both"));
  auto device = open_kitchen();
  check_refused(*device, dir.file("both"), ErrorCode::kSchema,
                "rows of table cook in the snapshot break a constraint of this replica (UNIQUE "
                "constraint failed: cook.handle)");
  // Once the relay holds what devices can show, the snapshot installs.
  relay->exec("DELETE FROM cook WHERE id = 3");
  pull(*k.relay, *relay);
  relay->write_snapshot(dir.file("one"));
  device->install_snapshot(dir.file("one"));
  CHECK(test::dump_table(*device, "recipe") == test::dump_table(*k.relay, "recipe"));
  CHECK(test::dump_table(*device, "cook") == test::dump_table(*k.relay, "cook"));
  CHECK(device->digest() == k.relay->digest());
  CHECK(device->check().problems.empty());
}

TEST_CASE("a snapshot of a device carries the device's own changes under its id") {
  auto writer = open_kitchen();
  writer->exec("INSERT INTO cook(id, handle, stars) VALUES (7, 'Cy', 4)");
  writer->exec("UPDATE cook SET stars = stars + 1 WHERE id = 7");
  test::TempDir dir;
  writer->write_snapshot(dir.file("writer.snapshot"));

  auto device = open_kitchen();
  const crdt::VersionVector installed = device->install_snapshot(dir.file("writer.snapshot"));
  CHECK(installed.get(writer->site_id()) == 2);
  CHECK(device->digest() == writer->digest());
  CHECK(device->check().problems.empty());
  // The writer's later increments add up on the device, which holds its component.
  writer->exec("UPDATE cook SET stars = stars + 10 WHERE id = 7");
  pull(*device, *writer);
  CHECK(test::dump_query(*device, "SELECT stars FROM cook") == "int:15|\n");
  device->exec("UPDATE cook SET stars = stars + 1 WHERE id = 7");
  pull(*writer, *device);
  CHECK(writer->digest() == device->digest());
}

TEST_CASE("a snapshot is refused by a replica that is not empty, and nothing changes") {
  Kitchen k;
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));

  const std::string path = dir.file("s");
  auto device = open_kitchen();
  SUBCASE("it wrote") {
    device->exec("INSERT INTO cook(id, handle) VALUES (9, 'Di')");
    check_refused(*device, path, ErrorCode::kState, "not empty (it has written changes)");
  }
  SUBCASE("it merged") {
    pull(*device, *k.a);
    check_refused(*device, path, ErrorCode::kState, "not empty (it has merged changes)");
  }
  SUBCASE("it installed one already") {
    device->install_snapshot(path);
    check_refused(*device, path, ErrorCode::kState, "not empty");
  }
}

TEST_CASE("a snapshot of another schema is refused, naming the difference") {
  Kitchen k;
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));
  auto device = open_kitchen();
  device->migrate(2, "ALTER TABLE recipe ADD COLUMN serves INTEGER");
  check_refused(*device, dir.file("s"), ErrorCode::kSchema, "serves");
}

TEST_CASE("what is not a sound snapshot is refused, and nothing changes") {
  Kitchen k;
  test::TempDir dir;
  const std::string path = dir.file("s");
  auto device = open_kitchen();
  auto refused = [&](ErrorCode code, const std::string& words) {
    check_refused(*device, path, code, words);
  };
  const std::string cook_rows =
      "lattice_rows_" +
      std::to_string(std::get<std::int64_t>(
          k.relay->query("SELECT id FROM lattice_tables WHERE name = 'cook'").rows.at(0).at(0)));
  // Edits the written snapshot with plain SQLite.
  auto tamper = [&](const std::string& sql) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    storage::exec_sql(db, sql);
    sqlite3_close(db);
  };

  SUBCASE("no file") { refused(ErrorCode::kIo, "no snapshot file"); }
  SUBCASE("not a database") {
    std::ofstream(path) << "SQLite format 3? no: a shopping list\n";
    refused(ErrorCode::kCorrupt, "not a Lattice snapshot");
  }
  SUBCASE("a database, not a snapshot") {
    tamper("CREATE TABLE shopping(item TEXT)");
    refused(ErrorCode::kCorrupt, "not a Lattice snapshot");
  }
  SUBCASE("a newer format") {
    k.relay->write_snapshot(path);
    tamper("UPDATE lattice_snapshot_info SET value = 99 WHERE key = 'format'");
    refused(ErrorCode::kUnsupportedVersion, "format 99");
  }
  SUBCASE("a row missing from its table") {
    k.relay->write_snapshot(path);
    tamper("DELETE FROM recipe WHERE id = 'pho'");
    refused(ErrorCode::kCorrupt, "table recipe");
  }
  SUBCASE("a trigger that would run on the device") {
    k.relay->write_snapshot(path);
    tamper("CREATE TRIGGER sneaky AFTER INSERT ON cook BEGIN SELECT 1; END");
    refused(ErrorCode::kCorrupt, "views or triggers");
  }
  SUBCASE("a clock far in the future") {
    k.relay->write_snapshot(path);
    tamper("UPDATE " + cook_rows + " SET hlc = hlc + (86400000 << 16)");
    refused(ErrorCode::kClockDrift, "");
  }
  SUBCASE("a recipe whose cook is missing") {
    k.relay->write_snapshot(path);
    tamper("DELETE FROM cook WHERE id = 2; DELETE FROM " + cook_rows +
           " WHERE pk = (SELECT pk FROM " + cook_rows + " ORDER BY rowid LIMIT 1 OFFSET 1)");
    refused(ErrorCode::kSchema, "rows of table recipe in the snapshot break a constraint");
  }
}

// A download broken off: any prefix of the file. SQLite reads a prefix that ends inside the
// last page as the whole file with zeros at its end; before install_snapshot compared the
// file's size with its pages, such a cut installed garbled rows, or left the replica malformed.
TEST_CASE("a snapshot cut short anywhere is refused as corrupt, and nothing changes") {
  Kitchen k;
  // Tables of several pages: the copy appends their pages, the last one among them.
  k.b->exec(
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
      "INSERT INTO recipe(id, cook_id, title, minutes) SELECT 'r' || i, 1 + i % 2, "
      "printf('Recipe %04d', i), i FROM n");
  pull(*k.relay, *k.b);
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));
  std::string whole;
  {
    std::ifstream in(dir.file("s"), std::ios::binary);
    whole.assign(std::istreambuf_iterator<char>(in), {});
  }
  constexpr std::size_t kPage = 4096;  // SQLite's default
  REQUIRE(whole.size() % kPage == 0);
  REQUIRE(whole.size() >= 3 * kPage);
  std::vector<std::size_t> cuts = {0, 1, 15, 16, 99, 100, 101, kPage - 1};
  for (std::size_t page = kPage; page < whole.size(); page += kPage)
    for (std::size_t in_page : {std::size_t(0), std::size_t(1), kPage / 2, kPage - 1})
      cuts.push_back(page + in_page);
  const std::string cut_path = dir.file("cut");
  auto device = open_kitchen();
  for (const std::size_t cut : cuts) {
    INFO("the first " << cut << " of " << whole.size() << " bytes");
    std::ofstream(cut_path, std::ios::binary | std::ios::trunc).write(whole.data(), cut);
    // SQLite itself finds a file with fewer pages than its header counts malformed, and one
    // shorter than the header not a database; a cut inside the last page, the size check.
    const bool inside_last_page = cut > whole.size() - kPage && cut % kPage != 0;
    check_refused(*device, cut_path, ErrorCode::kCorrupt, inside_last_page ? "cut short" : "");
  }
  device->install_snapshot(dir.file("s"));
  CHECK(device->digest() == k.relay->digest());
}

// A relay that merged a row's delete before any insert of it stores its columns as never
// written (cl 0, no stamp, site 0, seq 0). Found by the relay simulation (seed 86): installed
// under the index a writer's own changes move to, which a relay's snapshot gives no site, they
// made the next merge into the row fail with std::out_of_range.
TEST_CASE("columns the source never saw written install as never written, and merge on") {
  Kitchen k;
  // Cook 2: cook 1 ('Ana') and cook 3 ('ana') contest one NOCASE handle, and which one is held
  // depends on the replicas' random site ids; a recipe of a held cook is held too.
  k.a->exec("INSERT INTO recipe VALUES ('gone', 2, 'Gone', 5, NULL)");
  k.a->exec("DELETE FROM recipe WHERE id = 'gone'");
  pull(*k.relay, *k.a);
  REQUIRE(test::dump_query(*k.relay, "SELECT count(*) FROM lattice_local WHERE seq = 0") ==
          "int:1|\n");  // the relay wrote nothing
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));
  auto device = open_kitchen();
  device->install_snapshot(dir.file("s"));
  CHECK(device->digest() == k.relay->digest());
  CHECK(device->check().problems.empty());

  k.a->exec("INSERT INTO recipe VALUES ('gone', 2, 'Back', 7, NULL)");
  k.b->exec("UPDATE recipe SET minutes = 45 WHERE id = 'dal'");
  pull(*k.relay, *k.a);
  pull(*k.relay, *k.b);
  pull(*device, *k.relay);
  CHECK(device->digest() == k.relay->digest());
  CHECK(test::dump_table(*device, "recipe") == test::dump_table(*k.relay, "recipe"));
  CHECK(test::dump_query(*device, "SELECT title FROM recipe WHERE id = 'gone'") == "text:Back|\n");
  CHECK(device->check().problems.empty());
}

TEST_CASE("a snapshot holding this replica's own site id is a copy, refused") {
  Kitchen k;
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));
  storage::ReplicaOptions same;
  const crdt::SiteId a = k.a->site_id();
  same.new_site_id = [a] { return a; };
  auto copy = open_kitchen(":memory:", same);
  REQUIRE(copy->site_id() == a);
  check_refused(*copy, dir.file("s"), ErrorCode::kCopiedReplica, "site id");
}

// A relay of a cluster hydrates from another relay's snapshot: it must still tell a device's
// file from a copy of it, so the origin log travels, and only when asked for.
TEST_CASE("a relay's snapshot with its origin log gives another relay the same origin log") {
  auto device = open_kitchen();
  auto relay = open_kitchen();
  device->exec("INSERT INTO cook(id, handle) VALUES (1, 'Ana')");
  device->exec("INSERT INTO cook(id, handle) VALUES (2, 'Bo')");
  device->exec("UPDATE cook SET stars = stars + 5 WHERE id = 2");
  const std::vector<storage::TxnTag> tags = device->local_log(1, 3);
  REQUIRE(tags.size() == 3);
  relay->apply(device->changes_since(relay->version_vector()),
               storage::OriginTxns{device->site_id(), tags});
  REQUIRE(relay->origin_log(device->site_id(), 1, 10).size() == 3);

  test::TempDir dir;
  relay->write_snapshot(dir.file("with"), false, /*with_origin_log=*/true);
  relay->write_snapshot(dir.file("without"));
  auto hydrated = open_kitchen();
  hydrated->install_snapshot(dir.file("with"));
  const auto copied = hydrated->origin_log(device->site_id(), 1, 10);
  REQUIRE(copied.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(copied[i].seq == tags[i].seq);
    CHECK(copied[i].tag == tags[i].tag);
  }
  CHECK(hydrated->digest() == relay->digest());
  auto plain = open_kitchen();
  plain->install_snapshot(dir.file("without"));
  CHECK(plain->origin_log(device->site_id(), 1, 10).empty());
  CHECK(plain->digest() == relay->digest());
}

TEST_CASE("write_snapshot refuses a file that exists and a transaction in progress") {
  Kitchen k;
  test::TempDir dir;
  k.relay->write_snapshot(dir.file("s"));
  try {
    k.relay->write_snapshot(dir.file("s"));
    FAIL("overwrote");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kIo);
  }
  k.relay->begin_group();
  CHECK_THROWS_AS(k.relay->write_snapshot(dir.file("t")), Error);
  k.relay->rollback_group();
  CHECK_FALSE(std::filesystem::exists(dir.file("t")));
}

// The property: whenever a device installs a snapshot, however the history before and after it
// went, it ends with the same state as devices that merged every change.
TEST_CASE("property: a snapshot taken at any point converges with change-by-change sync") {
  const std::uint64_t base = test::seed_from_env(20261206);
  for (std::uint64_t seed = base; seed < base + 25; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    std::vector<std::unique_ptr<Replica>> devices;
    for (int i = 0; i < 3; ++i) devices.push_back(open_kitchen());
    auto relay = open_kitchen();
    auto random_write = [&](Replica& r) {
      const int cook = static_cast<int>(rng() % 6) + 1;
      const std::string recipe = "r" + std::to_string(rng() % 8);
      switch (rng() % 6) {
        case 0:
          r.exec("INSERT OR IGNORE INTO cook(id, handle) VALUES (" + std::to_string(cook) +
                 ", 'cook" + std::to_string(rng() % 4) + "')");
          break;
        case 1:
          r.exec("UPDATE cook SET stars = stars + " + std::to_string(rng() % 5) +
                 " WHERE id = " + std::to_string(cook));
          break;
        case 2:
          r.exec("INSERT OR REPLACE INTO recipe VALUES ('" + recipe + "', NULL, 'T" +
                 std::to_string(rng() % 100) + "', " + std::to_string(rng() % 50 + 1) + ", NULL)");
          break;
        case 3:
          r.exec("UPDATE recipe SET tags = 'x" + std::to_string(rng() % 9) + "' WHERE id = '" +
                 recipe + "'");
          break;
        case 4:
          r.exec("DELETE FROM recipe WHERE id = '" + recipe + "'");
          break;
        default:
          r.exec("DELETE FROM cook WHERE id = " + std::to_string(cook));
          break;
      }
    };
    auto round = [&](int writes) {
      for (int i = 0; i < writes; ++i) {
        Replica& d = *devices[rng() % devices.size()];
        random_write(d);
        if (rng() % 3 == 0) pull(*relay, d);
        if (rng() % 4 == 0) pull(d, *relay);
      }
    };
    round(40);
    test::TempDir dir;
    relay->write_snapshot(dir.file("s"));
    auto newcomer = open_kitchen();
    newcomer->install_snapshot(dir.file("s"));
    REQUIRE(newcomer->digest() == relay->digest());
    devices.push_back(std::move(newcomer));
    round(40);
    for (int pass = 0; pass < 2; ++pass)
      for (auto& d : devices) {
        pull(*relay, *d);
        pull(*d, *relay);
      }
    for (auto& d : devices) {
      CHECK(d->digest() == relay->digest());
      CHECK(d->check().problems.empty());
    }
  }
}

}  // namespace
}  // namespace lattice
