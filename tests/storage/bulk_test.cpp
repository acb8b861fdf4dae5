// Replica::bulk_write(): the direct path records exactly what the capture triggers record for
// the same upserts, rows SQLite or Lattice refuse are left out whole, re-writing the same rows
// changes nothing, and the rows travel to other replicas like any write. A failing random case
// prints its seed; LATTICE_SEED=<seed> replays it.

#include <doctest/doctest.h>

#include <limits>
#include <random>
#include <set>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::BulkPath;
using storage::BulkResult;
using Row = std::vector<crdt::Value>;

constexpr const char* kUsersSchema =
    "CREATE TABLE teams(id TEXT PRIMARY KEY, name TEXT);"
    "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, age INTEGER CHECK (age >= 0),"
    " team TEXT REFERENCES teams(id), note);"
    "SELECT lattice_replicate('teams');"
    "SELECT lattice_replicate('users');"
    "INSERT INTO teams VALUES ('red', 'Red'), ('blue', 'Blue');";

// Two replicas that make the same clock readings and share a site id, so that the same writes
// give them the same metadata.
storage::ReplicaOptions twin_options(std::uint64_t* now) {
  storage::ReplicaOptions options;
  options.physical_clock = [now] { return *now; };
  options.new_site_id = [] { return crdt::SiteId::from_hex("0102030405060708090a0b0c0d0e0f10"); };
  return options;
}

// Everything in the file except the random tags of the local log (lattice_local_log.tag), which
// differ between any two replica files by design.
std::string dump_without_tags(storage::Replica& replica) {
  std::string dump = test::dump_everything(replica);
  const std::string header = "== lattice_local_log\n";
  const auto start = dump.find(header);
  if (start == std::string::npos) return dump;
  auto end = dump.find("== ", start + header.size());
  if (end == std::string::npos) end = dump.size();
  std::string seqs;
  for (const auto& row : replica.query("SELECT seq FROM lattice_local_log ORDER BY seq").rows)
    seqs += std::to_string(std::get<std::int64_t>(row[0])) + "\n";
  return dump.substr(0, start) + header + seqs + dump.substr(end);
}

// The first line where two dumps differ, with the section it is in: readable when a check fails.
std::string first_difference(const std::string& a, const std::string& b) {
  std::size_t start = 0;
  std::string section;
  while (start < a.size() || start < b.size()) {
    const auto end_a = a.find('\n', start), end_b = b.find('\n', start);
    const std::string line_a = a.substr(start, end_a - start),
                      line_b = b.substr(start, end_b - start);
    if (line_a.rfind("== ", 0) == 0) section = line_a;
    if (line_a != line_b) return section + "\n  " + line_a + "\n  " + line_b;
    if (end_a == std::string::npos) break;
    start = end_a + 1;
  }
  return "";
}

std::string result_text(const BulkResult& r) {
  std::string out = std::to_string(r.inserted) + " inserted, " + std::to_string(r.updated) +
                    " updated, " + std::to_string(r.unchanged) + " unchanged\n";
  for (const auto& e : r.errors)
    out += "row " + std::to_string(e.row) + " [" + e.column + "] " + e.reason + "\n";
  return out;
}

// Events as a sorted list of lines, since the direct path may write a batch in key order.
std::multiset<std::string> event_lines(const std::vector<storage::ChangeEvent>& events) {
  std::multiset<std::string> out;
  for (const auto& e : events) {
    std::string line = e.table + " " + crdt::value_type_name(e.primary_key.at(0)) + ":";
    if (const auto* s = std::get_if<std::string>(&e.primary_key[0])) line += *s;
    if (const auto* i = std::get_if<std::int64_t>(&e.primary_key[0])) line += std::to_string(*i);
    line += e.deleted ? " deleted" : "";
    for (const auto& c : e.columns) line += " " + c;
    out.insert(line);
  }
  return out;
}

// A pair of twins: `direct` writes through the direct path, `statements` through the upserts.
struct Twins {
  std::uint64_t now = 1'700'000'000'000;
  std::unique_ptr<storage::Replica> direct, statements;
  std::vector<storage::ChangeEvent> direct_events, statement_events;

  explicit Twins(const std::string& schema) {
    direct = storage::Replica::open(":memory:", twin_options(&now));
    statements = storage::Replica::open(":memory:", twin_options(&now));
    for (auto* r : {direct.get(), statements.get()}) r->exec(schema);
    direct->subscribe([this](const auto& events) {
      direct_events.insert(direct_events.end(), events.begin(), events.end());
    });
    statements->subscribe([this](const auto& events) {
      statement_events.insert(statement_events.end(), events.begin(), events.end());
    });
  }

  void exec(const std::string& sql) {
    ++now;
    direct->exec(sql);
    statements->exec(sql);
  }

  // Writes `rows` both ways and checks that everything agrees.
  BulkResult write(const std::string& table, const std::vector<std::string>& columns,
                   const std::vector<Row>& rows) {
    ++now;
    direct_events.clear();
    statement_events.clear();
    const BulkResult a = direct->bulk_write(table, columns, rows);
    const BulkResult b = statements->bulk_write(table, columns, rows, BulkPath::kStatements);
    CHECK(result_text(a) == result_text(b));
    CHECK(first_difference(dump_without_tags(*direct), dump_without_tags(*statements)) == "");
    std::string events_a, events_b;
    for (const auto& line : event_lines(direct_events)) events_a += line + "\n";
    for (const auto& line : event_lines(statement_events)) events_b += line + "\n";
    CHECK(events_a == events_b);
    return a;
  }
};

TEST_CASE("bulk_write inserts, updates and leaves alone rows by their key, as the upserts do") {
  Twins twins(test::kTodoSchema);
  twins.exec(
      "INSERT INTO todo(id, title, votes) VALUES ('a', 'old', 2), ('gone', 'x', 1);"
      "DELETE FROM todo WHERE id = 'gone'");
  const std::vector<std::string> columns = {"id", "title", "votes"};
  BulkResult r = twins.write("todo", columns,
                             {{"b", "buy milk", std::int64_t{0}},
                              {"a", "new title", std::int64_t{5}},
                              {"gone", "back", std::int64_t{3}},
                              {"c", std::monostate{}, std::int64_t{1}}});
  CHECK(r.inserted == 3);
  CHECK(r.updated == 1);
  CHECK(r.errors.empty());
  CHECK(test::dump_table(*twins.direct, "todo") ==
        "text:a|text:new title|int:0|int:5|\ntext:b|text:buy milk|int:0|int:0|\n"
        "text:c|null|int:0|int:1|\ntext:gone|text:back|int:0|int:3|\n");

  // The same rows again: nothing written, no sequence number taken.
  const auto before = twins.direct->version_vector();
  const std::string dump = dump_without_tags(*twins.direct);
  r = twins.write("todo", columns,
                  {{"b", "buy milk", std::int64_t{0}},
                   {"a", "new title", std::int64_t{5}},
                   {"gone", "back", std::int64_t{3}},
                   {"c", std::monostate{}, std::int64_t{1}}});
  CHECK(r.unchanged == 4);
  CHECK(twins.direct->version_vector() == before);
  CHECK(dump_without_tags(*twins.direct) == dump);
  CHECK(twins.direct_events.empty());
}

TEST_CASE("bulk_write leaves out whole every row SQLite or Lattice refuses, and keeps the rest") {
  Twins twins(kUsersSchema);
  twins.exec("INSERT INTO users VALUES (1, 'ann@x', 30, 'red', NULL)");
  const BulkResult r = twins.write("users", {"id", "email", "age", "team"},
                                   {{std::int64_t{2}, "bob@x", std::int64_t{20}, "blue"},
                                    {std::int64_t{3}, "ann@x", std::int64_t{25}, "red"},
                                    {std::int64_t{4}, "cy@x", std::int64_t{-1}, "red"},
                                    {std::int64_t{5}, "di@x", std::int64_t{40}, "green"},
                                    {std::monostate{}, "ed@x", std::int64_t{1}, "red"},
                                    {std::int64_t{-1}, "fi@x", std::int64_t{1}, "red"},
                                    {"seven", "gu@x", std::int64_t{1}, "red"},
                                    {std::int64_t{1}, "ann@x", std::int64_t{31}, "blue"}});
  CHECK(r.inserted == 1);
  CHECK(r.updated == 1);
  REQUIRE(r.errors.size() == 6);
  CHECK(r.errors[0].row == 1);
  CHECK(r.errors[0].column == "email");
  CHECK(r.errors[0].reason.find("UNIQUE constraint failed: users.email") != std::string::npos);
  CHECK(r.errors[1].row == 2);
  CHECK(r.errors[1].reason.find("CHECK constraint failed") != std::string::npos);
  CHECK(r.errors[1].column == "age");  // the columns its expression names
  CHECK(r.errors[2].row == 3);
  CHECK(r.errors[2].reason.find("FOREIGN KEY constraint failed") != std::string::npos);
  CHECK(r.errors[3].row == 4);
  CHECK(r.errors[3].column == "id");
  CHECK(r.errors[3].reason.find("may not be NULL") != std::string::npos);
  CHECK(r.errors[4].row == 5);
  CHECK(r.errors[4].reason.find("id -1") != std::string::npos);
  CHECK(r.errors[5].row == 6);
  CHECK(r.errors[5].reason.find("datatype mismatch") != std::string::npos);
  CHECK(test::dump_table(*twins.direct, "users") ==
        "int:1|text:ann@x|int:31|text:blue|null|\nint:2|text:bob@x|int:20|text:blue|null|\n");
}

TEST_CASE("bulk_write names the columns of a named CHECK constraint a row breaks") {
  auto r = storage::Replica::open(":memory:");
  r->exec(
      "CREATE TABLE item(sku TEXT PRIMARY KEY, qty INTEGER, price REAL CONSTRAINT positive_price "
      "CHECK (price > 0), CONSTRAINT \"sane order\" CHECK (qty < 100 OR (price < 10)));"
      "SELECT lattice_replicate('item');");
  const BulkResult result =
      r->bulk_write("item", {"sku", "qty", "price"},
                    {{"a", std::int64_t{1}, 0.0}, {"b", std::int64_t{200}, 20.0}});
  REQUIRE(result.errors.size() == 2);
  CHECK(result.errors[0].column == "price");
  CHECK(result.errors[0].reason == "CHECK constraint failed: positive_price");
  CHECK(result.errors[1].column == "qty, price");
  CHECK(r->query("SELECT count(*) FROM item").rows.at(0).at(0) == crdt::Value{std::int64_t{0}});
}

TEST_CASE("bulk_write refuses a counter value that is not an integer, and one past 2^63-1") {
  Twins twins(test::kTodoSchema);
  twins.exec("INSERT INTO todo(id, votes) VALUES ('low', -9000000000000000000)");
  const BulkResult r = twins.write("todo", {"id", "votes"},
                                   {{"a", 1.5},
                                    {"b", "3"},
                                    {"c", std::monostate{}},
                                    {"d", std::int64_t{4}},
                                    {"low", std::int64_t{9000000000000000000}}});
  CHECK(r.inserted == 1);
  REQUIRE(r.errors.size() == 4);
  CHECK(r.errors[0].column == "votes");
  CHECK(r.errors[0].reason.find("takes integer values only, not real") != std::string::npos);
  CHECK(r.errors[3].row == 4);
  CHECK(test::dump_table(*twins.direct, "todo") ==
        "text:d|null|int:0|int:4|\ntext:low|null|int:0|int:-9000000000000000000|\n");
}

TEST_CASE("bulk_write refuses a row whose deferred foreign key fails at commit, alone") {
  Twins twins(
      "CREATE TABLE p(id TEXT PRIMARY KEY);"
      "CREATE TABLE c(id TEXT PRIMARY KEY, p TEXT REFERENCES p(id) DEFERRABLE INITIALLY "
      "DEFERRED);"
      "SELECT lattice_replicate('p'); SELECT lattice_replicate('c');"
      "INSERT INTO p VALUES ('p1')");
  const BulkResult r = twins.write("c", {"id", "p"}, {{"c1", "p1"}, {"c2", "nope"}, {"c3", "p1"}});
  CHECK(r.inserted == 2);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].row == 1);
  CHECK(r.errors[0].reason.find("FOREIGN KEY") != std::string::npos);
}

TEST_CASE("bulk_write writes a held row's key again as an insert would, and the row stands") {
  Twins twins(kUsersSchema);
  // Another device took ann@x for user 9 after user 1 did: user 9 is held on both twins.
  storage::ReplicaOptions options;
  options.physical_clock = [&twins] { return twins.now; };
  auto other = storage::Replica::open(":memory:", options);
  other->exec(kUsersSchema);
  twins.exec("INSERT INTO users VALUES (1, 'ann@x', 30, 'red', NULL)");
  ++twins.now;
  other->exec("INSERT INTO users VALUES (9, 'ann@x', 1, 'red', NULL)");
  const crdt::Changeset changes = other->changes_since(crdt::VersionVector{});
  twins.direct->apply(changes);
  twins.statements->apply(changes);
  REQUIRE(twins.direct->query("SELECT count(*) FROM lattice_held").rows[0][0] ==
          crdt::Value{std::int64_t{1}});
  const BulkResult r =
      twins.write("users", {"id", "email", "age"}, {{std::int64_t{9}, "nine@x", std::int64_t{9}}});
  CHECK(result_text(r) == "1 inserted, 0 updated, 0 unchanged\n");
  CHECK(twins.direct->query("SELECT count(*) FROM lattice_held").rows[0][0] ==
        crdt::Value{std::int64_t{0}});
}

TEST_CASE("bulk_write into a table with an application trigger captures the trigger's writes") {
  Twins twins(
      "CREATE TABLE t(id TEXT PRIMARY KEY, v INTEGER, changed INTEGER NOT NULL DEFAULT 0);"
      "CREATE TRIGGER t_changed AFTER UPDATE OF v ON t BEGIN "
      "UPDATE t SET changed = changed + 1 WHERE id = NEW.id; END;"
      "SELECT lattice_replicate('t')");
  twins.exec("INSERT INTO t(id, v) VALUES ('a', 1)");
  const BulkResult r =
      twins.write("t", {"id", "v"}, {{"a", std::int64_t{2}}, {"b", std::int64_t{1}}});
  CHECK(r.updated == 1);
  CHECK(r.inserted == 1);
  CHECK(test::dump_table(*twins.direct, "t") == "text:a|int:2|int:1|\ntext:b|int:1|int:0|\n");
  // The trigger's own write travels: a fresh replica holds the same rows.
  auto fresh = storage::Replica::open(":memory:");
  fresh->exec(
      "CREATE TABLE t(id TEXT PRIMARY KEY, v INTEGER, changed INTEGER NOT NULL DEFAULT 0);"
      "SELECT lattice_replicate('t')");
  fresh->apply(twins.direct->changes_since(crdt::VersionVector{}));
  CHECK(fresh->digest() == twins.direct->digest());
}

TEST_CASE("bulk_write checks its arguments before writing anything") {
  auto replica = test::open_todo_replica();
  const std::string before = test::dump_everything(*replica);
  auto code_of = [&](auto&& call) -> ErrorCode {
    try {
      call();
    } catch (const Error& e) {
      return e.code();
    }
    return ErrorCode::kOk;
  };
  CHECK(code_of([&] { replica->bulk_write("nope", {"id"}, {{"a"}}); }) == ErrorCode::kSchema);
  CHECK(code_of([&] { replica->bulk_write("todo", {"title"}, {{"a"}}); }) ==
        ErrorCode::kInvalidArgument);
  CHECK(code_of([&] {
          replica->bulk_write("todo", {"id", "nope"}, {{"a", "b"}});
        }) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] {
          replica->bulk_write("todo", {"id", "id"}, {{"a", "b"}});
        }) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] {
          replica->bulk_write("todo", {"id", "title"}, {{"a", "b"}, {"c"}});
        }) == ErrorCode::kInvalidArgument);
  replica->exec("CREATE TABLE plain(a, b)");
  CHECK(code_of([&] { replica->bulk_write("plain", {"a"}, {{"x"}}); }) == ErrorCode::kSchema);
  replica->exec("BEGIN");
  CHECK(code_of([&] { replica->bulk_write("todo", {"id"}, {{"a"}}); }) == ErrorCode::kState);
  replica->exec("ROLLBACK; DROP TABLE plain");
  CHECK(test::dump_everything(*replica) == before);
}

// Random batches against random earlier states, on a table whose rows commute (written in key
// order by the direct path) and on one with UNIQUE, CHECK and foreign-key constraints.
TEST_CASE("random bulk writes: the direct path equals the captured upserts, and rows travel") {
  const std::uint64_t seed = test::seed_from_env(20240611);
  for (std::uint64_t round = 0; round < 40; ++round) {
    std::mt19937_64 rng(seed + round);
    auto pick = [&](std::size_t n) {
      return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
    };
    INFO("seed " << seed + round);
    const bool users = round % 2 == 1;
    Twins twins(users ? kUsersSchema : test::kTodoSchema);
    auto random_value = [&](int kind) -> crdt::Value {
      switch (pick(10)) {
        case 0:
          return std::monostate{};
        case 1:
          return kind == 0 ? crdt::Value{std::to_string(pick(5))} : crdt::Value{1.0 * pick(3)};
        default:
          return kind == 0 ? crdt::Value{"t" + std::to_string(pick(4))}
                           : crdt::Value{static_cast<std::int64_t>(pick(7)) - 1};
      }
    };
    // An earlier state: writes and deletes, the same on both twins.
    for (int i = 0; i < 12; ++i) {
      const std::string k = std::to_string(pick(8));
      if (users) {
        twins.exec(pick(4) == 0 ? "DELETE FROM users WHERE id = " + k
                                : "INSERT OR REPLACE INTO users VALUES (" + k + ", 'e" +
                                      std::to_string(pick(6)) + "', " + std::to_string(pick(9)) +
                                      ", 'red', 'n')");
      } else {
        twins.exec(pick(4) == 0 ? "DELETE FROM todo WHERE id = 'k" + k + "'"
                                : "INSERT INTO todo(id, title, votes) VALUES ('k" + k + "', 't" +
                                      std::to_string(pick(3)) + "', " + std::to_string(pick(5)) +
                                      ") ON CONFLICT(id) DO UPDATE SET votes = votes + 1");
      }
    }
    for (int batch = 0; batch < 3; ++batch) {
      std::vector<std::string> columns;
      std::vector<Row> rows;
      if (users) {
        columns = {"id", "email", "age", "team", "note"};
        if (pick(2)) columns = {"note", "id", "age"};
        for (int i = 0; i < 30; ++i) {
          Row row;
          for (const auto& c : columns) {
            if (c == "id") row.push_back(static_cast<std::int64_t>(pick(10)));
            if (c == "email") row.push_back("e" + std::to_string(pick(12)));
            if (c == "age") row.push_back(static_cast<std::int64_t>(pick(10)) - 1);
            if (c == "team") row.push_back(pick(6) ? "red" : "green");
            if (c == "note") row.push_back(random_value(pick(2)));
          }
          rows.push_back(std::move(row));
        }
        twins.write("users", columns, rows);
      } else {
        columns = {"id", "title", "done", "votes"};
        if (pick(2)) columns = {"votes", "id"};
        for (int i = 0; i < 30; ++i) {
          Row row;
          for (const auto& c : columns) {
            if (c == "id") row.push_back("k" + std::to_string(pick(12)));
            if (c == "title") row.push_back(random_value(0));
            if (c == "done") row.push_back(random_value(1));
            if (c == "votes")
              row.push_back(pick(15) ? crdt::Value{static_cast<std::int64_t>(pick(9))}
                                     : random_value(1));
          }
          rows.push_back(std::move(row));
        }
        twins.write("todo", columns, rows);
      }
      // Rows written in bulk merge elsewhere like any other write.
      auto fresh = storage::Replica::open(":memory:");
      fresh->exec(users ? kUsersSchema : test::kTodoSchema);
      fresh->apply(crdt::decode_changeset(
          crdt::encode_changeset(twins.direct->changes_since(crdt::VersionVector{}))));
      CHECK(fresh->digest() == twins.direct->digest());
      CHECK(fresh->check().problems.empty());
      CHECK(twins.direct->check().problems.empty());
    }
  }
}

}  // namespace
}  // namespace lattice
