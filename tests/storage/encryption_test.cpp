// Replicas encrypted at rest (ReplicaOptions::encryption_key, storage/encrypted_vfs.hpp): the
// files on disk hold none of the data, names or keys; only the right key opens them; a page
// altered on disk is refused, not read; a process killed mid-write leaves a file that opens
// under its key and passes SQLite's integrity check; a key rotates in place, keeping every write
// made around it, and a rotation cut short leaves the file whole under its old key.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
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

// A child process that runs `work` with the write end of a pipe to report on, until it is
// killed (it exits when `work` throws or returns); the parent gets its pid and the read end.
std::pair<pid_t, int> fork_child(const std::function<void(int report)>& work) {
  int report[2];
  REQUIRE(pipe(report) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    close(report[0]);
    try {
      work(report[1]);
    } catch (...) {
    }
    _exit(1);
  }
  close(report[1]);
  return {child, report[0]};
}

// SIGKILLs `child` and waits for it; true when the signal is what ended it.
bool kill_child(pid_t child) {
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  return WIFSIGNALED(status);
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
    const auto [child, report] = fork_child([&](int report) {
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
        if (write(report, &committed, 1) != 1) return;
      }
    });
    // Killed after a number of commits that grows with the round.
    int commits = 0;
    char c;
    while (commits < 5 + round * 23 && read(report, &c, 1) == 1) ++commits;
    REQUIRE(kill_child(child));
    while (read(report, &c, 1) == 1) ++commits;
    close(report);

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

// A replica at `path` with the clinic's table: `rows` notes and one long one (an overflow
// chain), the last transactions still in the WAL.
std::unique_ptr<Replica> open_clinic(const std::string& path, ReplicaOptions options, int rows) {
  auto replica = Replica::open(path, std::move(options));
  replica->migrate(1, kClinic);
  storage::exec_sql(replica->connection(),
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
                        std::to_string(rows) +
                        ") INSERT INTO patient_notes(mrn, diagnosis) SELECT 'm' || i, "
                        "'diagnosis number ' || i FROM n;"
                        "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('long', "
                        "printf('%.30000c', 'x'))");
  return replica;
}

void refused_with(const std::string& path, ReplicaOptions options, ErrorCode code) {
  try {
    Replica::open(path, std::move(options));
    FAIL("opened");
  } catch (const Error& e) {
    CHECK_MESSAGE(e.code() == code, e.what());
  }
}

TEST_CASE("a rotated key replaces the old one; the files stay free of plaintext") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  auto replica = open_clinic(path, with_key('a'), 2000);
  storage::exec_sql(replica->connection(), "UPDATE patient_notes SET visits = 3 WHERE mrn = 'm7'");
  const std::string before = test::dump_table(*replica, "patient_notes");

  replica->rotate_key(*with_key('b').encryption_key);
  CHECK(test::dump_table(*replica, "patient_notes") == before);
  // The rotation let go of the file: another connection opens it, under the new key.
  CHECK(count_rows(*Replica::open(path, with_key('b')), "patient_notes") == 2001);
  // The same connection goes on writing, under the new key.
  storage::exec_sql(replica->connection(),
                    "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('after', 'rotated')");
  replica.reset();

  refused_with(path, with_key('a'), ErrorCode::kKey);
  refused_with(path, ReplicaOptions{}, ErrorCode::kKey);
  auto reopened = Replica::open(path, with_key('b'));
  CHECK(integrity(*reopened) == "ok");
  CHECK(count_rows(*reopened, "patient_notes") == 2002);
  storage::exec_sql(reopened->connection(), "DELETE FROM patient_notes WHERE mrn = 'after'");
  CHECK(test::dump_table(*reopened, "patient_notes") == before);
  reopened.reset();
  CHECK(
      found_in_files(path, {"patient_notes", "diagnosis number 1999", "m1999", "rotated"}).empty());
  CHECK_FALSE(std::filesystem::exists(path + "-rotate"));

  // Back again, and a plain replica has no key to rotate.
  Replica::open(path, with_key('b'))->rotate_key(*with_key('a').encryption_key);
  CHECK(count_rows(*Replica::open(path, with_key('a')), "patient_notes") == 2001);
  auto plain = Replica::open(dir.file("plain.db"));
  try {
    plain->rotate_key(*with_key('a').encryption_key);
    FAIL("rotated a plain replica");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kState);
  }
}

TEST_CASE("a key rotation waits for other connections, and fails with kBusy if they stay") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  ReplicaOptions impatient = with_key('a');
  impatient.busy_timeout_ms = 200;
  auto replica = open_clinic(path, impatient, 100);
  {
    auto other = Replica::open(path, with_key('a'));
    try {
      replica->rotate_key(*with_key('b').encryption_key);
      FAIL("rotated under another connection");
    } catch (const Error& e) {
      CHECK_MESSAGE(e.code() == ErrorCode::kBusy, e.what());
    }
    // Nothing changed: both connections read and write under the old key.
    storage::exec_sql(other->connection(),
                      "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('other', 'x')");
    CHECK(count_rows(*replica, "patient_notes") == 102);
  }
  replica->rotate_key(*with_key('b').encryption_key);
  replica.reset();
  CHECK(count_rows(*Replica::open(path, with_key('b')), "patient_notes") == 102);
}

TEST_CASE("writes made while keys rotate are all kept") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  Replica::open(path, with_key('0'))->migrate(1, kClinic);
  std::mutex mutex;
  char current = '0';  // the key the file is under, as far as the writer knows
  std::atomic<bool> done{false};
  std::set<int> committed;
  int refusals = 0;
  // A writer that opens the file for every insert, as a second process or a SyncClient would.
  std::thread writer([&] {
    for (int i = 0; !done && i < 100000;) {
      char key;
      {
        std::lock_guard lock(mutex);
        key = current;
      }
      try {
        auto replica = Replica::open(path, with_key(key));
        storage::exec_sql(replica->connection(),
                          "INSERT INTO patient_notes(mrn, diagnosis) VALUES ('w" +
                              std::to_string(i) + "', 'written meanwhile')");
        committed.insert(i++);
      } catch (const Error& e) {
        // The key changed under it, or a rotation held the file: try again.
        const bool expected = e.code() == ErrorCode::kKey || e.code() == ErrorCode::kBusy;
        if (!expected) FAIL_CHECK(e.what());
        ++refusals;
      }
    }
  });
  int rotations = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (rotations < 20 && std::chrono::steady_clock::now() < deadline) {
    char from;
    {
      std::lock_guard lock(mutex);
      from = current;
    }
    const char to = from == '0' ? '1' : '0';
    try {
      Replica::open(path, with_key(from))->rotate_key(*with_key(to).encryption_key);
      std::lock_guard lock(mutex);
      current = to;
      ++rotations;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kBusy) FAIL_CHECK(e.what());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  done = true;
  writer.join();
  CHECK(rotations == 20);
  auto replica = Replica::open(path, with_key(current));
  CHECK(integrity(*replica) == "ok");
  CHECK(committed.size() > 10);
  std::set<int> found;
  storage::Statement rows(replica->connection(), "SELECT substr(mrn, 2) FROM patient_notes");
  while (rows.step()) found.insert(static_cast<int>(std::stoi(rows.column_text(0))));
  CHECK(found == committed);
  MESSAGE(committed.size() << " writes kept across " << rotations << " rotations, " << refusals
                           << " opens retried");
}

TEST_CASE("a key rotation killed midway leaves the file whole under one key") {
  TempDir dir;
  const std::string path = dir.file("r.db");
  open_clinic(path, with_key('c'), 20000);
  const std::string journal = path + "-rotate";
  char current = 'c';
  int cut_short = 0;
  for (int round = 0; round < 9; ++round) {
    const auto [child, report] = fork_child([&](int report) {
      for (char key = current;;) {
        const char next = key == 'c' ? 'd' : 'c';
        Replica::open(path, with_key(key))->rotate_key(*with_key(next).encryption_key);
        key = next;
        if (write(report, &key, 1) != 1) return;
      }
    });
    // Killed as the journal appears (in the middle of rewriting), as it is being written, or
    // after a while.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    const std::string watched = round % 3 == 0 ? journal : journal + ".tmp";
    if (round % 3 == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(37 * round));
    } else {
      while (!std::filesystem::exists(watched) && std::chrono::steady_clock::now() < deadline) {
      }
      std::this_thread::sleep_for(std::chrono::microseconds(700 * (round / 3)));
    }
    REQUIRE(kill_child(child));
    char c;
    while (read(report, &c, 1) == 1) current = c;
    close(report);

    const bool interrupted = std::filesystem::exists(journal);
    cut_short += interrupted;
    const char other = current == 'c' ? 'd' : 'c';
    if (!interrupted) {
      // The last rotation may have finished without telling: the file is under one key.
      try {
        Replica::open(path, with_key(current));
      } catch (const Error&) {
        current = other;
      }
    }
    // A rotation cut short is undone by the next open: the old key opens the file, the new
    // one does not.
    refused_with(path, with_key(current == 'c' ? 'd' : 'c'), ErrorCode::kKey);
    auto replica = Replica::open(path, with_key(current));
    CHECK(integrity(*replica) == "ok");
    CHECK(count_rows(*replica, "patient_notes") == 20001);
    CHECK_FALSE(std::filesystem::exists(journal));
  }
  CHECK(cut_short >= 1);
}

TEST_CASE("an encrypted snapshot is read back as plaintext only under its key") {
  TempDir dir;
  auto relay = open_clinic(dir.file("relay.db"), with_key('e'), 3000);
  const std::string snapshot = dir.file("s.snapshot");
  relay->write_snapshot(snapshot, true);
  CHECK(found_in_files(snapshot, {"patient_notes", "diagnosis number 2999", "SQLite format 3"})
            .empty());
  CHECK(storage::file_opens_under(snapshot, *with_key('e').encryption_key));
  CHECK_FALSE(storage::file_opens_under(snapshot, *with_key('f').encryption_key));
  CHECK_FALSE(storage::file_opens_under(dir.file("relay.db"), *with_key('f').encryption_key));

  // Read in odd pieces, as a resumed download would, then installed by a plain device.
  storage::EncryptedFileReader reader(snapshot, *with_key('e').encryption_key);
  std::string plain(reader.size(), '\0');
  for (std::uint64_t at = 0; at < reader.size();) {
    const std::size_t n = std::min<std::uint64_t>(7777, reader.size() - at);
    REQUIRE(reader.read(at, reinterpret_cast<unsigned char*>(plain.data() + at), n));
    at += n;
  }
  CHECK(plain.rfind("SQLite format 3", 0) == 0);
  unsigned char past[2];
  CHECK_FALSE(reader.read(reader.size() - 1, past, 2));
  const std::string received = dir.file("received.snapshot");
  std::ofstream(received, std::ios::binary) << plain;
  auto device = Replica::open(dir.file("device.db"));
  device->migrate(1, kClinic);
  device->install_snapshot(received);
  CHECK(test::dump_table(*device, "patient_notes") == test::dump_table(*relay, "patient_notes"));

  storage::EncryptedFileReader wrong(snapshot, *with_key('f').encryption_key);
  std::string bytes(4096, '\0');
  CHECK_FALSE(wrong.read(0, reinterpret_cast<unsigned char*>(bytes.data()), bytes.size()));
  // A plain replica writes no encrypted snapshot.
  CHECK_THROWS_AS(device->write_snapshot(dir.file("no.snapshot"), true), Error);
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
