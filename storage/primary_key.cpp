#include "storage/primary_key.hpp"

#include <cstdint>
#include <cstring>
#include <msgpack.hpp>

#include "crdt/error.hpp"

namespace lattice::storage {

namespace {

// A canonical msgpack writer: every value has exactly one encoding (the shortest), so equal
// keys pack to equal bytes. (msgpack-cxx's packer would also write 1.0 as the integer 1.)
void put_be(std::string& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_int(std::string& out, std::int64_t v) {
  if (v >= 0 && v <= 127) {
    out += static_cast<char>(v);
  } else if (v < 0 && v >= -32) {
    out += static_cast<char>(0xe0 | (v + 32));
  } else if (v >= 0) {
    const auto u = static_cast<std::uint64_t>(v);
    if (u <= 0xff)
      out += '\xcc', put_be(out, u, 1);
    else if (u <= 0xffff)
      out += '\xcd', put_be(out, u, 2);
    else if (u <= 0xffffffffu)
      out += '\xce', put_be(out, u, 4);
    else
      out += '\xcf', put_be(out, u, 8);
  } else {
    const auto u = static_cast<std::uint64_t>(v);
    if (v >= INT8_MIN)
      out += '\xd0', put_be(out, u, 1);
    else if (v >= INT16_MIN)
      out += '\xd1', put_be(out, u, 2);
    else if (v >= INT32_MIN)
      out += '\xd2', put_be(out, u, 4);
    else
      out += '\xd3', put_be(out, u, 8);
  }
}

// Keys only: SQLite takes -0.0 and 0.0 for the same key, so they must pack alike.
double canonical_key_double(double v) { return v == 0.0 ? 0.0 : v; }

void put_double(std::string& out, double v) {
  std::uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  out += '\xcb';
  put_be(out, bits, 8);
}

void put_bytes(std::string& out, const void* data, std::size_t size, bool text) {
  if (text && size < 32)
    out += static_cast<char>(0xa0 | size);
  else if (size <= 0xff)
    out += text ? '\xd9' : '\xc4', put_be(out, size, 1);
  else if (size <= 0xffff)
    out += text ? '\xda' : '\xc5', put_be(out, size, 2);
  else
    out += text ? '\xdb' : '\xc6', put_be(out, size, 4);
  out.append(static_cast<const char*>(data), size);
}

void put_array_header(std::string& out, std::size_t n) {
  if (n < 16)
    out += static_cast<char>(0x90 | n);
  else if (n <= 0xffff)
    out += '\xdc', put_be(out, n, 2);
  else
    out += '\xdd', put_be(out, n, 4);
}

void pack_value(std::string& out, const crdt::Value& value, bool key) {
  switch (value.index()) {
    case 0:
      out += '\xc0';
      break;
    case 1:
      put_int(out, std::get<std::int64_t>(value));
      break;
    case 2:
      put_double(out,
                 key ? canonical_key_double(std::get<double>(value)) : std::get<double>(value));
      break;
    case 3: {
      const auto& s = std::get<std::string>(value);
      put_bytes(out, s.data(), s.size(), true);
      break;
    }
    case 4: {
      const auto& b = std::get<crdt::Blob>(value).bytes;
      put_bytes(out, b.data(), b.size(), false);
      break;
    }
  }
}

crdt::Value unpack_value(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return std::monostate{};
    case msgpack::type::POSITIVE_INTEGER:
      if (o.via.u64 > static_cast<std::uint64_t>(INT64_MAX))
        throw Error(ErrorCode::kCorrupt, "primary key integer out of range");
      return static_cast<std::int64_t>(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER:
      return std::int64_t{o.via.i64};
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return o.via.f64;
    case msgpack::type::STR:
      return std::string(o.via.str.ptr, o.via.str.size);
    case msgpack::type::BIN:
      return crdt::Blob{std::string(o.via.bin.ptr, o.via.bin.size)};
    default:
      throw Error(ErrorCode::kCorrupt, "primary key holds a value of an unsupported type");
  }
}

}  // namespace

std::string pack_primary_key(const std::vector<crdt::Value>& values) {
  std::string out;
  put_array_header(out, values.size());
  for (const auto& v : values) pack_value(out, v, true);
  return out;
}

std::string pack_values(const std::vector<crdt::Value>& values) {
  std::string out;
  put_array_header(out, values.size());
  for (const auto& v : values) pack_value(out, v, false);
  return out;
}

void pack_primary_key_values(int argc, sqlite3_value** argv, std::string& out) {
  out.clear();
  put_array_header(out, static_cast<std::size_t>(argc));
  for (int i = 0; i < argc; ++i) {
    sqlite3_value* v = argv[i];
    switch (sqlite3_value_type(v)) {
      case SQLITE_INTEGER:
        put_int(out, sqlite3_value_int64(v));
        break;
      case SQLITE_FLOAT:
        put_double(out, canonical_key_double(sqlite3_value_double(v)));
        break;
      case SQLITE_TEXT: {
        const unsigned char* text = sqlite3_value_text(v);
        put_bytes(out, text, static_cast<std::size_t>(sqlite3_value_bytes(v)), true);
        break;
      }
      case SQLITE_BLOB: {
        const void* blob = sqlite3_value_blob(v);
        put_bytes(out, blob, static_cast<std::size_t>(sqlite3_value_bytes(v)), false);
        break;
      }
      default:
        out += '\xc0';
        break;
    }
  }
}

std::vector<crdt::Value> unpack_primary_key(std::string_view packed, std::size_t expected_columns) {
  std::vector<crdt::Value> values = unpack_values(packed, expected_columns);
  for (const auto& v : values)
    if (v.index() == 0) throw Error(ErrorCode::kCorrupt, "primary key holds a NULL value");
  return values;
}

std::vector<crdt::Value> unpack_values(std::string_view packed, std::size_t expected_columns) {
  std::vector<crdt::Value> values = unpack_value_list(packed);
  if (values.size() != expected_columns)
    throw Error(ErrorCode::kCorrupt, "primary key has " + std::to_string(values.size()) +
                                         " values, the table's key has " +
                                         std::to_string(expected_columns) + " columns");
  return values;
}

std::vector<crdt::Value> unpack_value_list(std::string_view packed) {
  msgpack::object_handle handle;
  std::size_t offset = 0;
  try {
    const msgpack::unpack_limit limit(packed.size(), 0, packed.size(), packed.size(), 0, 2);
    handle = msgpack::unpack(packed.data(), packed.size(), offset, nullptr, nullptr, limit);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kCorrupt, std::string("primary key does not decode: ") + e.what());
  }
  const msgpack::object& o = handle.get();
  if (offset != packed.size() || o.type != msgpack::type::ARRAY)
    throw Error(ErrorCode::kCorrupt, "primary key is not a msgpack array");
  std::vector<crdt::Value> values;
  values.reserve(o.via.array.size);
  for (std::uint32_t i = 0; i < o.via.array.size; ++i)
    values.push_back(unpack_value(o.via.array.ptr[i]));
  return values;
}

std::string describe_primary_key(std::string_view packed) {
  try {
    msgpack::object_handle handle = msgpack::unpack(packed.data(), packed.size());
    std::ostringstream out;
    out << handle.get();
    return out.str();
  } catch (const std::exception&) {
    return "<" + std::to_string(packed.size()) + " bytes>";
  }
}

}  // namespace lattice::storage
