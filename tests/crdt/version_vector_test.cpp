#include "crdt/version_vector.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "crdt/error.hpp"

namespace lattice::crdt {
namespace {

const SiteId kA = SiteId::from_hex("0a000000000000000000000000000000");
const SiteId kB = SiteId::from_hex("0b000000000000000000000000000000");
const SiteId kC = SiteId::from_hex("0c000000000000000000000000000000");

VersionVector vv(std::initializer_list<std::pair<SiteId, std::uint64_t>> entries) {
  VersionVector v;
  for (const auto& [site, seq] : entries) v.advance(site, seq);
  return v;
}

TEST_CASE("an absent site counts as sequence 0 and zero entries are never stored") {
  VersionVector v;
  CHECK(v.get(kA) == 0);
  CHECK(v.contains(kA, 0));
  CHECK_FALSE(v.contains(kA, 1));
  v.advance(kA, 0);
  CHECK(v.empty());
  CHECK(v == VersionVector{});
}

TEST_CASE("advance raises an entry and never lowers it") {
  VersionVector v;
  v.advance(kA, 5);
  v.advance(kA, 3);
  CHECK(v.get(kA) == 5);
  v.advance(kA, 9);
  CHECK(v.get(kA) == 9);
  CHECK(v.contains(kA, 9));
  CHECK_FALSE(v.contains(kA, 10));
}

TEST_CASE("merge takes the pointwise maximum") {
  VersionVector a = vv({{kA, 3}, {kB, 1}});
  a.merge(vv({{kB, 4}, {kC, 2}}));
  CHECK(a == vv({{kA, 3}, {kB, 4}, {kC, 2}}));
  CHECK(a.entries().size() == 3);
}

TEST_CASE("compare places two vectors in the causal order") {
  const VersionVector a = vv({{kA, 2}, {kB, 1}});
  CHECK(a.compare(a) == VersionVector::Order::kEqual);
  CHECK(a.compare(vv({{kA, 3}, {kB, 1}})) == VersionVector::Order::kBefore);
  CHECK(a.compare(vv({{kA, 2}})) == VersionVector::Order::kAfter);
  CHECK(a.compare(vv({{kA, 1}, {kB, 2}})) == VersionVector::Order::kConcurrent);
  CHECK(a.compare(vv({{kC, 1}})) == VersionVector::Order::kConcurrent);
  CHECK(VersionVector{}.compare(a) == VersionVector::Order::kBefore);
}

TEST_CASE("a vector dominates what it counts entirely") {
  const VersionVector a = vv({{kA, 2}, {kB, 1}});
  CHECK(a.dominates(a));
  CHECK(a.dominates(VersionVector{}));
  CHECK(a.dominates(vv({{kA, 1}})));
  CHECK_FALSE(a.dominates(vv({{kA, 1}, {kC, 1}})));
  CHECK_FALSE(VersionVector{}.dominates(a));
}

TEST_CASE("missing_from lists per site the run the holder lacks") {
  const VersionVector mine = vv({{kA, 5}, {kB, 2}, {kC, 7}});
  const VersionVector holder = vv({{kA, 5}, {kB, 4}, {kC, 3}});
  const std::vector<VersionVector::Range> missing = mine.missing_from(holder);
  REQUIRE(missing.size() == 1);
  CHECK(missing[0] == VersionVector::Range{kC, 3, 7});

  const auto all = mine.missing_from(VersionVector{});
  REQUIRE(all.size() == 3);
  CHECK(all[0] == VersionVector::Range{kA, 0, 5});  // ordered by site
  CHECK(all[1] == VersionVector::Range{kB, 0, 2});
  CHECK(all[2] == VersionVector::Range{kC, 0, 7});

  CHECK(mine.missing_from(mine).empty());
  CHECK(holder.dominates(vv({{kA, 1}})));
  CHECK(vv({{kA, 1}}).missing_from(holder).empty());
}

TEST_CASE("to_json writes sites in byte order and from_json reads it back") {
  const VersionVector v = vv({{kB, 18446744073709551615u}, {kA, 1}});
  const std::string json = v.to_json();
  CHECK(json ==
        "{\"0a000000000000000000000000000000\": 1, "
        "\"0b000000000000000000000000000000\": 18446744073709551615}");
  CHECK(VersionVector::from_json(json) == v);
  CHECK(VersionVector{}.to_json() == "{}");
  CHECK(VersionVector::from_json("{}").empty());
}

TEST_CASE("from_json allows whitespace, upper-case hex and zero entries") {
  const VersionVector v = VersionVector::from_json(
      " \n{\t\"0A000000000000000000000000000000\" :\r\n 7 ,\"0b000000000000000000000000000000\":0 "
      "}\n");
  CHECK(v == vv({{kA, 7}}));
  CHECK(v.entries().size() == 1);
  CHECK(VersionVector::from_json(" { } ").empty());
}

// The message from_json throws for `json`, which must be malformed.
std::string json_error(std::string_view json) {
  try {
    VersionVector::from_json(json);
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    return e.what();
  }
  FAIL("from_json accepted " << std::string(json));
  return {};
}

constexpr const char* kHexA = "\"0a000000000000000000000000000000\"";

TEST_CASE("from_json names the byte offset and what it expected") {
  SUBCASE("empty text") {
    CHECK(json_error("") ==
          "version vector JSON: at byte 0: expected '{' opening the version vector, found the "
          "end of the text");
  }
  SUBCASE("not an object") {
    CHECK(json_error("[1]") ==
          "version vector JSON: at byte 0: expected '{' opening the version vector, found '['");
  }
  SUBCASE("unterminated object") {
    CHECK(json_error(std::string("{") + kHexA + ": 1").find("at byte 38: expected ',' or '}'") !=
          std::string::npos);
  }
  SUBCASE("key without quotes") {
    CHECK(json_error("{0a000000000000000000000000000000: 1}") ==
          "version vector JSON: at byte 1: expected '\"' opening a site id, found '0'");
  }
  SUBCASE("short site id") {
    CHECK(json_error("{\"0a\": 1}") ==
          "version vector JSON: at byte 4: expected a hexadecimal digit (a site id is 32 of "
          "them), found '\"'");
  }
  SUBCASE("long site id") {
    CHECK(json_error("{\"0a0000000000000000000000000000000\": 1}")
              .find("at byte 34: expected '\"' closing a site id") != std::string::npos);
  }
  SUBCASE("non-hexadecimal site id") {
    CHECK(json_error("{\"0g000000000000000000000000000000\": 1}")
              .find("at byte 3: expected a hexadecimal digit") != std::string::npos);
  }
  SUBCASE("missing colon") {
    CHECK(json_error(std::string("{") + kHexA + " 1}").find("at byte 36: expected ':'") !=
          std::string::npos);
  }
  SUBCASE("missing number") {
    CHECK(json_error(std::string("{") + kHexA + ": }")
              .find("at byte 37: expected a sequence number") != std::string::npos);
  }
  SUBCASE("quoted number") {
    CHECK(json_error(std::string("{") + kHexA + ": \"1\"}")
              .find("at byte 37: expected a sequence number") != std::string::npos);
  }
  SUBCASE("negative number") {
    CHECK(json_error(std::string("{") + kHexA + ": -1}") ==
          "version vector JSON: at byte 37: expected a non-negative sequence number, found '-'");
  }
  SUBCASE("number above 2^64-1") {
    CHECK(json_error(std::string("{") + kHexA + ": 18446744073709551616}") ==
          "version vector JSON: at byte 37: expected a sequence number of at most "
          "18446744073709551615, found '1'");
    CHECK_NOTHROW(VersionVector::from_json(std::string("{") + kHexA + ": 18446744073709551615}"));
    json_error(std::string("{") + kHexA + ": 99999999999999999999999}");
  }
  SUBCASE("fraction or exponent") {
    CHECK(json_error(std::string("{") + kHexA + ": 1.0}")
              .find("at byte 38: expected an integer sequence number") != std::string::npos);
    CHECK(json_error(std::string("{") + kHexA + ": 1e3}")
              .find("at byte 38: expected an integer sequence number") != std::string::npos);
  }
  SUBCASE("leading zero") {
    CHECK(json_error(std::string("{") + kHexA + ": 01}")
              .find("at byte 37: expected a sequence number without leading zeros") !=
          std::string::npos);
  }
  SUBCASE("duplicate site, in either case") {
    const std::string message =
        json_error(std::string("{") + kHexA + ": 1, " + "\"0A000000000000000000000000000000\": 2}");
    CHECK(message.find("at byte 40") != std::string::npos);
    CHECK(message.find("0a000000000000000000000000000000 is repeated") != std::string::npos);
    // Even when the first mention was a zero entry, which is not stored.
    json_error(std::string("{") + kHexA + ": 0, " + kHexA + ": 0}");
  }
  SUBCASE("trailing comma") {
    CHECK(json_error(std::string("{") + kHexA + ": 1,}")
              .find("at byte 39: expected '\"' opening a site id, found '}'") != std::string::npos);
  }
  SUBCASE("trailing garbage") {
    CHECK(json_error("{} x") ==
          "version vector JSON: at byte 3: expected the end of the text after the closing '}', "
          "found 'x'");
    json_error("{}{}");
  }
  SUBCASE("a control byte is shown in hex") {
    CHECK(json_error(std::string("{\x01}")).find("found byte 0x01") != std::string::npos);
  }
}

}  // namespace
}  // namespace lattice::crdt
