#pragma once
// The bounds every import holds a file to (docs/import-export.md, "Limits"), and where the
// readers get their bytes.

#include <cstddef>
#include <cstdint>
#include <functional>

namespace lattice::engine {

// What an import reads at most. A file over max_file_bytes or with more than max_records
// records is refused as a whole, before anything is written; a record over the others is
// refused on its own. In a JSON array file, a record nested deeper than max_depth refuses the
// file as a whole: the parser cannot tell where such a record ends.
struct ReadLimits {
  std::uint64_t max_file_bytes = std::uint64_t{16} << 30;  // 16 GiB
  std::uint64_t max_records = 100'000'000;
  std::size_t max_record_bytes = std::size_t{64} << 20;  // a CSV record, a JSON line or element
  std::size_t max_field_bytes = std::size_t{16} << 20;   // a CSV field
  std::size_t max_fields = 2000;                         // fields of a CSV record
  std::size_t max_depth = 32;                            // JSON nesting within a record
};

// Where a reader's bytes come from: fills at most `size` bytes of `buffer` and returns how many,
// 0 at the end. Throws Error(kIo) when reading fails.
using ByteSource = std::function<std::size_t(char* buffer, std::size_t size)>;

}  // namespace lattice::engine
