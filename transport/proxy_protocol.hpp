// The PROXY protocol, version 2 (haproxy's `send-proxy-v2`; the specification is haproxy's
// doc/proxy-protocol.txt): the binary header a proxy sends first on each connection it opens to
// a server, naming the client it accepted. A relay behind haproxy reads it from the proxies it
// trusts (lattice-relay serve --proxy-protocol-from), so that its per-source limits, its logs
// and the hub see devices' addresses rather than the proxy's.
//
// Pure parsing: no sockets. Errors are Error(kInvalidArgument) naming what is wrong.

#ifndef LATTICE_TRANSPORT_PROXY_PROTOCOL_HPP
#define LATTICE_TRANSPORT_PROXY_PROTOCOL_HPP

#include <boost/asio/ip/address.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lattice::transport::proxy_protocol {

// Signature, version and command, family and protocol, length: what a reader reads first.
constexpr std::size_t kFixedBytes = 16;
// Addresses take at most 216 bytes; with TLVs (which are skipped) a header may take up to
// 64 KiB, more than a proxy has reason to send: longer headers are refused.
constexpr std::size_t kMaxBytes = kFixedBytes + 1024;

// How many bytes follow the first kFixedBytes of a header. Throws when they are not the start
// of a PROXY version 2 header, or announce more than kMaxBytes in all.
std::size_t remaining_bytes(std::string_view fixed);

struct Header {
  // The proxy's own connection (its health checks: command LOCAL, or no address family):
  // no client is named, and the connection's own address stands.
  bool local = false;
  boost::asio::ip::address address;  // the client's, when not local
  std::uint16_t port = 0;
};

// The whole header (kFixedBytes and what remaining_bytes() said follows). Throws when it is
// not one of TCP over IPv4 or IPv6, or LOCAL; or when its addresses do not fit its length.
Header parse(std::string_view header);

// The addresses a relay takes PROXY headers from: each an address ("127.0.0.1", "::1") or a
// network ("10.0.0.0/8", "fd00::/8"). An IPv4 client that reached an IPv6 socket
// (::ffff:a.b.c.d) matches as a.b.c.d.
class TrustedProxies {
 public:
  // Throws naming the first entry that is neither an address nor a network.
  explicit TrustedProxies(const std::vector<std::string>& entries = {});
  bool empty() const { return networks_.empty(); }
  bool contains(boost::asio::ip::address address) const;

 private:
  struct Network {
    boost::asio::ip::address base;
    unsigned prefix = 0;
  };
  std::vector<Network> networks_;
};

}  // namespace lattice::transport::proxy_protocol

#endif  // LATTICE_TRANSPORT_PROXY_PROTOCOL_HPP
