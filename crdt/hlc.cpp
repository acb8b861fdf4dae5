#include "crdt/hlc.hpp"

#include <chrono>
#include <limits>
#include <string>
#include <utility>

#include "crdt/error.hpp"

namespace lattice::crdt {

HybridClock::HybridClock(PhysicalClock physical, std::uint64_t max_drift_ms)
    : physical_(std::move(physical)), max_drift_ms_(max_drift_ms) {}

Hlc HybridClock::now() {
  const std::uint64_t pt = physical_();
  if (pt > last_.physical_ms()) {
    last_ = Hlc::from_parts(pt, 0);
  } else if (last_.logical() < Hlc::kLogicalMask) {
    last_ = Hlc::from_parts(last_.physical_ms(), last_.logical() + 1);
  } else {
    // 65536 stamps in one millisecond: borrow the next millisecond rather than wrap, so the
    // result still exceeds everything before it. It stays within a millisecond of real time
    // unless the caller keeps this pace up.
    last_ = Hlc::from_parts(last_.physical_ms() + 1, 0);
  }
  return last_;
}

void HybridClock::observe(Hlc remote) {
  check_drift(remote);
  if (remote > last_) last_ = remote;
}

void HybridClock::check_drift(Hlc remote) const {
  const std::uint64_t local = physical_();
  // Saturate: a huge bound means "no bound", not a wrapped-around small one.
  const std::uint64_t limit = local > std::numeric_limits<std::uint64_t>::max() - max_drift_ms_
                                  ? std::numeric_limits<std::uint64_t>::max()
                                  : local + max_drift_ms_;
  if (remote.physical_ms() > limit) {
    throw Error(ErrorCode::kClockDrift,
                "remote timestamp " + std::to_string(remote.physical_ms()) + " ms is " +
                    std::to_string(remote.physical_ms() - local) + " ms ahead of the local clock " +
                    std::to_string(local) + " ms; the drift bound is " +
                    std::to_string(max_drift_ms_) + " ms");
  }
}

std::uint64_t HybridClock::system_clock_ms() {
  const auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count();
  return ms < 0 ? 0 : static_cast<std::uint64_t>(ms);
}

}  // namespace lattice::crdt
