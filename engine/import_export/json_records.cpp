#include "engine/import_export/json_records.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/error.hpp>
#include <boost/json/value_stack.hpp>
#include <cstring>
#include <deque>
#include <vector>

#include "crdt/error.hpp"
#include "engine/import_export/conversion.hpp"
#include "storage/json_reader.hpp"

namespace lattice::engine {

namespace json = boost::json;

namespace {

constexpr std::size_t kBufferBytes = 1 << 16;
constexpr std::size_t kKeptText = 4096;
// Bytes of an array file kept from the pieces already fed, so that a \u escape cut between two
// pieces is still found when the parser refuses it (storage::describe_json_error).
constexpr std::size_t kKeptTail = 16;

std::string repeated_member(const std::string& name) {
  return "the member '" + name + "' is given twice";
}

// A lone surrogate's phrase, with the member that held it when there is one.
std::string surrogate(const storage::JsonProblem& problem) {
  return problem.what + (problem.member.empty() ? "" : " in member '" + problem.member + "'");
}

const char* kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::array:
      return "an array";
    case json::kind::string:
      return "a string";
    case json::kind::bool_:
      return "a boolean";
    case json::kind::null:
      return "null";
    case json::kind::object:
      return "an object";
    default:
      return "a number";
  }
}

struct ArrayHandler;

// Where, in the `parsed` bytes of `text` the parser read before refusing it, a byte is not UTF-8
// (Boost.JSON calls those a "syntax error" too), or npos.
std::size_t bad_utf8_before(std::string_view text, std::size_t parsed) {
  const std::size_t bad = invalid_utf8_at(text);
  return bad < parsed ? bad : std::string_view::npos;
}

}  // namespace

struct JsonRecordReader::State {
  State(ByteSource s, Layout l, const ReadLimits& lim, bool keep)
      : source(std::move(s)), layout(l), limits(lim), keep_values(keep), buffer(kBufferBytes) {}

  ByteSource source;
  Layout layout;
  ReadLimits limits;
  bool keep_values;
  std::vector<char> buffer;
  std::size_t pos = 0, end = 0;
  std::uint64_t consumed = 0;  // bytes before `buffer`
  std::uint64_t line = 1;
  std::uint64_t records = 0;
  bool at_end = false;

  bool refill() {
    consumed += end;
    pos = end = 0;
    end = source(buffer.data(), buffer.size());
    return end > 0;
  }
  [[noreturn]] void nul_byte(std::size_t at) const {
    throw Error(ErrorCode::kCorrupt, "line " + std::to_string(line) + " (byte " +
                                         std::to_string(consumed + at + 1) +
                                         ") holds a NUL byte: this is not a text file");
  }

  // --- NDJSON ----------------------------------------------------------------------------------
  std::string text;
  bool next_line(JsonRecord& record);

  // --- Array: the parser's events build one element at a time --------------------------------
  std::unique_ptr<json::basic_parser<ArrayHandler>> parser;
  std::deque<JsonRecord> ready;
  int level = 0;  // 0 outside the array, 1 inside it, more inside an element
  bool element_is_object = false, too_large = false, building = false;
  std::size_t element_bytes = 0;
  std::uint64_t element_line = 0;
  std::string top_error;
  json::value_stack stack;
  storage::JsonMembers members;  // level 0 the array, 1 an element
  std::string repeated;          // a member the current element gives twice
  std::string tail;              // the last kKeptTail bytes fed before the current piece

  bool open_value(bool object) {
    if (level == 0) {
      if (object) {
        top_error =
            "the file holds a JSON object, not an array of objects (for one object per line, "
            "use the ndjson format)";
        return false;
      }
      level = 1;
      members.open(false);
      return true;
    }
    if (level == 1) start_element(object);
    ++level;
    members.open(object);
    return true;
  }
  void start_element(bool object) {
    element_is_object = object;
    too_large = false;
    element_bytes = 0;
    element_line = line;
    repeated.clear();
    building = keep_values && object;
    if (building) stack.reset();
  }
  bool close_value(bool object, std::size_t n) {
    --level;
    members.close();
    if (level == 0) return true;  // the array itself
    if (building) object ? stack.push_object(n) : stack.push_array(n);
    if (level == 1) finish_element();
    return true;
  }
  void finish_element() {
    JsonRecord record;
    record.number = ++records;
    record.line = element_line;
    if (!element_is_object) {
      record.error = "the record is an array, not an object";
    } else if (too_large) {
      record.error =
          "the record is longer than " + std::to_string(limits.max_record_bytes) + " bytes";
    } else if (!repeated.empty()) {
      record.error = repeated_member(repeated);
    } else if (building) {
      record.value = stack.release();
    }
    building = false;
    ready.push_back(std::move(record));
  }
  // Counts a piece of an element against the limit; false when building must stop.
  bool count(std::size_t bytes) {
    element_bytes += bytes + 1;
    if (element_bytes > limits.max_record_bytes && !too_large) {
      too_large = true;
      building = false;
    }
    return building;
  }
  // A scalar outside any element: at level 1 an element of its own, refused; outside the array
  // the end of the parse (false).
  bool top_scalar(const char* what) {
    if (level == 0) {
      top_error = std::string("the file holds ") + what + ", not an array of objects";
      return false;
    }
    JsonRecord record;
    record.number = ++records;
    record.line = line;
    record.error = std::string("the record is ") + what + ", not an object";
    ready.push_back(std::move(record));
    return true;
  }
  bool next_element(JsonRecord& record);
  void feed(const char* data, std::size_t size, bool more);
  // Throws, naming the record and member, when the parser stopped at a lone surrogate.
  void lone_surrogate(std::string_view piece, std::size_t used, json::error_code ec) const;
};

namespace {

// The basic_parser's handler (boost/json/basic_parser.hpp): forwards each event to the state,
// which builds the current element's value on a value_stack as boost::json::parser does.
struct ArrayHandler {
  static constexpr std::size_t max_object_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_array_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_key_size = std::size_t(-1) >> 1;
  static constexpr std::size_t max_string_size = std::size_t(-1) >> 1;

  JsonRecordReader::State* s;
  explicit ArrayHandler(JsonRecordReader::State* state) : s(state) {}

  bool fail(json::error_code& ec) {
    ec = json::error::syntax;
    return false;
  }
  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code& ec) { return s->open_value(true) || fail(ec); }
  bool on_object_end(std::size_t n, json::error_code&) { return s->close_value(true, n); }
  bool on_array_begin(json::error_code& ec) { return s->open_value(false) || fail(ec); }
  bool on_array_end(std::size_t n, json::error_code&) { return s->close_value(false, n); }
  // Member names are remembered, to find one given twice, while the element is within the
  // record limit: memory stays bounded by it.
  bool on_key_part(json::string_view sv, std::size_t, json::error_code&) {
    if (s->count(sv.size())) s->stack.push_chars(sv);
    if (!s->too_large) s->members.key_part(sv);
    return true;
  }
  bool on_key(json::string_view sv, std::size_t, json::error_code&) {
    if (s->count(sv.size())) s->stack.push_key(sv);
    if (!s->too_large && !s->members.key(sv) && s->repeated.empty())
      s->repeated = s->members.repeated();
    return true;
  }
  bool on_string_part(json::string_view sv, std::size_t, json::error_code&) {
    if (s->level >= 2 && s->count(sv.size())) s->stack.push_chars(sv);
    return true;
  }
  bool on_string(json::string_view sv, std::size_t, json::error_code& ec) {
    if (s->level <= 1) return top_scalar("a string", ec);
    if (s->count(sv.size())) s->stack.push_string(sv);
    s->members.value();
    return true;
  }
  bool on_number_part(json::string_view sv, json::error_code&) {
    if (s->level >= 2) s->count(sv.size());
    return true;
  }
  bool on_int64(std::int64_t i, json::string_view sv, json::error_code& ec) {
    if (s->level <= 1) return top_scalar("a number", ec);
    if (s->count(sv.size())) s->stack.push_int64(i);
    s->members.value();
    return true;
  }
  bool on_uint64(std::uint64_t u, json::string_view sv, json::error_code& ec) {
    if (s->level <= 1) return top_scalar("a number", ec);
    if (s->count(sv.size())) s->stack.push_uint64(u);
    s->members.value();
    return true;
  }
  bool on_double(double d, json::string_view sv, json::error_code& ec) {
    if (s->level <= 1) return top_scalar("a number", ec);
    if (s->count(sv.size())) s->stack.push_double(d);
    s->members.value();
    return true;
  }
  bool on_bool(bool b, json::error_code& ec) {
    if (s->level <= 1) return top_scalar("a boolean", ec);
    if (s->count(5)) s->stack.push_bool(b);
    s->members.value();
    return true;
  }
  bool on_null(json::error_code& ec) {
    if (s->level <= 1) return top_scalar("null", ec);
    if (s->count(4)) s->stack.push_null();
    s->members.value();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

  bool top_scalar(const char* what, json::error_code& ec) {
    return s->top_scalar(what) || fail(ec);
  }
};

}  // namespace

void JsonRecordReader::State::feed(const char* data, std::size_t size, bool more) {
  // Fed a line at a time, so that each element knows the line it starts on.
  std::size_t offset = 0;
  do {
    const char* newline =
        size > offset ? static_cast<const char*>(std::memchr(data + offset, '\n', size - offset))
                      : nullptr;
    const std::size_t piece =
        newline ? static_cast<std::size_t>(newline - data) + 1 - offset : size - offset;
    const bool last_piece = !newline || offset + piece == size;
    json::error_code ec;
    const std::size_t used = parser->write_some(more || !last_piece, data + offset, piece, ec);
    if (ec || used != piece) {
      if (!top_error.empty()) throw Error(ErrorCode::kCorrupt, top_error);
      if (ec == json::error::too_deep)
        throw Error(ErrorCode::kTooLarge, "line " + std::to_string(line) +
                                              ": a record nests deeper than " +
                                              std::to_string(limits.max_depth) + " levels");
      if (ec == json::error::incomplete)
        throw Error(ErrorCode::kCorrupt, "the file ends before its JSON array does");
      if (ec) lone_surrogate(std::string_view(data + offset, piece), used, ec);
      const std::size_t bad = bad_utf8_before(std::string_view(data + offset, piece), used + 1);
      if (ec && bad != std::string_view::npos)
        throw Error(ErrorCode::kCorrupt,
                    "line " + std::to_string(line) + " (byte " +
                        std::to_string(consumed + static_cast<std::size_t>(data - buffer.data()) +
                                       offset + bad + 1) +
                        "): not valid JSON: the text is not valid UTF-8");
      throw Error(ErrorCode::kCorrupt, "line " + std::to_string(line) + ": not valid JSON (" +
                                           (ec ? ec.message() : std::string("extra data")) + ")");
    }
    tail.append(data + offset, piece);
    if (tail.size() > kKeptTail) tail.erase(0, tail.size() - kKeptTail);
    if (newline) ++line;
    offset += piece;
  } while (offset < size);
}

void JsonRecordReader::State::lone_surrogate(std::string_view piece, std::size_t used,
                                             json::error_code ec) const {
  // The tail may start inside a UTF-8 sequence, which would read as invalid UTF-8.
  std::size_t from = 0;
  while (from < tail.size() && (static_cast<unsigned char>(tail[from]) & 0xC0) == 0x80) ++from;
  const std::string window = tail.substr(from) + std::string(piece.substr(0, used + kKeptTail));
  const storage::JsonProblem problem =
      storage::describe_json_error(window, tail.size() - from + used, ec, limits.max_depth);
  if (problem.kind != storage::JsonProblem::Kind::kSurrogate) return;
  std::string where;
  if (level >= 2) {
    if (const auto member = members.member_at(1)) where = " in member '" + *member + "'";
    where += " of record " + std::to_string(records + 1);
  }
  throw Error(ErrorCode::kCorrupt,
              "line " + std::to_string(line) + ": not valid JSON: " + problem.what + where);
}

bool JsonRecordReader::State::next_element(JsonRecord& record) {
  while (ready.empty()) {
    if (at_end) return false;
    if (pos == end && !refill()) {
      at_end = true;
      feed("", 0, false);
      if (!parser->done())
        throw Error(ErrorCode::kCorrupt, "the file ends before its JSON array does");
      continue;
    }
    const char* data = buffer.data() + pos;
    const std::size_t size = end - pos;
    if (const void* nul = std::memchr(data, '\0', size))
      nul_byte(static_cast<std::size_t>(static_cast<const char*>(nul) - buffer.data()));
    pos = end;
    feed(data, size, true);
  }
  record = std::move(ready.front());
  ready.pop_front();
  return true;
}

bool JsonRecordReader::State::next_line(JsonRecord& record) {
  for (;;) {
    text.clear();
    bool too_long = false, any = false;
    const std::uint64_t start_line = line;
    for (;;) {
      if (pos == end && !refill()) break;
      any = true;
      const char* data = buffer.data() + pos;
      const std::size_t size = end - pos;
      const char* newline = static_cast<const char*>(std::memchr(data, '\n', size));
      const std::size_t n = newline ? static_cast<std::size_t>(newline - data) : size;
      if (const void* nul = std::memchr(data, '\0', n))
        nul_byte(static_cast<std::size_t>(static_cast<const char*>(nul) - buffer.data()));
      if (text.size() + n > limits.max_record_bytes) {
        too_long = true;
        text.append(data, std::min(n, kKeptText > text.size() ? kKeptText - text.size() : 0));
      } else if (!too_long) {
        text.append(data, n);
      }
      pos += n;
      if (newline) {
        ++pos;
        ++line;
        break;
      }
    }
    if (!any && text.empty()) return false;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (!too_long && text.find_first_not_of(" \t\r") == std::string::npos) {
      if (pos == end && !refill()) return false;
      continue;  // a blank line
    }
    record = JsonRecord();
    record.number = ++records;
    record.line = start_line;
    if (too_long) {
      record.error =
          "the line is longer than " + std::to_string(limits.max_record_bytes) + " bytes";
    } else if (keep_values) {
      const auto problem = storage::read_json(text, limits.max_depth, record.value);
      using Kind = storage::JsonProblem::Kind;
      if (!problem) {
        if (!record.value.is_object())
          record.error =
              std::string("the record is ") + kind_name(record.value) + ", not an object";
      } else if (problem->kind == Kind::kTooDeep) {
        record.error =
            "the record nests deeper than " + std::to_string(limits.max_depth) + " levels";
      } else if (problem->kind == Kind::kDuplicate) {
        record.error = repeated_member(problem->member);
      } else if (problem->kind == Kind::kUtf8) {
        record.error = "not valid JSON: the text is not valid UTF-8 (byte " +
                       std::to_string(problem->offset + 1) + " of the line)";
      } else if (problem->kind == Kind::kSurrogate) {
        record.error = "not valid JSON: " + surrogate(*problem) + " (byte " +
                       std::to_string(problem->offset + 1) + " of the line)";
      } else if (problem->offset >= text.size()) {
        record.error = "not valid JSON: the line ends before its JSON value does";
      } else {
        record.error = "not valid JSON: " + problem->what + " (byte " +
                       std::to_string(problem->offset + 1) + " of the line)";
      }
      if (!record.error.empty()) record.value = nullptr;
    }
    record.text = text.size() > kKeptText ? text.substr(0, kKeptText) : text;
    return true;
  }
}

JsonRecordReader::JsonRecordReader(ByteSource source, Layout layout, const ReadLimits& limits,
                                   bool keep_values)
    : state_(std::make_unique<State>(std::move(source), layout, limits, keep_values)) {
  if (layout == Layout::kArray) {
    json::parse_options options;
    options.max_depth = limits.max_depth + 1;  // the array itself is a level
    state_->parser = std::make_unique<json::basic_parser<ArrayHandler>>(options, state_.get());
  }
}

JsonRecordReader::~JsonRecordReader() = default;

bool JsonRecordReader::next(JsonRecord& record) {
  return state_->layout == Layout::kLines ? state_->next_line(record)
                                          : state_->next_element(record);
}

std::uint64_t JsonRecordReader::bytes_read() const { return state_->consumed + state_->pos; }

}  // namespace lattice::engine
