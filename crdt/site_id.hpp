#pragma once
// A site id names one replica (one device's database file) for ever: 128 random bits.

#include <array>
#include <compare>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

namespace lattice::crdt {

// A value type. Ordered by its bytes, which is the tie-break order of last-writer-wins.
struct SiteId {
  std::array<std::uint8_t, 16> bytes{};

  // A fresh id from `rng`, which the caller seeds from a real entropy source.
  template <std::uniform_random_bit_generator Rng>
  static SiteId random(Rng& rng) {
    SiteId id;
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : id.bytes) b = static_cast<std::uint8_t>(byte(rng));
    return id;
  }

  // Parses 32 hexadecimal digits. Throws Error(kInvalidArgument) naming the text otherwise.
  static SiteId from_hex(std::string_view hex);
  // Builds an id from exactly 16 bytes. Throws Error(kCorrupt) on any other length.
  static SiteId from_bytes(std::string_view bytes);

  // 32 lower-case hexadecimal digits.
  std::string to_hex() const;
  std::string_view as_bytes() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  bool is_nil() const;

  auto operator<=>(const SiteId&) const = default;
};

}  // namespace lattice::crdt
