#include "transport/client_tls.hpp"

#include <openssl/x509.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>

#include "crdt/error.hpp"
#include "transport/websocket_client.hpp"

namespace lattice::transport {
namespace {

namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using boost::system::error_code;

std::atomic<std::uint64_t> contexts_made{0};

}  // namespace

std::uint64_t client_tls_contexts_made() { return contexts_made.load(); }

namespace detail {

bool is_loopback_address(const net::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return net::ip::make_address_v4(net::ip::v4_mapped, address.to_v6()).is_loopback();
  return address.is_loopback();
}

bool is_ip_address(const std::string& host) {
  error_code ec;
  net::ip::make_address(host, ec);
  return !ec;
}

std::string verify_failure_detail(SSL* ssl, const std::string& host, bool host_mismatch) {
  if (host_mismatch) return "(the certificate is not for '" + host + "')";
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) return std::string("(") + X509_verify_cert_error_string(verify) + ")";
  return "";
}

// The TLS context of client connections that trust the system's roots and `ca_file`: one per
// CA file for the life of the process, shared by its connections. Loading the system's trust
// store costs tens of milliseconds of CPU (144 certificates, 38 ms here), too much for every
// connection of a device that reconnects. A CA file changed on disk since (its modification
// time or size) gets a new context; connections hold theirs until they close.
std::shared_ptr<ssl::context> client_tls_context(const std::string& ca_file) {
  struct Cached {
    std::filesystem::file_time_type modified;
    std::uintmax_t size = 0;
    std::shared_ptr<ssl::context> context;
  };
  static std::mutex mutex;
  static std::map<std::string, Cached> cache;
  std::error_code stat_error;
  Cached fresh;
  if (!ca_file.empty()) {
    fresh.modified = std::filesystem::last_write_time(ca_file, stat_error);
    fresh.size = std::filesystem::file_size(ca_file, stat_error);
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(ca_file);
  if (it != cache.end() && it->second.modified == fresh.modified && it->second.size == fresh.size)
    return it->second.context;
  auto tls = std::make_shared<ssl::context>(ssl::context::tls_client);
  tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  error_code ec;
  // Without system roots a --ca-file can still verify the relay; a missing --ca-file cannot.
  tls->set_default_verify_paths(ec);
  if (!ca_file.empty()) {
    tls->load_verify_file(ca_file, ec);
    if (ec)
      throw Error(ErrorCode::kIo, "cannot load the CA file '" + ca_file + "': " + ec.message());
  }
  tls->set_verify_mode(ssl::verify_peer);
  fresh.context = tls;
  cache[ca_file] = std::move(fresh);
  ++contexts_made;
  return tls;
}

}  // namespace detail
}  // namespace lattice::transport
