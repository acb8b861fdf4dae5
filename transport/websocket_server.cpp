#include "transport/websocket_server.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <charconv>
#include <chrono>
#include <deque>
#include <list>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "crdt/error.hpp"
#include "transport/lean_tls.hpp"
#include "transport/proxy_protocol.hpp"

// The shape follows Boost.Beast's server examples (docs/relay.md): a listener, a session per
// connection owning its stream and buffer, handlers named on_<step>, at most one async_write in
// flight with a bounded queue behind it. As in Beast's multi-threaded examples, every socket
// lives on its own strand of the io_context, so any number of threads may run it; what the
// sessions share (counters, the unauthenticated list) is behind Shared::mutex.

namespace lattice::transport {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;

using PlainStream = beast::tcp_stream;
// Not beast::ssl_stream: Asio's keeps 68 KiB of buffers per connection for its whole life.
using TlsStream = LeanTlsStream;

template <class Stream>
constexpr bool kIsTls = std::is_same_v<Stream, TlsStream>;

// Larger HTTP requests than this are refused; an upgrade request is a few hundred bytes.
constexpr std::size_t kMaxHttpRequestBytes = 16 * 1024;
// One read appends at most this much to a message being assembled.
constexpr std::size_t kReadChunkBytes = 64 * 1024;
// A read buffer that grew past this for a large message is given back afterwards, so that an
// idle connection stays small.
constexpr std::size_t kKeptReadBufferBytes = 64 * 1024;

// Errors that are the ordinary end of a connection, not worth a log line.
bool is_benign(beast::error_code ec) {
  return ec == net::error::operation_aborted || ec == websocket::error::closed ||
         ec == http::error::end_of_stream || ec == net::error::eof ||
         ec == ssl::error::stream_truncated || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe || ec == beast::error::timeout;
}

std::string address_text(const tcp::socket& socket) {
  beast::error_code ec;
  const auto endpoint = socket.remote_endpoint(ec);
  return ec ? "?" : endpoint.address().to_string();
}

// "a.b.c.d:port", "[v6]:port".
std::string endpoint_text(const net::ip::address& address, std::uint16_t port) {
  return (address.is_v6() ? "[" + address.to_string() + "]" : address.to_string()) + ":" +
         std::to_string(port);
}

std::string endpoint_text(const tcp::socket& socket) {
  beast::error_code ec;
  const auto endpoint = socket.remote_endpoint(ec);
  return ec ? "?" : endpoint_text(endpoint.address(), endpoint.port());
}

// Lines logged at most once per period, the next saying how many were left out meanwhile.
// Not thread-safe: its owner serializes calls.
class LogThrottle {
 public:
  // `line` as it should be logged now, or nothing when one was logged within the period.
  std::optional<std::string> admit(const std::string& line) {
    constexpr auto kLogEvery = std::chrono::seconds(10);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < kLogEvery) {
      ++unlogged_;
      return std::nullopt;
    }
    std::string out =
        line + (unlogged_ ? " (and " + std::to_string(unlogged_) + " more since the last line)"
                          : std::string());
    unlogged_ = 0;
    last_ = now;
    return out;
  }

 private:
  std::chrono::steady_clock::time_point last_{};
  std::uint64_t unlogged_ = 0;
};

// A WebSocket close reason holds at most 123 bytes of UTF-8; cut at a character boundary.
std::string close_reason_text(const std::string& reason) {
  constexpr std::size_t kMax = 123;
  if (reason.size() <= kMax) return reason;
  std::size_t end = kMax;
  while (end > 0 && (static_cast<unsigned char>(reason[end]) & 0xC0) == 0x80) --end;
  return reason.substr(0, end);
}

websocket::close_code close_code_for(const std::string& reason) {
  if (reason.rfind("shutting_down", 0) == 0) return websocket::close_code::going_away;
  if (reason.rfind("hello_timeout", 0) == 0) return websocket::close_code::policy_error;
  if (reason.rfind("frame_too_large", 0) == 0) return websocket::close_code::too_big;
  if (reason.rfind("slow_consumer", 0) == 0) return websocket::close_code::try_again_later;
  return websocket::close_code::normal;
}

// Sessions the server can reach to stop them. Both may be called from any thread; the work is
// done on the session's strand.
class Session {
 public:
  virtual ~Session() = default;
  virtual void shutdown() = 0;
  // Closes an unauthenticated connection at once to make room for a newer one (the server has
  // already taken it off the unauthenticated list).
  virtual void evict() = 0;
};

class Admission;

}  // namespace

struct WebSocketServer::Shared : std::enable_shared_from_this<WebSocketServer::Shared> {
  Shared(net::io_context& io_context, WebSocketServerOptions opts)
      : io(io_context),
        options(std::move(opts)),
        proxies(options.proxy_protocol_from),
        acceptor(executor_for_socket()),
        retry_timer(acceptor.get_executor()) {}

  // A strand when several threads run the io_context; with one, the io_context's executor, so
  // that a call made on its thread is carried out at once (no post, no strand).
  net::any_io_executor executor_for_socket() {
    if (options.threads > 1) return net::make_strand(io);
    return io.get_executor();
  }

  net::io_context& io;
  const WebSocketServerOptions options;
  const proxy_protocol::TrustedProxies proxies;
  std::optional<ssl::context> tls;
  // The acceptor, its retry timer, connect_rate and the throttled log live on the acceptor's
  // strand; everything from `counters` to `open_sockets` is guarded by `mutex`.
  tcp::acceptor acceptor;
  net::steady_timer retry_timer;  // after an accept error such as EMFILE
  std::string host;
  std::uint16_t port = 0;
  std::atomic<bool> stopping = false;

  mutable std::mutex mutex;
  WebSocketServerCounters counters;
  std::map<Session*, std::weak_ptr<Session>> sessions;
  std::size_t open_websockets = 0;
  // Unauthenticated connections, oldest first, and how many per source address.
  struct PreAuth {
    std::weak_ptr<Session> session;
    Admission* admission;
  };
  std::list<PreAuth> preauth;
  std::map<std::string, std::size_t> preauth_per_source;
  std::size_t open_sockets = 0;           // accepted connections not yet closed, of any kind
  std::size_t proxy_headers_pending = 0;  // connections from proxies whose header is awaited

  // Adds `n` to one of the counters.
  void count(std::uint64_t WebSocketServerCounters::*counter, std::uint64_t n = 1) {
    const std::lock_guard lock(mutex);
    counters.*counter += n;
  }
  void count_rejected(const char* name) {
    const std::lock_guard lock(mutex);
    ++counters.rejected[name];
  }
  void add_session(Session* raw, std::weak_ptr<Session> session) {
    const std::lock_guard lock(mutex);
    sessions[raw] = std::move(session);
  }
  void remove_session(Session* raw) {
    const std::lock_guard lock(mutex);
    sessions.erase(raw);
  }

  // New connections per source address: a token bucket each (level, last refill).
  std::map<std::string, std::pair<double, std::chrono::steady_clock::time_point>> connect_rate;

  // Takes one new connection from `source`'s bucket; false when it is empty.
  bool admit_connect(const std::string& source) {
    const double rate = options.max_connects_per_source_per_second, burst = 2 * rate;
    const auto now = std::chrono::steady_clock::now();
    auto refill = [&](std::pair<double, std::chrono::steady_clock::time_point>& b) {
      b.first =
          std::min(burst, b.first + rate * std::chrono::duration<double>(now - b.second).count());
      b.second = now;
    };
    if (connect_rate.size() > 4096)  // forget sources whose buckets are full again
      for (auto it = connect_rate.begin(); it != connect_rate.end();) {
        refill(it->second);
        it = it->second.first >= burst ? connect_rate.erase(it) : std::next(it);
      }
    auto [it, fresh] = connect_rate.try_emplace(source, burst, now);
    if (!fresh) refill(it->second);
    if (it->second.first < 1) return false;
    it->second.first -= 1;
    return true;
  }
  // Refusals and accept failures are logged at most once per 10 s, with a count (on the
  // acceptor's strand); PROXY header failures apart (from any strand, under `mutex`).
  LogThrottle refusals_log;
  LogThrottle proxy_failures_log;

  void log(const std::string& line) const {
    if (options.log) options.log(line);
  }
  void log_throttled(const std::string& line) {
    if (auto out = refusals_log.admit(line)) log(*out);
  }
  // Counts a connection from a trusted proxy closed for its header, and logs `line` unless one
  // was logged within the throttle's period. From any strand.
  void proxy_header_failed(const std::string& line) {
    std::optional<std::string> out;
    {
      const std::lock_guard lock(mutex);
      ++counters.proxy_header_failures;
      out = proxy_failures_log.admit(line);
    }
    if (out) log(*out);
  }
  void fail(beast::error_code ec, const std::string& peer, const char* what) const {
    if (!is_benign(ec)) log(peer + ": " + what + ": " + ec.message());
  }

  void do_accept();
  void on_accept(beast::error_code ec, tcp::socket socket);
  // On the acceptor's strand: the per-source limits for `source` (the socket's address, or the
  // client's a trusted proxy named), then the connection's HTTP session.
  void admit(tcp::socket socket, std::string source, std::string peer);
};

namespace {

using Shared = WebSocketServer::Shared;

// A connection's place in the server's accounting, from TCP accept to close: one open socket,
// and until authenticated, one entry among the unauthenticated. Moves from the HTTP session to
// the WebSocket session at the upgrade. Its state is guarded by Shared::mutex: the acceptor's
// strand takes the oldest entry off the list to evict it.
class Admission {
 public:
  Admission(std::shared_ptr<Shared> shared, std::string source)
      : shared_(std::move(shared)), source_(std::move(source)) {
    const std::lock_guard lock(shared_->mutex);
    ++shared_->open_sockets;
    ++shared_->preauth_per_source[source_];
    it_ = shared_->preauth.insert(shared_->preauth.end(), Shared::PreAuth{{}, this});
  }
  ~Admission() {
    const std::lock_guard lock(shared_->mutex);
    leave_list();
    --shared_->open_sockets;
  }
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  // The session to evict for this entry (the HTTP session, then the WebSocket one).
  void bind(std::weak_ptr<Session> session) {
    const std::lock_guard lock(shared_->mutex);
    if (unauthenticated_) it_->session = std::move(session);
  }
  // Leaves the unauthenticated list (idempotent).
  void authenticated() {
    const std::lock_guard lock(shared_->mutex);
    leave_list();
  }
  // authenticated() for a caller that holds Shared::mutex.
  void leave_list() {
    if (!unauthenticated_) return;
    unauthenticated_ = false;
    shared_->preauth.erase(it_);
    auto count = shared_->preauth_per_source.find(source_);
    if (--count->second == 0) shared_->preauth_per_source.erase(count);
  }

 private:
  std::shared_ptr<Shared> shared_;
  std::string source_;
  std::list<Shared::PreAuth>::iterator it_;
  bool unauthenticated_ = true;
};

// One WebSocket connection, the transport::Connection the hub talks to. Its Connection calls
// may come from any thread: each is carried out on the session's strand, in the order made.
template <class Stream>
class WsSession final : public Connection,
                        public Session,
                        public std::enable_shared_from_this<WsSession<Stream>> {
 public:
  WsSession(Stream&& stream, std::shared_ptr<Shared> shared, std::string peer, std::string ns,
            std::unique_ptr<Admission> admission)
      : shared_(std::move(shared)),
        ws_(std::move(stream)),
        hello_timer_(ws_.get_executor()),
        peer_(std::move(peer)),
        ns_(std::move(ns)),
        admission_(std::move(admission)) {}

  ~WsSession() override { shared_->remove_session(this); }

  // On the stream's strand.
  void run(http::request<http::empty_body> request) {
    shared_->add_session(this, this->weak_from_this());
    admission_->bind(this->weak_from_this());
    beast::get_lowest_layer(ws_).expires_never();  // the websocket's own timeouts take over
    auto timeouts = websocket::stream_base::timeout::suggested(beast::role_type::server);
    timeouts.handshake_timeout = std::chrono::seconds(shared_->options.handshake_timeout_seconds);
    ws_.set_option(timeouts);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& response) { response.set(http::field::server, "lattice"); }));
    // Unlimited here: on_read enforces the frame limit itself, so that the peer is told with an
    // error frame rather than a bare close code.
    ws_.read_message_max(0);
    ws_.async_accept(request,
                     beast::bind_front_handler(&WsSession::on_accept, this->shared_from_this()));
  }

  // Connection
  void set_handlers(Handlers handlers) override {
    net::dispatch(ws_.get_executor(),
                  [self = this->shared_from_this(), handlers = std::move(handlers)]() mutable {
                    self->handlers_ = std::move(handlers);
                    self->handlers_set_ = true;
                    self->start_reading();
                  });
  }

  void send(std::string frame) override {
    ++unsent_;
    net::dispatch(ws_.get_executor(),
                  [self = this->shared_from_this(), frame = std::move(frame)]() mutable {
                    self->enqueue(std::move(frame));
                  });
  }

  void close(const std::string& reason) override {
    net::dispatch(ws_.get_executor(),
                  [self = this->shared_from_this(), reason] { self->start_close(reason); });
  }

  std::string peer() const override { return peer_; }

  std::size_t unsent_frames() const override { return unsent_; }

  void authenticated() override {
    net::dispatch(ws_.get_executor(), [self = this->shared_from_this()] {
      self->authenticated_ = true;
      self->hello_timer_.cancel();
      self->admission_->authenticated();
    });
  }

  // Session
  void shutdown() override {
    net::dispatch(ws_.get_executor(), [self = this->shared_from_this()] {
      if (self->state_ == State::kHandshaking) return self->close_socket();
      self->start_close("shutting_down: the relay is stopping");
    });
  }

  void evict() override {
    net::dispatch(ws_.get_executor(), [self = this->shared_from_this()] { self->close_socket(); });
  }

 private:
  enum class State { kHandshaking, kOpen, kClosing, kClosed };

  // A frame counted in unsent_.
  void enqueue(std::string frame) {
    if (state_ != State::kOpen) {
      --unsent_;
      return;
    }
    if (queued_bytes_ + frame.size() > shared_->options.max_outbound_bytes)
      return drop_slow_consumer();
    queued_bytes_ += frame.size();
    queue_.push_back(std::move(frame));
    if (!writing_) do_write();
  }

  void start_close(const std::string& reason) {
    if (state_ != State::kOpen) return;
    state_ = State::kClosing;
    close_reason_ = reason;
    if (!writing_) do_close();
  }

  void on_accept(beast::error_code ec) {
    if (ec) {
      shared_->count(&WebSocketServerCounters::handshake_failures);
      shared_->fail(ec, peer_, "websocket accept");
      state_ = State::kClosed;
      return;
    }
    ws_.binary(true);
    {
      const std::lock_guard lock(shared_->mutex);
      ++shared_->counters.websocket_accepted;
      ++shared_->open_websockets;
    }
    state_ = State::kOpen;
    if (shared_->stopping)
      start_close("shutting_down: the relay is stopping");
    else
      shared_->options.on_connection(this->shared_from_this(), ns_);
    if (!authenticated_) {
      hello_timer_.expires_after(std::chrono::seconds(shared_->options.hello_timeout_seconds));
      hello_timer_.async_wait(
          beast::bind_front_handler(&WsSession::on_hello_timeout, this->shared_from_this()));
    }
    start_reading();
  }

  // Frames are read once the owner has installed its handlers (set_handlers, possibly from
  // another thread after on_connection returned), so that none arrives before it listens.
  void start_reading() {
    if (reading_ || !handlers_set_ || state_ != State::kOpen) return;
    reading_ = true;
    do_read();
  }

  // No accepted hello in time: the socket is closed at once, without a closing handshake the
  // peer could drag out.
  void on_hello_timeout(beast::error_code ec) {
    if (ec || authenticated_ || state_ == State::kClosed) return;
    shared_->count(&WebSocketServerCounters::hello_timeouts);
    close_reason_ = "hello_timeout: no hello accepted within " +
                    std::to_string(shared_->options.hello_timeout_seconds) + " s";
    close_socket();
    finish(close_reason_);
  }

  std::size_t frame_limit() const {
    return authenticated_ ? shared_->options.max_frame_bytes : shared_->options.max_hello_bytes;
  }

  void do_read() {
    const std::size_t limit = frame_limit();
    const std::size_t have = buffer_.size();
    // Read at most one byte past the limit: enough to know the message is too large.
    const std::size_t room = limit + 1 > have ? limit + 1 - have : 1;
    ws_.async_read_some(buffer_, std::min(room, kReadChunkBytes),
                        beast::bind_front_handler(&WsSession::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) {
      if (ec == websocket::error::closed) {
        const auto& why = ws_.reason();
        return finish("closed by the peer (" + std::to_string(why.code) +
                      (why.reason.empty() ? "" : ": " + std::string(why.reason.c_str())) + ")");
      }
      shared_->fail(ec, peer_, "read");
      close_socket();
      return finish("read failed: " + ec.message());
    }
    if (state_ != State::kOpen) {
      // Closing: whatever still arrives is discarded (the read keeps pings and the close
      // handshake moving).
      buffer_.consume(buffer_.size());
      return do_read();
    }
    const std::size_t limit = frame_limit();
    if (buffer_.size() > limit) {
      buffer_.consume(buffer_.size());
      buffer_.shrink_to_fit();
      reject(WireError::kFrameTooLarge, "a message of more than " + std::to_string(limit) +
                                            " bytes is over the frame size limit of " +
                                            std::to_string(limit) + " bytes" +
                                            (authenticated_ ? "" : " before authentication"));
      return do_read();
    }
    if (!ws_.is_message_done()) return do_read();
    if (ws_.got_text()) {
      buffer_.consume(buffer_.size());
      reject(WireError::kMalformed, "a text message; frames travel in binary messages");
      return do_read();
    }
    {
      const auto data = buffer_.cdata();
      const std::string_view frame(static_cast<const char*>(data.data()), data.size());
      if (handlers_.on_frame) handlers_.on_frame(frame);
    }
    buffer_.consume(buffer_.size());
    if (buffer_.capacity() > kKeptReadBufferBytes) buffer_.shrink_to_fit();
    do_read();
  }

  // A frame refused before it reached the hub: an error frame, then close.
  void reject(WireError code, const std::string& message) {
    shared_->count_rejected(wire_error_name(code));
    ++unsent_;
    enqueue(encode_frame(ErrorFrame{code, message}));
    start_close(std::string(wire_error_name(code)) + ": " + message);
  }

  void drop_slow_consumer() {
    shared_->count(&WebSocketServerCounters::slow_consumers);
    const std::string message = "more than " + std::to_string(shared_->options.max_outbound_bytes) +
                                " bytes queued for this connection; reconnect to catch up";
    shared_->log(peer_ + ": dropped: slow_consumer: " + message);
    // Frames not yet being written are dropped; the device's next hello catches it up.
    while (queue_.size() > (writing_ ? 1u : 0u)) {
      queued_bytes_ -= queue_.back().size();
      queue_.pop_back();
      --unsent_;
    }
    std::string frame = encode_frame(ErrorFrame{WireError::kSlowConsumer, message});
    ++unsent_;
    queued_bytes_ += frame.size();
    queue_.push_back(std::move(frame));
    if (!writing_) do_write();
    start_close("slow_consumer: " + message);
  }

  void do_write() {
    writing_ = true;
    ws_.async_write(net::buffer(queue_.front()),
                    beast::bind_front_handler(&WsSession::on_write, this->shared_from_this()));
  }

  void on_write(beast::error_code ec, std::size_t) {
    writing_ = false;
    if (ec) {
      shared_->fail(ec, peer_, "write");
      unsent_ -= queue_.size();
      queue_.clear();
      queued_bytes_ = 0;
      close_socket();
      return finish("write failed: " + ec.message());
    }
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    --unsent_;
    if (state_ == State::kClosed) return;
    if (!queue_.empty()) return do_write();
    if (state_ == State::kClosing) return do_close();
    if (handlers_.on_drained) handlers_.on_drained();
  }

  void do_close() {
    if (close_sent_) return;
    close_sent_ = true;
    websocket::close_reason reason;
    reason.code = close_code_for(close_reason_);
    reason.reason = close_reason_text(close_reason_);
    ws_.async_close(reason,
                    beast::bind_front_handler(&WsSession::on_close, this->shared_from_this()));
  }

  void on_close(beast::error_code ec) {
    if (ec) shared_->fail(ec, peer_, "close");
    finish(close_reason_);
  }

  void close_socket() {
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  // The connection is over: tell the hub, once.
  void finish(const std::string& reason) {
    if (state_ == State::kClosed) return;
    const bool was_open = state_ != State::kHandshaking;
    state_ = State::kClosed;
    hello_timer_.cancel();
    if (was_open) {
      const std::lock_guard lock(shared_->mutex);
      --shared_->open_websockets;
    }
    if (!writing_) {
      unsent_ -= queue_.size();
      queue_.clear();
      queued_bytes_ = 0;
    }
    Handlers handlers = std::move(handlers_);
    handlers_ = {};
    if (handlers.on_close) handlers.on_close(close_reason_.empty() ? reason : close_reason_);
  }

  std::shared_ptr<Shared> shared_;
  websocket::stream<Stream> ws_;
  net::steady_timer hello_timer_;
  beast::flat_buffer buffer_;
  std::string peer_;
  std::string ns_;
  std::unique_ptr<Admission> admission_;
  bool authenticated_ = false;
  Handlers handlers_;
  bool handlers_set_ = false;
  bool reading_ = false;
  State state_ = State::kHandshaking;
  std::deque<std::string> queue_;  // front() is being written while writing_
  std::size_t queued_bytes_ = 0;
  // Frames in queue_, and those send() passed to the strand that have not reached it yet.
  std::atomic<std::size_t> unsent_ = 0;
  bool writing_ = false;
  bool close_sent_ = false;
  std::string close_reason_;
};

// A connection before it is a WebSocket: the TLS handshake, then HTTP requests until one is an
// upgrade.
template <class Stream>
class HttpSession final : public Session, public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  HttpSession(Stream&& stream, std::shared_ptr<Shared> shared, std::string peer,
              std::unique_ptr<Admission> admission)
      : shared_(std::move(shared)),
        stream_(std::move(stream)),
        strand_(stream_.get_executor()),
        peer_(std::move(peer)),
        admission_(std::move(admission)) {}

  ~HttpSession() override { shared_->remove_session(this); }

  // Registers the session with the server, then starts it on its strand.
  void start() {
    shared_->add_session(this, this->weak_from_this());
    admission_->bind(this->weak_from_this());
    net::dispatch(strand_, [self = this->shared_from_this()] { self->run(); });
  }

  void shutdown() override {
    net::dispatch(strand_, [self = this->shared_from_this()] {
      if (!self->upgraded_) self->close_socket();
    });
  }

  void evict() override {
    net::dispatch(strand_, [self = this->shared_from_this()] {
      if (!self->upgraded_) return self->close_socket();
      if (auto session = self->upgraded_to_.lock()) session->evict();
    });
  }

 private:
  void run() {
    if constexpr (kIsTls<Stream>) {
      expire_soon();
      stream_.async_handshake(
          ssl::stream_base::server,
          beast::bind_front_handler(&HttpSession::on_handshake, this->shared_from_this()));
    } else {
      do_read();
    }
  }

  void close_socket() {
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
  }

  void expire_soon() {
    beast::get_lowest_layer(stream_).expires_after(
        std::chrono::seconds(shared_->options.handshake_timeout_seconds));
  }

  void on_handshake(beast::error_code ec) {
    if (ec) {
      shared_->count(&WebSocketServerCounters::handshake_failures);
      return shared_->fail(ec, peer_, "tls handshake");
    }
    do_read();
  }

  void do_read() {
    parser_.emplace();
    parser_->header_limit(kMaxHttpRequestBytes);
    parser_->body_limit(kMaxHttpRequestBytes);
    expire_soon();
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&HttpSession::on_read, this->shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec == http::error::end_of_stream) return do_eof();
    if (ec) return shared_->fail(ec, peer_, "http read");
    auto request = parser_->release();
    if (websocket::is_upgrade(request)) {
      if (shared_->stopping)
        return respond(request, http::status::service_unavailable, "stopping\n");
      std::string_view target(request.target().data(), request.target().size());
      target = target.substr(0, target.find('?'));
      std::string ns(target.empty() ? "" : target.substr(1));
      upgraded_ = true;
      auto session = std::make_shared<WsSession<Stream>>(
          std::move(stream_), shared_, std::move(peer_), std::move(ns), std::move(admission_));
      upgraded_to_ = session;
      http::request<http::empty_body> header(std::move(request.base()));
      return session->run(std::move(header));
    }
    shared_->count(&WebSocketServerCounters::http_requests);
    if (request.method() != http::verb::get && request.method() != http::verb::head)
      return respond(request, http::status::method_not_allowed, "only GET is served\n");
    const std::string_view target(request.target().data(), request.target().size());
    if (target == "/healthz") {
      if (shared_->options.health)
        if (auto why = shared_->options.health())
          return respond(request, http::status::service_unavailable, *why + "\n");
      return respond(request, http::status::ok, "ok\n");
    }
    if (target == "/metrics" && shared_->options.metrics)
      return respond(request, http::status::ok, shared_->options.metrics(),
                     "text/plain; version=0.0.4; charset=utf-8");
    constexpr std::string_view kSnapshot = "/snapshot/";
    if (target.rfind(kSnapshot, 0) == 0 && shared_->options.snapshot)
      return send_snapshot(request, std::string(target.substr(kSnapshot.size())));
    respond(request, http::status::not_found, "not found\n");
  }

  // GET /snapshot/NAMESPACE: asks the owner (options.snapshot) with the bearer token, then
  // streams the file it names, whole or from the byte a Range asks for.
  template <class Request>
  void send_snapshot(const Request& request, const std::string& ns) {
    std::string token;
    const auto authorization = request[http::field::authorization];
    constexpr std::string_view kBearer = "Bearer ";
    if (authorization.size() > kBearer.size() &&
        beast::iequals(authorization.substr(0, kBearer.size()), kBearer))
      token = std::string(authorization.substr(kBearer.size()));
    SnapshotAnswer answer;
    try {
      answer = shared_->options.snapshot(ns, token);
    } catch (const std::exception& e) {
      answer = SnapshotAnswer{500, "", "", e.what(), {}, {}};
    }
    if (answer.status != 200)
      return respond(request, static_cast<http::status>(answer.status), answer.message + "\n");
    // Opened here, kept by the session (file_ or source_) only once it is to be sent.
    beast::error_code ec;
    beast::file file;
    if (!answer.source) file.open(answer.path.c_str(), beast::file_mode::scan, ec);
    const std::uint64_t size = answer.source ? answer.source->size : ec ? 0 : file.size(ec);
    if (ec)
      return respond(request, http::status::internal_server_error, "cannot read the snapshot\n");
    // "Range: bytes=N-" resumes a download; with an If-Range naming another file, the whole
    // current one goes instead. Any other range is ignored (RFC 9110 allows it): whole file.
    std::uint64_t from = 0;
    const auto range = request[http::field::range];
    const auto if_range = request[http::field::if_range];
    constexpr std::string_view kBytes = "bytes=";
    if (range.size() > kBytes.size() + 1 && range.substr(0, kBytes.size()) == kBytes &&
        range.back() == '-' && (if_range.empty() || if_range == answer.etag)) {
      const std::string_view digits = range.substr(kBytes.size(), range.size() - kBytes.size() - 1);
      std::uint64_t n = 0;
      auto [end, parse_error] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
      if (parse_error == std::errc() && end == digits.data() + digits.size()) {
        if (n >= size)
          return respond(request, http::status::range_not_satisfiable,
                         "the snapshot has " + std::to_string(size) + " bytes\n");
        from = n;
      }
    }
    if (answer.admit)
      if (auto refusal = answer.admit(size - from, size))
        return respond(request, http::status::too_many_requests, refusal->message + "\n",
                       "text/plain; charset=utf-8", refusal->retry_after_seconds);
    if (from > 0 && !answer.source) file.seek(from, ec);
    if (ec)
      return respond(request, http::status::internal_server_error, "cannot read the snapshot\n");
    if (answer.source)
      source_ = std::move(answer.source->read);
    else
      file_.emplace(std::move(file));
    file_offset_ = from;
    file_response_.emplace(from > 0 ? http::status::partial_content : http::status::ok,
                           request.version());
    auto& response = *file_response_;
    response.set(http::field::server, "lattice");
    response.set(http::field::content_type, "application/vnd.sqlite3");
    response.set(http::field::etag, answer.etag);
    response.set(http::field::accept_ranges, "bytes");
    if (from > 0)
      response.set(http::field::content_range, "bytes " + std::to_string(from) + "-" +
                                                   std::to_string(size - 1) + "/" +
                                                   std::to_string(size));
    response.content_length(size - from);
    response.keep_alive(request.keep_alive() && !shared_->stopping);
    file_left_ = request.method() == http::verb::head ? 0 : size - from;
    file_chunk_.resize(64 << 10);
    file_serializer_.emplace(response);
    if (request.method() == http::verb::head) {
      expire_soon();
      return http::async_write_header(
          stream_, *file_serializer_,
          beast::bind_front_handler(&HttpSession::on_snapshot_sent, this->shared_from_this()));
    }
    send_snapshot_chunk();
  }

  void send_snapshot_chunk() {
    beast::error_code ec;
    const auto n =
        static_cast<std::size_t>(std::min<std::uint64_t>(file_left_, file_chunk_.size()));
    if (n > 0 && source_) {
      if (!source_(file_offset_, reinterpret_cast<unsigned char*>(file_chunk_.data()), n))
        ec = beast::errc::make_error_code(beast::errc::io_error);
    } else if (n > 0) {
      file_->read(file_chunk_.data(), n, ec);
    }
    if (ec) return shared_->fail(ec, peer_, "snapshot read");
    file_left_ -= n;
    file_offset_ += n;
    shared_->count(&WebSocketServerCounters::snapshot_bytes_sent, n);
    auto& body = file_response_->body();
    body.data = n > 0 ? file_chunk_.data() : nullptr;
    body.size = n;
    body.more = file_left_ > 0;
    expire_soon();
    http::async_write(
        stream_, *file_serializer_,
        beast::bind_front_handler(&HttpSession::on_snapshot_chunk, this->shared_from_this()));
  }

  void on_snapshot_chunk(beast::error_code ec, std::size_t) {
    if (ec == http::error::need_buffer) ec = {};
    if (ec) return shared_->fail(ec, peer_, "snapshot write");
    if (!file_serializer_->is_done()) return send_snapshot_chunk();
    shared_->count(&WebSocketServerCounters::snapshots_sent);
    on_snapshot_sent({}, 0);
  }

  void on_snapshot_sent(beast::error_code ec, std::size_t) {
    if (ec) return shared_->fail(ec, peer_, "snapshot write");
    const bool keep_alive = file_response_->keep_alive();
    file_serializer_.reset();
    file_response_.reset();
    file_.reset();
    source_ = nullptr;
    file_chunk_ = {};
    if (!keep_alive) return do_eof();
    do_read();
  }

  template <class Request>
  void respond(const Request& request, http::status status, std::string body,
               const char* content_type = "text/plain; charset=utf-8",
               std::uint64_t retry_after_seconds = 0) {
    response_.emplace(status, request.version());
    response_->set(http::field::server, "lattice");
    response_->set(http::field::content_type, content_type);
    if (retry_after_seconds > 0)
      response_->set(http::field::retry_after, std::to_string(retry_after_seconds));
    response_->keep_alive(request.keep_alive() && !shared_->stopping);
    const bool head = request.method() == http::verb::head;
    response_->body() = std::move(body);
    response_->prepare_payload();
    if (head) response_->body().clear();
    expire_soon();
    http::async_write(stream_, *response_,
                      beast::bind_front_handler(&HttpSession::on_write, this->shared_from_this()));
  }

  void on_write(beast::error_code ec, std::size_t) {
    if (ec) return shared_->fail(ec, peer_, "http write");
    const bool keep_alive = response_->keep_alive();
    response_.reset();
    if (!keep_alive) return do_eof();
    do_read();
  }

  void do_eof() {
    if constexpr (kIsTls<Stream>) {
      expire_soon();
      stream_.async_shutdown(
          beast::bind_front_handler(&HttpSession::on_shutdown, this->shared_from_this()));
    } else {
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }
  }

  void on_shutdown(beast::error_code) {}

  std::shared_ptr<Shared> shared_;
  Stream stream_;
  // The stream's strand, kept: the stream is moved into the WebSocket session at the upgrade.
  net::any_io_executor strand_;
  beast::flat_buffer buffer_;
  std::string peer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> response_;
  // A snapshot on its way out: the file (or the source of its bytes), where it is and what is
  // left of it, one chunk, the response.
  std::optional<beast::file> file_;
  std::function<bool(std::uint64_t, unsigned char*, std::size_t)> source_;
  std::uint64_t file_offset_ = 0;
  std::uint64_t file_left_ = 0;
  std::vector<char> file_chunk_;
  std::optional<http::response<http::buffer_body>> file_response_;
  std::optional<http::response_serializer<http::buffer_body>> file_serializer_;
  std::unique_ptr<Admission> admission_;
  bool upgraded_ = false;
  std::weak_ptr<Session> upgraded_to_;  // the WebSocket session this one became
};

}  // namespace

// The PROXY protocol header a trusted proxy sends first on a connection: read on the socket's
// strand within the handshake timeout, then the connection is admitted, on the acceptor's
// strand, as the client the header names. Anything else closes it.
class ProxyHeaderRead : public std::enable_shared_from_this<ProxyHeaderRead> {
 public:
  ProxyHeaderRead(std::shared_ptr<Shared> shared, tcp::socket socket, std::string proxy)
      : shared_(std::move(shared)),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        proxy_(std::move(proxy)) {}
  ~ProxyHeaderRead() {
    const std::lock_guard lock(shared_->mutex);
    --shared_->proxy_headers_pending;
  }
  ProxyHeaderRead(const ProxyHeaderRead&) = delete;
  ProxyHeaderRead& operator=(const ProxyHeaderRead&) = delete;

  void start() {
    timer_.expires_after(std::chrono::seconds(shared_->options.handshake_timeout_seconds));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->fail("none within the handshake timeout");
    });
    bytes_.resize(proxy_protocol::kFixedBytes);
    net::async_read(
        socket_, net::buffer(bytes_),
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_fixed(ec); });
  }

 private:
  void on_fixed(beast::error_code ec) {
    if (ec) return fail(ec.message());
    std::size_t rest = 0;
    try {
      rest = proxy_protocol::remaining_bytes(bytes_);
    } catch (const Error& e) {
      return fail(e.what());
    }
    bytes_.resize(proxy_protocol::kFixedBytes + rest);
    net::async_read(socket_, net::buffer(bytes_.data() + proxy_protocol::kFixedBytes, rest),
                    [self = shared_from_this()](beast::error_code read_ec, std::size_t) {
                      self->on_rest(read_ec);
                    });
  }

  void on_rest(beast::error_code ec) {
    if (ec) return fail(ec.message());
    proxy_protocol::Header header;
    try {
      header = proxy_protocol::parse(bytes_);
    } catch (const Error& e) {
      return fail(e.what());
    }
    timer_.cancel();
    std::string source = address_text(socket_), peer = endpoint_text(socket_);
    if (!header.local) {
      source = header.address.to_string();
      peer = (header.address.is_v6() ? "[" + source + "]" : source) + ":" +
             std::to_string(header.port);
    }
    net::post(shared_->acceptor.get_executor(),
              [shared = shared_, socket = std::move(socket_), source = std::move(source),
               peer = std::move(peer)]() mutable {
                shared->admit(std::move(socket), std::move(source), std::move(peer));
              });
  }

  void fail(const std::string& why) {
    if (!socket_.is_open()) return;
    beast::error_code ignored;
    socket_.close(ignored);
    timer_.cancel();
    shared_->proxy_header_failed("PROXY header from " + proxy_ + ": " + why +
                                 "; connection closed");
  }

  std::shared_ptr<Shared> shared_;
  tcp::socket socket_;
  net::steady_timer timer_;
  std::string proxy_;
  std::string bytes_;
};

// Each accepted socket gets a strand of its own (several threads); the handler runs on the
// acceptor's.
void WebSocketServer::Shared::do_accept() {
  acceptor.async_accept(executor_for_socket(),
                        beast::bind_front_handler(&Shared::on_accept, shared_from_this()));
}

void WebSocketServer::Shared::on_accept(beast::error_code ec, tcp::socket socket) {
  if (stopping || !acceptor.is_open()) return;
  if (ec) {
    log_throttled(std::string("accept: ") + ec.message());
    // Out of file descriptors and the like: try again shortly rather than spin.
    retry_timer.expires_after(std::chrono::milliseconds(100));
    retry_timer.async_wait([self = shared_from_this()](beast::error_code wait_ec) {
      if (!wait_ec && !self->stopping) self->do_accept();
    });
    return;
  }
  beast::error_code endpoint_ec;
  const auto endpoint = socket.remote_endpoint(endpoint_ec);
  if (!endpoint_ec && !proxies.empty() && proxies.contains(endpoint.address())) {
    // A trusted proxy: who the client is comes in the header. Bounded as the unauthenticated
    // are, and for as long as a handshake.
    std::string proxy = endpoint_text(socket);
    bool room = false;
    {
      const std::lock_guard lock(mutex);
      room = open_sockets + proxy_headers_pending < options.max_connections &&
             proxy_headers_pending < options.max_unauthenticated;
      if (room) ++proxy_headers_pending;
    }
    if (room) {
      std::make_shared<ProxyHeaderRead>(shared_from_this(), std::move(socket), std::move(proxy))
          ->start();
    } else {
      count(&WebSocketServerCounters::refused_at_accept);
      log_throttled("refused a connection from the proxy " + proxy + ": " +
                    "too many connections waiting for their PROXY header");
      beast::error_code ignored;
      socket.close(ignored);
    }
    return do_accept();
  }
  std::string source = address_text(socket), peer = endpoint_text(socket);
  admit(std::move(socket), std::move(source), std::move(peer));
  do_accept();
}

void WebSocketServer::Shared::admit(tcp::socket socket, std::string source, std::string peer) {
  if (stopping) return;
  beast::error_code ignored;
  // What an unauthenticated connection may hold is bounded before it costs a TLS handshake.
  std::string refusal;
  // A full list makes room by closing the oldest: a device that completes its hello promptly
  // gets in whatever an attacker holds. Taken off the list here, closed on their own strands.
  std::vector<std::shared_ptr<Session>> evicted;
  {
    const std::lock_guard lock(mutex);
    const std::size_t from_source =
        preauth_per_source.count(source) ? preauth_per_source[source] : 0;
    if (open_sockets >= options.max_connections)
      refusal = std::to_string(open_sockets) + " connections are open, the most this relay takes";
    else if (!admit_connect(source))
      refusal = "more than " +
                std::to_string(static_cast<int>(options.max_connects_per_source_per_second)) +
                " new connections per second from this address";
    else if (from_source >= options.max_unauthenticated_per_source)
      refusal =
          std::to_string(from_source) + " unauthenticated connections from this address already";
    if (!refusal.empty()) {
      ++counters.refused_at_accept;
    } else {
      while (!preauth.empty() && preauth.size() >= options.max_unauthenticated) {
        Shared::PreAuth oldest = preauth.front();
        oldest.admission->leave_list();
        ++counters.evicted_unauthenticated;
        if (auto session = oldest.session.lock()) evicted.push_back(std::move(session));
      }
    }
  }
  for (const auto& session : evicted) session->evict();
  if (!refusal.empty()) {
    log_throttled("refused a connection from " + source + ": " + refusal);
    socket.close(ignored);
    return;
  }
  socket.set_option(tcp::no_delay(true), ignored);
  auto admission = std::make_unique<Admission>(shared_from_this(), std::move(source));
  if (tls) {
    std::make_shared<HttpSession<TlsStream>>(TlsStream(std::move(socket), *tls), shared_from_this(),
                                             std::move(peer), std::move(admission))
        ->start();
  } else {
    std::make_shared<HttpSession<PlainStream>>(PlainStream(std::move(socket)), shared_from_this(),
                                               std::move(peer), std::move(admission))
        ->start();
  }
}

WebSocketServer::WebSocketServer(boost::asio::io_context& io, WebSocketServerOptions options) {
  if (!options.on_connection)
    throw Error(ErrorCode::kInvalidArgument, "websocket server: on_connection is required");
  shared_ = std::make_shared<Shared>(io, std::move(options));
  Shared& s = *shared_;
  const auto& opts = s.options;

  if (!opts.insecure) {
    if (opts.tls_cert_file.empty() || opts.tls_key_file.empty())
      throw Error(ErrorCode::kInvalidArgument,
                  "TLS needs both a certificate and a key file (or run insecure)");
    s.tls.emplace(ssl::context::tls_server);
    s.tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                       ssl::context::single_dh_use | ssl::context::no_compression);
    // Mozilla's "intermediate" profile, stricter: TLS 1.3 (preferred: OpenSSL negotiates the
    // highest version both speak) and TLS 1.2 with AEAD suites and ECDHE only (no CBC, no SHA-1
    // MAC, no static RSA key exchange, no DHE), for ECDSA and RSA certificates alike. No
    // renegotiation, which a client could start over and over.
    SSL_CTX* native = s.tls->native_handle();
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(native,
                                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1 ||
        SSL_CTX_set_ciphersuites(native,
                                 "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                 "TLS_CHACHA20_POLY1305_SHA256") != 1 ||
        SSL_CTX_set1_groups_list(native, "X25519:P-256:P-384") != 1)
      throw Error(ErrorCode::kInternal, "OpenSSL refused the relay's TLS cipher configuration");
    // Idle connections give their TLS read and write buffers back (tens of KiB each).
    SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);
    beast::error_code ec;
    s.tls->use_certificate_chain_file(opts.tls_cert_file, ec);
    if (ec)
      throw Error(ErrorCode::kInvalidArgument,
                  "cannot load TLS certificate '" + opts.tls_cert_file + "': " + ec.message());
    s.tls->use_private_key_file(opts.tls_key_file, ssl::context::pem, ec);
    if (ec)
      throw Error(ErrorCode::kInvalidArgument,
                  "cannot load TLS key '" + opts.tls_key_file + "': " + ec.message());
  }

  beast::error_code ec;
  const auto address = net::ip::make_address(opts.host, ec);
  if (ec)
    throw Error(ErrorCode::kInvalidArgument,
                "'" + opts.host + "' is not an IP address: " + ec.message());
  const tcp::endpoint endpoint(address, opts.port);
  const std::string where = "listen on " + opts.host + ":" + std::to_string(opts.port);
  s.acceptor.open(endpoint.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(endpoint, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error(ErrorCode::kIo, "cannot " + where + ": " + ec.message());
  s.port = s.acceptor.local_endpoint().port();
  s.host = opts.host;
}

WebSocketServer::~WebSocketServer() { stop(); }

std::uint16_t WebSocketServer::port() const { return shared_->port; }
const std::string& WebSocketServer::host() const { return shared_->host; }

void WebSocketServer::start() {
  if (shared_->stopping) return;
  net::dispatch(shared_->acceptor.get_executor(), [s = shared_] { s->do_accept(); });
}

void WebSocketServer::stop() {
  Shared& s = *shared_;
  if (s.stopping.exchange(true)) return;
  net::dispatch(s.acceptor.get_executor(), [shared = shared_] {
    beast::error_code ignored;
    shared->acceptor.close(ignored);
    shared->retry_timer.cancel();
  });
  std::vector<std::shared_ptr<Session>> sessions;
  {
    const std::lock_guard lock(s.mutex);
    for (const auto& [raw, weak] : s.sessions)
      if (auto session = weak.lock()) sessions.push_back(std::move(session));
  }
  for (const auto& session : sessions) session->shutdown();
}

std::size_t WebSocketServer::open_connections() const {
  const std::lock_guard lock(shared_->mutex);
  return shared_->open_websockets;
}
std::size_t WebSocketServer::unauthenticated_connections() const {
  const std::lock_guard lock(shared_->mutex);
  return shared_->preauth.size();
}
WebSocketServerCounters WebSocketServer::counters() const {
  const std::lock_guard lock(shared_->mutex);
  return shared_->counters;
}

}  // namespace lattice::transport
