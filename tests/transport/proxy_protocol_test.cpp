// The PROXY protocol v2 header as haproxy's send-proxy-v2 writes it, and the address ranges a
// relay trusts it from (transport/proxy_protocol.hpp).

#include "transport/proxy_protocol.hpp"

#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "crdt/error.hpp"

namespace pp = lattice::transport::proxy_protocol;
using lattice::Error;

namespace {

const std::string kSignature("\r\n\r\n\0\r\nQUIT\n", 12);

// A header: version 2 with `command`, `family`, and `body` (addresses, then any TLVs).
std::string header(unsigned char command, unsigned char family, const std::string& body) {
  std::string out = kSignature;
  out += static_cast<char>(0x20 | command);
  out += static_cast<char>(family);
  out += static_cast<char>(body.size() >> 8);
  out += static_cast<char>(body.size() & 0xFF);
  return out + body;
}

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out += static_cast<char>(v);
  return out;
}

// What a reader does: the fixed part, then what it says follows.
pp::Header read(const std::string& whole) {
  const std::size_t rest = pp::remaining_bytes(whole.substr(0, pp::kFixedBytes));
  REQUIRE(pp::kFixedBytes + rest == whole.size());
  return pp::parse(whole);
}

std::string refusal(const std::string& whole) {
  try {
    read(whole);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// 203.0.113.7:50000 -> 10.0.0.1:8443
const std::string kIpv4Body = bytes({203, 0, 113, 7, 10, 0, 0, 1}) +
                              bytes({50000 >> 8, 50000 & 0xFF, 8443 >> 8, 8443 & 0xFF});

}  // namespace

TEST_CASE("a PROXY v2 header names the client: TCP over IPv4 and IPv6, TLVs skipped") {
  const pp::Header v4 = read(header(0x1, 0x11, kIpv4Body));
  CHECK_FALSE(v4.local);
  CHECK(v4.address.to_string() == "203.0.113.7");
  CHECK(v4.port == 50000);

  // haproxy may add TLVs (unique id, ALPN, SSL details) after the addresses.
  const pp::Header with_tlvs = read(header(0x1, 0x11, kIpv4Body + bytes({0x01, 0, 2, 'h', '2'})));
  CHECK(with_tlvs.address.to_string() == "203.0.113.7");

  std::string v6_body = bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
  v6_body += std::string(16, '\0') + bytes({0x01, 0xBB, 0x20, 0xFB});
  const pp::Header v6 = read(header(0x1, 0x21, v6_body));
  CHECK(v6.address.to_string() == "2001:db8::1");
  CHECK(v6.port == 443);

  // An IPv4 client that reached the proxy's IPv6 socket is its IPv4 address.
  std::string mapped = bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 198, 51, 100, 9});
  mapped += std::string(16, '\0') + bytes({0, 80, 0, 80});
  CHECK(read(header(0x1, 0x21, mapped)).address.to_string() == "198.51.100.9");
}

TEST_CASE("a proxy's own connection (LOCAL, or no address family) names no client") {
  CHECK(read(header(0x0, 0x00, "")).local);
  CHECK(read(header(0x0, 0x11, kIpv4Body)).local);  // LOCAL: the addresses are ignored
  CHECK(read(header(0x1, 0x00, "")).local);
}

TEST_CASE("a header that is not PROXY v2 over TCP is refused, saying why") {
  // Version 1 is text: a proxy configured with send-proxy rather than send-proxy-v2.
  CHECK(refusal("PROXY TCP4 203.0.113.7 10.0.0.1 50000 8443\r\n").find("send-proxy-v2") !=
        std::string::npos);
  // A TLS ClientHello from a client that bypassed the proxy.
  CHECK(
      refusal(bytes({0x16, 3, 1, 0, 0xF4, 1, 0, 0, 0xF0, 3, 3, 0, 0, 0, 0, 0})).find("signature") !=
      std::string::npos);
  std::string v1 = header(0x1, 0x11, kIpv4Body);
  v1[12] = 0x11;
  CHECK(refusal(v1).find("version 1") != std::string::npos);
  CHECK(refusal(header(0x2, 0x11, kIpv4Body)).find("command 2") != std::string::npos);
  CHECK(refusal(header(0x1, 0x12, kIpv4Body)).find("0x12") != std::string::npos);  // UDP
  CHECK(refusal(header(0x1, 0x31, std::string(216, 'x'))).find("0x31") != std::string::npos);
  CHECK(refusal(header(0x1, 0x11, kIpv4Body.substr(0, 8))).find("IPv4 address block of 8") !=
        std::string::npos);
  CHECK(refusal(header(0x1, 0x21, kIpv4Body)).find("IPv6 address block of 12") !=
        std::string::npos);
  // More than a proxy has reason to send: refused from the fixed part, before reading it.
  const std::string huge = header(0x1, 0x11, kIpv4Body + std::string(pp::kMaxBytes, '\0'));
  CHECK_THROWS_WITH_AS(pp::remaining_bytes(huge.substr(0, pp::kFixedBytes)),
                       doctest::Contains("more than the 1040 taken"), Error);
  CHECK_THROWS_AS(pp::remaining_bytes(kSignature), Error);  // too short to tell
  // parse() of a header whose length field disagrees with its size.
  CHECK_THROWS_WITH_AS(pp::parse(header(0x1, 0x11, kIpv4Body) + "x"),
                       doctest::Contains("length field"), Error);
}

TEST_CASE("trusted proxies: addresses and networks, IPv4 seen through IPv6 included") {
  namespace ip = boost::asio::ip;
  const pp::TrustedProxies proxies({"127.0.0.1", "10.0.0.0/8", "fd00::/8", "::1"});
  CHECK(proxies.contains(ip::make_address("127.0.0.1")));
  CHECK(proxies.contains(ip::make_address("::ffff:127.0.0.1")));
  CHECK_FALSE(proxies.contains(ip::make_address("127.0.0.2")));
  CHECK(proxies.contains(ip::make_address("10.255.1.2")));
  CHECK(proxies.contains(ip::make_address("::ffff:10.0.0.9")));
  CHECK_FALSE(proxies.contains(ip::make_address("11.0.0.1")));
  CHECK(proxies.contains(ip::make_address("fd12:3456::1")));
  CHECK_FALSE(proxies.contains(ip::make_address("fe80::1")));
  CHECK(proxies.contains(ip::make_address("::1")));
  CHECK_FALSE(proxies.contains(ip::make_address("::2")));

  const pp::TrustedProxies everyone({"0.0.0.0/0"});
  CHECK(everyone.contains(ip::make_address("192.0.2.1")));
  CHECK_FALSE(everyone.contains(ip::make_address("2001:db8::1")));
  CHECK(pp::TrustedProxies().empty());

  for (const char* bad : {"localhost", "10.0.0.0/33", "1.2.3.4/x", "fd00::/129", ""})
    CHECK_THROWS_WITH_AS(pp::TrustedProxies({bad}),
                         doctest::Contains(("'" + std::string(bad) + "' is neither").c_str()),
                         Error);
}

TEST_CASE("any bytes after the signature are parsed or refused with an Error, never misread") {
  // Seeded mutations of valid headers: each byte of the fixed part and the body, lengths cut
  // and stretched. Whatever parses names TCP over IPv4 or IPv6, or no client.
  std::mt19937 random(20261207);
  const std::vector<std::string> valid = {header(0x1, 0x11, kIpv4Body),
                                          header(0x1, 0x21, std::string(36, '\x01')),
                                          header(0x0, 0x00, "")};
  int parsed = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string input = valid[random() % valid.size()];
    for (int flips = 1 + static_cast<int>(random() % 3); flips > 0; --flips)
      input[12 + random() % (input.size() - 12)] = static_cast<char>(random());
    if (random() % 4 == 0) input.resize(random() % (input.size() + 40), '\x07');
    try {
      const pp::Header h = pp::parse(input);
      ++parsed;
      const auto family = static_cast<unsigned char>(input[13]);
      CHECK((h.local || family == 0x11 || family == 0x21));
      CHECK(input.size() == pp::kFixedBytes + pp::remaining_bytes(input.substr(0, 16)));
    } catch (const Error&) {
      ++refused;
    }
  }
  CHECK(parsed > 0);
  CHECK(refused > 0);
}
