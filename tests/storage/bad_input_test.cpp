// Bad input: every changeset, statement or schema a replica refuses must be refused with an
// Error whose code and message say what was wrong, and must leave the replica exactly as it was
// (every table, the lattice_* metadata included, and the schema).

#include <doctest/doctest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/changeset.hpp"
#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::Replica;

// Rows, a counter, an update and a delete: every kind of change a changeset carries.
constexpr const char* kSourceWrites =
    "INSERT INTO todo(id, title, votes) VALUES ('a', 'buy milk', 1), ('b', 'walk the dog', 0),"
    " ('c', 'call mum', 2), ('d', 'file taxes', 0);"
    "UPDATE todo SET votes = votes + 3 WHERE id = 'b';"
    "UPDATE todo SET title = 'buy oat milk', done = 1 WHERE id = 'a';"
    "DELETE FROM todo WHERE id = 'c';";

std::unique_ptr<Replica> open_source(storage::ReplicaOptions options = {}) {
  auto source = test::open_todo_replica(":memory:", std::move(options));
  source->exec(kSourceWrites);
  return source;
}

// A target that holds writes of its own, so "unchanged" has something to compare.
std::unique_ptr<Replica> open_target(const std::string& schema = test::kTodoSchema) {
  auto target = Replica::open(":memory:");
  target->exec(schema);
  target->exec("INSERT INTO todo(id, title, votes) VALUES ('a', 'local a', 7), ('z', 'zebra', 0)");
  return target;
}

// Everything in the file: every row of every table (test::dump_everything, the lattice_*
// metadata included) and the schema (tables, indexes, triggers), which a refused
// lattice_replicate must not have touched.
std::string snapshot(Replica& replica) {
  std::string out = test::dump_everything(replica);
  for (const auto& row :
       replica.query("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name").rows) {
    for (const auto& v : row)
      out += (v.index() == 3 ? std::get<std::string>(v) : std::string("null")) + "|";
    out += "\n";
  }
  return out;
}

std::string message_of(const Error& e) { return e.what(); }
std::string code_name(ErrorCode code) { return error_code_name(code); }

// Runs `action`, which must throw Error with `code` and a message containing `needle`; the
// replica must then be exactly as before. Returns the message for further checks.
std::string expect_rejected(Replica& replica, ErrorCode code, std::string_view needle,
                            const std::function<void()>& action) {
  const std::string before = snapshot(replica);
  std::optional<Error> caught;
  try {
    action();
  } catch (const Error& e) {
    caught = e;
  }
  REQUIRE_MESSAGE(caught.has_value(), "expected an Error (" << code_name(code) << ") naming '"
                                                            << std::string(needle) << "'");
  const std::string message = message_of(*caught);
  INFO("message: " << message);
  CHECK_MESSAGE(caught->code() == code,
                "code " << code_name(caught->code()) << ", expected " << code_name(code));
  CHECK_MESSAGE(message.find(needle) != std::string::npos,
                "message lacks '" << std::string(needle) << "'");
  CHECK_MESSAGE(snapshot(replica) == before, "the replica changed");
  return message;
}

std::string encoded_source_changeset() {
  auto source = open_source();
  return crdt::encode_changeset(source->changes_since({}));
}

crdt::ColumnId column_id(const crdt::Changeset& cs, std::string_view name) {
  for (const auto& c : cs.tables.at(0).columns)
    if (c.name == name) return c.id;
  FAIL("no column " << name);
  return 0;
}

using test::TempDir;

TEST_CASE("a truncated changeset is refused as corrupt, naming where it ends") {
  const std::string bytes = encoded_source_changeset();
  auto target = open_target();
  REQUIRE(bytes.size() > 100);
  for (const std::size_t cut :
       {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{13}, bytes.size() / 4,
        bytes.size() / 2, bytes.size() - 2, bytes.size() - 1}) {
    CAPTURE(cut);
    const std::string_view truncated(bytes.data(), cut);
    const std::string needle = cut == 0 ? "empty" : "truncated at byte " + std::to_string(cut);
    expect_rejected(*target, ErrorCode::kCorrupt, needle,
                    [&] { target->apply(crdt::decode_changeset(truncated)); });
  }
}

TEST_CASE("a changeset with a corrupted type byte is refused as corrupt") {
  const std::string bytes = encoded_source_changeset();
  auto target = open_target();

  SUBCASE("a value's msgpack type byte replaced by a byte msgpack never uses") {
    const std::size_t at = bytes.find("buy oat milk");
    REQUIRE(at != std::string::npos);
    REQUIRE(static_cast<unsigned char>(bytes[at - 1]) == 0xa0 + 12);  // fixstr of 12 bytes
    std::string corrupt = bytes;
    corrupt[at - 1] = static_cast<char>(0xc1);
    const std::string message =
        expect_rejected(*target, ErrorCode::kCorrupt, "invalid msgpack byte 0xc1",
                        [&] { target->apply(crdt::decode_changeset(corrupt)); });
    CHECK(message.find("at byte " + std::to_string(at - 1)) != std::string::npos);
  }
  SUBCASE("a column's kind byte set to a kind that does not exist") {
    // The schema entry of votes is [id, "votes", kind]; kind 1 (counter) follows the name.
    const std::size_t at = bytes.find("votes");
    REQUIRE(at != std::string::npos);
    REQUIRE(bytes[at + 5] == 0x01);
    std::string corrupt = bytes;
    corrupt[at + 5] = 0x05;
    expect_rejected(*target, ErrorCode::kCorrupt, "unknown column kind 5",
                    [&] { target->apply(crdt::decode_changeset(corrupt)); });
  }
  SUBCASE("a counter column's kind flipped to lww while rows still carry counter parts") {
    const std::size_t at = bytes.find("votes");
    REQUIRE(at != std::string::npos);
    REQUIRE(bytes[at + 5] == 0x01);
    std::string corrupt = bytes;
    corrupt[at + 5] = 0x00;
    expect_rejected(*target, ErrorCode::kCorrupt, "is a lww column, not a counter column",
                    [&] { target->apply(crdt::decode_changeset(corrupt)); });
  }
}

TEST_CASE("any single corrupted byte is either refused cleanly or applied cleanly") {
  const std::string bytes = encoded_source_changeset();
  auto target = open_target();
  std::size_t refused_by_decode = 0, refused_by_apply = 0, applied = 0;
  for (const unsigned char mask : {0x01, 0x80, 0xff}) {
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      std::string corrupt = bytes;
      corrupt[i] = static_cast<char>(static_cast<unsigned char>(corrupt[i]) ^ mask);
      std::optional<crdt::Changeset> decoded;
      try {
        decoded = crdt::decode_changeset(corrupt);
      } catch (const Error& e) {
        ++refused_by_decode;
        const auto code = e.code();
        if (code != ErrorCode::kCorrupt && code != ErrorCode::kTooLarge &&
            code != ErrorCode::kUnsupportedVersion)
          FAIL("byte " << i << " ^ " << int(mask) << ": decode failed with " << code_name(code)
                       << ": " << std::string(e.what()));
        continue;
      } catch (const std::exception& e) {
        FAIL("byte " << i << " ^ " << int(mask)
                     << ": decode threw a non-Error: " << std::string(e.what()));
      }
      const std::string before = snapshot(*target);
      try {
        target->apply(*decoded);
        ++applied;
        target = open_target();  // the next corruption starts from the same state
      } catch (const Error& e) {
        ++refused_by_apply;
        if (getenv("LATTICE_VERBOSE")) MESSAGE(code_name(e.code()) << ": " << message_of(e));
        if (snapshot(*target) != before)
          FAIL("byte " << i << " ^ " << int(mask) << ": apply failed (" << std::string(e.what())
                       << ") and left the replica changed");
      } catch (const std::exception& e) {
        FAIL("byte " << i << " ^ " << int(mask)
                     << ": apply threw a non-Error: " << std::string(e.what()));
      }
    }
  }
  MESSAGE("of " << 3 * bytes.size() << " corruptions: " << refused_by_decode
                << " refused by decode, " << refused_by_apply << " refused by apply, " << applied
                << " applied");
  CHECK(refused_by_decode > 0);
}

TEST_CASE("a changeset over the size limits is refused as too large") {
  const std::string bytes = encoded_source_changeset();
  auto target = open_target();

  crdt::DecodeLimits limits;
  SUBCASE("over max_bytes") {
    limits.max_bytes = bytes.size() - 1;
    expect_rejected(*target, ErrorCode::kTooLarge,
                    "over the limit of " + std::to_string(bytes.size() - 1) + " bytes",
                    [&] { target->apply(crdt::decode_changeset(bytes, limits)); });
  }
  SUBCASE("over max_rows") {
    limits.max_rows = 2;
    expect_rejected(*target, ErrorCode::kTooLarge, "4 rows, over the limit of 2",
                    [&] { target->apply(crdt::decode_changeset(bytes, limits)); });
  }
  SUBCASE("a value over max_value_bytes") {
    limits.max_value_bytes = 4;
    expect_rejected(*target, ErrorCode::kTooLarge, "over the limit",
                    [&] { target->apply(crdt::decode_changeset(bytes, limits)); });
  }
}

TEST_CASE("a hostile changeset claiming a huge array is refused before anything is allocated") {
  auto target = open_target();
  // A valid header, empty vectors, sites and tables, then `rows` claiming a huge length. The
  // "claims ... elements" message comes from the size check that runs before msgpack allocates
  // room for the elements; an allocation attempt would have reported "needs more memory".
  const std::string header = std::string("\x97\xaa", 2) + "LATTICE-CS" + "\x01\x80\x80\x90\x90";
  SUBCASE("4 294 967 295 rows") {
    const std::string hostile = header + std::string("\xdd\xff\xff\xff\xff", 5);
    expect_rejected(*target, ErrorCode::kCorrupt, "claims 4294967295 elements",
                    [&] { target->apply(crdt::decode_changeset(hostile)); });
  }
  SUBCASE("a million rows in a 22-byte input") {
    const std::string hostile = header + std::string("\xdd\x00\x10\x00\x00", 5);
    expect_rejected(*target, ErrorCode::kCorrupt, "claims 1048576 elements",
                    [&] { target->apply(crdt::decode_changeset(hostile)); });
  }
  SUBCASE("a version vector claiming 4 294 967 295 entries") {
    const std::string hostile = std::string("\x97\xaa", 2) + "LATTICE-CS" + "\x01" +
                                std::string("\xdf\xff\xff\xff\xff", 5) + "\x80\x90\x90\x90";
    expect_rejected(*target, ErrorCode::kCorrupt, "claims 4294967295 elements",
                    [&] { target->apply(crdt::decode_changeset(hostile)); });
  }
}

TEST_CASE("a changeset of a newer format version is refused as unsupported") {
  auto target = open_target();
  SUBCASE("as bytes") {
    std::string bytes = encoded_source_changeset();
    // [0x97, fixstr 10 "LATTICE-CS", format_version]: the version is byte 12.
    REQUIRE(bytes.substr(2, 10) == "LATTICE-CS");
    REQUIRE(bytes[12] == 0x02);
    bytes[12] = 0x03;
    expect_rejected(*target, ErrorCode::kUnsupportedVersion, "format version 3",
                    [&] { target->apply(crdt::decode_changeset(bytes)); });
  }
  SUBCASE("as a Changeset given to Replica::apply") {
    auto source = open_source();
    crdt::Changeset cs = source->changes_since({});
    cs.format_version = 3;
    expect_rejected(*target, ErrorCode::kUnsupportedVersion, "format 3",
                    [&] { target->apply(cs); });
  }
}

TEST_CASE("a changeset row whose table is missing from the changeset's tables is refused") {
  auto target = open_target();
  crdt::Changeset bad = open_source()->changes_since({});
  bad.rows.back().table = 12345;
  expect_rejected(*target, ErrorCode::kUnknownTable, "table id 12345", [&] { target->apply(bad); });
}

TEST_CASE("a changeset row writing a column absent from the changeset's schema is refused") {
  auto source = open_source();
  // The target's todo has no `done` column.
  auto target = open_target(
      "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, votes INTEGER NOT NULL DEFAULT 0);"
      "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}');");
  const crdt::Changeset cs = source->changes_since({});
  {
    crdt::Changeset bad = cs;
    const crdt::ColumnId done = column_id(bad, "done");
    auto& columns = bad.tables.at(0).columns;
    columns.erase(
        std::remove_if(columns.begin(), columns.end(), [&](const auto& c) { return c.id == done; }),
        columns.end());
    REQUIRE(bad.rows.size() >= 2);
    // A valid row first, so a refusal in the middle of the transaction is also tested.
    for (auto& row : bad.rows) {
      std::erase_if(row.liveness_values, [&](const auto& v) { return v.first == done; });
      std::erase_if(row.cells, [&](const auto& c) { return c.column == done; });
    }
    crdt::CellChange cell;
    cell.column = done;
    cell.stamp = *bad.rows.front().liveness;
    cell.value = std::int64_t{1};
    bad.rows.back().cells.push_back(cell);
    expect_rejected(*target, ErrorCode::kUnknownColumn, "column id " + std::to_string(done),
                    [&] { target->apply(bad); });
  }
}

TEST_CASE("a changeset writing a column as the wrong kind is refused, naming the column") {
  SUBCASE("votes is lww at the source and a counter here") {
    auto lww_source = Replica::open(":memory:");
    lww_source->exec(
        "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, "
        "votes INTEGER NOT NULL DEFAULT 0);"
        "SELECT lattice_replicate('todo');");
    lww_source->exec(kSourceWrites);
    auto target = open_target();
    const std::string bytes = crdt::encode_changeset(lww_source->changes_since({}));
    expect_rejected(*target, ErrorCode::kTypeMismatch, "'todo.votes'",
                    [&] { target->apply(crdt::decode_changeset(bytes)); });
  }
  SUBCASE("a counter part written to the lww column title") {
    auto target = open_target();
    crdt::Changeset bad = open_source()->changes_since({});
    REQUIRE(bad.rows.size() >= 2);
    crdt::CounterChange counter;
    counter.column = column_id(bad, "title");
    counter.site = 0;
    counter.part = crdt::CounterPart{1, 1, 5};
    bad.rows.back().counters.push_back(counter);
    expect_rejected(*target, ErrorCode::kTypeMismatch, "'todo.title'", [&] { target->apply(bad); });
  }
  SUBCASE("a last-writer-wins value written to the counter column votes") {
    auto target = open_target();
    crdt::Changeset bad = open_source()->changes_since({});
    auto row = std::find_if(bad.rows.begin(), bad.rows.end(), [](const crdt::RowChange& r) {
      return r.liveness && r.liveness->causal_length % 2 == 1;
    });
    REQUIRE(row != bad.rows.end());
    row->liveness_values.emplace_back(column_id(bad, "votes"), std::int64_t{99});
    expect_rejected(*target, ErrorCode::kTypeMismatch, "'todo.votes'", [&] { target->apply(bad); });
  }
}

TEST_CASE("a changeset naming a site index out of range is refused as corrupt") {
  auto target = open_target();
  crdt::Changeset bad = open_source()->changes_since({});
  REQUIRE(!bad.rows.empty());
  const auto out_of_range = static_cast<std::uint32_t>(bad.sites.size() + 5);
  SUBCASE("in a liveness stamp") {
    REQUIRE(bad.rows.back().liveness);
    bad.rows.back().liveness->site = out_of_range;
  }
  SUBCASE("in a counter part") {
    auto row = std::find_if(bad.rows.begin(), bad.rows.end(),
                            [](const crdt::RowChange& r) { return !r.counters.empty(); });
    REQUIRE(row != bad.rows.end());
    row->counters.front().site = out_of_range;
  }
  expect_rejected(*target, ErrorCode::kCorrupt, "site index " + std::to_string(out_of_range),
                  [&] { target->apply(bad); });
}

TEST_CASE("a changeset stamped too far in the future is refused as clock drift") {
  storage::ReplicaOptions ahead;
  ahead.physical_clock = [] {
    return crdt::HybridClock::system_clock_ms() + 24ull * 60 * 60 * 1000;
  };
  auto source = open_source(ahead);
  auto target = open_target();
  const std::string bytes = crdt::encode_changeset(source->changes_since({}));
  const std::string message = expect_rejected(*target, ErrorCode::kClockDrift, "ahead of", [&] {
    target->apply(crdt::decode_changeset(bytes));
  });
  CHECK(message.find("drift bound is " + std::to_string(crdt::HybridClock::kDefaultMaxDriftMs)) !=
        std::string::npos);
}

TEST_CASE("a row that breaks the receiver's constraint is held, and the rest applies") {
  auto source = test::open_todo_replica();
  source->exec("INSERT INTO todo(id, title, votes) VALUES ('fine', 'short', 4)");
  std::string target_schema, needle, reason;
  SUBCASE("a CHECK constraint") {
    source->exec("INSERT INTO todo(id, title) VALUES ('bad', 'a title far too long')");
    target_schema =
        "CREATE TABLE todo(id TEXT PRIMARY KEY, "
        "title TEXT CONSTRAINT short_title CHECK (length(title) <= 10), "
        "done INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0);"
        "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}');";
    needle = "short_title";
    reason = "check";
  }
  SUBCASE("a NOT NULL constraint") {
    source->exec("INSERT INTO todo(id, title) VALUES ('bad', NULL)");
    target_schema =
        "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT NOT NULL, "
        "done INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0);"
        "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}');";
    needle = "todo.title";
    reason = "not_null";
  }
  const crdt::Changeset cs = source->changes_since({});
  REQUIRE(cs.rows.size() == 2);

  auto target = open_target(target_schema);
  target->apply(cs);
  // The good row is there, the bad one waits in lattice_conflicts, named with its constraint;
  // the changeset counts as held, so sync goes on.
  CHECK(test::dump_table(*target, "todo").find("text:short") != std::string::npos);
  CHECK(target->query("SELECT count(*) FROM todo WHERE id = 'bad'").rows[0][0] ==
        crdt::Value{std::int64_t{0}});
  const auto held = target->query(
      "SELECT \"table\", \"key\", reason, \"constraint\", message FROM lattice_conflicts");
  REQUIRE(held.rows.size() == 1);
  CHECK(held.rows[0][0] == crdt::Value{"todo"});
  CHECK(held.rows[0][1] == crdt::Value{"[\"bad\"]"});
  CHECK(held.rows[0][2] == crdt::Value{reason});
  CHECK(std::get<std::string>(held.rows[0][3]).find(needle) != std::string::npos);
  CHECK(std::get<std::string>(held.rows[0][4]).find("todo") != std::string::npos);
  CHECK(target->version_vector().get(source->site_id()) ==
        source->version_vector().get(source->site_id()));
}

TEST_CASE("apply inside an open transaction is refused as a state error") {
  auto target = open_target();
  const crdt::Changeset cs = open_source()->changes_since({});
  target->exec("BEGIN");
  expect_rejected(*target, ErrorCode::kState, "transaction", [&] { target->apply(cs); });
  target->exec("COMMIT");
  // And after the commit it applies, which the snapshot sees (so "unchanged" checks can fail).
  const std::string before = snapshot(*target);
  CHECK(target->apply(cs).applied > 0);
  CHECK(snapshot(*target) != before);
}

TEST_CASE("bad SQL through exec is refused as an SQL error naming the statement") {
  auto target = open_target();
  SUBCASE("a syntax error") {
    expect_rejected(*target, ErrorCode::kSql, "SELEC * FROM todo",
                    [&] { target->exec("SELEC * FROM todo"); });
  }
  SUBCASE("an unknown column") {
    const std::string message =
        expect_rejected(*target, ErrorCode::kSql, "UPDATE todo SET titel = 'x' WHERE id = 'a'",
                        [&] { target->exec("UPDATE todo SET titel = 'x' WHERE id = 'a'"); });
    CHECK(message.find("titel") != std::string::npos);
  }
  SUBCASE("a duplicate primary key") {
    const std::string message =
        expect_rejected(*target, ErrorCode::kSql, "UNIQUE constraint failed: todo.id",
                        [&] { target->exec("INSERT INTO todo(id, title) VALUES ('z', 'again')"); });
    CHECK(message.find("INSERT INTO todo(id, title) VALUES ('z', 'again')") != std::string::npos);
  }
  SUBCASE("text written to a counter column") {
    expect_rejected(*target, ErrorCode::kSql, "counter column todo.votes takes integer values",
                    [&] { target->exec("UPDATE todo SET votes = 'many' WHERE id = 'a'"); });
  }
  SUBCASE("a syntax error in the middle of a script names that statement") {
    const std::string message = expect_rejected(*target, ErrorCode::kSql, "SELEC 2", [&] {
      target->exec("SELECT 1;\nSELEC 2;\nSELECT 3;\nSELECT 4");
    });
    CHECK(message.find("SELECT 3") == std::string::npos);
  }
  SUBCASE("the second statement of a script fails after the first changed nothing") {
    expect_rejected(*target, ErrorCode::kSql, "no such table: nowhere",
                    [&] { target->exec("SELECT * FROM todo; DELETE FROM nowhere"); });
  }
}

TEST_CASE("a table that cannot be replicated is refused, naming the table and the reason") {
  auto target = open_target();
  target->exec(
      "CREATE TABLE nopk(a TEXT, b TEXT);"
      "CREATE TABLE computed(id INTEGER PRIMARY KEY, a INTEGER, "
      "b INTEGER GENERATED ALWAYS AS (a * 2));"
      "CREATE TABLE chores(id TEXT PRIMARY KEY, what TEXT, points INTEGER NOT NULL DEFAULT 0);");
  struct Case {
    const char* table;
    const char* json;
    ErrorCode code;
    const char* reason;
  };
  const Case cases[] = {
      {"nopk", "{}", ErrorCode::kSchema, "it has no PRIMARY KEY"},
      {"ghost", "{}", ErrorCode::kSchema, "there is no such table"},
      {"computed", "{}", ErrorCode::kSchema, "column 'b' is generated"},
      {"chores", "{\"points\": counter}", ErrorCode::kInvalidArgument,
       "not valid JSON: unexpected character 'c' at byte 11"},
      {"chores", "{\"points\": \"gcounter\"}", ErrorCode::kInvalidArgument,
       "unknown type 'gcounter'"},
      {"chores", "{\"points\": \"counter\"", ErrorCode::kInvalidArgument,
       "not valid JSON: unexpected end of the text at byte 20"},
      {"chores", "{\"points\": \"\\ud800\"}", ErrorCode::kInvalidArgument,
       "not valid JSON: lone UTF-16 surrogate \\ud800"},
      {"chores", "[\"points\"]", ErrorCode::kInvalidArgument,
       "expected a JSON object of column names and types"},
      {"chores", "{\"points\": 1}", ErrorCode::kInvalidArgument,
       "column 'points' has a type that is not a string"},
      // One column, two types: which one was meant?
      {"chores", "{\"points\": \"counter\", \"points\": \"lww\"}", ErrorCode::kInvalidArgument,
       "column 'points' is given twice"},
      {"chores", "{\"points\": \"counter\", \"Points\": \"lww\"}", ErrorCode::kInvalidArgument,
       "column 'Points' is given twice"},
      {"chores", "{\"likes\": \"counter\"}", ErrorCode::kSchema, "has no column 'likes'"},
  };
  for (const Case& c : cases) {
    INFO("table " << std::string(c.table) << ", column types " << std::string(c.json));
    const std::string table = std::string("'") + c.table + "'";
    const std::string message =
        expect_rejected(*target, c.code, c.reason, [&] { target->replicate(c.table, c.json); });
    CHECK(message.find(table) != std::string::npos);
    // Through SQL the same error arrives, code and message.
    std::string json_literal;
    for (const char ch : std::string_view(c.json)) {
      if (ch == '\'') json_literal += '\'';
      json_literal += ch;
    }
    const std::string sql =
        std::string("SELECT lattice_replicate('") + c.table + "', '" + json_literal + "')";
    const std::string sql_message =
        expect_rejected(*target, c.code, c.reason, [&] { target->exec(sql); });
    CHECK(sql_message.find(table) != std::string::npos);
  }
}

TEST_CASE("a write through a plain SQLite connection to a replicated table fails") {
  TempDir dir;
  const std::string path = (dir.path / "replica.db").string();
  auto replica = test::open_todo_replica(path);
  replica->exec("INSERT INTO todo(id, title, votes) VALUES ('a', 'buy milk', 2)");
  const std::string before = snapshot(*replica);

  sqlite3* plain = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &plain, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  auto attempt = [&](const char* sql) {
    INFO("through the plain connection: " << std::string(sql));
    char* error = nullptr;
    const int rc = sqlite3_exec(plain, sql, nullptr, nullptr, &error);
    CHECK(rc != SQLITE_OK);
    REQUIRE(error != nullptr);
    // The refusal names the Lattice function the capture triggers need.
    CHECK(std::string(error).find("lattice_") != std::string::npos);
    sqlite3_free(error);
  };
  attempt("INSERT INTO todo(id, title) VALUES ('p', 'plain')");
  attempt("UPDATE todo SET title = 'changed behind lattice' WHERE id = 'a'");
  attempt("DELETE FROM todo WHERE id = 'a'");

  // The plain connection itself sees no trace of the attempts.
  sqlite3_stmt* count = nullptr;
  REQUIRE(sqlite3_prepare_v2(plain, "SELECT count(*) FROM todo WHERE id = 'p'", -1, &count,
                             nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(count) == SQLITE_ROW);
  CHECK(sqlite3_column_int(count, 0) == 0);
  sqlite3_finalize(count);
  sqlite3_close_v2(plain);

  CHECK(snapshot(*replica) == before);
  auto reopened = Replica::open(path);
  CHECK(snapshot(*reopened) == before);
}

}  // namespace
}  // namespace lattice
