// The relay cluster's log (relay/cluster_log.hpp) against a real PostgreSQL: positions are
// gapless and in commit order under concurrent appends from several connections, so a reader
// never skips one; a batch is logged once however often it is appended; what was acknowledged
// survives the server's crash; LISTEN wakes a reader, and one whose connection was terminated
// catches up from the head after reconnecting; a small group's notification carries its
// entries, exactly as the log holds them.

#include "relay/cluster_log.hpp"

#include <doctest/doctest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "crdt/error.hpp"
#include "tests/relay/postgres_server.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using relay::ClusterLog;
using relay::LogEntry;
using std::chrono::milliseconds;

crdt::SiteId site_number(int n) {
  crdt::SiteId site;
  site.bytes[0] = static_cast<std::uint8_t>(n);
  site.bytes[15] = 0xA5;
  return site;
}

// The bytes a test batch of `site` from `first_seq` holds: recognisable, of varying length, with
// zeros and high bytes (bytea must keep them all).
std::string batch_of(int site, std::uint64_t first_seq) {
  std::string bytes = "batch " + std::to_string(site) + "/" + std::to_string(first_seq) + ":";
  for (std::uint64_t i = 0; i < first_seq % 37; ++i) bytes += static_cast<char>(i * 7);
  return bytes;
}

// Runs SQL on its own connection (what an operator or a test does beside the relays).
TEST_CASE("appends from several relays take gapless positions in commit order") {
  test::PostgresServer server;
  constexpr int kWriters = 4, kPerWriter = 120;
  std::atomic<int> writers_done{0};
  std::vector<std::map<std::int64_t, std::uint64_t>> positions(kWriters);  // per writer
  std::vector<std::thread> writers;
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  for (int w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      try {
        ClusterLog log(server.conninfo());
        for (int i = 0; i < kPerWriter; ++i) {
          const std::uint64_t first_seq = 1 + static_cast<std::uint64_t>(i) * 3;
          const std::string ns = i % 4 == 3 ? "beta" : "alpha";
          const auto position = log.append(ns, site_number(w), first_seq, batch_of(w, first_seq));
          if (ns == "alpha") positions[static_cast<std::size_t>(w)][position] = first_seq;
        }
      } catch (const std::exception& e) {
        const std::lock_guard lock(failures_mutex);
        failures.push_back(e.what());
      }
      ++writers_done;
    });

  // A reader of "alpha" while they write: every read continues exactly where the last ended.
  ClusterLog reader(server.conninfo());
  std::int64_t last = 0;
  int reads = 0, gaps = 0, wrong_bytes = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    const bool finished = writers_done == kWriters;
    for (const LogEntry& entry : reader.read("alpha", last, 25).entries) {
      gaps += entry.position != last + 1;
      const int site = entry.site.bytes[0];
      wrong_bytes += entry.batch != batch_of(site, entry.first_seq);
      last = entry.position;
    }
    ++reads;
    if (finished && last == reader.head("alpha")) break;
    REQUIRE(std::chrono::steady_clock::now() < deadline);
  }
  for (auto& t : writers) t.join();
  CHECK(failures.empty());
  CHECK(gaps == 0);
  CHECK(wrong_bytes == 0);
  const int alpha = kWriters * kPerWriter * 3 / 4, beta = kWriters * kPerWriter / 4;
  CHECK(last == alpha);
  CHECK(reader.head("beta") == beta);
  CHECK(reader.head("gamma") == 0);
  // The positions the appends were given are 1..alpha, each once.
  std::set<std::int64_t> given;
  for (const auto& writer : positions)
    for (const auto& [position, first_seq] : writer) given.insert(position);
  CHECK(given.size() == static_cast<std::size_t>(alpha));
  CHECK(*given.begin() == 1);
  CHECK(*given.rbegin() == alpha);
  // Each writer's batches are in the log in the order it appended them.
  for (const auto& writer : positions) {
    std::uint64_t previous = 0;
    for (const auto& [position, first_seq] : writer) {
      CHECK(first_seq > previous);
      previous = first_seq;
    }
  }
  MESSAGE(reads << " reads of a log growing to " << alpha << " batches, no gap");
}

TEST_CASE("a batch appended again, by any relay, is logged once") {
  test::PostgresServer server;
  ClusterLog a(server.conninfo()), b(server.conninfo());
  // With the tags of the transactions the batch covers, which travel with it.
  const std::vector<crdt::TxnTag> tags = {{10, 0xfeedface12345678ull}, {11, 0x8000000000000001ull}};
  const auto first = a.append("alpha", site_number(1), 10, batch_of(1, 10), tags);
  a.append("alpha", site_number(2), 10, batch_of(2, 10));
  CHECK(a.append("alpha", site_number(1), 10, batch_of(1, 10)) == first);
  CHECK(b.append("alpha", site_number(1), 10, batch_of(1, 10)) == first);
  // The same site and first sequence in another namespace is another batch.
  CHECK(b.append("beta", site_number(1), 10, batch_of(1, 10)) == 1);
  CHECK(a.head("alpha") == 2);
  const auto entries = b.read("alpha", 0, 100).entries;
  REQUIRE(entries.size() == 2);
  CHECK(entries[0].site == site_number(1));
  CHECK(entries[0].first_seq == 10);
  CHECK(entries[0].batch == batch_of(1, 10));
  CHECK(entries[0].origin_log == tags);
  CHECK(entries[1].origin_log.empty());
  CHECK(server.query("SELECT count(*) FROM lattice_log") == "3");
}

TEST_CASE("what the log acknowledged survives PostgreSQL's crash") {
  test::PostgresServer server;
  ClusterLog log(server.conninfo());
  for (std::uint64_t i = 1; i <= 100; ++i) log.append("alpha", site_number(3), i, batch_of(3, i));
  server.kill();
  try {
    log.append("alpha", site_number(3), 101, batch_of(3, 101));
    FAIL("appended while the server was down");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kIo);
    CHECK(std::string(e.what()).find("PostgreSQL: cannot append to the log of 'alpha'") !=
          std::string::npos);
  }
  server.start();
  log.reconnect();
  CHECK(log.head("alpha") == 100);
  const auto entries = log.read("alpha", 0, 1000).entries;
  REQUIRE(entries.size() == 100);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    CHECK(entries[i].position == static_cast<std::int64_t>(i + 1));
    CHECK(entries[i].batch == batch_of(3, i + 1));
  }
  // The append that failed is not there; made again, it takes the next position.
  CHECK(log.append("alpha", site_number(3), 101, batch_of(3, 101)) == 101);
}

TEST_CASE("LISTEN wakes a reader of the namespaces it follows only; one cut catches up") {
  test::PostgresServer server;
  ClusterLog writer(server.conninfo()), reader(server.conninfo());
  CHECK(reader.follow({"alpha", "beta"}) == std::vector<std::string>{"alpha", "beta"});
  CHECK(reader.follow({"alpha", "beta"}).empty());  // already followed
  CHECK(reader.followed() == 2);
  CHECK(reader.wait_for_appends(milliseconds(50)).empty());
  // A namespace name of the longest kind (64 characters) has a channel too; "gamma" is not
  // followed and wakes nobody.
  const std::string longest(64, 'z');
  CHECK(reader.follow({"alpha", "beta", longest}) == std::vector<std::string>{longest});
  writer.append("gamma", site_number(4), 1, batch_of(4, 1));
  writer.append("alpha", site_number(4), 1, batch_of(4, 1));
  writer.append("beta", site_number(4), 1, batch_of(4, 1));
  writer.append(longest, site_number(4), 1, batch_of(4, 1));
  std::set<std::string> woken;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (woken.size() < 3 && std::chrono::steady_clock::now() < deadline)
    for (auto& appended : reader.wait_for_appends(milliseconds(500))) woken.insert(appended.ns);
  CHECK(woken == std::set<std::string>{"alpha", "beta", longest});
  // A namespace no longer followed is not notified; the wait ends early for the wake-up file
  // descriptor (the hub's "a namespace gained its first device").
  CHECK(reader.follow({"alpha"}).empty());
  writer.append("beta", site_number(4), 2, batch_of(4, 2));
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  REQUIRE(::write(pipe_fds[1], "x", 1) == 1);
  const auto before = std::chrono::steady_clock::now();
  CHECK(reader.wait_for_appends(milliseconds(5000), pipe_fds[0]).empty());
  CHECK(std::chrono::steady_clock::now() - before < std::chrono::seconds(2));
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  CHECK(reader.wait_for_appends(milliseconds(300)).empty());  // beta's append: not here

  // The reader's connection is terminated (PowerSync's stale checkpoint came from a dead
  // LISTEN connection nobody noticed): waiting says so, and after reconnecting the head tells
  // what was appended meanwhile.
  CHECK(server.query("SELECT pg_terminate_backend(" + std::to_string(reader.backend_pid()) + ")") ==
        "t");
  for (std::uint64_t i = 2; i <= 6; ++i) writer.append("alpha", site_number(4), i, batch_of(4, i));
  CHECK_THROWS_AS(
      [&] {
        for (int i = 0; i < 20; ++i) reader.wait_for_appends(milliseconds(100));
      }(),
      Error);
  reader.reconnect();
  CHECK(reader.head("alpha") == 6);
  CHECK(reader.read("alpha", 1, 100).entries.size() == 5);
  // The new connection listens to what the old one followed.
  CHECK(reader.followed() == 1);
  writer.append("beta", site_number(4), 3, batch_of(4, 3));
  writer.append("alpha", site_number(4), 7, batch_of(4, 7));
  std::vector<relay::LogAppended> after;
  for (int i = 0; i < 10 && after.empty(); ++i) after = reader.wait_for_appends(milliseconds(500));
  REQUIRE(after.size() == 1);
  CHECK(after[0].ns == "alpha");
  CHECK(after[0].entries.empty());  // lattice_log_append's notifications carry none
}

// Pruning (docs/cluster.md, "Pruning"): the log keeps everything above the newest snapshot and
// above what any relay that reported within the grace applied; a reader below the pruned
// position is told so in the same answer as the entries.
TEST_CASE("the log is pruned below the newest snapshot and every live relay's position") {
  test::PostgresServer server;
  ClusterLog log(server.conninfo());
  for (std::uint64_t i = 1; i <= 30; ++i) log.append("alpha", site_number(5), i, batch_of(5, i));
  const std::chrono::seconds grace(60);
  CHECK(log.prune("alpha", grace) == 0);  // no snapshot: nothing goes
  CHECK(log.prune("gamma", grace) == 0);  // nothing logged
  CHECK(log.read("alpha", 0, 100).entries.size() == 30);

  // A snapshot of 10 MiB and a bit travels in three pieces and comes back byte for byte.
  test::TempDir dir;
  auto write_file = [&](const std::string& name, std::size_t size, unsigned seed) {
    std::mt19937 random(seed);
    std::string bytes(size, '\0');
    for (char& c : bytes) c = static_cast<char>(random());
    std::ofstream(dir.file(name), std::ios::binary) << bytes;
    return bytes;
  };
  const std::string first = write_file("first", (10u << 20) + 123, 1);
  {
    // While another relay stores one (here: a transaction holding its lock), this one does not
    // wait: it stores nothing.
    PGconn* other = PQconnectdb(server.conninfo().c_str());
    REQUIRE(PQstatus(other) == CONNECTION_OK);
    PQclear(PQexec(other, "BEGIN"));
    PQclear(PQexec(other, "SELECT pg_advisory_xact_lock(hashtext('lattice_snapshot:alpha'))"));
    CHECK_FALSE(
        log.put_snapshot("alpha", relay::LogSnapshot{20, 3, "{manifest}"}, dir.file("first")));
    PQclear(PQexec(other, "ROLLBACK"));
    PQfinish(other);
  }
  CHECK(log.put_snapshot("alpha", relay::LogSnapshot{20, 3, "{manifest}"}, dir.file("first")));
  CHECK_FALSE(log.put_snapshot("alpha", relay::LogSnapshot{15, 3, "{}"}, dir.file("first")));
  CHECK(log.snapshot_positions({"alpha", "beta"}) ==
        std::map<std::string, std::int64_t>{{"alpha", 20}});

  // Two relays report; the lower position holds the log back, then the snapshot does.
  log.report_positions("r1", {{"alpha", 12}});
  log.report_positions("r2", {{"alpha", 25}, {"beta", 0}});
  CHECK(log.prune("alpha", grace) == 12);
  relay::LogRead read = log.read("alpha", 0, 100);
  CHECK(read.pruned == 12);
  REQUIRE(read.entries.size() == 18);
  CHECK(read.entries.front().position == 13);
  CHECK(log.read("alpha", 20, 100).entries.front().position == 21);
  log.report_positions("r1", {{"alpha", 28}});
  CHECK(log.prune("alpha", grace) == 20);
  CHECK(log.read("alpha", 0, 100).entries.front().position == 21);

  // A relay silent past the grace holds nothing back, and after ten graces it is forgotten.
  log.report_positions("r3", {{"alpha", 2}});
  server.query(
      "UPDATE lattice_relay_positions SET seen_at = now() - interval '1 hour' WHERE relay = "
      "'r3'");
  const std::string second = write_file("second", 5000, 2);
  CHECK(log.put_snapshot("alpha", relay::LogSnapshot{28, 4, "{newer}"}, dir.file("second")));
  CHECK(log.prune("alpha", grace) == 25);
  CHECK(server.query("SELECT count(*) FROM lattice_relay_positions WHERE relay = 'r3'") == "0");

  // Only the newest snapshot is kept, and it is what a fetch gives.
  CHECK(server.query("SELECT count(*) FROM lattice_snapshot_pieces") == "1");
  const auto fetched = log.fetch_snapshot("alpha", dir.file("fetched"));
  REQUIRE(fetched);
  CHECK(fetched->position == 28);
  CHECK(fetched->schema_version == 4);
  CHECK(fetched->manifest == "{newer}");
  CHECK(fetched->bytes == second.size());
  std::ifstream in(dir.file("fetched"), std::ios::binary);
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == second);
  CHECK_FALSE(log.fetch_snapshot("beta", dir.file("none")));
  CHECK_THROWS_AS(log.fetch_snapshot("alpha", dir.file("fetched")), Error);  // exists

  // Appends go on after the head, and a batch logged before stays logged once.
  CHECK(log.append("alpha", site_number(5), 31, batch_of(5, 31)) == 31);
  CHECK(log.append("alpha", site_number(5), 30, batch_of(5, 30)) == 30);
  CHECK(log.head("alpha") == 31);
}

TEST_CASE("a group's batches are appended in one statement, each once") {
  test::PostgresServer server;
  ClusterLog log(server.conninfo());
  const auto entry = [](int site, std::uint64_t first) {
    return LogEntry{0, site_number(site), first, batch_of(site, first), {{first, 7 * first}}};
  };
  CHECK(log.append_all("alpha", {}).empty());
  CHECK(log.append_all("alpha", {entry(6, 1), entry(7, 1), entry(6, 4)}) ==
        std::vector<std::int64_t>{1, 2, 3});
  // Retried after a lost answer, with a new one: the logged ones keep their positions; one
  // given twice is logged once.
  CHECK(log.append_all("alpha", {entry(7, 1), entry(6, 4), entry(6, 9), entry(6, 9)}) ==
        std::vector<std::int64_t>{2, 3, 4, 4});
  CHECK(log.head("alpha") == 4);
  const auto entries = log.read("alpha", 0, 10).entries;
  REQUIRE(entries.size() == 4);
  CHECK(entries[3].site == site_number(6));
  CHECK(entries[3].first_seq == 9);
  CHECK(entries[3].batch == batch_of(6, 9));
  REQUIRE(entries[3].origin_log.size() == 1);
  CHECK(entries[3].origin_log[0].tag == 63);
  // All or none: a batch PostgreSQL refuses (a namespace that is not UTF-8 here) logs none.
  CHECK_THROWS_AS(log.append_all("not UTF-8 \xff", {entry(8, 1)}), Error);
  CHECK(log.append_all("beta", {entry(8, 1)}) == std::vector<std::int64_t>{1});
  // A row no relay wrote so (origin and site of the wrong length) reads as a position without a
  // batch; the entries after it read as they are.
  server.query(
      "INSERT INTO lattice_log VALUES ('beta', 2, '\\x01'::bytea, 1, 'x'::bytea, "
      "'\\x010203'::bytea); UPDATE lattice_log_heads SET head = 2 WHERE ns = 'beta'");
  CHECK(log.append_all("beta", {entry(8, 5)}) == std::vector<std::int64_t>{3});
  const auto beta = log.read("beta", 0, 10).entries;
  REQUIRE(beta.size() == 3);
  CHECK(beta[1].position == 2);
  CHECK(beta[1].batch.empty());
  CHECK(beta[2].batch == batch_of(8, 5));
  // One big batch among small ones travels whole.
  LogEntry big = entry(9, 1);
  big.batch.assign(3u << 20, 'x');
  CHECK(log.append_all("alpha", {entry(9, 5), big}) == std::vector<std::int64_t>{5, 6});
  CHECK(log.read("alpha", 5, 1).entries.at(0).batch.size() == (3u << 20));
  // A read stops before the batch that would pass its byte budget, and always takes one.
  CHECK(log.read("alpha", 0, 100, 1).entries.size() == 1);
  const auto budgeted = log.read("alpha", 0, 100, 1u << 20).entries;
  REQUIRE(budgeted.size() == 5);  // position 6 holds 3 MiB
  CHECK(budgeted.back().position == 5);
  CHECK(log.read("alpha", 5, 100, 1u << 20).entries.size() == 1);
}

TEST_CASE("a group's notification carries the entries it logged when they fit in one") {
  test::PostgresServer server;
  ClusterLog writer(server.conninfo()), reader(server.conninfo());
  reader.follow({"alpha"});
  const auto entry = [](int site, std::uint64_t first) {
    return LogEntry{0, site_number(site), first, batch_of(site, first), {{first, 7 * first}}};
  };
  // The entries the notifications of the next appends carried, once `positions` of them came
  // (in as many waits as it takes); "none" when a notification carried none.
  const auto carried = [&](std::size_t positions) {
    std::vector<LogEntry> got;
    bool none = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (got.size() < positions && !none && std::chrono::steady_clock::now() < deadline)
      for (auto& appended : reader.wait_for_appends(milliseconds(250))) {
        CHECK(appended.ns == "alpha");
        none = none || appended.entries.empty();
        std::move(appended.entries.begin(), appended.entries.end(), std::back_inserter(got));
      }
    if (none) got.clear();
    return got;
  };
  const auto same = [](const LogEntry& a, const LogEntry& b) {
    return a.position == b.position && a.site == b.site && a.first_seq == b.first_seq &&
           a.batch == b.batch && a.origin_log == b.origin_log;
  };

  writer.append_all("alpha", {entry(6, 1), entry(7, 1), entry(6, 36)});  // 36: 35 bytes of 7*i
  auto got = carried(3);
  const auto logged = reader.read("alpha", 0, 10).entries;
  REQUIRE(got.size() == 3);
  REQUIRE(logged.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) CHECK(same(got[i], logged[i]));
  // A retried group: only what it logged anew travels (position 4).
  writer.append_all("alpha", {entry(7, 1), entry(6, 40)});
  got = carried(1);
  REQUIRE(got.size() == 1);
  CHECK(got[0].position == 4);
  CHECK(got[0].batch == batch_of(6, 40));
  // Two groups before the reader looks: both, in order.
  writer.append_all("alpha", {entry(8, 1)});
  writer.append_all("alpha", {entry(8, 2), entry(8, 3)});
  got = carried(3);
  REQUIRE(got.size() == 3);
  CHECK(got[0].position == 5);
  CHECK(got[2].position == 7);
  // Over 3,900 bytes (PostgreSQL's payloads stay under 8,000 bytes, as hex): the namespace alone,
  // whether one batch is too large or the group is; the reader reads them.
  LogEntry big = entry(9, 1);
  big.batch.assign(4000, 'x');
  writer.append_all("alpha", {big});
  CHECK(carried(1).empty());
  std::vector<LogEntry> many;
  for (std::uint64_t i = 1; i <= 40; ++i) {
    many.push_back(entry(10, i));
    many.back().batch.assign(100, static_cast<char>('a' + i % 26));  // 160 bytes to carry each
  }
  writer.append_all("alpha", many);
  CHECK(carried(40).empty());
  CHECK(reader.read("alpha", 8, 100).entries.size() == 40);

  // Any role that can connect may NOTIFY any channel: entries are taken only from a role that
  // may insert into the log (which could log them itself). The same forged payload, sent by a
  // role without that right, carries nothing; sent by the relays' own role, it would.
  const std::string forge =
      "SELECT pg_notify(lattice_log_channel('alpha'), 'alpha ' || encode(int8send(100::bigint) || "
      "int8send(1::bigint) || int4send(16) || decode(repeat('ab', 16), 'hex') || int4send(6) || "
      "'forged'::bytea || int4send(0), 'hex'))";
  server.query("CREATE ROLE intruder LOGIN");
  // What `user`'s connection's notification carried; the connection stays open meanwhile (the
  // check looks the notifying backend up).
  const auto forged_by = [&](const std::string& user) {
    std::string conninfo = server.conninfo();
    conninfo.replace(conninfo.find("user=lattice"), 12, "user=" + user);
    PGconn* conn = PQconnectdb(conninfo.c_str());
    REQUIRE_MESSAGE(PQstatus(conn) == CONNECTION_OK, PQerrorMessage(conn));
    PGresult* sent = PQexec(conn, forge.c_str());
    CHECK_MESSAGE(PQresultStatus(sent) == PGRES_TUPLES_OK, PQerrorMessage(conn));
    PQclear(sent);
    auto entries = carried(1);
    PQfinish(conn);
    return entries;
  };
  CHECK(forged_by("intruder").empty());
  got = forged_by("lattice");
  REQUIRE(got.size() == 1);
  CHECK(got[0].batch == "forged");
}

}  // namespace
}  // namespace lattice
