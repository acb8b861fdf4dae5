// What a peer may claim (transport/claims.hpp): the checks the relay applies to a device's
// changes before merging, and what each side strips from what it sends or receives. Each case
// is an attack of issue 10 or the honest frame next to it.

#include "transport/claims.hpp"

#include <doctest/doctest.h>

#include <random>

namespace lattice::transport {
namespace {

crdt::SiteId site(std::uint64_t n) {
  std::mt19937_64 rng(n);
  return crdt::SiteId::random(rng);
}

const crdt::SiteId kDevice = site(1), kVictim = site(2);

crdt::VersionVector vv(std::initializer_list<std::pair<crdt::SiteId, std::uint64_t>> entries) {
  crdt::VersionVector out;
  for (const auto& [s, seq] : entries) out.advance(s, seq);
  return out;
}

// A row with one counter part of sites[0] at `seq`.
crdt::Changeset with_counter(const crdt::SiteId& writer, std::uint64_t seq) {
  crdt::Changeset c;
  c.sites = {writer};
  crdt::RowChange row;
  row.table = 1;
  row.primary_key = "k";
  row.counters.push_back({2, 0, crdt::CounterPart{1, seq, 5}});
  c.rows.push_back(row);
  return c;
}

std::optional<std::string> check(const crdt::Changeset& c, const std::vector<crdt::TxnTag>& log,
                                 const crdt::VersionVector& relay, std::uint64_t untagged = 0) {
  return check_device_changes(c, log, kDevice, relay, untagged);
}

TEST_CASE("an honest batch of the device's own transactions, each listed, passes") {
  crdt::Changeset c = with_counter(kDevice, 7);
  c.since = vv({{kDevice, 5}, {kVictim, 3}});
  c.until = vv({{kDevice, 7}, {kVictim, 3}});
  CHECK_FALSE(check(c, {{6, 60}, {7, 70}}, vv({{kDevice, 5}, {kVictim, 9}})));
}

TEST_CASE("a claim about another site beyond what the relay holds is refused") {
  // Issue 10, finding 1: an empty changeset claiming {victim: 1000000}.
  crdt::Changeset c;
  c.until = vv({{kVictim, 1'000'000}});
  const auto why = check(c, {}, vv({{kVictim, 12}}));
  REQUIRE(why);
  CHECK(why->find("through 1000000, but the relay holds it through 12") != std::string::npos);
  // Within what the relay holds it says nothing new and passes.
  c.until = vv({{kVictim, 12}});
  CHECK_FALSE(check(c, {}, vv({{kVictim, 12}})));
}

TEST_CASE("another site's stamps are refused whatever their sequence numbers") {
  const auto why = check(with_counter(kVictim, 1), {}, vv({{kVictim, 12}}));
  REQUIRE(why);
  CHECK(why->find("a device sends only its own writes") != std::string::npos);
}

TEST_CASE("sequence numbers past 2^62 are refused anywhere in a changeset") {
  crdt::Changeset c;
  c.until = vv({{kDevice, (std::uint64_t{1} << 63) - 1}});
  REQUIRE(check(c, {}, {}));
  CHECK(check(c, {}, {})->find("over the largest sequence") != std::string::npos);
  crdt::Changeset big_stamp = with_counter(kDevice, kMaxSequence + 1);
  big_stamp.until = vv({{kDevice, 1}});
  CHECK(check(big_stamp, {{1, 1}}, {}));
}

TEST_CASE("own transactions the relay is to count must be listed in the origin log") {
  crdt::Changeset c;
  c.until = vv({{kDevice, 4}});
  const auto why = check(c, {{1, 10}, {2, 20}, {4, 40}}, {});
  REQUIRE(why);
  CHECK(why->find("own transaction 3") != std::string::npos);
  CHECK_FALSE(check(c, {{1, 10}, {2, 20}, {3, 30}, {4, 40}}, {}));
  // Up to the acked_seq of its hello, a relay restored from a backup takes them untagged.
  CHECK_FALSE(check(c, {{4, 40}}, {}, /*untagged=*/3));
  // Own stamps past the own until are refused: no planting writes at future sequence numbers.
  crdt::Changeset ahead = with_counter(kDevice, 9);
  ahead.until = vv({{kDevice, 1}});
  CHECK(check(ahead, {{1, 10}}, {}));
  // Log entries outside (since, until] or out of order are refused.
  CHECK(check(c, {{1, 10}, {2, 20}, {3, 30}, {4, 40}, {9, 90}}, {}));
  CHECK(check(c, {{2, 20}, {1, 10}, {3, 30}, {4, 40}}, {}));
}

TEST_CASE("a device sends only its own writes and claims nothing new of other sites") {
  crdt::Changeset c = with_counter(kVictim, 8);
  crdt::RowChange own_row;
  own_row.table = 1;
  own_row.primary_key = "mine";
  own_row.counters.push_back({2, 1, crdt::CounterPart{1, 3, 1}});
  c.rows.push_back(own_row);
  c.sites = {kVictim, kDevice};
  c.since = vv({{kVictim, 5}});
  c.until = vv({{kVictim, 8}, {kDevice, 3}});
  const crdt::Changeset out = own_changes_only(c, kDevice);
  REQUIRE(out.rows.size() == 1);
  CHECK(out.rows[0].primary_key == "mine");
  CHECK(out.until == vv({{kVictim, 5}, {kDevice, 3}}));
  CHECK_FALSE(check_device_changes(out, {{1, 1}, {2, 2}, {3, 3}}, kDevice, vv({{kVictim, 5}}), 0));
}

TEST_CASE("a relay cannot move a device's own sequence counter") {
  // Issue 10, finding 1: a claim of 2^63-1 for a connected victim, forwarded by the relay.
  crdt::Changeset c = with_counter(kDevice, 50);
  c.until = vv({{kDevice, (std::uint64_t{1} << 63) - 1}, {kVictim, 4}});
  const crdt::Changeset out = clamp_own_claims(c, kDevice, 10);
  CHECK(out.until == vv({{kDevice, 10}, {kVictim, 4}}));
  CHECK(out.rows.empty());  // its own write at 50 is one it never made
}

TEST_CASE("vectors with too many entries or wild sequence numbers are named") {
  crdt::VersionVector wild = vv({{kVictim, kMaxSequence + 1}});
  REQUIRE(check_vector(wild, "hello.held"));
  CHECK(check_vector(wild, "hello.held")->find("hello.held claims site") != std::string::npos);
  CHECK_FALSE(check_vector(vv({{kVictim, kMaxSequence}}), "hello.held"));
}

}  // namespace
}  // namespace lattice::transport
