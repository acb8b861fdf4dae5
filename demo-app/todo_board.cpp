#include "demo-app/todo_board.hpp"

#include <cmath>
#include <cstdio>
#include <random>

namespace lattice::demo {

namespace {

// Never edit a migration once released: a number names one change on every device and on the
// relay (Replica::migrate refuses other SQL under a number that ran). Add the next one instead.
const char* const kMigrations[kTodoSchemaVersion] = {
    // 1: the first release. IF NOT EXISTS: files made before the app numbered its schema
    // already have the table, and take this number without a change.
    "CREATE TABLE IF NOT EXISTS todo(id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', "
    "done INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0, "
    "position REAL NOT NULL DEFAULT 0);\n"
    "SELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');\n",
    // 2: a due date and an assignee; `title` becomes `summary` (same column id, so its history
    // and version 1 devices' writes to `title` land in it).
    "ALTER TABLE todo ADD COLUMN due TEXT;\n"
    "ALTER TABLE todo ADD COLUMN assignee TEXT;\n"
    "ALTER TABLE todo RENAME COLUMN title TO summary;\n",
};

bool valid_date(const std::string& date) {
  if (date.size() != 10 || date[4] != '-' || date[7] != '-') return false;
  for (std::size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (date[i] < '0' || date[i] > '9') return false;
  const int month = std::stoi(date.substr(5, 2)), day = std::stoi(date.substr(8, 2));
  return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

// "" as SQL NULL: no due date, nobody assigned.
Value text_or_null(const std::string& text) {
  if (text.empty()) return Value(std::monostate{});
  return Value(text);
}

std::string random_id() {
  std::random_device random;
  char id[17];
  std::snprintf(id, sizeof id, "%08x%08x", random(), random());
  return id;
}

std::int64_t as_int(const Value& value) {
  if (const auto* i = std::get_if<std::int64_t>(&value)) return *i;
  if (const auto* d = std::get_if<double>(&value)) return static_cast<std::int64_t>(*d);
  return 0;
}

double as_real(const Value& value) {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* i = std::get_if<std::int64_t>(&value)) return static_cast<double>(*i);
  return 0;
}

std::string as_text(const Value& value) {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  return {};
}

}  // namespace

const char* todo_migration(int version) {
  return version >= 1 && version <= kTodoSchemaVersion ? kMigrations[version - 1] : nullptr;
}

std::string json_string(const std::string& text) {
  std::string out = "\"";
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = bytes[i];
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      // A whole, shortest-form UTF-8 sequence goes as it is; anything else is U+FFFD.
      const std::size_t length = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
      bool valid = length != 0 && i + length <= n && c >= 0xc2 && c <= 0xf4;
      for (std::size_t k = 1; valid && k < length; ++k) valid = (bytes[i + k] & 0xc0) == 0x80;
      if (valid && length == 3)
        valid = !(c == 0xe0 && bytes[i + 1] < 0xa0) && !(c == 0xed && bytes[i + 1] >= 0xa0);
      if (valid && length == 4)
        valid = !(c == 0xf0 && bytes[i + 1] < 0x90) && !(c == 0xf4 && bytes[i + 1] >= 0x90);
      if (valid) {
        out.append(text, i, length);
        i += length;
      } else {
        out += "\\ufffd";
        ++i;
      }
    }
  }
  return out + "\"";
}

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

TodoBoard::TodoBoard(const std::string& path, int schema_version)
    : schema_version_(schema_version), title_column_(schema_version >= 2 ? "summary" : "title") {
  if (!todo_migration(schema_version))
    throw Error(ErrorCode::kInvalidArgument, "schema version " + std::to_string(schema_version) +
                                                 " is not one of 1 to " +
                                                 std::to_string(kTodoSchemaVersion));
  replica_ = Replica::open(path);
  if (replica_->schema_version() > schema_version)
    throw Error(ErrorCode::kInvalidArgument,
                "the board '" + path + "' is at schema version " +
                    std::to_string(replica_->schema_version()) + ", newer than this app's " +
                    std::to_string(schema_version) + ": a newer release of the app wrote it");
  for (int version = 1; version <= schema_version; ++version)
    replica_->migrate(version, todo_migration(version));
  changed_elsewhere();  // the baseline
}

void TodoBoard::require_version_2(const char* what) const {
  if (schema_version_ < 2)
    throw Error(ErrorCode::kInvalidArgument,
                std::string(what) + " come with schema version 2; this board runs version " +
                    std::to_string(schema_version_));
}

std::vector<TodoItem> TodoBoard::items() {
  const bool v2 = schema_version_ >= 2;
  const QueryResult result =
      replica_->query("SELECT id, " + title_column_ + ", done, votes, position" +
                      (v2 ? ", due, assignee" : "") + " FROM todo ORDER BY position, id");
  std::vector<TodoItem> items;
  items.reserve(result.rows.size());
  for (const auto& row : result.rows) {
    items.push_back(
        {as_text(row[0]), as_text(row[1]), as_int(row[2]) != 0, as_int(row[3]), as_real(row[4])});
    if (v2) {
      items.back().due = as_text(row[5]);
      items.back().assignee = as_text(row[6]);
    }
  }
  return items;
}

bool TodoBoard::exists(const std::string& id) {
  return !replica_->query("SELECT 1 FROM todo WHERE id = ?", {id}).rows.empty();
}

std::string TodoBoard::add(const std::string& title) {
  const std::string id = random_id();
  replica_->query(
      "INSERT INTO todo(id, " + title_column_ +
          ", position) VALUES (?, ?, coalesce((SELECT max(position) FROM todo), 0) + 1)",
      {id, title});
  return id;
}

bool TodoBoard::rename(const std::string& id, const std::string& title) {
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET " + title_column_ + " = ? WHERE id = ?", {title, id});
  return true;
}

bool TodoBoard::set_due(const std::string& id, const std::string& due) {
  require_version_2("due dates");
  if (!due.empty() && !valid_date(due))
    throw Error(ErrorCode::kInvalidArgument, "a due date is YYYY-MM-DD, not '" + due + "'");
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET due = ? WHERE id = ?", {text_or_null(due), id});
  return true;
}

bool TodoBoard::assign(const std::string& id, const std::string& assignee) {
  require_version_2("assignees");
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET assignee = ? WHERE id = ?", {text_or_null(assignee), id});
  return true;
}

bool TodoBoard::set_done(const std::string& id, bool done) {
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET done = ? WHERE id = ?", {std::int64_t{done ? 1 : 0}, id});
  return true;
}

bool TodoBoard::vote(const std::string& id) {
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET votes = votes + 1 WHERE id = ?", {id});
  return true;
}

bool TodoBoard::remove(const std::string& id) {
  if (!exists(id)) return false;
  replica_->query("DELETE FROM todo WHERE id = ?", {id});
  return true;
}

bool TodoBoard::move_after(const std::string& id, const std::string& after) {
  if (!exists(id) || id == after) return false;
  std::vector<TodoItem> others;
  for (auto& item : items())
    if (item.id != id) others.push_back(std::move(item));
  double position = 1;
  if (after.empty()) {
    if (!others.empty()) position = others.front().position - 1;
  } else {
    std::size_t i = 0;
    while (i < others.size() && others[i].id != after) ++i;
    if (i == others.size()) return false;
    position = i + 1 < others.size() ? (others[i].position + others[i + 1].position) / 2
                                     : others[i].position + 1;
  }
  replica_->query("UPDATE todo SET position = ? WHERE id = ?", {position, id});
  return true;
}

bool TodoBoard::changed_elsewhere() {
  const QueryResult result = replica_->query("PRAGMA data_version");
  const std::int64_t version = result.rows.empty() ? 0 : as_int(result.rows[0][0]);
  const bool changed = data_version_ >= 0 && version != data_version_;
  data_version_ = version;
  return changed;
}

std::string TodoBoard::items_json() {
  std::string json = "[";
  for (const TodoItem& item : items()) {
    if (json.size() > 1) json += ',';
    json += "{\"id\":" + json_string(item.id) + ",\"title\":" + json_string(item.title) +
            ",\"done\":" + (item.done ? "true" : "false") +
            ",\"votes\":" + std::to_string(item.votes) +
            ",\"position\":" + json_number(item.position);
    if (schema_version_ >= 2)
      json += ",\"due\":" + json_string(item.due) + ",\"assignee\":" + json_string(item.assignee);
    json += '}';
  }
  return json + "]";
}

std::string TodoBoard::text() {
  std::string out;
  for (const auto& item : items()) {
    char votes[48];
    std::snprintf(votes, sizeof votes, " (%lld vote%s", static_cast<long long>(item.votes),
                  item.votes == 1 ? "" : "s");
    out += item.done ? "[x] " : "[ ] ";
    out += item.title;
    out += votes;
    if (!item.due.empty()) out += ", due " + item.due;
    if (!item.assignee.empty()) out += ", @" + item.assignee;
    out += ")\n";
  }
  return out;
}

}  // namespace lattice::demo
