#pragma once
// The key and clock hello_fuzz checks tokens with, shared with its seed writer so that some
// seeds carry tokens that verify and the fuzzer explores past the signature.

#include <cstdint>

namespace lattice::fuzz {

inline constexpr const char* kKeyName = "fuzz";
inline constexpr const char* kSecret = "0123456789abcdef0123456789abcdef";
inline constexpr std::int64_t kNow = 1'800'000'000;

}  // namespace lattice::fuzz
