#pragma once
// The todo board of the demo app: one replicated table, read and written with plain SQL through
// the public API (lattice/lattice.hpp), exactly as an application would.
//
//   version 1: todo(id TEXT PRIMARY KEY, title TEXT, done INTEGER, votes INTEGER counter,
//                   position REAL)
//   version 2: the same plus `due` and `assignee` (TEXT), and `title` renamed `summary`
//
// The schema is two numbered migrations (Replica::migrate), run at start-up up to the version
// the app is told to use, so that two releases of the app can share one board: a device still on
// version 1 reads and writes `title`, and its writes land in `summary` on the others.
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

// The newest schema version this build knows, and the SQL of migration `version` (1 to
// kTodoSchemaVersion; nullptr otherwise). A relay that migrates with the app runs the same files
// (--schema-dir DIR/board/<version>.sql, written by `lattice-todo --print-migration N`).
constexpr int kTodoSchemaVersion = 2;
const char* todo_migration(int version);

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
  std::string due;       // version 2: "YYYY-MM-DD", or "" for none
  std::string assignee;  // version 2: a name, or "" for nobody
};

class TodoBoard {
 public:
  // Opens (creating if missing) the replica at `path` and runs the migrations up to
  // `schema_version` (1 or 2) that it has not run yet. Throws lattice::Error as Replica::open
  // and Replica::migrate do, and (kInvalidArgument) for a version this build does not know or a
  // file already past `schema_version` (a newer release of the app wrote it).
  explicit TodoBoard(const std::string& path, int schema_version = kTodoSchemaVersion);

  int schema_version() const { return schema_version_; }

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
  // Version 2 only (kInvalidArgument on version 1). `due` is "YYYY-MM-DD" or "" (none; any other
  // text is kInvalidArgument); `assignee` "" is nobody.
  bool set_due(const std::string& id, const std::string& due);
  bool assign(const std::string& id, const std::string& assignee);

  // True when another connection to the file (the SyncClient merging other devices' changes,
  // another process) committed since the previous call. Cheap: PRAGMA data_version.
  bool changed_elsewhere();

  // The items as the page reads them: a JSON array of {id, title, done, votes, position}, plus
  // {due, assignee} on version 2, valid whatever the rows hold. `title` is the item's text
  // whichever column holds it (`title` on version 1, `summary` on version 2).
  std::string items_json();

  // The board as plain text, one item a line: "[x] title (2 votes)" on version 1; on version 2
  // with ", due YYYY-MM-DD" and ", @assignee" inside the brackets when set. What the scripted
  // demo prints and compares.
  std::string text();

  Replica& replica() { return *replica_; }

 private:
  bool exists(const std::string& id);
  void require_version_2(const char* what) const;

  std::unique_ptr<Replica> replica_;
  int schema_version_;
  std::string title_column_;  // "title" (version 1) or "summary" (version 2)
  std::int64_t data_version_ = -1;
};

}  // namespace lattice::demo
