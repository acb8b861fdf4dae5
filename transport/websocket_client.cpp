#include "transport/websocket_client.hpp"

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <cctype>
#include <deque>
#include <sstream>
#include <type_traits>

#include "transport/client_tls.hpp"

namespace lattice::transport {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using boost::system::error_code;

// The URL as an error message may show it: credentials a user put in it by mistake (a
// `user:password@` or a `?token=...`) are replaced by `***`, since messages reach logs.
std::string redacted_url(std::string_view url) {
  std::string out(url);
  const std::size_t cut = out.find_first_of("?#");
  if (cut != std::string::npos) out = out.substr(0, cut + 1) + "***";
  const std::size_t scheme = out.find("://");
  const std::size_t start = scheme == std::string::npos ? 0 : scheme + 3;
  const std::size_t end = std::min(out.find('/', start), out.size());
  const std::size_t at = out.rfind('@', end == 0 ? 0 : end - 1);
  if (at != std::string::npos && at >= start && at < end)
    out = out.substr(0, start) + "***" + out.substr(at);
  return out;
}

Error invalid_url(std::string_view url, const std::string& problem) {
  return Error(ErrorCode::kInvalidArgument, "URL '" + redacted_url(url) + "': " + problem);
}

bool starts_with_nocase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  return true;
}

}  // namespace

WebSocketUrl WebSocketUrl::parse(std::string_view url) {
  WebSocketUrl out;
  std::string_view rest;
  if (starts_with_nocase(url, "wss://")) {
    out.secure = true;
    rest = url.substr(6);
  } else if (starts_with_nocase(url, "ws://")) {
    out.secure = false;
    rest = url.substr(5);
  } else {
    throw invalid_url(url, "the scheme must be wss:// or ws://");
  }
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos)
    throw invalid_url(url, "no namespace: expected ws[s]://HOST[:PORT]/NAMESPACE");
  const std::string_view authority = rest.substr(0, slash);
  const std::string_view path = rest.substr(slash + 1);
  if (authority.find('@') != std::string_view::npos)
    throw invalid_url(url, "user info ('USER@') is not supported");

  std::string_view port_text;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos)
      throw invalid_url(url, "'[' without ']' around the IPv6 address");
    out.host = std::string(authority.substr(1, close - 1));
    error_code ec;
    net::ip::make_address_v6(out.host, ec);
    if (ec) throw invalid_url(url, "'" + out.host + "' in brackets is not an IPv6 address");
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw invalid_url(url, "expected ':PORT' after ']'");
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    const std::size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      has_port = true;
      if (port_text.find(':') != std::string_view::npos)
        throw invalid_url(url, "an IPv6 address must be written in brackets, e.g. [::1]");
    }
    for (char c : out.host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.')
        throw invalid_url(url, "the host '" + out.host +
                                   "' has a character that is not a letter, digit, '-' or '.'");
  }
  if (out.host.empty()) throw invalid_url(url, "no host");

  if (has_port) {
    const bool digits = !port_text.empty() && port_text.size() <= 5 &&
                        std::all_of(port_text.begin(), port_text.end(),
                                    [](char c) { return c >= '0' && c <= '9'; });
    const unsigned long value = digits ? std::stoul(std::string(port_text)) : 0;
    if (value < 1 || value > 65535)
      throw invalid_url(url, "the port '" + std::string(port_text) + "' is not 1 to 65535");
    out.port = static_cast<std::uint16_t>(value);
  } else {
    out.port = out.secure ? 443 : 80;
  }

  if (path.find_first_of("?#") != std::string_view::npos)
    throw invalid_url(url, "a query or fragment is not supported");
  if (path.find('/') != std::string_view::npos)
    throw invalid_url(url, "the path must be one namespace, '/NAMESPACE'");
  if (path.empty()) throw invalid_url(url, "no namespace: expected ws[s]://HOST[:PORT]/NAMESPACE");
  if (!valid_namespace(path))
    throw invalid_url(url, "the namespace '" + std::string(path) +
                               "' is not 1 to 64 letters, digits, '_' or '-'");
  out.ns = std::string(path);
  return out;
}

std::string WebSocketUrl::authority() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool is_loopback_host(std::string_view host) {
  std::string lower(host);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "localhost") return true;
  error_code ec;
  const net::ip::address address = net::ip::make_address(lower, ec);
  return !ec && detail::is_loopback_address(address);
}

WebSocketUrl check_url(std::string_view url, const ClientOptions& options) {
  WebSocketUrl parsed = WebSocketUrl::parse(url);
  if (!parsed.secure && !options.allow_insecure_remote && !is_loopback_host(parsed.host))
    throw Error(ErrorCode::kInvalidArgument,
                "refusing ws:// to '" + parsed.host +
                    "', which is not a loopback host: plain WebSocket would send the token and "
                    "the data unencrypted; use wss:// (or allow insecure remote connections "
                    "explicitly)");
  return parsed;
}

namespace {

// One connection, TLS or not. Owns its stream, buffer and outbound queue; every handler runs
// on its strand. Lifetime: shared, held by pending operations and by the Connection's users.
template <bool kSecure>
class WebSocketConnection : public Connection,
                            public std::enable_shared_from_this<WebSocketConnection<kSecure>> {
  using NextLayer = std::conditional_t<kSecure, ssl::stream<beast::tcp_stream>, beast::tcp_stream>;

 public:
  template <class... NextLayerArgs>
  WebSocketConnection(net::strand<net::io_context::executor_type> strand,
                      std::shared_ptr<ssl::context> tls, WebSocketUrl url, ClientOptions options,
                      ConnectHandler on_connected, NextLayerArgs&&... next_layer_args)
      : strand_(strand),
        tls_(std::move(tls)),
        url_(std::move(url)),
        options_(std::move(options)),
        on_connected_(std::move(on_connected)),
        resolver_(strand_),
        ws_(std::forward<NextLayerArgs>(next_layer_args)...),
        timer_(strand_) {}

  void run() {
    timer_.expires_after(options_.connect_timeout);
    timer_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (!ec && !self->open_)
        self->abort_connect("timed out after " +
                            std::to_string(self->options_.connect_timeout.count()) + " ms");
    });
    resolver_.async_resolve(
        url_.host, std::to_string(url_.port),
        beast::bind_front_handler(&WebSocketConnection::on_resolve, this->shared_from_this()));
  }

  CancelConnect canceller() {
    std::weak_ptr<WebSocketConnection> weak = this->shared_from_this();
    return [weak] {
      if (auto self = weak.lock())
        net::post(self->strand_, [self] {
          if (!self->open_) self->abort_connect("connection attempt cancelled");
        });
    };
  }

  // Connection
  void set_handlers(Handlers handlers) override { handlers_ = std::move(handlers); }

  void send(std::string frame) override {
    net::post(strand_, [self = this->shared_from_this(), frame = std::move(frame)]() mutable {
      self->do_send(std::move(frame));
    });
  }

  void close(const std::string& reason) override {
    net::post(strand_, [self = this->shared_from_this(), reason] { self->request_close(reason); });
  }

  std::string peer() const override { return peer_; }

 private:
  void fail(error_code ec, const std::string& what) {
    if (!abort_reason_.empty()) return finish(abort_reason_);
    std::string reason = what + ": " + ec.message();
    if constexpr (kSecure) {
      // OpenSSL's error says "certificate verify failed"; its verify result says why.
      if (!open_ && tls_started_) {
        const std::string detail = detail::verify_failure_detail(ws_.next_layer().native_handle(),
                                                                 url_.host, host_mismatch_);
        if (!detail.empty()) reason += " " + detail;
      }
    }
    finish(reason);
  }

  void on_resolve(error_code ec, tcp::resolver::results_type results) {
    if (ec) return fail(ec, "resolve '" + url_.host + "'");
    if (!url_.secure && !options_.allow_insecure_remote) {
      // "localhost" passed check_url by name; make sure it also means loopback here.
      for (const auto& entry : results)
        if (!detail::is_loopback_address(entry.endpoint().address()))
          return finish("refusing ws:// to '" + url_.host + "': it resolves to " +
                            entry.endpoint().address().to_string() +
                            ", which is not a loopback address",
                        ErrorCode::kInvalidArgument);
    }
    beast::get_lowest_layer(ws_).async_connect(
        results,
        beast::bind_front_handler(&WebSocketConnection::on_connect, this->shared_from_this()));
  }

  void on_connect(error_code ec, tcp::endpoint endpoint) {
    if (ec) return fail(ec, "connect to " + url_.authority());
    {
      std::ostringstream text;
      text << endpoint;
      peer_ = text.str();
    }
    // Frames are small and latency matters more than packet count.
    beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true), ec);
    if constexpr (kSecure) {
      if (auto problem = detail::prepare_client_tls(ws_.next_layer(), url_.host, &host_mismatch_))
        return finish("TLS handshake with " + url_.authority() + ": " + *problem);
      tls_started_ = true;
      ws_.next_layer().async_handshake(
          ssl::stream_base::client,
          beast::bind_front_handler(&WebSocketConnection::on_tls_handshake,
                                    this->shared_from_this()));
    } else {
      start_websocket_handshake();
    }
  }

  void on_tls_handshake(error_code ec) {
    if (ec) return fail(ec, "TLS handshake with " + url_.authority());
    start_websocket_handshake();
  }

  void start_websocket_handshake() {
    websocket::stream_base::timeout timeouts;
    timeouts.handshake_timeout = options_.connect_timeout;
    timeouts.idle_timeout = options_.idle_timeout;
    timeouts.keep_alive_pings = true;  // websocket pings at half the idle timeout
    ws_.set_option(timeouts);
    ws_.set_option(websocket::stream_base::decorator([](websocket::request_type& request) {
      request.set(beast::http::field::user_agent, "lattice-sync/1");
    }));
    ws_.read_message_max(options_.max_frame_bytes);
    ws_.binary(true);
    ws_.async_handshake(
        url_.authority(), "/" + url_.ns,
        beast::bind_front_handler(&WebSocketConnection::on_handshake, this->shared_from_this()));
  }

  void on_handshake(error_code ec) {
    if (ec) return fail(ec, "WebSocket handshake with " + url_.authority());
    if (!abort_reason_.empty()) return finish(abort_reason_);
    open_ = true;
    timer_.cancel();
    ConnectHandler on_connected = std::move(on_connected_);
    on_connected_ = nullptr;
    on_connected(std::nullopt, this->shared_from_this());
    do_read();
  }

  void do_read() {
    if (closed_) return;
    ws_.async_read(buffer_, beast::bind_front_handler(&WebSocketConnection::on_read,
                                                      this->shared_from_this()));
  }

  void on_read(error_code ec, std::size_t) {
    if (ec == websocket::error::closed) {
      const std::string said(ws_.reason().reason.c_str());
      return finish("closed by the relay" + (said.empty() ? std::string() : ": " + said));
    }
    if (ec) return fail(ec, "read from " + url_.authority());
    std::string frame = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    if (!ws_.got_binary()) {
      request_close("the relay sent a text message; frames travel as binary messages");
    } else if (!closing_) {
      // A copy: the handler may replace the handlers (e.g. its owner goes away) while it runs.
      auto on_frame = handlers_.on_frame;
      try {
        if (on_frame) on_frame(frame);
      } catch (const std::exception& e) {
        request_close(std::string("the frame handler failed: ") + e.what());
      }
    }
    do_read();
  }

  void do_send(std::string frame) {
    if (closed_ || closing_) return;
    if (queued_bytes_ + frame.size() > options_.max_queued_bytes)
      return request_close("outbound queue over " + std::to_string(options_.max_queued_bytes) +
                           " bytes");
    queued_bytes_ += frame.size();
    queue_.push_back(std::move(frame));
    if (!writing_) do_write();
  }

  // At most one write in flight; the queue behind it is bounded by max_queued_bytes.
  void do_write() {
    writing_ = true;
    ws_.async_write(
        net::buffer(queue_.front()),
        beast::bind_front_handler(&WebSocketConnection::on_write, this->shared_from_this()));
  }

  void on_write(error_code ec, std::size_t) {
    writing_ = false;
    if (ec) return fail(ec, "write to " + url_.authority());
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    if (closed_) return;
    if (!queue_.empty()) {
      do_write();
    } else if (closing_) {
      start_close();
    } else if (auto on_drained = handlers_.on_drained) {
      on_drained();  // a copy: the handler may replace the handlers
    }
  }

  void request_close(const std::string& reason) {
    if (closed_ || closing_) return;
    if (!open_) return abort_connect(reason);
    closing_ = true;
    close_reason_ = reason;
    // websocket::stream allows a close beside a read but not beside a write.
    if (!writing_) start_close();
  }

  void start_close() {
    close_started_ = true;
    ws_.async_close(websocket::close_code::normal, [self = this->shared_from_this()](error_code) {
      self->finish(self->close_reason_);
    });
  }

  void abort_connect(const std::string& reason) {
    if (closed_ || open_) return;
    abort_reason_ = reason;
    resolver_.cancel();
    error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  // The end: reports the failed attempt, or delivers on_close once.
  void finish(const std::string& reason, ErrorCode code = ErrorCode::kIo) {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    queue_.clear();
    queued_bytes_ = 0;
    if (!close_started_) {
      error_code ignored;
      beast::get_lowest_layer(ws_).socket().close(ignored);
    }
    if (!open_) {
      ConnectHandler on_connected = std::move(on_connected_);
      on_connected_ = nullptr;
      if (on_connected) on_connected(Error(code, reason), nullptr);
      return;
    }
    auto on_close = std::move(handlers_.on_close);
    handlers_ = {};
    if (on_close) on_close(closing_ ? close_reason_ : reason);
  }

  net::strand<net::io_context::executor_type> strand_;
  std::shared_ptr<ssl::context> tls_;  // before ws_, which refers to it
  WebSocketUrl url_;
  ClientOptions options_;
  ConnectHandler on_connected_;
  Handlers handlers_;
  tcp::resolver resolver_;
  websocket::stream<NextLayer> ws_;
  net::steady_timer timer_;  // bounds the connection attempt
  beast::flat_buffer buffer_;
  std::string peer_;
  std::deque<std::string> queue_;
  std::size_t queued_bytes_ = 0;
  std::string close_reason_;
  std::string abort_reason_;
  bool tls_started_ = false;
  bool host_mismatch_ = false;
  bool open_ = false;           // the WebSocket handshake succeeded
  bool writing_ = false;        // an async_write is in flight
  bool closing_ = false;        // close requested; the queue drains, then the close handshake
  bool close_started_ = false;  // async_close is in flight
  bool closed_ = false;         // finished: the handler or on_close has been called
};

}  // namespace

CancelConnect connect_websocket(boost::asio::io_context& io, std::string_view url,
                                ClientOptions options, ConnectHandler on_connected) {
  auto report = [&io, &on_connected](Error error) -> CancelConnect {
    net::post(io, [handler = std::move(on_connected), error = std::move(error)] {
      handler(error, nullptr);
    });
    return [] {};
  };
  WebSocketUrl parsed;
  try {
    parsed = check_url(url, options);
  } catch (const Error& e) {
    return report(e);
  }
  auto strand = net::make_strand(io);
  if (!parsed.secure) {
    auto connection = std::make_shared<WebSocketConnection<false>>(
        strand, nullptr, std::move(parsed), std::move(options), std::move(on_connected), strand);
    connection->run();
    return connection->canceller();
  }

  std::shared_ptr<ssl::context> tls;
  try {
    tls = detail::client_tls_context(options.ca_file);
  } catch (const Error& e) {
    return report(e);
  }
  ssl::context& context = *tls;
  auto connection = std::make_shared<WebSocketConnection<true>>(
      strand, std::move(tls), std::move(parsed), std::move(options), std::move(on_connected),
      strand, context);
  connection->run();
  return connection->canceller();
}

}  // namespace lattice::transport
