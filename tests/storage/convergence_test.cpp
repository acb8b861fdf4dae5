// Randomized convergence: several replicas make random writes to the same rows and exchange
// changesets in random order, late, duplicated and stale; at the end every replica must hold
// identical rows. A failing run prints its seed; LATTICE_SEED=<seed> replays it exactly.

#include <doctest/doctest.h>

#include <deque>
#include <random>

#include "crdt/changeset_codec.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

struct Simulation {
  std::mt19937_64 rng;
  std::vector<std::unique_ptr<storage::Replica>> replicas;
  // Changesets in flight: (destination, encoded bytes). Delivered in random order.
  std::vector<std::pair<std::size_t, std::string>> in_flight;
  int key_space;
  std::size_t operations = 0;

  Simulation(std::uint64_t seed, std::size_t replica_count, int keys) : rng(seed), key_space(keys) {
    for (std::size_t i = 0; i < replica_count; ++i) replicas.push_back(test::open_todo_replica());
  }

  std::size_t pick(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
  }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng); }
  std::string key() { return "k" + std::to_string(pick(static_cast<std::size_t>(key_space))); }
  std::string title() { return "t" + std::to_string(pick(1000)); }

  void random_write(storage::Replica& r) {
    const std::string k = key();
    switch (pick(9)) {
      case 0:
      case 1:
        r.query("INSERT INTO todo(id, title, votes) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                {k, title(), std::int64_t(pick(5))});
        break;
      case 2:
        r.query("UPDATE todo SET title = ? WHERE id = ?", {title(), k});
        break;
      case 3:
        r.query("UPDATE todo SET done = 1 - done, title = ? WHERE id = ?", {title(), k});
        break;
      case 4:
      case 5:
        r.query("UPDATE todo SET votes = votes + ? WHERE id = ?", {std::int64_t(pick(7)) - 3, k});
        break;
      case 6:
        r.query("DELETE FROM todo WHERE id = ?", {k});
        break;
      case 7:
        r.query(
            "INSERT INTO todo(id, title) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
            "title = excluded.title, votes = votes + 1",
            {k, title()});
        break;
      case 8:
        // A transaction of several writes, sometimes with a savepoint rolled back.
        r.exec("BEGIN");
        r.query("INSERT OR REPLACE INTO todo(id, title, done, votes) VALUES (?, ?, 0, ?)",
                {k, title(), std::int64_t(pick(3))});
        if (chance(0.5)) {
          r.exec("SAVEPOINT s");
          r.query("DELETE FROM todo WHERE id = ?", {key()});
          r.exec(chance(0.5) ? "ROLLBACK TO s; RELEASE s" : "RELEASE s");
        }
        r.query("UPDATE todo SET votes = votes + 2 WHERE id = ?", {key()});
        r.exec("COMMIT");
        break;
    }
    ++operations;
  }

  // Sends `from`'s changes to `to`: usually what `to` lacks, sometimes everything, sometimes
  // relative to a vector that is not `to`'s (a stale or foreign one).
  void send(std::size_t from, std::size_t to) {
    crdt::VersionVector since;
    const auto kind = pick(10);
    if (kind < 7)
      since = replicas[to]->version_vector();
    else if (kind < 9)
      since = replicas[pick(replicas.size())]->version_vector();
    // Sometimes only a chunk of it, cut at a transaction boundary.
    const crdt::Changeset changeset = chance(0.3)
                                          ? replicas[from]->changes_since(since, 1 + pick(40))
                                          : replicas[from]->changes_since(since);
    in_flight.emplace_back(to, crdt::encode_changeset(changeset));
  }

  void deliver_one() {
    const std::size_t i = pick(in_flight.size());
    const auto [to, bytes] = in_flight[i];
    if (!chance(0.15)) {  // otherwise keep it in flight: it will arrive again, duplicated
      in_flight[i] = std::move(in_flight.back());
      in_flight.pop_back();
    }
    replicas[to]->apply(crdt::decode_changeset(bytes));
  }

  void run(std::size_t total_operations) {
    while (operations < total_operations) {
      const auto action = pick(20);
      if (action < 14) {
        random_write(*replicas[pick(replicas.size())]);
      } else if (action < 17) {
        const std::size_t from = pick(replicas.size()), to = pick(replicas.size());
        if (from != to) send(from, to);
      } else if (!in_flight.empty()) {
        deliver_one();
      }
    }
    // Everything still in flight arrives, in random order.
    while (!in_flight.empty()) {
      const std::size_t i = pick(in_flight.size());
      const auto [to, bytes] = in_flight[i];
      in_flight[i] = std::move(in_flight.back());
      in_flight.pop_back();
      replicas[to]->apply(crdt::decode_changeset(bytes));
    }
  }

  // Exchanges what each lacks until nothing moves: a ring, then everyone with the first.
  void settle() {
    for (int round = 0; round < 3; ++round)
      for (std::size_t i = 0; i < replicas.size(); ++i)
        for (std::size_t j = 0; j < replicas.size(); ++j)
          if (i != j) replicas[j]->apply(replicas[i]->changes_since(replicas[j]->version_vector()));
  }
};

void check_convergence(std::uint64_t seed, std::size_t replicas, int keys, std::size_t ops) {
  INFO("seed " << seed << " (replay with LATTICE_SEED=" << seed << ")");
  Simulation sim(seed, replicas, keys);
  sim.run(ops);
  sim.settle();
  const std::string expected = test::dump_table(*sim.replicas[0], "todo");
  const crdt::VersionVector expected_vv = sim.replicas[0]->version_vector();
  for (std::size_t i = 1; i < sim.replicas.size(); ++i) {
    INFO("replica " << i);
    CHECK(test::dump_table(*sim.replicas[i], "todo") == expected);
    CHECK(sim.replicas[i]->version_vector().to_json() == expected_vv.to_json());
  }
  // Every replica's change log now has nothing the others lack.
  for (auto& r : sim.replicas) CHECK(r->changes_since(expected_vv).rows.empty());
}

TEST_CASE("replicas converge after 20,000 random writes exchanged late, duplicated and reordered") {
  const std::uint64_t seed = test::seed_from_env(20261126);
  check_convergence(seed, 5, 40, test::scaled(20000));
}

TEST_CASE("replicas converge when a few keys are fought over by many writers") {
  for (std::uint64_t seed : {1u, 2u, 3u}) check_convergence(test::seed_from_env(seed), 4, 4, 1500);
}

}  // namespace
}  // namespace lattice
