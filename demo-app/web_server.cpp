#include "demo-app/web_server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

namespace lattice::demo {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr std::size_t kMaxBodyBytes = 64 * 1024;
constexpr auto kRequestTimeout = std::chrono::seconds(30);

void fail(beast::error_code ec, const char* what) {
  // Closed pages and timeouts are routine for a local UI; anything else is worth a line.
  if (ec == asio::error::operation_aborted || ec == asio::error::eof ||
      ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
      ec == beast::error::timeout || ec == http::error::end_of_stream)
    return;
  std::fprintf(stderr, "lattice-todo: %s: %s\n", what, ec.message().c_str());
}

void parse_params(const std::string& text, std::map<std::string, std::string>& params) {
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('&', start);
    if (end == std::string::npos) end = text.size();
    const std::string pair = text.substr(start, end - start);
    const std::size_t eq = pair.find('=');
    if (!pair.empty())
      params[url_decode(pair.substr(0, eq))] =
          eq == std::string::npos ? "" : url_decode(pair.substr(eq + 1));
    start = end + 1;
  }
}

const char* mime_type(const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const std::string s(suffix);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with(".html")) return "text/html; charset=utf-8";
  if (ends_with(".css")) return "text/css; charset=utf-8";
  if (ends_with(".js")) return "text/javascript; charset=utf-8";
  if (ends_with(".svg")) return "image/svg+xml";
  if (ends_with(".png")) return "image/png";
  return "application/octet-stream";
}

// Only plain names inside the folder: no "..", no subfolders, no hidden files.
bool safe_file_name(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;
  for (const char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_'))
      return false;
  return true;
}

}  // namespace

std::string url_decode(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%' && i + 2 < text.size() &&
               std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

bool trusted_request(const std::string& peer_address, const std::string& host,
                     const std::string& origin, bool post) {
  // The Host header is whatever the client says; the peer address is where the connection
  // comes from. Only the machine itself may use the board, whatever address the app listens on.
  boost::system::error_code ec;
  auto address = asio::ip::make_address(peer_address, ec);
  if (ec) return false;
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  if (!address.is_loopback()) return false;
  // Other web pages the browser has open may send requests to 127.0.0.1 too: refuse a Host
  // that is not a loopback name (DNS rebinding) and a POST from another origin (cross-site
  // form posts).
  if (!host.starts_with("127.0.0.1:") && !host.starts_with("localhost:") &&
      !host.starts_with("[::1]:"))
    return false;
  return !post || origin.empty() || origin == "http://" + host;
}

class EventStream;

struct WebServer::Impl : std::enable_shared_from_this<WebServer::Impl> {
  Impl(asio::io_context& io, std::string web_dir, ApiHandler api)
      : io(io), acceptor(io), web_dir(std::move(web_dir)), api(std::move(api)) {}

  void do_accept();
  void on_accept(beast::error_code ec, tcp::socket socket);

  asio::io_context& io;
  tcp::acceptor acceptor;
  std::string web_dir;
  ApiHandler api;
  std::set<std::shared_ptr<EventStream>> streams;
  bool closed = false;
};

// One page's event stream: the response header, then one "data: ...\n\n" per event. At most
// one write in flight; behind it only the newest event waits.
class EventStream : public std::enable_shared_from_this<EventStream> {
 public:
  EventStream(tcp::socket socket, std::shared_ptr<WebServer::Impl> server)
      : socket_(std::move(socket)), server_(std::move(server)) {}

  void start(const std::string& first_event) {
    writing_ =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        "Connection: close\r\n\r\n" +
        format(first_event);
    do_write();
    do_read();
  }

  void send(const std::string& data) {
    if (busy_)
      next_ = format(data);
    else {
      writing_ = format(data);
      do_write();
    }
  }

  void close() {
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

 private:
  static std::string format(const std::string& data) { return "data: " + data + "\n\n"; }

  void do_write() {
    busy_ = true;
    asio::async_write(
        socket_, asio::buffer(writing_),
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    busy_ = false;
    if (ec) return drop(ec, "event stream write");
    if (!next_.empty()) {
      writing_ = std::move(next_);
      next_.clear();
      do_write();
    }
  }

  // A page sends nothing on its event stream; a read completes only when it goes away.
  void do_read() {
    socket_.async_read_some(asio::buffer(read_byte_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->drop(ec ? ec : asio::error::eof, "event stream read");
                            });
  }

  void drop(beast::error_code ec, const char* what) {
    fail(ec, what);
    close();
    server_->streams.erase(shared_from_this());
  }

  tcp::socket socket_;
  std::shared_ptr<WebServer::Impl> server_;
  std::string writing_, next_;
  bool busy_ = false;
  char read_byte_[1] = {};
};

// One HTTP connection: requests in, responses out, until the peer closes, an event stream takes
// the socket over, or the request timeout passes.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket socket, std::shared_ptr<WebServer::Impl> server)
      : stream_(std::move(socket)), server_(std::move(server)) {}

  void do_read() {
    parser_.emplace();
    parser_->body_limit(kMaxBodyBytes);
    stream_.expires_after(kRequestTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

 private:
  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream) return do_close();
    if (ec) return fail(ec, "read");
    const http::request<http::string_body>& req = parser_->get();

    HttpRequest request;
    request.method = std::string(req.method_string());
    const std::string target(req.target());
    const std::size_t question = target.find('?');
    request.path = target.substr(0, question);
    if (question != std::string::npos) parse_params(target.substr(question + 1), request.params);
    if (req[http::field::content_type].starts_with("application/x-www-form-urlencoded"))
      parse_params(req.body(), request.params);

    HttpResponse response;
    if (!trusted(req)) {
      response = {403, "text/plain; charset=utf-8", "forbidden: not a request of this page\n"};
    } else if (request.method == "GET" && request.path == "/api/events") {
      return start_events();
    } else {
      response = respond(request);
    }
    auto res = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(response.status), req.version());
    res->set(http::field::server, "lattice-todo");
    res->set(http::field::content_type, response.content_type);
    res->set(http::field::cache_control, "no-store");
    res->keep_alive(req.keep_alive());
    res->body() = std::move(response.body);
    res->prepare_payload();
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, std::size_t) {
                        self->on_write(ec, res->keep_alive());
                      });
  }

  bool trusted(const http::request<http::string_body>& req) {
    beast::error_code ec;
    const auto peer = stream_.socket().remote_endpoint(ec);
    return !ec &&
           trusted_request(peer.address().to_string(), std::string(req[http::field::host]),
                           std::string(req[http::field::origin]), req.method() == http::verb::post);
  }

  HttpResponse respond(const HttpRequest& request) {
    if (request.path.starts_with("/api/")) {
      try {
        return server_->api(request);
      } catch (const std::exception& e) {
        return {500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
      }
    }
    if (request.method != "GET") return {405, "text/plain; charset=utf-8", "method not allowed\n"};
    const std::string name = request.path == "/" ? "index.html" : request.path.substr(1);
    if (!safe_file_name(name)) return {404, "text/plain; charset=utf-8", "not found\n"};
    std::ifstream file(server_->web_dir + "/" + name, std::ios::binary);
    if (!file) return {404, "text/plain; charset=utf-8", "not found\n"};
    std::ostringstream body;
    body << file.rdbuf();
    return {200, mime_type(name), body.str()};
  }

  void on_write(beast::error_code ec, bool keep_alive) {
    if (ec) return fail(ec, "write");
    if (!keep_alive) return do_close();
    do_read();
  }

  void start_events() {
    stream_.expires_never();
    auto events = std::make_shared<EventStream>(stream_.release_socket(), server_);
    server_->streams.insert(events);
    events->start(server_->api(HttpRequest{"GET", "/api/state", {}}).body);
  }

  void do_close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<WebServer::Impl> server_;
};

void WebServer::Impl::do_accept() {
  acceptor.async_accept(io, [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
    self->on_accept(ec, std::move(socket));
  });
}

void WebServer::Impl::on_accept(beast::error_code ec, tcp::socket socket) {
  if (closed) return;
  if (ec)
    fail(ec, "accept");
  else
    std::make_shared<HttpSession>(std::move(socket), shared_from_this())->do_read();
  do_accept();
}

WebServer::WebServer(asio::io_context& io, const std::string& host, unsigned short port,
                     std::string web_dir, ApiHandler api)
    : impl_(std::make_shared<Impl>(io, std::move(web_dir), std::move(api))) {
  const tcp::endpoint endpoint(asio::ip::make_address(host), port);
  impl_->acceptor.open(endpoint.protocol());
  impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
  impl_->acceptor.bind(endpoint);
  impl_->acceptor.listen(asio::socket_base::max_listen_connections);
  impl_->do_accept();
}

WebServer::~WebServer() { close(); }

unsigned short WebServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void WebServer::broadcast(const std::string& data) {
  // A copy: a failed send may erase its stream from the set.
  const auto streams = impl_->streams;
  for (const auto& stream : streams) stream->send(data);
}

void WebServer::close() {
  if (impl_->closed) return;
  impl_->closed = true;
  beast::error_code ignored;
  impl_->acceptor.close(ignored);
  for (const auto& stream : impl_->streams) stream->close();
  impl_->streams.clear();
}

}  // namespace lattice::demo
