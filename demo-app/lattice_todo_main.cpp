// lattice-todo: the demo app. A shared todo board kept in a local replica, synced with a relay
// by a lattice::SyncClient, shown in a browser by a small local web server. See README.md
// ("Try it") and docs/demo-app.md.
//
//   lattice-todo --name alice --db alice.db [--relay wss://HOST:PORT/NS --token-file F
//                [--ca-file F] [--offline]] [--schema-version 1|2] [--listen 127.0.0.1:0]
//                [--web DIR]
//   lattice-todo --print-migration N
//
// Prints one line, `listening on http://HOST:PORT/`, once the page can be opened; runs until
// SIGINT or SIGTERM. Exit status 0 after a signal, 1 on an error, 2 on a usage error.

#include <signal.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "demo-app/todo_board.hpp"
#include "demo-app/web_server.hpp"
#include "lattice/lattice.hpp"

namespace lattice::demo {
namespace {

namespace asio = boost::asio;

// How often the app looks for changes the SyncClient merged into the file (its own connection,
// so this connection's change listeners do not hear of them).
constexpr auto kPollInterval = std::chrono::milliseconds(100);

struct Options {
  std::string name;
  std::string db;
  std::string relay_url;
  std::string token;
  std::string ca_file;
  std::string host = "127.0.0.1";
  unsigned short port = 0;
  std::string web_dir;
  bool start_offline = false;
  int schema_version = kTodoSchemaVersion;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

HttpResponse json_response(int status, std::string body) {
  return {status, "application/json", std::move(body)};
}

HttpResponse error_response(int status, const std::string& message) {
  return json_response(status, "{\"error\":" + json_string(message) + "}");
}

// The application: the board, the sync client and the web server, all used on the io_context's
// thread. The SyncClient's status callback only posts to that thread.
class App {
 public:
  App(asio::io_context& io, Options options)
      : io_(io),
        options_(std::move(options)),
        board_(options_.db, options_.schema_version),
        server_(io, options_.host, options_.port, options_.web_dir,
                [this](const HttpRequest& request) { return api(request); }),
        timer_(io) {
    if (!options_.relay_url.empty() && !options_.start_offline) go_online();
    schedule_poll();
  }

  unsigned short port() const { return server_.port(); }

  void shutdown() {
    go_offline();
    timer_.cancel();
    server_.close();
  }

 private:
  HttpResponse api(const HttpRequest& request) {
    const auto param = [&](const char* name) {
      const auto it = request.params.find(name);
      return it == request.params.end() ? std::string() : it->second;
    };
    if (request.method == "GET" && request.path == "/api/state")
      return json_response(200, state_json());
    if (request.method == "GET" && request.path == "/api/board.txt")
      return {200, "text/plain; charset=utf-8", board_.text()};
    if (request.method != "POST") return error_response(404, "no such API: " + request.path);

    const std::string id = param("id");
    bool found = true;
    if (request.path == "/api/add") {
      const std::string title = param("title");
      if (title.empty()) return error_response(400, "a new item needs a title");
      board_.add(title);
    } else if (request.path == "/api/rename") {
      const std::string title = param("title");
      if (title.empty()) return error_response(400, "a title cannot be empty");
      found = board_.rename(id, title);
    } else if (request.path == "/api/done") {
      found = board_.set_done(id, param("done") == "1");
    } else if (request.path == "/api/vote") {
      found = board_.vote(id);
    } else if (request.path == "/api/delete") {
      found = board_.remove(id);
    } else if (request.path == "/api/move") {
      found = board_.move_after(id, param("after"));
    } else if (request.path == "/api/due" || request.path == "/api/assign") {
      if (board_.schema_version() < 2)
        return error_response(409,
                              "due dates and assignees need schema version 2; this device "
                              "runs version 1 (--schema-version)");
      try {
        found = request.path == "/api/due" ? board_.set_due(id, param("due"))
                                           : board_.assign(id, param("assignee"));
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kInvalidArgument) throw;
        return error_response(400, e.what());
      }
    } else if (request.path == "/api/offline") {
      if (options_.relay_url.empty())
        return error_response(409, "this device has no relay (--relay) to go online to");
      if (param("offline") == "1")
        go_offline();
      else
        go_online();
    } else {
      return error_response(404, "no such API: " + request.path);
    }
    if (!found) return error_response(404, "no item '" + id + "' (deleted on another device?)");
    publish();
    return json_response(200, state_json());
  }

  void go_online() {
    if (client_) return;
    SyncClientOptions sync_options;
    sync_options.ca_file = options_.ca_file;
    const std::uint64_t generation = ++generation_;
    sync_options.on_status = [this, generation](const SyncStatus& status) {
      asio::post(io_, [this, generation, status] { on_status(generation, status); });
    };
    auto client = std::make_unique<SyncClient>(options_.db, options_.relay_url, options_.token,
                                               std::move(sync_options));
    client->start();
    client_ = std::move(client);
    status_.state = SyncState::kConnecting;
    publish();
  }

  // Stops the client (a WebSocket close, a short wait); the app keeps serving the board.
  void go_offline() {
    if (!client_) return;
    client_->stop();
    client_.reset();
    status_.state = SyncState::kOffline;
    publish();
  }

  void on_status(std::uint64_t generation, const SyncStatus& status) {
    if (generation != generation_ || !client_) return;  // from a client stopped since
    if (!status.relay_held.empty()) relay_held_ = status.relay_held;
    status_ = status;
    publish();
  }

  void schedule_poll() {
    timer_.expires_after(kPollInterval);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      if (board_.changed_elsewhere()) publish();
      schedule_poll();
    });
  }

  // Local changes the relay has not acknowledged: counted from what the relay last said it
  // holds, so the number keeps growing while the device is offline.
  std::uint64_t pending() { return board_.replica().local_changes_after(relay_held_); }

  std::string state_json() {
    std::string json =
        "{\"device\":" + json_string(options_.name) +
        ",\"state\":" + json_string(client_ ? sync_state_name(status_.state) : "offline") +
        ",\"offline\":" + (client_ ? "false" : "true") +
        ",\"has_relay\":" + (options_.relay_url.empty() ? "false" : "true") +
        ",\"schema_version\":" + std::to_string(board_.schema_version()) +
        ",\"pending\":" + std::to_string(pending()) +
        ",\"last_error\":" + json_string(status_.last_error) + ",\"items\":" + board_.items_json() +
        "}";
    return json;
  }

  void publish() {
    std::string json = state_json();
    if (json == published_) return;
    published_ = json;
    server_.broadcast(published_);
  }

  asio::io_context& io_;
  Options options_;
  TodoBoard board_;
  WebServer server_;
  asio::steady_timer timer_;
  std::unique_ptr<SyncClient> client_;
  std::uint64_t generation_ = 0;
  SyncStatus status_;
  VersionVector relay_held_;
  std::string published_;
};

std::string read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::kIo, "cannot read token file '" + path + "'");
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) throw Error(ErrorCode::kInvalidArgument, "token file '" + path + "' is empty");
  return token;
}

int parse_schema_version(const std::string& text) {
  if (text.size() == 1 && text[0] >= '1' && text[0] - '0' <= kTodoSchemaVersion)
    return text[0] - '0';
  throw UsageError("schema version '" + text + "' is not one of 1 to " +
                   std::to_string(kTodoSchemaVersion));
}

Options parse_options(int argc, char** argv) {
  Options options;
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--name") {
      options.name = value();
    } else if (flag == "--db") {
      options.db = value();
    } else if (flag == "--relay") {
      options.relay_url = value();
    } else if (flag == "--token") {
      options.token = value();
    } else if (flag == "--token-file") {
      token_file = value();
    } else if (flag == "--ca-file") {
      options.ca_file = value();
    } else if (flag == "--web") {
      options.web_dir = value();
    } else if (flag == "--offline") {
      options.start_offline = true;
    } else if (flag == "--schema-version") {
      options.schema_version = parse_schema_version(value());
    } else if (flag == "--listen") {
      const std::string listen = value();
      const std::size_t colon = listen.rfind(':');
      if (colon == std::string::npos) throw UsageError("--listen needs HOST:PORT");
      options.host = listen.substr(0, colon);
      if (options.host == "localhost") options.host = "127.0.0.1";
      try {
        const int port = std::stoi(listen.substr(colon + 1));
        if (port < 0 || port > 65535) throw std::out_of_range("port");
        options.port = static_cast<unsigned short>(port);
      } catch (const std::exception&) {
        throw UsageError("--listen: bad port in '" + listen + "'");
      }
    } else {
      throw UsageError("unknown flag '" + flag + "'");
    }
  }
  if (options.name.empty() || options.db.empty()) throw UsageError("--name and --db are required");
  if (!token_file.empty()) options.token = read_token_file(token_file);
  if (!options.relay_url.empty() && options.token.empty())
    throw UsageError("--relay needs --token-file (or --token)");
  if (options.web_dir.empty())
    options.web_dir =
        (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "web").string();
  if (!std::filesystem::exists(options.web_dir + "/index.html"))
    throw Error(ErrorCode::kIo, "no index.html in '" + options.web_dir + "' (--web DIR)");
  return options;
}

int run(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--print-migration") {
    std::fputs(todo_migration(parse_schema_version(argv[2])), stdout);
    return 0;
  }
  const Options options = parse_options(argc, argv);
  asio::io_context io;
  App app(io, options);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int) {
    app.shutdown();
    io.stop();
  });
  std::printf("listening on http://%s:%u/\n", options.host.c_str(), app.port());
  std::fflush(stdout);
  io.run();
  return 0;
}

}  // namespace
}  // namespace lattice::demo

int main(int argc, char** argv) {
  try {
    return lattice::demo::run(argc, argv);
  } catch (const lattice::demo::UsageError& e) {
    std::fprintf(stderr,
                 "lattice-todo: %s\nusage: lattice-todo --name NAME --db FILE [--relay URL "
                 "--token-file FILE [--ca-file FILE] [--offline]] [--schema-version 1|2] "
                 "[--listen HOST:PORT] [--web DIR]\n"
                 "       lattice-todo --print-migration N\n",
                 e.what());
    return 2;
  } catch (const lattice::Error& e) {
    std::fprintf(stderr, "lattice-todo: %s: %s\n", lattice::error_code_name(e.code()), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lattice-todo: %s\n", e.what());
    return 1;
  }
}
