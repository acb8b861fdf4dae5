#pragma once
// The whole replicated state of one row, as a pure value: the reference model of what storage/
// keeps in SQLite. Used by the law tests and as the specification storage is tested against.

#include <cstdint>
#include <map>

#include "crdt/registers.hpp"

namespace lattice::crdt {

using ColumnId = std::uint32_t;
using TableId = std::uint32_t;

struct RowState {
  // Version of the latest liveness event (insert or delete) or of the newest write that moved
  // the row into a newer incarnation. Its causal_length is the row's causal length.
  CellVersion liveness;
  std::map<ColumnId, LwwRegister<Value>> cells;
  std::map<ColumnId, PnCounter> counters;

  bool alive() const { return CausalLength{liveness.causal_length}.alive(); }
  std::uint64_t causal_length() const { return liveness.causal_length; }

  // Join of two states of the same row. Commutative, associative and idempotent.
  void merge(const RowState& other);

  bool operator==(const RowState&) const = default;
};

}  // namespace lattice::crdt
