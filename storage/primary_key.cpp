#include "storage/primary_key.hpp"

#include <msgpack.hpp>

#include "crdt/error.hpp"

namespace lattice::storage {

namespace {

void pack_value(msgpack::packer<msgpack::sbuffer>& packer, const crdt::Value& value) {
  switch (value.index()) {
    case 0:
      packer.pack_nil();
      break;
    case 1:
      packer.pack_int64(std::get<std::int64_t>(value));
      break;
    case 2:
      packer.pack_double(std::get<double>(value));
      break;
    case 3: {
      const auto& s = std::get<std::string>(value);
      packer.pack_str(static_cast<std::uint32_t>(s.size()));
      packer.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
      break;
    }
    case 4: {
      const auto& b = std::get<crdt::Blob>(value).bytes;
      packer.pack_bin(static_cast<std::uint32_t>(b.size()));
      packer.pack_bin_body(b.data(), static_cast<std::uint32_t>(b.size()));
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
  msgpack::sbuffer buffer(32);
  msgpack::packer<msgpack::sbuffer> packer(buffer);
  packer.pack_array(static_cast<std::uint32_t>(values.size()));
  for (const auto& v : values) pack_value(packer, v);
  return std::string(buffer.data(), buffer.size());
}

std::vector<crdt::Value> unpack_primary_key(std::string_view packed, std::size_t expected_columns) {
  msgpack::object_handle handle;
  std::size_t offset = 0;
  try {
    const msgpack::unpack_limit limit(64, 0, packed.size(), packed.size(), 0, 2);
    handle = msgpack::unpack(packed.data(), packed.size(), offset, nullptr, nullptr, limit);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kCorrupt, std::string("primary key does not decode: ") + e.what());
  }
  const msgpack::object& o = handle.get();
  if (offset != packed.size() || o.type != msgpack::type::ARRAY)
    throw Error(ErrorCode::kCorrupt, "primary key is not a msgpack array");
  if (o.via.array.size != expected_columns)
    throw Error(ErrorCode::kCorrupt, "primary key has " + std::to_string(o.via.array.size) +
                                         " values, the table's key has " +
                                         std::to_string(expected_columns) + " columns");
  std::vector<crdt::Value> values;
  values.reserve(o.via.array.size);
  for (std::uint32_t i = 0; i < o.via.array.size; ++i) {
    values.push_back(unpack_value(o.via.array.ptr[i]));
    if (values.back().index() == 0)
      throw Error(ErrorCode::kCorrupt, "primary key holds a NULL value");
  }
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
