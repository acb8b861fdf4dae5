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
  // Version of the latest liveness event (insert or delete). Its causal_length is the row's
  // causal length. When a cell or counter write of a newer incarnation arrives before the insert
  // that started it, this is the placeholder {that causal length, Stamp{}}, which the insert
  // replaces when it arrives (docs/crdt-semantics.md, "A write that arrives before its insert").
  CellVersion liveness;
  std::map<ColumnId, LwwRegister<Value>> cells;
  std::map<ColumnId, PnCounter> counters;

  bool alive() const { return CausalLength{liveness.causal_length}.alive(); }
  std::uint64_t causal_length() const { return liveness.causal_length; }

  // Join of two states of the same row. Commutative and associative; idempotent on every state
  // a merge produces (no cell or counter part of a causal length above liveness's): a state
  // built by hand without that invariant is normalised by its first merge.
  void merge(const RowState& other);

  bool operator==(const RowState&) const = default;
};

}  // namespace lattice::crdt
