// libFuzzer target for the frame decoder (transport/frame.hpp): any bytes either decode or raise
// lattice::Error, and whatever decodes must survive encoding and decoding again unchanged. Built
// only with -DLATTICE_FUZZ=ON under clang; see tests/fuzz/CMakeLists.txt.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "transport/frame.hpp"

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "frame_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  lattice::transport::Frame first;
  try {
    first = lattice::transport::decode_frame(bytes);
  } catch (const lattice::Error&) {
    return 0;  // refusing is fine; anything else escaping is a bug libFuzzer reports
  }
  const std::string encoded = lattice::transport::encode_frame(first);
  lattice::transport::Frame second;
  try {
    second = lattice::transport::decode_frame(encoded);
  } catch (const lattice::Error& e) {
    std::fprintf(stderr, "re-decoding failed: %s\n", e.what());
    die("a decoded frame did not decode after re-encoding");
  }
  if (!(first == second)) die("a frame changed through encoding and decoding");
  if (lattice::transport::encode_frame(second) != encoded) die("encoding is not canonical");
  return 0;
}
