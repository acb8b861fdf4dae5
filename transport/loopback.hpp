#pragma once
// An in-process network for simulation tests: connections whose frames are delivered by a
// seeded, single-threaded event loop on a virtual clock, with optional delays, duplicates and
// reordering. The same seed replays the same run exactly.

#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "transport/connection.hpp"

namespace lattice::transport {

class LoopbackNetwork {
 public:
  struct Faults {
    double min_delay_ms = 1;
    double max_delay_ms = 1;  // a spread above min lets frames overtake each other
    double duplicate = 0;     // probability that a frame is delivered twice
    // Frames arrive in the order sent, each still delayed, as over one TCP connection (a
    // WebSocket never reorders): the spread above min delays, and does not reorder.
    bool in_order = false;
  };

  explicit LoopbackNetwork(std::uint64_t seed) : rng_(seed) {}
  ~LoopbackNetwork();

  // A connected pair: (client end, server end). Frames sent on one arrive at the other.
  std::pair<std::shared_ptr<Connection>, std::shared_ptr<Connection>> connect(
      const std::string& name, Faults faults);

  // Runs `task` at now() + delay_ms.
  void post(double delay_ms, std::function<void()> task);
  double now() const { return now_ms_; }
  std::mt19937_64& rng() { return rng_; }

  // Runs the next event; false when there is none.
  bool run_one();
  // Runs events due up to `time_ms`, then sets the clock to it.
  void run_until(double time_ms);
  // Runs until no event is left or `max_events` ran; returns true when idle.
  bool run_until_idle(std::size_t max_events);

 private:
  struct Event {
    double time;
    std::uint64_t order;
    std::function<void()> task;
    bool operator>(const Event& other) const {
      return time != other.time ? time > other.time : order > other.order;
    }
  };
  class End;

  std::mt19937_64 rng_;
  double now_ms_ = 0;
  std::uint64_t next_order_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
};

}  // namespace lattice::transport
