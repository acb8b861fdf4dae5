// Random names for the relay's files and for itself in a cluster: `bytes` bytes from
// std::random_device, as lowercase hexadecimal digits.

#ifndef LATTICE_RELAY_DETAIL_RANDOM_HEX_HPP
#define LATTICE_RELAY_DETAIL_RANDOM_HEX_HPP

#include <cstddef>
#include <random>
#include <string>

namespace lattice::relay::detail {

inline std::string random_hex(std::size_t bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::random_device entropy;
  std::string out;
  out.reserve(2 * bytes);
  for (std::size_t i = 0; i < bytes; ++i) {
    const auto byte = static_cast<unsigned>(entropy() & 0xff);
    out += kDigits[byte >> 4];
    out += kDigits[byte & 0xf];
  }
  return out;
}

}  // namespace lattice::relay::detail

#endif  // LATTICE_RELAY_DETAIL_RANDOM_HEX_HPP
