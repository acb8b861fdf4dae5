#pragma once
// The relay's network front: one TCP port serving WebSocket connections (one per device, the
// namespace in the URL path) and plain HTTP (`GET /healthz`, `GET /metrics`, `GET /snapshot/NS`),
// over TLS or, when configured insecure, in the clear. Each accepted WebSocket is handed out as a
// transport::Connection; the sync logic never sees Beast.
//
// Threading: the server and every connection it hands out run on one io_context, driven by
// WebSocketServerOptions::threads threads. With several, each connection lives on its own
// strand, the acceptor on another. Member functions and Connection calls may be made from any
// thread, and are carried out on the connection's strand in the order made; with one thread
// there are no strands, and a call made on that thread is carried out at once. A Connection's
// handlers run on its strand, one at a time, and its frames are read only once set_handlers()
// has installed them (so an owner that installs them later, from another thread, misses none).
// The callbacks of the options (on_connection, metrics, snapshot and its admit, log) run on
// the strand of the connection they serve, so, with several threads, several at once: they
// must then be thread-safe.

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "transport/connection.hpp"
#include "transport/frame.hpp"
#include "transport/snapshot_refusal.hpp"

namespace lattice::transport {

// What `GET /snapshot/NAMESPACE` sends (docs/relay.md, "Snapshots"): a file, or a refusal.
struct SnapshotAnswer {
  int status = 404;     // 200: send the file at `path`; else the HTTP status of the refusal
  std::string path;     // the snapshot file
  std::string etag;     // names this file, quoted ("\"...\""): a resumed download must name it
  std::string message;  // a refusal's body, one line
  // Asked, once the request's range is known, whether `bytes` of the file's `file_bytes` may
  // go; a refusal is answered with 429 Too Many Requests. Empty: always.
  std::function<std::optional<SnapshotRefusal>(std::uint64_t bytes, std::uint64_t file_bytes)>
      admit;
  // The bytes to send, when they are not the file's own (a relay that keeps its snapshots
  // encrypted sends them decrypted): `size` bytes, read(offset, out, n) false when they cannot
  // be read. Unset: the file at `path`, as it is.
  struct Source {
    std::uint64_t size = 0;
    std::function<bool(std::uint64_t offset, unsigned char* out, std::size_t n)> read;
  };
  std::optional<Source> source;
};

struct WebSocketServerOptions {
  std::string host = "127.0.0.1";  // a literal address to listen on ("0.0.0.0", "::1", ...)
  // How many threads run the io_context (see Threading above).
  unsigned threads = 1;
  std::uint16_t port = 0;  // 0: the OS picks one; see WebSocketServer::port()

  // PEM files of the certificate chain and its private key. Both empty only with `insecure`.
  std::string tls_cert_file;
  std::string tls_key_file;
  bool insecure = false;  // plain ws:// and http:// (tests, local development)

  // A WebSocket message longer than this is refused with an error frame of code
  // frame_too_large, then the connection is closed. Text messages are refused as malformed.
  std::size_t max_frame_bytes = kDefaultMaxFrameBytes;
  // Bytes queued for one connection and not yet written. Past it, the connection is dropped
  // with an error frame of code slow_consumer (the device catches up when it reconnects).
  std::size_t max_outbound_bytes = 8u << 20;
  // TLS handshake plus the HTTP request (or WebSocket upgrade) must complete within this.
  int handshake_timeout_seconds = 30;

  // Until the hub calls Connection::authenticated() (its hello was accepted), a connection is
  // unauthenticated and costs almost nothing, for a short while:
  //  - its WebSocket messages may be at most this long (a hello is a few KiB); longer ones are
  //    refused with frame_too_large as soon as the limit is passed;
  std::size_t max_hello_bytes = 64u << 10;
  //  - it must be authenticated within this many seconds of its WebSocket upgrade, or it is
  //    closed (close code 1008, reason "hello_timeout: ...");
  int hello_timeout_seconds = 10;
  //  - one source address may hold at most this many unauthenticated connections (from TCP
  //    accept on, TLS handshake included); further ones are closed at once;
  std::size_t max_unauthenticated_per_source = 32;
  //  - one source address may open at most this many connections per second (a burst of twice
  //    as many), counted at accept: a reconnect loop is refused before its TLS handshake costs.
  double max_connects_per_source_per_second = 5;
  //  - all sources together at most this many: past it, the oldest unauthenticated connection
  //    is closed to make room, so that an attacker holding its share cannot keep a device that
  //    completes its hello promptly out.
  std::size_t max_unauthenticated = 256;
  // Open connections of any kind; past it, new ones are closed at once (lattice-relay sets it
  // from its open-files limit, less a reserve for its own files).
  std::size_t max_connections = 100'000;
  // Connections from these addresses or networks ("127.0.0.1", "10.0.0.0/8": a proxy such as
  // haproxy with send-proxy-v2) begin with a PROXY protocol version 2 header naming the client
  // (transport/proxy_protocol.hpp), read within handshake_timeout_seconds; the client's address
  // then stands for the connection in the per-source limits above, the logs and peer(). One
  // from them without a valid header is closed. Connections from elsewhere send none. Empty:
  // no proxy is trusted. The constructor throws kInvalidArgument naming a bad entry.
  std::vector<std::string> proxy_protocol_from;

  // A WebSocket upgrade for `/NAMESPACE` was accepted. `ns` is the path without its '/',
  // not validated (the hub refuses bad names with an error frame). Required.
  std::function<void(std::shared_ptr<Connection> connection, std::string ns)> on_connection;
  // The body of `GET /metrics` (Prometheus text format). Empty function: 404.
  std::function<std::string()> metrics;
  // Why the relay is degraded, if it is: `GET /healthz` then answers 503 with it (a load
  // balancer sends new devices elsewhere); else 200 "ok". Empty function: always ok.
  std::function<std::optional<std::string>()> health;
  // `GET /snapshot/NAMESPACE`: given the namespace (the path after /snapshot/, not validated)
  // and the token of an `Authorization: Bearer TOKEN` header (empty without one). A 200 answer's
  // file is sent whole, or from byte N with `Range: bytes=N-` (206; a `Range` with an
  // `If-Range` that names another ETag gets the whole file), 64 KiB at a time. Empty function:
  // 404.
  std::function<SnapshotAnswer(const std::string& ns, const std::string& token)> snapshot;
  // One line per notable event (failed handshakes, dropped slow consumers). May be empty.
  std::function<void(const std::string& line)> log;
};

// What the server itself refused or dropped, beyond what the hub counts.
struct WebSocketServerCounters {
  std::uint64_t websocket_accepted = 0;
  std::uint64_t http_requests = 0;
  std::uint64_t snapshots_sent = 0;       // snapshot downloads completed (whole or resumed)
  std::uint64_t snapshot_bytes_sent = 0;  // snapshot bytes written, completed downloads or not
  std::uint64_t handshake_failures = 0;   // TLS or WebSocket handshakes that failed or timed out
  std::uint64_t slow_consumers = 0;       // connections dropped for a full outbound queue
  // Connections closed before authentication: refused at accept (a full source or server),
  // evicted to make room for newer ones, or without a hello in time.
  std::uint64_t refused_at_accept = 0;
  std::uint64_t evicted_unauthenticated = 0;
  std::uint64_t hello_timeouts = 0;
  // Connections from a trusted proxy closed for a missing, malformed or late PROXY header.
  std::uint64_t proxy_header_failures = 0;
  // Frames refused before they reached the hub, by wire error name ("frame_too_large",
  // "malformed" for text messages).
  std::map<std::string, std::uint64_t> rejected;
};

class WebSocketServer {
 public:
  // Binds and listens (accepting starts with start()). Throws lattice::Error: kInvalidArgument
  // for a bad address, missing TLS files without `insecure`, or unreadable certificate or key
  // (the message names the file); kIo when the address cannot be bound.
  WebSocketServer(boost::asio::io_context& io, WebSocketServerOptions options);
  // Stops (as stop()) if still running. Pending operations finish on the io_context.
  ~WebSocketServer();
  WebSocketServer(const WebSocketServer&) = delete;
  WebSocketServer& operator=(const WebSocketServer&) = delete;

  // The bound port (the real one when options.port was 0) and host.
  std::uint16_t port() const;
  const std::string& host() const;

  // Starts accepting connections.
  void start();

  // Graceful stop: stops accepting, closes every WebSocket with a close frame (after the frames
  // already queued on it) and every HTTP connection. io_context::run() returns once they are
  // closed; a peer that never answers the close frame is dropped after the handshake timeout.
  // Idempotent.
  void stop();

  // WebSocket connections currently open (handed out and not yet closed).
  std::size_t open_connections() const;
  // Connections not yet authenticated (TCP, TLS, HTTP or WebSocket awaiting the hello).
  std::size_t unauthenticated_connections() const;
  // A copy, taken under the server's lock.
  WebSocketServerCounters counters() const;

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace lattice::transport
