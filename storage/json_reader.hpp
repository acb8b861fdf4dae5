#pragma once
// Reading JSON text strictly, with Boost.JSON: the one JSON reader of storage, relay and engine
// (column types of lattice_replicate, the relay's token header and payload, import files and
// mappings). Writing JSON strings is crdt/json.hpp's. Boost.JSON itself is compiled once, in
// storage/detail/boost_json.cpp: link lattice::boost_json, which holds both.
//
// Strict means RFC 8259 and nothing else, and it refuses what Boost.JSON 1.81 alone lets
// through: a member name given twice in one object (its parser keeps the last silently).
// Every refusal says what was wrong and the byte at which reading stopped.

#include <boost/json/error.hpp>
#include <boost/json/value.hpp>
#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace lattice::storage {

// Why a JSON text was refused.
struct JsonProblem {
  enum class Kind {
    kSyntax,     // anything else: a character where the grammar allows none, a cut-off text
    kTrailing,   // bytes after the value
    kUtf8,       // bytes that are not UTF-8
    kControl,    // a control character (U+0000..U+001F) not escaped in a string
    kSurrogate,  // a \u escape of a lone UTF-16 surrogate (half of a pair without the other)
    kDuplicate,  // a member name given twice in one object
    kTooDeep,    // nesting deeper than the limit
  };
  Kind kind = Kind::kSyntax;
  // A phrase, without the offset or the member, e.g. `duplicate member "a"`, `lone UTF-16
  // surrogate \ud800 (a high surrogate not followed by a low one)`, `unexpected character '}'`.
  std::string what;
  std::size_t offset = 0;  // the byte, from 0, at which reading stopped (kDuplicate: the name)
  // kDuplicate: the repeated name. kSurrogate: the top-level member whose value held it (empty
  // when it was in a member name, or outside any object).
  std::string member;
};

// Reads `text`, exactly one JSON value with optional whitespace around it, into `out`, and
// returns nullopt; else returns the problem and leaves `out` null. Refuses: bad syntax, bytes
// after the value, invalid UTF-8, unescaped control characters, lone UTF-16 surrogates in \u
// escapes, a member name twice in one object, nesting deeper than `max_depth` objects and
// arrays (the outermost counts as one).
std::optional<JsonProblem> read_json(std::string_view text, std::size_t max_depth,
                                     boost::json::value& out);

// The same, throwing Error(kInvalidArgument) "JSON: <what> at byte N of M" for a problem (a
// surrogate's with `in member "<member>"` after <what>).
boost::json::value read_json(std::string_view text, std::size_t max_depth);

// --- For readers that drive a boost::json::basic_parser of their own -------------------------
// (engine/import_export/json_records.cpp streams an array file element by element.)

// The member names of the objects a basic_parser is inside, fed from its handler's events:
// finds a name given twice in one object, and names the member being read.
class JsonMembers {
 public:
  void open(bool object);  // an object or an array begins
  void close();            // it ends (which ends a value, too)
  void key_part(std::string_view part);
  // A member name ends (`last` is its last part); false when its object already has a member
  // of that name, which repeated() then returns.
  bool key(std::string_view last);
  void value();  // a string, number, boolean or null ends

  std::size_t depth() const { return levels_.size(); }
  const std::string& repeated() const { return repeated_; }
  // The member of the object at `level` (0: the outermost open value) whose value is being
  // read; nullopt when that level is an array or a member name is being read.
  std::optional<std::string> member_at(std::size_t level) const;

 private:
  struct Level {
    bool object = false;
    bool in_value = false;  // between a member name and the end of its value
    std::string key;
    std::set<std::string, std::less<>> names;
  };
  std::vector<Level> levels_;
  std::string pending_;  // the parts of the member name being read
  std::string repeated_;
};

// Describes why a basic_parser stopped with `ec` at byte `at` of `text` (the bytes it was
// given): the problem's kind, phrase and offset (invalid UTF-8 is named where it starts).
// `max_depth` is the parser's limit, for the phrase of kTooDeep.
JsonProblem describe_json_error(std::string_view text, std::size_t at, boost::json::error_code ec,
                                std::size_t max_depth);

// The offset of the first byte of `text` that is not part of valid UTF-8 (RFC 3629: no overlong
// forms, no surrogates, nothing past U+10FFFF), or npos.
std::size_t invalid_utf8_at(std::string_view text);

}  // namespace lattice::storage
