// The real lattice-relay process on 127.0.0.1 (port 0, TLS with a certificate generated here by
// the openssl command), driven by a small Beast WebSocket client that speaks our frames: health
// and metrics over HTTPS, hello/welcome, merge and fan-out, every refusal of bad input (each
// followed by a check that the relay still serves another device), and SIGTERM.
//
// Every wait is bounded; every process started here is killed (SIGKILL) if the test leaves it
// running.

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "relay/token.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"
#include "transport/frame.hpp"

#ifndef LATTICE_RELAY_PATH
#error "LATTICE_RELAY_PATH must name the lattice-relay executable"
#endif

namespace lattice {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

namespace fs = std::filesystem;

constexpr auto kWait = 10s;  // the longest any single step may take

// ---------------------------------------------------------------------------------------------
// Files and processes

std::string run_command(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0)
    throw std::runtime_error("command failed (" + std::to_string(status) + "): " + command);
  return output;
}

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.pop_back();
  return text;
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

constexpr const char* kKeyName = "test-key";
constexpr const char* kSecret = "0123456789abcdef0123456789abcdef0123456789abcdef";

// One temporary directory for the whole run: the key file, the certificate, the schema.
struct Environment {
  fs::path dir;
  fs::path key_file, cert_file, cert_key_file, schema_file;

  Environment() {
    std::string pattern = (fs::temp_directory_path() / "lattice-relay-test-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
    key_file = dir / "keys";
    std::ofstream(key_file) << "# test keys\n" << kKeyName << " " << kSecret << "\n";
    fs::permissions(key_file, fs::perms::owner_read | fs::perms::owner_write);
    schema_file = dir / "schema.sql";
    std::ofstream(schema_file) << test::kTodoSchema << "\n";
    cert_file = dir / "cert.pem";
    cert_key_file = dir / "cert-key.pem";
    run_command(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -days 1 -keyout '" +
        cert_key_file.string() + "' -out '" + cert_file.string() + "' 2>/dev/null");
  }
  ~Environment() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

Environment& env() {
  static Environment environment;
  return environment;
}

// `lattice-relay token ...`
std::string cli_token(const std::string& ns, const std::string& rights,
                      const std::string& ttl = "1h") {
  return trim(run_command(std::string(LATTICE_RELAY_PATH) + " token --key-file '" +
                          env().key_file.string() + "' --ns " + ns + " --rights " + rights +
                          " --ttl " + ttl + " --subject tester"));
}

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A token the CLI would not make: signed with `secret` under the test key's name.
std::string crafted_token(const std::string& secret, const std::string& ns, std::int64_t iat,
                          std::int64_t exp) {
  const auto ring = relay::KeyRing::from_keys({{kKeyName, secret}});
  relay::TokenClaims claims;
  claims.subject = "crafted";
  claims.ns = ns;
  claims.rights = relay::kRead | relay::kWrite;
  claims.issued_at = iat;
  claims.expires_at = exp;
  return ring.sign(claims);
}

// A lattice-relay serve process. Killed with SIGKILL unless it was stopped and reaped.
class RelayProcess {
 public:
  // `default_schema`: --schema with the todo table (else the namespaces start without tables).
  // `open_files`: when not 0, the relay runs with that open-files limit (soft and hard), set in
  // the child before exec, so that exhaustion tests need no more of the machine.
  explicit RelayProcess(std::vector<std::string> extra_flags = {}, bool default_schema = true,
                        rlim_t open_files = 0) {
    std::string data = (env().dir / ("data-" + std::to_string(++counter_))).string();
    data_dir_ = data;
    log_file_ = env().dir / ("relay-" + std::to_string(counter_) + ".log");
    std::vector<std::string> args = {LATTICE_RELAY_PATH, "serve",
                                     "--listen",         "127.0.0.1:0",
                                     "--data",           data,
                                     "--key-file",       env().key_file.string(),
                                     "--tls-cert",       env().cert_file.string(),
                                     "--tls-key",        env().cert_key_file.string()};
    if (default_schema) args.insert(args.end(), {"--schema", env().schema_file.string()});
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());

    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      if (open_files) {
        const rlimit limit{open_files, open_files};
        ::setrlimit(RLIMIT_NOFILE, &limit);
      }
      ::dup2(out[1], 1);
      const int log = ::open(log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (log >= 0) ::dup2(log, 2);
      ::close(out[0]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    stdout_fd_ = out[0];
    const std::string line = read_line(kWait);
    const std::string prefix = "listening on 127.0.0.1:";
    if (line.rfind(prefix, 0) != 0)
      throw std::runtime_error("lattice-relay printed '" + line + "', log: " + log());
    port_ = static_cast<std::uint16_t>(std::stoi(line.substr(prefix.size())));
  }

  // Stops the relay with SIGTERM and checks that it exits 0 (under the sanitizers, that is also
  // a check for leaks and errors during shutdown); SIGKILL if it does not exit in time.
  ~RelayProcess() {
    if (pid_ > 0 && !reaped_) {
      const int status = stop(SIGTERM, kWait);
      CHECK_MESSAGE(status == 0, "lattice-relay exited with ", status, "; log: ", log());
      if (!reaped_) {
        ::kill(pid_, SIGKILL);
        int ignored;
        ::waitpid(pid_, &ignored, 0);
      }
    }
    if (stdout_fd_ >= 0) ::close(stdout_fd_);
  }
  RelayProcess(const RelayProcess&) = delete;
  RelayProcess& operator=(const RelayProcess&) = delete;

  std::uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& data_dir() const { return data_dir_; }
  std::string log() const { return slurp(log_file_); }

  // Sends `signal` and waits for the exit; the exit status, or -1 on timeout or a signal death.
  int stop(int signal, std::chrono::milliseconds timeout) {
    ::kill(pid_, signal);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

 private:
  std::string read_line(std::chrono::milliseconds timeout) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("no 'listening on' line; log: " + log());
      pollfd p{stdout_fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char c;
      const ssize_t n = ::read(stdout_fd_, &c, 1);
      if (n <= 0) throw std::runtime_error("lattice-relay exited early; log: " + log());
      if (c == '\n') return line;
      line += c;
    }
  }

  static inline int counter_ = 0;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int stdout_fd_ = -1;
  std::uint16_t port_ = 0;
  std::string data_dir_;
  fs::path log_file_;
};

// ---------------------------------------------------------------------------------------------
// A TLS client: asynchronous operations driven to completion with a deadline, so that each
// call reads like a synchronous one but never blocks forever.

ssl::context client_tls() {
  ssl::context tls(ssl::context::tls_client);
  tls.load_verify_file(env().cert_file.string());
  tls.set_verify_mode(ssl::verify_peer);
  return tls;
}

template <class Done>
void drive(net::io_context& io, const Done& done, std::chrono::milliseconds timeout) {
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && std::chrono::steady_clock::now() < deadline)
    io.run_one_for(std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now()));
}

struct HttpReply {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // the response's, by lower-case name
};

// GET `target` with `headers` (name, value) over TLS; the body is read whole (at most 256 MiB).
HttpReply https_get(std::uint16_t port, const std::string& target,
                    const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  net::io_context io;
  ssl::context tls = client_tls();
  beast::ssl_stream<beast::tcp_stream> stream(io, tls);
  stream.set_verify_callback(ssl::host_name_verification("127.0.0.1"));
  beast::get_lowest_layer(stream).expires_after(kWait);
  http::request<http::empty_body> request(http::verb::get, target, 11);
  request.set(http::field::host, "127.0.0.1");
  for (const auto& [name, value] : headers) request.set(name, value);
  http::response_parser<http::string_body> parser;
  parser.body_limit(256u << 20);
  auto& response = parser.get();
  beast::flat_buffer buffer;
  std::optional<beast::error_code> result;
  auto fail_or = [&](beast::error_code ec, auto next) {
    if (ec)
      result = ec;
    else
      next();
  };
  beast::get_lowest_layer(stream).async_connect(
      tcp::endpoint(net::ip::make_address("127.0.0.1"), port), [&](beast::error_code ec) {
        fail_or(ec, [&] {
          stream.async_handshake(ssl::stream_base::client, [&](beast::error_code ec2) {
            fail_or(ec2, [&] {
              http::async_write(stream, request, [&](beast::error_code ec3, std::size_t) {
                fail_or(ec3, [&] {
                  http::async_read(stream, buffer, parser,
                                   [&](beast::error_code ec4, std::size_t) { result = ec4; });
                });
              });
            });
          });
        });
      });
  drive(
      io, [&] { return result.has_value(); }, kWait);
  if (!result) throw std::runtime_error("GET " + target + " timed out");
  if (*result) throw std::runtime_error("GET " + target + ": " + result->message());
  HttpReply reply{response.result_int(), response.body(), {}};
  for (const auto& field : response) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    reply.headers[name] = std::string(field.value());
  }
  return reply;
}

// One device's WebSocket to the relay, speaking raw frames.
class Device {
 public:
  Device(std::uint16_t port, const std::string& ns) : tls_(client_tls()), ws_(io_, tls_) {
    ws_.next_layer().set_verify_callback(ssl::host_name_verification("127.0.0.1"));
    std::optional<beast::error_code> result;
    auto& lowest = beast::get_lowest_layer(ws_);
    lowest.async_connect(
        tcp::endpoint(net::ip::make_address("127.0.0.1"), port), [&](beast::error_code ec) {
          if (ec) return void(result = ec);
          ws_.next_layer().async_handshake(ssl::stream_base::client, [&](beast::error_code ec2) {
            if (ec2) return void(result = ec2);
            ws_.async_handshake("127.0.0.1:" + std::to_string(port), "/" + ns,
                                [&](beast::error_code ec3) { result = ec3; });
          });
        });
    wait(result, "connect");
    if (*result) throw std::runtime_error("connect to /" + ns + ": " + result->message());
    ws_.binary(true);
  }

  ~Device() {
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  void send_bytes(const std::string& bytes, bool text = false) {
    ws_.text(text);
    std::optional<beast::error_code> result;
    ws_.async_write(net::buffer(bytes), [&](beast::error_code ec, std::size_t) { result = ec; });
    wait(result, "write");
    ws_.binary(true);
    // A write may fail when the relay has already closed on us; the reads that follow tell.
  }

  void send(const transport::Frame& frame) { send_bytes(transport::encode_frame(frame)); }

  // The next frame, or nullopt once the relay closed the connection.
  std::optional<transport::Frame> receive() {
    beast::flat_buffer buffer;
    std::optional<beast::error_code> result;
    ws_.async_read(buffer, [&](beast::error_code ec, std::size_t) { result = ec; });
    wait(result, "read");
    if (*result) {
      closed_ = true;
      close_error_ = *result;
      return std::nullopt;
    }
    const auto data = buffer.cdata();
    return transport::decode_frame(
        std::string_view(static_cast<const char*>(data.data()), data.size()));
  }

  template <class T>
  T expect() {
    auto frame = receive();
    if (!frame)
      throw std::runtime_error(std::string("expected a frame, the connection closed: ") +
                               close_error_.message());
    if (auto* error = std::get_if<transport::ErrorFrame>(&*frame);
        error && !std::is_same_v<T, transport::ErrorFrame>)
      throw std::runtime_error(std::string("expected another frame, got error ") +
                               transport::wire_error_name(error->code) + ": " + error->message);
    if (!std::holds_alternative<T>(*frame))
      throw std::runtime_error("unexpected frame type " + std::to_string(frame->index()));
    return std::get<T>(std::move(*frame));
  }

  // The error frame, then the close.
  transport::ErrorFrame expect_error_and_close() {
    auto error = expect<transport::ErrorFrame>();
    for (int i = 0; i < 16 && receive(); ++i) {
    }
    if (!closed_) throw std::runtime_error("the relay did not close after its error frame");
    return error;
  }

  bool closed() const { return closed_; }
  const websocket::close_reason& close_reason() const { return ws_.reason(); }

 private:
  void wait(std::optional<beast::error_code>& result, const char* what) {
    drive(
        io_, [&] { return result.has_value(); }, kWait);
    if (result) return;
    // Give the pending operation its completion before `result` goes out of scope.
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
    drive(
        io_, [&] { return result.has_value(); }, 2s);
    throw std::runtime_error(std::string(what) + " timed out");
  }

  net::io_context io_;
  ssl::context tls_;
  websocket::stream<beast::ssl_stream<beast::tcp_stream>> ws_;
  bool closed_ = false;
  beast::error_code close_error_;
};

// A device with a todo replica, connected and past welcome and its catch-up.
struct Peer {
  std::unique_ptr<storage::Replica> replica = test::open_todo_replica();
  std::unique_ptr<Device> device;
  transport::Welcome welcome;
  crdt::Changeset catch_up;
  std::uint64_t batch = 0;

  Peer(std::uint16_t port, const std::string& ns, const std::string& token,
       std::unique_ptr<storage::Replica> own = nullptr) {
    if (own) replica = std::move(own);
    device = std::make_unique<Device>(port, ns);
    device->send(hello(ns, token));
    welcome = device->expect<transport::Welcome>();
    const auto changes = device->expect<transport::Changes>();
    catch_up = crdt::decode_changeset(changes.changeset);
    replica->apply(catch_up);
  }

  transport::Hello hello(const std::string& ns, const std::string& token) {
    return hello_of(*replica, ns, token);
  }

  static transport::Hello hello_of(storage::Replica& replica, const std::string& ns,
                                   const std::string& token) {
    transport::Hello h;
    h.site = replica.site_id();
    h.ns = ns;
    h.token = token;
    h.held = replica.version_vector();
    h.schema_fingerprint = storage::format_manifest(replica.schema_manifest());
    h.schema_version = static_cast<std::uint64_t>(replica.schema_version());
    return h;
  }

  // Sends what the relay lacks since welcome, with the origin log that lists the transactions
  // it covers; returns the batch number.
  std::uint64_t push() {
    const auto changeset = replica->changes_since(welcome.held);
    const crdt::SiteId& own = replica->site_id();
    device->send(transport::Changes{
        ++batch, crdt::encode_changeset(changeset),
        replica->local_log(welcome.held.get(own) + 1, changeset.until.get(own))});
    return batch;
  }

  std::int64_t rows() {
    return std::get<std::int64_t>(replica->query("SELECT count(*) FROM todo").rows.at(0).at(0));
  }
};

// The relay still serves: a fresh device gets welcome and its catch-up.
void check_still_serves(const RelayProcess& relay, const std::string& ns = "board") {
  Peer other(relay.port(), ns, cli_token(ns, "read,write"));
  CHECK(other.welcome.protocol_version == transport::kProtocolVersion);
}

// One row written through the relay by a new device of "board", acknowledged.
void write_one(const RelayProcess& relay, const std::string& id) {
  Peer peer(relay.port(), "board", cli_token("board", "read,write"));
  peer.replica->query("INSERT INTO todo(id, title) VALUES (?, 'x')", {id});
  peer.push();
  peer.device->expect<transport::Ack>();
}

// The same with a namespace that has no rows yet, for relays with tiny queues.
void check_still_serves_small(const RelayProcess& relay) { check_still_serves(relay, "fresh"); }

// A device that sends a hello crafted by `hello_for` and expects an error of `code`.
transport::ErrorFrame refused_hello(const RelayProcess& relay, transport::Hello hello,
                                    transport::WireError code) {
  Device device(relay.port(), hello.ns);
  device.send(hello);
  const auto error = device.expect_error_and_close();
  CHECK_MESSAGE(error.code == code, transport::wire_error_name(error.code), ": ", error.message);
  return error;
}

transport::Hello good_hello(const std::string& token) {
  static auto replica = test::open_todo_replica();
  transport::Hello hello;
  hello.site = replica->site_id();
  hello.ns = "board";
  hello.token = token;
  hello.schema_fingerprint = storage::format_manifest(replica->schema_manifest());
  return hello;
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("a namespace without a schema adopts the first admin device's; nobody else's") {
  RelayProcess relay({}, /*default_schema=*/false);
  // A device with a write token may not create the namespace's tables.
  const auto refused = refused_hello(relay, good_hello(cli_token("board", "read,write")),
                                     transport::WireError::kSchemaMismatch);
  CHECK(refused.message.find("has no replicated tables yet") != std::string::npos);
  CHECK(refused.message.find("admin token") != std::string::npos);

  // An admin device's schema becomes the namespace's, and its rows go through.
  Peer admin(relay.port(), "board", cli_token("board", "read,write,admin"));
  admin.replica->exec("INSERT INTO todo(id, title, votes) VALUES ('a', 'first', 2)");
  admin.push();
  CHECK(admin.device->expect<transport::Ack>().held == admin.replica->version_vector());

  // From now on a write device with the same tables is welcomed and catches up...
  Peer writer(relay.port(), "board", cli_token("board", "read,write"));
  CHECK(writer.rows() == 1);
  CHECK(writer.replica->digest() == admin.replica->digest());
  // ...and one with other tables is refused, naming the difference.
  auto other = test::open_todo_replica();
  other->exec(
      "CREATE TABLE note(id TEXT PRIMARY KEY, body TEXT); SELECT lattice_replicate('note')");
  transport::Hello hello = good_hello(cli_token("board", "read,write,admin"));
  hello.schema_fingerprint = storage::format_manifest(other->schema_manifest());
  const auto mismatch = refused_hello(relay, hello, transport::WireError::kSchemaMismatch);
  CHECK(mismatch.message.find("table 'note' is on the device only") != std::string::npos);
}

TEST_CASE("--schema-dir gives each namespace its own schema file") {
  const fs::path dir = env().dir / "schemas";
  fs::create_directories(dir);
  std::ofstream(dir / "board.sql") << test::kTodoSchema << "\n";
  RelayProcess relay({"--schema-dir", dir.string()}, /*default_schema=*/false);
  Peer writer(relay.port(), "board", cli_token("board", "read,write"));
  CHECK(writer.welcome.protocol_version == transport::kProtocolVersion);
  // A namespace without a file has no tables, and a write token cannot give it any.
  Device device(relay.port(), "notes");
  transport::Hello hello = good_hello(cli_token("notes", "read,write"));
  hello.ns = "notes";
  device.send(hello);
  CHECK(device.expect_error_and_close().code == transport::WireError::kSchemaMismatch);
}

// Three versions of an app's schema, as numbered migrations.
constexpr const char* kNoteV1 =
    "CREATE TABLE note(id TEXT PRIMARY KEY, body TEXT, pinned INTEGER);"
    "SELECT lattice_replicate('note')";
constexpr const char* kNoteV2 =
    "ALTER TABLE note RENAME COLUMN body TO text; ALTER TABLE note ADD COLUMN due TEXT;"
    "ALTER TABLE note ADD COLUMN likes INTEGER NOT NULL DEFAULT 0;"
    "SELECT lattice_replicate('note', '{\"likes\": \"counter\"}');"
    "CREATE TABLE label(note TEXT, name TEXT, PRIMARY KEY (note, name));"
    "SELECT lattice_replicate('label')";
constexpr const char* kNoteV3 = "ALTER TABLE note DROP COLUMN pinned";

std::unique_ptr<storage::Replica> note_device(int version) {
  auto r = storage::Replica::open(":memory:");
  const char* steps[] = {kNoteV1, kNoteV2, kNoteV3};
  for (int v = 1; v <= version; ++v) r->migrate(v, steps[v - 1]);
  return r;
}

crdt::Value cell(storage::Replica& r, const std::string& sql) {
  const auto rows = r.query(sql).rows;
  return rows.empty() ? crdt::Value{} : rows.at(0).at(0);
}

TEST_CASE("devices on older schema versions keep syncing; newer ones wait for an admin device") {
  RelayProcess relay({}, /*default_schema=*/false);
  const std::string admin = cli_token("board", "read,write,admin");
  const std::string writer = cli_token("board", "read,write");
  Peer first(relay.port(), "board", admin, note_device(1));  // adopts version 1
  Peer old(relay.port(), "board", writer, note_device(1));
  old.replica->exec("INSERT INTO note(id, body, pinned) VALUES ('n1', 'from v1', 1)");
  old.push();
  old.device->expect<transport::Ack>();

  // A write token on version 2 cannot bring it: schema_ahead, with the reason.
  transport::Hello ahead = Peer::hello_of(*note_device(2), "board", writer);
  const auto waits = refused_hello(relay, ahead, transport::WireError::kSchemaAhead);
  CHECK(waits.message.find("version 1, device at version 2") != std::string::npos);
  CHECK(waits.message.find("keeps its changes and waits") != std::string::npos);

  // An admin device on version 2 brings it; the renamed column keeps the v1 device's write.
  Peer second(relay.port(), "board", admin, note_device(2));
  CHECK(cell(*second.replica, "SELECT text FROM note WHERE id = 'n1'") == crdt::Value{"from v1"});
  second.replica->exec(
      "UPDATE note SET text = 'edited on v2', due = '2027-03-01', likes = likes + 4 "
      "WHERE id = 'n1'; INSERT INTO label(note, name) VALUES ('n1', 'work')");
  second.push();
  second.device->expect<transport::Ack>();

  // The version-1 device is behind and still welcome: what it has no column for is kept aside
  // and joins when it migrates; its writes to the columns it has reach version 2.
  Peer late(relay.port(), "board", writer, note_device(1));
  CHECK(cell(*late.replica, "SELECT body FROM note WHERE id = 'n1'") ==
        crdt::Value{"edited on v2"});
  late.replica->exec("UPDATE note SET body = 'v1 again' WHERE id = 'n1'");
  late.push();
  late.device->expect<transport::Ack>();
  late.replica->migrate(2, kNoteV2);
  CHECK(cell(*late.replica, "SELECT due FROM note WHERE id = 'n1'") == crdt::Value{"2027-03-01"});
  CHECK(cell(*late.replica, "SELECT likes FROM note WHERE id = 'n1'") ==
        crdt::Value{std::int64_t{4}});
  CHECK(cell(*late.replica, "SELECT name FROM label") == crdt::Value{"work"});
  Peer now_v2(relay.port(), "board", writer, note_device(2));
  CHECK(cell(*now_v2.replica, "SELECT text FROM note WHERE id = 'n1'") == crdt::Value{"v1 again"});

  // Another migration under number 2 is refused naming the difference.
  auto conflicting = note_device(1);
  conflicting->migrate(2, "ALTER TABLE note ADD COLUMN color TEXT");
  const auto mismatch = refused_hello(relay, Peer::hello_of(*conflicting, "board", admin),
                                      transport::WireError::kSchemaMismatch);
  CHECK(mismatch.message.find("version 2 differs") != std::string::npos);

  const auto metrics = https_get(relay.port(), "/metrics").body;
  CHECK(metrics.find("lattice_relay_schema_changes_total 2") != std::string::npos);  // 1, then 2
  CHECK(metrics.find("lattice_relay_devices{schema_version=\"2\"}") != std::string::npos);
  CHECK(metrics.find("lattice_relay_devices{schema_version=\"1\"}") != std::string::npos);
}

TEST_CASE("--schema-dir DIR/NAME/ holds the operator's numbered migrations of a namespace") {
  const fs::path dir = env().dir / "migrations";
  fs::create_directories(dir / "board");
  std::ofstream(dir / "board" / "1.sql") << kNoteV1;
  std::ofstream(dir / "board" / "2-rename-and-labels.sql") << kNoteV2;
  RelayProcess relay({"--schema-dir", dir.string()}, /*default_schema=*/false);
  const std::string writer = cli_token("board", "read,write");
  Peer v2(relay.port(), "board", writer, note_device(2));
  Peer v1(relay.port(), "board", writer, note_device(1));
  const auto ahead = refused_hello(relay, Peer::hello_of(*note_device(3), "board", writer),
                                   transport::WireError::kSchemaAhead);
  CHECK(ahead.message.find("column 'pinned'") != std::string::npos);

  // A migration that fails keeps its namespace closed, naming the file; the others serve on.
  fs::create_directories(dir / "broken");
  std::ofstream(dir / "broken" / "1.sql") << kNoteV1;
  std::ofstream(dir / "broken" / "2.sql") << "ALTER TABLE nowhere ADD COLUMN x TEXT";
  transport::Hello broken = Peer::hello_of(*note_device(2), "broken", writer);
  broken.token = cli_token("broken", "read,write");
  const auto refused = refused_hello(relay, broken, transport::WireError::kInternal);
  CHECK(refused.message.find("broken/2.sql") != std::string::npos);
  CHECK(refused.message.find("nowhere") != std::string::npos);
  Peer still(relay.port(), "board", writer, note_device(1));
}

TEST_CASE("the relay answers healthz and metrics over HTTPS on its WebSocket port") {
  RelayProcess relay;
  const auto health = https_get(relay.port(), "/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "ok\n");
  const auto metrics = https_get(relay.port(), "/metrics");
  CHECK(metrics.status == 200);
  for (const char* name :
       {"lattice_relay_connections 0", "lattice_relay_namespaces 0",
        "lattice_relay_changes_merged_total 0", "lattice_relay_changes_sent_total 0",
        "lattice_relay_bytes_in_total 0", "lattice_relay_bytes_out_total 0",
        "# TYPE lattice_relay_rejected_frames_total counter",
        "lattice_relay_merge_seconds_bucket{le=\"0.0005\"} 0",
        "lattice_relay_merge_seconds_bucket{le=\"+Inf\"} 0", "lattice_relay_merge_seconds_count 0"})
    CHECK_MESSAGE(metrics.body.find(name) != std::string::npos, name);
  CHECK(https_get(relay.port(), "/nothing-here").status == 404);
}

TEST_CASE("GET /snapshot/NAMESPACE gives a reader the namespace as a snapshot, resumable") {
  // With network threads, the request waits for the hub's thread to write the snapshot.
  std::string threads;
  SUBCASE("one thread") { threads = "1"; }
  SUBCASE("two network threads and the hub's") { threads = "2"; }
  RelayProcess relay({"--max-connects-per-source-per-second", "100", "--threads", threads});
  const std::string token = cli_token("board", "read,write");
  std::unique_ptr<storage::Replica> source;  // the writer's replica: what the relay holds
  {
    Peer writer(relay.port(), "board", token);
    writer.replica->exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
        "INSERT INTO todo(id, title, votes) SELECT 'task ' || i, printf('%0200d', i), i % 7 "
        "FROM n");
    writer.replica->exec("DELETE FROM todo WHERE id LIKE '%5'");
    writer.push();
    writer.device->expect<transport::Ack>();
    writer.replica->exec("UPDATE todo SET votes = votes + 1 WHERE id = 'task 12'");
    writer.push();
    writer.device->expect<transport::Ack>();
    source = std::move(writer.replica);
  }
  const std::string bearer = "Bearer " + token;

  // Who may not have it: no token, a bad one, another namespace's, one without the read right.
  CHECK(https_get(relay.port(), "/snapshot/board").status == 401);
  CHECK(https_get(relay.port(), "/snapshot/board", {{"Authorization", "Bearer nonsense"}}).status ==
        401);
  const HttpReply elsewhere = https_get(
      relay.port(), "/snapshot/board", {{"Authorization", "Bearer " + cli_token("other", "read")}});
  CHECK(elsewhere.status == 403);
  CHECK(elsewhere.body.find("namespace 'other'") != std::string::npos);
  CHECK(https_get(relay.port(), "/snapshot/board",
                  {{"Authorization", "Bearer " + cli_token("board", "write")}})
            .status == 403);

  // A reader gets a file that a new replica installs, holding what the relay holds.
  const HttpReply whole = https_get(relay.port(), "/snapshot/board", {{"Authorization", bearer}});
  REQUIRE(whole.status == 200);
  const std::string etag = whole.headers.at("etag");
  CHECK(whole.headers.at("accept-ranges") == "bytes");
  CHECK(whole.body.size() > 300'000);
  test::TempDir dir;
  const auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir.file(name), std::ios::binary) << bytes;
    return dir.file(name);
  };
  auto device = test::open_todo_replica();
  device->install_snapshot(write("whole.snapshot", whole.body));
  CHECK(device->digest() == source->digest());
  CHECK(device->version_vector() == source->version_vector());

  // The same file again while it is young; a download broken off resumes where it stopped.
  const std::size_t cut = whole.body.size() / 3;
  const HttpReply rest = https_get(relay.port(), "/snapshot/board",
                                   {{"Authorization", bearer},
                                    {"Range", "bytes=" + std::to_string(cut) + "-"},
                                    {"If-Range", etag}});
  REQUIRE(rest.status == 206);
  CHECK(rest.headers.at("etag") == etag);
  CHECK(rest.headers.at("content-range") == "bytes " + std::to_string(cut) + "-" +
                                                std::to_string(whole.body.size() - 1) + "/" +
                                                std::to_string(whole.body.size()));
  CHECK(whole.body.substr(0, cut) + rest.body == whole.body);
  // A resume that names another file gets the whole current one; a range past the end, 416.
  CHECK(https_get(relay.port(), "/snapshot/board",
                  {{"Authorization", bearer}, {"Range", "bytes=10-"}, {"If-Range", "\"old\""}})
            .status == 200);
  CHECK(https_get(relay.port(), "/snapshot/board",
                  {{"Authorization", bearer},
                   {"Range", "bytes=" + std::to_string(whole.body.size()) + "-"}})
            .status == 416);
  // Any other range, malformed or not, is ignored (RFC 9110 allows it): the whole file.
  for (const std::string range : {"bytes=abc-", "bytes=-500", "bytes=5-10", "items=0-",
                                  "bytes=99999999999999999999999-", "bytes=1-,5-", "bytes=-"}) {
    CAPTURE(range);
    const HttpReply reply =
        https_get(relay.port(), "/snapshot/board", {{"Authorization", bearer}, {"Range", range}});
    CHECK(reply.status == 200);
    CHECK(reply.body == whole.body);
  }

  const std::string metrics = https_get(relay.port(), "/metrics").body;
  CHECK(metrics.find("lattice_relay_snapshots_written_total 1") != std::string::npos);
  CHECK(metrics.find("lattice_relay_snapshots_sent_total 10") != std::string::npos);
}

TEST_CASE("a token gets four snapshots at once, then snapshot bytes at the catch-up rate") {
  // A reader must not make the relay send its namespace over and over faster than a catch-up
  // would (HubLimits::max_catch_up_bytes_per_second; here 1 byte per second).
  RelayProcess relay({"--max-catch-up-bytes-per-second", "1",
                      "--max-connects-per-source-per-second", "100", "--threads", "2"});
  const std::string token = cli_token("board", "read,write");
  {
    // Over 4 MiB, so that four files are more than the 16 MiB burst of a catch-up.
    Peer writer(relay.port(), "board", token);
    writer.replica->exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) "
        "INSERT INTO todo(id, title) SELECT 'task ' || i, printf('%08000d', i) FROM n");
    writer.push();
    writer.device->expect<transport::Ack>();
  }
  const std::string reader = cli_token("board", "read");
  const auto get = [&](const std::string& with_token,
                       std::vector<std::pair<std::string, std::string>> headers = {}) {
    headers.emplace_back("Authorization", "Bearer " + with_token);
    return https_get(relay.port(), "/snapshot/board", headers);
  };
  const HttpReply first = get(reader);
  REQUIRE(first.status == 200);
  REQUIRE(first.body.size() % 2 == 0);  // whole pages: two halves make exactly one file
  REQUIRE(first.body.size() * 4 > (16u << 20));
  // Two whole files and the rest of a third...
  CHECK(get(reader).status == 200);
  const std::size_t cut = first.body.size() / 2;
  CHECK(get(reader, {{"Range", "bytes=" + std::to_string(cut) + "-"},
                     {"If-Range", first.headers.at("etag")}})
            .status == 206);
  CHECK(get(reader).status == 200);
  // ...leave half a file of the four: the rest of one still goes, a whole one does not.
  CHECK(get(reader, {{"Range", "bytes=" + std::to_string(cut) + "-"},
                     {"If-Range", first.headers.at("etag")}})
            .status == 206);
  const HttpReply refused = get(reader);
  CHECK(refused.status == 429);
  CHECK(refused.body.find("snapshot bytes") != std::string::npos);
  CHECK(refused.body.find("retry in") != std::string::npos);
  // The wait in the Retry-After header too, for clients that read headers, not messages.
  REQUIRE(refused.headers.count("retry-after") == 1);
  CHECK(refused.body.find("retry in " + refused.headers.at("retry-after") + " s") !=
        std::string::npos);
  // Another token has its own budget.
  CHECK(get(token).status == 200);
}

TEST_CASE("a valid hello gets a welcome and then the namespace's changes") {
  RelayProcess relay;
  Peer peer(relay.port(), "board", cli_token("board", "read,write"));
  CHECK(peer.welcome.protocol_version == transport::kProtocolVersion);
  CHECK(peer.welcome.held.empty());
  CHECK(peer.catch_up.rows.empty());
  CHECK(fs::exists(fs::path(relay.data_dir()) / "board.db"));
}

TEST_CASE("a device's batch is acknowledged and fanned out to the other device, not back") {
  RelayProcess relay;
  const std::string token = cli_token("board", "read,write");
  Peer a(relay.port(), "board", token);
  Peer b(relay.port(), "board", token);

  a.replica->exec("INSERT INTO todo(id, title) VALUES ('t1', 'buy milk')");
  const auto batch = a.push();
  const auto ack = a.device->expect<transport::Ack>();
  CHECK(ack.batch == batch);
  CHECK(ack.held.dominates(a.replica->version_vector()));
  CHECK(ack.group == 1);  // all its group merged: a gets the number instead of the delta

  // b is at the relay's head: the group's delta, whole, since b got none before.
  const auto forwarded = b.device->expect<transport::Delta>();
  CHECK(forwarded.group == 1);
  CHECK(forwarded.previous == 0);
  b.replica->apply(crdt::decode_changeset(forwarded.changeset));
  const auto row = b.replica->query("SELECT title FROM todo WHERE id = 't1'");
  REQUIRE(row.rows.size() == 1);
  CHECK(std::get<std::string>(row.rows[0][0]) == "buy milk");

  // Frames arrive in order: had the relay echoed the batch to its sender, it would come before
  // the pong.
  a.device->send(transport::Ping{77});
  CHECK(a.device->expect<transport::Pong>().nonce == 77);

  const auto metrics = https_get(relay.port(), "/metrics").body;
  CHECK(metrics.find("lattice_relay_connections 2") != std::string::npos);
  CHECK(metrics.find("lattice_relay_merge_seconds_count 1") != std::string::npos);
  CHECK(metrics.find("lattice_relay_group_commits_total 1") != std::string::npos);
  CHECK(metrics.find("lattice_relay_grouped_batches_total 1") != std::string::npos);

  // A third device joins and writes: the devices at the head get a delta that follows group
  // 1's, a too (it learnt that number from its acknowledgement): no since (it is group 1's
  // until), and in its until only the entry that moved.
  Peer c(relay.port(), "board", token);
  c.replica->exec("INSERT INTO todo(id, title) VALUES ('t2', 'call the bank')");
  c.push();
  CHECK(c.device->expect<transport::Ack>().group == 2);
  for (Peer* peer : {&a, &b}) {
    const auto next = peer->device->expect<transport::Delta>();
    CHECK(next.group == 2);
    CHECK(next.previous == 1);
    const crdt::Changeset following = crdt::decode_changeset(next.changeset);
    CHECK(following.since.entries().empty());
    CHECK(following.rows.size() == 1);
    REQUIRE(following.until.entries().size() == 1);
    CHECK(following.until.get(c.replica->site_id()) == 1);
  }
}

TEST_CASE("malformed msgpack is refused as malformed and the relay serves on") {
  RelayProcess relay;
  {
    Device device(relay.port(), "board");
    device.send_bytes(std::string("\xc1\xff\x00garbage", 10));
    const auto error = device.expect_error_and_close();
    CHECK(error.code == transport::WireError::kMalformed);
  }
  {
    Device device(relay.port(), "board");
    device.send_bytes("a text message", /*text=*/true);
    CHECK(device.expect_error_and_close().code == transport::WireError::kMalformed);
  }
  check_still_serves(relay);
  const auto metrics = https_get(relay.port(), "/metrics").body;
  CHECK(metrics.find("lattice_relay_rejected_frames_total{reason=\"malformed\"} 2") !=
        std::string::npos);
}

TEST_CASE("a frame over the size limit is refused as frame_too_large and the relay serves on") {
  RelayProcess relay({"--max-frame-bytes", "65536"});
  {
    Peer peer(relay.port(), "board", cli_token("board", "read,write"));
    peer.device->send(transport::Changes{1, std::string(100'000, 'x'), {}});
    const auto error = peer.device->expect_error_and_close();
    CHECK(error.code == transport::WireError::kFrameTooLarge);
    CHECK(error.message.find("65536") != std::string::npos);
    CHECK(peer.device->close_reason().code == websocket::close_code::too_big);
  }
  {
    // Before the hello too, and far over the limit.
    Device device(relay.port(), "board");
    device.send_bytes(std::string(4u << 20, '\x90'));
    CHECK(device.expect_error_and_close().code == transport::WireError::kFrameTooLarge);
  }
  check_still_serves(relay);
}

TEST_CASE("an old protocol version is refused naming the versions the relay speaks") {
  RelayProcess relay;
  auto hello = good_hello(cli_token("board", "read,write"));
  hello.protocol_version = transport::kMinProtocolVersion - 1;
  const auto error = refused_hello(relay, hello, transport::WireError::kProtocolVersion);
  CHECK(error.message.find("versions 2 to 5") != std::string::npos);
  check_still_serves(relay);
}

TEST_CASE("a device newer than the relay is welcomed in the relay's newest version") {
  RelayProcess relay;
  Device device(relay.port(), "board");
  auto hello = good_hello(cli_token("board", "read,write"));
  hello.protocol_version = transport::kProtocolVersion + 5;
  device.send(hello);
  CHECK(device.expect<transport::Welcome>().protocol_version == transport::kProtocolVersion);
  device.expect<transport::Changes>();
  // A device of the oldest version still spoken gets that version; before protocol 4 its hello
  // carries the schema's description (no ids, no version number).
  Device old(relay.port(), "board");
  hello.protocol_version = transport::kMinProtocolVersion;
  hello.schema_fingerprint = test::open_todo_replica()->schema_description();
  old.send(hello);
  CHECK(old.expect<transport::Welcome>().protocol_version == transport::kMinProtocolVersion);
}

TEST_CASE("expired, forged and wrong-namespace tokens are refused as unauthorized") {
  RelayProcess relay;
  const auto now = unix_now();
  SUBCASE("expired") {
    const auto error =
        refused_hello(relay, good_hello(crafted_token(kSecret, "board", now - 7200, now - 3600)),
                      transport::WireError::kUnauthorized);
    CHECK(error.message.find("expired") != std::string::npos);
  }
  SUBCASE("forged") {
    refused_hello(relay,
                  good_hello(crafted_token("a-different-secret-of-enough-bytes-0123456789", "board",
                                           now, now + 3600)),
                  transport::WireError::kUnauthorized);
  }
  SUBCASE("for another namespace") {
    const auto error = refused_hello(relay, good_hello(cli_token("other", "read,write")),
                                     transport::WireError::kUnauthorized);
    CHECK(error.message.find("other") != std::string::npos);
  }
  SUBCASE("garbage") {
    refused_hello(relay, good_hello("not.a.token"), transport::WireError::kUnauthorized);
  }
  check_still_serves(relay);
}

TEST_CASE("a read-only token's changes are refused as forbidden and never merged") {
  RelayProcess relay;
  {
    Peer writer(relay.port(), "board", cli_token("board", "read,write"));
    writer.replica->exec("INSERT INTO todo(id, title) VALUES ('kept', 'from the writer')");
    writer.push();
    writer.device->expect<transport::Ack>();
  }
  {
    Peer reader(relay.port(), "board", cli_token("board", "read"));
    CHECK(reader.rows() == 1);
    reader.replica->exec("INSERT INTO todo(id, title) VALUES ('refused', 'from the reader')");
    reader.push();
    const auto error = reader.device->expect_error_and_close();
    CHECK(error.code == transport::WireError::kForbidden);
  }
  // A fresh device holding nothing receives exactly the writer's row.
  Peer check(relay.port(), "board", cli_token("board", "read"));
  CHECK(check.rows() == 1);
  CHECK(check.replica->query("SELECT id FROM todo WHERE id = 'refused'").rows.empty());
  check_still_serves(relay);
}

TEST_CASE("a device whose outbound queue overflows is dropped as slow_consumer") {
  // A queue bound smaller than one catch-up frame overflows at once, without having to make a
  // real socket back up.
  RelayProcess relay({"--max-queue-bytes", "1024"});
  {
    Peer writer(relay.port(), "board", cli_token("board", "read,write"));
    writer.replica->exec("INSERT INTO todo(id, title) VALUES ('big', printf('%.4000c', 'x'))");
    writer.push();
    writer.device->expect<transport::Ack>();
  }
  Device late(relay.port(), "board");
  late.send(good_hello(cli_token("board", "read")));
  late.expect<transport::Welcome>();
  const auto error = late.expect_error_and_close();
  CHECK(error.code == transport::WireError::kSlowConsumer);
  CHECK(https_get(relay.port(), "/metrics").body.find("lattice_relay_slow_consumers_total 1") !=
        std::string::npos);
  check_still_serves_small(relay);
}

TEST_CASE("a catch-up many times the outbound queue arrives whole, paced by the connection") {
  RelayProcess relay({"--max-queue-bytes", "65536"});
  {
    Peer writer(relay.port(), "board", cli_token("board", "read,write"));
    for (int txn = 0; txn < 40; ++txn)  // catch-up frames are cut between transactions
      writer.replica->query(
          "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
          "INSERT INTO todo(id, title) SELECT 'row' || (? * 100 + i), printf('%.100c', 'x') "
          "FROM n",
          {crdt::Value{std::int64_t{txn}}});
    writer.push();
    writer.device->expect<transport::Ack>();
  }
  auto replica = test::open_todo_replica();
  Device late(relay.port(), "board");
  transport::Hello hello = good_hello(cli_token("board", "read"));
  hello.site = replica->site_id();
  late.send(hello);
  const auto welcome = late.expect<transport::Welcome>();
  int frames = 0;
  while (!replica->version_vector().dominates(welcome.held) && frames < 1000) {
    replica->apply(crdt::decode_changeset(late.expect<transport::Changes>().changeset));
    ++frames;
  }
  CHECK(frames > 4);  // about 500 KB through a 64 KiB queue
  CHECK(std::get<std::int64_t>(replica->query("SELECT count(*) FROM todo").rows[0][0]) == 4000);
  CHECK(https_get(relay.port(), "/metrics").body.find("lattice_relay_slow_consumers_total 0") !=
        std::string::npos);
}

TEST_CASE("a write token's claim about another device's history is refused, not acknowledged") {
  // Issue 10, finding 1: one empty changeset claiming {victim: 1000000} (or 2^63-1, forwarded to
  // a connected victim) used to be acknowledged, after which the victim's writes were dropped.
  RelayProcess relay;
  const std::string token = cli_token("board", "read,write");
  Peer victim(relay.port(), "board", token);
  victim.replica->exec("INSERT INTO todo(id, title) VALUES ('v1', 'first')");
  victim.push();
  victim.device->expect<transport::Ack>();
  const crdt::SiteId victim_site = victim.replica->site_id();
  for (const std::uint64_t claim : {std::uint64_t{1'000'000}, (std::uint64_t{1} << 63) - 1}) {
    CAPTURE(claim);
    Peer attacker(relay.port(), "board", token);
    crdt::Changeset forged;
    forged.until.advance(victim_site, claim);
    attacker.device->send(transport::Changes{1, crdt::encode_changeset(forged), {}});
    const auto error = attacker.device->expect_error_and_close();
    CHECK(error.code == transport::WireError::kBadChangeset);
    CHECK(error.message.find(victim_site.to_hex()) != std::string::npos);
  }
  // The victim heard nothing of it, and its next write is merged and counted.
  victim.replica->exec("INSERT INTO todo(id, title) VALUES ('v2', 'second')");
  victim.push();
  const auto ack = victim.device->expect<transport::Ack>();
  CHECK(ack.held.get(victim_site) == 2);
  Peer fresh(relay.port(), "board", token);
  CHECK(fresh.rows() == 2);
  check_still_serves(relay);
}

// ---------------------------------------------------------------------------------------------
// Before authentication (issue 10, findings 2 and 3)

// A TCP connection from `source` (a 127.0.0.0/8 address) to the relay that never says a word.
int idle_connection(const char* source, std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::uint64_t metric(std::uint16_t port, const std::string& name) {
  const std::string body = https_get(port, "/metrics").body;
  const auto at = body.find("\n" + name + " ");
  if (at == std::string::npos) throw std::runtime_error("no metric " + name);
  return std::stoull(body.substr(at + name.size() + 2));
}

TEST_CASE("a WebSocket that never sends a hello is closed at the hello deadline") {
  RelayProcess relay({"--hello-timeout", "1s"});
  Device idle(relay.port(), "board");
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(idle.receive());  // the relay closes; without a deadline this read times out
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(metric(relay.port(), "lattice_relay_hello_timeouts_total") == 1);
  check_still_serves(relay);
}

TEST_CASE("idle connections from many addresses do not lock devices out of a relay") {
  // 300 silent connections from ten addresses against a relay allowed 256 open files: before,
  // they took every descriptor and devices could not connect (accept: Too many open files).
  RelayProcess relay({}, /*default_schema=*/true, /*open_files=*/256);
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) {
    const std::string source = "127.0.0." + std::to_string(2 + i % 10);
    const int fd = idle_connection(source.c_str(), relay.port());
    if (fd >= 0) idle.push_back(fd);
  }
  std::this_thread::sleep_for(200ms);  // let the relay accept what it will
  {
    Peer device(relay.port(), "board", cli_token("board", "read,write"));
    CHECK(device.welcome.protocol_version == transport::kProtocolVersion);
    device.replica->exec("INSERT INTO todo(id, title) VALUES ('in', 'despite the flood')");
    device.push();
    CHECK(device.device->expect<transport::Ack>().held == device.replica->version_vector());
  }
  CHECK(metric(relay.port(), "lattice_relay_refused_at_accept_total") +
            metric(relay.port(), "lattice_relay_evicted_unauthenticated_total") >
        0);
  CHECK(metric(relay.port(), "lattice_relay_unauthenticated_connections") <= 48);
  for (int fd : idle) ::close(fd);
  CHECK(relay.log().find("open files limit 256") != std::string::npos);
}

TEST_CASE("before authentication a message over the hello limit is refused at once") {
  RelayProcess relay;
  Device device(relay.port(), "board");
  device.send_bytes(std::string(100'000, '\x90'));
  const auto error = device.expect_error_and_close();
  CHECK(error.code == transport::WireError::kFrameTooLarge);
  CHECK(error.message.find("65536") != std::string::npos);
  CHECK(error.message.find("before authentication") != std::string::npos);
  check_still_serves(relay);
}

TEST_CASE("a hello with a bad token is refused before the rest of it is decoded") {
  RelayProcess relay;
  transport::Hello hello = good_hello("not.a.token");
  hello.held.advance(hello.site, 5);
  std::string bytes = transport::encode_frame(hello);
  // Break what follows the token: the held vector's sequence number becomes 0, which a full
  // decode refuses as malformed. The token check comes first and answers unauthorized.
  const auto at = bytes.find(std::string(hello.site.as_bytes()), bytes.find("not.a.token"));
  REQUIRE(at != std::string::npos);
  bytes[at + 16] = 0;
  Device device(relay.port(), "board");
  device.send_bytes(bytes);
  CHECK(device.expect_error_and_close().code == transport::WireError::kUnauthorized);
}

// ---------------------------------------------------------------------------------------------
// Budgets per token (issue 10, finding 4)

// A device of namespace `ns` that measures the round trip of one change: sent, merged and made
// durable by the relay, acknowledged.
struct RoundTripper {
  Peer peer;
  crdt::VersionVector held;
  int next = 0;

  RoundTripper(std::uint16_t port, const std::string& ns)
      : peer(port, ns, cli_token(ns, "read,write")), held(peer.welcome.held) {}

  double once_ms() {
    const auto start = std::chrono::steady_clock::now();
    peer.replica->query("INSERT INTO todo(id, title) VALUES (?, 'x')",
                        {"rt" + std::to_string(next++)});
    const auto changeset = peer.replica->changes_since(held);
    const crdt::SiteId& own = peer.replica->site_id();
    peer.device->send(
        transport::Changes{++peer.batch, crdt::encode_changeset(changeset),
                           peer.replica->local_log(held.get(own) + 1, changeset.until.get(own))});
    held = peer.device->expect<transport::Ack>().held;
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  }

  // {p50, p99} of `count` round trips.
  std::pair<double, double> percentiles(int count) {
    std::vector<double> times;
    for (int i = 0; i < count; ++i) times.push_back(once_ms());
    std::sort(times.begin(), times.end());
    return {times[times.size() / 2], times[times.size() * 99 / 100]};
  }
};

TEST_CASE("a flood by one token leaves another namespace's round trip within 2x (+1 ms)") {
  RelayProcess relay;
  {
    // A namespace worth flooding: 20,000 rows, so that each catch-up and digest costs.
    Peer writer(relay.port(), "big", cli_token("big", "read,write"));
    writer.replica->exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO todo(id, title) SELECT 'row' || i, printf('%.40c', 'x') FROM n");
    writer.push();
    writer.device->expect<transport::Ack>();
  }
  RoundTripper calm(relay.port(), "calm");
  calm.percentiles(50);  // warm up

  // The flood: two threads with one read-only token of "big", each connecting again and again
  // (every hello asks for the whole namespace) and asking for digests without end.
  // One hello, made here: good_hello's replica is not for two threads at once.
  transport::Hello flood_hello = good_hello(cli_token("big", "read"));
  flood_hello.ns = "big";
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> requests{0}, refusals{0};
  auto flood = [&] {
    while (!stop) {
      try {
        Device device(relay.port(), "big");
        device.send(flood_hello);
        for (int i = 0; i < 50 && !stop; ++i) {
          device.send(transport::DigestRequest{static_cast<std::uint64_t>(i)});
          ++requests;
        }
        while (!stop) {
          auto frame = device.receive();
          if (!frame) break;
          if (auto* error = std::get_if<transport::ErrorFrame>(&*frame);
              error && error->code == transport::WireError::kRateLimited)
            ++refusals;
        }
      } catch (const std::exception&) {
        // Refused at accept, a timeout: connect again, after a breath that keeps this loop
        // from taking the machine's cores away from the relay itself (2 here).
        std::this_thread::sleep_for(1ms);
      }
    }
  };
  // Quiet, then flooded, up to three times: a p99 of 400 samples on a shared machine is noisy,
  // and a relay that lets the flood through misses the bound every time.
  bool within = false;
  for (int attempt = 1; attempt <= 3 && !within; ++attempt) {
    const auto [p50_quiet, p99_quiet] = calm.percentiles(400);
    stop = false;
    std::thread a(flood), b(flood);
    // Past the budgets' bursts: the flood's steady state.
    std::this_thread::sleep_for(attempt == 1 ? 5s : 2s);
    const auto [p50_flood, p99_flood] = calm.percentiles(400);
    stop = true;
    a.join();
    b.join();
    MESSAGE("attempt " << attempt
                       << ": change round trip on another namespace, 400 samples each: quiet p50 "
                       << p50_quiet << " ms, p99 " << p99_quiet << " ms; under the flood ("
                       << requests.load() << " digest requests so far, " << refusals.load()
                       << " refused as rate_limited) p50 " << p50_flood << " ms, p99 " << p99_flood
                       << " ms");
    // Plus 1 ms: a merge's disk sync runs on the relay's disk thread, and each hand-off between
    // it and the relay's thread waits for a core that the flood (two threads here, the relay's
    // work for them, this client) keeps busy on a 2-core machine.
    within = p99_flood <= 2 * p99_quiet + 1;
  }
  CHECK(refusals > 0);
#ifndef LATTICE_SANITIZED
  CHECK(within);
#else
  // Under the sanitizers the relay's catch-ups and digests run several times slower than any
  // relay would: the figures are printed, the bound is checked in the optimized tree only.
  (void)within;
#endif
}

TEST_CASE("a token that expires on an open connection is refused from then on") {
  // Issue 10, finding 5: an expired token kept merging changes on its open connection.
  RelayProcess relay;
  Peer sender(relay.port(), "board", cli_token("board", "read,write", "2s"));
  Peer listener(relay.port(), "board", cli_token("board", "read", "2s"));
  std::this_thread::sleep_for(2500ms);
  sender.replica->exec("INSERT INTO todo(id, title) VALUES ('late', 'after expiry')");
  sender.push();
  const auto error = sender.device->expect_error_and_close();
  CHECK(error.code == transport::WireError::kUnauthorized);
  CHECK(error.message.find("token expired") != std::string::npos);
  // A device that only listens is closed as soon as something would be sent to it.
  Peer writer(relay.port(), "board", cli_token("board", "read,write"));
  writer.replica->exec("INSERT INTO todo(id, title) VALUES ('fresh', 'valid token')");
  writer.push();
  writer.device->expect<transport::Ack>();
  CHECK(listener.device->expect_error_and_close().code == transport::WireError::kUnauthorized);
  Peer check(relay.port(), "board", cli_token("board", "read"));
  CHECK(check.rows() == 1);  // 'late' was never merged
}

// ---------------------------------------------------------------------------------------------
// Files and secrets (issue 10, finding 8)

// Runs `command` through the shell; its exit status and standard error.
std::pair<int, std::string> run_status(const std::string& command) {
  const fs::path err = env().dir / "command.err";
  const int status = std::system((command + " >/dev/null 2>'" + err.string() + "'").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(err)};
}

TEST_CASE("the relay's data is its user's alone: 0600 files in a 0700 directory") {
  RelayProcess relay;
  write_one(relay, "a");
  auto mode = [](const fs::path& path) {
    return static_cast<unsigned>(fs::status(path).permissions() & fs::perms::mask);
  };
  CHECK(mode(relay.data_dir()) == 0700);
  for (const char* file : {"board.db", "board.db-wal", "board.db-shm"}) {
    CAPTURE(file);
    const fs::path path = fs::path(relay.data_dir()) / file;
    if (fs::exists(path)) CHECK(mode(path) == 0600);
  }
}

TEST_CASE("a key file other users may read is refused with a clear message") {
  const fs::path open_keys = env().dir / "open-keys";
  std::ofstream(open_keys) << kKeyName << " " << kSecret << "\n";
  fs::permissions(open_keys, fs::perms::owner_read | fs::perms::owner_write |
                                 fs::perms::group_read | fs::perms::others_read);
  const auto [serve_status, serve_err] = run_status(
      std::string(LATTICE_RELAY_PATH) + " serve --listen 127.0.0.1:0 --data '" +
      (env().dir / "unused").string() + "' --insecure --key-file '" + open_keys.string() + "'");
  CHECK(serve_status == 1);
  CHECK(serve_err.find("mode 644") != std::string::npos);
  CHECK(serve_err.find("chmod 600") != std::string::npos);
  CHECK(serve_err.find(kSecret) == std::string::npos);
  const auto [token_status, token_err] =
      run_status(std::string(LATTICE_RELAY_PATH) + " token --key-file '" + open_keys.string() +
                 "' --ns board --rights read --ttl 1h");
  CHECK(token_status == 1);
  CHECK(token_err.find("chmod 600") != std::string::npos);
}

TEST_CASE("tokens are minted only for names the relay accepts") {
  for (const char* ns : {"../x", "a/b", "", "x.db", "name with space"}) {
    CAPTURE(ns);
    const auto [status, err] =
        run_status(std::string(LATTICE_RELAY_PATH) + " token --key-file '" +
                   env().key_file.string() + "' --ns '" + ns + "' --rights read --ttl 1h");
    CHECK(status == 2);
    CHECK(!err.empty());
  }
}

TEST_CASE("on four network threads, devices writing at once are acknowledged in order, lose none") {
  RelayProcess relay({"--threads", "4", "--max-connects-per-source-per-second", "100"});
  CHECK(relay.log().find("4 network threads, and one for the hub") != std::string::npos);
  const std::string token = cli_token("board", "read,write");
  constexpr int kDevices = 6, kWrites = 15;
  std::vector<std::unique_ptr<Peer>> peers;
  for (int i = 0; i < kDevices; ++i)
    peers.push_back(std::make_unique<Peer>(relay.port(), "board", token));

  // Each device on its own thread: write a row, push, and read until its acknowledgement,
  // passing over the other devices' deltas that arrive meanwhile (not merged: a push sends all
  // the replica has since welcome). Meanwhile this thread asks for /metrics, which the relay
  // answers from its hub's thread.
  std::vector<std::string> failures(kDevices);
  std::vector<std::thread> writers;
  for (int i = 0; i < kDevices; ++i)
    writers.emplace_back([&, i] {
      try {
        Peer& peer = *peers[static_cast<std::size_t>(i)];
        for (int k = 0; k < kWrites; ++k) {
          peer.replica->query("INSERT INTO todo(id, title) VALUES (?, 'x')",
                              {"d" + std::to_string(i) + "-" + std::to_string(k)});
          const std::uint64_t batch = peer.push();
          for (;;) {
            auto frame = peer.device->receive();
            if (!frame) throw std::runtime_error("the relay closed the connection");
            if (std::holds_alternative<transport::Delta>(*frame)) {
              continue;
            } else if (auto* ack = std::get_if<transport::Ack>(&*frame)) {
              if (ack->batch != batch)
                throw std::runtime_error("ack of batch " + std::to_string(ack->batch) +
                                         ", expected " + std::to_string(batch));
              break;
            } else {
              throw std::runtime_error("unexpected frame type " + std::to_string(frame->index()));
            }
          }
        }
      } catch (const std::exception& e) {
        failures[static_cast<std::size_t>(i)] = e.what();
      }
    });
  for (int i = 0; i < 5; ++i) CHECK(https_get(relay.port(), "/metrics").status == 200);
  for (auto& writer : writers) writer.join();
  for (int i = 0; i < kDevices; ++i)
    CHECK_MESSAGE(failures[i].empty(), "device ", i, ": ", failures[i]);

  // A device that joins now gets every write; the relay counted every device.
  Peer late(relay.port(), "board", token);
  CHECK(late.rows() == kDevices * kWrites);
  const auto metrics = https_get(relay.port(), "/metrics").body;
  CHECK(metrics.find("lattice_relay_connections " + std::to_string(kDevices + 1)) !=
        std::string::npos);
}

TEST_CASE("SIGTERM closes every device's connection with a close frame and exits 0") {
  std::string threads;
  SUBCASE("one thread") { threads = "1"; }
  SUBCASE("three network threads and the hub's") { threads = "3"; }
  RelayProcess relay({"--threads", threads});
  Peer peer(relay.port(), "board", cli_token("board", "read,write"));
  const int status = [&] {
    // The relay's shutdown waits for our close reply, which needs our reads: stop it from a
    // thread while this one reads.
    std::optional<int> result;
    std::thread stopper([&] { result = relay.stop(SIGTERM, kWait); });
    const auto error = peer.device->expect_error_and_close();
    CHECK(error.code == transport::WireError::kShuttingDown);
    stopper.join();
    return result.value_or(-2);
  }();
  CHECK(peer.device->close_reason().code == websocket::close_code::going_away);
  CHECK(status == 0);
}

}  // namespace
}  // namespace lattice
