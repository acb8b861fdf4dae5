#include "transport/loopback.hpp"

#include <algorithm>

namespace lattice::transport {

// One end of a loopback pair. Both ends share a Link; closing either closes both.
class LoopbackNetwork::End : public Connection, public std::enable_shared_from_this<End> {
 public:
  struct Link {
    bool open = true;
    Faults faults;
  };

  End(LoopbackNetwork& net, std::shared_ptr<Link> link, std::string name)
      : net_(net), link_(std::move(link)), name_(std::move(name)) {}

  void set_peer(const std::shared_ptr<End>& peer) { peer_ = peer; }
  void set_handlers(Handlers handlers) override { handlers_ = std::move(handlers); }

  void send(std::string frame) override {
    if (!link_->open) return;
    auto peer = peer_.lock();
    if (!peer) return;
    const Faults& f = link_->faults;
    std::uniform_real_distribution<double> delay(f.min_delay_ms, f.max_delay_ms);
    const int copies = std::bernoulli_distribution(f.duplicate)(net_.rng_) ? 2 : 1;
    std::weak_ptr<End> self = weak_from_this();
    for (int i = 0; i < copies; ++i) {
      double after = delay(net_.rng_);
      // Events due at one time run in the order posted.
      if (f.in_order) after = std::max(after, last_delivery_ - net_.now());
      last_delivery_ = net_.now() + after;
      net_.post(after, [peer, self, frame, link = link_] {
        if (link->open && peer->handlers_.on_frame) peer->handlers_.on_frame(frame);
        // Delivered: as far as the sender can tell, its queue drained.
        auto sender = self.lock();
        if (link->open && sender && sender->handlers_.on_drained) sender->handlers_.on_drained();
      });
    }
  }

  void close(const std::string& reason) override {
    if (!link_->open) return;
    link_->open = false;
    for (auto end : {shared_from_this(), peer_.lock()}) {
      if (!end) continue;
      net_.post(0, [end, reason] {
        if (end->handlers_.on_close) {
          auto on_close = std::move(end->handlers_.on_close);
          end->handlers_ = {};
          on_close(reason);
        }
      });
    }
  }

  std::string peer() const override { return name_; }

 private:
  LoopbackNetwork& net_;
  std::shared_ptr<Link> link_;
  std::weak_ptr<End> peer_;
  std::string name_;
  Handlers handlers_;
  double last_delivery_ = 0;  // of the last frame sent from this end
};

LoopbackNetwork::~LoopbackNetwork() = default;

std::pair<std::shared_ptr<Connection>, std::shared_ptr<Connection>> LoopbackNetwork::connect(
    const std::string& name, Faults faults) {
  auto link = std::make_shared<End::Link>();
  link->faults = faults;
  auto client = std::make_shared<End>(*this, link, name + "/client");
  auto server = std::make_shared<End>(*this, link, name + "/server");
  client->set_peer(server);
  server->set_peer(client);
  return {client, server};
}

void LoopbackNetwork::post(double delay_ms, std::function<void()> task) {
  events_.push(Event{now_ms_ + delay_ms, next_order_++, std::move(task)});
}

bool LoopbackNetwork::run_one() {
  if (events_.empty()) return false;
  Event event = events_.top();
  events_.pop();
  now_ms_ = std::max(now_ms_, event.time);
  event.task();
  return true;
}

void LoopbackNetwork::run_until(double time_ms) {
  while (!events_.empty() && events_.top().time <= time_ms) run_one();
  now_ms_ = std::max(now_ms_, time_ms);
}

bool LoopbackNetwork::run_until_idle(std::size_t max_events) {
  for (std::size_t i = 0; i < max_events; ++i)
    if (!run_one()) return true;
  return events_.empty();
}

}  // namespace lattice::transport
