#include "crdt/changeset.hpp"

namespace lattice::crdt {

const char* column_kind_name(ColumnKind kind) {
  switch (kind) {
    case ColumnKind::kLww:
      return "lww";
    case ColumnKind::kCounter:
      return "counter";
  }
  return "unknown";
}

std::size_t RowChange::change_count() const {
  const std::size_t n = liveness_values.size() + cells.size() + counters.size();
  // A bare liveness event (a delete, or an insert of a row with only key columns) is a change.
  if (n == 0 && liveness.has_value()) return 1;
  return n;
}

std::size_t Changeset::change_count() const {
  std::size_t n = 0;
  for (const RowChange& row : rows) n += row.change_count();
  return n;
}

const char* affinity_name(Affinity affinity) {
  switch (affinity) {
    case Affinity::kBlob:
      return "BLOB (none)";
    case Affinity::kText:
      return "TEXT";
    case Affinity::kNumeric:
      return "NUMERIC";
    case Affinity::kInteger:
      return "INTEGER";
    case Affinity::kReal:
      return "REAL";
  }
  return "?";
}

}  // namespace lattice::crdt
