// Replica::digest() and compare_digests(): how two replicas prove they hold the same rows.
// Rows are hashed in key order as canonical msgpack arrays (the primary-key packing), so the
// digest covers values and their SQLite types and does not depend on physical order.

#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <memory>
#include <sstream>

#include "crdt/error.hpp"
#include "storage/detail/projection.hpp"
#include "storage/detail/replica_impl.hpp"
#include "storage/primary_key.hpp"

namespace lattice::storage {

namespace {

std::string to_hex(const unsigned char* data, unsigned size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < size; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  return out;
}

struct TableLine {
  std::uint64_t rows = 0;
  std::string hash;
};

std::map<std::string, TableLine> parse(const std::string& digest) {
  std::map<std::string, TableLine> out;
  std::istringstream in(digest);
  std::string name;
  TableLine line;
  while (in >> name >> line.rows >> line.hash) out[name] = line;
  return out;
}

}  // namespace

std::string Replica::digest() {
  impl_->refresh();
  std::map<std::string, const TableInfo*> by_name;
  // The tables this replica has: a later version's (future tables and columns) are left out.
  for (const auto& [id, table] : impl_->tables)
    if (!table->future_table) by_name[lower_case(table->name)] = table.get();
  std::string out;
  for (const auto& entry : by_name) {
    const TableInfo* table = entry.second;
    // Rows in packed-key order, shown rows and held ones (docs/data-quality.md) merged: a
    // replica that holds a row back because of a constraint holds the same state as one that
    // shows it (a relay whose schema declares no constraints).
    std::string columns;
    for (const auto& c : table->columns)
      columns += std::string(columns.empty() ? "" : ", ") + quote_identifier(c.name);
    Statement rows(impl_->db,
                   "SELECT " + key_expression(*table, quote_identifier(table->name).c_str()) +
                       ", " + columns + " FROM " + quote_identifier(table->name) + " ORDER BY 1");
    Statement held(impl_->db, "SELECT pk, vals FROM lattice_held WHERE table_id = ? ORDER BY pk");
    held.bind(1, static_cast<std::int64_t>(table->id));
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> sha(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1)
      throw Error(ErrorCode::kInternal, "cannot start a SHA-256 digest");
    std::uint64_t count = 0;
    std::vector<crdt::Value> values(table->columns.size());
    // Columns hashed keys first, in key order, then the others by id: tables whose columns lie
    // in another physical order (a relay that created them from a schema manifest, a device
    // that added them in another migration order) hash alike.
    std::vector<std::size_t> order(table->columns.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      const ColumnInfo &x = table->columns[a], &y = table->columns[b];
      if ((x.key_position != 0) != (y.key_position != 0)) return x.key_position != 0;
      return x.key_position == 0 && x.id < y.id;
    });
    std::vector<crdt::Value> canonical(order.size());
    auto add = [&](const std::vector<crdt::Value>& row) {
      for (std::size_t i = 0; i < order.size(); ++i) canonical[i] = row[order[i]];
      const std::string packed = pack_values(canonical);
      EVP_DigestUpdate(sha.get(), packed.data(), packed.size());
      ++count;
    };
    bool more_rows = rows.step(), more_held = held.step();
    while (more_rows || more_held) {
      if (more_held && (!more_rows || held.column_blob(0) < rows.column_blob(0))) {
        add(held_row(*table, held.column_blob(1), held.column_blob(0)));
        more_held = held.step();
        continue;
      }
      for (std::size_t i = 0; i < values.size(); ++i)
        values[i] = rows.column(static_cast<int>(i + 1));
      add(values);
      more_rows = rows.step();
    }
    unsigned char hash[EVP_MAX_MD_SIZE];
    unsigned size = 0;
    EVP_DigestFinal_ex(sha.get(), hash, &size);
    out += entry.first + ' ' + std::to_string(count) + ' ' + to_hex(hash, size) + '\n';
  }
  return out;
}

std::vector<std::string> compare_digests(const std::string& here, const std::string& there) {
  const auto mine = parse(here), theirs = parse(there);
  std::vector<std::string> out;
  for (const auto& [name, line] : mine) {
    auto it = theirs.find(name);
    if (it == theirs.end()) {
      out.push_back("table " + name + ": replicated here, not there");
    } else if (it->second.hash != line.hash) {
      out.push_back("table " + name + ": " + std::to_string(line.rows) + " rows here, " +
                    std::to_string(it->second.rows) + " there, contents differ");
    }
  }
  for (const auto& [name, line] : theirs)
    if (!mine.count(name)) out.push_back("table " + name + ": replicated there, not here");
  return out;
}

}  // namespace lattice::storage
