#include "relay/detail/json.hpp"

#include <boost/json/value.hpp>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "storage/json_reader.hpp"

namespace lattice::relay::detail {
namespace {

constexpr std::size_t kMaxDepth = 16;

JsonValue member_value(const boost::json::value& v) {
  JsonValue out;
  switch (v.kind()) {
    case boost::json::kind::null:
      out.kind = JsonValue::Kind::kNull;
      break;
    case boost::json::kind::bool_:
      out.kind = JsonValue::Kind::kBool;
      out.boolean = v.get_bool();
      break;
    case boost::json::kind::int64:
      out.kind = JsonValue::Kind::kInteger;
      out.integer = v.get_int64();
      break;
    case boost::json::kind::uint64:  // only past INT64_MAX does Boost.JSON read one
      if (v.get_uint64() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        out.kind = JsonValue::Kind::kInteger;
        out.integer = static_cast<std::int64_t>(v.get_uint64());
      } else {
        out.kind = JsonValue::Kind::kNumber;
      }
      break;
    case boost::json::kind::double_:
      out.kind = JsonValue::Kind::kNumber;
      break;
    case boost::json::kind::string:
      out.kind = JsonValue::Kind::kString;
      out.string.assign(v.get_string().data(), v.get_string().size());
      break;
    case boost::json::kind::object:
    case boost::json::kind::array:
      out.kind = JsonValue::Kind::kNested;
      break;
  }
  return out;
}

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

JsonObject parse_json_object(std::string_view text) {
  // Said before reading, so that a token part that is no JSON at all gets the plainest answer.
  const std::size_t start = text.find_first_not_of(" \t\n\r");
  if (start == std::string_view::npos || text[start] != '{') {
    throw Error(ErrorCode::kInvalidArgument,
                "JSON: expected '{' at the start of the object at byte " +
                    std::to_string(start == std::string_view::npos ? text.size() : start) + " of " +
                    std::to_string(text.size()));
  }
  const boost::json::value document = storage::read_json(text, kMaxDepth);
  JsonObject object;
  for (const auto& member : document.get_object())
    object.emplace(std::string(member.key()), member_value(member.value()));
  return object;
}

}  // namespace lattice::relay::detail
