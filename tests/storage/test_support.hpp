#pragma once
// Helpers shared by the storage tests: a replica with a todo table, and dumps of a replica's
// contents for "identical" and "unchanged" assertions.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "storage/replica.hpp"

namespace lattice::test {

// CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER, votes INTEGER NOT NULL
// DEFAULT 0), replicated with votes as a counter.
constexpr const char* kTodoSchema =
    "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER NOT NULL DEFAULT 0, "
    "votes INTEGER NOT NULL DEFAULT 0);"
    "SELECT lattice_replicate('todo', '{\"votes\":\"counter\"}');";

// A fresh in-memory replica (or at `path`) with the todo table replicated.
std::unique_ptr<storage::Replica> open_todo_replica(const std::string& path = ":memory:",
                                                    storage::ReplicaOptions options = {});

// A value with its type, e.g. "int:1", "text:a", "null".
std::string typed(const crdt::Value& value);

// The rows `sql` returns, one line per row of typed values.
std::string dump_query(storage::Replica& replica, const std::string& sql);

// Every row of `table`, ordered by primary key, one line per row (typed values, so 1 and '1'
// differ).
std::string dump_table(storage::Replica& replica, const std::string& table);

// Every row of every table in the file, the lattice_* metadata included: equal dumps mean the
// replica did not change at all.
std::string dump_everything(storage::Replica& replica);

// A new directory under the system's temporary directory, removed with everything in it when
// the object goes.
struct TempDir {
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::filesystem::path path;
};

// The value of the environment variable LATTICE_SEED, or `fallback`.
std::uint64_t seed_from_env(std::uint64_t fallback);

// `n` operations of a random property test scaled by LATTICE_PROPERTY_SCALE (a factor, 1 when
// unset; the sanitizer trees run a quarter: their memory checks need the code paths, not the
// volume), at least 1.
std::size_t scaled(std::size_t n);

}  // namespace lattice::test
