#pragma once
// A cell value as SQLite stores it: NULL, integer, real, text or blob.

#include <cstdint>
#include <string>
#include <variant>

namespace lattice::crdt {

struct Blob {
  std::string bytes;
  auto operator<=>(const Blob&) const = default;
};

using Value = std::variant<std::monostate, std::int64_t, double, std::string, Blob>;

// "null", "integer", "real", "text" or "blob".
const char* value_type_name(const Value& value);

}  // namespace lattice::crdt
