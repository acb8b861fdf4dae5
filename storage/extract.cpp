// changes_since(): reading out of the metadata tables every change a peer lacks. Each metadata
// row carries the (site, seq) of the write it records, and each table has an index on it, so
// the cost follows what the peer lacks, not the size of the database.

#include <algorithm>
#include <limits>
#include <map>
#include <set>

#include "crdt/error.hpp"
#include "storage/detail/projection.hpp"
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

  // Every row of `t` with a write the holder lacks.
  void extract(TableInfo& t);
  // The rows of `t` named by `keys` (packed primary keys), each with every part the holder
  // lacks, unless already emitted. Returns the number of column changes added.
  std::size_t emit(TableInfo& t, const std::vector<std::string>& keys);

  // At most about `max_changes` of what the holder lacks, whole transactions in sequence order,
  // site by site. Returns the vector the extracted changes cover: `full` for the sites it
  // finished, the last whole transaction for the site it stopped in, the holder's elsewhere.
  crdt::VersionVector extract_limited(std::size_t max_changes, const crdt::VersionVector& full);

 private:
  // The statements that read one table's rows, kept for the connection's life
  // (Replica::Impl::cached); `values` is null for a future table, `future_values` without
  // future columns.
  struct Reader {
    std::vector<const ColumnInfo*> lww;  // the table's, then future ones
    std::size_t app_lww = 0;             // how many of them the table has
    Statement *row_meta = nullptr, *cell_meta = nullptr, *counter_meta = nullptr;
    Statement *values = nullptr, *future_values = nullptr;
  };
  Reader& reader(TableInfo& t);

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
  std::map<crdt::TableId, Reader> readers_;
  bool dedupe_ = false;  // rows may be named twice (extract_limited)
  std::set<std::pair<crdt::TableId, std::string>> emitted_;
};

void Extractor::extract(TableInfo& t) {
  const std::string rows = t.rows_table(), cells = t.cells_table(), counters = t.counters_table();

  // The rows with at least one write the holder lacks.
  std::vector<std::string> keys;
  const bool everything =
      std::all_of(thresholds_.begin(), thresholds_.end(), [](auto v) { return v == 0; });
  if (everything) {
    Statement& all = impl_.cached("SELECT pk FROM " + rows);
    while (all.step()) keys.emplace_back(all.column_blob(0));
  } else {
    for (const std::string& table : {rows, cells, counters}) {
      Statement& lacking = impl_.cached("SELECT pk FROM " + table + " WHERE site = ? AND seq > ?");
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
  emit(t, keys);
}

Extractor::Reader& Extractor::reader(TableInfo& t) {
  auto found = readers_.find(t.id);
  if (found != readers_.end()) return found->second;
  Reader r;
  std::string select_values = "SELECT ";
  for (const auto& c : t.columns) {
    if (t.future_table) break;  // no table here: every value is a future one
    if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
    select_values += std::string(r.lww.empty() ? "" : ", ") + quote_identifier(c.name);
    r.lww.push_back(&c);
  }
  if (r.lww.empty()) select_values += "1";
  select_values += " FROM " + quote_identifier(t.name) + " WHERE ";
  for (std::size_t i = 0; i < t.key_count; ++i)
    select_values += std::string(i ? " AND " : "") + quote_identifier(t.columns[i].name) + " = ?";
  r.row_meta = &impl_.cached("SELECT cl, hlc, site, seq FROM " + t.rows_table() + " WHERE pk = ?");
  r.cell_meta =
      &impl_.cached("SELECT col, cl, hlc, site, seq FROM " + t.cells_table() + " WHERE pk = ?");
  r.counter_meta = &impl_.cached("SELECT col, site, cl, seq, total FROM " + t.counters_table() +
                                 " WHERE pk = ? AND cl = ?");
  if (!t.future_table) r.values = &impl_.cached(select_values);
  // Future columns (a later schema version's) come after, their values from
  // lattice_future_values.
  r.app_lww = r.lww.size();
  for (const auto& c : t.future_columns)
    if (c.kind == crdt::ColumnKind::kLww) r.lww.push_back(&c);
  if (r.lww.size() > r.app_lww)
    r.future_values =
        &impl_.cached("SELECT col, value FROM lattice_future_values WHERE table_id = ? AND pk = ?");
  return readers_.emplace(t.id, std::move(r)).first->second;
}

std::size_t Extractor::emit(TableInfo& t, const std::vector<std::string>& keys) {
  Reader& r = reader(t);
  const auto& lww = r.lww;
  Statement& row_meta = *r.row_meta;
  Statement& cell_meta = *r.cell_meta;
  Statement& counter_meta = *r.counter_meta;
  std::size_t added = 0;

  for (const std::string& pk : keys) {
    if (dedupe_ && !emitted_.emplace(t.id, pk).second) continue;
    row_meta.reset();
    row_meta.bind_blob(1, pk);
    if (!row_meta.step()) continue;
    crdt::RowChange change;
    change.table = t.id;
    change.primary_key = pk;
    const auto cl = row_meta.column_int(0);
    const bool alive = cl % 2 == 1;
    const bool liveness_lacked = lacks(row_meta.column_int(2), row_meta.column_int(3));
    const std::int64_t row_site = row_meta.column_int(2);
    const auto row_seq = static_cast<std::uint64_t>(row_meta.column_int(3));
    if (liveness_lacked) change.liveness = stamp(row_meta, 0);
    row_meta.reset();

    if (alive) {
      std::vector<crdt::Value> current;
      Statement* values = r.values;  // null: a table this replica does not have yet
      if (values) {
        values->reset();
        const auto key = unpack_primary_key(pk, t.key_count);
        for (std::size_t i = 0; i < key.size(); ++i) values->bind(static_cast<int>(i + 1), key[i]);
      }
      if (!values) {
        // Nothing to read from a table this replica does not have yet.
      } else if (values->step()) {
        for (int i = 0; i < static_cast<int>(r.app_lww); ++i) current.push_back(values->column(i));
      } else if (auto held = Projection::held_values(impl_, t, pk)) {
        // Held out of its table by a constraint (docs/data-quality.md): its values travel all
        // the same, from lattice_held.
        for (std::size_t i = 0; i < r.app_lww; ++i)
          current.push_back((*held)[static_cast<std::size_t>(lww[i] - t.columns.data())]);
      } else {
        throw Error(ErrorCode::kInternal, "table '" + t.name + "' lacks row " +
                                              describe_primary_key(pk) +
                                              " that its metadata says is present");
      }
      if (values) values->reset();
      current.resize(lww.size());
      // A future column of which this replica received no value in this incarnation was never
      // written at the row's version (an insert made here, by a version without the column):
      // it goes without one, so that the row's version takes nothing from it.
      std::vector<bool> known(lww.size(), true);
      if (lww.size() > r.app_lww) {
        std::fill(known.begin() + static_cast<std::ptrdiff_t>(r.app_lww), known.end(), false);
        r.future_values->reset();
        r.future_values->bind(1, static_cast<std::int64_t>(t.id)).bind_blob(2, pk);
        while (r.future_values->step()) {
          const auto column = static_cast<crdt::ColumnId>(r.future_values->column_int(0));
          for (std::size_t i = r.app_lww; i < lww.size(); ++i)
            if (lww[i]->id == column) {
              current[i] = r.future_values->column(1);
              known[i] = true;
            }
        }
        r.future_values->reset();
      }

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
          if (!overridden[i] && known[i] && !lww[i]->predates(row_site, row_seq))
            change.liveness_values.emplace_back(lww[i]->id, current[i]);

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
    if (std::none_of(out_.tables.begin(), out_.tables.end(),
                     [&](const crdt::TableSchema& schema) { return schema.id == t.id; }))
      out_.tables.push_back(t.schema());
    added += change.change_count();
    out_.rows.push_back(std::move(change));
  }
  return added;
}

crdt::VersionVector Extractor::extract_limited(std::size_t max_changes,
                                               const crdt::VersionVector& full) {
  dedupe_ = true;
  crdt::VersionVector covered = holder_;
  std::size_t budget = std::max<std::size_t>(max_changes, 1);
  struct Entry {
    std::uint64_t seq;
    TableInfo* table;
    std::string pk;
  };
  for (std::size_t site = 0; site < impl_.sites.size() && budget > 0; ++site) {
    const crdt::SiteId& id = impl_.sites[site];
    const std::uint64_t top = full.get(id);
    std::uint64_t from = thresholds_[site];
    while (from < top && budget > 0) {
      // The next window of this site's writes from every metadata table, in sequence order. A
      // table that filled its limit may hold more of its last transaction: cut before it.
      std::vector<Entry> entries;
      std::uint64_t cut = top;
      auto gather = [&](const std::string& where, std::int64_t limit) {
        for (auto& [table_id, table] : impl_.tables) {
          for (const std::string& meta :
               {table->rows_table(), table->cells_table(), table->counters_table()}) {
            Statement& select =
                impl_.cached("SELECT seq, pk FROM " + meta + " WHERE site = ? AND " + where +
                             " ORDER BY seq LIMIT ?");
            select.bind(1, static_cast<std::int64_t>(site))
                .bind(2, static_cast<std::int64_t>(from))
                .bind(3, limit);
            std::int64_t got = 0;
            std::uint64_t last = 0;
            while (select.step()) {
              last = static_cast<std::uint64_t>(select.column_int(0));
              entries.push_back({last, table.get(), std::string(select.column_blob(1))});
              ++got;
            }
            if (got == limit) cut = std::min(cut, last - 1);
          }
        }
      };
      gather("seq > ?", static_cast<std::int64_t>(budget) + 1);
      if (cut <= from) {
        // One transaction alone is larger than the budget: it goes whole.
        cut = std::min_element(entries.begin(), entries.end(), [](auto& a, auto& b) {
                return a.seq < b.seq;
              })->seq;
        entries.clear();
        from = cut - 1;
        gather("seq = ? + 1", std::numeric_limits<std::int64_t>::max());
      }
      std::stable_sort(entries.begin(), entries.end(),
                       [](const Entry& a, const Entry& b) { return a.seq < b.seq; });
      for (const Entry& e : entries) {
        if (e.seq > cut) break;
        const std::size_t added = emit(*e.table, {e.pk});
        budget -= std::min(budget, added);
      }
      covered.advance(id, cut);
      from = cut;
    }
  }
  return covered;
}

}  // namespace

crdt::Changeset Replica::Impl::changes_since(const crdt::VersionVector& holder,
                                             std::size_t max_changes) {
  // Own writes no peer would accept, stamped by a clock that ran ahead, go out stamped again.
  recover_clock();
  refresh();
  crdt::Changeset out;
  out.since = holder;
  // One read transaction, so the vector and the rows describe the same moment.
  const bool own_transaction = sqlite3_get_autocommit(db) != 0;
  if (own_transaction) exec_sql(db, "BEGIN");
  try {
    out.until = version_vector();
    // Who writes it: this replica, with its latest own transactions (a copy of this file that
    // receives it can tell where their histories part).
    crdt::Origin origin;
    origin.site = site;
    Statement log(
        db, "SELECT seq, tag FROM lattice_local_log WHERE seq <= ? ORDER BY seq DESC LIMIT ?");
    log.bind(1, static_cast<std::int64_t>(out.until.get(site)))
        .bind(2, static_cast<std::int64_t>(crdt::Origin::kMaxLog));
    while (log.step())
      origin.log.insert(origin.log.begin(), {static_cast<std::uint64_t>(log.column_int(0)),
                                             static_cast<std::uint64_t>(log.column_int(1))});
    out.origin = std::move(origin);
    Extractor extractor(*this, holder, out);
    if (max_changes == 0) {
      for (auto& [id, table] : tables) extractor.extract(*table);
    } else {
      out.until = extractor.extract_limited(max_changes, out.until);
    }
    if (own_transaction) exec_sql(db, "COMMIT");
  } catch (...) {
    if (own_transaction) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return out;
}

}  // namespace lattice::storage
