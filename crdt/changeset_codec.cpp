#include "crdt/changeset_codec.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <msgpack.hpp>
#include <new>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "crdt/detail/msgpack_header.hpp"
#include "crdt/error.hpp"

// The layout is specified in docs/changeset-format.md; this file follows it field by field.
// Decoding is two steps: msgpack::unpack builds an object tree under limits that keep a small
// input from claiming a large allocation, then a single walk converts and validates it. When
// unpack itself fails, a separate scan of the raw bytes finds where, so the message can name
// the byte and the field (that scan runs only on the error path).

namespace lattice::crdt {
namespace {

constexpr std::string_view kMagic = "LATTICE-CS";
constexpr std::size_t kSiteIdBytes = 16;
// Nesting of the deepest container: changeset > rows > row > cells > cell.
constexpr std::size_t kMaxDepth = 5;
// Format 1 has the first 7 top-level fields, format 2 all 8 (the origin).
constexpr std::size_t kTopLevelFields = 8;
constexpr std::size_t kTopLevelFieldsV1 = 7;

// ---------------------------------------------------------------------------------------------
// Encoding

// msgpack's packer writes into any type with write(); appending to a std::string avoids the
// copy out of an sbuffer.
struct StringSink {
  std::string* out;
  void write(const char* data, std::size_t size) { out->append(data, size); }
};

using Packer = msgpack::packer<StringSink>;

// msgpack-cxx's pack_double() writes integral doubles as integers, which would turn a real 1.0
// into an integer on the other side; a real is therefore always written as float 64 here.
void pack_real(StringSink& sink, double d) {
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(d);
  char buf[9];
  buf[0] = static_cast<char>(0xcb);
  for (int i = 0; i < 8; ++i) buf[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
  sink.write(buf, sizeof buf);
}

void pack_bytes_as_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<std::uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void pack_bytes_as_bin(Packer& pk, std::string_view s) {
  pk.pack_bin(static_cast<std::uint32_t>(s.size()));
  pk.pack_bin_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void pack_value(Packer& pk, StringSink& sink, const Value& value) {
  switch (value.index()) {
    case 0:
      pk.pack_nil();
      break;
    case 1:
      pk.pack_int64(std::get<std::int64_t>(value));
      break;
    case 2:
      pack_real(sink, std::get<double>(value));
      break;
    case 3:
      pack_bytes_as_str(pk, std::get<std::string>(value));
      break;
    case 4:
      pack_bytes_as_bin(pk, std::get<Blob>(value).bytes);
      break;
  }
}

void pack_version_vector(Packer& pk, const VersionVector& vv) {
  pk.pack_map(static_cast<std::uint32_t>(vv.entries().size()));
  for (const auto& [site, seq] : vv.entries()) {
    pack_bytes_as_bin(pk, site.as_bytes());
    pk.pack_uint64(seq);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding: error messages

[[noreturn]] void fail(ErrorCode code, const std::string& message) { throw Error(code, message); }

// Where in the changeset a field is: a chain of stack-allocated links, turned into text such as
// "rows[12].cells[0].hlc" only when a message needs it.
struct At {
  const At* parent = nullptr;
  const char* name = nullptr;  // a field name, or nullptr for an element index
  std::size_t index = 0;

  At field(const char* field_name) const { return At{this, field_name, 0}; }
  At element(std::size_t i) const { return At{this, nullptr, i}; }

  std::string to_string() const {
    std::vector<const At*> chain;
    for (const At* a = this; a != nullptr && (a->parent != nullptr); a = a->parent) {
      chain.push_back(a);
    }
    std::string out;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if ((*it)->name != nullptr) {
        if (!out.empty()) out += '.';
        out += (*it)->name;
      } else {
        out += '[' + std::to_string((*it)->index) + ']';
      }
    }
    return out.empty() ? std::string("changeset") : out;
  }
};

using detail::msgpack_type_name;

[[noreturn]] void fail_type(const At& at, const char* expected, const msgpack::object& o) {
  fail(ErrorCode::kCorrupt,
       at.to_string() + ": expected " + expected + ", got " + msgpack_type_name(o));
}

[[noreturn]] void fail_corrupt(const At& at, const std::string& what) {
  fail(ErrorCode::kCorrupt, at.to_string() + ": " + what);
}

// Field names by position, shared by the tree walk and the raw-byte scan.
constexpr const char* kTopFields[] = {"magic", "format_version", "since", "until",
                                      "sites", "tables",         "rows",  "origin"};
constexpr const char* kTableFields[] = {"id", "name", "primary_key_columns", "columns"};
constexpr const char* kColumnFields[] = {"id", "name", "kind", "affinity"};
constexpr const char* kRowFields[] = {"table",           "primary_key", "liveness",
                                      "liveness_values", "cells",       "counters"};
constexpr const char* kStampFields[] = {"causal_length", "hlc", "site", "seq"};
constexpr const char* kLivenessValueFields[] = {"column", "value"};
constexpr const char* kCellFields[] = {"column", "causal_length", "hlc", "site", "seq", "value"};
constexpr const char* kCounterFields[] = {"column", "site", "causal_length", "seq", "total"};

// ---------------------------------------------------------------------------------------------
// Decoding: scalar readers

std::uint64_t read_uint(const msgpack::object& o, const At& at) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) return o.via.u64;
  if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    fail_corrupt(at,
                 "expected unsigned integer, got negative integer " + std::to_string(o.via.i64));
  }
  fail_type(at, "unsigned integer", o);
}

std::uint32_t read_u32(const msgpack::object& o, const At& at) {
  const std::uint64_t v = read_uint(o, at);
  if (v > std::numeric_limits<std::uint32_t>::max()) {
    fail_corrupt(at, std::to_string(v) + " is out of range for a 32-bit unsigned integer");
  }
  return static_cast<std::uint32_t>(v);
}

std::int64_t read_i64(const msgpack::object& o, const At& at) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  if (o.type == msgpack::type::POSITIVE_INTEGER) {
    if (o.via.u64 > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail_corrupt(at, std::to_string(o.via.u64) + " is out of range for a 64-bit signed integer");
    }
    return static_cast<std::int64_t>(o.via.u64);
  }
  fail_type(at, "integer", o);
}

std::string_view read_str(const msgpack::object& o, const At& at) {
  if (o.type != msgpack::type::STR) fail_type(at, "str", o);
  return {o.via.str.ptr, o.via.str.size};
}

std::string_view read_bin(const msgpack::object& o, const At& at) {
  if (o.type != msgpack::type::BIN) fail_type(at, "bin", o);
  return {o.via.bin.ptr, o.via.bin.size};
}

const msgpack::object* read_array(const msgpack::object& o, const At& at) {
  if (o.type != msgpack::type::ARRAY) fail_type(at, "array", o);
  return o.via.array.ptr;
}

const msgpack::object* read_tuple(const msgpack::object& o, std::size_t fields, const At& at) {
  if (o.type != msgpack::type::ARRAY) fail_type(at, "array", o);
  if (o.via.array.size != fields) {
    fail_corrupt(at, "expected an array of " + std::to_string(fields) + " fields, got " +
                         std::to_string(o.via.array.size));
  }
  return o.via.array.ptr;
}

[[noreturn]] void fail_value_size(std::size_t size, std::size_t limit, const At& at) {
  fail(ErrorCode::kTooLarge, at.to_string() + ": a value of " + std::to_string(size) +
                                 " bytes is over the limit of " + std::to_string(limit));
}

Value read_value(const msgpack::object& o, std::size_t max_bytes, const At& at) {
  switch (o.type) {
    case msgpack::type::NIL:
      return std::monostate{};
    case msgpack::type::POSITIVE_INTEGER:
    case msgpack::type::NEGATIVE_INTEGER:
      return read_i64(o, at);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return o.via.f64;
    case msgpack::type::STR:
      if (o.via.str.size > max_bytes) fail_value_size(o.via.str.size, max_bytes, at);
      return std::string(o.via.str.ptr, o.via.str.size);
    case msgpack::type::BIN:
      if (o.via.bin.size > max_bytes) fail_value_size(o.via.bin.size, max_bytes, at);
      return Blob{std::string(o.via.bin.ptr, o.via.bin.size)};
    default:
      fail_type(at, "nil, integer, float, str or bin", o);
  }
}

SiteId read_site_id(const msgpack::object& o, const At& at) {
  const std::string_view bytes = read_bin(o, at);
  if (bytes.size() != kSiteIdBytes) {
    fail_corrupt(at, "site id of " + std::to_string(bytes.size()) + " bytes, expected 16");
  }
  SiteId id;
  std::memcpy(id.bytes.data(), bytes.data(), kSiteIdBytes);
  return id;
}

// ---------------------------------------------------------------------------------------------
// Decoding: the header, read from raw bytes before anything else so that a newer version is
// reported as such even when its body would not parse under this version's rules.

struct RawCursor {
  std::string_view bytes;
  std::size_t pos = 0;

  [[noreturn]] void truncated(const char* where, std::size_t needed) const {
    fail(ErrorCode::kCorrupt, "changeset truncated at byte " + std::to_string(bytes.size()) +
                                  " of at least " + std::to_string(needed) +
                                  ": the input ends inside the " + where);
  }
  std::uint8_t byte(const char* where) {
    if (pos >= bytes.size()) truncated(where, pos + 1);
    return static_cast<std::uint8_t>(bytes[pos++]);
  }
  std::uint64_t big_endian(std::size_t n, const char* where) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | byte(where);
    return v;
  }
};

[[noreturn]] void fail_not_a_changeset(const std::string& why) {
  fail(ErrorCode::kCorrupt, "not a Lattice changeset: " + why);
}

// Returns the format version after checking the frozen prefix: an array whose first two
// elements are the magic string and an unsigned version.
std::uint64_t read_header(std::string_view bytes) {
  RawCursor c{bytes};
  if (bytes.empty()) fail_not_a_changeset("the input is empty");
  const std::uint8_t lead = c.byte("header");
  if ((lead & 0xf0) == 0x90) {
  } else if (lead == 0xdc) {
    c.big_endian(2, "header");
  } else if (lead == 0xdd) {
    c.big_endian(4, "header");
  } else {
    fail_not_a_changeset("it does not start with a msgpack array");
  }
  const std::uint8_t str_lead = c.byte("magic");
  std::uint64_t len = 0;
  if ((str_lead & 0xe0) == 0xa0) {
    len = str_lead & 0x1f;
  } else if (str_lead == 0xd9) {
    len = c.big_endian(1, "magic");
  } else {
    fail_not_a_changeset("its first field is not the string \"LATTICE-CS\"");
  }
  if (len != kMagic.size()) fail_not_a_changeset("its first field is not \"LATTICE-CS\"");
  if (bytes.size() - c.pos < len) c.truncated("magic", c.pos + len);
  if (bytes.substr(c.pos, len) != kMagic) {
    fail_not_a_changeset("its first field is not \"LATTICE-CS\"");
  }
  c.pos += len;
  const std::uint8_t v = c.byte("format_version");
  std::uint64_t version = 0;
  if (v <= 0x7f) {
    version = v;
  } else if (v >= 0xcc && v <= 0xcf) {
    version = c.big_endian(std::size_t{1} << (v - 0xcc), "format_version");
  } else {
    fail(ErrorCode::kCorrupt, "format_version: expected unsigned integer");
  }
  if (version > Changeset::kFormatVersion) {
    fail(ErrorCode::kUnsupportedVersion,
         "changeset format version " + std::to_string(version) +
             " is newer than this build, which reads versions up to " +
             std::to_string(Changeset::kFormatVersion));
  }
  if (version == 0) fail(ErrorCode::kCorrupt, "format_version: 0 is not a valid version");
  return version;
}

// ---------------------------------------------------------------------------------------------
// Decoding: a raw scan that explains why msgpack::unpack refused the bytes. It mirrors the
// limits given to unpack and reports the first problem with its byte offset and field path.

std::string describe_position(const std::vector<std::size_t>& path) {
  // path[k] is the element index in the container at nesting level k+1.
  std::string out;
  auto add_field = [&](const char* name) {
    if (!out.empty()) out += '.';
    out += name;
  };
  auto add_index = [&](std::size_t i) { out += '[' + std::to_string(i) + ']'; };
  const std::size_t n = path.size();
  if (n == 0) return "changeset";
  const std::size_t top = path[0];
  if (top >= kTopLevelFields) return "changeset element " + std::to_string(top);
  add_field(kTopFields[top]);
  if (n < 2) return out;
  if (top == 2 || top == 3) {  // since, until: maps, index counts keys and values
    out += " entry " + std::to_string(path[1] / 2);
    return out;
  }
  add_index(path[1]);
  if (n < 3 || top < 5) return out;
  const std::size_t f = path[2];
  if (top == 5) {
    if (f >= 4) return out;
    add_field(kTableFields[f]);
    if (n >= 4 && f == 3) {
      add_index(path[3]);
      if (n >= 5 && path[4] < 4) add_field(kColumnFields[path[4]]);
    }
    return out;
  }
  if (f >= 6) return out;
  add_field(kRowFields[f]);
  if (n < 4) return out;
  if (f == 2) {
    if (path[3] < 4) add_field(kStampFields[path[3]]);
    return out;
  }
  if (f < 3) return out;
  add_index(path[3]);
  if (n < 5) return out;
  const std::size_t g = path[4];
  if (f == 3 && g < 2) add_field(kLivenessValueFields[g]);
  if (f == 4 && g < 6) add_field(kCellFields[g]);
  if (f == 5 && g < 5) add_field(kCounterFields[g]);
  return out;
}

[[noreturn]] void explain_unpack_failure(std::string_view b, const msgpack::unpack_limit& limit,
                                         const char* msgpack_what) {
  struct Frame {
    std::uint64_t remaining;  // items left, map entries counting twice
    std::size_t index;
  };
  std::vector<Frame> stack;
  std::vector<std::size_t> path;
  auto where = [&] {
    path.clear();
    for (const Frame& f : stack) path.push_back(f.index);
    return describe_position(path);
  };
  const std::size_t n = b.size();
  auto truncated = [&](std::size_t needed) {
    // `needed` is known when a length was read; otherwise only that something is missing.
    fail(ErrorCode::kCorrupt, "changeset truncated at byte " + std::to_string(n) +
                                  (needed > n ? " of " + std::to_string(needed) : "") +
                                  ": the input ends inside " + where());
  };
  std::size_t pos = 0;
  while (true) {
    if (pos >= n) truncated(0);
    const std::size_t start = pos;
    const std::uint8_t t = static_cast<std::uint8_t>(b[pos]);
    const crdt::detail::MsgpackHeader header =
        crdt::detail::read_msgpack_header(b, pos, [&](std::size_t needed) { truncated(needed); });
    using enum crdt::detail::MsgpackHeader::Kind;
    const auto kind = header.kind;
    const std::uint64_t payload = header.payload, items = header.items;
    if (kind == kInvalid) {
      fail(ErrorCode::kCorrupt, "changeset has the invalid msgpack byte 0x" +
                                    std::string(1, "0123456789abcdef"[t >> 4]) +
                                    std::string(1, "0123456789abcdef"[t & 15]) + " at byte " +
                                    std::to_string(start) + " (in " + where() + ")");
    }
    if ((kind == kStr || kind == kBin) && n - pos < payload) truncated(pos + payload);
    if (kind == kStr && payload > limit.str()) {
      fail(ErrorCode::kTooLarge, where() + ": a str of " + std::to_string(payload) +
                                     " bytes at byte " + std::to_string(start) +
                                     " is over the limit of " + std::to_string(limit.str()));
    }
    if (kind == kBin && payload > limit.bin()) {
      fail(ErrorCode::kTooLarge, where() + ": a bin of " + std::to_string(payload) +
                                     " bytes at byte " + std::to_string(start) +
                                     " is over the limit of " + std::to_string(limit.bin()));
    }
    if (kind == kExt) {
      fail(ErrorCode::kCorrupt, where() + ": msgpack ext values (byte " + std::to_string(start) +
                                    ") are not part of the changeset format");
    }
    if (kind == kArray || kind == kMap) {
      const std::size_t max = kind == kArray ? limit.array() : limit.map();
      if (items > max) {
        fail(ErrorCode::kCorrupt, where() + ": the " + (kind == kArray ? "array" : "map") +
                                      " at byte " + std::to_string(start) + " claims " +
                                      std::to_string(items) + " elements, more than the " +
                                      std::to_string(n) + "-byte input can hold");
      }
      if (stack.size() + 1 > limit.depth()) {
        fail(ErrorCode::kCorrupt, where() + ": containers nested deeper than " +
                                      std::to_string(limit.depth()) + " levels at byte " +
                                      std::to_string(start));
      }
      if (items > 0) {
        stack.push_back({kind == kMap ? items * 2 : items, 0});
        continue;
      }
    } else {
      if (n - pos < payload) truncated(pos + payload);
      pos += payload;
    }
    while (!stack.empty()) {
      Frame& f = stack.back();
      ++f.index;
      if (--f.remaining > 0) break;
      stack.pop_back();
    }
    if (stack.empty()) break;
  }
  // The scan found nothing msgpack would object to; report what msgpack said.
  fail(ErrorCode::kCorrupt, std::string("changeset does not decode: ") + msgpack_what);
}

// ---------------------------------------------------------------------------------------------
// Decoding: the catalog index used to check each row's references

struct ColumnSlot {
  ColumnId id;
  std::uint32_t position;
  ColumnKind kind;
};

struct TableIndex {
  TableId id = 0;
  std::uint32_t position = 0;
  std::vector<ColumnSlot> by_id;    // sorted by id
  std::vector<std::int32_t> dense;  // id -> index in by_id, when ids are small
  std::vector<std::uint32_t> seen;  // per by_id entry: the row generation that last used it

  const ColumnSlot* find(ColumnId id) const {
    if (!dense.empty()) {
      if (id >= dense.size() || dense[id] < 0) return nullptr;
      return &by_id[static_cast<std::size_t>(dense[id])];
    }
    auto it = std::lower_bound(by_id.begin(), by_id.end(), id,
                               [](const ColumnSlot& s, ColumnId v) { return s.id < v; });
    if (it == by_id.end() || it->id != id) return nullptr;
    return &*it;
  }
};

// Strings and blobs point into the caller's bytes instead of being copied into the zone: the
// bytes outlive the object tree, which lives only inside decode_changeset.
bool reference_input(msgpack::type::object_type, std::size_t, void*) { return true; }

class Decoder {
 public:
  Decoder(const DecodeLimits& limits) : limits_(limits) {}

  // The two vectors of a changeset whose header read_header() has checked: the top level's
  // elements 2 and 3, each unpacked on its own, the rest left unread.
  ChangesetVectors peek(std::string_view bytes, const msgpack::unpack_limit& limit) {
    std::size_t offset = (static_cast<std::uint8_t>(bytes[0]) & 0xf0) == 0x90 ? 1
                         : static_cast<std::uint8_t>(bytes[0]) == 0xdc        ? 3
                                                                              : 5;
    ChangesetVectors out;
    for (int field = 0; field <= 3; ++field) {  // 0 is the magic, checked by read_header()
      msgpack::object_handle handle;
      msgpack::unpack(handle, bytes.data(), bytes.size(), offset, reference_input, nullptr, limit);
      const At at;
      if (field == 1) out.format_version = read_uint(handle.get(), at.field("format_version"));
      if (field == 2) out.since = read_version_vector(handle.get(), at.field("since"));
      if (field == 3) out.until = read_version_vector(handle.get(), at.field("until"));
    }
    return out;
  }

  Changeset decode(const msgpack::object& root) {
    const At at;
    const msgpack::object* top = read_array(root, at);
    Changeset cs;
    if (root.via.array.size < 2 || read_str(top[0], at.field("magic")) != kMagic) {
      fail_not_a_changeset("its first field is not \"LATTICE-CS\"");
    }
    cs.format_version = static_cast<std::uint32_t>(read_uint(top[1], at.field("format_version")));
    version_ = cs.format_version;
    const std::size_t fields = version_ >= 2 ? kTopLevelFields : kTopLevelFieldsV1;
    if (root.via.array.size != fields) {
      fail(ErrorCode::kCorrupt, "changeset: expected a top-level array of " +
                                    std::to_string(fields) + " fields, got " +
                                    std::to_string(root.via.array.size) +
                                    " (fields may not be added within a format version)");
    }
    cs.since = read_version_vector(top[2], at.field("since"));
    cs.until = read_version_vector(top[3], at.field("until"));
    cs.sites = read_sites(top[4], at.field("sites"));
    cs.tables = read_tables(top[5], at.field("tables"));
    read_rows(top[6], at.field("rows"), cs);
    if (version_ >= 2) cs.origin = read_origin(top[7], at.field("origin"));
    return cs;
  }

 private:
  void check_site_count(std::size_t count, const At& at) const {
    if (count > limits_.max_sites) {
      fail(ErrorCode::kTooLarge, at.to_string() + ": " + std::to_string(count) +
                                     " sites, over the limit of " +
                                     std::to_string(limits_.max_sites));
    }
  }

  VersionVector read_version_vector(const msgpack::object& o, const At& at) {
    if (o.type != msgpack::type::MAP) fail_type(at, "map", o);
    check_site_count(o.via.map.size, at);
    VersionVector vv;
    for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
      const msgpack::object_kv& kv = o.via.map.ptr[i];
      const At entry = at.element(i);
      const SiteId site = read_site_id(kv.key, entry.field("site"));
      const std::uint64_t seq = read_uint(kv.val, entry.field("seq"));
      if (seq == 0) {
        fail_corrupt(entry.field("seq"),
                     "0 is not allowed (a site absent from the map counts as 0)");
      }
      if (vv.get(site) != 0) fail_corrupt(entry.field("site"), "duplicate site " + site.to_hex());
      vv.advance(site, seq);
    }
    return vv;
  }

  std::optional<Origin> read_origin(const msgpack::object& o, const At& at) {
    if (o.type == msgpack::type::NIL) return std::nullopt;
    const msgpack::object* f = read_tuple(o, 2, at);
    Origin origin;
    origin.site = read_site_id(f[0], at.field("site"));
    const At log_at = at.field("log");
    const msgpack::object* entries = read_array(f[1], log_at);
    const std::uint32_t count = f[1].via.array.size;
    if (count > Origin::kMaxLog)
      fail_corrupt(log_at, std::to_string(count) + " entries, over the " +
                               std::to_string(Origin::kMaxLog) + " an origin carries");
    for (std::uint32_t i = 0; i < count; ++i) {
      const msgpack::object* pair = read_tuple(entries[i], 2, log_at.element(i));
      TxnTag txn{read_uint(pair[0], log_at.element(i).field("seq")),
                 read_uint(pair[1], log_at.element(i).field("tag"))};
      if (!origin.log.empty() && txn.seq <= origin.log.back().seq)
        fail_corrupt(log_at.element(i), "sequence numbers must ascend");
      origin.log.push_back(txn);
    }
    return origin;
  }

  std::vector<SiteId> read_sites(const msgpack::object& o, const At& at) {
    const msgpack::object* items = read_array(o, at);
    const std::uint32_t count = o.via.array.size;
    check_site_count(count, at);
    std::vector<SiteId> sites;
    sites.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i)
      sites.push_back(read_site_id(items[i], at.element(i)));
    std::vector<std::uint32_t> order(count);
    for (std::uint32_t i = 0; i < count; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return std::tie(sites[a], a) < std::tie(sites[b], b);
    });
    for (std::uint32_t i = 1; i < count; ++i) {
      if (sites[order[i]] == sites[order[i - 1]]) {
        fail_corrupt(at.element(order[i]), "duplicate of sites[" + std::to_string(order[i - 1]) +
                                               "] (" + sites[order[i]].to_hex() + ")");
      }
    }
    return sites;
  }

  std::vector<TableSchema> read_tables(const msgpack::object& o, const At& at) {
    const msgpack::object* items = read_array(o, at);
    const std::uint32_t count = o.via.array.size;
    std::vector<TableSchema> tables(count);
    tables_.resize(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      const At t_at = at.element(i);
      const msgpack::object* f = read_tuple(items[i], 4, t_at);
      TableSchema& table = tables[i];
      table.id = read_u32(f[0], t_at.field("id"));
      table.name = std::string(read_str(f[1], t_at.field("name")));
      table.primary_key_columns = read_u32(f[2], t_at.field("primary_key_columns"));
      const At cols_at = t_at.field("columns");
      const msgpack::object* cols = read_array(f[3], cols_at);
      const std::uint32_t col_count = f[3].via.array.size;
      if (table.primary_key_columns > col_count) {
        fail_corrupt(t_at.field("primary_key_columns"), std::to_string(table.primary_key_columns) +
                                                            " key columns but the table has " +
                                                            std::to_string(col_count) + " columns");
      }
      table.columns.resize(col_count);
      TableIndex& index = tables_[i];
      index.id = table.id;
      index.position = i;
      index.by_id.reserve(col_count);
      for (std::uint32_t j = 0; j < col_count; ++j) {
        const At c_at = cols_at.element(j);
        // Format 1 wrote [id, name, kind]; format 2 adds the affinity.
        const msgpack::object* cf = read_tuple(cols[j], version_ >= 2 ? 4 : 3, c_at);
        ColumnSchema& col = table.columns[j];
        col.id = read_u32(cf[0], c_at.field("id"));
        col.name = std::string(read_str(cf[1], c_at.field("name")));
        const std::uint64_t kind = read_uint(cf[2], c_at.field("kind"));
        if (kind > 1) {
          fail_corrupt(c_at.field("kind"),
                       "unknown column kind " + std::to_string(kind) + " (0 is lww, 1 is counter)");
        }
        col.kind = static_cast<ColumnKind>(kind);
        col.affinity.reset();
        if (version_ >= 2) {
          const std::uint64_t affinity = read_uint(cf[3], c_at.field("affinity"));
          if (affinity > 4) {
            fail_corrupt(c_at.field("affinity"),
                         "unknown affinity " + std::to_string(affinity) +
                             " (0 none, 1 text, 2 numeric, 3 integer, 4 real)");
          }
          col.affinity = static_cast<Affinity>(affinity);
        }
        index.by_id.push_back({col.id, j, col.kind});
      }
      std::sort(index.by_id.begin(), index.by_id.end(),
                [](const ColumnSlot& a, const ColumnSlot& b) {
                  return std::tie(a.id, a.position) < std::tie(b.id, b.position);
                });
      for (std::size_t j = 1; j < index.by_id.size(); ++j) {
        if (index.by_id[j].id == index.by_id[j - 1].id) {
          fail_corrupt(cols_at.element(index.by_id[j].position).field("id"),
                       "duplicate column id " + std::to_string(index.by_id[j].id));
        }
      }
      if (!index.by_id.empty() && index.by_id.back().id < 4 * index.by_id.size() + 64) {
        index.dense.assign(index.by_id.back().id + 1, -1);
        for (std::size_t j = 0; j < index.by_id.size(); ++j) {
          index.dense[index.by_id[j].id] = static_cast<std::int32_t>(j);
        }
      }
      index.seen.assign(index.by_id.size(), 0);
    }
    std::sort(tables_.begin(), tables_.end(),
              [](const TableIndex& a, const TableIndex& b) { return a.id < b.id; });
    for (std::size_t i = 1; i < tables_.size(); ++i) {
      if (tables_[i].id == tables_[i - 1].id) {
        fail_corrupt(at.element(std::max(tables_[i].position, tables_[i - 1].position)).field("id"),
                     "duplicate table id " + std::to_string(tables_[i].id));
      }
    }
    return tables;
  }

  TableIndex* find_table(TableId id) {
    if (last_table_ != nullptr && last_table_->id == id) return last_table_;
    auto it = std::lower_bound(tables_.begin(), tables_.end(), id,
                               [](const TableIndex& t, TableId v) { return t.id < v; });
    if (it == tables_.end() || it->id != id) return nullptr;
    last_table_ = &*it;
    return last_table_;
  }

  std::uint32_t read_site_index(const msgpack::object& o, const At& at) const {
    const std::uint32_t site = read_u32(o, at);
    if (site >= site_count_) {
      fail_corrupt(at, "site index " + std::to_string(site) +
                           " is out of range (the changeset has " + std::to_string(site_count_) +
                           " sites)");
    }
    return site;
  }

  static void check_odd(std::uint64_t causal_length, const At& at) {
    if (causal_length % 2 == 0) {
      fail_corrupt(at, "even causal length " + std::to_string(causal_length) +
                           " (a write belongs to a live incarnation, which is odd)");
    }
  }

  // Finds `column` in `table` and checks its kind and that this row has not named it already.
  const ColumnSlot& use_column(TableIndex& table, ColumnId column, ColumnKind kind, const At& at) {
    const ColumnSlot* slot = table.find(column);
    if (slot == nullptr) {
      fail_corrupt(at, "column id " + std::to_string(column) + " is not a column of table " +
                           std::to_string(table.id));
    }
    if (slot->kind != kind) {
      fail_corrupt(at, "column " + std::to_string(column) + " of table " +
                           std::to_string(table.id) + " is a " + column_kind_name(slot->kind) +
                           " column, not a " + column_kind_name(kind) + " column");
    }
    if (kind == ColumnKind::kLww) {
      std::uint32_t& seen = table.seen[static_cast<std::size_t>(slot - table.by_id.data())];
      if (seen == generation_) {
        fail_corrupt(at, "column " + std::to_string(column) + " appears twice in the row");
      }
      seen = generation_;
    }
    return *slot;
  }

  ChangeStamp read_stamp(const msgpack::object* f, const At& at) const {
    ChangeStamp s;
    s.causal_length = read_uint(f[0], at.field("causal_length"));
    s.hlc.value = read_uint(f[1], at.field("hlc"));
    s.site = read_site_index(f[2], at.field("site"));
    s.seq = read_uint(f[3], at.field("seq"));
    return s;
  }

  void read_rows(const msgpack::object& o, const At& at, Changeset& cs) {
    const msgpack::object* items = read_array(o, at);
    const std::uint32_t count = o.via.array.size;
    if (count > limits_.max_rows) {
      fail(ErrorCode::kTooLarge, "rows: " + std::to_string(count) + " rows, over the limit of " +
                                     std::to_string(limits_.max_rows));
    }
    site_count_ = cs.sites.size();
    cs.rows.resize(count);
    std::vector<std::pair<ColumnId, std::uint32_t>> counter_keys;
    for (std::uint32_t i = 0; i < count; ++i) {
      const At r_at = at.element(i);
      const msgpack::object* f = read_tuple(items[i], 6, r_at);
      RowChange& row = cs.rows[i];
      // A fresh generation per row marks columns as unseen; on wrap-around, clear the marks.
      if (++generation_ == 0) {
        for (TableIndex& t : tables_) std::fill(t.seen.begin(), t.seen.end(), 0);
        generation_ = 1;
      }

      row.table = read_u32(f[0], r_at.field("table"));
      TableIndex* table = find_table(row.table);
      if (table == nullptr) {
        fail_corrupt(r_at.field("table"),
                     "table id " + std::to_string(row.table) + " is not in the changeset's tables");
      }
      const std::string_view pk = read_bin(f[1], r_at.field("primary_key"));
      if (pk.empty()) fail_corrupt(r_at.field("primary_key"), "empty primary key");
      row.primary_key.assign(pk.data(), pk.size());

      const At l_at = r_at.field("liveness");
      if (f[2].type != msgpack::type::NIL) {
        if (f[2].type != msgpack::type::ARRAY) fail_type(l_at, "nil or array", f[2]);
        row.liveness = read_stamp(read_tuple(f[2], 4, l_at), l_at);
        if (row.liveness->causal_length == 0) {
          fail_corrupt(l_at.field("causal_length"), "0 is not the length of any liveness event");
        }
      }

      const At lv_at = r_at.field("liveness_values");
      const msgpack::object* lv = read_array(f[3], lv_at);
      const std::uint32_t lv_count = f[3].via.array.size;
      if (lv_count > 0) {
        if (!row.liveness) fail_corrupt(lv_at, "values without a liveness event");
        if (row.liveness->causal_length % 2 == 0) {
          fail_corrupt(lv_at, "values with the even liveness causal length " +
                                  std::to_string(row.liveness->causal_length) +
                                  " (a deleted row carries none)");
        }
      }
      row.liveness_values.resize(lv_count);
      for (std::uint32_t j = 0; j < lv_count; ++j) {
        const At e_at = lv_at.element(j);
        const msgpack::object* ef = read_tuple(lv[j], 2, e_at);
        auto& [column, value] = row.liveness_values[j];
        column = read_u32(ef[0], e_at.field("column"));
        use_column(*table, column, ColumnKind::kLww, e_at.field("column"));
        value = read_value(ef[1], limits_.max_value_bytes, e_at.field("value"));
      }

      const At c_at = r_at.field("cells");
      const msgpack::object* cells = read_array(f[4], c_at);
      const std::uint32_t cell_count = f[4].via.array.size;
      row.cells.resize(cell_count);
      for (std::uint32_t j = 0; j < cell_count; ++j) {
        const At e_at = c_at.element(j);
        const msgpack::object* ef = read_tuple(cells[j], 6, e_at);
        CellChange& cell = row.cells[j];
        cell.column = read_u32(ef[0], e_at.field("column"));
        use_column(*table, cell.column, ColumnKind::kLww, e_at.field("column"));
        cell.stamp = read_stamp(ef + 1, e_at);
        check_odd(cell.stamp.causal_length, e_at.field("causal_length"));
        cell.value = read_value(ef[5], limits_.max_value_bytes, e_at.field("value"));
      }

      const At k_at = r_at.field("counters");
      const msgpack::object* counters = read_array(f[5], k_at);
      const std::uint32_t counter_count = f[5].via.array.size;
      row.counters.resize(counter_count);
      for (std::uint32_t j = 0; j < counter_count; ++j) {
        const At e_at = k_at.element(j);
        const msgpack::object* ef = read_tuple(counters[j], 5, e_at);
        CounterChange& change = row.counters[j];
        change.column = read_u32(ef[0], e_at.field("column"));
        use_column(*table, change.column, ColumnKind::kCounter, e_at.field("column"));
        change.site = read_site_index(ef[1], e_at.field("site"));
        change.part.causal_length = read_uint(ef[2], e_at.field("causal_length"));
        check_odd(change.part.causal_length, e_at.field("causal_length"));
        change.part.seq = read_uint(ef[3], e_at.field("seq"));
        change.part.total = read_i64(ef[4], e_at.field("total"));
      }
      if (counter_count > 1) check_counter_duplicates(row, k_at, counter_keys);
    }
  }

  static void check_counter_duplicates(const RowChange& row, const At& at,
                                       std::vector<std::pair<ColumnId, std::uint32_t>>& keys) {
    keys.clear();
    for (const CounterChange& c : row.counters) keys.emplace_back(c.column, c.site);
    std::sort(keys.begin(), keys.end());
    auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup == keys.end()) return;
    for (std::size_t j = row.counters.size(); j-- > 0;) {
      if (row.counters[j].column == dup->first && row.counters[j].site == dup->second) {
        fail_corrupt(at.element(j), "a second component of column " + std::to_string(dup->first) +
                                        " for site index " + std::to_string(dup->second));
      }
    }
  }

  const DecodeLimits& limits_;
  std::uint64_t version_ = Changeset::kFormatVersion;  // of the changeset being read
  std::vector<TableIndex> tables_;                     // sorted by id
  TableIndex* last_table_ = nullptr;
  std::size_t site_count_ = 0;
  std::uint32_t generation_ = 0;
};

}  // namespace

std::string encode_changeset(const Changeset& changeset) {
  std::string out;
  // A rough guess that saves most reallocations for typical rows.
  out.reserve(64 + changeset.sites.size() * 18 + changeset.rows.size() * 48);
  StringSink sink{&out};
  Packer pk(sink);
  pk.pack_array(kTopLevelFields);
  pack_bytes_as_str(pk, kMagic);
  pk.pack_uint32(Changeset::kFormatVersion);
  pack_version_vector(pk, changeset.since);
  pack_version_vector(pk, changeset.until);
  pk.pack_array(static_cast<std::uint32_t>(changeset.sites.size()));
  for (const SiteId& site : changeset.sites) pack_bytes_as_bin(pk, site.as_bytes());
  pk.pack_array(static_cast<std::uint32_t>(changeset.tables.size()));
  for (const TableSchema& table : changeset.tables) {
    pk.pack_array(4);
    pk.pack_uint32(table.id);
    pack_bytes_as_str(pk, table.name);
    pk.pack_uint32(table.primary_key_columns);
    pk.pack_array(static_cast<std::uint32_t>(table.columns.size()));
    for (const ColumnSchema& col : table.columns) {
      pk.pack_array(4);
      pk.pack_uint32(col.id);
      pack_bytes_as_str(pk, col.name);
      pk.pack_uint8(static_cast<std::uint8_t>(col.kind));
      pk.pack_uint8(static_cast<std::uint8_t>(col.affinity.value_or(Affinity::kBlob)));
    }
  }
  pk.pack_array(static_cast<std::uint32_t>(changeset.rows.size()));
  for (const RowChange& row : changeset.rows) {
    pk.pack_array(6);
    pk.pack_uint32(row.table);
    pack_bytes_as_bin(pk, row.primary_key);
    if (row.liveness) {
      pk.pack_array(4);
      pk.pack_uint64(row.liveness->causal_length);
      pk.pack_uint64(row.liveness->hlc.value);
      pk.pack_uint32(row.liveness->site);
      pk.pack_uint64(row.liveness->seq);
    } else {
      pk.pack_nil();
    }
    pk.pack_array(static_cast<std::uint32_t>(row.liveness_values.size()));
    for (const auto& [column, value] : row.liveness_values) {
      pk.pack_array(2);
      pk.pack_uint32(column);
      pack_value(pk, sink, value);
    }
    pk.pack_array(static_cast<std::uint32_t>(row.cells.size()));
    for (const CellChange& cell : row.cells) {
      pk.pack_array(6);
      pk.pack_uint32(cell.column);
      pk.pack_uint64(cell.stamp.causal_length);
      pk.pack_uint64(cell.stamp.hlc.value);
      pk.pack_uint32(cell.stamp.site);
      pk.pack_uint64(cell.stamp.seq);
      pack_value(pk, sink, cell.value);
    }
    pk.pack_array(static_cast<std::uint32_t>(row.counters.size()));
    for (const CounterChange& counter : row.counters) {
      pk.pack_array(5);
      pk.pack_uint32(counter.column);
      pk.pack_uint32(counter.site);
      pk.pack_uint64(counter.part.causal_length);
      pk.pack_uint64(counter.part.seq);
      pk.pack_int64(counter.part.total);
    }
  }
  if (changeset.origin) {
    pk.pack_array(2);
    pack_bytes_as_bin(pk, changeset.origin->site.as_bytes());
    pk.pack_array(static_cast<std::uint32_t>(changeset.origin->log.size()));
    for (const TxnTag& txn : changeset.origin->log) {
      pk.pack_array(2);
      pk.pack_uint64(txn.seq);
      pk.pack_uint64(txn.tag);
    }
  } else {
    pk.pack_nil();
  }
  return out;
}

ChangesetVectors peek_changeset_vectors(std::string_view bytes, const DecodeLimits& limits) {
  read_header(bytes);
  const std::size_t n = bytes.size();
  const msgpack::unpack_limit limit(/*array=*/n, /*map=*/n / 2,
                                    /*str=*/std::max(limits.max_value_bytes, kMagic.size()),
                                    /*bin=*/kSiteIdBytes, /*ext=*/0, /*depth=*/2);
  try {
    return Decoder(limits).peek(bytes, limit);
  } catch (const msgpack::unpack_error& e) {
    fail(ErrorCode::kCorrupt, std::string("changeset header does not decode: ") + e.what());
  }
}

Changeset decode_changeset(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.max_bytes) {
    fail(ErrorCode::kTooLarge, "changeset of " + std::to_string(bytes.size()) +
                                   " bytes is over the limit of " +
                                   std::to_string(limits.max_bytes) + " bytes");
  }
  read_header(bytes);

  // Every array element and map key or value takes at least one byte, so no honest container
  // claims more elements than the input has bytes; the limits refuse any claim beyond that
  // before msgpack allocates room for it.
  const std::size_t n = bytes.size();
  const msgpack::unpack_limit limit(
      /*array=*/n, /*map=*/n / 2,
      /*str=*/std::max(limits.max_value_bytes, kMagic.size()),
      /*bin=*/std::max(limits.max_value_bytes, kSiteIdBytes), /*ext=*/0, /*depth=*/kMaxDepth);

  msgpack::object_handle handle;
  std::size_t offset = 0;
  try {
    msgpack::unpack(handle, bytes.data(), n, offset, reference_input, nullptr, limit);
  } catch (const msgpack::unpack_error& e) {
    explain_unpack_failure(bytes, limit, e.what());
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::kTooLarge, "changeset of " + std::to_string(n) +
                                   " bytes needs more memory than is available to decode");
  }
  if (offset != n) {
    fail(ErrorCode::kCorrupt, "changeset has " + std::to_string(n - offset) +
                                  " trailing bytes after its end at byte " +
                                  std::to_string(offset));
  }
  return Decoder(limits).decode(handle.get());
}

}  // namespace lattice::crdt
