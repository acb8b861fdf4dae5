#include "crdt/site_id.hpp"

#include <doctest/doctest.h>

#include <random>
#include <set>
#include <string>

#include "crdt/error.hpp"

namespace lattice::crdt {
namespace {

TEST_CASE("a site id round-trips through 32 lower-case hexadecimal digits") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 100; ++i) {
    const SiteId id = SiteId::random(rng);
    const std::string hex = id.to_hex();
    CHECK(hex.size() == 32);
    CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(SiteId::from_hex(hex) == id);
  }
}

TEST_CASE("from_hex accepts upper-case digits") {
  const SiteId id = SiteId::from_hex("00112233445566778899AABBCCDDEEFF");
  CHECK(id.to_hex() == "00112233445566778899aabbccddeeff");
  CHECK(id.bytes[0] == 0x00);
  CHECK(id.bytes[15] == 0xff);
}

TEST_CASE("from_hex refuses the wrong length and non-hexadecimal characters, naming the text") {
  const auto message_of = [](std::string_view text) -> std::string {
    try {
      SiteId::from_hex(text);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kInvalidArgument);
      return e.what();
    }
    FAIL("from_hex accepted " << std::string(text));
    return {};
  };
  std::string message = message_of("abc");
  CHECK(message.find("\"abc\"") != std::string::npos);
  CHECK(message.find("32") != std::string::npos);
  CHECK(message_of("").find("0 characters") != std::string::npos);
  message = message_of("00112233445566778899aabbccddeefg");
  CHECK(message.find("offset 31") != std::string::npos);
  message_of("00112233445566778899aabbccddeeff0");
  message_of(" 0112233445566778899aabbccddeeff");
}

TEST_CASE("from_bytes takes exactly 16 bytes") {
  std::mt19937_64 rng(11);
  const SiteId id = SiteId::random(rng);
  CHECK(SiteId::from_bytes(id.as_bytes()) == id);
  CHECK(id.as_bytes().size() == 16);
  try {
    SiteId::from_bytes(std::string(15, 'x'));
    FAIL("from_bytes accepted 15 bytes");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kCorrupt);
    CHECK(std::string(e.what()).find("15") != std::string::npos);
  }
  CHECK_THROWS_AS(SiteId::from_bytes(std::string(17, 'x')), Error);
}

TEST_CASE("site ids order by their bytes, most significant byte first") {
  const SiteId low = SiteId::from_hex("00ffffffffffffffffffffffffffffff");
  const SiteId high = SiteId::from_hex("01000000000000000000000000000000");
  CHECK(low < high);
  CHECK(low.to_hex() < high.to_hex());  // the hex form sorts the same way
}

TEST_CASE("only the all-zero id is nil") {
  CHECK(SiteId{}.is_nil());
  CHECK_FALSE(SiteId::from_hex("00000000000000000000000000000001").is_nil());
}

TEST_CASE("random ids from a seeded generator are distinct") {
  std::mt19937_64 rng(42);
  std::set<SiteId> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(SiteId::random(rng));
  CHECK(seen.size() == 1000);
}

}  // namespace
}  // namespace lattice::crdt
