#include "crdt/registers.hpp"

namespace lattice::crdt {
namespace {

// Counter arithmetic wraps like two's complement instead of overflowing (undefined behaviour):
// merges must stay total functions whatever totals a hostile peer sends.
std::int64_t wrapping_add(std::int64_t a, std::int64_t b) {
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(a) + static_cast<std::uint64_t>(b));
}

}  // namespace

void PnCounter::add(const SiteId& site, std::uint64_t cl, std::uint64_t seq, std::int64_t delta) {
  auto [it, inserted] = parts_.try_emplace(site, CounterPart{cl, seq, delta});
  if (inserted) return;
  CounterPart& part = it->second;
  if (part.causal_length == cl) {
    part.total = wrapping_add(part.total, delta);
    if (seq > part.seq) part.seq = seq;
  } else if (part.causal_length < cl) {
    // The row was deleted and re-inserted since this site last counted: start again.
    part = CounterPart{cl, seq, delta};
  }
  // A part from a newer incarnation than `cl` stays: the increment belongs to a deleted row.
}

void PnCounter::merge(const PnCounter& other) {
  for (const auto& [site, part] : other.parts_) merge_part(site, part);
}

void PnCounter::merge_part(const SiteId& site, const CounterPart& part) {
  auto [it, inserted] = parts_.try_emplace(site, part);
  if (!inserted && part.newer_than(it->second)) it->second = part;
}

std::int64_t PnCounter::value(std::uint64_t cl) const {
  std::int64_t sum = 0;
  for (const auto& [site, part] : parts_) {
    if (part.causal_length == cl) sum = wrapping_add(sum, part.total);
  }
  return sum;
}

}  // namespace lattice::crdt
