#include "storage/json_reader.hpp"

#include <algorithm>
#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/value_stack.hpp>
#include <cstdint>
#include <cstdio>

#include "crdt/error.hpp"
#include "crdt/hex.hpp"

namespace lattice::storage {

namespace json = boost::json;

namespace {

// The code of the \u escape at `s` of `text` (a backslash preceded by an even number of
// backslashes, 'u', four hex digits), or -1.
long escape_at(std::string_view text, std::size_t s) {
  if (s + 6 > text.size() || text[s] != '\\' || text[s + 1] != 'u') return -1;
  std::size_t backslashes = 0;
  while (backslashes < s && text[s - 1 - backslashes] == '\\') ++backslashes;
  if (backslashes % 2 != 0) return -1;
  long code = 0;
  for (std::size_t i = s + 2; i < s + 6; ++i) {
    const int digit = crdt::hex_digit(text[i]);
    if (digit < 0) return -1;
    code = code * 16 + digit;
  }
  return code;
}

bool high_surrogate(long code) { return code >= 0xD800 && code <= 0xDBFF; }
bool low_surrogate(long code) { return code >= 0xDC00 && code <= 0xDFFF; }

// Where the lone surrogate is that made the parser stop at `at`: it stops on a lone low one, or
// just after a high one (or on the escape after it), so the nearest escape at or before `at`,
// or the one before that, is it. npos when none is.
std::size_t lone_surrogate_near(std::string_view text, std::size_t at) {
  const std::size_t from = at < text.size() ? at : text.size();
  for (std::size_t back = 0; back <= 8 && back <= from; ++back) {
    const std::size_t s = from - back;
    const long code = escape_at(text, s);
    if (code < 0) continue;
    // The escape before, when it is a high surrogate, is the lone one: a high one followed by
    // anything but a low one.
    if (s >= 6 && high_surrogate(escape_at(text, s - 6))) {
      if (!low_surrogate(code)) return s - 6;
    }
    if (high_surrogate(code) || low_surrogate(code)) return s;
    return std::string_view::npos;
  }
  return std::string_view::npos;
}

// Where the member name whose closing quote is at `end` opens: the nearest quote before it that
// no backslash escapes.
std::size_t name_start(std::string_view text, std::size_t end) {
  for (std::size_t q = std::min(end, text.size()); q-- > 0;) {
    if (text[q] != '"') continue;
    std::size_t backslashes = 0;
    while (backslashes < q && text[q - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return q;
  }
  return end;
}

std::string hex_byte(unsigned char c) {
  char buffer[8];
  std::snprintf(buffer, sizeof buffer, "0x%02X", c);
  return buffer;
}

// Builds the value as boost::json::parser would, and watches member names (JsonMembers).
struct StrictHandler {
  static constexpr std::size_t max_object_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_array_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_key_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_string_size = std::size_t(-1) >> 1;

  json::value_stack stack;
  JsonMembers members;
  json::kind top = json::kind::null;
  bool duplicate = false;

  StrictHandler() { stack.reset(); }

  void opened(bool object) {
    if (members.depth() == 0) top = object ? json::kind::object : json::kind::array;
    members.open(object);
  }
  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    opened(true);
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code&) {
    stack.push_object(n);
    members.close();
    return true;
  }
  bool on_array_begin(json::error_code&) {
    opened(false);
    return true;
  }
  bool on_array_end(std::size_t n, json::error_code&) {
    stack.push_array(n);
    members.close();
    return true;
  }
  bool on_key_part(json::string_view sv, std::size_t, json::error_code&) {
    stack.push_chars(sv);
    members.key_part(sv);
    return true;
  }
  bool on_key(json::string_view sv, std::size_t, json::error_code& ec) {
    if (!members.key(sv)) {
      duplicate = true;
      ec = json::error::syntax;
      return false;
    }
    stack.push_key(sv);
    return true;
  }
  bool on_string_part(json::string_view sv, std::size_t, json::error_code&) {
    stack.push_chars(sv);
    return true;
  }
  bool on_string(json::string_view sv, std::size_t, json::error_code&) {
    stack.push_string(sv);
    return scalar();
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(std::int64_t i, json::string_view, json::error_code&) {
    stack.push_int64(i);
    return scalar();
  }
  bool on_uint64(std::uint64_t u, json::string_view, json::error_code&) {
    stack.push_uint64(u);
    return scalar();
  }
  bool on_double(double d, json::string_view, json::error_code&) {
    stack.push_double(d);
    return scalar();
  }
  bool on_bool(bool b, json::error_code&) {
    stack.push_bool(b);
    return scalar();
  }
  bool on_null(json::error_code&) {
    stack.push_null();
    return scalar();
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

  bool scalar() {
    members.value();
    return true;
  }
};

const char* top_name(json::kind kind) {
  switch (kind) {
    case json::kind::object:
      return "the object";
    case json::kind::array:
      return "the array";
    default:
      return "the value";
  }
}

}  // namespace

void JsonMembers::open(bool object) {
  Level level;
  level.object = object;
  levels_.push_back(std::move(level));
}

void JsonMembers::close() {
  if (!levels_.empty()) levels_.pop_back();
  value();
}

void JsonMembers::key_part(std::string_view part) { pending_.append(part); }

bool JsonMembers::key(std::string_view last) {
  pending_.append(last);
  if (levels_.empty()) return true;
  Level& level = levels_.back();
  level.in_value = true;
  level.key = std::move(pending_);
  pending_.clear();
  if (level.names.insert(level.key).second) return true;
  repeated_ = level.key;
  return false;
}

void JsonMembers::value() {
  if (!levels_.empty()) levels_.back().in_value = false;
}

std::optional<std::string> JsonMembers::member_at(std::size_t level) const {
  if (level >= levels_.size() || !levels_[level].object) return std::nullopt;
  // Deeper levels are inside the member's value; at the innermost one, between a name and the
  // end of its value.
  if (level + 1 == levels_.size() && !levels_[level].in_value) return std::nullopt;
  return levels_[level].key;
}

JsonProblem describe_json_error(std::string_view text, std::size_t at, json::error_code ec,
                                std::size_t max_depth) {
  using Kind = JsonProblem::Kind;
  JsonProblem problem;
  problem.offset = at;
  auto named = [&](Kind kind, std::string what) {
    problem.kind = kind;
    problem.what = std::move(what);
    return problem;
  };
  if (ec == json::error::too_deep)
    return named(Kind::kTooDeep, "nesting deeper than " + std::to_string(max_depth) + " levels");
  // Boost.JSON names bytes that are not UTF-8 a syntax error, where they start or a little after.
  const std::size_t bad = invalid_utf8_at(text.substr(0, at + 4));
  if (bad != std::string_view::npos && bad <= at) {
    problem.offset = bad;
    return named(Kind::kUtf8,
                 "invalid UTF-8 (byte " + hex_byte(static_cast<unsigned char>(text[bad])) + ")");
  }
  if (ec == json::error::illegal_leading_surrogate ||
      ec == json::error::illegal_trailing_surrogate || ec == json::error::syntax) {
    const std::size_t s = lone_surrogate_near(text, at);
    // A syntax error counts as a surrogate's only right after a high surrogate's escape.
    const bool after_high = s != std::string_view::npos && high_surrogate(escape_at(text, s)) &&
                            (at == s + 6 || (at == s + 7 && text[s + 6] == '\\'));
    if (s != std::string_view::npos && (ec != json::error::syntax || after_high)) {
      problem.offset = s;
      const bool high = high_surrogate(escape_at(text, s));
      return named(Kind::kSurrogate,
                   "lone UTF-16 surrogate " + std::string(text.substr(s, 6)) +
                       (high ? " (a high surrogate not followed by a low one)"
                             : " (a low surrogate without a high one before it)"));
    }
  }
  if (ec == json::error::expected_hex_digit)
    return named(Kind::kSyntax, "bad hex digit in a \\u escape");
  if (ec == json::error::exponent_overflow) return named(Kind::kSyntax, "exponent too large");
  if (at >= text.size() || ec == json::error::incomplete)
    return named(Kind::kSyntax, "unexpected end of the text");
  const auto c = static_cast<unsigned char>(text[at]);
  if (c < 0x20) {
    char code[8];
    std::snprintf(code, sizeof code, "U+%04X", c);
    return named(Kind::kControl, std::string("unescaped control character ") + code);
  }
  if (at > 0 && text[at - 1] == '\\') {
    std::size_t backslashes = 0;
    while (backslashes < at && text[at - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 1)
      return named(Kind::kSyntax, std::string("unknown escape '\\") + text[at] + "'");
  }
  if (c >= 0x80 || c == 0x7F) return named(Kind::kSyntax, "unexpected byte " + hex_byte(c));
  return named(Kind::kSyntax, std::string("unexpected character '") + text[at] + "'");
}

std::optional<JsonProblem> read_json(std::string_view text, std::size_t max_depth,
                                     json::value& out) {
  out = nullptr;
  json::parse_options options;
  options.max_depth = max_depth;
  json::basic_parser<StrictHandler> parser(options);
  json::error_code ec;
  const std::size_t used = parser.write_some(false, text.data(), text.size(), ec);
  StrictHandler& handler = parser.handler();
  if (handler.duplicate) {
    JsonProblem problem;
    problem.kind = JsonProblem::Kind::kDuplicate;
    problem.member = handler.members.repeated();
    problem.what = "duplicate member \"" + problem.member + "\"";
    problem.offset = name_start(text, used);
    return problem;
  }
  if (ec == json::error::extra_data || (!ec && used < text.size())) {
    JsonProblem problem = describe_json_error(text, used, {}, max_depth);
    if (problem.kind == JsonProblem::Kind::kUtf8) return problem;
    problem.kind = JsonProblem::Kind::kTrailing;
    problem.what = std::string("unexpected bytes after the end of ") + top_name(handler.top);
    return problem;
  }
  if (ec) {
    JsonProblem problem = describe_json_error(text, used, ec, max_depth);
    if (problem.kind == JsonProblem::Kind::kSurrogate) {
      if (auto member = handler.members.member_at(0)) problem.member = *member;
    }
    return problem;
  }
  out = handler.stack.release();
  return std::nullopt;
}

json::value read_json(std::string_view text, std::size_t max_depth) {
  json::value out;
  if (auto problem = read_json(text, max_depth, out)) {
    const std::string where =
        problem->kind == JsonProblem::Kind::kSurrogate && !problem->member.empty()
            ? " in member \"" + problem->member + "\""
            : "";
    throw Error(ErrorCode::kInvalidArgument, "JSON: " + problem->what + where + " at byte " +
                                                 std::to_string(problem->offset) + " of " +
                                                 std::to_string(text.size()));
  }
  return out;
}

std::size_t invalid_utf8_at(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    std::uint32_t min = 0, code = 0;
    if ((c & 0xE0) == 0xC0) {
      length = 2, min = 0x80, code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, min = 0x800, code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, min = 0x10000, code = c & 0x07;
    } else {
      return i;
    }
    if (i + length > n) return i;
    for (std::size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      code = (code << 6) | (s[i + k] & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::string_view::npos;
}

}  // namespace lattice::storage
