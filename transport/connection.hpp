#pragma once
// The small interface both ends of the sync protocol are written against: send a frame; a frame
// arrived; the connection closed. WebSocket/TLS connections and the in-process loopback of the
// simulation tests implement it, so the sync logic never sees a socket.

#include <functional>
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
  // The peer proved who it is (the relay accepted its hello). Lifts what a connection is
  // limited to before that: the small frame limit, the deadline for the hello, its place among
  // the unauthenticated connections (transport/websocket_server.hpp). Default: nothing to lift.
  virtual void authenticated() {}
};

}  // namespace lattice::transport
