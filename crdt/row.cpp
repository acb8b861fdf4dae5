#include "crdt/row.hpp"

#include <algorithm>

namespace lattice::crdt {

// The rule (docs/crdt-semantics.md, "Rows"):
//
//   1. liveness = the greater of the two liveness versions;
//   2. cells: per column, the last-writer-wins merge (union of the columns);
//      counters: per column, the per-site merge (union of the columns);
//   3. let k be the greatest causal length of any merged cell version or counter part. If k is
//      greater than liveness.causal_length, liveness becomes CellVersion{k, Stamp{}}.
//
// Step 3 covers a replica that receives a write to incarnation k before the insert that
// started it: the write proves that incarnation exists, so the row takes causal length k.
// The raised liveness carries the least possible stamp, not the stamp of the write that raised
// it, because it stands for "incarnation k, liveness event not yet seen": the real insert of
// incarnation k, whenever it arrives, has a greater stamp and replaces it.
//
// Taking the cell's own stamp instead would break associativity. With a = {liveness cl 1,
// cell (3, t9)} and c = {liveness (3, t5)}, merging c into a gives liveness (3, t5) (no
// cell is above 3), but merging a with an empty state first raises a to (3, t9), which then
// beats (3, t5). With Stamp{} the raised version loses every tie of causal length to a real
// event, so the result is the same in every grouping: liveness is the greatest liveness event
// when its causal length is at least k, and {k, Stamp{}} otherwise.
//
// Idempotence holds for every state a merge produces (no cell or counter part above liveness).
// A hand-built state that breaks that invariant is normalised by its first merge.
void RowState::merge(const RowState& other) {
  if (other.liveness > liveness) liveness = other.liveness;

  for (const auto& [column, cell] : other.cells) {
    auto [it, inserted] = cells.try_emplace(column, cell);
    if (!inserted) it->second.merge(cell);
  }
  for (const auto& [column, counter] : other.counters) {
    auto [it, inserted] = counters.try_emplace(column, counter);
    if (!inserted) it->second.merge(counter);
  }

  std::uint64_t newest = 0;
  for (const auto& [column, cell] : cells) {
    newest = std::max(newest, cell.version.causal_length);
  }
  for (const auto& [column, counter] : counters) {
    for (const auto& [site, part] : counter.parts()) newest = std::max(newest, part.causal_length);
  }
  if (newest > liveness.causal_length) liveness = CellVersion{newest, Stamp{}};
}

}  // namespace lattice::crdt
