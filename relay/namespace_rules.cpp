#include "relay/namespace_rules.hpp"

#include <array>
#include <map>
#include <optional>

#include "crdt/error.hpp"
#include "crdt/json.hpp"

namespace lattice::relay {

namespace {

std::string quote_literal(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + '\'';
}

std::string quote_identifier(const std::string& name) {
  std::string out = "\"";
  for (char c : name) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + '"';
}

}  // namespace

std::string first_difference(const std::string& relay, const std::string& device) {
  auto split = [](const std::string& s) {
    std::map<std::string, std::string> tables;
    std::size_t start = 0;
    while (start < s.size()) {
      std::size_t end = s.find(';', start);
      if (end == std::string::npos) end = s.size();
      const std::string item = s.substr(start, end - start);
      const std::size_t paren = item.find('(');
      tables[item.substr(0, paren)] = paren == std::string::npos ? "" : item.substr(paren);
      start = end + 1;
    }
    return tables;
  };
  const auto mine = split(relay), theirs = split(device);
  for (const auto& [table, columns] : mine) {
    auto it = theirs.find(table);
    if (it == theirs.end()) return "table '" + table + "' is missing on the device";
    if (it->second != columns)
      return "table '" + table + "' differs: relay has " + columns + ", device has " + it->second;
  }
  for (const auto& [table, columns] : theirs)
    if (!mine.count(table)) return "table '" + table + "' is not replicated by this namespace";
  return "schemas differ";
}

namespace {

// "" when every table and column of `device` is in `relay` (by id, perhaps renamed) with the
// same key, type and kind, or was dropped there; else the first that is not.
std::string behind_difference(const storage::SchemaManifest& relay,
                              const storage::SchemaManifest& device) {
  for (const auto& t : device.tables) {
    const storage::ManifestTable* mine = relay.table(t.id);
    if (!mine) {
      if (relay.dropped_tables.count(t.id)) continue;
      return "table '" + t.name + "' is not in the namespace";
    }
    auto dropped = relay.dropped_columns.find(t.id);
    for (std::size_t i = 0; i < t.columns.size(); ++i) {
      const storage::ManifestColumn& c = t.columns[i];
      const storage::ManifestColumn* m = mine->column(c.id);
      if (!m) {
        if (dropped != relay.dropped_columns.end() && dropped->second.count(c.id)) continue;
        return "column '" + t.name + "." + c.name + "' is not in the namespace";
      }
      if (m->affinity != c.affinity || m->kind != c.kind)
        return "column '" + t.name + "." + c.name + "' is " + c.affinity + " " + c.kind +
               " on the device but " + m->affinity + " " + m->kind + " ('" + mine->name + "." +
               m->name + "') in the namespace";
      if (c.kind == "key" && (i >= mine->columns.size() || mine->columns[i].id != c.id))
        return "table '" + t.name + "' has its key columns in another order";
    }
    for (const auto& m : mine->columns)
      if (m.kind == "key" && !t.column(m.id))
        return "table '" + t.name + "' lacks key column '" + m.name + "' on the device";
  }
  return "";
}

}  // namespace

SchemaVerdict judge_schema(const storage::SchemaManifest& relay, std::int64_t relay_version,
                           const std::string& recorded, const storage::SchemaManifest& device,
                           std::int64_t device_version) {
  using Kind = SchemaVerdict::Kind;
  const std::string device_text = storage::format_manifest(device);
  if (device_text == storage::format_manifest(relay)) return {Kind::kSame, ""};
  const std::string versions = " (namespace at version " + std::to_string(relay_version) +
                               ", device at version " + std::to_string(device_version) + ")";
  if (device_version > relay_version)
    return {Kind::kAhead,
            storage::manifest_difference(relay, device, "namespace", "device") + versions};
  if (device_version == relay_version)
    return {Kind::kMismatch,
            "version " + std::to_string(device_version) +
                " differs: " + storage::manifest_difference(relay, device, "namespace", "device")};
  if (!recorded.empty()) {
    if (recorded == device_text) return {Kind::kBehind, ""};
    return {Kind::kMismatch, "version " + std::to_string(device_version) +
                                 " of the namespace differs: " +
                                 storage::manifest_difference(storage::parse_manifest(recorded),
                                                              device, "namespace", "device")};
  }
  std::string why = behind_difference(relay, device);
  if (why.empty()) return {Kind::kBehind, ""};
  return {Kind::kMismatch, why + versions};
}

std::string adoption_sql(const std::string& description) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorCode::kSchema, "cannot adopt the schema '" + description + "': " + why);
  };
  std::string sql;
  std::size_t start = 0;
  while (start < description.size()) {
    std::size_t end = description.find(';', start);
    if (end == std::string::npos) end = description.size();
    const std::string item = description.substr(start, end - start);
    start = end + 1;
    const std::size_t open = item.find('(');
    if (open == std::string::npos || open == 0 || item.back() != ')')
      throw bad("'" + item + "' is not table(columns)");
    const std::string table = item.substr(0, open);
    std::string columns, keys, types;
    std::size_t pos = open + 1;
    while (pos < item.size() - 1) {
      std::size_t comma = item.find(',', pos);
      if (comma == std::string::npos || comma > item.size() - 1) comma = item.size() - 1;
      const std::string column = item.substr(pos, comma - pos);
      pos = comma + 1;
      // "name affinity kind": the name may hold spaces, the other two do not.
      const std::size_t space = column.rfind(' ');
      const std::size_t before = space == std::string::npos || space == 0
                                     ? std::string::npos
                                     : column.rfind(' ', space - 1);
      if (before == std::string::npos || before == 0) throw bad("column '" + column + "'");
      const std::string name = column.substr(0, before),
                        affinity = column.substr(before + 1, space - before - 1),
                        kind = column.substr(space + 1);
      if (kind != "key" && kind != "lww" && kind != "counter")
        throw bad("column '" + name + "' has unknown type '" + kind + "'");
      // A declared type with that affinity (none: no declared type).
      static const std::map<std::string, std::string> kDeclared = {{"none", ""},
                                                                   {"text", " TEXT"},
                                                                   {"numeric", " NUMERIC"},
                                                                   {"integer", " INTEGER"},
                                                                   {"real", " REAL"}};
      auto declared = kDeclared.find(affinity);
      if (declared == kDeclared.end())
        throw bad("column '" + name + "' has unknown affinity '" + affinity + "'");
      columns += (columns.empty() ? "" : ", ") + quote_identifier(name) + declared->second +
                 (kind == "counter" ? " NOT NULL DEFAULT 0" : "");
      if (kind == "key") keys += (keys.empty() ? "" : ", ") + quote_identifier(name);
      if (kind == "counter")
        types += (types.empty() ? "" : ",") + crdt::json_quote(name) + ":\"counter\"";
    }
    if (keys.empty()) throw bad("table '" + table + "' has no key column");
    sql += "CREATE TABLE " + quote_identifier(table) + "(" + columns + ", PRIMARY KEY (" + keys +
           "));\nSELECT lattice_replicate(" + quote_literal(table) + ", " +
           quote_literal("{" + types + "}") + ");\n";
  }
  return sql;
}

std::optional<std::uint64_t> fork_point(const transport::Hello& hello,
                                        const std::vector<crdt::TxnTag>& relay_log,
                                        std::uint64_t relay_seq) {
  const std::uint64_t head = hello.held.get(hello.site);
  // Both logs by sequence number: [0] the relay's tag, [1] the device's.
  std::map<std::uint64_t, std::array<std::optional<std::uint64_t>, 2>> logs;
  for (const crdt::TxnTag& t : relay_log)
    if (t.seq > hello.acked_seq) logs[t.seq][0] = t.tag;
  for (const crdt::TxnTag& t : hello.own_log)
    if (t.seq > hello.acked_seq) logs[t.seq][1] = t.tag;
  std::uint64_t agreed = hello.acked_seq;
  for (const auto& [seq, tags] : logs) {
    const auto& [theirs, mine] = tags;
    if (theirs) {
      // The relay holds transactions of this site that this device did not write: the other
      // copy's, or this file is a restored backup.
      if (seq > head) return agreed;
      if (!mine) continue;  // past the hello's log, or written before the device kept one
      if (*mine != *theirs) return agreed;
      agreed = seq;
    } else if (seq <= relay_seq) {
      // The relay counts this transaction without its tag: someone else claimed it.
      return agreed;
    }
  }
  // Counted by the relay, written by no one this device knows: the device keeps only what the
  // two logs agree on.
  if (relay_seq > head) return agreed;
  return std::nullopt;
}

}  // namespace lattice::relay
