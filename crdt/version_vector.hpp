#pragma once
// A version vector: for each site, the highest sequence number of that site's changes held.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/site_id.hpp"

namespace lattice::crdt {

// A value type; const members are safe to call from any thread.
// A site that is absent counts as sequence 0 (nothing seen).
class VersionVector {
 public:
  enum class Order { kEqual, kBefore, kAfter, kConcurrent };

  // A run of one site's sequence numbers: (after, through].
  struct Range {
    SiteId site;
    std::uint64_t after = 0;
    std::uint64_t through = 0;
    bool operator==(const Range&) const = default;
  };

  // The highest sequence held from `site`, 0 when none.
  std::uint64_t get(const SiteId& site) const;
  // Raises the entry for `site` to `seq`; never lowers it.
  void advance(const SiteId& site, std::uint64_t seq);
  // True when change `seq` of `site` is counted here.
  bool contains(const SiteId& site, std::uint64_t seq) const { return seq <= get(site); }

  // True when every change counted by `other` is counted here too.
  bool dominates(const VersionVector& other) const;
  // How this vector relates to `other` in the causal (pointwise) order.
  Order compare(const VersionVector& other) const;
  // Pointwise maximum. Commutative, associative and idempotent.
  void merge(const VersionVector& other);

  // The changes counted here that the holder of `holder` lacks, one range per site, ordered by
  // site. Empty when `holder` dominates this vector.
  std::vector<Range> missing_from(const VersionVector& holder) const;

  const std::map<SiteId, std::uint64_t>& entries() const { return entries_; }
  bool empty() const { return entries_.empty(); }

  // {"<32 hex digits>": seq, ...}, sites in byte order, zero entries left out.
  std::string to_json() const;
  // Parses the form to_json() writes. Throws Error(kInvalidArgument) naming the first problem.
  static VersionVector from_json(std::string_view json);

  bool operator==(const VersionVector& other) const { return compare(other) == Order::kEqual; }

 private:
  std::map<SiteId, std::uint64_t> entries_;  // no zero entries
};

}  // namespace lattice::crdt
