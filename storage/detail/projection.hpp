#pragma once
// The application's tables are a projection of the replicated state (docs/data-quality.md):
// every live row is shown in its table, unless it breaks a constraint the table declares; such a
// row is held in lattice_held, with its values and the reason, until a change lets it stand or
// the application resolves it. The rule that picks which rows are shown depends only on the
// replicated state, never on the order changes arrived in, so replicas that hold the same
// changes show the same rows:
//
//   A live row is shown when its values satisfy the table's CHECK, NOT NULL and type
//   constraints and its triggers, the parent of each of its foreign keys is shown, and no
//   shown row that claimed one of its unique values earlier shares it.
//
// A row's claim is the newest (HLC, site) among its cells of columns in unique constraints:
// the row that took a unique value later is the one that waits. Ties fall to the packed key.
// Merge mode only (Replica::Impl::merging): its writes are never captured.

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "storage/detail/replica_impl.hpp"

namespace lattice::storage {

// One row as a merge left its replicated state.
struct MergedRow {
  TableInfo* table = nullptr;
  std::string pk;  // packed
  std::vector<crdt::Value> key;
  bool alive = false;
  bool was_alive = false;  // alive in the replicated state before this merge
  // The columns whose value the merge changed (every column when the row came alive).
  std::vector<std::pair<const ColumnInfo*, crdt::Value>> changed;
  // The same for future columns (TableInfo::future_columns), kept in lattice_future_values.
  std::vector<std::pair<crdt::ColumnId, crdt::Value>> future;
  // Last-writer-wins columns (future ones too) that a new incarnation of a live row left
  // unwritten: they go back to their default (an older version's insert does not write the
  // columns it does not have).
  std::vector<crdt::ColumnId> unwritten;
};

// A held row's values as lattice_held.vals keeps them (by column id), and back as a row of `t`.
std::string pack_held(const TableInfo& t, const std::vector<crdt::Value>& row);
std::vector<crdt::Value> held_row(const TableInfo& t, std::string_view vals, std::string_view pk);

class Projection {
 public:
  // Events of rows shown, held or removed are appended to `events`.
  Projection(Replica::Impl& impl, std::vector<ChangeEvent>& events);

  // Shows, updates, holds or removes `row` in its table as its merged state says.
  void place(const MergedRow& row);

  // Retries every held row, oldest claim first, until none more can be shown.
  void settle();
  bool any_held() const {
    for (const auto& [id, count] : held_counts_)
      if (count > 0) return true;
    return false;
  }

  // Two concurrent inserts of one key of an INTEGER PRIMARY KEY table met: keeps the values of
  // the one that lost in lattice_superseded (the row as shown before, when `incoming_wins`;
  // else the row as the incoming insert would have made it), unless they are the same.
  void note_superseded(TableInfo& t, const std::string& pk, const std::vector<crdt::Value>& key,
                       const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& incoming,
                       bool incoming_wins, const crdt::Stamp& loser);

  // The values of a held row of `t` (every column, keys first), if it is held.
  static std::optional<std::vector<crdt::Value>> held_values(Replica::Impl& impl,
                                                             const TableInfo& t,
                                                             std::string_view pk);

 private:
  using Row = std::vector<crdt::Value>;  // every column of a table, in TableInfo order

  struct Claim {
    std::uint64_t hlc = 0;
    crdt::SiteId site;
    std::string pk;
    auto operator<=>(const Claim&) const = default;
  };

  // Why a row cannot be shown.
  struct Refusal {
    std::string reason;      // "unique", "check", "not_null", "type", "trigger", "foreign_key"
    std::string constraint;  // e.g. "users.email", "votes >= 0", "task(project) -> project"
    std::string message;     // one sentence naming the table, the key and the constraint
  };

  // Writes `row` into its table (an INSERT of every column when `insert`, else an UPDATE of
  // `changed`), resolving unique conflicts by claim. Returns the refusal when it cannot stand.
  std::optional<Refusal> write(
      TableInfo& t, const std::string& pk, const Row& row, bool insert,
      const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& changed);
  std::optional<Refusal> missing_parent(TableInfo& t, const Row& row);
  std::optional<Refusal> refusal_of(TableInfo& t, const std::string& pk, int rc,
                                    const std::string& message);
  // The shown rows of `t` that share the value of `index` with `row`, by packed key.
  std::vector<std::string> conflicts(TableInfo& t, const UniqueIndex& index, const Row& row);

  // Takes a shown row (`shown`, its values in the table) out of its table into lattice_held with
  // the values `held`, its foreign-key children with it.
  void hold_shown(TableInfo& t, const std::string& pk, const Row& held, const Row& shown,
                  const Refusal& why);
  void place_future(const MergedRow& m);
  bool changes_parent_key(const TableInfo& t,
                          const std::vector<std::pair<const ColumnInfo*, crdt::Value>>& changed);
  void record_held(TableInfo& t, const std::string& pk, const Row& row, const Refusal& why);
  void remove_shown(TableInfo& t, const std::string& pk, const Row& row);
  void hold_children(TableInfo& parent, const Row& row);

  std::optional<Row> shown_row(TableInfo& t, const std::string& pk);
  Row defaults(TableInfo& t, const std::vector<crdt::Value>& key);
  Claim claim(TableInfo& t, const std::string& pk);

  // Runs one statement of merge mode on `t`'s row `pk`; undoes the deletes application
  // triggers made meanwhile (Replica::Impl::side_deletes). Returns SQLite's result code.
  int run(Statement& statement, const TableInfo& t, const std::string& pk, std::string& message);
  void undo_side_deletes();

  // A statement prepared once per connection: by its SQL, or by a short key and the SQL to
  // build on first use.
  Statement& cached(const std::string& sql);
  Statement& cached(const std::string& key, const std::function<std::string()>& sql);
  void event(const TableInfo& t, const std::vector<crdt::Value>& key, bool deleted,
             std::vector<std::string> columns, const std::string& conflict);
  bool is_held(const TableInfo& t, const std::string& pk);

  Replica::Impl& impl_;
  std::vector<ChangeEvent>& events_;
  std::map<std::string, Statement> statements_;
  std::map<crdt::TableId, std::int64_t> held_counts_;
  int depth_ = 0;         // nested undo of side deletes
  int last_changes_ = 0;  // sqlite3_changes() of the last run()
};

}  // namespace lattice::storage
