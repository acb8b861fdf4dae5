// changes_since(): reading out of the metadata tables every change a peer lacks. Each metadata
// row carries the (site, seq) of the write it records, and each table has an index on it, so
// the cost follows what the peer lacks, not the size of the database.

#include <algorithm>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

class Extractor {
 public:
  Extractor(Replica::Impl& impl, const crdt::VersionVector& holder, crdt::Changeset& out)
      : impl_(impl), holder_(holder), out_(out) {
    thresholds_.reserve(impl.sites.size());
    for (const auto& id : impl.sites) thresholds_.push_back(holder.get(id));
    site_slots_.assign(impl.sites.size(), -1);
  }

  void extract(TableInfo& t);

 private:
  bool lacks(std::int64_t site, std::int64_t seq) const {
    return static_cast<std::uint64_t>(seq) > thresholds_.at(static_cast<std::size_t>(site));
  }
  std::uint32_t slot(std::int64_t site) {
    auto& s = site_slots_.at(static_cast<std::size_t>(site));
    if (s < 0) {
      s = static_cast<std::int64_t>(out_.sites.size());
      out_.sites.push_back(impl_.sites[static_cast<std::size_t>(site)]);
    }
    return static_cast<std::uint32_t>(s);
  }
  crdt::ChangeStamp stamp(const Statement& s, int first) {
    return crdt::ChangeStamp{static_cast<std::uint64_t>(s.column_int(first)),
                             crdt::Hlc{static_cast<std::uint64_t>(s.column_int(first + 1))},
                             slot(s.column_int(first + 2)),
                             static_cast<std::uint64_t>(s.column_int(first + 3))};
  }

  Replica::Impl& impl_;
  const crdt::VersionVector& holder_;
  crdt::Changeset& out_;
  std::vector<std::uint64_t> thresholds_;  // by local site index
  std::vector<std::int64_t> site_slots_;   // local site index -> index in out_.sites
};

void Extractor::extract(TableInfo& t) {
  sqlite3* db = impl_.db;
  const std::string rows = t.rows_table(), cells = t.cells_table(), counters = t.counters_table();

  // The rows with at least one write the holder lacks.
  std::vector<std::string> keys;
  const bool everything =
      std::all_of(thresholds_.begin(), thresholds_.end(), [](auto v) { return v == 0; });
  if (everything) {
    Statement all(db, "SELECT pk FROM " + rows);
    while (all.step()) keys.emplace_back(all.column_blob(0));
  } else {
    for (const std::string& table : {rows, cells, counters}) {
      Statement lacking(db, "SELECT pk FROM " + table + " WHERE site = ? AND seq > ?");
      for (std::size_t site = 0; site < thresholds_.size(); ++site) {
        lacking.reset();
        lacking.bind(1, static_cast<std::int64_t>(site))
            .bind(2, static_cast<std::int64_t>(thresholds_[site]));
        while (lacking.step()) keys.emplace_back(lacking.column_blob(0));
      }
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  }
  if (keys.empty()) return;

  std::vector<const ColumnInfo*> lww;
  std::string select_values = "SELECT ";
  for (const auto& c : t.columns) {
    if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
    select_values += std::string(lww.empty() ? "" : ", ") + quote_identifier(c.name);
    lww.push_back(&c);
  }
  if (lww.empty()) select_values += "1";
  select_values += " FROM " + quote_identifier(t.name) + " WHERE ";
  for (std::size_t i = 0; i < t.key_count; ++i)
    select_values += std::string(i ? " AND " : "") + quote_identifier(t.columns[i].name) + " = ?";

  Statement row_meta(db, "SELECT cl, hlc, site, seq FROM " + rows + " WHERE pk = ?");
  Statement cell_meta(db, "SELECT col, cl, hlc, site, seq FROM " + cells + " WHERE pk = ?");
  Statement counter_meta(
      db, "SELECT col, site, cl, seq, total FROM " + counters + " WHERE pk = ? AND cl = ?");
  Statement values(db, select_values);

  bool schema_added = false;
  for (const std::string& pk : keys) {
    row_meta.reset();
    row_meta.bind_blob(1, pk);
    if (!row_meta.step()) continue;
    crdt::RowChange change;
    change.table = t.id;
    change.primary_key = pk;
    const auto cl = row_meta.column_int(0);
    const bool alive = cl % 2 == 1;
    const bool liveness_lacked = lacks(row_meta.column_int(2), row_meta.column_int(3));
    if (liveness_lacked) change.liveness = stamp(row_meta, 0);
    row_meta.reset();

    if (alive) {
      std::vector<crdt::Value> current;
      values.reset();
      const auto key = unpack_primary_key(pk, t.key_count);
      for (std::size_t i = 0; i < key.size(); ++i) values.bind(static_cast<int>(i + 1), key[i]);
      if (!values.step())
        throw Error(ErrorCode::kInternal, "table '" + t.name + "' lacks row " +
                                              describe_primary_key(pk) +
                                              " that its metadata says is present");
      for (int i = 0; i < static_cast<int>(lww.size()); ++i) current.push_back(values.column(i));
      values.reset();

      std::vector<bool> overridden(lww.size(), false);
      cell_meta.reset();
      cell_meta.bind_blob(1, pk);
      while (cell_meta.step()) {
        const auto column = static_cast<crdt::ColumnId>(cell_meta.column_int(0));
        auto it = std::find_if(lww.begin(), lww.end(), [&](auto* c) { return c->id == column; });
        if (it == lww.end()) continue;
        const auto index = static_cast<std::size_t>(it - lww.begin());
        overridden[index] = true;
        if (cell_meta.column_int(1) != cl ||
            !lacks(cell_meta.column_int(3), cell_meta.column_int(4)))
          continue;
        change.cells.push_back(crdt::CellChange{column, stamp(cell_meta, 1), current[index]});
      }
      cell_meta.reset();
      if (liveness_lacked)
        for (std::size_t i = 0; i < lww.size(); ++i)
          if (!overridden[i]) change.liveness_values.emplace_back(lww[i]->id, current[i]);

      counter_meta.reset();
      counter_meta.bind_blob(1, pk).bind(2, cl);
      while (t.has_counters && counter_meta.step()) {
        if (!lacks(counter_meta.column_int(1), counter_meta.column_int(3))) continue;
        change.counters.push_back(crdt::CounterChange{
            static_cast<crdt::ColumnId>(counter_meta.column_int(0)),
            slot(counter_meta.column_int(1)),
            crdt::CounterPart{static_cast<std::uint64_t>(counter_meta.column_int(2)),
                              static_cast<std::uint64_t>(counter_meta.column_int(3)),
                              counter_meta.column_int(4)}});
      }
      counter_meta.reset();
    }
    if (!change.liveness && change.cells.empty() && change.counters.empty()) continue;
    if (!schema_added) {
      out_.tables.push_back(t.schema());
      schema_added = true;
    }
    out_.rows.push_back(std::move(change));
  }
}

}  // namespace

crdt::Changeset Replica::Impl::changes_since(const crdt::VersionVector& holder) {
  refresh();
  crdt::Changeset out;
  out.since = holder;
  // One read transaction, so the vector and the rows describe the same moment.
  const bool own_transaction = sqlite3_get_autocommit(db) != 0;
  if (own_transaction) exec_sql(db, "BEGIN");
  try {
    out.until = version_vector();
    Extractor extractor(*this, holder, out);
    for (auto& [id, table] : tables) extractor.extract(*table);
    if (own_transaction) exec_sql(db, "COMMIT");
  } catch (...) {
    if (own_transaction) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return out;
}

}  // namespace lattice::storage
