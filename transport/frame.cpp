#include "transport/frame.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <msgpack.hpp>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "crdt/detail/msgpack_header.hpp"
#include "crdt/error.hpp"
#include "transport/claims.hpp"

// The layout is specified in docs/protocol.md; this file follows it field by field. Decoding is
// three steps, as in crdt/changeset_codec.cpp: the frame header (array size and frame type) is
// read from the raw bytes, so that an unknown type or a wrong element count is named as such;
// msgpack::unpack then builds an object tree under limits that keep a small input from claiming
// a large allocation; a walk converts and validates it. When unpack fails, a scan of the raw
// bytes finds where, so the message can name the byte and the field.

namespace lattice::transport {
namespace {

using crdt::SiteId;
using crdt::VersionVector;

constexpr std::size_t kSiteIdBytes = 16;
// Nesting of the deepest container: frame > held.
constexpr std::size_t kMaxDepth = 2;
// Elements of the longest frame (hello: the type and eight fields). No frame holds an array
// below the top level, so no array anywhere may be longer.
constexpr std::size_t kMaxElements = 10;
// A transaction log (hello.own_log, changes.origin_log) is a bin of big-endian (seq, tag) pairs.
constexpr std::size_t kTxnTagBytes = 16;
// The smallest valid version vector entry: a 16-byte bin (2 header bytes) and a 1-byte uint.
constexpr std::size_t kMinEntryBytes = 2 + kSiteIdBytes + 1;

// Frame types by variant index: type number = index + 1.
struct Layout {
  const char* name;
  std::size_t elements;                          // including the type
  std::size_t min_elements;                      // fewer: an older protocol's frame
  std::array<const char*, kMaxElements> fields;  // by position; [0] is the type
  std::size_t vector_field;                      // position of a version vector, 0 if none
};

constexpr Layout kLayouts[] = {
    {"hello",
     10,
     9,  // protocol 2 and 3: no schema_version
     {"type", "protocol_version", "site", "ns", "token", "held", "schema_fingerprint", "acked_seq",
      "own_log", "schema_version"},
     5},
    {"welcome", 3, 3, {"type", "protocol_version", "held"}, 2},
    {"changes", 4, 4, {"type", "batch", "changeset", "origin_log"}, 0},
    {"ack", 4, 3, {"type", "batch", "held", "group"}, 2},  // protocol 4 and before: no group
    {"error", 3, 3, {"type", "code", "message"}, 0},
    {"ping", 2, 2, {"type", "nonce"}, 0},
    {"pong", 2, 2, {"type", "nonce"}, 0},
    {"rekey", 3, 3, {"type", "reason", "keep_through"}, 0},
    {"digest_request", 2, 2, {"type", "nonce"}, 0},
    {"digest", 3, 3, {"type", "nonce", "summary"}, 0},
    {"changes_piece", 4, 4, {"type", "batch", "offset", "piece"}, 0},
    {"delta", 4, 4, {"type", "group", "previous", "changeset"}, 0},
};
static_assert(std::size(kLayouts) == std::variant_size_v<Frame>);

// ---------------------------------------------------------------------------------------------
// Encoding

struct StringSink {
  std::string* out;
  void write(const char* data, std::size_t size) { out->append(data, size); }
};

using Packer = msgpack::packer<StringSink>;

std::uint32_t length32(std::string_view s, const char* field) {
  if (s.size() > std::numeric_limits<std::uint32_t>::max()) {
    throw Error(ErrorCode::kTooLarge, std::string(field) + ": " + std::to_string(s.size()) +
                                          " bytes do not fit in a msgpack str or bin");
  }
  return static_cast<std::uint32_t>(s.size());
}

void pack_str(Packer& pk, std::string_view s, const char* field) {
  const std::uint32_t n = length32(s, field);
  pk.pack_str(n);
  pk.pack_str_body(s.data(), n);
}

void pack_bin(Packer& pk, std::string_view s, const char* field) {
  const std::uint32_t n = length32(s, field);
  pk.pack_bin(n);
  pk.pack_bin_body(s.data(), n);
}

void pack_vector(Packer& pk, const VersionVector& vv) {
  pk.pack_map(static_cast<std::uint32_t>(vv.entries().size()));
  for (const auto& [site, seq] : vv.entries()) {
    pack_bin(pk, site.as_bytes(), "held.site");
    pk.pack_uint64(seq);
  }
}

void pack_log(Packer& pk, const std::vector<crdt::TxnTag>& log, const char* field) {
  std::string bytes;
  bytes.reserve(log.size() * kTxnTagBytes);
  for (const crdt::TxnTag& t : log)
    for (std::uint64_t v : {t.seq, t.tag})
      for (int shift = 56; shift >= 0; shift -= 8) bytes.push_back(static_cast<char>(v >> shift));
  pack_bin(pk, bytes, field);
}

// The type numbers are the variant's indices plus one; the decoder relies on it too.
static_assert(std::is_same_v<std::variant_alternative_t<0, Frame>, Hello> &&
              std::is_same_v<std::variant_alternative_t<4, Frame>, ErrorFrame> &&
              std::is_same_v<std::variant_alternative_t<7, Frame>, Rekey>);

struct Encoder {
  Packer& pk;

  void header(std::uint8_t type, std::size_t elements = 0) {
    pk.pack_array(
        static_cast<std::uint32_t>(elements != 0 ? elements : kLayouts[type - 1].elements));
    pk.pack_uint8(type);
  }

  void operator()(const Hello& f) {
    // A hello of protocol 2 or 3 has no schema_version, as those relays expect.
    const bool versioned = f.protocol_version >= 4;
    pk.pack_array(
        static_cast<std::uint32_t>(versioned ? kLayouts[0].elements : kLayouts[0].min_elements));
    pk.pack_uint8(1);
    pk.pack_uint32(f.protocol_version);
    pack_bin(pk, f.site.as_bytes(), "hello.site");
    pack_str(pk, f.ns, "hello.ns");
    pack_str(pk, f.token, "hello.token");
    pack_vector(pk, f.held);
    pack_str(pk, f.schema_fingerprint, "hello.schema_fingerprint");
    pk.pack_uint64(f.acked_seq);
    pack_log(pk, f.own_log, "hello.own_log");
    if (versioned) pk.pack_uint64(f.schema_version);
  }
  void operator()(const Welcome& f) {
    header(2);
    pk.pack_uint32(f.protocol_version);
    pack_vector(pk, f.held);
  }
  void operator()(const Changes& f) {
    header(3);
    pk.pack_uint64(f.batch);
    pack_bin(pk, f.changeset, "changes.changeset");
    pack_log(pk, f.origin_log, "changes.origin_log");
  }
  void operator()(const Ack& f) {
    header(4, f.group != 0 ? 4 : 3);
    pk.pack_uint64(f.batch);
    pack_vector(pk, f.held);
    if (f.group != 0) pk.pack_uint64(f.group);
  }
  void operator()(const ErrorFrame& f) {
    header(5);
    pk.pack_uint32(static_cast<std::uint32_t>(f.code));
    pack_str(pk, f.message, "error.message");
  }
  void operator()(const Ping& f) {
    header(6);
    pk.pack_uint64(f.nonce);
  }
  void operator()(const Pong& f) {
    header(7);
    pk.pack_uint64(f.nonce);
  }
  void operator()(const Rekey& f) {
    header(8);
    pack_str(pk, f.reason, "rekey.reason");
    pk.pack_uint64(f.keep_through);
  }
  void operator()(const DigestRequest& f) {
    header(9);
    pk.pack_uint64(f.nonce);
  }
  void operator()(const Digest& f) {
    header(10);
    pk.pack_uint64(f.nonce);
    pack_str(pk, f.summary, "digest.summary");
  }
  void operator()(const ChangesPiece& f) {
    header(11);
    pk.pack_uint64(f.batch);
    pk.pack_uint64(f.offset);
    pack_bin(pk, f.piece, "changes_piece.piece");
  }
  void operator()(const Delta& f) {
    header(12);
    pk.pack_uint64(f.group);
    pk.pack_uint64(f.previous);
    pack_bin(pk, f.changeset, "delta.changeset");
  }
};

// ---------------------------------------------------------------------------------------------
// Decoding: error messages

[[noreturn]] void fail(ErrorCode code, const std::string& message) { throw Error(code, message); }

// Where in a frame a value is: "hello.site", "ack.held[2].seq". Built into text only when a
// message needs it.
struct Where {
  const Layout* layout;
  std::size_t field;  // position in the top-level array
  bool has_entry = false;
  std::size_t entry = 0;       // element of the field's container
  const char* part = nullptr;  // "site" or "seq" within a vector entry, or nullptr

  Where entry_part(std::size_t i, const char* p) const { return {layout, field, true, i, p}; }

  std::string to_string() const {
    std::string out = std::string(layout->name) + '.' + layout->fields[field];
    if (has_entry) {
      out += '[' + std::to_string(entry) + ']';
      if (part != nullptr) {
        out += '.';
        out += part;
      }
    }
    return out;
  }
};

using crdt::detail::msgpack_type_name;

// The same names, from the first byte of an encoded value.
const char* lead_type_name(std::uint8_t t) {
  if (t <= 0x7f || (t >= 0xcc && t <= 0xcf)) return "unsigned integer";
  if (t >= 0xe0) return "negative integer";
  if (t >= 0xd0 && t <= 0xd3) return "integer";
  if (t <= 0x8f || t == 0xde || t == 0xdf) return "map";
  if (t <= 0x9f || t == 0xdc || t == 0xdd) return "array";
  if (t <= 0xbf || (t >= 0xd9 && t <= 0xdb)) return "str";
  if (t == 0xc0) return "nil";
  if (t == 0xc2 || t == 0xc3) return "bool";
  if (t >= 0xc4 && t <= 0xc6) return "bin";
  if (t == 0xca) return "float32";
  if (t == 0xcb) return "float64";
  if (t == 0xc1) return "the invalid msgpack byte 0xc1";
  return "ext";
}

std::string hex_byte(std::uint8_t t) {
  constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[t >> 4] + kDigits[t & 15];
}

[[noreturn]] void fail_type(const Where& at, const char* expected, const msgpack::object& o) {
  fail(ErrorCode::kCorrupt,
       at.to_string() + ": expected " + expected + ", got " + msgpack_type_name(o));
}

[[noreturn]] void fail_corrupt(const Where& at, const std::string& what) {
  fail(ErrorCode::kCorrupt, at.to_string() + ": " + what);
}

[[noreturn]] void fail_truncated(std::size_t size, std::size_t needed, const std::string& where) {
  // `needed` is known when a length was read; otherwise only that something is missing.
  fail(ErrorCode::kCorrupt,
       "frame truncated at byte " + std::to_string(size) +
           (needed > size ? " of at least " + std::to_string(needed) : std::string()) +
           ": the input ends inside " + where);
}

// ---------------------------------------------------------------------------------------------
// Decoding: the header, read from raw bytes

struct RawCursor {
  std::string_view bytes;
  std::size_t pos = 0;

  std::uint8_t byte(const char* where) {
    if (pos >= bytes.size()) fail_truncated(bytes.size(), pos + 1, where);
    return static_cast<std::uint8_t>(bytes[pos++]);
  }
  std::uint64_t big_endian(std::size_t n, const char* where) {
    if (bytes.size() - pos < n) fail_truncated(bytes.size(), pos + n, where);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<std::uint8_t>(bytes[pos++]);
    return v;
  }
};

// Returns the variant index of the frame after checking that the bytes start with an array of
// the right size for its type; `*end`, when given, receives the offset of its first field.
std::size_t read_header(std::string_view bytes, std::size_t* end = nullptr) {
  if (bytes.empty()) fail(ErrorCode::kCorrupt, "frame truncated at byte 0: the input is empty");
  RawCursor c{bytes};
  const std::uint8_t lead = c.byte("the frame header");
  std::uint64_t count = 0;
  if ((lead & 0xf0) == 0x90) {
    count = lead & 0x0f;
  } else if (lead == 0xdc) {
    count = c.big_endian(2, "the frame header");
  } else if (lead == 0xdd) {
    count = c.big_endian(4, "the frame header");
  } else {
    fail(ErrorCode::kCorrupt, std::string("frame: expected an array, got ") + lead_type_name(lead));
  }
  if (count == 0) fail(ErrorCode::kCorrupt, "frame: an empty array, expected the frame type first");

  const std::uint8_t t = c.byte("frame.type");
  std::uint64_t type = 0;
  if (t <= 0x7f) {
    type = t;
  } else if (t >= 0xcc && t <= 0xcf) {
    type = c.big_endian(std::size_t{1} << (t - 0xcc), "frame.type");
  } else if (t >= 0xd0 && t <= 0xd3) {
    // msgpack-c reads a signed encoding of a non-negative value as an unsigned integer; so does
    // the rest of the decoder, so the header must too.
    const std::size_t width = std::size_t{1} << (t - 0xd0);
    const std::uint64_t raw = c.big_endian(width, "frame.type");
    const bool negative = (raw >> (8 * width - 1)) & 1;
    if (negative) {
      fail(ErrorCode::kCorrupt, "frame.type: expected unsigned integer, got negative integer");
    }
    type = raw;
  } else {
    fail(ErrorCode::kCorrupt,
         std::string("frame.type: expected unsigned integer, got ") + lead_type_name(t));
  }
  if (type == 0 || type > std::size(kLayouts)) {
    fail(ErrorCode::kCorrupt, "unknown frame type " + std::to_string(type));
  }
  const Layout& layout = kLayouts[type - 1];
  if (count < layout.min_elements || count > layout.elements) {
    fail(ErrorCode::kCorrupt, std::string(layout.name) + ": expected an array of " +
                                  (layout.min_elements == layout.elements
                                       ? std::to_string(layout.elements)
                                       : std::to_string(layout.min_elements) + " or " +
                                             std::to_string(layout.elements)) +
                                  " elements, got " + std::to_string(count));
  }
  if (end) *end = c.pos;
  return static_cast<std::size_t>(type - 1);
}

// ---------------------------------------------------------------------------------------------
// Decoding: a raw scan that explains why msgpack::unpack refused the bytes. It mirrors the
// limits given to unpack and reports the first problem with its byte offset and field. It runs
// only after read_header accepted the header, so the frame type is known.

[[noreturn]] void explain_unpack_failure(std::string_view b, const Layout& layout,
                                         const msgpack::unpack_limit& limit,
                                         const char* msgpack_what) {
  struct Open {
    std::uint64_t remaining;  // items left, map entries counting twice
    std::size_t index;        // items read so far, map entries counting twice
    bool map;
  };
  std::vector<Open> stack;
  auto where = [&]() -> std::string {
    if (stack.empty()) return layout.name;
    Where at{&layout, stack[0].index};
    if (stack.size() == 1) return at.to_string();
    const Open& inner = stack[1];
    if (!inner.map) return at.entry_part(inner.index, nullptr).to_string();
    const bool is_vector = stack[0].index == layout.vector_field;
    const bool key = inner.index % 2 == 0;
    return at
        .entry_part(inner.index / 2, is_vector ? (key ? "site" : "seq") : (key ? "key" : "value"))
        .to_string();
  };
  const std::size_t n = b.size();
  std::size_t pos = 0;
  while (true) {
    if (pos >= n) fail_truncated(n, 0, where());
    const std::size_t start = pos;
    const std::uint8_t t = static_cast<std::uint8_t>(b[pos]);
    const crdt::detail::MsgpackHeader header = crdt::detail::read_msgpack_header(
        b, pos, [&](std::size_t needed) { fail_truncated(n, needed, where()); });
    using enum crdt::detail::MsgpackHeader::Kind;
    const auto kind = header.kind;
    const std::uint64_t payload = header.payload, items = header.items;
    if (kind == kInvalid) {
      fail(ErrorCode::kCorrupt, where() + ": the invalid msgpack byte " + hex_byte(t) +
                                    " at byte " + std::to_string(start));
    }
    if (kind == kExt) {
      fail(ErrorCode::kCorrupt, where() + ": msgpack ext values (byte " + std::to_string(start) +
                                    ") are not part of the protocol");
    }
    if (kind == kArray || kind == kMap) {
      const std::size_t max = kind == kArray ? limit.array() : limit.map();
      if (items > max) {
        if (kind == kArray) {
          fail(ErrorCode::kCorrupt, where() + ": the array at byte " + std::to_string(start) +
                                        " claims " + std::to_string(items) +
                                        " elements; no array in a frame has more than " +
                                        std::to_string(max));
        }
        if (stack.size() == 1 && layout.vector_field != 0 &&
            stack[0].index == layout.vector_field) {
          // A version vector claiming more entries than the rest of the input can hold: as far
          // as the protocol is concerned, the frame ends early.
          fail(ErrorCode::kCorrupt,
               "frame truncated at byte " + std::to_string(n) + " of at least " +
                   std::to_string(pos + items * kMinEntryBytes) + ": the input ends inside " +
                   where() + ", whose " + std::to_string(items) + " entries take at least " +
                   std::to_string(kMinEntryBytes) + " bytes each");
        }
        fail(ErrorCode::kCorrupt, where() + ": the map at byte " + std::to_string(start) +
                                      " claims " + std::to_string(items) +
                                      " entries, more than the " + std::to_string(n) +
                                      "-byte frame can hold");
      }
      if (stack.size() + 1 > limit.depth()) {
        fail(ErrorCode::kCorrupt, where() + ": containers nested deeper than " +
                                      std::to_string(limit.depth()) + " levels at byte " +
                                      std::to_string(start));
      }
      if (items > 0) {
        stack.push_back({kind == kMap ? items * 2 : items, 0, kind == kMap});
        continue;
      }
    } else {
      if (n - pos < payload) fail_truncated(n, pos + payload, where());
      pos += payload;
    }
    while (!stack.empty()) {
      Open& open = stack.back();
      ++open.index;
      if (--open.remaining > 0) break;
      stack.pop_back();
    }
    if (stack.empty()) break;
  }
  // The scan found nothing msgpack would object to; report what msgpack said.
  fail(ErrorCode::kCorrupt, std::string("frame does not decode: ") + msgpack_what);
}

// ---------------------------------------------------------------------------------------------
// Decoding: the walk over the object tree

std::uint64_t read_uint(const msgpack::object& o, const Where& at) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) return o.via.u64;
  if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    fail_corrupt(at,
                 "expected unsigned integer, got negative integer " + std::to_string(o.via.i64));
  }
  fail_type(at, "unsigned integer", o);
}

std::uint32_t read_u32(const msgpack::object& o, const Where& at) {
  const std::uint64_t v = read_uint(o, at);
  if (v > std::numeric_limits<std::uint32_t>::max()) {
    fail_corrupt(at, std::to_string(v) + " is out of range for a 32-bit unsigned integer");
  }
  return static_cast<std::uint32_t>(v);
}

std::string read_str(const msgpack::object& o, const Where& at) {
  if (o.type != msgpack::type::STR) fail_type(at, "str", o);
  return std::string(o.via.str.ptr, o.via.str.size);
}

std::string read_bin(const msgpack::object& o, const Where& at) {
  if (o.type != msgpack::type::BIN) fail_type(at, "bin", o);
  return std::string(o.via.bin.ptr, o.via.bin.size);
}

SiteId read_site(const msgpack::object& o, const Where& at) {
  if (o.type != msgpack::type::BIN) fail_type(at, "16-byte bin", o);
  if (o.via.bin.size != kSiteIdBytes) {
    fail_corrupt(at, "expected 16-byte bin, got " + std::to_string(o.via.bin.size) + "-byte bin");
  }
  SiteId id;
  std::memcpy(id.bytes.data(), o.via.bin.ptr, kSiteIdBytes);
  return id;
}

VersionVector read_vector(const msgpack::object& o, const Where& at) {
  if (o.type != msgpack::type::MAP) fail_type(at, "map", o);
  if (o.via.map.size > kMaxVectorEntries)
    fail_corrupt(at, std::to_string(o.via.map.size) + " entries, over the limit of " +
                         std::to_string(kMaxVectorEntries));
  VersionVector vv;
  for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv& kv = o.via.map.ptr[i];
    const SiteId site = read_site(kv.key, at.entry_part(i, "site"));
    const std::uint64_t seq = read_uint(kv.val, at.entry_part(i, "seq"));
    if (seq == 0) {
      fail_corrupt(at.entry_part(i, "seq"),
                   "0 is not allowed (a site absent from the vector counts as 0)");
    }
    if (vv.get(site) != 0) {
      fail_corrupt(at.entry_part(i, "site"), "duplicate site " + site.to_hex());
    }
    vv.advance(site, seq);
  }
  return vv;
}

std::vector<crdt::TxnTag> read_log(const msgpack::object& o, const Where& at) {
  if (o.type != msgpack::type::BIN) fail_type(at, "bin", o);
  const std::string_view bytes(o.via.bin.ptr, o.via.bin.size);
  if (bytes.size() % kTxnTagBytes != 0)
    fail_corrupt(at, std::to_string(bytes.size()) + "-byte bin is not a whole number of " +
                         std::to_string(kTxnTagBytes) + "-byte (seq, tag) entries");
  if (bytes.size() / kTxnTagBytes > kMaxLogEntries)
    fail_corrupt(at, std::to_string(bytes.size() / kTxnTagBytes) + " entries, over the limit of " +
                         std::to_string(kMaxLogEntries));
  std::vector<crdt::TxnTag> log(bytes.size() / kTxnTagBytes);
  auto read64 = [&](std::size_t offset) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) v = v << 8 | static_cast<unsigned char>(bytes[offset + i]);
    return v;
  };
  for (std::size_t i = 0; i < log.size(); ++i)
    log[i] = {read64(i * kTxnTagBytes), read64(i * kTxnTagBytes + 8)};
  return log;
}

Frame read_frame(std::size_t index, const msgpack::object& root) {
  const Layout& layout = kLayouts[index];
  // read_header checked the array size and the type, and unpack read the same bytes.
  const msgpack::object* f = root.via.array.ptr;
  auto at = [&](std::size_t field) { return Where{&layout, field}; };
  switch (index) {
    case 0: {
      Hello h;
      h.protocol_version = read_u32(f[1], at(1));
      h.site = read_site(f[2], at(2));
      h.ns = read_str(f[3], at(3));
      h.token = read_str(f[4], at(4));
      h.held = read_vector(f[5], at(5));
      h.schema_fingerprint = read_str(f[6], at(6));
      h.acked_seq = read_uint(f[7], at(7));
      h.own_log = read_log(f[8], at(8));
      if (root.via.array.size > 9) {
        // Protocol 4 on (the encoder leaves it out below): accepted below 4, it would not
        // survive being encoded again.
        if (h.protocol_version < 4)
          fail_corrupt(at(9), "a hello of protocol " + std::to_string(h.protocol_version) +
                                  " has no schema_version (protocol 4 on)");
        h.schema_version = read_uint(f[9], at(9));
      }
      return h;
    }
    case 1: {
      Welcome w;
      w.protocol_version = read_u32(f[1], at(1));
      w.held = read_vector(f[2], at(2));
      return w;
    }
    case 2: {
      Changes c;
      c.batch = read_uint(f[1], at(1));
      c.changeset = read_bin(f[2], at(2));
      c.origin_log = read_log(f[3], at(3));
      return c;
    }
    case 3: {
      Ack a;
      a.batch = read_uint(f[1], at(1));
      a.held = read_vector(f[2], at(2));
      if (root.via.array.size > 3) {
        // Left out when 0 (the encoder's rule), so that every ack survives encoding again.
        a.group = read_uint(f[3], at(3));
        if (a.group == 0) fail_corrupt(at(3), "0 is not a group number (left out instead)");
      }
      return a;
    }
    case 4: {
      ErrorFrame e;
      e.code = static_cast<WireError>(read_u32(f[1], at(1)));  // unknown codes are kept
      e.message = read_str(f[2], at(2));
      return e;
    }
    case 5:
      return Ping{read_uint(f[1], at(1))};
    case 6:
      return Pong{read_uint(f[1], at(1))};
    case 7:
      return Rekey{read_str(f[1], at(1)), read_uint(f[2], at(2))};
    case 8:
      return DigestRequest{read_uint(f[1], at(1))};
    case 9:
      return Digest{read_uint(f[1], at(1)), read_str(f[2], at(2))};
    case 10:
      return ChangesPiece{read_uint(f[1], at(1)), read_uint(f[2], at(2)), read_bin(f[3], at(3))};
    case 11: {
      Delta d{read_uint(f[1], at(1)), read_uint(f[2], at(2)), read_bin(f[3], at(3))};
      if (d.group == 0) fail_corrupt(at(1), "0 is not a group number (they count from 1)");
      if (d.previous >= d.group)
        fail_corrupt(at(2), std::to_string(d.previous) + " does not come before group " +
                                std::to_string(d.group));
      return d;
    }
  }
  fail(ErrorCode::kInternal, "frame type index " + std::to_string(index) + " has no reader");
}

// Strings and bins point into the caller's bytes instead of being copied into the zone: the
// bytes outlive the object tree, which lives only inside decode_frame.
bool reference_input(msgpack::type::object_type, std::size_t, void*) { return true; }

}  // namespace

bool valid_namespace(std::string_view ns) {
  if (ns.empty() || ns.size() > 64) return false;
  for (const char c : ns)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return false;
  return true;
}

const char* wire_error_name(WireError code) {
  switch (code) {
    case WireError::kProtocolVersion:
      return "protocol_version";
    case WireError::kMalformed:
      return "malformed";
    case WireError::kUnauthorized:
      return "unauthorized";
    case WireError::kForbidden:
      return "forbidden";
    case WireError::kSchemaMismatch:
      return "schema_mismatch";
    case WireError::kBadChangeset:
      return "bad_changeset";
    case WireError::kFrameTooLarge:
      return "frame_too_large";
    case WireError::kBatchTooLarge:
      return "batch_too_large";
    case WireError::kRateLimited:
      return "rate_limited";
    case WireError::kTooManyConnections:
      return "too_many_connections";
    case WireError::kSlowConsumer:
      return "slow_consumer";
    case WireError::kShuttingDown:
      return "shutting_down";
    case WireError::kInternal:
      return "internal";
    case WireError::kSchemaAhead:
      return "schema_ahead";
  }
  return "unknown";
}

std::string encode_frame(const Frame& frame) {
  std::string out;
  StringSink sink{&out};
  Packer pk(sink);
  std::visit(Encoder{pk}, frame);
  return out;
}

std::optional<HelloCredentials> peek_hello(std::string_view bytes) {
  std::size_t pos = 0;
  if (read_header(bytes, &pos) != 0) return std::nullopt;
  const Layout& layout = kLayouts[0];
  // Fields 1 to 4 read straight from the bytes: nothing after the token is looked at.
  auto field = [&](std::size_t index, crdt::detail::MsgpackHeader::Kind kind, const char* type) {
    const std::string where = Where{&layout, index}.to_string();
    if (pos >= bytes.size()) fail_truncated(bytes.size(), pos + 1, where);
    const auto lead = static_cast<std::uint8_t>(bytes[pos]);
    const std::size_t start = pos;
    const auto header = crdt::detail::read_msgpack_header(
        bytes, pos, [&](std::size_t needed) { fail_truncated(bytes.size(), needed, where); });
    if (bytes.size() - pos < header.payload)
      fail_truncated(bytes.size(), pos + header.payload, where);
    // Signed encodings of non-negative values count as unsigned, as in decode_frame.
    const bool is_uint = lead <= 0x7f || (lead >= 0xcc && lead <= 0xcf) ||
                         (lead >= 0xd0 && lead <= 0xd3 && !(bytes[pos] & 0x80));
    if (kind == crdt::detail::MsgpackHeader::kScalar ? !is_uint : header.kind != kind)
      fail(ErrorCode::kCorrupt, where + ": expected " + type + ", got " + lead_type_name(lead));
    const std::string_view body = bytes.substr(pos, header.payload);
    pos += header.payload;
    return std::pair{body, start};
  };
  using K = crdt::detail::MsgpackHeader;
  HelloCredentials out;
  const auto [version, version_at] = field(1, K::kScalar, "unsigned integer");
  std::uint64_t v = version.empty() ? static_cast<std::uint8_t>(bytes[version_at]) : 0;
  for (char c : version) v = v << 8 | static_cast<std::uint8_t>(c);
  if (v > std::numeric_limits<std::uint32_t>::max())
    fail(ErrorCode::kCorrupt, "hello.protocol_version: " + std::to_string(v) +
                                  " is out of range for a 32-bit unsigned integer");
  out.protocol_version = static_cast<std::uint32_t>(v);
  field(2, K::kBin, "16-byte bin");
  out.ns = std::string(field(3, K::kStr, "str").first);
  out.token = std::string(field(4, K::kStr, "str").first);
  return out;
}

Frame decode_frame(std::string_view bytes, std::size_t max_bytes) {
  if (bytes.size() > max_bytes) {
    fail(ErrorCode::kTooLarge, "frame of " + std::to_string(bytes.size()) +
                                   " bytes is over the limit of " + std::to_string(max_bytes) +
                                   " bytes");
  }
  const std::size_t index = read_header(bytes);

  // No array is longer than a hello, and a version vector entry takes at least kMinEntryBytes,
  // so these limits refuse no valid frame, while keeping what msgpack sets aside for the object
  // tree under twice the input's size. Strings and bins are not copied (reference_input).
  const std::size_t n = bytes.size();
  const msgpack::unpack_limit limit(/*array=*/kMaxElements, /*map=*/n / kMinEntryBytes,
                                    /*str=*/n, /*bin=*/n, /*ext=*/0, /*depth=*/kMaxDepth);
  msgpack::object_handle handle;
  std::size_t offset = 0;
  try {
    msgpack::unpack(handle, bytes.data(), n, offset, reference_input, nullptr, limit);
  } catch (const msgpack::unpack_error& e) {
    explain_unpack_failure(bytes, kLayouts[index], limit, e.what());
  } catch (const std::bad_alloc&) {
    fail(ErrorCode::kTooLarge,
         "frame of " + std::to_string(n) + " bytes needs more memory than is available to decode");
  }
  if (offset != n) {
    fail(ErrorCode::kCorrupt, "frame has " + std::to_string(n - offset) +
                                  " trailing bytes after its end at byte " +
                                  std::to_string(offset));
  }
  return read_frame(index, handle.get());
}

}  // namespace lattice::transport
