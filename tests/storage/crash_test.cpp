// Crash safety of apply(): a process killed (SIGKILL) in the middle of merging a large changeset
// leaves a replica that passes SQLite's integrity check and holds all of the changeset or none
// of it. The kill lands at a seeded random moment; LATTICE_SEED=<seed> replays the delays.

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define LATTICE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LATTICE_TEST_ASAN 1
#endif
#endif

namespace lattice {
namespace {

using Clock = std::chrono::steady_clock;

// Large enough that apply() runs for seconds, so kills a few hundred milliseconds after it
// starts land inside it; smaller under ASan, which is about three times slower.
#ifdef LATTICE_TEST_ASAN
constexpr int kRows = 60'000;
#else
constexpr int kRows = 200'000;
#endif

// Whole-test budget for the kill attempts (the source and the full run come on top).
constexpr auto kKillBudget = std::chrono::seconds(30);

using test::TempDir;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// In the child: reads the changeset, opens the replica, reports 's' on `report`, applies, and
// reports 'd'. Never returns.
[[noreturn]] void child_apply(const std::string& db_path, const std::string& changeset_path,
                              int report) {
  try {
    std::ifstream in(changeset_path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    const crdt::Changeset changeset = crdt::decode_changeset(bytes.str());
    auto replica = storage::Replica::open(db_path);
    if (write(report, "s", 1) != 1) _exit(4);
    replica->apply(changeset);
    if (write(report, "d", 1) != 1) _exit(4);
    replica.reset();
    _exit(0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_test child: %s\n", e.what());
    _exit(3);
  }
}

struct Outcome {
  bool started = false;   // the child reached apply()
  bool finished = false;  // apply() returned in the child
  bool killed = false;    // the child died of our SIGKILL
  double apply_seconds = 0;
};

// Forks a child that applies the changeset to `db_path`; kills it `delay` after it reports that
// apply() started, or lets it finish when `delay` is negative.
Outcome run_child(const std::string& db_path, const std::string& changeset_path,
                  std::chrono::milliseconds delay) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    child_apply(db_path, changeset_path, fds[1]);
  }
  close(fds[1]);
  Outcome outcome;
  char marker = 0;
  outcome.started = read(fds[0], &marker, 1) == 1 && marker == 's';
  const auto started_at = Clock::now();
  if (outcome.started && delay.count() >= 0) {
    std::this_thread::sleep_for(delay);
    kill(pid, SIGKILL);
  }
  // After the kill the pipe holds 'd' only if apply() had returned; without a kill this waits
  // for apply() to return.
  outcome.finished = read(fds[0], &marker, 1) == 1 && marker == 'd';
  outcome.apply_seconds = seconds_since(started_at);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  outcome.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  close(fds[0]);
  if (!outcome.killed) {
    INFO("child exit status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1));
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  return outcome;
}

struct Contents {
  std::int64_t rows = 0;           // rows of todo
  std::int64_t metadata_rows = 0;  // rows of its lattice_rows_<id>
  crdt::VersionVector vv;
};

// Opens the replica after the crash (SQLite recovers the WAL), checks its integrity and reads
// what it holds.
Contents inspect(const std::string& db_path) {
  auto replica = storage::Replica::open(db_path);
  const auto integrity = replica->query("PRAGMA integrity_check");
  REQUIRE(integrity.rows.size() == 1);
  CHECK(integrity.rows[0][0] == crdt::Value{std::string("ok")});
  Contents out;
  out.rows = std::get<std::int64_t>(replica->query("SELECT count(*) FROM todo").rows.at(0).at(0));
  const auto id = std::get<std::int64_t>(
      replica->query("SELECT id FROM lattice_tables WHERE name = 'todo'").rows.at(0).at(0));
  out.metadata_rows = std::get<std::int64_t>(
      replica->query("SELECT count(*) FROM lattice_rows_" + std::to_string(id)).rows.at(0).at(0));
  out.vv = replica->version_vector();
  return out;
}

TEST_CASE("a process killed during apply leaves the replica with all of the changeset or none") {
  const auto test_start = Clock::now();
  TempDir dir;
  const std::uint64_t seed = test::seed_from_env(20240601);
  std::mt19937_64 rng(seed);
  MESSAGE("seed " << seed << " (LATTICE_SEED), " << kRows << " rows");

  // The source: kRows rows written in one transaction.
  auto source = test::open_todo_replica();
  source->exec("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
               std::to_string(kRows) +
               ") INSERT INTO todo(id, title, done, votes) "
               "SELECT printf('row-%07d', i), 'the title of row ' || i, i % 2, i % 5 FROM n");
  const crdt::VersionVector expected_vv = source->version_vector();
  REQUIRE(!expected_vv.empty());
  const std::string changeset_path = (dir.path / "changeset.bin").string();
  {
    const std::string bytes = crdt::encode_changeset(source->changes_since({}));
    std::ofstream out(changeset_path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
  }
  source.reset();
  MESSAGE("source built and encoded in " << seconds_since(test_start) << " s");

  int attempt = 0;
  auto fresh_target = [&] {
    const std::string path = (dir.path / ("target-" + std::to_string(attempt++) + ".db")).string();
    test::open_todo_replica(path);  // created, then closed before the child opens it
    return path;
  };
  auto check_all_or_nothing = [&](const std::string& path) {
    const Contents c = inspect(path);
    INFO("rows " << c.rows << ", metadata rows " << c.metadata_rows << ", vv " << c.vv.to_json());
    const bool none = c.rows == 0 && c.metadata_rows == 0 && c.vv.empty();
    const bool all = c.rows == kRows && c.metadata_rows == kRows && c.vv == expected_vv;
    CHECK((none || all));
    return all;
  };

  // A run left alone: how long apply takes, and that "all" is what a finished apply leaves.
  const std::string full_path = fresh_target();
  const Outcome full = run_child(full_path, changeset_path, std::chrono::milliseconds(-1));
  REQUIRE(full.started);
  REQUIRE(full.finished);
  CHECK(check_all_or_nothing(full_path));
  const auto full_ms = static_cast<long>(full.apply_seconds * 1000);
  MESSAGE("an uninterrupted apply took " << full_ms << " ms");

  // Kills early (20-400 ms after apply starts, while rows are merged) and late (near the end of
  // the uninterrupted run's time, while the transaction commits).
  std::vector<std::chrono::milliseconds> delays;
  std::uniform_int_distribution<long> early(20, 400);
  for (int i = 0; i < 3; ++i) delays.emplace_back(early(rng));
  std::uniform_real_distribution<double> late(0.5, 0.95);
  for (int i = 0; i < 2; ++i) delays.emplace_back(static_cast<long>(late(rng) * full_ms));

  int landed_mid_apply = 0;
  const auto kills_start = Clock::now();
  for (const auto delay : delays) {
    if (Clock::now() - kills_start > kKillBudget) {
      MESSAGE("kill budget spent; skipping the remaining delays");
      break;
    }
    const std::string path = fresh_target();
    const Outcome outcome = run_child(path, changeset_path, delay);
    REQUIRE(outcome.started);
    const bool all = check_all_or_nothing(path);
    if (outcome.killed && !outcome.finished) {
      ++landed_mid_apply;
    } else {
      MESSAGE("the child finished apply before the kill at " << delay.count() << " ms");
      CHECK(all);
    }
    MESSAGE("kill after " << delay.count() << " ms: "
                          << std::string(outcome.finished ? "apply had returned" : "mid-apply")
                          << ", the replica holds " << std::string(all ? "all" : "none"));
  }
  CHECK(landed_mid_apply >= 1);
  MESSAGE("the crash test took " << seconds_since(test_start) << " s");
}

}  // namespace
}  // namespace lattice
