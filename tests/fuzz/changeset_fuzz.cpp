// libFuzzer target for the changeset decoder (crdt/changeset_codec.hpp): any bytes either decode
// or raise lattice::Error, and whatever decodes must survive encoding and decoding again
// unchanged. Built only with -DLATTICE_FUZZ=ON under clang; see tests/fuzz/CMakeLists.txt.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"

namespace {

using lattice::crdt::Blob;
using lattice::crdt::Changeset;
using lattice::crdt::Value;

// Reals compared by their bits, so that a NaN equals itself: replaces each real by a blob.
Changeset with_reals_as_bits(Changeset cs) {
  auto fix = [](Value& v) {
    if (auto* d = std::get_if<double>(&v)) {
      v = Blob{"real:" + std::to_string(std::bit_cast<std::uint64_t>(*d))};
    }
  };
  for (auto& row : cs.rows) {
    for (auto& [column, value] : row.liveness_values) fix(value);
    for (auto& cell : row.cells) fix(cell.value);
  }
  return cs;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "changeset_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Changeset first;
  try {
    first = lattice::crdt::decode_changeset(bytes);
  } catch (const lattice::Error&) {
    return 0;  // refusing is fine; anything else escaping is a bug libFuzzer reports
  }
  const std::string encoded = lattice::crdt::encode_changeset(first);
  Changeset second;
  try {
    second = lattice::crdt::decode_changeset(encoded);
  } catch (const lattice::Error& e) {
    std::fprintf(stderr, "re-decoding failed: %s\n", e.what());
    die("a decoded changeset did not decode after re-encoding");
  }
  if (!(with_reals_as_bits(first) == with_reals_as_bits(second))) {
    die("a changeset changed through encoding and decoding");
  }
  if (lattice::crdt::encode_changeset(second) != encoded) die("encoding is not canonical");
  return 0;
}
