// The demo app's board (demo-app/todo_board.hpp): ordering by fractional positions, edits of
// items that are gone, merges between two boards, and noticing another connection's commits.

#include "demo-app/todo_board.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "demo-app/web_server.hpp"

namespace lattice::demo {
namespace {

std::vector<std::string> titles(TodoBoard& board) {
  std::vector<std::string> out;
  for (const auto& item : board.items()) out.push_back(item.title);
  return out;
}

// Sends what `to` lacks from `from`, as a device and the relay would.
void send(TodoBoard& from, TodoBoard& to) {
  to.replica().apply(from.replica().changes_since(to.replica().version_vector()));
}

TEST_CASE("new items go to the end and a moved item lands between its new neighbours") {
  TodoBoard board(":memory:");
  const std::string a = board.add("a"), b = board.add("b"), c = board.add("c");
  CHECK(titles(board) == std::vector<std::string>{"a", "b", "c"});

  CHECK(board.move_after(c, a));
  CHECK(titles(board) == std::vector<std::string>{"a", "c", "b"});
  CHECK(board.move_after(b, ""));
  CHECK(titles(board) == std::vector<std::string>{"b", "a", "c"});
  CHECK(board.move_after(b, c));
  CHECK(titles(board) == std::vector<std::string>{"a", "c", "b"});

  CHECK_FALSE(board.move_after(a, a));
  CHECK_FALSE(board.move_after(a, "no such id"));
  CHECK(titles(board) == std::vector<std::string>{"a", "c", "b"});
}

TEST_CASE("edits of an item that is not on the board change nothing and say so") {
  TodoBoard board(":memory:");
  const std::string id = board.add("buy milk");
  CHECK(board.remove(id));
  CHECK_FALSE(board.rename(id, "buy oat milk"));
  CHECK_FALSE(board.vote(id));
  CHECK_FALSE(board.set_done(id, true));
  CHECK_FALSE(board.remove(id));
  CHECK(board.items().empty());
}

TEST_CASE("concurrent votes add up and a delete beats a concurrent rename") {
  TodoBoard alice(":memory:"), bob(":memory:");
  const std::string milk = alice.add("buy milk"), plants = alice.add("water the plants");
  send(alice, bob);
  REQUIRE(titles(bob) == titles(alice));

  CHECK(alice.vote(milk));
  CHECK(alice.remove(plants));
  CHECK(bob.vote(milk));
  CHECK(bob.vote(milk));
  CHECK(bob.set_done(milk, true));
  CHECK(bob.rename(plants, "water the cactus"));
  send(alice, bob);
  send(bob, alice);

  CHECK(alice.text() == "[x] buy milk (3 votes)\n");
  CHECK(bob.text() == alice.text());
}

TEST_CASE("changed_elsewhere notices another connection's commits, not its own") {
  char dir[] = "/tmp/lattice-todo-board-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/board.db";
  {
    TodoBoard app(path), other(path);
    CHECK_FALSE(app.changed_elsewhere());
    app.add("mine");
    CHECK_FALSE(app.changed_elsewhere());
    other.add("theirs");
    CHECK(app.changed_elsewhere());
    CHECK_FALSE(app.changed_elsewhere());
    CHECK(app.items().size() == 2);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lattice::demo

namespace lattice::demo {
namespace {

TEST_CASE("a remote +Infinity or invalid UTF-8 still makes valid JSON") {
  // Issue 10, finding 10: a remote +Infinity in a number column made the state JSON invalid and
  // every board went blank.
  TodoBoard board(":memory:");
  const std::string id = board.add("fine");
  board.replica().query("UPDATE todo SET position = 9e999, summary = ? WHERE id = ?",
                        {std::string("bad \xff\xc0\x80 \x7f \"q\" \xe2\x82\xac"), id});
  const std::string json = board.items_json();
  CHECK(json.find("\"position\":null") != std::string::npos);
  CHECK(json.find("inf") == std::string::npos);
  CHECK(json.find("\\ufffd\\ufffd\\ufffd \\u007f \\\"q\\\" \xe2\x82\xac") != std::string::npos);
  CHECK(json_number(-std::numeric_limits<double>::infinity()) == "null");
  CHECK(json_number(std::nan("")) == "null");
  CHECK(json_number(0.5) == "0.5");
}

TEST_CASE("the board is served to this machine only, whatever the Host header says") {
  // Issue 10, finding 10: listening on a non-loopback address, the app accepted a request from
  // another machine that claimed Host: 127.0.0.1.
  CHECK(trusted_request("127.0.0.1", "127.0.0.1:8080", "", true));
  CHECK(trusted_request("::1", "[::1]:8080", "", false));
  CHECK(trusted_request("::ffff:127.0.0.1", "localhost:8080", "http://localhost:8080", true));
  CHECK_FALSE(trusted_request("192.168.1.20", "127.0.0.1:8080", "", false));
  CHECK_FALSE(trusted_request("10.0.0.5", "localhost:8080", "", true));
  CHECK_FALSE(trusted_request("127.0.0.1", "evil.example:8080", "", false));
  CHECK_FALSE(trusted_request("127.0.0.1", "127.0.0.1:8080", "http://evil.example", true));
  CHECK_FALSE(trusted_request("not an address", "127.0.0.1:8080", "", false));
}

}  // namespace
}  // namespace lattice::demo

namespace lattice::demo {
namespace {

struct TempDir {
  TempDir() {
    char pattern[] = "/tmp/lattice-todo-versions-XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    path = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

TEST_CASE("a board on schema version 1 and one on version 2 share items and lose nothing") {
  // Issue 11: alice runs version 2 (due, assignee, title renamed summary), bob version 1; both
  // edit apart, then bob upgrades.
  TempDir dir;
  const std::string bob_file = dir.path + "/bob.db";
  TodoBoard alice(":memory:", 2);
  std::string milk, venue, cake;
  {
    TodoBoard bob(bob_file, 1);
    CHECK(bob.schema_version() == 1);
    milk = alice.add("buy milk");
    venue = alice.add("book the venue");
    send(alice, bob);
    REQUIRE(titles(bob) == titles(alice));

    CHECK(alice.set_due(venue, "2026-12-20"));
    CHECK(alice.assign(venue, "bob"));
    CHECK(alice.rename(milk, "buy oat milk"));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a clearly later write
    CHECK(bob.rename(milk, "buy soy milk"));  // wins, through the old column name
    CHECK(bob.rename(venue, "book the town hall"));
    cake = bob.add("bake a cake");
    CHECK_THROWS_AS(bob.set_due(milk, "2026-12-01"), Error);
    CHECK_THROWS_AS(bob.assign(milk, "alice"), Error);
    send(alice, bob);
    send(bob, alice);

    // Bob's writes to `title` are in alice's `summary`; bob keeps alice's due and assignee
    // aside, without columns to show them in.
    CHECK(alice.replica().query("SELECT summary FROM todo WHERE id = ?", {venue}).rows[0][0] ==
          Value(std::string("book the town hall")));
    CHECK(bob.text() ==
          "[ ] buy soy milk (0 votes)\n[ ] book the town hall (0 votes)\n"
          "[ ] bake a cake (0 votes)\n");
    CHECK(bob.items_json().find("\"due\"") == std::string::npos);
  }
  TodoBoard bob(bob_file, 2);  // bob upgrades
  CHECK(bob.schema_version() == 2);
  CHECK(alice.text() ==
        "[ ] buy soy milk (0 votes)\n[ ] book the town hall (0 votes, due 2026-12-20, @bob)\n"
        "[ ] bake a cake (0 votes)\n");
  CHECK(bob.text() == alice.text());
  CHECK(bob.items_json() == alice.items_json());

  // Clearing works on both, and travels.
  CHECK(bob.set_due(venue, ""));
  CHECK(bob.assign(venue, ""));
  send(bob, alice);
  CHECK(alice.text() == bob.text());
  CHECK(alice.items()[1].due.empty());
}

TEST_CASE("schema versions: unknown ones, files a newer app wrote, and bad due dates say so") {
  CHECK_THROWS_AS(TodoBoard(":memory:", 0), Error);
  CHECK_THROWS_AS(TodoBoard(":memory:", kTodoSchemaVersion + 1), Error);
  CHECK(todo_migration(0) == nullptr);
  CHECK(todo_migration(kTodoSchemaVersion + 1) == nullptr);

  TempDir dir;
  const std::string file = dir.path + "/board.db";
  {
    TodoBoard board(file, 2);
    const std::string id = board.add("buy milk");
    CHECK_THROWS_AS(board.set_due(id, "tomorrow"), Error);
    CHECK_THROWS_AS(board.set_due(id, "2026-13-01"), Error);
    CHECK_FALSE(board.set_due("no such id", "2026-12-01"));
    CHECK(board.set_due(id, "2026-12-01"));
  }
  try {
    TodoBoard board(file, 1);
    FAIL("a version 1 app opened a version 2 board");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("schema version 2") != std::string::npos);
  }
  TodoBoard again(file, 2);  // the same version again: nothing to run
  CHECK(again.text() == "[ ] buy milk (0 votes, due 2026-12-01)\n");
}

TEST_CASE("a board made before the schema was numbered takes migration 1 as it is") {
  TempDir dir;
  const std::string file = dir.path + "/old.db";
  {
    auto old = Replica::open(file);
    old->exec(todo_migration(1));  // what earlier releases ran at every start, unnumbered
    old->exec("INSERT INTO todo(id, title, position) VALUES ('a', 'from before', 1)");
    CHECK(old->schema_version() == 0);
  }
  TodoBoard board(file, 2);
  CHECK(board.replica().schema_version() == 2);
  CHECK(board.text() == "[ ] from before (0 votes)\n");
}

}  // namespace
}  // namespace lattice::demo
