// The CRDT laws, law by law, over every mergeable type, on seeded random states; then the
// semantic cases of docs/crdt-semantics.md as sentences.
//
// Set LATTICE_SEED to replay a failing run; the seed is printed with every failure.

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <variant>

#include "crdt/registers.hpp"
#include "crdt/row.hpp"
#include "crdt/version_vector.hpp"

namespace lattice::crdt {
namespace {

constexpr int kTriples = 2000;

std::uint64_t test_seed() {
  if (const char* env = std::getenv("LATTICE_SEED"); env != nullptr && *env != '\0') {
    return std::strtoull(env, nullptr, 10);
  }
  return 20240601;
}

// Three sites, so that random states share sites and collide.
const std::array<SiteId, 3> kSites = {
    SiteId::from_hex("11000000000000000000000000000000"),
    SiteId::from_hex("22000000000000000000000000000000"),
    SiteId::from_hex("33000000000000000000000000000000"),
};

using Rng = std::mt19937_64;

std::uint64_t pick(Rng& rng, std::uint64_t lo, std::uint64_t hi) {
  return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
}
bool chance(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }

// A small clock range so that equal HLCs on different sites are common.
Stamp random_stamp(Rng& rng) {
  return Stamp{Hlc::from_parts(1000 + pick(rng, 0, 1), pick(rng, 0, 2)), kSites[pick(rng, 0, 2)]};
}

// A version names one write, so the generators derive the value from the version: two states
// never disagree about what a given write wrote. The hash makes values sort in no relation to
// their versions, so a merge that compared values would be caught.
std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
std::uint64_t hash_version(std::uint64_t salt, const CellVersion& v) {
  std::uint64_t h = mix(salt + 0x9e3779b97f4a7c15ULL);
  h = mix(h ^ v.causal_length);
  h = mix(h ^ v.stamp.hlc.value);
  for (std::uint8_t b : v.stamp.site.bytes) h = mix(h ^ b);
  return h;
}
Value value_for(std::uint64_t salt, const CellVersion& v) {
  const std::uint64_t h = hash_version(salt, v);
  switch (h % 5) {
    case 0:
      return std::monostate{};
    case 1:
      return static_cast<std::int64_t>(h >> 8) - (std::int64_t{1} << 54);
    case 2:
      return static_cast<double>(h >> 40) / 7.0;  // never NaN
    case 3:
      return std::string(1 + (h >> 8) % 4, static_cast<char>('a' + (h >> 16) % 26));
    default:
      return Blob{std::string(1 + (h >> 8) % 3, static_cast<char>((h >> 24) & 0xff))};
  }
}
CounterPart part_for(std::uint64_t salt, std::size_t site, std::uint64_t cl, std::uint64_t seq) {
  const std::uint64_t h = mix(mix(mix(salt ^ site) ^ cl) ^ seq);
  return CounterPart{cl, seq, static_cast<std::int64_t>(h % 201) - 100};
}

// --- Generators and descriptions, one per mergeable type ---------------------------------------

template <class T>
struct Arbitrary;

template <>
struct Arbitrary<VersionVector> {
  static VersionVector generate(Rng& rng) {
    VersionVector v;
    for (const SiteId& site : kSites) {
      if (chance(rng, 0.7)) v.advance(site, pick(rng, 0, 4));
    }
    return v;
  }
  static std::string describe(const VersionVector& v) { return v.to_json(); }
};

template <>
struct Arbitrary<CausalLength> {
  static CausalLength generate(Rng& rng) { return CausalLength{pick(rng, 0, 5)}; }
  static std::string describe(const CausalLength& c) { return "cl" + std::to_string(c.value); }
};

std::string describe_version(const CellVersion& v) {
  std::ostringstream out;
  out << "(cl" << v.causal_length << " " << v.stamp.hlc.physical_ms() << "."
      << v.stamp.hlc.logical() << " site " << v.stamp.site.to_hex().substr(0, 2) << ")";
  return out.str();
}

std::string describe_value(const Value& value) {
  std::ostringstream out;
  std::visit(
      [&out](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::monostate>) {
          out << "null";
        } else if constexpr (std::is_same_v<V, Blob>) {
          out << "blob[" << v.bytes.size() << "]";
        } else if constexpr (std::is_same_v<V, std::string>) {
          out << '"' << v << '"';
        } else {
          out << v;
        }
      },
      value);
  return out.str();
}

template <>
struct Arbitrary<LwwRegister<Value>> {
  static LwwRegister<Value> generate(Rng& rng) {
    LwwRegister<Value> r;
    r.version = CellVersion{pick(rng, 0, 2), random_stamp(rng)};
    r.value = value_for(0, r.version);
    return r;
  }
  static std::string describe(const LwwRegister<Value>& r) {
    return describe_version(r.version) + "=" + describe_value(r.value);
  }
};

std::string describe_counter(const PnCounter& c) {
  std::ostringstream out;
  out << "{";
  for (const auto& [site, part] : c.parts()) {
    out << " " << site.to_hex().substr(0, 2) << ":(cl" << part.causal_length << " seq" << part.seq
        << " " << part.total << ")";
  }
  out << " }";
  return out.str();
}

PnCounter random_counter(Rng& rng, std::uint64_t salt, std::uint64_t max_incarnation) {
  PnCounter c;
  for (std::size_t s = 0; s < kSites.size(); ++s) {
    if (!chance(rng, 0.6)) continue;
    // Odd causal lengths: counters are written in live incarnations.
    const std::uint64_t cl = 2 * pick(rng, 0, max_incarnation) + 1;
    c.merge_part(kSites[s], part_for(salt, s, cl, pick(rng, 0, 3)));
  }
  return c;
}

template <>
struct Arbitrary<PnCounter> {
  static PnCounter generate(Rng& rng) { return random_counter(rng, 0, 1); }
  static std::string describe(const PnCounter& c) { return describe_counter(c); }
};

template <>
struct Arbitrary<RowState> {
  // Liveness and columns are drawn independently, so states include a cell of an incarnation
  // newer than the state's liveness: what a replica holds after receiving a write before the
  // insert that started its incarnation. That is the case where merge raises liveness.
  static RowState generate(Rng& rng) {
    RowState row;
    const std::uint64_t cl = pick(rng, 0, 4);
    row.liveness = cl == 0 ? CellVersion{} : CellVersion{cl, random_stamp(rng)};
    for (ColumnId column = 1; column <= 3; ++column) {
      if (!chance(rng, 0.5)) continue;
      LwwRegister<Value> cell;
      cell.version = CellVersion{2 * pick(rng, 0, 1) + 1, random_stamp(rng)};
      cell.value = value_for(column, cell.version);
      row.cells.emplace(column, cell);
    }
    for (ColumnId column = 10; column <= 11; ++column) {
      if (chance(rng, 0.4)) row.counters.emplace(column, random_counter(rng, column, 1));
    }
    return row;
  }
  static std::string describe(const RowState& row) {
    std::string out = "{liveness " + describe_version(row.liveness);
    for (const auto& [column, cell] : row.cells) {
      out += ", c" + std::to_string(column) + " " + Arbitrary<LwwRegister<Value>>::describe(cell);
    }
    for (const auto& [column, counter] : row.counters) {
      out += ", n" + std::to_string(column) + " " + describe_counter(counter);
    }
    return out + "}";
  }
};

template <class T>
T merged(T a, const T& b) {
  a.merge(b);
  return a;
}

// The states a merge can produce. Idempotence is a law over these: a hand-built row whose
// cells are newer than its liveness is normalised by its first merge (see crdt/row.cpp).
template <class T>
T reachable(const T& a) {
  return merged(a, T{});
}

#define LATTICE_MERGEABLE_TYPES VersionVector, CausalLength, LwwRegister<Value>, PnCounter, RowState

// --- The laws --------------------------------------------------------------------------------

TEST_CASE_TEMPLATE("merge is commutative: merge(a, b) == merge(b, a)", T, LATTICE_MERGEABLE_TYPES) {
  const std::uint64_t seed = test_seed();
  INFO("LATTICE_SEED=" << seed);
  Rng rng(seed);
  for (int i = 0; i < kTriples; ++i) {
    const T a = Arbitrary<T>::generate(rng);
    const T b = Arbitrary<T>::generate(rng);
    const T ab = merged(a, b);
    const T ba = merged(b, a);
    INFO("triple " << i << "\n  a = " << Arbitrary<T>::describe(a)
                   << "\n  b = " << Arbitrary<T>::describe(b)
                   << "\n  merge(a, b) = " << Arbitrary<T>::describe(ab)
                   << "\n  merge(b, a) = " << Arbitrary<T>::describe(ba));
    REQUIRE(ab == ba);
  }
}

TEST_CASE_TEMPLATE("merge is associative: merge(merge(a, b), c) == merge(a, merge(b, c))", T,
                   LATTICE_MERGEABLE_TYPES) {
  const std::uint64_t seed = test_seed();
  INFO("LATTICE_SEED=" << seed);
  Rng rng(seed + 1);
  for (int i = 0; i < kTriples; ++i) {
    const T a = Arbitrary<T>::generate(rng);
    const T b = Arbitrary<T>::generate(rng);
    const T c = Arbitrary<T>::generate(rng);
    const T left = merged(merged(a, b), c);
    const T right = merged(a, merged(b, c));
    INFO("triple " << i << "\n  a = " << Arbitrary<T>::describe(a) << "\n  b = "
                   << Arbitrary<T>::describe(b) << "\n  c = " << Arbitrary<T>::describe(c)
                   << "\n  merge(merge(a, b), c) = " << Arbitrary<T>::describe(left)
                   << "\n  merge(a, merge(b, c)) = " << Arbitrary<T>::describe(right));
    REQUIRE(left == right);
  }
}

TEST_CASE_TEMPLATE("merge is idempotent: merge(a, a) == a", T, LATTICE_MERGEABLE_TYPES) {
  const std::uint64_t seed = test_seed();
  INFO("LATTICE_SEED=" << seed);
  Rng rng(seed + 2);
  for (int i = 0; i < kTriples; ++i) {
    const T raw = Arbitrary<T>::generate(rng);
    const T a = reachable(raw);
    INFO("state " << i << "\n  generated = " << Arbitrary<T>::describe(raw)
                  << "\n  a = " << Arbitrary<T>::describe(a));
    REQUIRE(merged(a, a) == a);
    // Merging a hand-built state with itself normalises it exactly as merging with nothing.
    REQUIRE(merged(raw, raw) == a);
  }
}

TEST_CASE_TEMPLATE("the empty state is the identity of merge", T, LATTICE_MERGEABLE_TYPES) {
  const std::uint64_t seed = test_seed();
  INFO("LATTICE_SEED=" << seed);
  Rng rng(seed + 3);
  for (int i = 0; i < kTriples; ++i) {
    const T a = reachable(Arbitrary<T>::generate(rng));
    INFO("state " << i << ": " << Arbitrary<T>::describe(a));
    REQUIRE(merged(a, T{}) == a);
    REQUIRE(merged(T{}, a) == a);
  }
}

TEST_CASE("the generators produce ties and raised rows, so the laws are exercised") {
  Rng rng(test_seed());
  int equal_clock_different_site = 0;
  int raised = 0;
  for (int i = 0; i < kTriples; ++i) {
    const auto a = Arbitrary<LwwRegister<Value>>::generate(rng);
    const auto b = Arbitrary<LwwRegister<Value>>::generate(rng);
    if (a.version.causal_length == b.version.causal_length &&
        a.version.stamp.hlc == b.version.stamp.hlc &&
        a.version.stamp.site != b.version.stamp.site) {
      ++equal_clock_different_site;
    }
    const RowState row = Arbitrary<RowState>::generate(rng);
    if (reachable(row).liveness != row.liveness) ++raised;
  }
  CHECK(equal_clock_different_site > kTriples / 50);
  CHECK(raised > kTriples / 10);
}

// --- Semantic cases ---------------------------------------------------------------------------

const SiteId kA = kSites[0];
const SiteId kB = kSites[1];
const SiteId kC = kSites[2];

Stamp at(std::uint64_t ms, const SiteId& site) { return Stamp{Hlc::from_parts(ms, 0), site}; }

// Both orders of merging, which must agree.
RowState converge(const RowState& x, const RowState& y) {
  const RowState xy = merged(x, y);
  REQUIRE(xy == merged(y, x));
  return xy;
}

TEST_CASE("a delete beats a concurrent update of the same row") {
  RowState base;
  base.liveness = CellVersion{1, at(100, kA)};  // inserted by A
  base.cells[1] = {CellVersion{1, at(100, kA)}, Value{std::string("draft")}};

  RowState deleted = base;  // A deletes at 200
  deleted.liveness = CellVersion{2, at(200, kA)};

  RowState updated = base;  // B updates later by the clock, without having seen the delete
  updated.cells[1] = {CellVersion{1, at(300, kB)}, Value{std::string("final")}};

  const RowState result = converge(deleted, updated);
  CHECK_FALSE(result.alive());
  CHECK(result.causal_length() == 2);
  CHECK(result.liveness == deleted.liveness);
}

TEST_CASE("a re-insert made after seeing a delete beats a concurrent delete of the old row") {
  RowState base;
  base.liveness = CellVersion{1, at(100, kA)};

  RowState reinserted = base;  // B sees A's delete (cl 2), then inserts again: cl 3
  reinserted.liveness = CellVersion{3, at(300, kB)};
  reinserted.cells[1] = {CellVersion{3, at(300, kB)}, Value{std::int64_t{7}}};

  RowState deleted = base;  // C deletes the first incarnation, later by the clock
  deleted.liveness = CellVersion{2, at(900, kC)};

  const RowState result = converge(reinserted, deleted);
  CHECK(result.alive());
  CHECK(result.causal_length() == 3);
  CHECK(result.cells.at(1).value == Value{std::int64_t{7}});
}

TEST_CASE("two concurrent re-inserts give one live row whose columns merge by last writer") {
  RowState a;  // both saw the delete (cl 2) and re-inserted: both at cl 3
  a.liveness = CellVersion{3, at(500, kA)};
  a.cells[1] = {CellVersion{3, at(500, kA)}, Value{std::string("from a")}};
  a.cells[2] = {CellVersion{3, at(500, kA)}, Value{std::string("only a")}};
  RowState b;
  b.liveness = CellVersion{3, at(400, kB)};
  b.cells[1] = {CellVersion{3, at(400, kB)}, Value{std::string("from b")}};

  const RowState result = converge(a, b);
  CHECK(result.alive());
  CHECK(result.causal_length() == 3);
  CHECK(result.cells.at(1).value == Value{std::string("from a")});
  CHECK(result.cells.at(2).value == Value{std::string("only a")});
}

TEST_CASE("last-writer-wins breaks a clock tie by site id, never by value") {
  const Hlc same = Hlc::from_parts(1000, 3);
  LwwRegister<Value> from_a{CellVersion{1, Stamp{same, kA}}, Value{std::int64_t{100}}};
  LwwRegister<Value> from_b{CellVersion{1, Stamp{same, kB}}, Value{std::int64_t{1}}};
  REQUIRE(kA < kB);
  CHECK(merged(from_a, from_b) == from_b);
  CHECK(merged(from_b, from_a) == from_b);
  // And with the values swapped, the same site still wins.
  std::swap(from_a.value, from_b.value);
  CHECK(merged(from_a, from_b).value == Value{std::int64_t{100}});
}

TEST_CASE("a write to a newer incarnation beats any write to an older one") {
  LwwRegister<Value> late_old{CellVersion{1, at(9000, kC)}, Value{std::string("old row")}};
  LwwRegister<Value> early_new{CellVersion{3, at(10, kA)}, Value{std::string("new row")}};
  CHECK(merged(late_old, early_new) == early_new);
  CHECK(merged(early_new, late_old) == early_new);
}

TEST_CASE("concurrent increments on two sites add up") {
  PnCounter on_a;
  on_a.add(kA, 1, 1, +1);
  PnCounter on_b;
  on_b.add(kB, 1, 1, +1);
  PnCounter result = merged(on_a, on_b);
  CHECK(result.value(1) == 2);
  CHECK(result == merged(on_b, on_a));
  // Receiving the same increment again does not count it twice.
  result.merge(on_a);
  result.merge(on_b);
  CHECK(result.value(1) == 2);
}

TEST_CASE("add keeps a running total per site within an incarnation") {
  PnCounter c;
  c.add(kA, 1, 1, 5);
  c.add(kA, 1, 4, -2);
  c.add(kA, 1, 3, 10);  // an older sequence still counts; seq stays the highest seen
  CHECK(c.parts().at(kA) == CounterPart{1, 4, 13});
  CHECK(c.value(1) == 13);
  CHECK(c.value(3) == 0);
}

TEST_CASE("a counter part from an older incarnation is replaced") {
  PnCounter c;
  c.add(kA, 1, 8, 50);
  c.add(kA, 3, 9, 2);  // the row was deleted and inserted again: the count starts over
  CHECK(c.parts().at(kA) == CounterPart{3, 9, 2});
  CHECK(c.value(3) == 2);
  CHECK(c.value(1) == 0);

  // An increment to the deleted incarnation is lost with it.
  c.add(kA, 1, 10, 100);
  CHECK(c.parts().at(kA) == CounterPart{3, 9, 2});

  PnCounter old_part;
  old_part.merge_part(kB, CounterPart{1, 20, 500});
  PnCounter new_part;
  new_part.merge_part(kB, CounterPart{3, 1, 1});
  CHECK(merged(old_part, new_part).parts().at(kB) == CounterPart{3, 1, 1});
  CHECK(merged(new_part, old_part).parts().at(kB) == CounterPart{3, 1, 1});
}

TEST_CASE("merging never compares values") {
  SUBCASE("last-writer-wins keeps the higher version even when its value sorts lower") {
    LwwRegister<Value> older{CellVersion{1, at(100, kA)}, Value{std::string("zzz")}};
    LwwRegister<Value> newer{CellVersion{1, at(200, kA)}, Value{std::string("aaa")}};
    CHECK(merged(older, newer) == newer);
    CHECK(merged(newer, older) == newer);
    // Nor does the type of the value matter: a NULL written later beats an integer.
    LwwRegister<Value> null_later{CellVersion{1, at(300, kA)}, Value{}};
    CHECK(merged(newer, null_later).value == Value{});
  }
  SUBCASE("a counter keeps a newer part with a smaller total") {
    PnCounter bigger;
    bigger.merge_part(kA, CounterPart{1, 4, 90});
    PnCounter newer_smaller;
    newer_smaller.merge_part(kA, CounterPart{1, 5, -3});
    CHECK(merged(bigger, newer_smaller).value(1) == -3);
    CHECK(merged(newer_smaller, bigger).value(1) == -3);
  }
  SUBCASE("an opaque value a relay cannot read merges the same way") {
    LwwRegister<Value> x{CellVersion{1, at(100, kB)}, Value{Blob{std::string("\x8f\x01", 2)}}};
    LwwRegister<Value> y{CellVersion{1, at(100, kC)}, Value{Blob{std::string("\x00\x7e", 2)}}};
    CHECK(merged(x, y) == y);
  }
}

TEST_CASE("a write to a newer incarnation that arrives before its insert raises the row") {
  RowState replica;
  replica.liveness = CellVersion{2, at(200, kA)};  // deleted here

  RowState write;  // B re-inserted (cl 3) and wrote a cell; only the cell arrives first
  write.cells[1] = {CellVersion{3, at(310, kB)}, Value{std::int64_t{1}}};

  RowState raised = converge(replica, write);
  CHECK(raised.alive());
  CHECK(raised.liveness == CellVersion{3, Stamp{}});

  // The insert itself, arriving later, replaces the placeholder.
  RowState insert;
  insert.liveness = CellVersion{3, at(300, kB)};
  const RowState result = converge(raised, insert);
  CHECK(result.liveness == insert.liveness);
  CHECK(result == converge(replica, converge(write, insert)));
}

TEST_CASE("a counter part of a newer incarnation raises the row like a cell does") {
  RowState replica;
  replica.liveness = CellVersion{1, at(100, kA)};
  RowState write;
  write.counters[10].merge_part(kB, CounterPart{3, 1, 4});
  const RowState result = converge(replica, write);
  CHECK(result.liveness == CellVersion{3, Stamp{}});
  CHECK(result.counters.at(10).value(result.causal_length()) == 4);
}

// Found by the associativity law: with the raised liveness taking the stamp of the cell that
// raised it, a raised (3, t9) beat the real insert (3, t5) in one grouping but not the other.
TEST_CASE("regression: a liveness raised by a cell loses a tie of causal length to a real one") {
  RowState a;
  a.liveness = CellVersion{1, at(100, kA)};
  a.cells[1] = {CellVersion{3, at(900, kA)}, Value{std::int64_t{9}}};
  RowState c;
  c.liveness = CellVersion{3, at(500, kC)};

  const RowState left = merged(merged(a, RowState{}), c);
  const RowState right = merged(a, merged(RowState{}, c));
  CHECK(left == right);
  CHECK(left.liveness == c.liveness);
}

}  // namespace
}  // namespace lattice::crdt
