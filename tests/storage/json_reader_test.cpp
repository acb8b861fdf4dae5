// The strict JSON reader (storage/json_reader.hpp) that storage, relay and engine share: what it
// refuses that Boost.JSON alone would take (a member given twice), and that every refusal names
// what was wrong and where.

#include "storage/json_reader.hpp"

#include <doctest/doctest.h>

#include <boost/json/serialize.hpp>
#include <string>

#include "crdt/error.hpp"

namespace lattice {
namespace {

using storage::JsonProblem;

// "kind|what|offset" of the problem, or "ok " and the value read.
std::string read(const std::string& text, std::size_t max_depth = 16) {
  boost::json::value value;
  const auto problem = storage::read_json(text, max_depth, value);
  if (!problem) return "ok " + boost::json::serialize(value);
  const char* kinds[] = {"syntax",    "trailing",  "utf8",    "control",
                         "surrogate", "duplicate", "too_deep"};
  return std::string(kinds[static_cast<int>(problem->kind)]) + "|" + problem->what +
         (problem->kind == JsonProblem::Kind::kSurrogate && !problem->member.empty()
              ? " member " + problem->member
              : "") +
         "|" + std::to_string(problem->offset);
}

TEST_CASE("the JSON reader reads values, escapes and surrogate pairs") {
  CHECK(read(" {\"a\": [1, -2, 1.5, true, null, \"\\u00e9\\ud83d\\ude00\"], \"b\": {}}\n") ==
        "ok {\"a\":[1,-2,1.5E0,true,null,\"\xC3\xA9\xF0\x9F\x98\x80\"],\"b\":{}}");
  CHECK(read("[]") == "ok []");
  CHECK(read("\"x\"") == "ok \"x\"");
  // The same name in different objects is no repeat.
  CHECK(read("{\"a\": {\"a\": 1}, \"b\": [{\"a\": 1}, {\"a\": 2}]}") ==
        "ok {\"a\":{\"a\":1},\"b\":[{\"a\":1},{\"a\":2}]}");
}

TEST_CASE("the JSON reader refuses a member given twice, which Boost.JSON would keep the last of") {
  CHECK(read("{\"a\": 1, \"a\": 2}") == "duplicate|duplicate member \"a\"|9");
  CHECK(read("{\"x\": {\"b\": 1, \"b\": 2}}") == "duplicate|duplicate member \"b\"|15");
  // Escapes are decoded before names are compared.
  CHECK(read("{\"a\": 1, \"\\u0061\": 2}") == "duplicate|duplicate member \"a\"|9");
  boost::json::value value;
  const auto problem = storage::read_json("[{\"k\": 1, \"k\": 2}]", 16, value);
  REQUIRE(problem);
  CHECK(problem->member == "k");
  CHECK(value.is_null());
}

TEST_CASE("the JSON reader names lone UTF-16 surrogates and the member that held one") {
  CHECK(read("{\"a\": \"\\ud800\"}") ==
        "surrogate|lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) "
        "member a|7");
  CHECK(read("{\"a\": \"x\\udc00\"}") ==
        "surrogate|lone UTF-16 surrogate \\udc00 (a low surrogate without a high one before it) "
        "member a|8");
  CHECK(read("{\"a\": \"\\ud800\\u0041\"}") ==
        "surrogate|lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) "
        "member a|7");
  CHECK(read("{\"a\": \"\\uD800\\uDBFF\"}") ==
        "surrogate|lone UTF-16 surrogate \\uD800 (a high surrogate not followed by a low one) "
        "member a|7");
  CHECK(read("{\"a\": \"\\ud800\\n\"}") ==
        "surrogate|lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) "
        "member a|7");
  // At the very end of the text (Boost.JSON's slower path), in a nested value, in a name.
  CHECK(read("{\"a\": \"\\ud800\"") ==
        "surrogate|lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) "
        "member a|7");
  CHECK(read("{\"a\": [{\"b\": \"\\ud800 \"}]}") ==
        "surrogate|lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) "
        "member a|14");
  CHECK(read("{\"\\udc00\": 1}") ==
        "surrogate|lone UTF-16 surrogate \\udc00 (a low surrogate without a high one before it)|2");
  // An escaped backslash before "ud800" is text, not an escape.
  CHECK(read("[\"\\\\ud800\"]") == "ok [\"\\\\ud800\"]");
  CHECK_THROWS_WITH_AS(storage::read_json("{\"title\": \"\\ud800\"}", 16),
                       "JSON: lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a "
                       "low one) in member \"title\" at byte 11 of 19",
                       Error);
}

TEST_CASE("the JSON reader names every other refusal and the byte it stopped at") {
  CHECK(read("") == "syntax|unexpected end of the text|0");
  CHECK(read("{") == "syntax|unexpected end of the text|1");
  CHECK(read("{\"a\":1,}") == "syntax|unexpected character '}'|7");
  CHECK(read("{\"a\":01}") == "syntax|unexpected character '1'|6");
  CHECK(read("{\"a\":\"\\x\"}") == "syntax|unknown escape '\\x'|7");
  CHECK(read("{\"a\":\"\\u12\"}") == "syntax|bad hex digit in a \\u escape|10");
  CHECK(read("{\"a\":\"\t\"}") == "control|unescaped control character U+0009|6");
  CHECK(read("{\"a\":\"\xFF\"}") == "utf8|invalid UTF-8 (byte 0xFF)|6");
  CHECK(read("{\"a\":\"\xED\xA0\x80\"}") == "utf8|invalid UTF-8 (byte 0xED)|6");
  CHECK(read("{\"a\":\"\xE2\x82") == "utf8|invalid UTF-8 (byte 0xE2)|6");
  CHECK(read("{} {}") == "trailing|unexpected bytes after the end of the object|3");
  CHECK(read("[1] x") == "trailing|unexpected bytes after the end of the array|4");
  CHECK(read("[[[[1]]]]", 3) == "too_deep|nesting deeper than 3 levels|3");
  CHECK(read("[[[1]]]", 3) == "ok [[[1]]]");
  CHECK_THROWS_WITH_AS(storage::read_json("{\"a\":1,\"a\":2}", 16),
                       "JSON: duplicate member \"a\" at byte 7 of 13", Error);
}

}  // namespace
}  // namespace lattice
