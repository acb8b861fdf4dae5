#pragma once
// What a device's TLS connections to a relay share (inside lattice::transport_ws_client): the
// process's client TLS contexts, and the checks made of the relay's certificate. Used by the
// WebSocket connection (websocket_client.cpp) and the snapshot download
// (snapshot_download.cpp), which must verify the relay the same way.

#include <openssl/ssl.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <memory>
#include <optional>
#include <string>

namespace lattice::transport::detail {

// The TLS context of client connections that trust the system's roots and `ca_file`: one per CA
// file for the life of the process (client_tls_contexts_made counts them). Throws Error(kIo)
// when `ca_file` cannot be loaded.
std::shared_ptr<boost::asio::ssl::context> client_tls_context(const std::string& ca_file);

bool is_loopback_address(const boost::asio::ip::address& address);
bool is_ip_address(const std::string& host);

// Why a handshake with `host` failed, beyond OpenSSL's "certificate verify failed": "(the
// certificate is not for 'HOST')" or "(self-signed certificate)"; empty when nothing more is
// known.
std::string verify_failure_detail(SSL* ssl, const std::string& host, bool host_mismatch);

// Prepares `stream` for a handshake with `host`: SNI for a host name (never for an IP literal,
// RFC 6066), peer verification, and the host name or IP address checked against the
// certificate. `*host_mismatch` becomes true when a chain that verified fails on the name only;
// it must outlive the handshake. Returns an error message when SNI cannot be set.
template <class Stream>
std::optional<std::string> prepare_client_tls(boost::asio::ssl::stream<Stream>& stream,
                                              const std::string& host, bool* host_mismatch) {
  if (!is_ip_address(host) && !SSL_set_tlsext_host_name(stream.native_handle(), host.c_str()))
    return std::string("cannot set SNI");
  stream.set_verify_mode(boost::asio::ssl::verify_peer);
  stream.set_verify_callback(
      [host_mismatch, verify = boost::asio::ssl::host_name_verification(host)](
          bool preverified, boost::asio::ssl::verify_context& context) mutable {
        const bool ok = verify(preverified, context);
        // host_name_verification fails a verified chain only for the
        // name.
        if (preverified && !ok) *host_mismatch = true;
        return ok;
      });
  return std::nullopt;
}

}  // namespace lattice::transport::detail
