#include "tests/storage/test_support.hpp"

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "storage/sqlite.hpp"

namespace lattice::test {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "lattice-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr)
    throw std::runtime_error("cannot make a temporary directory from " + pattern);
  path = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path, ignored);
}

std::string typed(const crdt::Value& v) {
  std::ostringstream out;
  switch (v.index()) {
    case 0:
      out << "null";
      break;
    case 1:
      out << "int:" << std::get<std::int64_t>(v);
      break;
    case 2:
      out << "real:" << std::get<double>(v);
      break;
    case 3:
      out << "text:" << std::get<std::string>(v);
      break;
    case 4:
      out << "blob:" << std::hex;
      for (unsigned char c : std::get<crdt::Blob>(v).bytes) out << int(c) << '.';
      out << std::dec;
      break;
  }
  return out.str();
}

std::string dump_query(storage::Replica& replica, const std::string& sql) {
  std::string out;
  for (const auto& row : replica.query(sql).rows) {
    for (const auto& v : row) out += typed(v) + "|";
    out += "\n";
  }
  return out;
}

std::unique_ptr<storage::Replica> open_todo_replica(const std::string& path,
                                                    storage::ReplicaOptions options) {
  auto replica = storage::Replica::open(path, std::move(options));
  replica->exec(kTodoSchema);
  return replica;
}

std::string dump_table(storage::Replica& replica, const std::string& table) {
  return dump_query(replica, "SELECT * FROM " + storage::quote_identifier(table) + " ORDER BY 1");
}

std::string dump_everything(storage::Replica& replica) {
  std::string out;
  for (const auto& row :
       replica.query("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").rows) {
    const std::string name = std::get<std::string>(row[0]);
    // Rows sorted as text, so the dump does not depend on the table's physical order.
    std::vector<std::string> lines;
    std::string rows = dump_query(replica, "SELECT * FROM " + storage::quote_identifier(name));
    for (std::size_t start = 0, end; start < rows.size(); start = end + 1) {
      end = rows.find('\n', start);
      lines.push_back(rows.substr(start, end - start));
    }
    std::sort(lines.begin(), lines.end());
    out += "== " + name + "\n";
    for (const auto& line : lines) out += line + "\n";
  }
  return out;
}

std::uint64_t seed_from_env(std::uint64_t fallback) {
  const char* text = std::getenv("LATTICE_SEED");
  return text ? std::strtoull(text, nullptr, 10) : fallback;
}

std::size_t scaled(std::size_t n) {
  const char* text = std::getenv("LATTICE_PROPERTY_SCALE");
  const double factor = text && *text ? std::strtod(text, nullptr) : 1.0;
  return std::max<std::size_t>(1, static_cast<std::size_t>(static_cast<double>(n) * factor));
}

}  // namespace lattice::test
