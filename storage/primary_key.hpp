#pragma once
// A row's primary key packed into bytes: the identity of a row in clocks, in the change log and
// on the wire. The packing is a msgpack array of the key's values, one per key column in key
// order (docs/changeset-format.md), so equal keys pack to equal bytes on every replica.

#include <sqlite3.h>

#include <string>
#include <string_view>
#include <vector>

#include "crdt/value.hpp"

namespace lattice::storage {

std::string pack_primary_key(const std::vector<crdt::Value>& values);

// The same packing, straight from SQL function arguments, into `out` (replaced).
void pack_primary_key_values(int argc, sqlite3_value** argv, std::string& out);

// Unpacks bytes made by pack_primary_key. Throws Error(kCorrupt) naming the problem when the
// bytes are not such a key or hold `expected_columns` values of another count.
std::vector<crdt::Value> unpack_primary_key(std::string_view packed, std::size_t expected_columns);

// Any list of values packed the same way, except that -0.0 keeps its sign (keys pack it as 0.0,
// which SQLite takes for the same key); unpack_values allows NULLs. A held row's values.
std::string pack_values(const std::vector<crdt::Value>& values);
std::vector<crdt::Value> unpack_values(std::string_view packed, std::size_t expected_columns);
std::vector<crdt::Value> unpack_value_list(std::string_view packed);  // any count

// A readable form for error messages: ('a', 3).
std::string describe_primary_key(std::string_view packed);

}  // namespace lattice::storage
