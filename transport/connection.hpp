#pragma once
// The small interface both ends of the sync protocol are written against: send a frame; a frame
// arrived; the connection closed. WebSocket/TLS connections and the in-process loopback of the
// simulation tests implement it, so the sync logic never sees a socket.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace lattice::transport {

class Connection {
 public:
  struct Handlers {
    std::function<void(std::string_view frame)> on_frame;
    // Called once, after which no frame arrives. `reason` is for logs and metrics.
    std::function<void(const std::string& reason)> on_close;
    // Called when frames sent earlier have left the connection's queue (at least once after the
    // queue empties), so a sender can pace a large transfer instead of queueing it whole.
    // Optional.
    std::function<void()> on_drained;
  };

  virtual ~Connection() = default;

  // Installs the callbacks. They run on the connection's own thread (its event loop), one at a
  // time, never from inside send() or close().
  virtual void set_handlers(Handlers handlers) = 0;
  // Queues one encoded frame. Never blocks. Frames are delivered in order or not at all.
  virtual void send(std::string frame) = 0;
  // Closes after the queued frames (best effort); on_close follows.
  virtual void close(const std::string& reason) = 0;
  // The peer's address, for logs ("127.0.0.1:52144", "loopback#3").
  virtual std::string peer() const = 0;
  // Frames given to send() that have not yet left: queued, or on their way to the queue from
  // another thread. May be called from any thread. An owner that receives on_drained on another
  // thread than the connection's checks it: a drain reported before its latest frames reached
  // the queue is stale. Default: 0 (send() queues at once).
  virtual std::size_t unsent_frames() const { return 0; }
  // The peer proved who it is (the relay accepted its hello). Lifts what a connection is
  // limited to before that: the small frame limit, the deadline for the hello, its place among
  // the unauthenticated connections (transport/websocket_server.hpp). Default: nothing to lift.
  virtual void authenticated() {}
};

// Passes everything through to `inner`, and calls `after_frame` each time the user's on_frame
// has returned, so an observer (a sync client's status, a benchmark's clock) sees what the
// frame left behind.
class ObservedConnection : public Connection {
 public:
  ObservedConnection(std::shared_ptr<Connection> inner, std::function<void()> after_frame)
      : inner_(std::move(inner)), after_frame_(std::move(after_frame)) {}

  void set_handlers(Handlers handlers) override {
    if (!handlers.on_frame) return inner_->set_handlers(std::move(handlers));
    inner_->set_handlers(Handlers{
        [on_frame = std::move(handlers.on_frame), after = after_frame_](std::string_view frame) {
          on_frame(frame);
          after();
        },
        std::move(handlers.on_close), std::move(handlers.on_drained)});
  }
  void send(std::string frame) override { inner_->send(std::move(frame)); }
  void close(const std::string& reason) override { inner_->close(reason); }
  std::string peer() const override { return inner_->peer(); }
  std::size_t unsent_frames() const override { return inner_->unsent_frames(); }
  void authenticated() override { inner_->authenticated(); }

 private:
  std::shared_ptr<Connection> inner_;
  std::function<void()> after_frame_;
};

}  // namespace lattice::transport
