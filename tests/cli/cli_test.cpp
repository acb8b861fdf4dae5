// The `lattice` tool's command-line contract (docs/cli.md): what each command prints on stdout,
// its exit status, and exactly one line on stderr when it fails. Runs the real binary in a
// fresh temporary directory.

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "crdt/version_vector.hpp"

#ifndef LATTICE_CLI_PATH
#error "LATTICE_CLI_PATH must name the lattice executable"
#endif

namespace lattice {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSchema =
    "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, "
    "votes INTEGER NOT NULL DEFAULT 0);"
    "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}');";

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_all(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

struct Result {
  int status = -1;  // exit status, or -1 when the process did not exit normally
  std::string out;
  std::string err;
};

// A fresh directory per test case; the tool runs with it as its working directory.
class Sandbox {
 public:
  Sandbox() {
    std::string pattern = (fs::temp_directory_path() / "lattice-cli-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    dir_ = pattern;
  }
  ~Sandbox() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Runs `lattice args...`, capturing stdout and stderr.
  Result run(const std::vector<std::string>& args) {
    const fs::path out_path = dir_ / ".stdout", err_path = dir_ / ".stderr";
    std::vector<std::string> argv_storage = {LATTICE_CLI_PATH};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_storage) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || err < 0 || chdir(dir_.c_str()) != 0) _exit(126);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    Result r;
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = read_all(out_path);
    r.err = read_all(err_path);
    REQUIRE_MESSAGE(r.status != 127, "cannot run " << std::string(LATTICE_CLI_PATH));
    return r;
  }

  // Runs a command that must succeed with nothing on stderr; returns its stdout.
  std::string ok(const std::vector<std::string>& args) {
    const Result r = run(args);
    INFO("lattice " << join(args) << "\nstderr: " << r.err);
    CHECK(r.status == 0);
    CHECK(r.err.empty());
    return r.out;
  }

  // Runs a command that must fail with exactly one line on stderr; returns that line.
  std::string fails(const std::vector<std::string>& args) {
    const Result r = run(args);
    INFO("lattice " << join(args) << "\nstdout: " << r.out << "\nstderr: " << r.err);
    CHECK(r.status != 0);
    CHECK(r.status != -1);
    CHECK(lines_of(r.err).size() == 1);
    CHECK((!r.err.empty() && r.err.back() == '\n'));
    return r.err.substr(0, r.err.find('\n'));
  }

  static std::string join(const std::vector<std::string>& args) {
    std::string out;
    for (const auto& a : args) out += (out.empty() ? "" : " ") + a;
    return out;
  }

 private:
  fs::path dir_;
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string todo_rows(Sandbox& box, const std::string& db) {
  return box.ok({"exec", db, "SELECT id, title, done, votes FROM todo ORDER BY id"});
}

TEST_CASE("exec creates the replica file, runs a script and prints each row tab-separated") {
  Sandbox box;
  const std::string db = box.path("todo.db");
  REQUIRE(!fs::exists(db));
  const std::string out = box.ok(
      {"exec", db,
       std::string(kSchema) + "BEGIN;"
                              "INSERT INTO todo(id, title, votes) VALUES ('a', 'buy milk', 2);"
                              "INSERT INTO todo(id, title, done) VALUES ('b', NULL, 1);"
                              "COMMIT;"
                              "SELECT id, title, done, votes FROM todo ORDER BY id;"
                              "SELECT 1.5, x'00ff', NULL, 'two words';"});
  CHECK(fs::exists(db));
  // lattice_replicate's result row first, then the two todo rows, then the literal row.
  CHECK(out == "1\na\tbuy milk\t0\t2\nb\t\t1\t0\n1.5\tX'00FF'\t\ttwo words\n");
  // The transaction was committed: another process sees it.
  CHECK(todo_rows(box, db) == "a\tbuy milk\t0\t2\nb\t\t1\t0\n");
  // Statements without rows print nothing.
  CHECK(box.ok({"exec", db, "UPDATE todo SET votes = votes + 1"}).empty());
}

TEST_CASE("changes writes what a holder of --since lacks, and reports how many changes") {
  Sandbox box;
  const std::string db = box.path("a.db");
  box.ok({"exec", db,
          std::string(kSchema) +
              "INSERT INTO todo(id, title) VALUES ('a', 'one'), ('b', 'two'), ('c', 'three')"});

  const std::string all = box.path("all.cs");
  const std::string out = box.ok({"changes", db, "--out", all});
  const crdt::Changeset everything = crdt::decode_changeset(read_all(all));
  CHECK(everything.rows.size() == 3);
  CHECK(out == "wrote " + std::to_string(everything.change_count()) + " changes to " + all + "\n");
  CHECK(!fs::exists(all + ".tmp"));

  const std::string vv = box.path("a.vv");
  write_all(vv, box.ok({"vv", db}));
  const std::string none = box.path("none.cs");
  CHECK(box.ok({"changes", db, "--since", vv, "--out", none}) ==
        "wrote 0 changes to " + none + "\n");
  CHECK(crdt::decode_changeset(read_all(none)).rows.empty());

  box.ok({"exec", db, "UPDATE todo SET title = 'TWO' WHERE id = 'b'"});
  const std::string delta = box.path("delta.cs");
  // --out before --since works too.
  const std::string delta_out = box.ok({"changes", db, "--out", delta, "--since", vv});
  const crdt::Changeset update = crdt::decode_changeset(read_all(delta));
  REQUIRE(update.rows.size() == 1);
  CHECK(update.change_count() == 1);
  CHECK(delta_out == "wrote 1 changes to " + delta + "\n");
}

TEST_CASE("apply prints how many changes it applied, and a second apply of the file applies none") {
  Sandbox box;
  const std::string a = box.path("a.db"), b = box.path("b.db"), file = box.path("a.cs");
  box.ok({"exec", a,
          std::string(kSchema) +
              "INSERT INTO todo(id, title, votes) VALUES ('a', 'one', 3), ('b', 'two', 0);"
              "DELETE FROM todo WHERE id = 'b';"});
  box.ok({"exec", b, kSchema});
  box.ok({"changes", a, "--out", file});
  const std::size_t count = crdt::decode_changeset(read_all(file)).change_count();
  REQUIRE(count > 0);
  const std::string total = std::to_string(count);
  CHECK(box.ok({"apply", b, file}) == "applied " + total + " of " + total + " changes\n");
  CHECK(box.ok({"apply", b, file}) == "applied 0 of " + total + " changes\n");
  CHECK(todo_rows(box, b) == "a\tone\t0\t3\n");
}

TEST_CASE("changes --max-bytes splits into FILE, FILE.1, ...; apply takes them in any order") {
  Sandbox box;
  const std::string a = box.path("a.db"), b = box.path("b.db");
  // One transaction of 2,000 rows (larger than any one file), then a few small ones.
  box.ok({"exec", a,
          std::string(kSchema) +
              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
              "INSERT INTO todo(id, title) SELECT 'k' || i, printf('%.100c', 'x') FROM n;"});
  for (int i = 0; i < 5; ++i)
    box.ok(
        {"exec", a, "UPDATE todo SET votes = votes + 1 WHERE id = 'k" + std::to_string(i) + "'"});
  const std::string out = box.path("all.cs");
  const std::string printed = box.ok({"changes", a, "--out", out, "--max-bytes", "50000"});
  std::vector<std::string> files;
  for (std::size_t i = 0; fs::exists(i ? out + "." + std::to_string(i) : out); ++i) {
    files.push_back(i ? out + "." + std::to_string(i) : out);
    CHECK(fs::file_size(files.back()) <= 50000);
  }
  REQUIRE(files.size() > 4);
  CHECK(contains(printed, out + ", " + out + ".1, "));
  // Named in reverse order, they still chain: b ends with a's whole vector.
  box.ok({"exec", b, kSchema});
  std::vector<std::string> apply = {"apply", b};
  apply.insert(apply.end(), files.rbegin(), files.rend());
  box.ok(apply);
  CHECK(box.ok({"vv", b}) == box.ok({"vv", a}));
  CHECK(todo_rows(box, b) == todo_rows(box, a));
  // A shorter run removes the longer run's leftover parts, so none is taken for its own.
  box.ok({"changes", a, "--out", out});
  CHECK(!fs::exists(out + ".1"));
  CHECK(contains(box.fails({"changes", a, "--out", out, "--max-bytes", "10"}), "--max-bytes"));
}

TEST_CASE("a copied replica file is refused by its original until rekey separates them") {
  Sandbox box;
  const std::string original = box.path("original.db"), copy = box.path("copy.db");
  box.ok({"exec", original, std::string(kSchema) + "INSERT INTO todo(id, votes) VALUES ('a', 10)"});
  fs::copy_file(original, copy);
  box.ok({"exec", original, "UPDATE todo SET votes = votes + 1"});
  box.ok({"exec", copy, "UPDATE todo SET votes = votes + 2; INSERT INTO todo(id) VALUES ('c')"});
  box.ok({"changes", copy, "--out", box.path("copy.cs")});
  const std::string refused = box.fails({"apply", original, box.path("copy.cs")});
  CHECK(contains(refused, "lattice: copied_replica: "));
  CHECK(contains(refused, "they agree through transaction 1 and differ from 2"));
  // The original's vector is more than the copy wrote of it: changes --since refuses too.
  write_all(box.path("original.vv"), box.ok({"vv", original}));
  box.ok(
      {"exec", original, "UPDATE todo SET votes = votes + 1; UPDATE todo SET votes = votes + 1"});
  write_all(box.path("original.vv"), box.ok({"vv", original}));
  CHECK(contains(
      box.fails({"changes", copy, "--since", box.path("original.vv"), "--out", box.path("x.cs")}),
      "lattice: copied_replica: "));

  CHECK(contains(box.ok({"rekey", copy, "--keep-through", "1"}), "own transactions 1..1 stay"));
  box.ok({"changes", copy, "--since", box.path("original.vv"), "--out", box.path("copy.cs")});
  box.ok({"apply", original, box.path("copy.cs")});
  write_all(box.path("copy.vv"), box.ok({"vv", copy}));
  box.ok({"changes", original, "--since", box.path("copy.vv"), "--out", box.path("o.cs")});
  box.ok({"apply", copy, box.path("o.cs")});
  CHECK(todo_rows(box, copy) == todo_rows(box, original));
  CHECK(box.ok({"exec", copy, "SELECT votes FROM todo WHERE id = 'a'"}) == "15\n");
  CHECK(contains(box.fails({"rekey", copy, "--keep-through", "x"}), "--keep-through"));
}

TEST_CASE("snapshot and install-snapshot give a new replica the rows, then it syncs as itself") {
  Sandbox box;
  const std::string source = box.path("source.db"), fresh = box.path("fresh.db");
  const std::string snapshot = box.path("todo.snapshot");
  box.ok({"exec", source,
          std::string(kSchema) +
              "INSERT INTO todo(id, title, votes) VALUES ('a', 'one', 3), ('b', 'two', 1);"
              "DELETE FROM todo WHERE id = 'b'; UPDATE todo SET votes = votes + 4"});
  const std::string wrote = box.ok({"snapshot", source, snapshot});
  CHECK(contains(wrote, "wrote snapshot " + snapshot + " ("));
  CHECK(contains(wrote, box.ok({"vv", source}).substr(0, 10)));
  // A file that exists is not overwritten.
  CHECK(contains(box.fails({"snapshot", source, snapshot}), "lattice: io: "));

  box.ok({"exec", fresh, kSchema});
  const std::string fresh_site = box.ok({"exec", fresh,
                                         "SELECT hex(site_id) FROM "
                                         "lattice_sites WHERE idx = 0"});
  const std::string installed = box.ok({"install-snapshot", fresh, snapshot});
  CHECK(contains(installed, "installed snapshot " + snapshot));
  CHECK(todo_rows(box, fresh) == todo_rows(box, source));
  CHECK(contains(box.ok({"check", fresh}), "ok: metadata and tables agree"));
  // Twice is refused: the replica is no longer empty.
  CHECK(contains(box.fails({"install-snapshot", fresh, snapshot}), "lattice: state: "));

  // The new replica writes under its own id; the source merges it, and the other way round.
  box.ok({"exec", fresh, "UPDATE todo SET votes = votes + 10"});
  box.ok({"exec", source, "INSERT INTO todo(id, title) VALUES ('c', 'three')"});
  write_all(box.path("source.vv"), box.ok({"vv", source}));
  write_all(box.path("fresh.vv"), box.ok({"vv", fresh}));
  box.ok({"changes", fresh, "--since", box.path("source.vv"), "--out", box.path("f.cs")});
  box.ok({"changes", source, "--since", box.path("fresh.vv"), "--out", box.path("s.cs")});
  box.ok({"apply", source, box.path("f.cs")});
  box.ok({"apply", fresh, box.path("s.cs")});
  CHECK(todo_rows(box, fresh) == todo_rows(box, source));
  CHECK(box.ok({"exec", source, "SELECT votes FROM todo WHERE id = 'a'"}) == "17\n");
  CHECK(box.ok({"exec", fresh, "SELECT hex(site_id) FROM lattice_sites WHERE idx = 0"}) ==
        fresh_site);
  CHECK(contains(box.fails({"install-snapshot", box.path("none.db"), snapshot}),
                 "lattice: io: no replica"));
}

TEST_CASE("--key-file: every command opens an encrypted replica with its key, and only with it") {
  Sandbox box;
  const std::string db = box.path("secret.db"), key = box.path("k.key"), other = box.path("o.key");
  write_all(key, "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n");
  write_all(other, std::string(64, '7'));
  box.ok({"exec", db, "--key-file", key,
          std::string(kSchema) + "INSERT INTO todo(id, title) VALUES ('a', 'confidential')"});
  CHECK(!contains(read_all(db), "confidential"));
  CHECK(!contains(read_all(db), "SQLite format 3"));

  // The option goes anywhere among a command's arguments.
  CHECK(box.ok({"--key-file", key, "exec", db, "SELECT title FROM todo"}) == "confidential\n");
  CHECK(contains(box.ok({"check", db, "--key-file", key}), "ok: metadata and tables agree"));
  write_all(box.path("empty.vv"), "{}");
  box.ok({"changes", db, "--key-file", key, "--since", box.path("empty.vv"), "--out",
          box.path("c.cs")});
  box.ok({"exec", box.path("plain.db"), kSchema});
  box.ok({"apply", box.path("plain.db"), box.path("c.cs")});
  CHECK(box.ok({"exec", box.path("plain.db"), "SELECT title FROM todo"}) == "confidential\n");

  CHECK(contains(box.fails({"exec", db, "SELECT 1"}), "lattice: key: "));
  CHECK(contains(box.fails({"exec", db, "SELECT 1", "--key-file", other}), "lattice: key: "));
  CHECK(contains(box.fails({"exec", box.path("plain.db"), "SELECT 1", "--key-file", key}),
                 "lattice: key: "));
  write_all(box.path("short.key"), "abc");
  const std::string bad = box.fails({"exec", db, "SELECT 1", "--key-file", box.path("short.key")});
  CHECK(contains(bad, "lattice: invalid_argument: "));
  CHECK(contains(bad, "short.key"));
  CHECK(contains(box.fails({"exec", db, "SELECT 1", "--key-file"}), "--key-file needs a FILE"));
  CHECK(box.ok({"exec", db, "SELECT count(*) FROM todo", "--key-file", key}) == "1\n");

  // rotate-key: afterwards only the new key opens the replica.
  CHECK(contains(box.ok({"rotate-key", db, "--key-file", key, "--new-key-file", other}),
                 "rotated: "));
  CHECK(contains(box.fails({"exec", db, "SELECT 1", "--key-file", key}), "lattice: key: "));
  CHECK(box.ok({"exec", db, "SELECT title FROM todo", "--key-file", other}) == "confidential\n");
  CHECK(!contains(read_all(db), "confidential"));
  CHECK(contains(box.fails({"rotate-key", db, "--new-key-file", key}), "needs --key-file"));
  CHECK(contains(box.fails({"rotate-key", db, "--key-file", other}), "--new-key-file NEW"));
  CHECK(contains(
      box.fails({"rotate-key", db, "--key-file", other, "--new-key-file", box.path("short.key")}),
      "lattice: invalid_argument: "));
  CHECK(contains(
      box.fails({"rotate-key", box.path("plain.db"), "--key-file", key, "--new-key-file", other}),
      "lattice: key: "));
}

TEST_CASE("check reports tables, conflicts and problems, and fails on a problem") {
  Sandbox box;
  const std::string a = box.path("a.db"), b = box.path("b.db");
  const std::string users =
      "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE); SELECT "
      "lattice_replicate('users');";
  box.ok({"exec", a, users + "INSERT INTO users VALUES ('u1', 'x@example.com')"});
  box.ok({"exec", b, users + "INSERT INTO users VALUES ('u2', 'x@example.com')"});
  box.ok({"changes", a, "--out", box.path("a.cs")});
  box.ok({"apply", b, box.path("a.cs")});
  const std::string report = box.ok({"check", b});
  CHECK(contains(report, "table users: 1 shown, 1 held, 0 superseded\n"));
  CHECK(contains(report, "conflict: users [\"u"));
  CHECK(contains(report, "unique users.email\n"));
  CHECK(contains(report, "ok: metadata and tables agree; 1 row(s) held"));
  // A capture trigger dropped behind Lattice's back (a plain connection can).
  const std::string table_id = box.ok({"exec", b, "SELECT id FROM lattice_tables"});
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(b.c_str(), &db) == SQLITE_OK);
    const std::string drop =
        "DROP TRIGGER lattice_" + table_id.substr(0, table_id.size() - 1) + "_delete";
    REQUIRE(sqlite3_exec(db, drop.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  const Result broken = box.run({"check", b});
  CHECK(broken.status == 1);
  CHECK(contains(broken.out, "problem: table users: its capture trigger"));
  CHECK(contains(broken.err, "lattice: check: 1 problem(s); first: table users"));
}

TEST_CASE("vv prints the version vector as one line of JSON and nothing else") {
  Sandbox box;
  const std::string db = box.path("a.db");
  box.ok({"exec", db, kSchema});
  CHECK(box.ok({"vv", db}) == "{}\n");

  box.ok({"exec", db, "INSERT INTO todo(id, title) VALUES ('a', 'one')"});
  const std::string first = box.ok({"vv", db});
  REQUIRE(lines_of(first).size() == 1);
  REQUIRE(first.back() == '\n');
  const std::string json = first.substr(0, first.size() - 1);
  const crdt::VersionVector after_one = crdt::VersionVector::from_json(json);
  CHECK(after_one.entries().size() == 1);
  CHECK(after_one.to_json() == json);

  box.ok({"exec", db, "UPDATE todo SET title = 'uno'"});
  const std::string second = box.ok({"vv", db});
  const crdt::VersionVector after_two =
      crdt::VersionVector::from_json(second.substr(0, second.size() - 1));
  CHECK(after_two.compare(after_one) == crdt::VersionVector::Order::kAfter);
}

TEST_CASE("two replicas exchanging changeset files both ways converge") {
  Sandbox box;
  const std::string a = box.path("a.db"), b = box.path("b.db");
  box.ok({"exec", a,
          std::string(kSchema) +
              "INSERT INTO todo(id, title, votes) VALUES ('a', 'first', 0), ('b', 'second', 1),"
              " ('c', 'third', 0)"});
  box.ok({"exec", b, kSchema});
  box.ok({"changes", a, "--out", box.path("seed.cs")});
  box.ok({"apply", b, box.path("seed.cs")});
  REQUIRE(todo_rows(box, a) == todo_rows(box, b));

  // Concurrent edits: both retitle 'a' and vote on 'b'; B deletes 'c' and adds 'd'; A edits
  // 'c' (a concurrent update of a deleted row) and marks 'a' done.
  box.ok({"exec", a,
          "UPDATE todo SET title = 'first (A)', done = 1 WHERE id = 'a';"
          "UPDATE todo SET votes = votes + 2 WHERE id = 'b';"
          "UPDATE todo SET title = 'third (A)' WHERE id = 'c';"});
  box.ok({"exec", b,
          "BEGIN;"
          "UPDATE todo SET title = 'first (B)' WHERE id = 'a';"
          "UPDATE todo SET votes = votes + 3 WHERE id = 'b';"
          "DELETE FROM todo WHERE id = 'c';"
          "INSERT INTO todo(id, title) VALUES ('d', 'fourth');"
          "COMMIT;"});

  write_all(box.path("a.vv"), box.ok({"vv", a}));
  write_all(box.path("b.vv"), box.ok({"vv", b}));
  box.ok({"changes", a, "--since", box.path("b.vv"), "--out", box.path("a-to-b.cs")});
  box.ok({"changes", b, "--since", box.path("a.vv"), "--out", box.path("b-to-a.cs")});
  box.ok({"apply", b, box.path("a-to-b.cs")});
  box.ok({"apply", a, box.path("b-to-a.cs")});

  const std::string rows_a = todo_rows(box, a), rows_b = todo_rows(box, b);
  CHECK(rows_a == rows_b);
  const auto lines = lines_of(rows_a);
  REQUIRE(lines.size() == 3);
  CHECK((lines[0] == "a\tfirst (A)\t1\t0" || lines[0] == "a\tfirst (B)\t1\t0"));
  CHECK(lines[1] == "b\tsecond\t0\t6");
  CHECK(lines[2] == "d\tfourth\t0\t0");

  const std::string vv_a = box.ok({"vv", a}), vv_b = box.ok({"vv", b});
  CHECK(vv_a == vv_b);
  CHECK(crdt::VersionVector::from_json(vv_a.substr(0, vv_a.size() - 1)).entries().size() == 2);
  // Nothing is left to send either way.
  write_all(box.path("b.vv"), vv_b);
  CHECK(contains(box.ok({"changes", a, "--since", box.path("b.vv"), "--out", box.path("x.cs")}),
                 "wrote 0 changes"));
}

TEST_CASE("a failing command exits non-zero with one line on stderr naming the problem") {
  Sandbox box;
  const std::string db = box.path("a.db");
  box.ok({"exec", db, std::string(kSchema) + "INSERT INTO todo(id, title) VALUES ('a', 'one')"});
  const std::string good = box.path("good.cs");
  box.ok({"changes", db, "--out", good});

  SUBCASE("bad SQL") {
    const std::string line = box.fails({"exec", db, "SELEC 1"});
    CHECK(line.rfind("lattice: sql: ", 0) == 0);
    CHECK(contains(line, "syntax error"));
    CHECK(contains(line, "SELEC 1"));
    CHECK(todo_rows(box, db) == "a\tone\t0\t0\n");
  }
  SUBCASE("bad SQL in a script of several lines") {
    const Result r =
        box.run({"exec", db, "SELECT 1;\nUPDATE todo\n   SET nope = 1\n WHERE id = 'a'"});
    INFO("stderr: " << r.err);
    CHECK(r.status == 1);
    CHECK(contains(r.err, "no such column: nope"));
    CHECK(lines_of(r.err).size() == 1);
  }
  SUBCASE("a changeset file that does not exist") {
    const std::string missing = box.path("missing.cs");
    const std::string line = box.fails({"apply", db, missing});
    CHECK(line.rfind("lattice: io: ", 0) == 0);
    CHECK(contains(line, missing));
  }
  SUBCASE("a changeset file that is not a changeset") {
    write_all(box.path("junk.cs"), "this is not a changeset\n");
    const std::string line = box.fails({"apply", db, box.path("junk.cs")});
    CHECK(line.rfind("lattice: corrupt: ", 0) == 0);
    CHECK(contains(line, "not a Lattice changeset"));
  }
  SUBCASE("a truncated changeset file") {
    const std::string bytes = read_all(good);
    write_all(box.path("cut.cs"), bytes.substr(0, bytes.size() / 2));
    const std::string line = box.fails({"apply", db, box.path("cut.cs")});
    CHECK(line.rfind("lattice: corrupt: ", 0) == 0);
    CHECK(contains(line, "truncated at byte " + std::to_string(bytes.size() / 2)));
  }
  SUBCASE("a changeset of a table with another primary key here") {
    const std::string other = box.path("other.db");
    box.ok({"exec", other,
            "CREATE TABLE todo(id TEXT, title TEXT, done INTEGER NOT NULL DEFAULT 0, votes "
            "INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (id, title));"
            "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}')"});
    const std::string line = box.fails({"apply", other, good});
    CHECK(line.rfind("lattice: schema: ", 0) == 0);
    CHECK(contains(line, "primary key is (id), this replica's is (id, title)"));
  }
  SUBCASE("a malformed version vector file") {
    write_all(box.path("bad.vv"), "{\"not a site\": 1}\n");
    const std::string line =
        box.fails({"changes", db, "--since", box.path("bad.vv"), "--out", box.path("x.cs")});
    CHECK(line.rfind("lattice: invalid_argument: ", 0) == 0);
    CHECK(contains(line, "version vector"));
    CHECK(!fs::exists(box.path("x.cs")));
  }
  SUBCASE("an unknown command") {
    const Result r = box.run({"frobnicate", db});
    CHECK(r.status == 2);
    CHECK(r.out.empty());
    const auto lines = lines_of(r.err);
    REQUIRE(!lines.empty());
    CHECK(lines.size() == 1);
    CHECK(lines[0] == "lattice: usage: unknown command 'frobnicate' (run 'lattice help')");
  }
}

TEST_CASE("import writes a CSV file's records by key; a second import changes nothing") {
  Sandbox box;
  box.ok({"exec", "t.db", kSchema});
  write_all(box.path("todo.csv"),
            "id,title,done,votes\n"
            "a,buy milk,0,1\n"
            "b,\"walk, then run\",1,2\n");
  CHECK(box.ok({"import", "t.db", "todo", "todo.csv"}) ==
        "imported 2 records into todo: 2 inserted, 0 updated, 0 unchanged, 0 rejected\n");
  CHECK(box.ok({"exec", "t.db", "SELECT * FROM todo ORDER BY id"}) ==
        "a\tbuy milk\t0\t1\nb\twalk, then run\t1\t2\n");
  const std::string vv = box.ok({"vv", "t.db"});
  CHECK(box.ok({"import", "t.db", "todo", "todo.csv", "--format", "csv"}) ==
        "imported 2 records into todo: 0 inserted, 0 updated, 2 unchanged, 0 rejected\n");
  CHECK(box.ok({"vv", "t.db"}) == vv);

  // The imported rows travel in a changeset like any write.
  box.ok({"exec", "u.db", kSchema});
  box.ok({"changes", "t.db", "--out", "t.cs"});
  CHECK(box.ok({"apply", "u.db", "t.cs"}) == "applied 6 of 6 changes\n");
  CHECK(box.ok({"exec", "u.db", "SELECT * FROM todo ORDER BY id"}) ==
        "a\tbuy milk\t0\t1\nb\twalk, then run\t1\t2\n");

  write_all(box.path("one.csv"), "id,title\nc,call mum\n");
  CHECK(box.ok({"import", "t.db", "todo", "one.csv"}) ==
        "imported 1 record into todo: 1 inserted, 0 updated, 0 unchanged, 0 rejected\n");
}

TEST_CASE("import exits 3 when records were rejected, and writes them to --errors") {
  Sandbox box;
  box.ok({"exec", "t.db", kSchema});
  write_all(box.path("todo.ndjson"),
            "{\"id\": \"a\", \"title\": \"ok\"}\n"
            "{\"id\": \"b\", \"done\": \"notanint\"}\n"
            "not json\n"
            "{\"id\": \"c\", \"votes\": 4}\n");
  Result r = box.run({"import", "t.db", "todo", "todo.ndjson", "--errors", "rejected.csv"});
  CHECK(r.status == 3);
  CHECK(r.err.empty());
  CHECK(r.out ==
        "imported 4 records into todo: 2 inserted, 0 updated, 0 unchanged, 2 rejected (see "
        "rejected.csv)\n");
  CHECK(read_all(box.path("rejected.csv")) ==
        "record,line,column,reason,data\n"
        "2,2,done,'notanint' is not an integer,\"{\"\"id\"\": \"\"b\"\", \"\"done\"\": "
        "\"\"notanint\"\"}\"\n"
        "3,3,,not valid JSON: unexpected character 'n' (byte 1 of the line),not json\n");
  // Without --errors, the rejections go to stderr, one a line.
  r = box.run({"import", "t.db", "todo", "todo.ndjson"});
  CHECK(r.status == 3);
  CHECK(r.err ==
        "rejected: record 2 (line 2), column done: 'notanint' is not an integer\n"
        "rejected: record 3 (line 3): not valid JSON: unexpected character 'n' (byte 1 of the "
        "line)\n");
}

TEST_CASE("import refuses a hostile file with one line naming it, and writes nothing") {
  Sandbox box;
  box.ok({"exec", "t.db", kSchema});
  box.ok({"exec", "t.db", "INSERT INTO todo(id, title) VALUES ('x', 'keep')"});
  const std::string before =
      box.ok({"exec", "t.db", "SELECT * FROM todo; SELECT * FROM lattice_local"});
  std::string binary = "id,title\na,ok\n";
  for (int i = 0; i < 64; ++i) binary += static_cast<char>(i * 4);
  write_all(box.path("binary.csv"), binary);
  CHECK(box.fails({"import", "t.db", "todo", "binary.csv"}) ==
        "lattice: corrupt: 'binary.csv': line 3 (byte 15) holds a NUL byte: this is not a text "
        "file");
  write_all(box.path("deep.json"), "[{\"id\": \"a\"},\n{\"id\": " + std::string(100, '[') + "]}]");
  CHECK(box.fails({"import", "t.db", "todo", "deep.json"}) ==
        "lattice: too_large: 'deep.json': line 2: a record nests deeper than 32 levels");
  write_all(box.path("bad.csv"), "id,titel\na,b\n");
  CHECK(box.fails({"import", "t.db", "todo", "bad.csv"})
            .rfind("lattice: invalid_argument: 'bad.csv': the header's column 'titel' is no "
                   "column of table todo",
                   0) == 0);
  CHECK(box.ok({"exec", "t.db", "SELECT * FROM todo; SELECT * FROM lattice_local"}) == before);
  CHECK(box.fails({"import", "t.db", "todo", "missing.csv"}) ==
        "lattice: io: cannot read 'missing.csv': no such file");
  CHECK(box.fails({"import", "t.db", "todo", "data.txt"}) ==
        "lattice: usage: 'import' needs --format csv|ndjson|json for 'data.txt' (run 'lattice "
        "help')");
  CHECK(box.fails({"import", "t.db", "todo", "bad.csv", "--format", "xml"}) ==
        "lattice: usage: --format takes csv, ndjson or json, not 'xml' (run 'lattice help')");
  CHECK(box.fails({"import", "missing.db", "todo", "bad.csv"}) ==
        "lattice: io: no replica at 'missing.db'");
  // sync makes no replica either (only the device knows its schema), and says how to start one.
  std::ofstream(box.path("token")) << "a token";
  CHECK(box.fails({"sync", "new.db", "wss://127.0.0.1:9/board", "--token-file", "token"})
            .rfind("lattice: io: no replica at 'new.db'; a new device starts from a replica with "
                   "the namespace's schema and no rows (lattice exec new.db SCHEMA_SQL)",
                   0) == 0);
  CHECK_FALSE(std::filesystem::exists(box.path("new.db")));
}

TEST_CASE("import --map reads the mapping file; --progress prints progress on stderr") {
  Sandbox box;
  box.ok({"exec", "t.db",
          "CREATE TABLE people(id INTEGER PRIMARY KEY, email TEXT, born DATE);"
          "SELECT lattice_replicate('people')"});
  write_all(box.path("people.csv"),
            "Number;E-mail;Birthday\n"
            "1; Ann@X.org ;05/03/1990\n"
            "2;bo@x.org;31/02/1990\n");
  write_all(box.path("map.json"),
            R"({"csv": {"delimiter": ";"},
                "columns": {"id": "Number",
                            "email": {"source": "E-mail", "trim": true, "case": "lower"},
                            "born": {"source": "Birthday", "format": "%d/%m/%Y"}}})");
  const Result r = box.run({"import", "t.db", "people", "people.csv", "--map", "map.json",
                            "--progress", "--batch", "1"});
  CHECK(r.status == 3);
  CHECK(r.out ==
        "imported 2 records into people: 1 inserted, 0 updated, 0 unchanged, 1 rejected\n");
  CHECK(r.err.find("importing people: 0 of 2 records (0%), 0 rejected\n") != std::string::npos);
  CHECK(r.err.find("importing people: 2 of 2 records (100%), 1 rejected\n") != std::string::npos);
  CHECK(r.err.find("rejected: record 2 (line 3), column born: '31/02/1990' is not a date: day 31 "
                   "of month 2\n") != std::string::npos);
  CHECK(box.ok({"exec", "t.db", "SELECT * FROM people"}) == "1\tann@x.org\t1990-03-05\n");
  write_all(box.path("bad-map.json"), R"({"columns": {"id": {"type": "intger"}}})");
  CHECK(box.fails({"import", "t.db", "people", "people.csv", "--map", "bad-map.json"})
            .rfind("lattice: invalid_argument: mapping: column 'id', \"type\": unknown type "
                   "'intger'",
                   0) == 0);
}

TEST_CASE("export writes a table or a query as CSV, NDJSON or JSON, to stdout or --out") {
  Sandbox box;
  box.ok({"exec", "t.db", kSchema});
  box.ok(
      {"exec", "t.db",
       "INSERT INTO todo(id, title, votes) VALUES ('b', 'say \"hi\", twice', 2), ('a', NULL, 1)"});
  CHECK(box.ok({"export", "t.db", "todo"}) ==
        "id,title,done,votes\n\"a\",,0,1\n\"b\",\"say \"\"hi\"\", twice\",0,2\n");
  CHECK(box.ok({"export", "t.db", "SELECT id, votes FROM todo WHERE votes > 1", "--format",
                "ndjson"}) == "{\"id\": \"b\", \"votes\": 2}\n");
  CHECK(box.ok({"export", "t.db", "todo", "--out", "todo.json"}) ==
        "exported 2 rows to todo.json\n");
  CHECK(read_all(box.path("todo.json")) ==
        "[\n{\"id\": \"a\", \"title\": null, \"done\": 0, \"votes\": 1},\n"
        "{\"id\": \"b\", \"title\": \"say \\\"hi\\\", twice\", \"done\": 0, \"votes\": 2}\n]\n");
  // What export wrote imports back to the same rows.
  box.ok({"exec", "u.db", kSchema});
  box.ok({"export", "t.db", "todo", "--out", "todo.csv"});
  box.ok({"import", "u.db", "todo", "todo.csv"});
  CHECK(box.ok({"exec", "u.db", "SELECT * FROM todo ORDER BY id"}) ==
        box.ok({"exec", "t.db", "SELECT * FROM todo ORDER BY id"}));
  CHECK(box.fails({"export", "t.db", "DELETE FROM todo"}) ==
        "lattice: invalid_argument: 'DELETE FROM todo': export runs only statements that read rows "
        "(a SELECT)");
  CHECK(box.fails({"export", "t.db", "todo", "--format", "yaml"}) ==
        "lattice: usage: --format takes csv, ndjson or json, not 'yaml' (run 'lattice help')");
}

}  // namespace
}  // namespace lattice
