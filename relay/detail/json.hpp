#pragma once
// A small, strict JSON reader and writer for the flat objects a JWT header or payload is
// (RFC 8259 syntax; RFC 7519 shapes). Not a general JSON library: the top level must be an
// object, members are scalars, and nested objects or arrays are checked for syntax and then
// kept only as "nested" (their contents are not exposed). Private to lattice::relay.

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
// Refuses, with Error(kInvalidArgument) naming the byte offset: bad syntax, trailing bytes,
// invalid UTF-8, unescaped control characters, lone UTF-16 surrogates in \u escapes,
// duplicate member names, and nesting deeper than 16 levels.
JsonObject parse_json_object(std::string_view text);

// `text` as a JSON string literal, quotes included: `"`, `\` and control characters are
// escaped; other bytes (UTF-8 assumed) are copied as they are.
std::string json_quote(std::string_view text);

}  // namespace lattice::relay::detail
