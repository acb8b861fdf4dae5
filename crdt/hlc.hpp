#pragma once
// Hybrid logical clock: 48 bits of wall-clock milliseconds and 16 bits of logical counter in one
// 64-bit number, so timestamps order like integers and stay close to real time.

#include <compare>
#include <cstdint>
#include <functional>

namespace lattice::crdt {

struct Hlc {
  static constexpr int kLogicalBits = 16;
  static constexpr std::uint64_t kLogicalMask = (1u << kLogicalBits) - 1;

  std::uint64_t value = 0;

  static constexpr Hlc from_parts(std::uint64_t physical_ms, std::uint64_t logical) {
    return Hlc{(physical_ms << kLogicalBits) | (logical & kLogicalMask)};
  }
  constexpr std::uint64_t physical_ms() const { return value >> kLogicalBits; }
  constexpr std::uint64_t logical() const { return value & kLogicalMask; }
  auto operator<=>(const Hlc&) const = default;
};

// A hybrid logical clock. Not thread-safe: one owner (a replica connection) calls it.
class HybridClock {
 public:
  // Milliseconds since the Unix epoch. Injected so tests can drive time.
  using PhysicalClock = std::function<std::uint64_t()>;

  static constexpr std::uint64_t kDefaultMaxDriftMs = 5 * 60 * 1000;

  // `max_drift_ms`: how far ahead of our own wall clock a remote timestamp may be.
  explicit HybridClock(PhysicalClock physical = system_clock_ms,
                       std::uint64_t max_drift_ms = kDefaultMaxDriftMs);

  // A timestamp strictly greater than every one this clock returned or observed before.
  Hlc now();

  // Takes a remote timestamp into account, so that later now() values exceed it.
  // Throws Error(kClockDrift), naming both times, when `remote` is more than the drift bound
  // ahead of our wall clock; the clock is then left unchanged.
  void observe(Hlc remote);

  // Like observe() without the drift check: for this replica's own persisted timestamps, which
  // must never be gone back on even when the wall clock has.
  void adopt(Hlc own) {
    if (own > last_) last_ = own;
  }

  // Throws like observe() would, without changing the clock.
  void check_drift(Hlc remote) const;

  // Sets the last timestamp back to `to`. Only for a replica whose own timestamps ran ahead of
  // every peer's drift bound and were stamped again (docs/crdt-semantics.md, "Clocks that run
  // ahead"): nothing anyone holds carries the later ones.
  void rewind(Hlc to) { last_ = to; }

  // The wall clock, in milliseconds since the Unix epoch.
  std::uint64_t wall_ms() const { return physical_(); }

  Hlc last() const { return last_; }
  std::uint64_t max_drift_ms() const { return max_drift_ms_; }

  static std::uint64_t system_clock_ms();

 private:
  PhysicalClock physical_;
  std::uint64_t max_drift_ms_;
  Hlc last_{};
};

}  // namespace lattice::crdt
