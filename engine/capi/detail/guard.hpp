#pragma once
// The one try/catch of the C API: every entry point in engine/capi/lattice_c.cpp runs its body
// through guard(), so no C++ exception crosses the C ABI and every failure reaches the caller as
// a code plus a message in its lattice_error. Not part of the public interface.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string_view>

#include "crdt/error.hpp"
#include "lattice/lattice.h"

namespace lattice::capi {

// Fills `error` (when not NULL) with `code` and `message`, cut to fit at a UTF-8 character
// boundary, and returns `code`.
inline lattice_code fail(lattice_error* error, ErrorCode code, std::string_view message) noexcept {
  if (error) {
    error->code = static_cast<lattice_code>(code);
    std::size_t n = message.size();
    if (n >= sizeof error->message) {
      n = sizeof error->message - 1;
      // Never end on half a multi-byte character: step back over continuation bytes.
      while (n > 0 && (static_cast<unsigned char>(message[n]) & 0xC0) == 0x80) --n;
    }
    std::memcpy(error->message, message.data(), n);
    error->message[n] = '\0';
  }
  return static_cast<lattice_code>(code);
}

// Runs `body`; returns LATTICE_OK, or the code of what it threw after filling `error`.
template <class Body>
lattice_code guard(lattice_error* error, Body&& body) noexcept {
  try {
    body();
    return LATTICE_OK;
  } catch (const Error& e) {
    return fail(error, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    return fail(error, ErrorCode::kInternal, "out of memory");
  } catch (const std::exception& e) {
    return fail(error, ErrorCode::kInternal, e.what());
  } catch (...) {
    return fail(error, ErrorCode::kInternal, "an unknown C++ exception");
  }
}

// An OWNED lattice_buffer holding a copy of `bytes` plus a NUL byte.
inline lattice_buffer make_buffer(std::string_view bytes) {
  auto* data = static_cast<std::uint8_t*>(std::malloc(bytes.size() + 1));
  if (!data) throw std::bad_alloc();
  if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
  data[bytes.size()] = 0;
  return lattice_buffer{data, bytes.size()};
}

}  // namespace lattice::capi
