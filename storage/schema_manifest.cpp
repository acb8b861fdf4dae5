#include "storage/schema_manifest.hpp"

#include <algorithm>
#include <cstdio>

#include "crdt/error.hpp"

namespace lattice::storage {

namespace {

constexpr std::size_t kMaxTables = 4096;
constexpr std::size_t kMaxColumns = 2000;  // SQLite's default SQLITE_MAX_COLUMN

bool plain(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; }

void append_name(std::string& out, const std::string& name) {
  for (char c : name) {
    if (plain(c)) {
      out += c;
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
      out += hex;
    }
  }
}

bool is_affinity(std::string_view word) {
  return word == "none" || word == "text" || word == "numeric" || word == "integer" ||
         word == "real";
}

bool is_kind(std::string_view word) { return word == "key" || word == "lww" || word == "counter"; }

// A cursor over the text that names where it stopped when something is wrong.
struct Reader {
  std::string_view text;
  std::size_t pos = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::kInvalidArgument,
                "schema manifest: " + what + " at byte " + std::to_string(pos));
  }
  bool at_end() const { return pos >= text.size(); }
  bool take(char c) {
    if (pos < text.size() && text[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!take(c)) fail(std::string("expected '") + c + "'");
  }
  std::string name() {
    std::string out;
    while (pos < text.size()) {
      const char c = text[pos];
      if (plain(c)) {
        out += c;
        ++pos;
      } else if (c == '%') {
        if (text.size() - pos < 3) fail("a cut %XX escape");
        unsigned value = 0;
        for (std::size_t i = 1; i <= 2; ++i) {
          const char h = text[pos + i];
          value = value * 16 + (h >= '0' && h <= '9'   ? static_cast<unsigned>(h - '0')
                                : h >= 'A' && h <= 'F' ? static_cast<unsigned>(h - 'A' + 10)
                                                       : (fail("a bad %XX escape"), 0u));
        }
        if (value == 0) fail("a name holds a NUL byte");
        out += static_cast<char>(value);
        pos += 3;
      } else {
        break;
      }
    }
    if (out.empty()) fail("expected a name");
    return out;
  }
  std::uint32_t id() {
    expect('#');
    std::uint64_t value = 0;
    const std::size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9' && pos - start < 10)
      value = value * 10 + static_cast<std::uint64_t>(text[pos++] - '0');
    if (pos == start || value == 0 || value > 0x7fffffffu) fail("expected an id from 1 to 2^31-1");
    return static_cast<std::uint32_t>(value);
  }
  std::string word() {
    const std::size_t start = pos;
    while (pos < text.size() && text[pos] >= 'a' && text[pos] <= 'z') ++pos;
    return std::string(text.substr(start, pos - start));
  }
};

}  // namespace

const ManifestColumn* ManifestTable::column(crdt::ColumnId id) const {
  for (const auto& c : columns)
    if (c.id == id) return &c;
  return nullptr;
}

const ManifestTable* SchemaManifest::table(crdt::TableId id) const {
  for (const auto& t : tables)
    if (t.id == id) return &t;
  return nullptr;
}

std::string format_manifest(const SchemaManifest& manifest) {
  std::vector<const ManifestTable*> tables;
  for (const auto& t : manifest.tables) tables.push_back(&t);
  std::sort(tables.begin(), tables.end(), [](auto* a, auto* b) { return a->id < b->id; });
  std::string out;
  for (const ManifestTable* t : tables) {
    if (!out.empty()) out += ';';
    append_name(out, t->name);
    out += '#' + std::to_string(t->id) + '(';
    std::vector<const ManifestColumn*> keys, others;
    for (const auto& c : t->columns) (c.kind == "key" ? keys : others).push_back(&c);
    std::sort(others.begin(), others.end(), [](auto* a, auto* b) { return a->id < b->id; });
    keys.insert(keys.end(), others.begin(), others.end());
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (i) out += ',';
      append_name(out, keys[i]->name);
      out += '#' + std::to_string(keys[i]->id) + ' ' + keys[i]->affinity + ' ' + keys[i]->kind;
    }
    out += ')';
  }
  return out;
}

SchemaManifest parse_manifest(std::string_view text) {
  SchemaManifest out;
  Reader r{text};
  while (!r.at_end()) {
    if (!out.tables.empty()) r.expect(';');
    if (out.tables.size() == kMaxTables)
      r.fail("more than " + std::to_string(kMaxTables) + " tables");
    ManifestTable t;
    t.name = r.name();
    t.id = r.id();
    if (out.table(t.id)) r.fail("table id " + std::to_string(t.id) + " appears twice");
    r.expect('(');
    bool others = false;
    do {
      if (t.columns.size() == kMaxColumns)
        r.fail("table '" + t.name + "' has more than " + std::to_string(kMaxColumns) + " columns");
      ManifestColumn c;
      c.name = r.name();
      c.id = r.id();
      r.expect(' ');
      c.affinity = r.word();
      if (!is_affinity(c.affinity)) r.fail("column '" + c.name + "': unknown affinity");
      r.expect(' ');
      c.kind = r.word();
      if (!is_kind(c.kind)) r.fail("column '" + c.name + "': unknown kind");
      if (c.kind == "key" && others) r.fail("key column '" + c.name + "' after other columns");
      others = others || c.kind != "key";
      if (t.column(c.id)) r.fail("column id " + std::to_string(c.id) + " appears twice");
      t.columns.push_back(std::move(c));
    } while (r.take(','));
    r.expect(')');
    if (t.columns.empty() || t.columns.front().kind != "key")
      r.fail("table '" + t.name + "' has no key column");
    out.tables.push_back(std::move(t));
  }
  std::sort(out.tables.begin(), out.tables.end(),
            [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

std::string manifest_difference(const SchemaManifest& a, const SchemaManifest& b,
                                const std::string& a_name, const std::string& b_name) {
  auto describe = [](const ManifestColumn& c) { return c.affinity + " " + c.kind; };
  auto one_side = [&](const SchemaManifest& x, const SchemaManifest& y,
                      const std::string& x_name) -> std::string {
    for (const auto& t : x.tables) {
      const ManifestTable* other = y.table(t.id);
      if (!other) return "table '" + t.name + "' is on the " + x_name + " only";
      for (const auto& c : t.columns)
        if (!other->column(c.id))
          return "table '" + t.name + "' has column '" + c.name + "' on the " + x_name + " only";
    }
    return "";
  };
  for (const auto& t : a.tables) {
    const ManifestTable* other = b.table(t.id);
    if (!other) continue;
    if (t.name != other->name)
      return "table '" + t.name + "' on the " + a_name + " is '" + other->name + "' on the " +
             b_name;
    for (const auto& c : t.columns) {
      const ManifestColumn* theirs = other->column(c.id);
      if (!theirs) continue;
      if (c.name != theirs->name)
        return "column '" + t.name + "." + c.name + "' on the " + a_name + " is '" + theirs->name +
               "' on the " + b_name;
      if (c != *theirs)
        return "column '" + t.name + "." + c.name + "' is " + describe(c) + " on the " + a_name +
               " but " + describe(*theirs) + " on the " + b_name;
    }
    std::size_t a_keys = 0, b_keys = 0;
    for (const auto& c : t.columns) a_keys += c.kind == "key";
    for (const auto& c : other->columns) b_keys += c.kind == "key";
    for (std::size_t i = 0; i < std::min(a_keys, b_keys); ++i)
      if (t.columns[i].id != other->columns[i].id)
        return "table '" + t.name + "' has its key columns in another order on the " + b_name;
  }
  if (auto why = one_side(a, b, a_name); !why.empty()) return why;
  if (auto why = one_side(b, a, b_name); !why.empty()) return why;
  return "";
}

}  // namespace lattice::storage
