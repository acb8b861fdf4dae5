#pragma once
// The todo board of the demo app: one replicated table, read and written with plain SQL through
// the public API (lattice/lattice.hpp), exactly as an application would.
//
//   todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER, votes INTEGER counter, position REAL)
//
// Every column but `votes` is last-writer-wins; `votes` is a counter, so concurrent votes add
// up. The order of the board is `position` (fractional: a moved item takes the midpoint of its
// new neighbours), then `id`, so that two items placed at the same position concurrently still
// show in the same order on every device.
//
// Not thread-safe, like the Replica it wraps: one thread at a time.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lattice/lattice.hpp"

namespace lattice::demo {

// The SQL that creates and replicates the table; the relay runs the same SQL (--schema) so
// that its namespace and the devices agree on the replicated schema.
extern const char* const kTodoSchemaSql;

// `text` as a JSON string literal, quotes included: control characters escaped, and bytes that
// are not UTF-8 (a remote device may write any bytes) replaced by U+FFFD, so the result is valid
// JSON whatever the data.
std::string json_string(const std::string& text);

// `value` as a JSON number; null for what JSON cannot write (infinities, NaN), which a remote
// device may put in any REAL column.
std::string json_number(double value);

struct TodoItem {
  std::string id;
  std::string title;
  bool done = false;
  std::int64_t votes = 0;
  double position = 0;
};

class TodoBoard {
 public:
  // Opens (creating if missing) the replica at `path` and makes sure the table exists and is
  // replicated. Throws lattice::Error as Replica::open and Replica::exec do.
  explicit TodoBoard(const std::string& path);

  // Every item, in board order.
  std::vector<TodoItem> items();

  // Each edit is one transaction, so one local change for sync. Edits of an id that is not on
  // the board do nothing and return false (it may have been deleted by another device).
  // add() returns the new item's id (16 random hex digits).
  std::string add(const std::string& title);
  bool rename(const std::string& id, const std::string& title);
  bool set_done(const std::string& id, bool done);
  bool vote(const std::string& id);
  bool remove(const std::string& id);
  // Moves `id` right after `after`, or to the top when `after` is empty.
  bool move_after(const std::string& id, const std::string& after);

  // True when another connection to the file (the SyncClient merging other devices' changes,
  // another process) committed since the previous call. Cheap: PRAGMA data_version.
  bool changed_elsewhere();

  // The items as the page reads them: a JSON array of {id, title, done, votes, position}, valid
  // whatever the rows hold.
  std::string items_json();

  // The board as plain text, one item a line ("[x] title (2 votes)"): what the scripted demo
  // prints and compares.
  std::string text();

  Replica& replica() { return *replica_; }

 private:
  bool exists(const std::string& id);

  std::unique_ptr<Replica> replica_;
  std::int64_t data_version_ = -1;
};

}  // namespace lattice::demo
