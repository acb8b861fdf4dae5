#include "transport/proxy_protocol.hpp"

#include <algorithm>
#include <array>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <cstdio>
#include <cstring>

#include "crdt/error.hpp"

namespace lattice::transport::proxy_protocol {

namespace {

namespace ip = boost::asio::ip;

constexpr char kSignature[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                 '\n', 'Q',  'U',  'I',  'T',  '\n'};

Error bad(const std::string& what) {
  return Error(ErrorCode::kInvalidArgument, "PROXY protocol header: " + what);
}

std::uint16_t be16(const char* p) {
  return static_cast<std::uint16_t>((static_cast<unsigned char>(p[0]) << 8) |
                                    static_cast<unsigned char>(p[1]));
}

// An IPv4 client seen through an IPv6 socket, as the IPv4 address it is.
ip::address unmapped(const ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  return address;
}

}  // namespace

std::size_t remaining_bytes(std::string_view fixed) {
  if (fixed.size() < kFixedBytes) throw bad("shorter than 16 bytes");
  if (std::memcmp(fixed.data(), kSignature, sizeof kSignature) != 0)
    throw bad("no version 2 signature (is the proxy sending send-proxy-v2?)");
  const auto version = static_cast<unsigned char>(fixed[12]) >> 4;
  if (version != 2) throw bad("version " + std::to_string(version) + ", not 2");
  const std::size_t length = be16(fixed.data() + 14);
  if (kFixedBytes + length > kMaxBytes)
    throw bad(std::to_string(kFixedBytes + length) + " bytes, more than the " +
              std::to_string(kMaxBytes) + " taken");
  return length;
}

Header parse(std::string_view header) {
  const std::size_t length = remaining_bytes(header);
  if (header.size() != kFixedBytes + length) throw bad("its length field does not match its size");
  const auto command = static_cast<unsigned char>(header[12]) & 0x0F;
  const auto family = static_cast<unsigned char>(header[13]);
  if (command == 0x0) return Header{true, {}, 0};  // LOCAL
  if (command != 0x1) throw bad("command " + std::to_string(command) + ", not LOCAL or PROXY");
  const char* at = header.data() + kFixedBytes;
  Header out;
  switch (family) {
    case 0x00:  // UNSPEC: the proxy names no client
      out.local = true;
      return out;
    case 0x11: {  // TCP over IPv4: source, destination, source port, destination port
      if (length < 12) throw bad("an IPv4 address block of " + std::to_string(length) + " bytes");
      ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), at, bytes.size());
      out.address = ip::make_address_v4(bytes);
      out.port = be16(at + 8);
      return out;
    }
    case 0x21: {  // TCP over IPv6
      if (length < 36) throw bad("an IPv6 address block of " + std::to_string(length) + " bytes");
      ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), at, bytes.size());
      out.address = unmapped(ip::make_address_v6(bytes));
      out.port = be16(at + 32);
      return out;
    }
    default: {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", family);
      throw bad(std::string("address family and protocol ") + hex +
                ", not TCP over IPv4 or IPv6 (UDP and Unix sockets are not relayed)");
    }
  }
}

TrustedProxies::TrustedProxies(const std::vector<std::string>& entries) {
  for (const std::string& entry : entries) {
    boost::system::error_code ec;
    const auto slash = entry.find('/');
    if (slash == std::string::npos) {
      const ip::address address = ip::make_address(entry, ec);
      if (!ec) {
        networks_.push_back({unmapped(address), unmapped(address).is_v4() ? 32u : 128u});
        continue;
      }
    } else if (entry.find(':') == std::string::npos) {
      const ip::network_v4 network = ip::make_network_v4(entry, ec);
      if (!ec) {
        networks_.push_back({network.network(), network.prefix_length()});
        continue;
      }
    } else {
      const ip::network_v6 network = ip::make_network_v6(entry, ec);
      if (!ec) {
        networks_.push_back({network.network(), network.prefix_length()});
        continue;
      }
    }
    throw Error(ErrorCode::kInvalidArgument,
                "'" + entry + "' is neither an IP address nor a network (such as 10.0.0.0/8)");
  }
}

bool TrustedProxies::contains(ip::address address) const {
  address = unmapped(address);
  for (const Network& n : networks_) {
    if (n.base.is_v4() != address.is_v4()) continue;
    if (address.is_v4()) {
      const std::uint32_t mask =
          n.prefix == 0 ? 0 : ~std::uint32_t{0} << (32 - std::min(n.prefix, 32u));
      if ((address.to_v4().to_uint() & mask) == (n.base.to_v4().to_uint() & mask)) return true;
      continue;
    }
    const auto a = address.to_v6().to_bytes(), b = n.base.to_v6().to_bytes();
    unsigned bits = std::min(n.prefix, 128u);
    bool same = true;
    for (std::size_t i = 0; i < a.size() && bits > 0 && same; ++i, bits -= std::min(bits, 8u)) {
      const auto mask = static_cast<unsigned char>(0xFF << (8 - std::min(bits, 8u)));
      same = (a[i] & mask) == (b[i] & mask);
    }
    if (same) return true;
  }
  return false;
}

}  // namespace lattice::transport::proxy_protocol
