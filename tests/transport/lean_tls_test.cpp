// The relay's TLS stream (transport/lean_tls.hpp) against Asio's ssl::stream as the client,
// over real TCP on 127.0.0.1: bytes arrive intact both ways at once, an idle stream holds no
// buffer, and a close is reported as ssl::stream reports it.

#include "transport/lean_tls.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

namespace lattice::transport {
namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

// A self-signed certificate made once by the openssl command, as the relay's tests do.
struct Certificate {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("lattice-lean-tls-" + std::to_string(::getpid()));
  std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  Certificate() {
    std::filesystem::create_directories(dir);
    const std::string command =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "-subj /CN=127.0.0.1 -keyout '" +
        key + "' -out '" + cert + "' 2>/dev/null";
    REQUIRE(std::system(command.c_str()) == 0);
  }
  ~Certificate() { std::filesystem::remove_all(dir); }
};

const Certificate& certificate() {
  static const Certificate made;
  return made;
}

// A server stream and an Asio client connected to it over loopback TCP, both handshaken.
struct Pair {
  net::io_context io;
  ssl::context server_tls{ssl::context::tls_server};
  ssl::context client_tls{ssl::context::tls_client};
  std::optional<LeanTlsStream> server;
  std::optional<ssl::stream<tcp::socket>> client;

  Pair() {
    server_tls.use_certificate_chain_file(certificate().cert);
    server_tls.use_private_key_file(certificate().key, ssl::context::pem);
    SSL_CTX_set_options(server_tls.native_handle(), SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(server_tls.native_handle(), SSL_MODE_RELEASE_BUFFERS);
    client_tls.load_verify_file(certificate().cert);
    client_tls.set_verify_mode(ssl::verify_peer);

    tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    tcp::socket client_socket(io);
    client_socket.connect(acceptor.local_endpoint());
    server.emplace(acceptor.accept(), server_tls);
    client.emplace(std::move(client_socket), client_tls);
    error_code server_ec = net::error::would_block, client_ec = net::error::would_block;
    server->async_handshake(ssl::stream_base::server, [&](error_code ec) { server_ec = ec; });
    client->async_handshake(ssl::stream_base::client, [&](error_code ec) { client_ec = ec; });
    io.run();
    io.restart();
    REQUIRE_FALSE(server_ec);
    REQUIRE_FALSE(client_ec);
  }

  // What the server reads until an error, which goes in `end`.
  void read_all(std::string& into, error_code& end, std::size_t chunk = 4096) {
    auto buffer = std::make_shared<std::string>(chunk, '\0');
    server->async_read_some(net::buffer(*buffer),
                            [this, &into, &end, buffer, chunk](error_code ec, std::size_t n) {
                              into.append(buffer->data(), n);
                              if (ec) {
                                end = ec;
                                return;
                              }
                              read_all(into, end, chunk);
                            });
  }

  bool idle_buffers_empty() const { return server->buffered_bytes() == 0; }
};

std::string pattern(std::size_t size, unsigned seed) {
  std::string text(size, '\0');
  for (std::size_t i = 0; i < size; ++i) text[i] = static_cast<char>((i * 131 + seed) % 251);
  return text;
}

TEST_CASE("bytes go both ways at once intact, and an idle stream holds no buffer") {
  Pair pair;
  CHECK(pair.idle_buffers_empty());
  const std::string up = pattern(3u << 20, 7), down = pattern(2u << 20, 11);

  // The server writes in pieces of up to 64 KiB as Beast does, while reading in small reads.
  std::string received;
  error_code read_end;
  pair.read_all(received, read_end, 1000);
  std::size_t sent = 0;
  std::function<void()> write_next = [&] {
    if (sent == down.size()) return;
    pair.server->async_write_some(net::buffer(down.data() + sent, down.size() - sent),
                                  [&](error_code ec, std::size_t n) {
                                    REQUIRE_FALSE(ec);
                                    CHECK(n > 0);
                                    sent += n;
                                    write_next();
                                  });
  };
  write_next();
  std::string client_got(down.size(), '\0');
  bool client_read = false, client_wrote = false;
  net::async_read(*pair.client, net::buffer(client_got), [&](error_code ec, std::size_t) {
    REQUIRE_FALSE(ec);
    client_read = true;
  });
  net::async_write(*pair.client, net::buffer(up), [&](error_code ec, std::size_t) {
    REQUIRE_FALSE(ec);
    client_wrote = true;
  });
  while (!(client_read && client_wrote && received.size() == up.size()))
    REQUIRE(pair.io.run_one() > 0);
  CHECK(received == up);
  CHECK(client_got == down);
  CHECK(sent == down.size());
  // Waiting for the next record: only the few bytes of its header are set aside.
  CHECK(pair.idle_buffers_empty());

  // A close_notify ends the server's read with eof, as ssl::stream's.
  pair.client->async_shutdown([](error_code) {});
  while (!read_end) REQUIRE(pair.io.run_one() > 0);
  CHECK(read_end == net::error::eof);
}

TEST_CASE("a peer that closes without close_notify ends the read as truncated") {
  Pair pair;
  std::string received;
  error_code read_end;
  pair.read_all(received, read_end);
  net::write(*pair.client, net::buffer(std::string("last words")));
  // FIN, not close(): closing a socket with unread bytes (the server's session tickets) sends a
  // reset instead.
  pair.client->next_layer().shutdown(tcp::socket::shutdown_send);
  while (!read_end) REQUIRE(pair.io.run_one() > 0);
  CHECK(received == "last words");
  CHECK(read_end == ssl::error::stream_truncated);
}

TEST_CASE("a client that does not speak TLS fails the handshake at once") {
  net::io_context io;
  ssl::context server_tls{ssl::context::tls_server};
  server_tls.use_certificate_chain_file(certificate().cert);
  server_tls.use_private_key_file(certificate().key, ssl::context::pem);
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  tcp::socket client(io);
  client.connect(acceptor.local_endpoint());
  LeanTlsStream server(acceptor.accept(), server_tls);
  net::write(client, net::buffer(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
  std::optional<error_code> result;
  server.async_handshake(ssl::stream_base::server, [&](error_code ec) { result = ec; });
  while (!result) REQUIRE(io.run_one() > 0);
  CHECK(*result);
  CHECK(result->category() == net::error::get_ssl_category());
}

}  // namespace
}  // namespace lattice::transport
