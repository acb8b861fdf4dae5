// Writes a few encoded changesets, the seed corpus of changeset_fuzz, into the folder named by
// the first argument, and creates any further folders named (libFuzzer's working corpus).

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "tests/fuzz/seed_writer.hpp"

using namespace lattice::crdt;

namespace {

SiteId site(std::uint8_t n) {
  SiteId id;
  for (auto& b : id.bytes) b = n++;
  return id;
}

std::vector<Changeset> seeds() {
  std::vector<Changeset> out;
  out.emplace_back();  // empty

  Changeset cs;
  cs.since.advance(site(1), 3);
  cs.until.advance(site(1), 5);
  cs.until.advance(site(40), 1);
  cs.sites = {site(1), site(40)};
  cs.tables = {TableSchema{7,
                           "notes",
                           1,
                           {{1, "id", ColumnKind::kLww},
                            {2, "title", ColumnKind::kLww},
                            {3, "score", ColumnKind::kLww},
                            {4, "likes", ColumnKind::kCounter}}}};
  RowChange row;
  row.table = 7;
  row.primary_key = "\x01k";
  row.liveness = ChangeStamp{1, Hlc{1000}, 0, 4};
  row.liveness_values = {{2, std::string("hello")}, {3, 2.5}};
  row.cells = {CellChange{3, ChangeStamp{1, Hlc{2000}, 1, 1}, Blob{"\x00\x01"}}};
  row.counters = {CounterChange{4, 0, CounterPart{1, 5, -7}}};
  cs.rows.push_back(row);
  out.push_back(cs);  // one live row of every kind of change

  RowChange deleted;
  deleted.table = 7;
  deleted.primary_key = "\x01z";
  deleted.liveness = ChangeStamp{2, Hlc{3000}, 1, 2};
  cs.rows.push_back(deleted);
  cs.rows[0].liveness_values.push_back({1, std::numeric_limits<std::int64_t>::min()});
  out.push_back(cs);  // a deletion too, and an extreme integer
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> bytes;
  for (const auto& seed : seeds()) bytes.push_back(encode_changeset(seed));
  return lattice::fuzz::write_seeds(argc, argv, bytes, "lcs");
}
