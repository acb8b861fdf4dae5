#include "crdt/changeset_codec.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <msgpack.hpp>
#include <random>
#include <string>
#include <string_view>
#include <variant>

#include "crdt/error.hpp"

using lattice::Error;
using lattice::ErrorCode;
using namespace lattice::crdt;

namespace {

SiteId site(std::uint8_t n) {
  SiteId id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(n + i);
  return id;
}

// Table 7 "notes": key column 1, lww columns 2..4, counter column 5.
TableSchema notes_table() {
  return TableSchema{7,
                     "notes",
                     1,
                     {{1, "id", ColumnKind::kLww},
                      {2, "title", ColumnKind::kLww},
                      {3, "body", ColumnKind::kLww},
                      {4, "score", ColumnKind::kLww},
                      {5, "likes", ColumnKind::kCounter}}};
}

// One row of table 7 with a live liveness event and nothing else.
RowChange live_row(std::string primary_key) {
  RowChange row;
  row.table = 7;
  row.primary_key = std::move(primary_key);
  row.liveness = ChangeStamp{1, Hlc{100}, 0, 1};
  return row;
}

Changeset small_changeset() {
  Changeset cs;
  cs.since.advance(site(1), 3);
  cs.until.advance(site(1), 5);
  cs.until.advance(site(50), 2);
  cs.sites = {site(1), site(50)};
  cs.tables = {notes_table()};
  RowChange row = live_row("\x01k1");
  row.liveness_values = {{2, std::string("hello")}, {4, std::int64_t{-3}}};
  row.cells = {CellChange{3, ChangeStamp{1, Hlc{200}, 1, 2}, Blob{"\x00\xff"}}};
  row.counters = {CounterChange{5, 1, CounterPart{1, 2, -40}}};
  cs.rows.push_back(row);
  RowChange deleted;
  deleted.table = 7;
  deleted.primary_key = "\x01k2";
  deleted.liveness = ChangeStamp{2, Hlc{300}, 0, 4};
  cs.rows.push_back(deleted);
  return cs;
}

// `big`: whether to include values of hundreds and tens of thousands of bytes.
Changeset rich_changeset(bool big = true) {
  Changeset cs = small_changeset();
  cs.since.advance(site(200), std::numeric_limits<std::uint64_t>::max());
  cs.until.advance(site(200), std::numeric_limits<std::uint64_t>::max());
  cs.sites.push_back(site(200));
  cs.tables.push_back(TableSchema{std::numeric_limits<TableId>::max(), "", 0, {}});
  cs.tables.push_back(
      TableSchema{3,
                  "sparse ids",
                  1,
                  {{70000, "k", ColumnKind::kLww}, {4000000000u, "n", ColumnKind::kCounter}}});
  RowChange row = live_row(std::string("\x00\x00", 2));
  row.liveness = ChangeStamp{std::numeric_limits<std::uint64_t>::max(),
                             Hlc{std::numeric_limits<std::uint64_t>::max()}, 2,
                             std::numeric_limits<std::uint64_t>::max()};
  row.liveness_values = {
      {1, std::numeric_limits<std::int64_t>::min()}, {2, std::string()}, {3, Blob{}}};
  row.cells = {
      CellChange{4, ChangeStamp{3, Hlc{1}, 0, 0}, std::numeric_limits<std::int64_t>::max()}};
  row.counters = {CounterChange{5, 0, CounterPart{1, 1, std::numeric_limits<std::int64_t>::min()}},
                  CounterChange{5, 2, CounterPart{3, 9, std::numeric_limits<std::int64_t>::max()}}};
  cs.rows.push_back(row);
  const double reals[] = {0.0,
                          -0.0,
                          1.0,
                          -2.5,
                          1e300,
                          std::numeric_limits<double>::denorm_min(),
                          std::numeric_limits<double>::infinity(),
                          -std::numeric_limits<double>::infinity(),
                          std::numeric_limits<double>::quiet_NaN()};
  for (std::size_t i = 0; i < std::size(reals); ++i) {
    RowChange r = live_row("r" + std::to_string(i));
    r.liveness_values = {{4, reals[i]}, {3, std::monostate{}}};
    r.cells = {CellChange{2, ChangeStamp{1, Hlc{i}, 1, i}, std::string(big ? 300 : 3, 'x')}};
    cs.rows.push_back(r);
  }
  RowChange sparse;
  sparse.table = 3;
  sparse.primary_key = "s";
  sparse.cells = {
      CellChange{70000, ChangeStamp{5, Hlc{9}, 2, 9}, Blob{std::string(big ? 70000 : 2, '\0')}}};
  sparse.counters = {CounterChange{4000000000u, 2, CounterPart{5, 10, 0}}};
  cs.rows.push_back(sparse);
  RowChange bare;  // a row with nothing but its key is legal
  bare.table = 3;
  bare.primary_key = "b";
  cs.rows.push_back(bare);
  return cs;
}

// Reals compared by their bits, so that NaN equals itself: replaces each real by a blob of its
// bits on a copy.
Changeset with_reals_as_bits(Changeset cs) {
  auto fix = [](Value& v) {
    if (auto* d = std::get_if<double>(&v)) {
      v = Blob{"real:" + std::to_string(std::bit_cast<std::uint64_t>(*d))};
    }
  };
  for (RowChange& row : cs.rows) {
    for (auto& [column, value] : row.liveness_values) fix(value);
    for (CellChange& cell : row.cells) fix(cell.value);
  }
  return cs;
}

// Runs `fn`, which must throw lattice::Error, and returns it.
Error error_from(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected a lattice::Error");
  return Error(ErrorCode::kOk, "");
}

Error decode_error(std::string_view bytes, const DecodeLimits& limits = {}) {
  return error_from([&] { decode_changeset(bytes, limits); });
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// Encodes `cs`, decodes it, and returns the error, for changesets the encoder writes faithfully
// but the decoder must refuse.
Error error_for(const Changeset& cs) { return decode_error(encode_changeset(cs)); }

// Writes a changeset field by field with msgpack directly, for shapes the encoder never makes.
// `rows` writes the rows array; `since` the since map.
std::string hand_made(
    const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& rows,
    const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& since = nullptr) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(7);
  pk.pack(std::string("LATTICE-CS"));
  pk.pack_uint32(1);
  if (since) {
    since(pk);
  } else {
    pk.pack_map(0);
  }
  pk.pack_map(0);
  pk.pack_array(1);
  pk.pack_bin(16);
  pk.pack_bin_body(reinterpret_cast<const char*>(site(1).bytes.data()), 16);
  pk.pack_array(1);
  pk.pack_array(4);
  pk.pack_uint32(7);
  pk.pack(std::string("notes"));
  pk.pack_uint32(1);
  pk.pack_array(2);
  pk.pack_array(3), pk.pack_uint32(1), pk.pack(std::string("id")), pk.pack_uint8(0);
  pk.pack_array(3), pk.pack_uint32(2), pk.pack(std::string("title")), pk.pack_uint8(0);
  rows(pk);
  return {buf.data(), buf.size()};
}

// One row [7, "k", nil, [], [cell], []] whose single cell is written by `cell`.
std::string with_one_cell(const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& cell) {
  return hand_made([&](auto& pk) {
    pk.pack_array(1);
    pk.pack_array(6);
    pk.pack_uint32(7);
    pk.pack_bin(1), pk.pack_bin_body("k", 1);
    pk.pack_nil();
    pk.pack_array(0);
    pk.pack_array(1);
    cell(pk);
    pk.pack_array(0);
  });
}

}  // namespace

TEST_CASE("a rich changeset survives encoding and decoding unchanged") {
  const Changeset cs = rich_changeset();
  const std::string bytes = encode_changeset(cs);
  const Changeset back = decode_changeset(bytes);
  CHECK(with_reals_as_bits(back) == with_reals_as_bits(cs));
  CHECK(back.format_version == Changeset::kFormatVersion);
  CHECK(back.until.get(site(200)) == std::numeric_limits<std::uint64_t>::max());
  // The NaN is still a NaN and -0.0 keeps its sign.
  CHECK(std::isnan(std::get<double>(back.rows[3 + 8].liveness_values[0].second)));
  CHECK(std::signbit(std::get<double>(back.rows[3 + 1].liveness_values[0].second)));
  // Encoding is canonical: the decoded changeset encodes to the same bytes.
  CHECK(encode_changeset(back) == bytes);
}

TEST_CASE("an empty changeset survives encoding and decoding") {
  const Changeset cs;
  CHECK(decode_changeset(encode_changeset(cs)) == cs);
}

TEST_CASE("an integral real stays a real and an integer stays an integer") {
  // Regression: msgpack-cxx's pack_double() writes 1.0 as the integer 1.
  Changeset cs = small_changeset();
  cs.rows[0].liveness_values = {{2, 1.0}, {4, std::int64_t{1}}};
  const Changeset back = decode_changeset(encode_changeset(cs));
  CHECK(std::holds_alternative<double>(back.rows[0].liveness_values[0].second));
  CHECK(std::holds_alternative<std::int64_t>(back.rows[0].liveness_values[1].second));
}

TEST_CASE("every truncation of an encoded changeset is refused as corrupt") {
  const std::string bytes = encode_changeset(small_changeset());
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    CAPTURE(len);
    const Error e = decode_error(std::string_view(bytes).substr(0, len));
    CHECK(e.code() == ErrorCode::kCorrupt);
  }
}

TEST_CASE("a truncated changeset's message says at which byte the input ends") {
  const std::string bytes = encode_changeset(small_changeset());
  const std::size_t cut = bytes.size() - 3;
  const Error e = decode_error(std::string_view(bytes).substr(0, cut));
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "truncated at byte " + std::to_string(cut)));
  CHECK(contains(e.what(), "rows[1]"));
}

TEST_CASE("random byte changes never crash the decoder") {
  const std::string original = encode_changeset(rich_changeset(/*big=*/false));
  const std::uint32_t seed = 20240611;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> position(0, original.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> flips(1, 4);
  int decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = original;
    for (int k = flips(rng); k > 0; --k) {
      bytes[position(rng)] = static_cast<char>(byte(rng));
    }
    try {
      const Changeset cs = decode_changeset(bytes);
      // Whatever decodes must be valid enough to encode and decode again.
      CHECK(encode_changeset(decode_changeset(encode_changeset(cs))) == encode_changeset(cs));
      ++decoded;
    } catch (const Error&) {
    } catch (...) {
      FAIL("mutation " << i << " of seed " << seed << " threw something other than Error");
    }
  }
  // Some mutations land in values and still decode; most break the structure.
  CHECK(decoded > 0);
  CHECK(decoded < 20000);
}

TEST_CASE("a newer format version is refused naming both versions") {
  std::string bytes = encode_changeset(small_changeset());
  // [fixarray 7] [fixstr 10 "LATTICE-CS"] [version]: the version is byte 12.
  REQUIRE(bytes[12] == '\x02');
  bytes[12] = '\x03';
  Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kUnsupportedVersion);
  CHECK(contains(e.what(), "version 3"));
  CHECK(contains(e.what(), "up to 2"));

  // A newer version is recognised even when the rest follows rules this build does not know.
  std::string future = bytes.substr(0, 13);
  future[0] = '\x93';
  future += "\xc1\xc1";
  e = decode_error(future);
  CHECK(e.code() == ErrorCode::kUnsupportedVersion);
}

TEST_CASE("a changeset of format 1, written by the previous release, still reads") {
  // The example of docs/changeset-format.md as format 1 wrote it: columns of 3 fields, no
  // affinity.
  const unsigned char v1[] = {
      0x97, 0xaa, 0x4c, 0x41, 0x54, 0x54, 0x49, 0x43, 0x45, 0x2d, 0x43, 0x53, 0x01, 0x81, 0xc4,
      0x10, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad,
      0xae, 0xaf, 0x03, 0x81, 0xc4, 0x10, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8,
      0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, 0x04, 0x91, 0xc4, 0x10, 0xa0, 0xa1, 0xa2, 0xa3,
      0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf, 0x91, 0x94, 0x01,
      0xa4, 0x74, 0x6f, 0x64, 0x6f, 0x01, 0x93, 0x93, 0x00, 0xa2, 0x69, 0x64, 0x00, 0x93, 0x01,
      0xa5, 0x74, 0x69, 0x74, 0x6c, 0x65, 0x00, 0x93, 0x02, 0xa5, 0x6c, 0x69, 0x6b, 0x65, 0x73,
      0x01, 0x91, 0x96, 0x01, 0xc4, 0x02, 0x01, 0x07, 0x94, 0x01, 0xcf, 0x01, 0x8c, 0x1d, 0x2e,
      0x3f, 0x4a, 0x00, 0x00, 0x00, 0x04, 0x91, 0x92, 0x01, 0xa4, 0x6d, 0x69, 0x6c, 0x6b, 0x90,
      0x91, 0x95, 0x02, 0x00, 0x01, 0x04, 0xfe};
  const Changeset cs = decode_changeset(std::string(reinterpret_cast<const char*>(v1), sizeof v1));
  CHECK(cs.format_version == 1);
  REQUIRE(cs.tables.size() == 1);
  REQUIRE(cs.tables[0].columns.size() == 3);
  CHECK(cs.tables[0].columns[1].name == "title");
  CHECK(!cs.tables[0].columns[1].affinity.has_value());
  CHECK(cs.rows.at(0).counters.at(0).part.total == -2);
  CHECK(!cs.origin.has_value());
  // Format 2 has an eighth field, the origin: format 1's 7 are refused under its number.
  std::string v2(reinterpret_cast<const char*>(v1), sizeof v1);
  v2[12] = '\x02';
  const Error e = decode_error(v2);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "expected a top-level array of 8 fields, got 7"));
}

TEST_CASE("the origin names the writer and its latest own transactions, within bounds") {
  Changeset cs = small_changeset();
  cs.origin = Origin{site(9), {{3, 77}, {4, 1ull << 62}}};
  CHECK(decode_changeset(encode_changeset(cs)) == cs);
  cs.origin->log = {{4, 1}, {3, 2}};
  CHECK(contains(decode_error(encode_changeset(cs)).what(),
                 "origin.log[1]: sequence numbers must ascend"));
  cs.origin->log.clear();
  for (std::uint64_t i = 1; i <= Origin::kMaxLog + 1; ++i) cs.origin->log.push_back({i, i});
  CHECK(contains(decode_error(encode_changeset(cs)).what(), "33 entries, over the 32"));
}

TEST_CASE("bytes that are not a changeset are refused as such") {
  for (std::string_view bytes : {std::string_view(""), std::string_view("hello world"),
                                 std::string_view("\x97\xaaLATTICE-XX\x01")}) {
    const Error e = decode_error(bytes);
    CHECK(e.code() == ErrorCode::kCorrupt);
    CHECK(contains(e.what(), "not a Lattice changeset"));
  }
  const Error zero = decode_error(std::string("\x97\xaaLATTICE-CS\x00", 13));
  CHECK(contains(zero.what(), "format_version"));
}

TEST_CASE("input over the byte limit is refused before it is read") {
  const std::string bytes = encode_changeset(small_changeset());
  DecodeLimits limits;
  limits.max_bytes = bytes.size() - 1;
  const Error e = decode_error(bytes, limits);
  CHECK(e.code() == ErrorCode::kTooLarge);
  CHECK(contains(e.what(), std::to_string(bytes.size())));
  limits.max_bytes = bytes.size();
  CHECK_NOTHROW(decode_changeset(bytes, limits));
}

TEST_CASE("the row, site and value limits are enforced") {
  const std::string bytes = encode_changeset(small_changeset());
  DecodeLimits rows;
  rows.max_rows = 1;
  CHECK(decode_error(bytes, rows).code() == ErrorCode::kTooLarge);
  DecodeLimits sites;
  sites.max_sites = 1;
  const Error s = decode_error(bytes, sites);
  CHECK(s.code() == ErrorCode::kTooLarge);
  CHECK(contains(s.what(), "until"));
  DecodeLimits values;
  values.max_value_bytes = 4;
  const Error v = decode_error(bytes, values);
  CHECK(v.code() == ErrorCode::kTooLarge);
  CHECK(contains(v.what(), "rows[0].liveness_values[0].value"));
}

TEST_CASE("a claimed 4-billion-element array in a few bytes is refused without allocating") {
  // Under AddressSanitizer an attempt to allocate room for 2^32 objects would abort the test.
  CHECK(decode_error(std::string("\xdd\xff\xff\xff\xff\x00\x00\x00\x00\x00", 10)).code() ==
        ErrorCode::kCorrupt);
  // A valid header, empty vectors, sites and tables, then rows claiming 2^32 - 1 elements.
  const std::string bytes = std::string("\x97\xaaLATTICE-CS\x01\x80\x80\x90\x90", 17) +
                            std::string("\xdd\xff\xff\xff\xff", 5);
  const Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "rows"));
  CHECK(contains(e.what(), "4294967295"));
  // The same for a text value claiming 4 GiB.
  const Error str = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint32(2), pk.pack_uint8(1), pk.pack_uint8(1), pk.pack_uint8(0),
        pk.pack_uint8(1);
    pk.pack_str(0xffffffffu);
  }));
  CHECK(str.code() == ErrorCode::kCorrupt);
  CHECK(contains(str.what(), "truncated"));
}

TEST_CASE("containers nested deeper than the format are refused") {
  std::string bytes = std::string("\x97\xaaLATTICE-CS\x01\x80\x80\x90\x90", 17);
  bytes += std::string(100000, '\x91');
  const Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "nested"));
}

TEST_CASE("trailing bytes after the changeset are refused") {
  const std::string bytes = encode_changeset(small_changeset()) + "x";
  const Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "1 trailing bytes"));
}

TEST_CASE("a field of the wrong type is named by its path") {
  const Error e = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint32(2), pk.pack_uint8(1);
    pk.pack(std::string("noon"));  // hlc
    pk.pack_uint8(0), pk.pack_uint8(1), pk.pack_nil();
  }));
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(std::string(e.what()) == "rows[0].cells[0].hlc: expected unsigned integer, got str");

  const Error width = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(5), pk.pack_uint32(2), pk.pack_uint8(1), pk.pack_uint8(1), pk.pack_uint8(0),
        pk.pack_uint8(1);
  }));
  CHECK(contains(width.what(), "rows[0].cells[0]: expected an array of 6 fields, got 5"));

  const Error value = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint32(2), pk.pack_uint8(1), pk.pack_uint8(1), pk.pack_uint8(0),
        pk.pack_uint8(1), pk.pack_true();
  }));
  CHECK(contains(value.what(), "rows[0].cells[0].value: expected nil, integer, float, str or bin"));
}

TEST_CASE("integers out of range for their field are refused") {
  const Error column = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint64(std::uint64_t{1} << 32), pk.pack_uint8(1), pk.pack_uint8(1),
        pk.pack_uint8(0), pk.pack_uint8(1), pk.pack_nil();
  }));
  CHECK(contains(column.what(), "rows[0].cells[0].column: 4294967296 is out of range"));

  const Error value = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint32(2), pk.pack_uint8(1), pk.pack_uint8(1), pk.pack_uint8(0),
        pk.pack_uint8(1), pk.pack_uint64(std::numeric_limits<std::uint64_t>::max());
  }));
  CHECK(contains(value.what(), "rows[0].cells[0].value: 18446744073709551615 is out of range"));

  const Error negative = decode_error(with_one_cell([](auto& pk) {
    pk.pack_array(6), pk.pack_uint32(2), pk.pack_int8(-1), pk.pack_uint8(1), pk.pack_uint8(0),
        pk.pack_uint8(1), pk.pack_nil();
  }));
  CHECK(contains(negative.what(), "rows[0].cells[0].causal_length: expected unsigned integer"));
}

TEST_CASE("a version vector entry of zero is refused") {
  const std::string bytes =
      hand_made([](auto& pk) { pk.pack_array(0); },
                [](auto& pk) {
                  pk.pack_map(1);
                  pk.pack_bin(16);
                  pk.pack_bin_body(reinterpret_cast<const char*>(site(1).bytes.data()), 16);
                  pk.pack_uint8(0);
                });
  const Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "since[0].seq: 0 is not allowed"));
}

TEST_CASE("a version vector naming a site twice is refused") {
  const std::string bytes =
      hand_made([](auto& pk) { pk.pack_array(0); },
                [](auto& pk) {
                  pk.pack_map(2);
                  for (int i = 0; i < 2; ++i) {
                    pk.pack_bin(16);
                    pk.pack_bin_body(reinterpret_cast<const char*>(site(1).bytes.data()), 16);
                    pk.pack_uint8(1);
                  }
                });
  CHECK(contains(decode_error(bytes).what(), "since[1].site: duplicate site"));
}

TEST_CASE("references that point nowhere are refused naming the field") {
  Changeset cs = small_changeset();

  SUBCASE("a site index past the site table") {
    cs.rows[0].cells[0].stamp.site = 2;
    CHECK(contains(error_for(cs).what(), "rows[0].cells[0].site: site index 2 is out of range"));
    cs = small_changeset();
    cs.rows[1].liveness->site = 9;
    CHECK(contains(error_for(cs).what(), "rows[1].liveness.site: site index 9"));
    cs = small_changeset();
    cs.rows[0].counters[0].site = 2;
    CHECK(contains(error_for(cs).what(), "rows[0].counters[0].site"));
  }
  SUBCASE("a row of a table missing from the catalog") {
    cs.rows[1].table = 8;
    const Error e = error_for(cs);
    CHECK(e.code() == ErrorCode::kCorrupt);
    CHECK(contains(e.what(), "rows[1].table: table id 8 is not in the changeset's tables"));
  }
  SUBCASE("a column its table lacks") {
    cs.rows[0].cells[0].column = 99;
    CHECK(contains(error_for(cs).what(), "rows[0].cells[0].column: column id 99 is not a column"));
    cs = small_changeset();
    cs.rows[0].liveness_values[1].first = 99;
    CHECK(contains(error_for(cs).what(), "rows[0].liveness_values[1].column: column id 99"));
    cs = small_changeset();
    cs.rows[0].counters[0].column = 99;
    CHECK(contains(error_for(cs).what(), "rows[0].counters[0].column: column id 99"));
  }
  SUBCASE("a counter change on a last-writer-wins column") {
    cs.rows[0].counters[0].column = 4;
    CHECK(
        contains(error_for(cs).what(),
                 "rows[0].counters[0].column: column 4 of table 7 is a lww column, not a counter"));
  }
  SUBCASE("a value on a counter column") {
    cs.rows[0].cells[0].column = 5;
    CHECK(contains(error_for(cs).what(),
                   "rows[0].cells[0].column: column 5 of table 7 is a counter"));
    cs = small_changeset();
    cs.rows[0].liveness_values[0].first = 5;
    CHECK(contains(error_for(cs).what(), "rows[0].liveness_values[0].column: column 5"));
  }
  SUBCASE("a column written twice in one row") {
    cs.rows[0].cells[0].column = 2;  // also in liveness_values
    CHECK(contains(error_for(cs).what(), "rows[0].cells[0].column: column 2 appears twice"));
    cs = small_changeset();
    cs.rows[0].counters.push_back(cs.rows[0].counters[0]);
    CHECK(contains(error_for(cs).what(), "rows[0].counters[1]: a second component of column 5"));
  }
}

TEST_CASE("causal lengths that cannot be are refused naming the field") {
  Changeset cs = small_changeset();
  SUBCASE("values carried by a deleted row's liveness") {
    cs.rows[1].liveness_values = {{2, std::string("ghost")}};
    CHECK(contains(error_for(cs).what(),
                   "rows[1].liveness_values: values with the even liveness causal length 2"));
  }
  SUBCASE("values without a liveness event") {
    cs.rows[0].liveness.reset();
    CHECK(contains(error_for(cs).what(), "rows[0].liveness_values: values without a liveness"));
  }
  SUBCASE("a liveness event of length zero") {
    cs.rows[1].liveness->causal_length = 0;
    CHECK(contains(error_for(cs).what(), "rows[1].liveness.causal_length: 0"));
  }
  SUBCASE("a cell written in a deleted incarnation") {
    cs.rows[0].cells[0].stamp.causal_length = 2;
    CHECK(contains(error_for(cs).what(), "rows[0].cells[0].causal_length: even causal length 2"));
  }
  SUBCASE("a counter component of a deleted incarnation") {
    cs.rows[0].counters[0].part.causal_length = 4;
    CHECK(
        contains(error_for(cs).what(), "rows[0].counters[0].causal_length: even causal length 4"));
  }
}

TEST_CASE("a malformed catalog or site table is refused naming the field") {
  Changeset cs = small_changeset();
  SUBCASE("a site listed twice") {
    cs.sites.push_back(site(1));
    const Error e = error_for(cs);
    CHECK(e.code() == ErrorCode::kCorrupt);
    CHECK(contains(e.what(), "sites[2]: duplicate of sites[0]"));
  }
  SUBCASE("a table listed twice") {
    cs.tables.push_back(notes_table());
    CHECK(contains(error_for(cs).what(), "tables[1].id: duplicate table id 7"));
  }
  SUBCASE("a column id listed twice in a table") {
    cs.tables[0].columns[3].id = 2;
    CHECK(contains(error_for(cs).what(), "tables[0].columns[3].id: duplicate column id 2"));
  }
  SUBCASE("more key columns than columns") {
    cs.tables[0].primary_key_columns = 6;
    CHECK(contains(error_for(cs).what(), "tables[0].primary_key_columns: 6 key columns"));
  }
  SUBCASE("an unknown column kind") {
    cs.tables[0].columns[0].kind = static_cast<ColumnKind>(7);
    CHECK(contains(error_for(cs).what(), "tables[0].columns[0].kind: unknown column kind 7"));
  }
  SUBCASE("an empty primary key") {
    cs.rows[1].primary_key.clear();
    CHECK(contains(error_for(cs).what(), "rows[1].primary_key: empty primary key"));
  }
}

TEST_CASE("a site id that is not 16 bytes is refused") {
  const std::string bytes = hand_made([](auto& pk) { pk.pack_array(0); },
                                      [](auto& pk) {
                                        pk.pack_map(1);
                                        pk.pack_bin(15);
                                        pk.pack_bin_body("0123456789abcde", 15);
                                        pk.pack_uint8(1);
                                      });
  const Error e = decode_error(bytes);
  CHECK(e.code() == ErrorCode::kCorrupt);
  CHECK(contains(e.what(), "since[0].site: site id of 15 bytes, expected 16"));
}
