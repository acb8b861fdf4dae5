#pragma once
// The device's end of a relay connection: a WebSocket over TLS (`wss://HOST:PORT/NAMESPACE`) or,
// to a loopback host only unless allowed, plain (`ws://`). Implements transport::Connection, so
// the sync logic (engine/sync/sync_session.hpp) runs over it unchanged. docs/protocol.md
// describes what travels on it: one binary WebSocket message per frame.

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "transport/connection.hpp"
#include "transport/frame.hpp"

namespace lattice::transport {

// A relay URL, taken apart by WebSocketUrl::parse.
struct WebSocketUrl {
  bool secure = true;      // wss (true) or ws (false)
  std::string host;        // a name or an IP address; an IPv6 address without its brackets
  std::uint16_t port = 0;  // 443 for wss and 80 for ws when the URL names none
  std::string ns;          // the namespace: the path without its leading '/'

  // Parses `ws[s]://HOST[:PORT]/NAMESPACE`, HOST being a name, an IPv4 address or an IPv6
  // address in brackets ([::1]), NAMESPACE 1 to 64 letters, digits, '_' or '-' (the relay's
  // rule). Nothing else: no user info, query, fragment or deeper path. Throws
  // Error(kInvalidArgument) naming the problem ("URL 'x': the port '99999' is not 1 to 65535").
  static WebSocketUrl parse(std::string_view url);

  // "HOST:PORT", with brackets around an IPv6 address.
  std::string authority() const;
};

// True for "localhost" and for IP addresses in 127.0.0.0/8 and ::1.
bool is_loopback_host(std::string_view host);

struct ClientOptions {
  // A PEM file of certificates to trust besides the system's default ones: a certificate
  // authority, or a relay's self-signed certificate. Empty: the system's only.
  std::string ca_file;
  // Allows ws:// to a host that is not loopback. Off: such a URL is refused before connecting.
  bool allow_insecure_remote = false;
  // Largest WebSocket message accepted from the relay; a larger one closes the connection.
  std::size_t max_frame_bytes = kDefaultMaxFrameBytes;
  // Bound on the whole attempt: resolve, TCP connect, TLS and WebSocket handshakes. Also bounds
  // the closing handshake.
  std::chrono::milliseconds connect_timeout{10'000};
  // A relay that sends nothing (not even a WebSocket pong to our pings) for this long is
  // considered gone and the connection closes.
  std::chrono::milliseconds idle_timeout{20'000};
  // Bound on frames queued for sending; past it the connection closes with a reason saying so.
  std::size_t max_queued_bytes = 64u << 20;
};

// Called once: with an error (connection is null) or with an open connection (error empty).
using ConnectHandler =
    std::function<void(std::optional<Error> error, std::shared_ptr<Connection> connection)>;

// Cancels a connection attempt that has not yet called its handler; the handler is then called
// with an error saying so. Harmless after the handler ran. Call on the io_context's thread.
using CancelConnect = std::function<void()>;

// Opens a connection to `url` (WebSocketUrl::parse) on `io`: resolve, TCP connect, for wss a
// TLS handshake (TLS 1.2 or later; SNI for host names; the relay's certificate verified against
// the system's roots and options.ca_file, and its name or IP address checked), then the
// WebSocket handshake for path /NAMESPACE. `on_connected` runs on the io_context's thread, as do
// the connection's handlers afterwards; the connection's send() and close() may be called from
// any thread (they post to that thread). Reports errors through `on_connected`: kInvalidArgument
// for a bad URL or a refused ws://, kIo for a failure on the way, naming the step and the
// address ("TLS handshake with 127.0.0.1:4433: certificate verify failed (self-signed
// certificate)"). The io_context must outlive the connection.
CancelConnect connect_websocket(boost::asio::io_context& io, std::string_view url,
                                ClientOptions options, ConnectHandler on_connected);

// The TLS contexts connect_websocket has made in this process. Connections share one per CA
// file (loading the system's trust store costs tens of milliseconds of CPU); a CA file changed
// on disk since gets a new one.
std::uint64_t client_tls_contexts_made();

// Throws Error(kInvalidArgument) when connect_websocket would refuse `url` before connecting:
// a malformed URL, or ws:// to a host that is not loopback without allow_insecure_remote.
WebSocketUrl check_url(std::string_view url, const ClientOptions& options);

}  // namespace lattice::transport
