// Data quality on the schemas applications have (docs/data-quality.md): constraints, collations,
// keys chosen by SQLite, application triggers and a peer's schema never stall a sync, split
// replicas or lose a write without a word. One test case (or more) per class of failure found.

#include <doctest/doctest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::Replica;

// A replica whose clock runs `behind_ms` behind real time, so that tests can say which of two
// devices wrote first.
std::unique_ptr<Replica> open_with(const std::string& schema, std::uint64_t behind_ms = 0) {
  storage::ReplicaOptions options;
  options.physical_clock = [behind_ms] { return crdt::HybridClock::system_clock_ms() - behind_ms; };
  auto r = Replica::open(":memory:", options);
  r->exec(schema);
  return r;
}

// Everything `to` lacks from `from`.
void sync(Replica& from, Replica& to) { to.apply(from.changes_since(to.version_vector())); }

void sync_all(const std::vector<Replica*>& replicas) {
  for (int round = 0; round < 2; ++round)
    for (auto* a : replicas)
      for (auto* b : replicas)
        if (a != b) sync(*a, *b);
}

crdt::Value one(Replica& r, const std::string& sql) { return r.query(sql).rows.at(0).at(0); }
std::int64_t count(Replica& r, const std::string& sql) {
  return std::get<std::int64_t>(one(r, sql));
}

// What every replica must agree on: the rows shown, the rows held (with their reasons), the
// digest.
std::string state(Replica& r, const std::string& table) {
  std::string out = test::dump_table(r, table) + "held:\n";
  for (const auto& row :
       r.query("SELECT \"table\", \"key\", reason, \"row\" FROM lattice_conflicts WHERE kind = "
               "'held' ORDER BY 1, 2")
           .rows) {
    for (const auto& v : row) out += std::get<std::string>(v) + "|";
    out += "\n";
  }
  return out + r.digest();
}

void check_converged(const std::vector<Replica*>& replicas, const std::string& table) {
  const std::string expected = state(*replicas[0], table);
  for (auto* r : replicas) CHECK(state(*r, table) == expected);
}

// ---- 1. Constraints never stall a sync ----------------------------------------------------

constexpr const char* kUsers =
    "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);"
    "SELECT lattice_replicate('users');";

TEST_CASE("two devices that take the same unique email offline converge; the later one waits") {
  auto a = open_with(kUsers, 2000), b = open_with(kUsers, 1000), c = open_with(kUsers);
  a->exec("INSERT INTO users VALUES ('u1', 'sam@example.com', 'Sam A')");
  b->exec("INSERT INTO users VALUES ('u2', 'sam@example.com', 'Sam B')");
  b->exec("INSERT INTO users VALUES ('u3', 'kim@example.com', 'Kim')");  // unrelated

  // Both directions apply (no stall), and so does a third replica in either order.
  sync(*a, *b);
  sync(*b, *a);
  sync(*b, *c);
  sync(*a, *c);
  check_converged({a.get(), b.get(), c.get()}, "users");
  for (auto* r : {a.get(), b.get(), c.get()}) {
    CHECK(count(*r, "SELECT count(*) FROM users WHERE email = 'sam@example.com'") == 1);
    CHECK(count(*r, "SELECT count(*) FROM users WHERE id = 'u3'") == 1);
  }
  // a's insert came first (a wrote before b): b's row waits, with its values and the reason.
  CHECK(one(*a, "SELECT id FROM users WHERE email = 'sam@example.com'") == crdt::Value{"u1"});
  const auto held =
      b->query("SELECT \"key\", reason, \"constraint\", message, \"row\" FROM lattice_conflicts");
  REQUIRE(held.rows.size() == 1);
  CHECK(held.rows[0][0] == crdt::Value{"[\"u2\"]"});
  CHECK(held.rows[0][1] == crdt::Value{"unique"});
  CHECK(held.rows[0][2] == crdt::Value{"users.email"});
  const std::string message = std::get<std::string>(held.rows[0][3]);
  CHECK(message.find("[\"u2\"] of users") != std::string::npos);
  CHECK(message.find("[\"u1\"] of users took the same users.email earlier") != std::string::npos);
  CHECK(message.find("lattice_") == std::string::npos);  // no internal SQL
  CHECK(std::get<std::string>(held.rows[0][4]).find("\"name\": \"Sam B\"") != std::string::npos);

  // Resolved by an ordinary write on any device: the held row inserted again with a new email.
  b->exec("INSERT INTO users VALUES ('u2', 'sam.b@example.com', 'Sam B')");
  CHECK(count(*b, "SELECT count(*) FROM lattice_conflicts") == 0);
  sync_all({a.get(), b.get(), c.get()});
  check_converged({a.get(), b.get(), c.get()}, "users");
  CHECK(count(*c, "SELECT count(*) FROM users") == 3);
}

TEST_CASE("a held row comes back by itself when the value it waits for is freed") {
  auto a = open_with(kUsers, 2000), b = open_with(kUsers, 1000);
  a->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'first')");
  b->exec("INSERT INTO users VALUES ('u2', 'x@example.com', 'second')");
  sync_all({a.get(), b.get()});
  REQUIRE(count(*a, "SELECT count(*) FROM lattice_conflicts") == 1);
  // A local write frees the value; the held row takes it on this device at once...
  a->exec("UPDATE users SET email = 'y@example.com' WHERE id = 'u1'");
  CHECK(count(*a, "SELECT count(*) FROM lattice_conflicts") == 0);
  CHECK(one(*a, "SELECT id FROM users WHERE email = 'x@example.com'") == crdt::Value{"u2"});
  // ...and on the other once the write arrives.
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "users");
}

TEST_CASE("one transaction that frees a unique value and reuses it applies in any row order") {
  auto a = open_with(kUsers), b = open_with(kUsers);
  a->exec(
      "INSERT INTO users VALUES ('u1', 'x@example.com', 'one'), ('u2', 'y@example.com', 'two')");
  sync(*a, *b);
  a->exec(
      "BEGIN; UPDATE users SET email = 'z@example.com' WHERE id = 'u1';"
      "UPDATE users SET email = 'x@example.com' WHERE id = 'u2'; COMMIT");
  auto cs = a->changes_since(b->version_vector());
  REQUIRE(cs.rows.size() == 2);
  SUBCASE("in the order written") {}
  SUBCASE("reversed") { std::reverse(cs.rows.begin(), cs.rows.end()); }
  b->apply(cs);
  check_converged({a.get(), b.get()}, "users");
  CHECK(count(*b, "SELECT count(*) FROM lattice_conflicts") == 0);
}

TEST_CASE("a counter whose merged total breaks its CHECK is held, not stuck, and resolvable") {
  constexpr const char* schema =
      "CREATE TABLE poll(id TEXT PRIMARY KEY, votes INTEGER NOT NULL DEFAULT 0 "
      "CHECK (votes >= 0));"
      "SELECT lattice_replicate('poll', '{\"votes\": \"counter\"}');";
  auto a = open_with(schema), b = open_with(schema);
  a->exec("INSERT INTO poll VALUES ('p', 1)");
  sync(*a, *b);
  a->exec("UPDATE poll SET votes = votes - 1 WHERE id = 'p'");
  b->exec("UPDATE poll SET votes = votes - 1 WHERE id = 'p'");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "poll");
  for (auto* r : {a.get(), b.get()}) {
    CHECK(count(*r, "SELECT count(*) FROM poll") == 0);
    const auto held = r->query("SELECT reason, \"constraint\", \"row\" FROM lattice_conflicts");
    REQUIRE(held.rows.size() == 1);
    CHECK(held.rows[0][0] == crdt::Value{"check"});
    CHECK(held.rows[0][1] == crdt::Value{"votes >= 0"});
    CHECK(held.rows[0][2] == crdt::Value{"{\"id\": \"p\", \"votes\": -1}"});
  }
  // Later changes keep flowing, and an ordinary insert of the key resolves it.
  a->exec("INSERT INTO poll VALUES ('q', 3)");
  b->exec("INSERT INTO poll VALUES ('p', 0)");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "poll");
  CHECK(count(*a, "SELECT votes FROM poll WHERE id = 'p'") == 0);
  CHECK(count(*a, "SELECT count(*) FROM lattice_conflicts") == 0);
}

TEST_CASE("a held row can be discarded by deleting it from lattice_conflicts") {
  auto a = open_with(kUsers, 2000), b = open_with(kUsers, 1000);
  a->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'first')");
  b->exec("INSERT INTO users VALUES ('u2', 'x@example.com', 'second')");
  sync_all({a.get(), b.get()});
  a->exec("DELETE FROM lattice_conflicts WHERE \"table\" = 'users' AND \"key\" = '[\"u2\"]'");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "users");
  CHECK(count(*b, "SELECT count(*) FROM lattice_conflicts") == 0);
  CHECK(count(*b, "SELECT count(*) FROM users") == 1);
}

TEST_CASE("listeners hear that a merged row was held, and why") {
  auto a = open_with(kUsers, 2000), b = open_with(kUsers, 1000);
  a->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'first')");
  b->exec("INSERT INTO users VALUES ('u2', 'x@example.com', 'second')");
  std::vector<storage::ChangeEvent> heard;
  b->subscribe([&](const std::vector<storage::ChangeEvent>& events) {
    heard.insert(heard.end(), events.begin(), events.end());
  });
  sync(*a, *b);
  bool held = false;
  for (const auto& e : heard)
    if (e.table == "users" && e.primary_key == std::vector<crdt::Value>{"u2"} && e.deleted &&
        e.conflict == "unique")
      held = true;
  CHECK(held);
}

// ---- Foreign keys ---------------------------------------------------------------------------

constexpr const char* kProjects =
    "CREATE TABLE project(id TEXT PRIMARY KEY, name TEXT);"
    "CREATE TABLE task(id TEXT PRIMARY KEY, project TEXT REFERENCES project(id) "
    "ON DELETE CASCADE, title TEXT);"
    "SELECT lattice_replicate('project'); SELECT lattice_replicate('task');";

TEST_CASE("a child added while its parent was deleted elsewhere is held on every replica") {
  auto a = open_with(kProjects), b = open_with(kProjects);
  a->exec("INSERT INTO project VALUES ('p', 'garden'); INSERT INTO task VALUES ('t1', 'p', 'dig')");
  sync(*a, *b);
  a->exec("DELETE FROM project WHERE id = 'p'");  // cascades to t1 on a, captured
  b->exec("INSERT INTO task VALUES ('t2', 'p', 'water')");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "task");
  check_converged({a.get(), b.get()}, "project");
  for (auto* r : {a.get(), b.get()}) {
    CHECK(count(*r, "SELECT count(*) FROM task") == 0);
    CHECK(one(*r, "SELECT reason FROM lattice_conflicts") == crdt::Value{"foreign_key"});
    CHECK(one(*r, "SELECT \"key\" FROM lattice_conflicts") == crdt::Value{"[\"t2\"]"});
    // No orphan is shown, as SQLite itself would check.
    CHECK(r->query("PRAGMA foreign_key_check").rows.empty());
    CHECK_NOTHROW(r->changes_since({}));
  }
  // Re-creating the parent brings the child back.
  b->exec("INSERT INTO project VALUES ('p', 'garden again')");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "task");
  CHECK(count(*a, "SELECT count(*) FROM task WHERE id = 't2'") == 1);
}

TEST_CASE("a child that arrives before its parent waits for it") {
  auto a = open_with(kProjects), b = open_with(kProjects);
  a->exec("INSERT INTO project VALUES ('p', 'garden')");
  const auto parent = a->changes_since({});
  a->exec("INSERT INTO task VALUES ('t', 'p', 'dig')");
  const auto child = a->changes_since(parent.until);
  b->apply(child);
  CHECK(count(*b, "SELECT count(*) FROM task") == 0);
  CHECK(one(*b, "SELECT reason FROM lattice_conflicts") == crdt::Value{"foreign_key"});
  b->apply(parent);
  CHECK(count(*b, "SELECT count(*) FROM task") == 1);
  CHECK(count(*b, "SELECT count(*) FROM lattice_conflicts") == 0);
  check_converged({a.get(), b.get()}, "task");
}

// ---- REPLACE, recursive triggers -----------------------------------------------------------

TEST_CASE("rows REPLACE displaces under a unique constraint are captured as deleted") {
  auto a = open_with(kUsers), b = open_with(kUsers);
  a->exec(
      "INSERT INTO users VALUES ('u1', 'x@example.com', 'one'), ('u2', 'y@example.com', 'two')");
  sync(*a, *b);
  SUBCASE("INSERT OR REPLACE") {
    a->exec("INSERT OR REPLACE INTO users VALUES ('u3', 'x@example.com', 'three')");
  }
  SUBCASE("UPDATE OR REPLACE") {
    a->exec("UPDATE OR REPLACE users SET email = 'x@example.com' WHERE id = 'u2'");
  }
  SUBCASE("an upsert on the unique column, then a plain insert") {
    a->exec(
        "INSERT INTO users VALUES ('u9', 'x@example.com', 'nine') ON CONFLICT(email) DO "
        "UPDATE SET name = excluded.name");
    a->exec("INSERT INTO users VALUES ('u9', 'z@example.com', 'nine')");
  }
  const bool u1_gone_or_upserted =
      count(*a, "SELECT count(*) FROM users WHERE id = 'u1'") == 0 ||
      one(*a, "SELECT name FROM users WHERE id = 'u1'") == crdt::Value{"nine"};
  CHECK(u1_gone_or_upserted);
  CHECK_NOTHROW(a->changes_since({}));
  sync(*a, *b);
  check_converged({a.get(), b.get()}, "users");
  CHECK(count(*b, "SELECT count(*) FROM lattice_conflicts") == 0);
}

TEST_CASE("an application trigger that updates its own table works as in plain SQLite") {
  constexpr const char* schema =
      "CREATE TABLE note(id TEXT PRIMARY KEY, body TEXT, updated_at INTEGER);"
      "CREATE TRIGGER note_touch AFTER UPDATE ON note BEGIN "
      "UPDATE note SET updated_at = coalesce(updated_at, 0) + 1 WHERE id = NEW.id; END;"
      "CREATE TABLE local_note(id TEXT PRIMARY KEY, body TEXT, updated_at INTEGER);"
      "CREATE TRIGGER local_touch AFTER UPDATE ON local_note BEGIN "
      "UPDATE local_note SET updated_at = coalesce(updated_at, 0) + 1 WHERE id = NEW.id; END;"
      "SELECT lattice_replicate('note');";
  auto a = open_with(schema), b = open_with(schema), c = open_with(schema);
  a->exec("INSERT INTO local_note VALUES ('n', 'x', 0); UPDATE local_note SET body = 'y'");
  CHECK(count(*a, "SELECT updated_at FROM local_note") == 1);
  a->exec("INSERT INTO note VALUES ('n', 'draft', 0)");
  a->exec("UPDATE note SET body = 'final' WHERE id = 'n'");
  CHECK(count(*a, "SELECT updated_at FROM note") == 1);
  // Merges do not run it again: every replica shows the writer's updated_at.
  sync(*a, *b);
  sync(*b, *c);
  check_converged({a.get(), b.get(), c.get()}, "note");
  CHECK(count(*c, "SELECT updated_at FROM note") == 1);
}

TEST_CASE("triggers that fill a replicated audit table or cascade deletes do not split replicas") {
  constexpr const char* schema =
      "CREATE TABLE item(id TEXT PRIMARY KEY, title TEXT);"
      "CREATE TABLE part(id TEXT PRIMARY KEY, item TEXT, label TEXT);"
      "CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);"
      "CREATE TABLE search(id TEXT, title TEXT);"  // not replicated: kept up to date by merges
      "CREATE TRIGGER item_audit AFTER INSERT ON item BEGIN "
      "INSERT INTO audit VALUES (lattice_id(), 'added ' || NEW.id); END;"
      "CREATE TRIGGER item_parts AFTER DELETE ON item BEGIN "
      "DELETE FROM part WHERE item = OLD.id; END;"
      "CREATE TRIGGER item_search AFTER INSERT ON item BEGIN "
      "INSERT INTO search VALUES (NEW.id, NEW.title); END;"
      "SELECT lattice_replicate('item'); SELECT lattice_replicate('part');"
      "SELECT lattice_replicate('audit');";
  auto a = open_with(schema), b = open_with(schema);
  a->exec("INSERT INTO item VALUES ('i', 'lamp'); INSERT INTO part VALUES ('p1', 'i', 'bulb')");
  sync(*a, *b);
  CHECK(count(*b, "SELECT count(*) FROM audit") == 1);      // a's audit row, merged once
  CHECK(count(*b, "SELECT count(*) FROM search") == 1);     // the local index, kept by b's trigger
  b->exec("INSERT INTO part VALUES ('p2', 'i', 'shade')");  // concurrent with the delete below
  a->exec("DELETE FROM item WHERE id = 'i'");
  sync_all({a.get(), b.get()});
  for (const char* table : {"item", "part", "audit"}) check_converged({a.get(), b.get()}, table);
  // p2 was never deleted by anyone: it stays, on both.
  CHECK(count(*a, "SELECT count(*) FROM part WHERE id = 'p2'") == 1);
  CHECK(count(*b, "SELECT count(*) FROM part WHERE id = 'p1'") == 0);
  CHECK_NOTHROW(b->changes_since({}));
}

// ---- 2. Keys and values compared as the merge compares them ---------------------------------

TEST_CASE("keys that SQLite compares otherwise than byte for byte are refused by name") {
  auto r = Replica::open(":memory:");
  r->exec(
      "CREATE TABLE tag(name TEXT PRIMARY KEY COLLATE NOCASE, color TEXT);"
      "CREATE TABLE code(k TEXT COLLATE RTRIM, v TEXT, PRIMARY KEY (k));"
      "CREATE TABLE mail(id TEXT PRIMARY KEY, address TEXT);"
      "CREATE UNIQUE INDEX mail_lower ON mail(lower(address));"
      "CREATE TABLE nully(k TEXT PRIMARY KEY, v TEXT); INSERT INTO nully VALUES (NULL, 'x');");
  CHECK_THROWS_WITH_AS(r->replicate("tag"),
                       doctest::Contains("key column 'name' compares with COLLATE NOCASE"), Error);
  CHECK_THROWS_WITH_AS(r->replicate("code"), doctest::Contains("COLLATE RTRIM"), Error);
  CHECK_THROWS_WITH_AS(r->replicate("mail"), doctest::Contains("'mail_lower' is on an expression"),
                       Error);
  CHECK_THROWS_WITH_AS(r->replicate("nully"), doctest::Contains("1 row(s) have a NULL"), Error);
}

TEST_CASE("a case-only edit in a NOCASE column and a zero's sign are captured") {
  constexpr const char* schema =
      "CREATE TABLE person(id TEXT PRIMARY KEY, name TEXT COLLATE NOCASE, x);"
      "SELECT lattice_replicate('person');";
  auto a = open_with(schema), b = open_with(schema);
  a->exec("INSERT INTO person VALUES ('p', 'alice', 0.0)");
  sync(*a, *b);
  a->exec("UPDATE person SET name = 'Alice' WHERE id = 'p'");
  a->query("UPDATE person SET x = ? WHERE id = 'p'", {-0.0});
  sync(*a, *b);
  CHECK(one(*b, "SELECT name FROM person") == crdt::Value{"Alice"});
  CHECK(a->digest() == b->digest());
}

TEST_CASE("the rowid of an INTEGER PRIMARY KEY table cannot be changed behind the key's back") {
  auto r =
      open_with("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); SELECT lattice_replicate('t');");
  r->exec("INSERT INTO t VALUES (1, 'a')");
  for (const char* name : {"rowid", "_rowid_", "oid", "id"})
    CHECK_THROWS_WITH_AS(r->exec(std::string("UPDATE t SET ") + name + " = 5"),
                         doctest::Contains("primary key of a replicated row cannot change"), Error);
}

// ---- 3. INTEGER PRIMARY KEY ids --------------------------------------------------------------

constexpr const char* kNotes =
    "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT); SELECT lattice_replicate('notes');";

TEST_CASE("ids SQLite would pick are refused; lattice_id() gives ids unique across devices") {
  auto a = open_with(kNotes), b = open_with(kNotes);
  CHECK_THROWS_WITH_AS(a->exec("INSERT INTO notes(body) VALUES ('hello')"),
                       doctest::Contains("lattice_id()"), Error);
  CHECK(count(*a, "SELECT count(*) FROM notes") == 0);
  std::set<std::int64_t> ids;
  for (int i = 0; i < 200; ++i) {
    a->exec("INSERT INTO notes(id, body) VALUES (lattice_id(), 'from a')");
    b->exec("INSERT INTO notes(id, body) VALUES (lattice_id(), 'from b')");
  }
  for (const auto& row : a->query("SELECT id FROM notes").rows)
    ids.insert(std::get<std::int64_t>(row[0]));
  for (const auto& row : b->query("SELECT id FROM notes").rows)
    ids.insert(std::get<std::int64_t>(row[0]));
  CHECK(ids.size() == 400);
  CHECK(*ids.begin() > 0);
  sync_all({a.get(), b.get()});
  CHECK(count(*a, "SELECT count(*) FROM notes") == 400);
}

TEST_CASE("a held row resolved by inserting its id again is not called a collision") {
  constexpr const char* kUsers =
      "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE COLLATE NOCASE);"
      "SELECT lattice_replicate('users');";
  auto a = open_with(kUsers), b = open_with(kUsers);
  a->exec("INSERT INTO users VALUES (1, 'sam@example.org')");
  b->exec("INSERT INTO users VALUES (2, 'SAM@example.org')");
  sync_all({a.get(), b.get()});
  // The later claim waits everywhere (by clock, then site id: either may be later).
  const auto held =
      a->query("SELECT json_extract(\"key\", '$[0]') FROM lattice_conflicts WHERE kind = 'held'");
  REQUIRE(held.rows.size() == 1);
  const crdt::Value id = held.rows[0][0];
  Replica& writer = id == crdt::Value{std::int64_t{2}} ? *b : *a;  // whose insert waits
  Replica& resolver = &writer == b.get() ? *a : *b;
  // Resolved on the other device as docs/data-quality.md says: the key written again with
  // values that stand.
  resolver.query("INSERT INTO users VALUES (?, 'sam.b@example.org')", {id});
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "users");
  CHECK(writer.query("SELECT email FROM users WHERE id = ?", {id}).rows.at(0).at(0) ==
        crdt::Value{"sam.b@example.org"});
  // The writer keeps the values its insert had, and is told what happened.
  const auto logged = writer.query("SELECT kind, message FROM lattice_conflicts");
  REQUIRE(logged.rows.size() == 1);
  CHECK(logged.rows[0][0] == crdt::Value{"superseded"});
  const std::string message = std::get<std::string>(logged.rows[0][1]);
  CHECK(message.find("was held here and inserted again") != std::string::npos);
  CHECK(message.find("at once") == std::string::npos);
}

TEST_CASE("two devices that give one id to different rows lose nothing silently") {
  auto a = open_with(kNotes), b = open_with(kNotes);
  a->exec("INSERT INTO notes VALUES (7, 'written on a')");
  b->exec("INSERT INTO notes VALUES (7, 'written on b')");
  sync_all({a.get(), b.get()});
  check_converged({a.get(), b.get()}, "notes");
  const bool a_won = one(*a, "SELECT body FROM notes WHERE id = 7") == crdt::Value{"written on a"};
  // The device whose row was replaced keeps its values where the application sees them (the
  // winner's device may never see the losing insert: it was superseded before it was sent).
  Replica& loser = a_won ? *b : *a;
  const auto logged = loser.query("SELECT kind, \"key\", \"row\" FROM lattice_conflicts");
  REQUIRE(logged.rows.size() == 1);
  CHECK(logged.rows[0][0] == crdt::Value{"superseded"});
  CHECK(logged.rows[0][1] == crdt::Value{"[7]"});
  CHECK(std::get<std::string>(logged.rows[0][2]).find(a_won ? "written on b" : "written on a") !=
        std::string::npos);
  loser.exec("DELETE FROM lattice_conflicts WHERE kind = 'superseded'");  // dismissed
  CHECK(count(loser, "SELECT count(*) FROM lattice_conflicts") == 0);
  // A third device that receives both inserts keeps the loser's values too.
  auto c = open_with(kNotes);
  a->exec("INSERT INTO notes VALUES (8, 'a again')");
  b->exec("INSERT INTO notes VALUES (8, 'b again')");
  sync(*a, *c);
  sync(*b, *c);
  CHECK(count(*c, "SELECT count(*) FROM lattice_conflicts WHERE \"key\" = '[8]'") == 1);
}

// ---- 5. A peer's schema is checked ---------------------------------------------------------

TEST_CASE("a changeset whose key differs from the receiver's is refused naming both sides") {
  auto ab = open_with(
      "CREATE TABLE pair(a TEXT, b TEXT, v TEXT, PRIMARY KEY (a, b));"
      "SELECT lattice_replicate('pair');");
  auto ba = open_with(
      "CREATE TABLE pair(a TEXT, b TEXT, v TEXT, PRIMARY KEY (b, a));"
      "SELECT lattice_replicate('pair');");
  auto one_key = open_with(
      "CREATE TABLE pair(a TEXT PRIMARY KEY, b TEXT, v TEXT);"
      "SELECT lattice_replicate('pair');");
  ab->exec("INSERT INTO pair VALUES ('x', 'y', 'v')");
  const auto cs = ab->changes_since({});
  CHECK_THROWS_WITH_AS(ba->apply(cs),
                       doctest::Contains("primary key is (a, b), this replica's is (b, a)"), Error);
  try {
    one_key->apply(cs);
    FAIL("applied");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kSchema);
    CHECK(std::string(e.what()).find("(a, b), this replica's is (a)") != std::string::npos);
  }
  CHECK(count(*ba, "SELECT count(*) FROM pair") == 0);
}

TEST_CASE("a changeset whose column stores values otherwise than the receiver's is refused") {
  auto text = open_with(
      "CREATE TABLE price(id TEXT PRIMARY KEY, amount TEXT);"
      "SELECT lattice_replicate('price');");
  auto integer = open_with(
      "CREATE TABLE price(id TEXT PRIMARY KEY, amount INTEGER);"
      "SELECT lattice_replicate('price');");
  integer->exec("INSERT INTO price VALUES ('p', 5)");
  try {
    text->apply(integer->changes_since({}));
    FAIL("applied");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kSchema);
    CHECK(std::string(e.what()).find("'price.amount' has type affinity TEXT here but INTEGER") !=
          std::string::npos);
  }
  CHECK(count(*text, "SELECT count(*) FROM price") == 0);
  // Declared types that differ only in spelling store values alike, and are accepted.
  auto varchar = open_with(
      "CREATE TABLE price(id VARCHAR(20) PRIMARY KEY, amount BIGINT);"
      "SELECT lattice_replicate('price');");
  CHECK_NOTHROW(varchar->apply(integer->changes_since({})));
}

// ---- 6. Copies and restored backups exchanged by files -------------------------------------

std::filesystem::path fresh_path(const std::string& name) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("lattice-dq-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);
  return path;
}

TEST_CASE(
    "a copied replica file that wrote is refused by its original, and rekeyed loses nothing") {
  constexpr const char* schema =
      "CREATE TABLE poll(id TEXT PRIMARY KEY, votes INTEGER NOT NULL DEFAULT 0);"
      "SELECT lattice_replicate('poll', '{\"votes\": \"counter\"}');";
  const auto original_path = fresh_path("original.db"), copy_path = fresh_path("copy.db");
  {
    auto original = Replica::open(original_path.string());
    original->exec(schema);
    original->exec("INSERT INTO poll VALUES ('p', 10)");
  }
  std::filesystem::copy_file(original_path, copy_path);
  auto original = Replica::open(original_path.string());
  auto copy = Replica::open(copy_path.string());
  REQUIRE(copy->site_id() == original->site_id());
  original->exec("UPDATE poll SET votes = votes + 1");
  copy->exec("UPDATE poll SET votes = votes + 2; INSERT INTO poll VALUES ('q', 5)");

  // Either way, the exchange is refused, naming where the histories part.
  for (auto [from, to] : {std::pair{copy.get(), original.get()}, {original.get(), copy.get()}}) {
    try {
      to->apply(from->changes_since({}));
      FAIL("applied");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kCopiedReplica);
      CHECK(std::string(e.what()).find("agree through transaction 1 and differ from 2") !=
            std::string::npos);
    }
  }
  // The copy takes a new id for what it wrote after it was made; then everything counts once.
  copy->rekey(1);
  CHECK(copy->site_id() != original->site_id());
  sync_all({original.get(), copy.get()});
  check_converged({original.get(), copy.get()}, "poll");
  CHECK(count(*original, "SELECT votes FROM poll WHERE id = 'p'") == 13);
  CHECK(count(*original, "SELECT count(*) FROM poll") == 2);
  // A file applied to itself, or a copy that never wrote, is no copy conflict.
  CHECK_NOTHROW(original->apply(original->changes_since({})));
}

TEST_CASE("the local logs keep every own transaction until a relay acknowledges it") {
  auto r = open_with(
      "CREATE TABLE c(id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0);"
      "SELECT lattice_replicate('c', '{\"n\": \"counter\"}');"
      "INSERT INTO c VALUES ('k', 0)");
  // More than the 10,000 that files of triggers version 5 kept: a device offline that long
  // must still be able to show the relay every tag.
  for (int i = 0; i < 10050; ++i) r->exec("UPDATE c SET n = n + 1");
  CHECK(count(*r, "SELECT count(*) FROM lattice_local_log") == 10051);
  CHECK(count(*r, "SELECT min(seq) FROM lattice_local_log") == 1);
  CHECK(count(*r, "SELECT count(*) FROM lattice_counter_undo") == 10051);
  CHECK(r->untagged_through() == 0);
  r->acknowledge(10000);
  CHECK(count(*r, "SELECT min(seq) FROM lattice_local_log") == 10000);
  CHECK(count(*r, "SELECT count(*) FROM lattice_counter_undo") == 51);
  CHECK(r->untagged_through() == 10000);
  // A log that lost entries nobody acknowledged (an older build pruned them): the device tells
  // the relay to count them untagged rather than never sending them.
  r->exec("DELETE FROM lattice_local_log WHERE seq < 10040");
  CHECK(r->untagged_through() == 10039);
}

TEST_CASE("a device whose clock ran a day ahead recovers by itself and loses no write") {
  constexpr const char* schema =
      "CREATE TABLE note(id TEXT PRIMARY KEY, body TEXT); SELECT lattice_replicate('note');";
  const std::uint64_t day = 24ull * 60 * 60 * 1000;
  std::uint64_t skew = day;  // the device's clock, ahead until it is corrected
  storage::ReplicaOptions options;
  options.physical_clock = [&skew] { return crdt::HybridClock::system_clock_ms() + skew; };
  auto device = Replica::open(":memory:", options);
  device->exec(schema);
  auto peer = open_with(schema);
  peer->exec("INSERT INTO note VALUES ('shared', 'from the peer')");
  sync(*peer, *device);
  device->exec("INSERT INTO note VALUES ('a', 'written a day ahead')");
  device->exec("UPDATE note SET body = 'edited a day ahead' WHERE id = 'shared'");
  // As it stands, every peer refuses it for a day.
  CHECK_THROWS_AS(peer->apply(device->changes_since(peer->version_vector())), Error);

  skew = 0;  // the clock is set right again
  device->exec("INSERT INTO note VALUES ('b', 'written after')");
  sync(*device, *peer);  // its writes go out stamped again, from the wall clock
  sync(*peer, *device);
  check_converged({device.get(), peer.get()}, "note");
  CHECK(count(*peer, "SELECT count(*) FROM note") == 3);
  CHECK(one(*peer, "SELECT body FROM note WHERE id = 'shared'") ==
        crdt::Value{"edited a day ahead"});
  // And a later write elsewhere wins as its clock says, not a day later.
  peer->exec("UPDATE note SET body = 'the peer, later' WHERE id = 'shared'");
  sync(*peer, *device);
  CHECK(one(*device, "SELECT body FROM note WHERE id = 'shared'") ==
        crdt::Value{"the peer, later"});
}

// ---- The checker ------------------------------------------------------------------------------

TEST_CASE("check finds metadata and tables that disagree, and counts held rows") {
  auto a = open_with(kUsers, 2000), b = open_with(kUsers, 1000);
  a->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'first')");
  b->exec("INSERT INTO users VALUES ('u2', 'x@example.com', 'second')");
  sync_all({a.get(), b.get()});
  auto report = b->check();
  CHECK(report.problems.empty());
  REQUIRE(report.tables.size() == 1);
  CHECK(report.tables[0].shown == 1);
  CHECK(report.tables[0].held == 1);
  // Metadata that says the shown row is deleted (as a file edited behind Lattice's back).
  const std::string rows =
      "lattice_rows_" + std::to_string(count(*b, "SELECT id FROM lattice_tables"));
  REQUIRE(sqlite3_exec(b->connection(),
                       ("UPDATE " + rows +
                        " SET cl = 2 WHERE pk NOT IN (SELECT pk FROM "
                        "lattice_held)")
                           .c_str(),
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  report = b->check();
  REQUIRE(report.problems.size() == 1);
  CHECK(report.problems[0].find("table users: 1 rows live in the metadata, 1 shown and 1 held; "
                                "shown without being live, never captured") != std::string::npos);
}

TEST_CASE("a replica whose capture triggers are from an older build gets them recreated") {
  const auto path = fresh_path("upgrade.db");
  {
    auto r = Replica::open(path.string());
    r->exec(kUsers);
  }
  {
    // As an older build left it: without the triggers that capture REPLACE, version 1. A plain
    // connection, which Lattice's authorizer does not guard.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.string().c_str(), &db) == SQLITE_OK);
    std::string drop;
    sqlite3_stmt* names = nullptr;
    sqlite3_prepare_v2(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'lattice_%_replace%'",
                       -1, &names, nullptr);
    while (sqlite3_step(names) == SQLITE_ROW)
      drop += "DROP TRIGGER " +
              std::string(reinterpret_cast<const char*>(sqlite3_column_text(names, 0))) + ";";
    sqlite3_finalize(names);
    REQUIRE(!drop.empty());
    REQUIRE(sqlite3_exec(db,
                         (drop + "DELETE FROM lattice_meta WHERE key = 'triggers_version'").c_str(),
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  auto r = Replica::open(path.string());
  CHECK(count(*r, "SELECT value FROM lattice_meta WHERE key = 'triggers_version'") >= 3);
  CHECK(r->check().problems.empty());
  r->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'one')");
  r->exec("INSERT OR REPLACE INTO users VALUES ('u2', 'x@example.com', 'two')");
  // u1, displaced, is captured as deleted: the metadata agrees with the table.
  CHECK(r->check().problems.empty());
}

// ---- 7. Edge cases ---------------------------------------------------------------------------

TEST_CASE("a lattice_replicate rolled back can be retried and then captures") {
  auto r = Replica::open(":memory:");
  r->exec("CREATE TABLE t(id TEXT PRIMARY KEY, v TEXT)");
  r->exec("BEGIN; SELECT lattice_replicate('t'); ROLLBACK");
  r->exec("SELECT lattice_replicate('t')");
  r->exec("INSERT INTO t VALUES ('a', 'b')");
  CHECK(r->changes_since({}).rows.size() == 1);
}

TEST_CASE("a changeset that names one row twice is refused, so applied never exceeds received") {
  auto a = open_with(kUsers), b = open_with(kUsers);
  a->exec("INSERT INTO users VALUES ('u1', 'x@example.com', 'one')");
  auto cs = a->changes_since({});
  cs.rows.push_back(cs.rows[0]);
  CHECK_THROWS_WITH_AS(b->apply(cs), doctest::Contains("repeats row"), Error);
  cs.rows.pop_back();
  const auto result = b->apply(cs);
  CHECK(result.applied <= result.received);
  // A row whose liveness comes with an override and no liveness values: one change, not two.
  a->exec(
      "INSERT INTO users VALUES ('u2', 'y@example.com', 'two');"
      "UPDATE users SET email = 'z@example.com', name = 'deux' WHERE id = 'u2'");
  const auto second = b->apply(a->changes_since(b->version_vector()));
  CHECK(second.received == 2);
  CHECK(second.applied == 2);
}

TEST_CASE("a counter summed past 2^63-1 saturates on every replica; a local overflow is refused") {
  constexpr const char* schema =
      "CREATE TABLE c(id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0);"
      "SELECT lattice_replicate('c', '{\"n\": \"counter\"}');";
  auto a = open_with(schema), b = open_with(schema);
  a->exec("INSERT INTO c VALUES ('k', 0)");
  sync(*a, *b);
  a->exec("UPDATE c SET n = n + 9223372036854775000");
  b->exec("UPDATE c SET n = n + 9223372036854775000");
  sync_all({a.get(), b.get()});
  for (auto* r : {a.get(), b.get()})
    CHECK(one(*r, "SELECT n FROM c") == crdt::Value{std::int64_t{9223372036854775807}});
  CHECK_THROWS_WITH_AS(a->exec("UPDATE c SET n = n + 1"), doctest::Contains("integer values only"),
                       Error);
}

}  // namespace
}  // namespace lattice
