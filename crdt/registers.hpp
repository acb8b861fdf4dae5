#pragma once
// The merge rules of Lattice's column types and of row liveness. Every merge here is a pure,
// total function that is commutative, associative and idempotent, and none of them looks at a
// cell's value: they order metadata only, so a relay can merge values it cannot read.
// docs/crdt-semantics.md states the rules with examples.

#include <compare>
#include <cstdint>
#include <map>
#include <tuple>

#include "crdt/hlc.hpp"
#include "crdt/site_id.hpp"
#include "crdt/value.hpp"

namespace lattice::crdt {

// Who wrote, and when: the total order of last-writer-wins. Ties on the clock fall to the site id.
struct Stamp {
  Hlc hlc;
  SiteId site;
  auto operator<=>(const Stamp&) const = default;
};

// Row liveness by causal length: odd means present, even means deleted. Every insert of an
// absent row and every delete of a present one adds one. Merge takes the maximum, so a delete
// beats a concurrent update of the same incarnation and a re-insert made after seeing a delete
// beats a concurrent delete of the older incarnation.
struct CausalLength {
  std::uint64_t value = 0;

  bool alive() const { return value % 2 == 1; }
  // The length after a local insert of this row: the next odd number (unchanged if alive).
  CausalLength inserted() const { return {alive() ? value : value + 1}; }
  // The length after a local delete: the next even number (unchanged if already deleted).
  CausalLength deleted() const { return {alive() ? value + 1 : value}; }
  void merge(const CausalLength& other) {
    if (other.value > value) value = other.value;
  }
  auto operator<=>(const CausalLength&) const = default;
};

// The version of one last-writer-wins cell: the row incarnation it was written in, then the
// stamp. A write to a newer incarnation beats any write to an older one.
struct CellVersion {
  std::uint64_t causal_length = 0;
  Stamp stamp;
  auto operator<=>(const CellVersion&) const = default;
};

// A last-writer-wins register: the value with the greatest version wins, whatever the values.
template <class V = Value>
struct LwwRegister {
  CellVersion version;
  V value{};

  void merge(const LwwRegister& other) {
    if (other.version > version) *this = other;
  }
  bool operator==(const LwwRegister&) const = default;
};

// One site's share of a counter: the running total of that site's own increments within one
// row incarnation, versioned by that site's sequence number. A newer (incarnation, sequence)
// replaces an older one; the total is never compared.
struct CounterPart {
  std::uint64_t causal_length = 0;
  std::uint64_t seq = 0;
  std::int64_t total = 0;

  bool newer_than(const CounterPart& other) const {
    return std::tie(causal_length, seq) > std::tie(other.causal_length, other.seq);
  }
  bool operator==(const CounterPart&) const = default;
};

// A PN-counter with one component per site (see CounterPart). Its value in incarnation `cl` is
// the sum of the components written in that incarnation.
class PnCounter {
 public:
  // Records `delta` added by `site` at its sequence `seq` in incarnation `cl`.
  void add(const SiteId& site, std::uint64_t cl, std::uint64_t seq, std::int64_t delta);
  // Keeps, per site, the newer component.
  void merge(const PnCounter& other);
  void merge_part(const SiteId& site, const CounterPart& part);
  std::int64_t value(std::uint64_t cl) const;

  const std::map<SiteId, CounterPart>& parts() const { return parts_; }
  bool operator==(const PnCounter&) const = default;

 private:
  std::map<SiteId, CounterPart> parts_;
};

}  // namespace lattice::crdt
