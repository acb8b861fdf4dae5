#pragma once
// JSON text for strings and cell values: the one place Lattice writes JSON string literals
// (RFC 8259). Writing only; readers that need JSON parse it where they are.

#include <string>
#include <string_view>

#include "crdt/value.hpp"

namespace lattice::crdt {

// `text` as a JSON string literal, quotes included: `"`, `\` and the control characters
// U+0000..U+001F and U+007F are escaped; other bytes (UTF-8 assumed) are copied as they are.
std::string json_quote(std::string_view text);

// A cell value as JSON: null, an integer, a real (always with a fraction or an exponent, so it
// reads back as one; NaN and the infinities, which JSON lacks, as the strings "NaN",
// "Infinity" and "-Infinity"), a string, or a blob as {"blob": "<hex digits>"}.
std::string json_value(const Value& value);

}  // namespace lattice::crdt
