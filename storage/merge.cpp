// apply(): merging a changeset into the replica in one transaction. The rules are crdt/'s
// (CellVersion, CounterPart, causal length); this file only loads a row's metadata, applies
// those rules, and writes back what changed. docs/crdt-semantics.md states the rules.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "storage/detail/projection.hpp"
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
            const crdt::Changeset& changeset, Projection& projection)
      : impl_(impl),
        t_(table),
        site_map_(site_map),
        changeset_(changeset),
        projection_(projection) {}

  // Merges one row; returns the number of incoming column changes that won.
  std::size_t merge(const crdt::RowChange& change);

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

  // The steps of merge(), in order.
  void load(const std::string& pk);
  void offer(const crdt::RowChange& change);
  void raise_liveness();
  void write_metadata(const std::string& pk);
  void place(const crdt::RowChange& change, std::vector<crdt::Value> key);
  void note_id_collision(const crdt::RowChange& change, const Entry& incoming,
                         const std::vector<crdt::Value>& key);
  std::int64_t counter_value(crdt::ColumnId column) const;

  Replica::Impl& impl_;
  TableInfo& t_;
  const std::vector<std::int64_t>& site_map_;
  const crdt::Changeset& changeset_;
  Projection& projection_;

  // The row as stored, then as merged.
  std::optional<Entry> stored_row_;
  Entry row_;
  std::map<crdt::ColumnId, Entry> stored_cells_;
  std::map<crdt::ColumnId, Entry> cells_;  // every lww column's current version
  std::map<std::pair<crdt::ColumnId, std::int64_t>, Part> parts_;
  // What the incoming change won.
  std::size_t applied_ = 0;
  bool row_won_ = false;
  std::map<crdt::ColumnId, crdt::Value> new_values_;
  std::set<crdt::ColumnId> touched_counters_;
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
  t_.select_future = Statement(db, "SELECT col FROM lattice_future_values WHERE table_id = " +
                                       std::to_string(t_.id) + " AND pk = ?");
  t_.upsert_row = Statement(db, "INSERT OR REPLACE INTO " + rows + " VALUES (?, ?, ?, ?, ?)");
  t_.upsert_cell = Statement(db, "INSERT OR REPLACE INTO " + cells + " VALUES (?, ?, ?, ?, ?, ?)");
  t_.delete_cell = Statement(db, "DELETE FROM " + cells + " WHERE pk = ? AND col = ?");
  t_.upsert_counter =
      Statement(db, "INSERT OR REPLACE INTO " + counters + " VALUES (?, ?, ?, ?, ?, ?)");
}

// Loads what this replica knows of the row: its liveness, overrides and counter components.
void RowMerger::load(const std::string& pk) {
  t_.select_row.reset();
  t_.select_row.bind_blob(1, pk);
  if (t_.select_row.step()) stored_row_ = entry_from(t_.select_row, 0);
  t_.select_row.reset();
  // A column never written has the least version there is; it is stored like any other
  // (cl 0, no stamp, seq 0), so it never counts as written by the row's version.
  const Entry never_written{{0, crdt::Stamp{}}, 0, 0};
  row_ = stored_row_.value_or(never_written);

  t_.select_cells.reset();
  t_.select_cells.bind_blob(1, pk);
  while (t_.select_cells.step())
    stored_cells_[static_cast<crdt::ColumnId>(t_.select_cells.column_int(0))] =
        entry_from(t_.select_cells, 1);
  t_.select_cells.reset();

  t_.select_counters.reset();
  t_.select_counters.bind_blob(1, pk);
  while (t_.has_counters && t_.select_counters.step()) {
    auto& s = t_.select_counters;
    parts_[{static_cast<crdt::ColumnId>(s.column_int(0)), s.column_int(1)}] =
        Part{{static_cast<std::uint64_t>(s.column_int(2)),
              static_cast<std::uint64_t>(s.column_int(3)), s.column_int(4)},
             false};
  }
  t_.select_counters.reset();

  // A future column (a later schema version's) holds the row's version only if a value came
  // with it: an insert made here, by a version without the column, never wrote it.
  std::set<crdt::ColumnId> future_values;
  if (!t_.future_columns.empty()) {
    t_.select_future.reset();
    t_.select_future.bind_blob(1, pk);
    while (t_.select_future.step())
      future_values.insert(static_cast<crdt::ColumnId>(t_.select_future.column_int(0)));
    t_.select_future.reset();
  }

  // Every last-writer-wins column's current version: its own override, else the row's.
  for (const auto* columns : {&t_.columns, &t_.future_columns})
    for (const auto& c : *columns) {
      if (c.key_position || c.kind != crdt::ColumnKind::kLww) continue;
      auto it = stored_cells_.find(c.id);
      const bool unwritten = columns == &t_.future_columns ? !future_values.count(c.id)
                                                           : c.predates(row_.site, row_.seq);
      if (it != stored_cells_.end())
        cells_[c.id] = it->second;
      else
        cells_[c.id] = unwritten ? never_written : row_;
    }
}

// Offers each incoming version to the crdt rules; keeps what wins.
void RowMerger::offer(const crdt::RowChange& change) {
  // A column this replica dropped: what a peer that has not migrated writes to it is dropped.
  auto dropped = [&](crdt::ColumnId column) { return t_.dropped_columns.count(column) > 0; };
  auto offer_cell = [&](crdt::ColumnId column, const Entry& incoming, const crdt::Value& value) {
    if (dropped(column)) return;
    column_of(column, crdt::ColumnKind::kLww);
    Entry& current = cells_[column];
    if (incoming.version > current.version) {
      current = incoming;
      new_values_[column] = value;
      ++applied_;
    }
  };
  if (change.liveness) {
    const Entry incoming = entry_of(*change.liveness);
    if (incoming.version > row_.version) {
      row_ = incoming;
      row_won_ = true;
      // Counted as a change of its own only when it is all the row carries, as
      // RowChange::change_count() counts it: applied never exceeds received.
      if (change.liveness_values.empty() && change.cells.empty() && change.counters.empty())
        ++applied_;
    }
    for (const auto& [column, value] : change.liveness_values) offer_cell(column, incoming, value);
  }
  for (const auto& cell : change.cells) offer_cell(cell.column, entry_of(cell.stamp), cell.value);
  for (const auto& counter : change.counters) {
    if (dropped(counter.column)) continue;
    column_of(counter.column, crdt::ColumnKind::kCounter);
    Part& local = parts_[{counter.column, site_map_[counter.site]}];
    if (counter.part.newer_than(local.part)) {
      local = Part{counter.part, true};
      touched_counters_.insert(counter.column);
      ++applied_;
    }
  }
}

// A write to a newer incarnation means the row lives in that incarnation: the liveness becomes
// a placeholder (k, no stamp) that the incarnation's insert replaces when it arrives (the rule
// of crdt::RowState::merge). It keeps the (site, seq) of the write that raised it, which is
// what changes_since compares with a peer's vector.
void RowMerger::raise_liveness() {
  auto raise = [&](std::uint64_t causal_length, std::int64_t site, std::uint64_t seq) {
    if (causal_length > row_.version.causal_length)
      row_ = Entry{{causal_length, crdt::Stamp{}}, site, seq};
  };
  for (const auto& [column, entry] : cells_)
    raise(entry.version.causal_length, entry.site, entry.seq);
  for (const auto& [id, part] : parts_) raise(part.part.causal_length, id.second, part.part.seq);
}

// Writes back the row's version, an override for every column whose version is not the
// row's, and the counter components that changed.
void RowMerger::write_metadata(const std::string& pk) {
  if (!stored_row_ || !stored_row_->same_write(row_)) {
    t_.upsert_row.reset();
    t_.upsert_row.bind_blob(1, pk)
        .bind(2, static_cast<std::int64_t>(row_.version.causal_length))
        .bind(3, static_cast<std::int64_t>(row_.version.stamp.hlc.value))
        .bind(4, row_.site)
        .bind(5, static_cast<std::int64_t>(row_.seq));
    t_.upsert_row.run();
  }
  for (const auto& [column, entry] : cells_) {
    auto stored = stored_cells_.find(column);
    if (entry.same_write(row_)) {
      if (stored != stored_cells_.end()) {
        t_.delete_cell.reset();
        t_.delete_cell.bind_blob(1, pk).bind(2, static_cast<std::int64_t>(column));
        t_.delete_cell.run();
      }
    } else if (stored == stored_cells_.end() || !stored->second.same_write(entry)) {
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
  for (const auto& [id, part] : parts_) {
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
}

// A counter's value: the sum of its components in the row's current incarnation. The sum
// saturates at the 64-bit limits (docs/crdt-semantics.md): every replica adds the same
// components, so every replica shows the same saturated value.
std::int64_t RowMerger::counter_value(crdt::ColumnId column) const {
  __int128 sum = 0;
  for (const auto& [id, part] : parts_)
    if (id.first == column && part.part.causal_length == row_.version.causal_length)
      sum += part.part.total;
  if (sum > std::numeric_limits<std::int64_t>::max())
    return std::numeric_limits<std::int64_t>::max();
  if (sum < std::numeric_limits<std::int64_t>::min())
    return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(sum);
}

// Two devices inserted the same key of an INTEGER PRIMARY KEY table concurrently: almost
// certainly two different rows given one id (an id picked by hand, or a file's rows from before
// replication). The later insert wins as for any key; the values of the one that lost are kept
// in lattice_conflicts (kind 'superseded') on this replica, so the loss is never silent.
void RowMerger::note_id_collision(const crdt::RowChange& change, const Entry& incoming,
                                  const std::vector<crdt::Value>& key) {
  if (!t_.rowid_key || !stored_row_ || !crdt::CausalLength{incoming.version.causal_length}.alive())
    return;
  const Entry& stored = *stored_row_;
  if (stored.version.causal_length != incoming.version.causal_length ||
      stored.version.stamp.hlc.value == 0 || incoming.version.stamp.hlc.value == 0 ||
      stored.version.stamp.site == incoming.version.stamp.site)
    return;
  const bool incoming_wins = incoming.version > stored.version;
  std::vector<std::pair<const ColumnInfo*, crdt::Value>> incoming_values;
  for (const auto& [column, value] : change.liveness_values)
    if (const ColumnInfo* c = t_.column(column)) incoming_values.emplace_back(c, value);
  projection_.note_superseded(t_, change.primary_key, key, incoming_values, incoming_wins,
                              incoming_wins ? stored.version.stamp : incoming.version.stamp);
}

// Hands the application's row to the projection: shown as merged, or held.
void RowMerger::place(const crdt::RowChange& change, std::vector<crdt::Value> key) {
  MergedRow merged;
  merged.table = &t_;
  merged.pk = change.primary_key;
  merged.key = std::move(key);
  merged.was_alive = stored_row_ && crdt::CausalLength{stored_row_->version.causal_length}.alive();
  merged.alive = crdt::CausalLength{row_.version.causal_length}.alive();
  const bool new_incarnation =
      !stored_row_ || stored_row_->version.causal_length != row_.version.causal_length;
  if (merged.alive) {
    // A last-writer-wins column shows the value of its version when that version belongs to
    // the row's incarnation, and its default otherwise: nobody wrote it since the row was
    // inserted again. Inserts of one schema version write every column, but an older
    // version's insert does not write the columns it does not have, and a newer device's
    // write to the incarnation that ended may arrive after the insert that ended it.
    auto in_incarnation = [&](crdt::ColumnId column) {
      auto it = cells_.find(column);
      return it != cells_.end() && it->second.version.causal_length == row_.version.causal_length;
    };
    for (const auto* columns : {&t_.columns, &t_.future_columns})
      for (const auto& c : *columns) {
        if (c.key_position) continue;
        const bool future = columns == &t_.future_columns;
        if (c.kind != crdt::ColumnKind::kLww) {
          if (!future && (new_incarnation || touched_counters_.count(c.id)))
            merged.changed.emplace_back(&c, counter_value(c.id));
          continue;
        }
        if (!in_incarnation(c.id)) {
          // Left over from the incarnation that ended: back to its default.
          if (new_incarnation && merged.was_alive) merged.unwritten.push_back(c.id);
          continue;
        }
        auto it = new_values_.find(c.id);
        if (it == new_values_.end()) continue;
        if (future) {
          merged.future.emplace_back(c.id, it->second);  // aside until the column joins
        } else {
          merged.changed.emplace_back(&c, it->second);
        }
      }
  }
  projection_.place(merged);
}

std::size_t RowMerger::merge(const crdt::RowChange& change) {
  prepare();
  const std::string& pk = change.primary_key;
  std::vector<crdt::Value> key = unpack_primary_key(pk, t_.key_count);
  load(pk);
  if (change.liveness) note_id_collision(change, entry_of(*change.liveness), key);
  offer(change);
  if (applied_ == 0 && !row_won_) return 0;
  raise_liveness();
  write_metadata(pk);
  place(change, std::move(key));
  return applied_;
}

// A key value the receiver's column would store differently (SQLite's type affinity), so the
// row it names would not be the row the sender named: refused, with the reason.
std::optional<std::string> key_value_misfit(const crdt::Value& v, Affinity affinity) {
  auto numeric_text = [](const std::string& text) {
    const auto first = text.find_first_not_of(" \t\n\r\f\v");
    if (first == std::string::npos) return false;
    const std::string trimmed =
        text.substr(first, text.find_last_not_of(" \t\n\r\f\v") - first + 1);
    char* end = nullptr;
    std::strtod(trimmed.c_str(), &end);
    return end == trimmed.c_str() + trimmed.size() &&
           trimmed.find_first_of("xXnN") == std::string::npos;  // no hex, nan, inf
  };
  const bool integral_real = v.index() == 2 &&
                             std::get<double>(v) == std::trunc(std::get<double>(v)) &&
                             std::abs(std::get<double>(v)) < 9.2e18;
  switch (affinity) {
    case Affinity::kBlob:
      if (v.index() == 2) return "a real in a key column without a type";
      return std::nullopt;
    case Affinity::kText:
      if (v.index() == 1 || v.index() == 2) return "a number in a TEXT key column";
      return std::nullopt;
    case Affinity::kInteger:
    case Affinity::kNumeric:
      if (integral_real) return "an integral real in an INTEGER key column";
      if (v.index() == 3 && numeric_text(std::get<std::string>(v)))
        return "numeric text in an INTEGER key column";
      return std::nullopt;
    case Affinity::kReal:
      if (v.index() == 1) return "an integer in a REAL key column";
      if (v.index() == 3 && numeric_text(std::get<std::string>(v)))
        return "numeric text in a REAL key column";
      return std::nullopt;
  }
  return std::nullopt;
}

std::string column_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += std::string(out.empty() ? "" : ", ") + n;
  return "(" + out + ")";
}

// What a changeset's tables mean here, across schema versions (docs/schema-evolution.md).
struct SchemaPlan {
  std::set<crdt::TableId> pending_tables;  // not replicated here (yet): merged as future tables
  std::set<crdt::TableId> dropped_tables;  // dropped here: rows ignored
  // Columns the sender has and this replica does not have yet: merged as future columns.
  std::vector<std::pair<crdt::TableId, crdt::ColumnSchema>> future_columns;
};

// The sender's table must be this replica's, as far as both have it: the same key columns in
// the same order, and the same kind and affinity for every column both have. Names may differ
// (a rename keeps a column's id); columns only the sender has are a later version's.
void check_table_schema(Replica::Impl& impl, const crdt::TableSchema& schema, SchemaPlan& plan) {
  if (impl.dropped_tables.count(schema.id)) {
    plan.dropped_tables.insert(schema.id);
    return;
  }
  auto it = impl.tables.find(schema.id);
  if (it == impl.tables.end()) {
    plan.pending_tables.insert(schema.id);
    return;
  }
  const TableInfo& local = *it->second;
  std::vector<std::string> theirs, ours;
  for (std::size_t i = 0; i < schema.primary_key_columns && i < schema.columns.size(); ++i)
    theirs.push_back(schema.columns[i].name);
  for (std::size_t i = 0; i < local.key_count; ++i) ours.push_back(local.columns[i].name);
  bool same_key = theirs.size() == ours.size();
  for (std::size_t i = 0; same_key && i < ours.size(); ++i)
    same_key = schema.columns[i].id == local.columns[i].id;
  if (!same_key)
    throw Error(ErrorCode::kSchema, "table '" + local.name + "': the changeset's primary key is " +
                                        column_list(theirs) + ", this replica's is " +
                                        column_list(ours));
  for (std::size_t i = 0; i < schema.columns.size(); ++i) {
    const auto& column = schema.columns[i];
    const ColumnInfo* c = local.column(column.id);
    if (!c) {
      if (!local.dropped_columns.count(column.id))
        plan.future_columns.emplace_back(schema.id, column);
      continue;
    }
    if ((i < schema.primary_key_columns) != (c->key_position != 0))
      throw Error(ErrorCode::kSchema,
                  "table '" + local.name + "': the changeset's primary key is " +
                      column_list(theirs) + ", this replica's is " + column_list(ours));
    if (c->kind != column.kind)
      throw Error(ErrorCode::kTypeMismatch,
                  "column '" + local.name + "." + c->name + "' is a " +
                      crdt::column_kind_name(c->kind) + " column here but a " +
                      crdt::column_kind_name(column.kind) + " column in the changeset");
    if (column.affinity && c->affinity_known && *column.affinity != c->affinity)
      throw Error(ErrorCode::kSchema,
                  "column '" + local.name + "." + c->name + "' has type affinity " +
                      affinity_name(c->affinity) + " here but " + affinity_name(*column.affinity) +
                      " at the sender, so the two would store the same value differently");
  }
}

// Every row names a table of the changeset once, with a key this replica can store as it is.
void check_rows(Replica::Impl& impl, const crdt::Changeset& changeset) {
  std::set<std::pair<crdt::TableId, std::string_view>> seen;
  for (std::size_t r = 0; r < changeset.rows.size(); ++r) {
    const auto& row = changeset.rows[r];
    if (!seen.emplace(row.table, row.primary_key).second)
      throw Error(ErrorCode::kCorrupt, "changeset rows[" + std::to_string(r) + "] repeats row " +
                                           describe_primary_key(row.primary_key));
    if (std::none_of(changeset.tables.begin(), changeset.tables.end(),
                     [&](const crdt::TableSchema& s) { return s.id == row.table; }))
      throw Error(ErrorCode::kUnknownTable, "changeset rows[" + std::to_string(r) +
                                                "] names table id " + std::to_string(row.table) +
                                                ", which is not in the changeset's tables");
    auto it = impl.tables.find(row.table);
    if (it == impl.tables.end()) continue;  // a later version's table, or a dropped one
    const TableInfo& t = *it->second;
    std::vector<crdt::Value> key;
    try {
      key = unpack_primary_key(row.primary_key, t.key_count);
    } catch (const Error& e) {
      throw Error(e.code(), "table '" + t.name + "', rows[" + std::to_string(r) + "]: " + e.what());
    }
    for (std::size_t i = 0; i < key.size(); ++i)
      if (auto misfit = key_value_misfit(key[i], t.columns[i].affinity))
        throw Error(ErrorCode::kSchema, "table '" + t.name + "', row " +
                                            describe_primary_key(row.primary_key) + ": " + *misfit +
                                            " (" + t.columns[i].name + ", " +
                                            affinity_name(t.columns[i].affinity) +
                                            "), which this replica would store as another key");
  }
}

}  // namespace

namespace {

// A changeset written by a replica with this replica's own site id: a copy of this file, or
// this file itself. Harmless when the two histories agree as far as both go (a file applied to
// itself, a copy or backup that has not written since); refused when both wrote after they
// parted, since their transactions share sequence numbers. The origin's log says where.
void check_not_a_copy(Replica::Impl& impl, const crdt::Origin& origin) {
  Statement head_of(impl.db, "SELECT seq FROM lattice_local WHERE id = 0");
  const auto head = head_of.step() ? static_cast<std::uint64_t>(head_of.column_int(0)) : 0;
  Statement mine(impl.db, "SELECT tag FROM lattice_local_log WHERE seq = ?");
  std::optional<std::uint64_t> agreed;  // the last transaction both logs hold alike
  for (const TxnTag& theirs : origin.log) {
    if (theirs.seq > head) break;
    mine.reset();
    mine.bind(1, static_cast<std::int64_t>(theirs.seq));
    if (!mine.step()) continue;  // trimmed here: nothing to compare
    if (static_cast<std::uint64_t>(mine.column_int(0)) == theirs.tag) {
      agreed = theirs.seq;
      continue;
    }
    const std::string where =
        agreed ? "they agree through transaction " + std::to_string(*agreed) + " and differ from " +
                     std::to_string(theirs.seq)
               : "they differ at transaction " + std::to_string(theirs.seq) +
                     " already, and agree through an earlier one this log does not reach (the "
                     "number of this file's own transactions when it was copied)";
    throw Error(ErrorCode::kCopiedReplica,
                "this changeset comes from a replica with this replica's own site id " +
                    impl.site.to_hex() +
                    ": one of the two files is a copy (or a restored backup) of the other, and "
                    "both wrote after they parted; " +
                    where +
                    ". Give one of them a new site id with `lattice rekey DB --keep-through N` "
                    "(Replica::rekey(N)), N the last transaction they agree on, then exchange "
                    "changes again: nothing either wrote is lost");
  }
}

// Everything about `changeset` that can be checked without writing. Returns its newest stamp.
crdt::Hlc validate(Replica::Impl& impl, const crdt::Changeset& changeset, SchemaPlan& plan) {
  if (changeset.origin && changeset.origin->site == impl.site)
    check_not_a_copy(impl, *changeset.origin);
  if (changeset.format_version > crdt::Changeset::kFormatVersion)
    throw Error(ErrorCode::kUnsupportedVersion,
                "changeset format " + std::to_string(changeset.format_version) +
                    " is newer than this build reads (" +
                    std::to_string(crdt::Changeset::kFormatVersion) + ")");
  for (const auto& schema : changeset.tables) check_table_schema(impl, schema, plan);
  check_rows(impl, changeset);
  crdt::Hlc newest;
  auto check_site = [&](std::uint32_t site) {
    if (site >= changeset.sites.size())
      throw Error(ErrorCode::kCorrupt, "changeset names site index " + std::to_string(site) +
                                           " of " + std::to_string(changeset.sites.size()));
  };
  for (const auto& row : changeset.rows) {
    if (row.liveness) {
      check_site(row.liveness->site);
      newest = std::max(newest, row.liveness->hlc);
    }
    for (const auto& cell : row.cells) {
      check_site(cell.stamp.site);
      newest = std::max(newest, cell.stamp.hlc);
    }
    for (const auto& counter : row.counters) check_site(counter.site);
  }
  impl.clock.check_drift(newest);
  return newest;
}

// Merges a validated changeset inside the open transaction.
// Makes room for what a later schema version sends: its new columns become future columns of
// their table, and its new tables future tables (TableInfo::future_table), merged like any
// other until a migration here adds them.
void prepare_for_versions(Replica::Impl& impl, const crdt::Changeset& changeset,
                          const SchemaPlan& plan) {
  sqlite3* db = impl.db;
  if (!plan.future_columns.empty()) {
    Statement insert(db,
                     "INSERT OR IGNORE INTO lattice_columns(table_id, id, name, kind, "
                     "key_position, future, affinity) VALUES (?, ?, ?, ?, 0, 1, ?)");
    for (const auto& [table, column] : plan.future_columns) {
      insert.reset();
      insert.bind(1, static_cast<std::int64_t>(table))
          .bind(2, static_cast<std::int64_t>(column.id))
          .bind(3, column.name)
          .bind(4, crdt::column_kind_name(column.kind));
      if (column.affinity)
        insert.bind(5, static_cast<std::int64_t>(*column.affinity));
      else
        insert.bind(5, crdt::Value{});
      insert.run();
    }
    impl.load_catalog();
    impl.catalog_schema_version = -1;
    // Their tables' capture triggers now keep the future columns' versions (triggers.cpp).
    std::set<crdt::TableId> tables;
    for (const auto& [table, column] : plan.future_columns) tables.insert(table);
    for (crdt::TableId table : tables) {
      auto it = impl.tables.find(table);
      if (it != impl.tables.end() && !it->second->future_table)
        impl.recreate_table_triggers(*it->second);
    }
  }
  for (crdt::TableId table : plan.pending_tables) {
    const crdt::TableSchema* schema = nullptr;
    for (const auto& s : changeset.tables)
      if (s.id == table) schema = &s;
    if (!schema) continue;
    // Another table of this replica's may have the name: the later version's table keeps its
    // own (lattice_tables names are unique), suffixed with its id.
    Statement taken(db, "SELECT count(*) FROM lattice_tables WHERE name = ?");
    taken.bind(1, schema->name);
    taken.step();
    const std::string name =
        taken.column_int(0) ? schema->name + "#" + std::to_string(table) : schema->name;
    taken = Statement();
    Statement insert_table(db, "INSERT INTO lattice_tables(id, name, future) VALUES (?, ?, 1)");
    insert_table.bind(1, static_cast<std::int64_t>(table)).bind(2, name).run();
    Statement insert_column(db,
                            "INSERT INTO lattice_columns(table_id, id, name, kind, key_position, "
                            "future, affinity) VALUES (?, ?, ?, ?, ?, ?, ?)");
    for (std::size_t i = 0; i < schema->columns.size(); ++i) {
      const auto& column = schema->columns[i];
      const bool key = i < schema->primary_key_columns;
      insert_column.reset();
      insert_column.bind(1, static_cast<std::int64_t>(table))
          .bind(2, static_cast<std::int64_t>(column.id))
          .bind(3, column.name)
          .bind(4, crdt::column_kind_name(column.kind))
          .bind(5, static_cast<std::int64_t>(key ? i + 1 : 0))
          .bind(6, std::int64_t{key ? 0 : 1});
      if (column.affinity)
        insert_column.bind(7, static_cast<std::int64_t>(*column.affinity));
      else
        insert_column.bind(7, crdt::Value{});
      insert_column.run();
    }
  }
  if (!plan.pending_tables.empty()) {
    impl.load_catalog();
    impl.catalog_schema_version = -1;
    for (crdt::TableId table : plan.pending_tables) {
      auto it = impl.tables.find(table);
      if (it != impl.tables.end()) exec_sql(db, metadata_tables_sql(*it->second));
    }
  }
}

void merge_changeset(Replica::Impl& impl, const crdt::Changeset& changeset,
                     const OriginTxns* origin, const SchemaPlan& plan, Projection& projection,
                     ApplyResult& result) {
  result.received += changeset.change_count();
  prepare_for_versions(impl, changeset, plan);
  std::vector<std::int64_t> site_map;
  site_map.reserve(changeset.sites.size());
  for (const auto& id : changeset.sites) site_map.push_back(impl.local_site_index(id));
  for (const auto& row : changeset.rows) {
    auto table = impl.tables.find(row.table);
    if (table == impl.tables.end()) continue;  // kept aside, or a dropped table's
    RowMerger merger(impl, *table->second, site_map, changeset, projection);
    result.applied += merger.merge(row);
  }
  // The changeset brings everything its sender held in `until`, provided we already held
  // what it assumed we hold (`since`). What we hold of other sites is what the site table said
  // when it was read under this transaction's lock (Impl::remote_held), with this
  // transaction's raises: a delta's vectors list every site, and reading the whole table for
  // each would make every merge cost as much as the sites that ever wrote.
  const std::uint64_t own_seq = impl.local_seq();
  const auto held = [&](const crdt::SiteId& id) {
    return id == impl.site ? own_seq : impl.remote_held.get(id);
  };
  bool holds_since = true;
  for (const auto& [id, seq] : changeset.since.entries())
    if (held(id) < seq) {
      holds_since = false;
      break;
    }
  if (holds_since) {
    Statement& raise_site = impl.cached("UPDATE lattice_sites SET seq = max(seq, ?) WHERE idx = ?");
    for (const auto& [id, seq] : changeset.until.entries()) {
      if (seq <= held(id)) continue;
      if (id == impl.site) {
        Statement& raise_local =
            impl.cached("UPDATE lattice_local SET seq = max(seq, ?) WHERE id = 0");
        raise_local.bind(1, static_cast<std::int64_t>(seq)).run();
      } else {
        raise_site.reset();
        raise_site.bind(1, static_cast<std::int64_t>(seq)).bind(2, impl.local_site_index(id));
        raise_site.run();
        impl.remote_held.advance(id, seq);
        impl.seqs_raised = true;
      }
    }
  }
  if (origin && !origin->txns.empty()) {
    Statement& record =
        impl.cached("INSERT OR IGNORE INTO lattice_origin_log(site, seq, tag) VALUES (?, ?, ?)");
    for (const TxnTag& txn : origin->txns) {
      record.reset();
      record.bind_blob(1, origin->site.as_bytes())
          .bind(2, static_cast<std::int64_t>(txn.seq))
          .bind(3, static_cast<std::int64_t>(txn.tag));
      record.run();
    }
  }
}

}  // namespace

ApplyResult Replica::Impl::apply_all(std::size_t count, const ChangesetSource& changeset_at,
                                     const OriginTxns* origin) {
  if (!sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "apply cannot run inside an open transaction; commit first");
  refresh();
  ApplyResult result;
  if (count == 0) return result;
  // The first changeset is checked before the transaction starts; later ones inside it (a
  // failure there rolls back all of them).
  SchemaPlan plan;
  crdt::Hlc newest = validate(*this, changeset_at(0), plan);
  std::vector<ChangeEvent> events;
  MergeMode mode(*this);
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    sites_current_in_transaction();
    Projection projection(*this, events);
    for (std::size_t i = 0; i < count; ++i) {
      const crdt::Changeset& changeset = changeset_at(i);
      if (i > 0) {
        plan = SchemaPlan{};
        newest = std::max(newest, validate(*this, changeset, plan));
      }
      merge_changeset(*this, changeset, origin, plan, projection, result);
    }
    // Rows held before may stand now (a unique value freed, a parent arrived), and rows
    // shown may have to give way to held rows with an earlier claim.
    if (projection.any_held()) projection.settle();
    Statement& keep_clock = cached("UPDATE lattice_local SET hlc = max(hlc, ?) WHERE id = 0");
    keep_clock.bind(1, static_cast<std::int64_t>(newest.value)).run();
    exec_sql(db, "COMMIT");
    seqs_raised = false;
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

struct Replica::Impl::MergeGroup {
  explicit MergeGroup(Replica::Impl& impl) : mode(impl) {}
  MergeMode mode;  // first: constructed outside the transaction (PRAGMA foreign_keys)
  std::vector<ChangeEvent> events;
  std::unique_ptr<Projection> projection;
  crdt::Hlc newest;
};

void Replica::Impl::MergeGroupDelete::operator()(MergeGroup* group) const { delete group; }

void Replica::Impl::begin_group() {
  if (group || !sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "a group of merges cannot start inside an open transaction");
  refresh();
  group.reset(new MergeGroup(*this));
  try {
    exec_sql(db, "BEGIN IMMEDIATE");
    sites_current_in_transaction();
    group->projection = std::make_unique<Projection>(*this, group->events);
  } catch (...) {
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    group.reset();
    throw;
  }
}

ApplyResult Replica::Impl::merge_in_group(const crdt::Changeset& changeset,
                                          const OriginTxns& origin) {
  if (!group) throw Error(ErrorCode::kState, "merge_in_group() needs an open group");
  if (sqlite3_get_autocommit(db)) {
    // SQLite rolled the whole transaction back after an earlier failure (a full disk, an I/O
    // error): nothing more may merge outside it.
    group.reset();
    throw Error(ErrorCode::kState, "the group's transaction ended after an earlier error");
  }
  SchemaPlan plan;
  const crdt::Hlc newest = validate(*this, changeset, plan);  // writes nothing
  const std::size_t events_before = group->events.size();
  ApplyResult result;
  exec_sql(db, "SAVEPOINT lattice_group_merge");
  try {
    merge_changeset(*this, changeset, &origin, plan, *group->projection, result);
    exec_sql(db, "RELEASE lattice_group_merge");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK TO lattice_group_merge; RELEASE lattice_group_merge", nullptr,
                 nullptr, nullptr);
    // What the merge left in memory goes with it: its events, the projection's counts of held
    // rows, the sites it added and the catalog entries of a later version's columns. When
    // SQLite ended the whole transaction, the group ends with it.
    catalog_schema_version = -1;
    sites_stale = true;  // the sites it added and the sequences it raised
    if (sqlite3_get_autocommit(db)) {
      group.reset();
    } else {
      group->events.resize(events_before);
      group->projection = std::make_unique<Projection>(*this, group->events);
    }
    refresh();
    throw;
  }
  group->newest = std::max(group->newest, newest);
  return result;
}

void Replica::Impl::commit_group() {
  if (!group) throw Error(ErrorCode::kState, "commit_group() needs an open group");
  if (sqlite3_get_autocommit(db)) {
    group.reset();
    throw Error(ErrorCode::kState, "the group's transaction ended after an earlier error");
  }
  try {
    // As apply_all() does once for all its changesets.
    if (group->projection->any_held()) group->projection->settle();
    Statement& keep_clock = cached("UPDATE lattice_local SET hlc = max(hlc, ?) WHERE id = 0");
    keep_clock.bind(1, static_cast<std::int64_t>(group->newest.value)).run();
    exec_sql(db, "COMMIT");
    seqs_raised = false;
  } catch (...) {
    rollback_group();
    throw;
  }
  clock.observe(group->newest);
  std::vector<ChangeEvent> events = std::move(group->events);
  group.reset();
  pending_events.insert(pending_events.end(), std::make_move_iterator(events.begin()),
                        std::make_move_iterator(events.end()));
  deliver_events();
}

void Replica::Impl::rollback_group() {
  if (!group) return;
  if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  group.reset();
  catalog_schema_version = -1;
  refresh();  // reads the sites again if the group added one or raised a sequence
}

ApplyResult Replica::Impl::apply(const crdt::Changeset& changeset, const OriginTxns* origin) {
  return apply_all(
      1, [&](std::size_t) -> const crdt::Changeset& { return changeset; }, origin);
}

}  // namespace lattice::storage
