#pragma once
// The flat objects a JWT header or payload is (RFC 7519 shapes), read with the strict JSON reader
// (storage/json_reader.hpp). The top level must be an object; members are scalars, and nested
// objects or arrays are checked and then kept only as "nested" (their contents are not exposed).
// Private to lattice::relay. JSON strings are written with crdt::json_quote (crdt/json.hpp).

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

namespace lattice::relay::detail {

// One member value of a flat object.
struct JsonValue {
  enum class Kind {
    kNull,
    kBool,
    kInteger,  // an integer literal that fits std::int64_t: `integer` holds it
    kNumber,   // any other number (fraction, exponent, out of range): value not kept
    kString,   // `string` holds the decoded UTF-8 text
    kNested,   // an object or array: syntax-checked, contents not kept
  };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::int64_t integer = 0;
  std::string string;
};

// "null", "boolean", "integer", "number", "string", "object or array".
const char* json_kind_name(JsonValue::Kind kind) noexcept;

using JsonObject = std::map<std::string, JsonValue, std::less<>>;

// Parses `text`, which must be exactly one JSON object (whitespace around it allowed).
// Refuses, with Error(kInvalidArgument) "JSON: <what was wrong> at byte N of M": bad syntax,
// trailing bytes, invalid UTF-8, unescaped control characters, lone UTF-16 surrogates in \u
// escapes, duplicate member names, and nesting deeper than 16 levels (the object counts as one).
JsonObject parse_json_object(std::string_view text);

}  // namespace lattice::relay::detail
