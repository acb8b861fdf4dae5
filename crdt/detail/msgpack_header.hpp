#pragma once
// Helpers shared by the decoders of untrusted msgpack. The header of one msgpack value, read
// from raw bytes without trusting them. The changeset and
// frame decoders scan untrusted input with it before msgpack-c allocates anything, so a length
// that the input cannot hold is refused with a message that names where it is.

#include <cstddef>
#include <cstdint>
#include <msgpack.hpp>
#include <string_view>

namespace lattice::crdt::detail {

struct MsgpackHeader {
  enum Kind { kScalar, kStr, kBin, kExt, kArray, kMap, kInvalid };
  Kind kind = kScalar;
  std::uint64_t payload = 0;  // bytes after the header: a scalar's, str's, bin's or ext's body
  std::uint64_t items = 0;    // elements of an array, pairs of a map
};

// Reads the header at bytes[pos] (pos < bytes.size()) and moves pos past it. When the input ends
// inside the header, calls on_short(bytes needed in all), which must throw.
template <class OnShort>
MsgpackHeader read_msgpack_header(std::string_view bytes, std::size_t& pos, OnShort&& on_short) {
  const std::size_t n = bytes.size();
  const auto t = static_cast<std::uint8_t>(bytes[pos++]);
  auto be = [&](std::size_t k) -> std::uint64_t {
    if (n - pos < k) on_short(pos + k);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < k; ++i) v = (v << 8) | static_cast<std::uint8_t>(bytes[pos++]);
    return v;
  };
  using K = MsgpackHeader;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return {};
  if ((t & 0xe0) == 0xa0) return {K::kStr, static_cast<std::uint64_t>(t & 0x1f), 0};
  if ((t & 0xf0) == 0x90) return {K::kArray, 0, static_cast<std::uint64_t>(t & 0x0f)};
  if ((t & 0xf0) == 0x80) return {K::kMap, 0, static_cast<std::uint64_t>(t & 0x0f)};
  if (t >= 0xc4 && t <= 0xc6) return {K::kBin, be(std::size_t{1} << (t - 0xc4)), 0};
  if (t >= 0xc7 && t <= 0xc9) return {K::kExt, be(std::size_t{1} << (t - 0xc7)) + 1, 0};
  if (t == 0xca) return {K::kScalar, 4, 0};
  if (t == 0xcb) return {K::kScalar, 8, 0};
  if (t >= 0xcc && t <= 0xd3) return {K::kScalar, std::uint64_t{1} << ((t - 0xcc) & 3), 0};
  if (t >= 0xd4 && t <= 0xd8) return {K::kExt, 1 + (std::uint64_t{1} << (t - 0xd4)), 0};
  if (t >= 0xd9 && t <= 0xdb) return {K::kStr, be(std::size_t{1} << (t - 0xd9)), 0};
  if (t == 0xdc || t == 0xdd) return {K::kArray, 0, be(t == 0xdc ? 2 : 4)};
  if (t == 0xde || t == 0xdf) return {K::kMap, 0, be(t == 0xde ? 2 : 4)};
  return {K::kInvalid, 0, 0};  // 0xc1, never used by msgpack
}

// The msgpack type of `o` as error messages name it: "unsigned integer", "str", "map", ...
inline const char* msgpack_type_name(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL:
      return "nil";
    case msgpack::type::BOOLEAN:
      return "bool";
    case msgpack::type::POSITIVE_INTEGER:
      return "unsigned integer";
    case msgpack::type::NEGATIVE_INTEGER:
      return "negative integer";
    case msgpack::type::FLOAT32:
      return "float32";
    case msgpack::type::FLOAT64:
      return "float64";
    case msgpack::type::STR:
      return "str";
    case msgpack::type::BIN:
      return "bin";
    case msgpack::type::ARRAY:
      return "array";
    case msgpack::type::MAP:
      return "map";
    case msgpack::type::EXT:
      return "ext";
  }
  return "unknown type";
}

}  // namespace lattice::crdt::detail
