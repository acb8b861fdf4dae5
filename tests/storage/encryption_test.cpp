// Replicas encrypted at rest (ReplicaOptions::encryption_key, storage/encrypted_vfs.hpp): the
// files on disk hold none of the data, names or keys; only the right key opens them; a page
// altered on disk is refused, not read; a process killed mid-write leaves a file that opens
// under its key and passes SQLite's integrity check.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "crdt/error.hpp"
#include "storage/encrypted_vfs.hpp"
#include "storage/replica.hpp"
#include "storage/sqlite.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using storage::FileKey;
using storage::Replica;
using storage::ReplicaOptions;
using test::TempDir;

// A clinic's notes: names and values that must not be found in the files.
constexpr const char* kClinic =
    "CREATE TABLE patient_notes(mrn TEXT PRIMARY KEY, diagnosis TEXT NOT NULL, "
    "visits INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX notes_by_diagnosis ON patient_notes(diagnosis);"
    "SELECT lattice_replicate('patient_notes', '{\"visits\":\"counter\"}');";

ReplicaOptions with_key(char digit) {
  ReplicaOptions options;
  options.encryption_key = storage::parse_file_key(std::string(64, digit), "test key");
  return options;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Every file of the replica at `path` (database, WAL, shared memory) that exists, with its bytes.
std::vector<std::pair<std::string, std::string>> files_of(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const char* suffix : {"", "-wal", "-shm", "-journal"})
    if (std::filesystem::exists(path + suffix))
      out.emplace_back(path + suffix, read_bytes(path + suffix));
  return out;
}

// The words that appear in some file of the replica at `path`.
std::vector<std::string> found_in_files(const std::string& path,
                                        const std::vector<std::string>& words) {
  std::vector<std::string> found;
  const auto files = files_of(path);
  for (const auto& word : words)
    for (const auto& [name, bytes] : files)
      if (bytes.find(word) != std::string::npos) {
        found.push_back(word + " in " + name);
        break;
      }
  return found;
}

std::string random_word(std::mt19937_64& random) {
  static constexpr char kLetters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  std::string word;
  for (int i = 0; i < 14; ++i) word += kLetters[random() % (sizeof kLetters - 1)];
  return word;
}

std::int64_t count_rows(Replica& replica, const std::string& table) {
  storage::Statement count(replica.connection(), "SELECT count(*) FROM " + table);
  count.step();
  return count.column_int(0);
}

std::string integrity(Replica& replica) {
  storage::Statement check(replica.connection(), "PRAGMA integrity_check");
  check.step();
  return check.column_text(0);
}

TEST_CASE("an encrypted replica's files hold none of its values, names or keys") {
  TempDir dir;
  const std::string path = dir.file("clinic.db");
  std::mt19937_64 random(20261207);
  std::vector<std::string> secrets{"patient_notes", "diagnosis", "notes_by_diagnosis",
                                   "SQLite format 3", "lattice_rows"};
  std::vector<std::pair<std::string, std::string>> rows;
  for (int i = 0; i < 1000; ++i)
    rows.emplace_back("mrn" + random_word(random), random_word(random));
  for (const auto& [mrn, diagnosis] : rows) {
    secrets.push_back(mrn);
    secrets.push_back(diagnosis);
  }
  {
    auto replica = Replica::open(path, with_key('3'));
    replica->migrate(1, kClinic);
    storage::exec_sql(replica->connection(), "BEGIN");
    storage::Statement insert(replica->connection(),
                              "INSERT INTO patient_notes(mrn, diagnosis) VALUES (?, ?)");
    for (const auto& [mrn, diagnosis] : rows) insert.bind(1, mrn).bind(2, diagnosis).run();
    storage::exec_sql(replica->connection(), "COMMIT");
    // Updates and deletes: the WAL holds new versions of pages, the database file the old ones.
    storage::exec_sql(replica->connection(),
                      "UPDATE patient_notes SET visits = visits + 1 WHERE rowid % 3 = 0;"
                      "DELETE FROM patient_notes WHERE rowid % 7 = 0");
    REQUIRE(std::filesystem::file_size(path + "-wal") > 100'000);
    CHECK(found_in_files(path, secrets).empty());
    CHECK(integrity(*replica) == "ok");
  }
  CHECK(!std::filesystem::exists(path + "-wal"));  // checkpointed into the database file
  CHECK(found_in_files(path, secrets).empty());

  auto replica = Replica::open(path, with_key('3'));
  CHECK(count_rows(*replica, "patient_notes") == 1000 - 1000 / 7);
  storage::Statement first(replica->connection(),
                           "SELECT diagnosis FROM patient_notes WHERE mrn = ?");
  first.bind(1, rows[1].first);
  REQUIRE(first.step());
  CHECK(first.column_text(0) == rows[1].second);
  CHECK(integrity(*replica) == "ok");
}

TEST_CASE("only its own key opens an encrypted replica; a refused open changes nothing") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  {
    auto replica = Replica::open(path, with_key('a'));
    replica->migrate(1, kClinic);
    storage::exec_sql(replica->connection(),
                      "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('m1', 'fine')");
  }
  const auto before = files_of(path);

  auto refused = [&](ReplicaOptions options, const char* why) {
    try {
      Replica::open(path, std::move(options));
      FAIL("opened");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kKey);
      CHECK(std::string(e.what()).find(path) != std::string::npos);
      CHECK(std::string(e.what()).find(why) != std::string::npos);
    }
    CHECK(files_of(path) == before);
  };
  refused(with_key('b'), "the key does not decrypt it");
  refused(ReplicaOptions{}, "opened without its key");

  // A plain replica opened with a key: refused the same way, and left plain.
  const std::string plain = dir.file("plain.db");
  Replica::open(plain)->migrate(1, kClinic);
  try {
    Replica::open(plain, with_key('a'));
    FAIL("opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kKey);
  }
  CHECK(count_rows(*Replica::open(plain), "patient_notes") == 0);

  // Two connections to one file in one process must agree on its key.
  auto first = Replica::open(path, with_key('a'));
  CHECK_THROWS_AS(Replica::open(path, with_key('c')), Error);
  auto second = Replica::open(path, with_key('a'));
  CHECK(count_rows(*second, "patient_notes") == 1);
}

TEST_CASE("a page altered or moved on disk is refused, never read") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  {
    auto replica = Replica::open(path, with_key('5'));
    replica->migrate(1, kClinic);
    storage::exec_sql(
        replica->connection(),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)"
        " INSERT INTO patient_notes(mrn, diagnosis) SELECT 'm' || i, "
        "'diagnosis number ' || i FROM n;"
        "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('long', printf('%.30000c', 'x'))");
  }
  const std::string original = read_bytes(path);
  const std::size_t page = storage::kEncryptedPageSize;
  REQUIRE(original.size() > 20 * page);

  auto scan_fails = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    try {
      // integrity_check reads every page.
      auto replica = Replica::open(path, with_key('5'));
      CHECK(integrity(*replica) != "ok");
    } catch (const Error& e) {
      const bool named = std::string(e.what()).find("fails to authenticate") != std::string::npos ||
                         e.code() == ErrorCode::kKey;
      CHECK_MESSAGE(named, e.what());
    }
  };
  for (std::size_t at : {page * 10 + 100, page * 12 + page - 1, page * 11 + page - 20}) {
    std::string flipped = original;  // in the ciphertext, in the tag, in the nonce
    flipped[at] = static_cast<char>(flipped[at] ^ 0x01);
    scan_fails(flipped);
  }
  std::string moved = original;  // page 12's bytes over page 11's
  moved.replace(page * 10, page, original, page * 11, page);
  scan_fails(moved);
  // Any page all zeros, nonce and tag included: zeros where the file had a page are not a page
  // SQLite wrote (the last page of a long value's overflow chain would read as a shorter value).
  for (std::size_t at = 0; at < original.size(); at += page) {
    std::string zeroed = original;
    zeroed.replace(at, page, page, '\0');
    scan_fails(zeroed);
  }

  std::ofstream(path, std::ios::binary | std::ios::trunc) << original;
  CHECK(count_rows(*Replica::open(path, with_key('5')), "patient_notes") == 2001);
}

TEST_CASE("an encrypted replica killed in the middle of writing opens and passes integrity_check") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  Replica::open(path, with_key('9'))->migrate(1, kClinic);
  for (int round = 0; round < 5; ++round) {
    int report[2];
    REQUIRE(pipe(report) == 0);
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      close(report[0]);
      try {
        auto replica = Replica::open(path, with_key('9'));
        // Checkpoints every few transactions, so that kills land in them too.
        storage::exec_sql(replica->connection(), "PRAGMA wal_autocheckpoint=16");
        storage::Statement insert(replica->connection(),
                                  "INSERT INTO patient_notes(mrn, diagnosis) VALUES (?, ?)");
        for (int txn = 0;; ++txn) {
          storage::exec_sql(replica->connection(), "BEGIN");
          for (int i = 0; i < 50; ++i) {
            const std::string mrn =
                std::to_string(round) + "-" + std::to_string(txn) + "-" + std::to_string(i);
            insert.bind(1, mrn).bind(2, "a long diagnosis text for " + mrn).run();
          }
          storage::exec_sql(replica->connection(), "COMMIT");
          const char committed = 'c';
          if (write(report[1], &committed, 1) != 1) _exit(2);
        }
      } catch (...) {
        _exit(1);
      }
    }
    close(report[1]);
    // Killed after a number of commits that grows with the round.
    int commits = 0;
    char c;
    while (commits < 5 + round * 23 && read(report[0], &c, 1) == 1) ++commits;
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    while (read(report[0], &c, 1) == 1) ++commits;
    close(report[0]);
    REQUIRE(WIFSIGNALED(status));

    auto replica = Replica::open(path, with_key('9'));
    CHECK(integrity(*replica) == "ok");
    // Every reported commit survived; transactions are whole.
    storage::Statement count(replica->connection(),
                             "SELECT count(*) FROM patient_notes WHERE mrn LIKE ? || '-%'");
    count.bind(1, std::to_string(round));
    count.step();
    CHECK(count.column_int(0) >= 50 * commits);
    CHECK(count.column_int(0) % 50 == 0);
  }
}

TEST_CASE("an encrypted replica sorts, syncs and snapshots like a plain one") {
  TempDir dir;
  ReplicaOptions on_disk_temp = with_key('1');
  on_disk_temp.temp_store = "FILE";  // sorts and statement journals in (encrypted) temp files
  auto encrypted = Replica::open(dir.file("e.db"), on_disk_temp);
  auto plain = Replica::open(dir.file("p.db"));
  encrypted->migrate(1, kClinic);
  plain->migrate(1, kClinic);
  storage::exec_sql(
      encrypted->connection(),
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
      " INSERT INTO patient_notes(mrn, diagnosis) SELECT 'm' || i, "
      "hex(randomblob(40)) FROM n");
  // A sort larger than the page cache.
  storage::Statement sorted(encrypted->connection(),
                            "SELECT count(*) FROM (SELECT diagnosis FROM patient_notes "
                            "ORDER BY diagnosis || mrn)");
  sorted.step();
  CHECK(sorted.column_int(0) == 20000);

  plain->apply(encrypted->changes_since(plain->version_vector()));
  CHECK(test::dump_table(*plain, "patient_notes") == test::dump_table(*encrypted, "patient_notes"));

  // A snapshot file is not encrypted (it goes to a device over TLS); installing one into an
  // encrypted replica makes its rows encrypted there.
  const std::string snapshot = dir.file("snapshot.db");
  plain->write_snapshot(snapshot);
  const std::string fresh_path = dir.file("fresh.db");
  auto fresh = Replica::open(fresh_path, with_key('2'));
  fresh->migrate(1, kClinic);
  fresh->install_snapshot(snapshot);
  CHECK(test::dump_table(*fresh, "patient_notes") == test::dump_table(*plain, "patient_notes"));
  fresh.reset();
  CHECK(found_in_files(fresh_path, {"patient_notes", "m19999"}).empty());
}

TEST_CASE("key files hold 64 hexadecimal digits") {
  TempDir dir;
  const std::string good = dir.file("good.key");
  std::ofstream(good) << std::string(32, 'A') << std::string(32, '0') << "\n";
  const FileKey key = storage::read_file_key(good);
  CHECK(key[0] == 0xAA);
  CHECK(key[31] == 0x00);
  for (const std::string& bad :
       {std::string(63, 'a'), std::string(65, 'a'), std::string(62, 'a') + "xy", std::string()}) {
    const std::string file = dir.file("bad.key");
    std::ofstream(file, std::ios::trunc) << bad;
    try {
      storage::read_file_key(file);
      FAIL("accepted " << bad);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kInvalidArgument);
      CHECK(std::string(e.what()).find(file) != std::string::npos);
    }
  }
  CHECK_THROWS_AS(storage::read_file_key(dir.file("missing.key")), Error);
}

}  // namespace
}  // namespace lattice
