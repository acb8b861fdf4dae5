#include "crdt/json.hpp"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>

namespace lattice::crdt {

std::string json_quote(std::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string json_value(const Value& value) {
  switch (value.index()) {
    case 1:
      return std::to_string(std::get<std::int64_t>(value));
    case 2: {
      const double d = std::get<double>(value);
      if (std::isnan(d)) return "\"NaN\"";
      if (std::isinf(d)) return d > 0 ? "\"Infinity\"" : "\"-Infinity\"";
      char buffer[32];
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, d);
      std::string text(buffer, end);
      if (text.find_first_of(".eE") == std::string::npos) text += ".0";
      return text;
    }
    case 3:
      return json_quote(std::get<std::string>(value));
    case 4: {
      static const char* digits = "0123456789abcdef";
      std::string out = "{\"blob\": \"";
      for (unsigned char c : std::get<Blob>(value).bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
      }
      return out + "\"}";
    }
    default:
      return "null";
  }
}

}  // namespace lattice::crdt
