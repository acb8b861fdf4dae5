// apply(): merging a changeset into the replica in one transaction. The rules are crdt/'s
// (CellVersion, CounterPart, causal length); this file only loads a row's metadata, applies
// those rules, and writes back what changed. docs/crdt-semantics.md states the rules.

#include <algorithm>
#include <set>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

// A write's version plus where it came from, as stored in the metadata tables.
struct Entry {
  crdt::CellVersion version;
  std::int64_t site = -1;  // local site index
  std::uint64_t seq = 0;
  bool same_write(const Entry& other) const {
    return version == other.version && site == other.site && seq == other.seq;
  }
};

struct Part {
  crdt::CounterPart part;
  bool changed = false;
};

class RowMerger {
 public:
  RowMerger(Replica::Impl& impl, TableInfo& table, const std::vector<std::int64_t>& site_map,
            const crdt::Changeset& changeset)
      : impl_(impl), t_(table), site_map_(site_map), changeset_(changeset) {}

  // Merges one row; returns the number of incoming column changes that won.
  std::size_t merge(const crdt::RowChange& change, std::vector<ChangeEvent>& events);

 private:
  // HLC 0 marks "no stamp": a liveness placeholder or a never-written column (crdt/row.hpp).
  // No real write has it, so it is stored and sent as such and read back as the empty stamp.
  static crdt::Stamp stamp_of(crdt::Hlc hlc, const crdt::SiteId& site) {
    return hlc.value == 0 ? crdt::Stamp{} : crdt::Stamp{hlc, site};
  }
  Entry entry_of(const crdt::ChangeStamp& stamp) const {
    return Entry{{stamp.causal_length, stamp_of(stamp.hlc, changeset_.sites[stamp.site])},
                 site_map_[stamp.site],
                 stamp.seq};
  }
  Entry entry_from(const Statement& s, int first) const {
    const auto site = s.column_int(first + 2);
    return Entry{{static_cast<std::uint64_t>(s.column_int(first)),
                  stamp_of(crdt::Hlc{static_cast<std::uint64_t>(s.column_int(first + 1))},
                           impl_.sites.at(static_cast<std::size_t>(site)))},
                 site,
                 static_cast<std::uint64_t>(s.column_int(first + 3))};
  }
  const ColumnInfo& column_of(crdt::ColumnId id, crdt::ColumnKind kind) const;
  void prepare();
  void write_user_row(const std::vector<crdt::Value>& key, bool insert,
                      const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& values);

  Replica::Impl& impl_;
  TableInfo& t_;
  const std::vector<std::int64_t>& site_map_;
  const crdt::Changeset& changeset_;
};

const ColumnInfo& RowMerger::column_of(crdt::ColumnId id, crdt::ColumnKind kind) const {
  const ColumnInfo* c = t_.column(id);
  if (!c || c->key_position)
    throw Error(ErrorCode::kUnknownColumn, "changeset writes column id " + std::to_string(id) +
                                               " of table '" + t_.name +
                                               "', which has no such replicated column");
  if (c->kind != kind)
    throw Error(ErrorCode::kTypeMismatch, "changeset writes column '" + t_.name + "." + c->name +
                                              "' as a " + crdt::column_kind_name(kind) +
                                              " column, but it is a " +
                                              crdt::column_kind_name(c->kind) + " column here");
  return *c;
}

void RowMerger::prepare() {
  if (t_.select_row) return;
  sqlite3* db = impl_.db;
  const std::string rows = t_.rows_table(), cells = t_.cells_table(),
                    counters = t_.counters_table();
  t_.select_row = Statement(db, "SELECT cl, hlc, site, seq FROM " + rows + " WHERE pk = ?");
  t_.select_cells = Statement(db, "SELECT col, cl, hlc, site, seq FROM " + cells + " WHERE pk = ?");
  t_.select_counters =
      Statement(db, "SELECT col, site, cl, seq, total FROM " + counters + " WHERE pk = ?");
  t_.upsert_row = Statement(db, "INSERT OR REPLACE INTO " + rows + " VALUES (?, ?, ?, ?, ?)");
  t_.upsert_cell = Statement(db, "INSERT OR REPLACE INTO " + cells + " VALUES (?, ?, ?, ?, ?, ?)");
  t_.delete_cell = Statement(db, "DELETE FROM " + cells + " WHERE pk = ? AND col = ?");
  t_.upsert_counter =
      Statement(db, "INSERT OR REPLACE INTO " + counters + " VALUES (?, ?, ?, ?, ?, ?)");
  std::string where;
  for (std::size_t i = 0; i < t_.key_count; ++i)
    where += std::string(i ? " AND " : "") + quote_identifier(t_.columns[i].name) + " = ?";
  t_.delete_user_row =
      Statement(db, "DELETE FROM " + quote_identifier(t_.name) + " WHERE " + where);
}

void RowMerger::write_user_row(
    const std::vector<crdt::Value>& key, bool insert,
    const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& values) {
  if (!insert && values.empty()) return;
  std::string cache_key = insert ? "i" : "u";
  for (const auto& [c, v] : values) cache_key += ":" + std::to_string(c->id);
  auto it = t_.write_user_row.find(cache_key);
  if (it == t_.write_user_row.end()) {
    const std::string table = quote_identifier(t_.name);
    std::string sql;
    if (insert) {
      std::string names, marks, updates, keys;
      for (std::size_t i = 0; i < t_.key_count; ++i) {
        names += std::string(i ? ", " : "") + quote_identifier(t_.columns[i].name);
        marks += std::string(i ? ", " : "") + "?";
      }
      keys = names;
      for (const auto& [c, v] : values) {
        names += ", " + quote_identifier(c->name);
        marks += ", ?";
        updates += std::string(updates.empty() ? "" : ", ") + quote_identifier(c->name) +
                   " = excluded." + quote_identifier(c->name);
      }
      sql = "INSERT INTO " + table + "(" + names + ") VALUES (" + marks + ") ON CONFLICT(" + keys +
            ") DO " + (updates.empty() ? "NOTHING" : "UPDATE SET " + updates);
    } else {
      std::string sets, where;
      for (const auto& [c, v] : values)
        sets += std::string(sets.empty() ? "" : ", ") + quote_identifier(c->name) + " = ?";
      for (std::size_t i = 0; i < t_.key_count; ++i)
        where += std::string(i ? " AND " : "") + quote_identifier(t_.columns[i].name) + " = ?";
      sql = "UPDATE " + table + " SET " + sets + " WHERE " + where;
    }
    it = t_.write_user_row.emplace(cache_key, Statement(impl_.db, sql)).first;
  }
  Statement& s = it->second;
  s.reset();
  int index = 1;
  if (insert)
    for (const auto& k : key) s.bind(index++, k);
  for (const auto& [c, v] : values) s.bind(index++, v);
  if (!insert)
    for (const auto& k : key) s.bind(index++, k);
  s.run();
}

std::size_t RowMerger::merge(const crdt::RowChange& change, std::vector<ChangeEvent>& events) {
  prepare();
  const std::string& pk = change.primary_key;
  const std::vector<crdt::Value> key = unpack_primary_key(pk, t_.key_count);

  // Load what this replica knows of the row.
  std::optional<Entry> stored_row;
  t_.select_row.reset();
  t_.select_row.bind_blob(1, pk);
  if (t_.select_row.step()) stored_row = entry_from(t_.select_row, 0);
  t_.select_row.reset();
  // A column never written has the least version there is; it is stored like any other
  // (cl 0, no stamp, seq 0), so it never counts as written by the row's version.
  const Entry never_written{{0, crdt::Stamp{}}, 0, 0};
  Entry row = stored_row.value_or(never_written);

  std::map<crdt::ColumnId, Entry> stored_cells;
  t_.select_cells.reset();
  t_.select_cells.bind_blob(1, pk);
  while (t_.select_cells.step())
    stored_cells[static_cast<crdt::ColumnId>(t_.select_cells.column_int(0))] =
        entry_from(t_.select_cells, 1);
  t_.select_cells.reset();

  std::map<std::pair<crdt::ColumnId, std::int64_t>, Part> parts;
  t_.select_counters.reset();
  t_.select_counters.bind_blob(1, pk);
  while (t_.has_counters && t_.select_counters.step()) {
    auto& s = t_.select_counters;
    parts[{static_cast<crdt::ColumnId>(s.column_int(0)), s.column_int(1)}] =
        Part{{static_cast<std::uint64_t>(s.column_int(2)),
              static_cast<std::uint64_t>(s.column_int(3)), s.column_int(4)},
             false};
  }
  t_.select_counters.reset();

  // Every last-writer-wins column's current version: its own override, else the row's.
  std::map<crdt::ColumnId, Entry> cells;
  for (const auto& c : t_.columns) {
    if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
    auto it = stored_cells.find(c.id);
    cells[c.id] = it != stored_cells.end() ? it->second : row;
  }

  std::size_t applied = 0;
  bool row_won = false;
  std::map<crdt::ColumnId, crdt::Value> new_values;
  std::set<crdt::ColumnId> touched_counters;
  auto offer_cell = [&](crdt::ColumnId column, const Entry& incoming, const crdt::Value& value) {
    column_of(column, crdt::ColumnKind::kLww);
    Entry& current = cells[column];
    if (incoming.version > current.version) {
      current = incoming;
      new_values[column] = value;
      ++applied;
    }
  };

  if (change.liveness) {
    const Entry incoming = entry_of(*change.liveness);
    if (incoming.version > row.version) {
      row = incoming;
      row_won = true;
      if (change.liveness_values.empty()) ++applied;
    }
    for (const auto& [column, value] : change.liveness_values) offer_cell(column, incoming, value);
  }
  for (const auto& cell : change.cells) offer_cell(cell.column, entry_of(cell.stamp), cell.value);
  for (const auto& counter : change.counters) {
    column_of(counter.column, crdt::ColumnKind::kCounter);
    Part& local = parts[{counter.column, site_map_[counter.site]}];
    if (counter.part.newer_than(local.part)) {
      local = Part{counter.part, true};
      touched_counters.insert(counter.column);
      ++applied;
    }
  }
  if (applied == 0 && !row_won) return 0;

  // A write to a newer incarnation means the row lives in that incarnation: the liveness
  // becomes a placeholder (k, no stamp) that the incarnation's insert replaces when it arrives
  // (the rule of crdt::RowState::merge). It keeps the (site, seq) of the write that raised it,
  // which is what changes_since compares with a peer's vector.
  auto raise = [&](std::uint64_t causal_length, std::int64_t site, std::uint64_t seq) {
    if (causal_length > row.version.causal_length)
      row = Entry{{causal_length, crdt::Stamp{}}, site, seq};
  };
  for (const auto& [column, entry] : cells)
    raise(entry.version.causal_length, entry.site, entry.seq);
  for (const auto& [id, part] : parts) raise(part.part.causal_length, id.second, part.part.seq);

  // Write back the metadata: the row's version, and an override for every column whose version
  // is not the row's.
  const bool row_changed = !stored_row || !stored_row->same_write(row);
  if (row_changed) {
    t_.upsert_row.reset();
    t_.upsert_row.bind_blob(1, pk)
        .bind(2, static_cast<std::int64_t>(row.version.causal_length))
        .bind(3, static_cast<std::int64_t>(row.version.stamp.hlc.value))
        .bind(4, row.site)
        .bind(5, static_cast<std::int64_t>(row.seq));
    t_.upsert_row.run();
  }
  for (const auto& [column, entry] : cells) {
    auto stored = stored_cells.find(column);
    if (entry.same_write(row)) {
      if (stored != stored_cells.end()) {
        t_.delete_cell.reset();
        t_.delete_cell.bind_blob(1, pk).bind(2, static_cast<std::int64_t>(column));
        t_.delete_cell.run();
      }
    } else if (stored == stored_cells.end() || !stored->second.same_write(entry)) {
      t_.upsert_cell.reset();
      t_.upsert_cell.bind_blob(1, pk)
          .bind(2, static_cast<std::int64_t>(column))
          .bind(3, static_cast<std::int64_t>(entry.version.causal_length))
          .bind(4, static_cast<std::int64_t>(entry.version.stamp.hlc.value))
          .bind(5, entry.site)
          .bind(6, static_cast<std::int64_t>(entry.seq));
      t_.upsert_cell.run();
    }
  }
  for (const auto& [id, part] : parts) {
    if (!part.changed) continue;
    t_.upsert_counter.reset();
    t_.upsert_counter.bind_blob(1, pk)
        .bind(2, static_cast<std::int64_t>(id.first))
        .bind(3, id.second)
        .bind(4, static_cast<std::int64_t>(part.part.causal_length))
        .bind(5, static_cast<std::int64_t>(part.part.seq))
        .bind(6, part.part.total);
    t_.upsert_counter.run();
  }

  // Then the application's row.
  const bool was_alive =
      stored_row && crdt::CausalLength{stored_row->version.causal_length}.alive();
  const bool alive = crdt::CausalLength{row.version.causal_length}.alive();
  const bool new_incarnation =
      !stored_row || stored_row->version.causal_length != row.version.causal_length;
  ChangeEvent event;
  event.origin = ChangeEvent::Origin::kMerged;
  event.table = t_.name;
  event.primary_key = key;
  if (alive) {
    std::vector<std::pair<const ColumnInfo*, crdt::Value>> values;
    for (const auto& c : t_.columns) {
      if (c.key_position) continue;
      if (c.kind == crdt::ColumnKind::kLww) {
        auto it = new_values.find(c.id);
        if (it != new_values.end()) values.emplace_back(&c, it->second);
      } else if (new_incarnation || touched_counters.count(c.id)) {
        std::int64_t sum = 0;
        for (const auto& [id, part] : parts)
          if (id.first == c.id && part.part.causal_length == row.version.causal_length)
            sum += part.part.total;
        values.emplace_back(&c, sum);
      }
    }
    for (const auto& [c, v] : values) event.columns.push_back(c->name);
    write_user_row(key, !was_alive, values);
  } else if (was_alive) {
    t_.delete_user_row.reset();
    for (std::size_t i = 0; i < key.size(); ++i)
      t_.delete_user_row.bind(static_cast<int>(i + 1), key[i]);
    t_.delete_user_row.run();
    event.deleted = true;
  }
  if ((alive || was_alive) && !impl_.listeners.empty()) events.push_back(std::move(event));
  return applied;
}

}  // namespace

ApplyResult Replica::Impl::apply(const crdt::Changeset& changeset, const OriginTxns* origin) {
  if (!sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "apply cannot run inside an open transaction; commit first");
  if (changeset.format_version > crdt::Changeset::kFormatVersion)
    throw Error(ErrorCode::kUnsupportedVersion,
                "changeset format " + std::to_string(changeset.format_version) +
                    " is newer than this build reads (" +
                    std::to_string(crdt::Changeset::kFormatVersion) + ")");
  refresh();

  // Everything that can be checked without writing is checked before the transaction starts.
  for (const auto& schema : changeset.tables) {
    auto it = tables.find(schema.id);
    if (it == tables.end())
      throw Error(ErrorCode::kUnknownTable, "changeset has changes of table '" + schema.name +
                                                "' (id " + std::to_string(schema.id) +
                                                "), which this replica does not replicate");
    const TableInfo& local = *it->second;
    if (lower_case(local.name) != lower_case(schema.name))
      throw Error(ErrorCode::kSchema, "changeset table id " + std::to_string(schema.id) +
                                          " is named '" + schema.name + "', here '" + local.name +
                                          "'");
    for (const auto& column : schema.columns) {
      const ColumnInfo* c = local.column(column.id);
      if (!c || lower_case(c->name) != lower_case(column.name))
        throw Error(ErrorCode::kUnknownColumn,
                    "changeset has column '" + schema.name + "." + column.name + "' (id " +
                        std::to_string(column.id) + "), which this replica's table lacks");
      if (c->kind != column.kind)
        throw Error(ErrorCode::kTypeMismatch,
                    "column '" + local.name + "." + c->name + "' is a " +
                        crdt::column_kind_name(c->kind) + " column here but a " +
                        crdt::column_kind_name(column.kind) + " column in the changeset");
    }
  }
  crdt::Hlc newest;
  auto check_stamp = [&](const crdt::ChangeStamp& stamp) {
    if (stamp.site >= changeset.sites.size())
      throw Error(ErrorCode::kCorrupt, "changeset names site index " + std::to_string(stamp.site) +
                                           " of " + std::to_string(changeset.sites.size()));
    newest = std::max(newest, stamp.hlc);
  };
  for (const auto& row : changeset.rows) {
    if (!tables.count(row.table))
      throw Error(ErrorCode::kUnknownTable, "changeset has changes of table id " +
                                                std::to_string(row.table) +
                                                ", which this replica does not replicate");
    if (row.liveness) check_stamp(*row.liveness);
    for (const auto& cell : row.cells) check_stamp(cell.stamp);
    for (const auto& counter : row.counters)
      if (counter.site >= changeset.sites.size())
        throw Error(ErrorCode::kCorrupt, "changeset names site index " +
                                             std::to_string(counter.site) + " of " +
                                             std::to_string(changeset.sites.size()));
  }
  clock.check_drift(newest);

  ApplyResult result;
  result.received = changeset.change_count();
  std::vector<ChangeEvent> events;
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    CaptureSuspended suspended(*this);
    std::vector<std::int64_t> site_map;
    site_map.reserve(changeset.sites.size());
    for (const auto& id : changeset.sites) site_map.push_back(local_site_index(id));
    for (const auto& row : changeset.rows) {
      RowMerger merger(*this, *tables.at(row.table), site_map, changeset);
      result.applied += merger.merge(row, events);
    }
    // The changeset brings everything its sender held in `until`, provided we already held
    // what it assumed we hold (`since`).
    const crdt::VersionVector held = version_vector();
    if (held.dominates(changeset.since)) {
      Statement raise_site(db, "UPDATE lattice_sites SET seq = max(seq, ?) WHERE idx = ?");
      for (const auto& [id, seq] : changeset.until.entries()) {
        if (seq <= held.get(id)) continue;
        if (id == site) {
          Statement raise_local(db, "UPDATE lattice_local SET seq = max(seq, ?) WHERE id = 0");
          raise_local.bind(1, static_cast<std::int64_t>(seq)).run();
        } else {
          raise_site.reset();
          raise_site.bind(1, static_cast<std::int64_t>(seq)).bind(2, local_site_index(id));
          raise_site.run();
        }
      }
    }
    if (origin && !origin->txns.empty()) {
      Statement record(db,
                       "INSERT OR IGNORE INTO lattice_origin_log(site, seq, tag) VALUES (?, ?, ?)");
      for (const TxnTag& txn : origin->txns) {
        record.reset();
        record.bind_blob(1, origin->site.as_bytes())
            .bind(2, static_cast<std::int64_t>(txn.seq))
            .bind(3, static_cast<std::int64_t>(txn.tag));
        record.run();
      }
    }
    Statement keep_clock(db, "UPDATE lattice_local SET hlc = max(hlc, ?) WHERE id = 0");
    keep_clock.bind(1, static_cast<std::int64_t>(newest.value)).run();
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    load_sites();
    throw;
  }
  clock.observe(newest);
  pending_events.insert(pending_events.end(), std::make_move_iterator(events.begin()),
                        std::make_move_iterator(events.end()));
  deliver_events();
  return result;
}

}  // namespace lattice::storage
