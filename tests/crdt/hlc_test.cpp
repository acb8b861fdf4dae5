#include "crdt/hlc.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "crdt/error.hpp"

namespace lattice::crdt {
namespace {

// A wall clock the test sets by hand.
struct ManualClock {
  std::uint64_t ms = 1'700'000'000'000;
  HybridClock::PhysicalClock source() {
    return [this] { return ms; };
  }
};

TEST_CASE("an hlc packs 48 bits of milliseconds above 16 bits of logical counter") {
  const Hlc t = Hlc::from_parts(1'700'000'000'123, 7);
  CHECK(t.physical_ms() == 1'700'000'000'123);
  CHECK(t.logical() == 7);
  CHECK(t.value == (std::uint64_t{1'700'000'000'123} << 16 | 7));
  CHECK(Hlc::from_parts(5, 0xffff) < Hlc::from_parts(6, 0));
}

TEST_CASE("now() takes the wall clock when it has moved forward") {
  ManualClock wall;
  HybridClock clock(wall.source());
  CHECK(clock.now() == Hlc::from_parts(wall.ms, 0));
  wall.ms += 10;
  CHECK(clock.now() == Hlc::from_parts(wall.ms, 0));
  CHECK(clock.last() == Hlc::from_parts(wall.ms, 0));
}

TEST_CASE("now() is strictly monotonic under a clock that stands still") {
  ManualClock wall;
  HybridClock clock(wall.source());
  Hlc previous = clock.now();
  for (int i = 1; i <= 1000; ++i) {
    const Hlc t = clock.now();
    CHECK(t > previous);
    CHECK(t.physical_ms() == wall.ms);
    CHECK(t.logical() == static_cast<std::uint64_t>(i));
    previous = t;
  }
}

TEST_CASE("now() is strictly monotonic under a clock that goes backwards") {
  ManualClock wall;
  HybridClock clock(wall.source());
  const Hlc before = clock.now();
  wall.ms -= 60'000;  // an NTP step back by a minute
  const Hlc a = clock.now();
  const Hlc b = clock.now();
  CHECK(a > before);
  CHECK(b > a);
  CHECK(a.physical_ms() == before.physical_ms());
  wall.ms += 120'000;  // and forward again past where it was
  const Hlc c = clock.now();
  CHECK(c == Hlc::from_parts(wall.ms, 0));
  CHECK(c > b);
}

TEST_CASE("a full logical counter advances the physical part by one millisecond") {
  ManualClock wall;
  HybridClock clock(wall.source());
  for (std::uint64_t i = 0; i <= Hlc::kLogicalMask; ++i) clock.now();
  CHECK(clock.last() == Hlc::from_parts(wall.ms, Hlc::kLogicalMask));
  const Hlc next = clock.now();
  CHECK(next == Hlc::from_parts(wall.ms + 1, 0));
  // The wall clock catching up to the borrowed millisecond still moves forward.
  wall.ms += 1;
  CHECK(clock.now() == Hlc::from_parts(wall.ms, 1));
}

TEST_CASE("observe adopts a remote time within the drift bound") {
  ManualClock wall;
  HybridClock clock(wall.source(), 1000);
  clock.now();
  const Hlc remote = Hlc::from_parts(wall.ms + 1000, 42);  // exactly at the bound
  CHECK_NOTHROW(clock.observe(remote));
  CHECK(clock.last() == remote);
}

TEST_CASE("observe keeps the local time when the remote time is older") {
  ManualClock wall;
  HybridClock clock(wall.source());
  const Hlc local = clock.now();
  clock.observe(Hlc::from_parts(wall.ms - 5000, 3));
  CHECK(clock.last() == local);
}

TEST_CASE("observe refuses a remote time beyond the drift bound and leaves the clock unchanged") {
  ManualClock wall;
  HybridClock clock(wall.source());
  CHECK(clock.max_drift_ms() == HybridClock::kDefaultMaxDriftMs);
  CHECK(HybridClock::kDefaultMaxDriftMs == 300'000);
  const Hlc local = clock.now();
  const std::uint64_t remote_ms = wall.ms + HybridClock::kDefaultMaxDriftMs + 1;
  try {
    clock.observe(Hlc::from_parts(remote_ms, 0));
    FAIL("observe accepted a remote time beyond the drift bound");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kClockDrift);
    const std::string message = e.what();
    INFO(message);
    CHECK(message.find(std::to_string(remote_ms)) != std::string::npos);
    CHECK(message.find(std::to_string(wall.ms)) != std::string::npos);
    CHECK(message.find("300000") != std::string::npos);
  }
  CHECK(clock.last() == local);
}

TEST_CASE("check_drift throws like observe but never moves the clock") {
  ManualClock wall;
  HybridClock clock(wall.source(), 10);
  const Hlc local = clock.now();
  CHECK_NOTHROW(clock.check_drift(Hlc::from_parts(wall.ms + 10, 0)));
  CHECK(clock.last() == local);
  CHECK_THROWS_AS(clock.check_drift(Hlc::from_parts(wall.ms + 11, 0)), Error);
  CHECK(clock.last() == local);
}

TEST_CASE("now() after observe exceeds the remote time") {
  ManualClock wall;
  HybridClock clock(wall.source());
  clock.now();
  const Hlc remote = Hlc::from_parts(wall.ms + 2000, 9);
  clock.observe(remote);
  const Hlc t = clock.now();
  CHECK(t > remote);
  CHECK(t == Hlc::from_parts(wall.ms + 2000, 10));
}

TEST_CASE("the system clock reads milliseconds since the Unix epoch") {
  const std::uint64_t ms = HybridClock::system_clock_ms();
  CHECK(ms > 1'600'000'000'000);         // after September 2020
  CHECK(ms < (std::uint64_t{1} << 48));  // fits the 48-bit physical part
  HybridClock clock;
  CHECK(clock.now().physical_ms() >= ms);
}

}  // namespace
}  // namespace lattice::crdt
