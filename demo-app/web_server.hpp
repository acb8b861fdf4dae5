#pragma once
// The demo app's local web server: static files from a folder, an API handler, and a stream of
// server-sent events (GET /api/events) that pushes the latest board to every open page. HTTP/1.1
// over plain TCP with Boost.Beast, meant for 127.0.0.1 only; Beast stays inside the .cpp.
//
// Single-threaded: every member, the API handler included, runs on the thread that runs the
// io_context passed to the constructor.

#include <boost/asio/io_context.hpp>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace lattice::demo {

struct HttpRequest {
  std::string method;                         // "GET", "POST", ...
  std::string path;                           // the target up to '?', e.g. "/api/items"
  std::map<std::string, std::string> params;  // query string and form-encoded body, decoded
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

class WebServer {
 public:
  // Answers every request whose path starts with /api/ except /api/events.
  using ApiHandler = std::function<HttpResponse(const HttpRequest&)>;

  // Listens on `host`:`port` (port 0: the system picks; see port()). Static files are served
  // from `web_dir` ("/" is index.html). Throws boost::system::system_error when it cannot bind.
  WebServer(boost::asio::io_context& io, const std::string& host, unsigned short port,
            std::string web_dir, ApiHandler api);
  ~WebServer();
  WebServer(const WebServer&) = delete;
  WebServer& operator=(const WebServer&) = delete;

  unsigned short port() const;

  // Sends `data` as one event to every open event stream. A stream whose previous event is
  // still being written keeps only the newest one: events are whole snapshots, so a slow page
  // skips to the latest instead of queueing.
  void broadcast(const std::string& data);

  // Stops accepting and closes every connection.
  void close();

  struct Impl;  // public for the session types of the .cpp; opaque to everyone else

 private:
  std::shared_ptr<Impl> impl_;
};

// Whether a request may use the board: it must come from this machine (`peer_address`, the
// connection's remote address, is a loopback address, whatever address the server listens
// on), name a loopback host, and, for a POST, come from the page's own origin (or none).
bool trusted_request(const std::string& peer_address, const std::string& host,
                     const std::string& origin, bool post);

// "%41b+c" -> "Ab c".
std::string url_decode(const std::string& text);

}  // namespace lattice::demo
