#include "relay/detail/json.hpp"

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "crdt/json.hpp"

namespace lattice::relay::detail {
namespace {

constexpr int kMaxDepth = 16;

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  JsonObject parse_document() {
    skip_whitespace();
    if (at_end() || peek() != '{') fail("expected '{' at the start of the object");
    JsonObject object = parse_object();
    skip_whitespace();
    if (!at_end()) fail("unexpected bytes after the end of the object");
    return object;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::kInvalidArgument, "JSON: " + what + " at byte " + std::to_string(pos_) +
                                                 " of " + std::to_string(text_.size()));
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) {
      ++pos_;
    }
  }

  void expect(char c, const char* what) {
    skip_whitespace();
    if (at_end() || peek() != c) fail(std::string("expected ") + what);
    ++pos_;
  }

  JsonObject parse_object() {
    ++pos_;  // '{'
    JsonObject object;
    skip_whitespace();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return object;
    }
    for (;;) {
      skip_whitespace();
      if (at_end() || peek() != '"') fail("expected a member name in double quotes");
      std::size_t name_pos = pos_;
      std::string name = parse_string();
      if (object.count(name) != 0) {
        pos_ = name_pos;
        fail("duplicate member \"" + name + "\"");
      }
      expect(':', "':' after a member name");
      object.emplace(std::move(name), parse_value(1));
      skip_whitespace();
      if (at_end()) fail("unterminated object");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return object;
      }
      fail("expected ',' or '}' after a member");
    }
  }

  JsonValue parse_value(int depth) {
    skip_whitespace();
    if (at_end()) fail("expected a value");
    JsonValue value;
    char c = peek();
    if (c == '"') {
      value.kind = JsonValue::Kind::kString;
      value.string = parse_string();
    } else if (c == '{' || c == '[') {
      skip_nested(depth);
      value.kind = JsonValue::Kind::kNested;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      parse_number(value);
    } else if (consume_literal("true")) {
      value.kind = JsonValue::Kind::kBool;
      value.boolean = true;
    } else if (consume_literal("false")) {
      value.kind = JsonValue::Kind::kBool;
    } else if (consume_literal("null")) {
      value.kind = JsonValue::Kind::kNull;
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return value;
  }

  bool consume_literal(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }

  // An object or array below the top level: checked for syntax, contents dropped.
  void skip_nested(int depth) {
    if (depth >= kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    char open = peek();
    char close = open == '{' ? '}' : ']';
    ++pos_;
    skip_whitespace();
    if (!at_end() && peek() == close) {
      ++pos_;
      return;
    }
    for (;;) {
      if (open == '{') {
        skip_whitespace();
        if (at_end() || peek() != '"') fail("expected a member name in double quotes");
        parse_string();
        expect(':', "':' after a member name");
      }
      parse_value(depth + 1);
      skip_whitespace();
      if (at_end()) fail(open == '{' ? "unterminated object" : "unterminated array");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == close) {
        ++pos_;
        return;
      }
      fail(std::string("expected ',' or '") + close + "'");
    }
  }

  void parse_number(JsonValue& value) {
    bool negative = false;
    if (peek() == '-') {
      negative = true;
      ++pos_;
    }
    if (at_end() || peek() < '0' || peek() > '9') fail("expected a digit");
    if (peek() == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' &&
        text_[pos_ + 1] <= '9') {
      fail("leading zeros are not allowed in numbers");
    }
    // Accumulate as a negative magnitude so that INT64_MIN fits.
    std::int64_t acc = 0;
    bool in_range = true;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      int digit = peek() - '0';
      if (acc < (std::numeric_limits<std::int64_t>::min() + digit) / 10) in_range = false;
      if (in_range) acc = acc * 10 - digit;
      ++pos_;
    }
    bool integral = true;
    if (!at_end() && peek() == '.') {
      integral = false;
      ++pos_;
      if (at_end() || peek() < '0' || peek() > '9') fail("expected a digit after '.'");
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integral = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (at_end() || peek() < '0' || peek() > '9') fail("expected a digit in the exponent");
      while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (!negative && acc == std::numeric_limits<std::int64_t>::min()) in_range = false;
    if (integral && in_range) {
      value.kind = JsonValue::Kind::kInteger;
      value.integer = negative ? acc : -acc;
    } else {
      value.kind = JsonValue::Kind::kNumber;
    }
  }

  std::uint32_t parse_hex4() {
    if (text_.size() - pos_ < 4) fail("truncated \\u escape");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        fail("bad hex digit in \\u escape");
      }
      ++pos_;
    }
    return v;
  }

  // Copies one raw UTF-8 sequence starting at pos_, refusing overlong forms, surrogates and
  // code points above U+10FFFF (RFC 3629).
  void copy_utf8(std::string& out) {
    auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text_[pos_ + i]); };
    unsigned char b0 = byte(0);
    std::size_t len;
    std::uint32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      fail("invalid UTF-8");
    }
    if (text_.size() - pos_ < len) fail("truncated UTF-8 sequence");
    for (std::size_t i = 1; i < len; ++i) {
      if ((byte(i) & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (byte(i) & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      fail("invalid UTF-8");
    }
    out.append(text_.substr(pos_, len));
    pos_ += len;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(peek());
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("unescaped control character in a string");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (at_end()) fail("unterminated escape");
      char e = peek();
      ++pos_;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (text_.substr(pos_, 2) != "\\u") fail("high surrogate not followed by \\u");
            pos_ += 2;
            std::uint32_t low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("high surrogate not followed by a low one");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail(std::string("unknown escape '\\") + e + "'");
      }
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

}  // namespace

const char* json_kind_name(JsonValue::Kind kind) noexcept {
  switch (kind) {
    case JsonValue::Kind::kNull:
      return "null";
    case JsonValue::Kind::kBool:
      return "boolean";
    case JsonValue::Kind::kInteger:
      return "integer";
    case JsonValue::Kind::kNumber:
      return "number";
    case JsonValue::Kind::kString:
      return "string";
    case JsonValue::Kind::kNested:
      return "object or array";
  }
  return "unknown";
}

JsonObject parse_json_object(std::string_view text) { return Parser(text).parse_document(); }

std::string json_quote(std::string_view text) { return crdt::json_quote(text); }

}  // namespace lattice::relay::detail
