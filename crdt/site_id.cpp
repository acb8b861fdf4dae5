#include "crdt/site_id.hpp"

#include <algorithm>

#include "crdt/error.hpp"
#include "crdt/hex.hpp"

namespace lattice::crdt {
namespace {

// The offending text, shortened so that a hostile input cannot make the message huge.
std::string quoted(std::string_view text) {
  constexpr std::size_t kMaxShown = 64;
  std::string out = "\"";
  out.append(text.substr(0, kMaxShown));
  if (text.size() > kMaxShown) out.append("...");
  out.append("\"");
  return out;
}

}  // namespace

SiteId SiteId::from_hex(std::string_view hex) {
  if (hex.size() != 32) {
    throw Error(ErrorCode::kInvalidArgument, "site id " + quoted(hex) + " has " +
                                                 std::to_string(hex.size()) +
                                                 " characters; expected 32 hexadecimal digits");
  }
  SiteId id;
  for (std::size_t i = 0; i < 16; ++i) {
    const int hi = hex_digit(hex[2 * i]);
    const int lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      const std::size_t at = hi < 0 ? 2 * i : 2 * i + 1;
      throw Error(ErrorCode::kInvalidArgument, "site id " + quoted(hex) +
                                                   " has a non-hexadecimal character at offset " +
                                                   std::to_string(at));
    }
    id.bytes[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return id;
}

SiteId SiteId::from_bytes(std::string_view bytes) {
  SiteId id;
  if (bytes.size() != id.bytes.size()) {
    throw Error(ErrorCode::kCorrupt,
                "site id is " + std::to_string(bytes.size()) + " bytes long; expected 16");
  }
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(id.bytes.data()));
  return id;
}

std::string SiteId::to_hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

bool SiteId::is_nil() const {
  return std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; });
}

}  // namespace lattice::crdt
