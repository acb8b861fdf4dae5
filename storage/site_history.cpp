// This replica's own history: the logs that let a relay tell two copies of one replica file
// apart, the rekey that separates them (docs/protocol.md, "Rekey"; docs/architecture.md,
// "Copied replicas"), and the recovery of a clock that ran ahead.
//
//   lattice_local_log(seq, tag)       one row per own transaction (a trigger on lattice_local),
//                                     kept from the last acknowledged one on
//   lattice_counter_undo(seq, ...)    the local counter component before transaction `seq`
//                                     first changed it, for transactions not yet acknowledged
//   lattice_origin_log(site, seq, tag) on a relay: the transactions each device said it wrote

#include <map>
#include <random>

#include "crdt/error.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/replica.hpp"

namespace lattice::storage {

namespace {

std::uint64_t meta_uint(sqlite3* db, const char* key) {
  Statement select(db, "SELECT value FROM lattice_meta WHERE key = ?");
  select.bind(1, key);
  return select.step() ? static_cast<std::uint64_t>(select.column_int(0)) : 0;
}

std::vector<TxnTag> read_tags(Statement& select) {
  std::vector<TxnTag> out;
  while (select.step())
    out.push_back({static_cast<std::uint64_t>(select.column_int(0)),
                   static_cast<std::uint64_t>(select.column_int(1))});
  return out;
}

}  // namespace

std::vector<TxnTag> Replica::local_log(std::uint64_t from, std::uint64_t through) {
  Statement select(impl_->db,
                   "SELECT seq, tag FROM lattice_local_log WHERE seq BETWEEN ? AND ? ORDER BY seq");
  select.bind(1, static_cast<std::int64_t>(from)).bind(2, static_cast<std::int64_t>(through));
  return read_tags(select);
}

std::uint64_t Replica::acknowledged() { return meta_uint(impl_->db, "acknowledged_seq"); }

std::uint64_t Replica::untagged_through() {
  sqlite3* db = impl_->db;
  const std::uint64_t acked = acknowledged();
  Statement head(db, "SELECT seq FROM lattice_local WHERE id = 0");
  const auto own_head = head.step() ? static_cast<std::uint64_t>(head.column_int(0)) : 0;
  Statement first(db, "SELECT coalesce(min(seq), 0) FROM lattice_local_log");
  first.step();
  const auto first_logged = static_cast<std::uint64_t>(first.column_int(0));
  // No entry at all: none of the transactions has its tag (a file from before the log).
  if (first_logged == 0) return std::max(acked, own_head);
  return std::max(acked, first_logged - 1);
}

void Replica::acknowledge(std::uint64_t seq) {
  sqlite3* db = impl_->db;
  if (seq <= acknowledged()) return;
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    Statement own(db, "SELECT seq FROM lattice_local WHERE id = 0");
    own.step();
    // Acknowledgements come from a relay's view of this site; never record more than was
    // written here (another copy's transactions are not ours).
    const auto head = static_cast<std::uint64_t>(own.column_int(0));
    own = Statement();
    const auto acked = static_cast<std::int64_t>(std::min(seq, head));
    Statement set(db, "INSERT OR REPLACE INTO lattice_meta VALUES ('acknowledged_seq', ?)");
    set.bind(1, acked).run();
    Statement prune_log(db, "DELETE FROM lattice_local_log WHERE seq < ?");
    prune_log.bind(1, acked).run();
    Statement prune_undo(db, "DELETE FROM lattice_counter_undo WHERE seq <= ?");
    prune_undo.bind(1, acked).run();
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<TxnTag> Replica::origin_log(const crdt::SiteId& site, std::uint64_t from,
                                        std::size_t max) {
  Statement& select = impl_->cached(
      "SELECT seq, tag FROM lattice_origin_log WHERE site = ? AND seq >= ? ORDER BY seq LIMIT ?");
  select.bind_blob(1, site.as_bytes())
      .bind(2, static_cast<std::int64_t>(from))
      .bind(3, static_cast<std::int64_t>(max));
  return read_tags(select);
}

void Replica::rekey(std::uint64_t keep_through) {
  crdt::SiteId fresh;
  if (impl_->options.new_site_id) {
    fresh = impl_->options.new_site_id();
  } else {
    std::random_device entropy;
    fresh = crdt::SiteId::random(entropy);
  }
  impl_->rekey(keep_through, fresh);
}

void Replica::Impl::rekey(std::uint64_t keep_through, const crdt::SiteId& new_site) {
  if (!sqlite3_get_autocommit(db))
    throw Error(ErrorCode::kState, "rekey cannot run inside an open transaction; commit first");
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    refresh();
    read_local.reset();
    read_local.step();
    const auto head = static_cast<std::uint64_t>(read_local.column_int(0));
    read_local.reset();
    if (keep_through > head)
      throw Error(ErrorCode::kInvalidArgument,
                  "rekey: keep_through " + std::to_string(keep_through) +
                      " is past this replica's last own transaction " + std::to_string(head));
    const auto keep = static_cast<std::int64_t>(keep_through);
    const auto old_index = static_cast<std::int64_t>(sites.size());
    const crdt::SiteId old_site = site;

    Statement rename(db, "UPDATE lattice_sites SET site_id = ? WHERE idx = 0");
    rename.bind_blob(1, new_site.as_bytes()).run();
    Statement keep_old(db, "INSERT INTO lattice_sites(idx, site_id, seq) VALUES (?, ?, ?)");
    keep_old.bind(1, old_index).bind_blob(2, old_site.as_bytes()).bind(3, keep).run();

    const std::string k = std::to_string(keep), old_idx = std::to_string(old_index);
    for (const auto& [id, table] : tables) {
      for (const std::string& meta : {table->rows_table(), table->cells_table()}) {
        exec_sql(db, "UPDATE " + meta + " SET site = " + old_idx + " WHERE site = 0 AND seq <= " +
                         k + ";\nUPDATE " + meta + " SET seq = seq - " + k + " WHERE site = 0");
      }
      const std::string counters = table->counters_table();
      // A component last written at or before the fork stays the old site's as it is. One
      // written after it splits: the old site keeps what it held before its first later
      // transaction (the undo log), the new site takes the increments since.
      exec_sql(db,
               "UPDATE " + counters + " SET site = " + old_idx + " WHERE site = 0 AND seq <= " + k);
      exec_sql(db,
               "CREATE TEMP TABLE IF NOT EXISTS lattice_rekey_split(pk BLOB, col INTEGER, "
               "had INTEGER, cl INTEGER, part_seq INTEGER, total INTEGER);\n"
               "DELETE FROM temp.lattice_rekey_split;");
      exec_sql(db,
               "INSERT INTO temp.lattice_rekey_split SELECT c.pk, c.col, u.had, u.cl, u.part_seq, "
               "u.total FROM " +
                   counters +
                   " c JOIN lattice_counter_undo u ON u.table_id = " + std::to_string(id) +
                   " AND u.pk = c.pk AND u.col = c.col AND u.seq = (SELECT min(v.seq) FROM "
                   "lattice_counter_undo v WHERE v.table_id = u.table_id AND v.pk = c.pk AND "
                   "v.col = c.col AND v.seq > " +
                   k + ") WHERE c.site = 0");
      exec_sql(db, "INSERT INTO " + counters + "(pk, col, site, cl, seq, total) SELECT pk, col, " +
                       old_idx +
                       ", cl, part_seq, total FROM temp.lattice_rekey_split WHERE had;\n"
                       "UPDATE " +
                       counters +
                       " AS c SET total = c.total - s.total FROM temp.lattice_rekey_split s "
                       "WHERE c.site = 0 AND s.pk = c.pk AND s.col = c.col AND s.had AND "
                       "s.cl = c.cl;\n"
                       "UPDATE " +
                       counters + " SET seq = seq - " + k + " WHERE site = 0");
    }
    exec_sql(db, "DROP TABLE IF EXISTS temp.lattice_rekey_split");
    // What this replica held when a migration added a column, split the same way: the old
    // site's part up to the fork, the new site's renumbered.
    exec_sql(db,
             "INSERT OR REPLACE INTO lattice_column_added(table_id, col, site, seq) SELECT "
             "table_id, col, " +
                 old_idx + ", min(seq, " + k + ") FROM lattice_column_added WHERE site = 0 AND " +
                 k + " > 0;\nUPDATE lattice_column_added SET seq = seq - " + k +
                 " WHERE site = 0;\nDELETE FROM lattice_column_added WHERE seq <= 0;");

    Statement local(db, "UPDATE lattice_local SET seq = ? WHERE id = 0");
    local.bind(1, static_cast<std::int64_t>(head) - keep);
    local.run();  // downwards: the log trigger stays quiet; the log is renumbered below
    exec_sql(db, "DELETE FROM lattice_local_log WHERE seq <= " + k +
                     ";\nUPDATE lattice_local_log SET seq = -(seq - " + k +
                     ");\nUPDATE lattice_local_log SET seq = -seq;\n"
                     "DELETE FROM lattice_counter_undo;\n"
                     "DELETE FROM lattice_meta WHERE key = 'acknowledged_seq';");
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    load_sites();
    throw;
  }
  load_sites();
  load_column_added();
}

// A peer refuses a stamp more than its drift bound ahead of its own wall clock, so an own write
// stamped later than (our wall clock + the bound) was accepted by no peer whose clock is right:
// it can take a new stamp. Everything else stays, and the clock goes on from the latest stamp
// that remains, so the next writes are accepted again.
void Replica::Impl::recover_clock() {
  if (!sqlite3_get_autocommit(db)) return;
  const crdt::Hlc limit =
      crdt::Hlc::from_parts(clock.wall_ms() + clock.max_drift_ms(), crdt::Hlc::kLogicalMask);
  read_local.reset();
  const bool ahead =
      read_local.step() && static_cast<std::uint64_t>(read_local.column_int(1)) > limit.value;
  read_local.reset();
  if (!ahead) return;
  exec_sql(db, "BEGIN IMMEDIATE");
  try {
    refresh();
    // The latest stamp that stays (anyone's), and the own stamps that move, by table.
    crdt::Hlc keep;
    std::map<std::uint64_t, std::uint64_t> moved;  // old stamp -> new, in order
    for (const auto& [id, table] : tables)
      for (const std::string& meta : {table->rows_table(), table->cells_table()}) {
        Statement kept(db, "SELECT max(hlc) FROM " + meta + " WHERE hlc <= ?");
        kept.bind(1, static_cast<std::int64_t>(limit.value));
        if (kept.step())
          keep = std::max(keep, crdt::Hlc{static_cast<std::uint64_t>(kept.column_int(0))});
        Statement ahead_stamps(db,
                               "SELECT DISTINCT hlc FROM " + meta + " WHERE site = 0 AND hlc > ?");
        ahead_stamps.bind(1, static_cast<std::int64_t>(limit.value));
        while (ahead_stamps.step())
          moved[static_cast<std::uint64_t>(ahead_stamps.column_int(0))] = 0;
      }
    clock.rewind(keep);
    for (auto& [old_stamp, new_stamp] : moved) new_stamp = clock.now().value;
    for (const auto& [id, table] : tables)
      for (const std::string& meta : {table->rows_table(), table->cells_table()}) {
        Statement restamp(db, "UPDATE " + meta + " SET hlc = ? WHERE site = 0 AND hlc = ?");
        for (const auto& [old_stamp, new_stamp] : moved) {
          restamp.reset();
          restamp.bind(1, static_cast<std::int64_t>(new_stamp))
              .bind(2, static_cast<std::int64_t>(old_stamp))
              .run();
        }
      }
    Statement persist(db, "UPDATE lattice_local SET hlc = ? WHERE id = 0");
    persist.bind(1, static_cast<std::int64_t>(clock.last().value)).run();
    exec_sql(db, "COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace lattice::storage
