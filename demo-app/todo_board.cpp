#include "demo-app/todo_board.hpp"

#include <cmath>
#include <cstdio>
#include <random>

namespace lattice::demo {

const char* const kTodoSchemaSql =
    "CREATE TABLE IF NOT EXISTS todo(id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', "
    "done INTEGER NOT NULL DEFAULT 0, votes INTEGER NOT NULL DEFAULT 0, "
    "position REAL NOT NULL DEFAULT 0);\n"
    "SELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');\n";

namespace {

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

TodoBoard::TodoBoard(const std::string& path) : replica_(Replica::open(path)) {
  replica_->exec(kTodoSchemaSql);
  changed_elsewhere();  // the baseline
}

std::vector<TodoItem> TodoBoard::items() {
  const QueryResult result =
      replica_->query("SELECT id, title, done, votes, position FROM todo ORDER BY position, id");
  std::vector<TodoItem> items;
  items.reserve(result.rows.size());
  for (const auto& row : result.rows)
    items.push_back(
        {as_text(row[0]), as_text(row[1]), as_int(row[2]) != 0, as_int(row[3]), as_real(row[4])});
  return items;
}

bool TodoBoard::exists(const std::string& id) {
  return !replica_->query("SELECT 1 FROM todo WHERE id = ?", {id}).rows.empty();
}

std::string TodoBoard::add(const std::string& title) {
  const std::string id = random_id();
  replica_->query(
      "INSERT INTO todo(id, title, position) "
      "VALUES (?, ?, coalesce((SELECT max(position) FROM todo), 0) + 1)",
      {id, title});
  return id;
}

bool TodoBoard::rename(const std::string& id, const std::string& title) {
  if (!exists(id)) return false;
  replica_->query("UPDATE todo SET title = ? WHERE id = ?", {title, id});
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
            ",\"position\":" + json_number(item.position) + "}";
  }
  return json + "]";
}

std::string TodoBoard::text() {
  std::string out;
  for (const auto& item : items()) {
    char votes[48];
    std::snprintf(votes, sizeof votes, " (%lld vote%s)", static_cast<long long>(item.votes),
                  item.votes == 1 ? "" : "s");
    out += item.done ? "[x] " : "[ ] ";
    out += item.title;
    out += votes;
    out += '\n';
  }
  return out;
}

}  // namespace lattice::demo
