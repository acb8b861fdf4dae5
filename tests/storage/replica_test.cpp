// What an application relies on when it writes a replica with plain SQL and merges changesets.

#include "storage/replica.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <cmath>
#include <filesystem>

#include "crdt/error.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::ChangeEvent;
using storage::Replica;

std::int64_t count(Replica& r, const std::string& sql) {
  return std::get<std::int64_t>(r.query(sql).rows.at(0).at(0));
}

crdt::Value cell(Replica& r, const std::string& sql) { return r.query(sql).rows.at(0).at(0); }

// Sends everything `to` lacks from `from`.
storage::ApplyResult sync(Replica& from, Replica& to) {
  return to.apply(from.changes_since(to.version_vector()));
}

std::filesystem::path temp_file(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("lattice-replica-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::filesystem::remove(path);
  std::filesystem::remove(path.string() + "-wal");
  std::filesystem::remove(path.string() + "-shm");
  return path;
}

TEST_CASE("every kind of plain SQL write is captured in the same transaction") {
  auto a = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  CHECK(a->version_vector().get(a->site_id()) == 1);
  a->exec("UPDATE todo SET title = 'oat milk' WHERE id = 'x'");
  a->exec(
      "INSERT INTO todo(id, title) VALUES ('x', 'soy milk') ON CONFLICT(id) DO UPDATE SET "
      "title = excluded.title");
  a->exec("INSERT OR REPLACE INTO todo(id, title) VALUES ('y', 'eggs')");
  a->exec("DELETE FROM todo WHERE id = 'y'");
  CHECK(a->version_vector().get(a->site_id()) == 5);

  auto b = test::open_todo_replica();
  sync(*a, *b);
  CHECK(test::dump_table(*b, "todo") == test::dump_table(*a, "todo"));
  CHECK(std::get<std::string>(cell(*b, "SELECT title FROM todo WHERE id = 'x'")) == "soy milk");
  CHECK(count(*b, "SELECT count(*) FROM todo WHERE id = 'y'") == 0);
}

TEST_CASE("a rolled-back transaction leaves no change and uses no sequence number") {
  auto a = test::open_todo_replica();
  a->exec("BEGIN; INSERT INTO todo(id, title) VALUES ('x', 'milk'); ROLLBACK");
  CHECK(a->version_vector().empty());
  CHECK(a->changes_since({}).rows.empty());
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  CHECK(a->version_vector().get(a->site_id()) == 1);
}

TEST_CASE("a savepoint rolled back after the first write does not let a sequence number repeat") {
  const auto path = temp_file("savepoint.db");
  auto a = test::open_todo_replica(path.string());
  a->exec(
      "BEGIN; SAVEPOINT s; INSERT INTO todo(id) VALUES ('x'); ROLLBACK TO s; RELEASE s;"
      "INSERT INTO todo(id) VALUES ('y'); COMMIT");
  const auto first = a->version_vector().get(a->site_id());
  // Another connection to the same file must continue after, not at, that number.
  auto other = Replica::open(path.string());
  other->exec("INSERT INTO todo(id) VALUES ('z')");
  CHECK(other->version_vector().get(a->site_id()) == first + 1);
  auto b = test::open_todo_replica();
  sync(*other, *b);
  CHECK(count(*b, "SELECT count(*) FROM todo") == 2);
}

TEST_CASE("concurrent increments of a counter on two replicas add up") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, votes) VALUES ('x', 10)");
  sync(*a, *b);
  a->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'x'");
  b->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'x'");
  b->exec("UPDATE todo SET votes = votes + 5 WHERE id = 'x'");
  sync(*a, *b);
  sync(*b, *a);
  CHECK(std::get<std::int64_t>(cell(*a, "SELECT votes FROM todo")) == 17);
  CHECK(std::get<std::int64_t>(cell(*b, "SELECT votes FROM todo")) == 17);
}

TEST_CASE("a counter column refuses a value that is not an integer") {
  auto a = test::open_todo_replica();
  CHECK_THROWS_WITH_AS(a->exec("INSERT INTO todo(id, votes) VALUES ('x', 'many')"),
                       doctest::Contains("counter column todo.votes"), Error);
  CHECK(count(*a, "SELECT count(*) FROM todo") == 0);
}

TEST_CASE("the later write of a cell wins, whichever replica applies it first") {
  std::uint64_t now_ms = 1'000'000;
  storage::ReplicaOptions options;
  options.physical_clock = [&] { return now_ms; };
  auto a = test::open_todo_replica(":memory:", options);
  auto b = test::open_todo_replica(":memory:", options);
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'first')");
  sync(*a, *b);
  now_ms += 10;
  b->exec("UPDATE todo SET title = 'later' WHERE id = 'x'");
  now_ms -= 5;  // a's clock lags: its write is still older than b's
  a->exec("UPDATE todo SET title = 'earlier' WHERE id = 'x'");
  sync(*a, *b);
  sync(*b, *a);
  CHECK(std::get<std::string>(cell(*a, "SELECT title FROM todo")) == "later");
  CHECK(std::get<std::string>(cell(*b, "SELECT title FROM todo")) == "later");
}

TEST_CASE("concurrent writes to different columns of one row both survive") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  sync(*a, *b);
  a->exec("UPDATE todo SET title = 'oat milk' WHERE id = 'x'");
  b->exec("UPDATE todo SET done = 1 WHERE id = 'x'");
  sync(*a, *b);
  sync(*b, *a);
  for (auto* r : {a.get(), b.get()}) {
    CHECK(std::get<std::string>(cell(*r, "SELECT title FROM todo")) == "oat milk");
    CHECK(std::get<std::int64_t>(cell(*r, "SELECT done FROM todo")) == 1);
  }
}

TEST_CASE("a delete beats a concurrent update of the same row") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  sync(*a, *b);
  a->exec("DELETE FROM todo WHERE id = 'x'");
  b->exec("UPDATE todo SET title = 'oat milk', votes = votes + 1 WHERE id = 'x'");
  sync(*b, *a);
  sync(*a, *b);
  CHECK(count(*a, "SELECT count(*) FROM todo") == 0);
  CHECK(count(*b, "SELECT count(*) FROM todo") == 0);
}

TEST_CASE("a re-insert made after seeing a delete beats a concurrent delete of the old row") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica(), c = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'milk', 3)");
  sync(*a, *b);
  sync(*a, *c);
  a->exec("DELETE FROM todo WHERE id = 'x'");
  sync(*a, *b);
  b->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'bread', 1)");  // saw the delete
  c->exec("DELETE FROM todo WHERE id = 'x'");                              // did not
  for (int round = 0; round < 2; ++round)
    for (auto* from : {a.get(), b.get(), c.get()})
      for (auto* to : {a.get(), b.get(), c.get()})
        if (from != to) sync(*from, *to);
  for (auto* r : {a.get(), b.get(), c.get()}) {
    CHECK(std::get<std::string>(cell(*r, "SELECT title FROM todo WHERE id = 'x'")) == "bread");
    CHECK(std::get<std::int64_t>(cell(*r, "SELECT votes FROM todo WHERE id = 'x'")) == 1);
  }
}

TEST_CASE("applying the same changeset twice changes nothing the second time") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'milk', 2), ('y', 'eggs', 0)");
  const auto changeset = a->changes_since({});
  CHECK(b->apply(changeset).applied > 0);
  const std::string once = test::dump_everything(*b);
  CHECK(b->apply(changeset).applied == 0);
  CHECK(test::dump_everything(*b) == once);
}

TEST_CASE("merged writes are not captured again as local changes") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  sync(*a, *b);
  CHECK(b->version_vector().get(b->site_id()) == 0);
  // b has nothing of its own to send back.
  crdt::VersionVector only_a;
  only_a.advance(a->site_id(), a->version_vector().get(a->site_id()));
  CHECK(b->changes_since(only_a).rows.empty());
}

TEST_CASE("changes_since returns exactly what the holder lacks") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  for (int i = 0; i < 50; ++i)
    a->query("INSERT INTO todo(id, title) VALUES (?, 'x')", {"k" + std::to_string(i)});
  sync(*a, *b);
  CHECK(a->changes_since(b->version_vector()).rows.empty());
  a->exec("UPDATE todo SET title = 'changed' WHERE id = 'k7'");
  const auto delta = a->changes_since(b->version_vector());
  REQUIRE(delta.rows.size() == 1);
  CHECK(delta.change_count() == 1);
  CHECK(!delta.rows[0].liveness);
}

TEST_CASE("a cell written many times keeps one entry in the change log") {
  auto a = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'v0')");
  for (int i = 1; i <= 100; ++i)
    a->query("UPDATE todo SET title = ?, votes = votes + 1 WHERE id = 'x'",
             {"v" + std::to_string(i)});
  const auto all = a->changes_since({});
  REQUIRE(all.rows.size() == 1);
  CHECK(all.change_count() == 3);  // the insert's 'done', the latest title, one counter part
}

TEST_CASE("REPLACE that removes another row through a unique constraint captures that delete") {
  auto a = Replica::open(":memory:"), b = Replica::open(":memory:");
  for (auto* r : {a.get(), b.get()})
    r->exec(
        "CREATE TABLE tag(id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
        "SELECT lattice_replicate('tag')");
  a->exec("INSERT INTO tag VALUES (1, 'red')");
  sync(*a, *b);
  a->exec("INSERT OR REPLACE INTO tag VALUES (2, 'red')");
  sync(*a, *b);
  CHECK(test::dump_table(*b, "tag") == test::dump_table(*a, "tag"));
  CHECK(count(*b, "SELECT count(*) FROM tag") == 1);
}

TEST_CASE("tables with composite primary keys replicate") {
  auto a = Replica::open(":memory:"), b = Replica::open(":memory:");
  for (auto* r : {a.get(), b.get()})
    r->exec(
        "CREATE TABLE member(team TEXT, person INTEGER, role TEXT, "
        "PRIMARY KEY (team, person)) WITHOUT ROWID; SELECT lattice_replicate('member')");
  a->exec("INSERT INTO member VALUES ('red', 1, 'lead'), ('red', 2, 'dev'), ('blue', 1, 'dev')");
  a->exec("UPDATE member SET role = 'ops' WHERE team = 'red' AND person = 2");
  a->exec("DELETE FROM member WHERE team = 'blue'");
  sync(*a, *b);
  CHECK(test::dump_table(*b, "member") == test::dump_table(*a, "member"));
  CHECK(count(*b, "SELECT count(*) FROM member") == 2);
}

TEST_CASE("rows that existed before lattice_replicate are replicated too") {
  auto a = Replica::open(":memory:");
  a->exec(
      "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, "
      "votes INTEGER NOT NULL DEFAULT 0);"
      "INSERT INTO todo(id, title, votes) VALUES ('x', 'milk', 4);"
      "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}')");
  auto b = test::open_todo_replica();
  sync(*a, *b);
  CHECK(test::dump_table(*b, "todo") == test::dump_table(*a, "todo"));
}

TEST_CASE("changing the primary key of a replicated row is refused") {
  auto a = test::open_todo_replica();
  a->exec("INSERT INTO todo(id) VALUES ('x')");
  CHECK_THROWS_WITH_AS(a->exec("UPDATE todo SET id = 'y'"),
                       doctest::Contains("primary key of a replicated row cannot change"), Error);
  CHECK(count(*a, "SELECT count(*) FROM todo WHERE id = 'x'") == 1);
}

TEST_CASE("listeners hear local and merged changes with table, key and columns") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  std::vector<ChangeEvent> heard;
  b->subscribe([&](const std::vector<ChangeEvent>& events) {
    heard.insert(heard.end(), events.begin(), events.end());
  });
  b->exec("INSERT INTO todo(id, title) VALUES ('local', 'milk')");
  REQUIRE(heard.size() == 1);
  CHECK(heard[0].origin == ChangeEvent::Origin::kLocal);
  CHECK(heard[0].table == "todo");
  CHECK(std::get<std::string>(heard[0].primary_key.at(0)) == "local");

  heard.clear();
  b->exec("UPDATE todo SET title = 'oat milk' WHERE id = 'local'");
  REQUIRE(heard.size() == 1);
  CHECK(heard[0].columns == std::vector<std::string>{"title"});

  heard.clear();
  b->exec("BEGIN; UPDATE todo SET done = 1; ROLLBACK");
  CHECK(heard.empty());

  heard.clear();
  a->exec("INSERT INTO todo(id, title) VALUES ('remote', 'eggs')");
  sync(*a, *b);
  REQUIRE(heard.size() == 1);
  CHECK(heard[0].origin == ChangeEvent::Origin::kMerged);
  CHECK(std::get<std::string>(heard[0].primary_key.at(0)) == "remote");
  CHECK(std::find(heard[0].columns.begin(), heard[0].columns.end(), "title") !=
        heard[0].columns.end());

  heard.clear();
  a->exec("DELETE FROM todo WHERE id = 'remote'");
  sync(*a, *b);
  REQUIRE(heard.size() == 1);
  CHECK(heard[0].deleted);
}

TEST_CASE("a replica keeps its site id and its changes across reopening") {
  const auto path = temp_file("reopen.db");
  crdt::SiteId site;
  {
    auto a = test::open_todo_replica(path.string());
    a->exec("INSERT INTO todo(id) VALUES ('x')");
    site = a->site_id();
  }
  auto a = Replica::open(path.string());
  CHECK(a->site_id() == site);
  CHECK(a->version_vector().get(site) == 1);
  a->exec("INSERT INTO todo(id) VALUES ('y')");
  CHECK(a->version_vector().get(site) == 2);
}

TEST_CASE("a replica written by a newer format is refused on open") {
  const auto path = temp_file("newer.db");
  {
    test::open_todo_replica(path.string())
        ->exec("UPDATE lattice_meta SET value = 99 WHERE key = 'format_version'");
  }
  CHECK_THROWS_WITH_AS(Replica::open(path.string()), doctest::Contains("format 99"), Error);
}

}  // namespace
}  // namespace lattice

namespace lattice {
namespace {

TEST_CASE(
    "Lattice's own tables cannot be altered or dropped; a raw statement cannot alter a replicated "
    "table") {
  auto a = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title) VALUES ('x', 'milk')");
  const std::string before = test::dump_everything(*a);
  CHECK_THROWS_WITH_AS(a->exec("DROP TABLE lattice_sites"), doctest::Contains("belongs to Lattice"),
                       Error);
  CHECK_THROWS_WITH_AS(a->exec("ALTER TABLE lattice_columns ADD COLUMN x"),
                       doctest::Contains("belongs to Lattice"), Error);
  // A statement prepared on the connection itself, outside Replica::exec, cannot change a
  // replicated table behind the catalog's back.
  sqlite3_stmt* raw = nullptr;
  CHECK(sqlite3_prepare_v2(a->connection(), "ALTER TABLE todo ADD COLUMN note TEXT", -1, &raw,
                           nullptr) != SQLITE_OK);
  sqlite3_finalize(raw);
  CHECK(test::dump_everything(*a) == before);
  // Other tables stay the application's to change.
  a->exec("CREATE TABLE scratch(a); ALTER TABLE scratch ADD COLUMN b; DROP TABLE scratch");
}

TEST_CASE("listeners hear nothing of a statement that failed inside a committed transaction") {
  auto a = test::open_todo_replica();
  std::vector<ChangeEvent> heard;
  a->subscribe([&](const std::vector<ChangeEvent>& events) {
    heard.insert(heard.end(), events.begin(), events.end());
  });
  a->exec("BEGIN; INSERT INTO todo(id) VALUES ('kept')");
  CHECK_THROWS_AS(a->exec("INSERT INTO todo(id, votes) VALUES ('phantom', 'many')"), Error);
  a->exec("COMMIT");
  REQUIRE(heard.size() == 1);
  CHECK(std::get<std::string>(heard[0].primary_key.at(0)) == "kept");
}

}  // namespace
}  // namespace lattice

namespace lattice {
namespace {

TEST_CASE("key and cell values keep their SQLite type across replicas, 1.0 stays a real") {
  auto a = Replica::open(":memory:"), b = Replica::open(":memory:");
  for (auto* r : {a.get(), b.get()})
    r->exec("CREATE TABLE loose(k PRIMARY KEY, v); SELECT lattice_replicate('loose')");
  a->exec("INSERT INTO loose VALUES (1, 2.0), ('1', 1), (x'00ff', -129), (-5, 'x'), (2, -0.0)");
  sync(*a, *b);
  const std::string types = "SELECT typeof(k) || ':' || typeof(v) FROM loose ORDER BY k";
  CHECK(b->query(types).rows == a->query(types).rows);
  CHECK(test::dump_table(*b, "loose") == test::dump_table(*a, "loose"));
  CHECK(std::get<std::string>(cell(*b, "SELECT typeof(v) FROM loose WHERE k = 1")) == "real");
  CHECK(std::signbit(std::get<double>(cell(*b, "SELECT v FROM loose WHERE k = 2"))));
  CHECK(a->digest() == b->digest());
  // To SQLite the real key 1.0 is the integer key 1, so a key column without a type takes no
  // reals: the two devices would disagree on which row it names.
  CHECK_THROWS_WITH_AS(a->exec("INSERT INTO loose VALUES (3.0, 'three')"),
                       doctest::Contains("has no type, so a real key"), Error);
}

}  // namespace
}  // namespace lattice

namespace lattice {
namespace {

TEST_CASE("digests agree exactly when replicated rows agree, and say where they differ") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica();
  a->exec("INSERT INTO todo(id, title, votes) VALUES ('x', 'milk', 2), ('y', 'eggs', 0)");
  sync(*a, *b);
  CHECK(a->digest() == b->digest());
  CHECK(storage::compare_digests(a->digest(), b->digest()).empty());

  b->exec("UPDATE todo SET done = 1 WHERE id = 'y'");
  auto differences = storage::compare_digests(a->digest(), b->digest());
  REQUIRE(differences.size() == 1);
  CHECK(differences[0] == "table todo: 2 rows here, 2 there, contents differ");

  b->exec("INSERT INTO todo(id) VALUES ('z')");
  differences = storage::compare_digests(a->digest(), b->digest());
  REQUIRE(differences.size() == 1);
  CHECK(differences[0] == "table todo: 2 rows here, 3 there, contents differ");
  // Only the value's type differs: still a difference.
  sync(*b, *a);
  a->exec("UPDATE todo SET title = x'31' WHERE id = 'z'");  // the blob '1'
  b->exec("UPDATE todo SET title = '1' WHERE id = 'z'");    // the text '1'
  CHECK(a->digest() != b->digest());
}

}  // namespace
}  // namespace lattice

namespace lattice {
namespace {

TEST_CASE("a catch-up in small chunks ends where one whole changeset would") {
  auto a = test::open_todo_replica(), b = test::open_todo_replica(), c = test::open_todo_replica();
  for (int i = 0; i < 60; ++i)
    a->query("INSERT INTO todo(id, title, votes) VALUES (?, 't', ?)",
             {"k" + std::to_string(i), std::int64_t(i)});
  a->exec("BEGIN; UPDATE todo SET title = 'bulk'; COMMIT");  // one transaction of 60 changes
  c->exec("INSERT INTO todo(id, title) VALUES ('c1', 'from c')");
  sync(*c, *a);
  a->exec("DELETE FROM todo WHERE id IN ('k3', 'k4')");

  const std::size_t whole = a->changes_since({}).change_count();
  int chunks = 0;
  for (;;) {
    const auto chunk = a->changes_since(b->version_vector(), 7);
    if (chunk.rows.empty() && b->version_vector().dominates(chunk.until)) break;
    CHECK(chunk.change_count() < whole);
    b->apply(chunk);
    REQUIRE(++chunks < 100);
  }
  CHECK(chunks > 5);
  CHECK(test::dump_table(*b, "todo") == test::dump_table(*a, "todo"));
  CHECK(b->version_vector().to_json() == a->version_vector().to_json());
}

// Regression: the capture trigger's INSERT OR IGNORE into lattice_counter_undo took the upsert's
// conflict policy, so a second ON CONFLICT DO UPDATE of one counter in a transaction failed
// with "UNIQUE constraint failed: lattice_counter_undo...".
TEST_CASE("two upserts of one counter in one transaction are captured") {
  auto replica = test::open_todo_replica();
  replica->exec(
      "BEGIN;"
      "INSERT INTO todo(id, votes) VALUES ('a', 1) ON CONFLICT(id) DO UPDATE SET votes = 1;"
      "INSERT INTO todo(id, votes) VALUES ('a', 2) ON CONFLICT(id) DO UPDATE SET votes = 2;"
      "INSERT INTO todo(id, votes) VALUES ('a', 3) ON CONFLICT(id) DO UPDATE SET votes = 3;"
      "COMMIT");
  auto fresh = test::open_todo_replica();
  fresh->apply(replica->changes_since(crdt::VersionVector{}));
  CHECK(test::dump_table(*fresh, "todo") == "text:a|null|int:0|int:3|\n");
}

}  // namespace
}  // namespace lattice
