// Import and export (docs/import-export.md): the CSV and JSON readers on hostile bytes, the
// conversions a mapping names, and import_file / export_file on real files: every kind of bad
// record rejected alone with its record, line, column and reason, a hostile file refused whole
// with the replica exactly as it was, a second import of the same file changing nothing, and
// what export writes reading back to the same rows.

#include <doctest/doctest.h>
#include <stdlib.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "crdt/error.hpp"
#include "engine/import_export/conversion.hpp"
#include "engine/import_export/csv.hpp"
#include "engine/import_export/json_records.hpp"
#include "engine/import_export/mapping.hpp"
#include "engine/import_export/table_export.hpp"
#include "engine/import_export/table_import.hpp"
#include "storage/replica.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

namespace fs = std::filesystem;
using engine::DataFormat;
using engine::SourceValue;
using engine::ValueFormat;
using engine::ValueType;

// A ByteSource over `text`, `chunk` bytes at a time (1: every boundary a reader can meet).
engine::ByteSource source(const std::string& text, std::size_t chunk = 1 << 16) {
  auto offset = std::make_shared<std::size_t>(0);
  return [text, chunk, offset](char* buffer, std::size_t size) {
    const std::size_t n = std::min({size, chunk, text.size() - *offset});
    std::copy_n(text.data() + *offset, n, buffer);
    *offset += n;
    return n;
  };
}

// Every record as "line|field|field...", quoted fields in double quotes, or "line!error".
std::string csv_records(const std::string& text, std::size_t chunk = 1 << 16,
                        engine::ReadLimits limits = {}) {
  engine::CsvReader reader(source(text, chunk), ',', limits);
  engine::CsvRecord record;
  std::string out;
  while (reader.next(record)) {
    out += std::to_string(record.line);
    if (!record.error.empty()) {
      out += "!" + record.error + "\n";
      continue;
    }
    for (std::size_t i = 0; i < record.count; ++i) {
      const auto& f = record.fields[i];
      out += f.quoted ? "|\"" + f.text + "\"" : "|" + f.text;
    }
    out += "\n";
  }
  return out;
}

// The code and message of what `body` throws (kOk when nothing).
template <class Body>
std::pair<ErrorCode, std::string> error_of(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {ErrorCode::kOk, ""};
}

TEST_CASE("CSV records: quotes, doubled quotes, line breaks in quotes, CRLF, blank lines, BOM") {
  const std::string text =
      "\xEF\xBB\xBFid,title\r\n"
      "a,\"buy \"\"milk\"\", eggs\"\r\n"
      "\r\n"
      "b,\"two\nlines\"\n"
      "c,\n"
      "d,\"\"\n"
      "e,x\"y\n"
      "f,last";
  const std::string expected =
      "1|id|title\n2|a|\"buy \"milk\", eggs\"\n4|b|\"two\nlines\"\n6|c|\n7|d|\"\"\n8|e|x\"y\n9|f|"
      "last\n";
  CHECK(csv_records(text) == expected);
  // Cut anywhere, the same records.
  CHECK(csv_records(text, 1) == expected);
  CHECK(csv_records(text, 3) == expected);
}

TEST_CASE("a CSV record over a limit, or with text after a closing quote, is refused alone") {
  engine::ReadLimits limits;
  limits.max_field_bytes = 8;
  limits.max_fields = 3;
  const std::string text =
      "a,123456789\n"
      "b,\"ok\"x,c\n"
      "c,1,2,3\n"
      "d,\"12345678\"\n";
  CHECK(csv_records(text, 2, limits) ==
        "1!field 2 is longer than 8 bytes\n"
        "2!field 2 has text after its closing quote\n"
        "3!the record has more than 3 fields\n"
        "4|d|\"12345678\"\n");
}

TEST_CASE("a quote never closed or a NUL byte refuses a CSV file as a whole, naming the line") {
  auto [code, message] = error_of([] { csv_records("id,t\na,ok\nb,\"open\nc,more\n"); });
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message == "line 3: a quoted field opened here is never closed (a missing '\"')");
  std::tie(code, message) = error_of([] { csv_records(std::string("id\nab\0c\n", 8)); });
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message.find("line 2") != std::string::npos);
  CHECK(message.find("NUL byte: this is not a text file") != std::string::npos);
}

std::string json_records(const std::string& text, bool lines, std::size_t chunk = 1 << 16,
                         engine::ReadLimits limits = {}) {
  engine::JsonRecordReader reader(
      source(text, chunk),
      lines ? engine::JsonRecordReader::Layout::kLines : engine::JsonRecordReader::Layout::kArray,
      limits);
  engine::JsonRecord record;
  std::string out;
  while (reader.next(record)) {
    out += std::to_string(record.number) + "@" + std::to_string(record.line);
    out += record.error.empty() ? " " + boost::json::serialize(record.value) : "!" + record.error;
    out += "\n";
  }
  return out;
}

TEST_CASE("NDJSON: one object a line; a bad line is refused alone") {
  engine::ReadLimits limits;
  limits.max_depth = 3;
  limits.max_record_bytes = 40;
  const std::string text =
      "{\"id\": 1, \"a\": {\"b\": [1, 2]}}\n"
      "\n"
      "{\"id\": 2,\n"
      "[1, 2]\n"
      "{\"deep\": [[[[1]]]]}\n"
      "{\"long\": \"" +
      std::string(50, 'x') +
      "\"}\r\n"
      "  {\"id\": \"\\u00e9\"}  \n"
      "{\"id\": \"\xff\"}\n";
  const std::string expected =
      "1@1 {\"id\":1,\"a\":{\"b\":[1,2]}}\n"
      "2@3!not valid JSON: the line ends before its JSON value does\n"
      "3@4!the record is an array, not an object\n"
      "4@5!the record nests deeper than 3 levels\n"
      "5@6!the line is longer than 40 bytes\n"
      "6@7 {\"id\":\"\xC3\xA9\"}\n"
      "7@8!not valid JSON: the text is not valid UTF-8 (byte 9 of the line)\n";
  CHECK(json_records(text, true, 1 << 16, limits) == expected);
  CHECK(json_records(text, true, 1, limits) == expected);
}

TEST_CASE("a JSON array file streams its elements, each with the line it starts on") {
  const std::string text =
      "[\n"
      "  {\"id\": 1},\n"
      "  {\"id\": 2,\n"
      "   \"tags\": [\"a\", \"b\"]},\n"
      "  7,\n"
      "  [1]\n"
      "]\n";
  const std::string expected =
      "1@2 {\"id\":1}\n2@3 {\"id\":2,\"tags\":[\"a\",\"b\"]}\n3@5!the record is a number, not an "
      "object\n4@6!the record is an array, not an object\n";
  CHECK(json_records(text, false) == expected);
  CHECK(json_records(text, false, 1) == expected);
  CHECK(json_records("[]", false).empty());
}

TEST_CASE("a JSON array file that is not one is refused as a whole, naming the line") {
  auto refuse = [](const std::string& text, engine::ReadLimits limits = {}) {
    return error_of([&] { json_records(text, false, 7, limits); });
  };
  auto [code, message] = refuse("[\n{\"a\": 1},\n{\"a\": 2,,}\n]");
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message == "line 3: not valid JSON (syntax error)");
  std::tie(code, message) = refuse("{\"a\": 1}");
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message.find("a JSON object, not an array of objects") != std::string::npos);
  std::tie(code, message) = refuse("[{\"a\": 1}] [");
  CHECK(code == ErrorCode::kCorrupt);
  std::tie(code, message) = refuse("[{\"a\": 1},\n{\"b\": ");
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message == "the file ends before its JSON array does");
  engine::ReadLimits shallow;
  shallow.max_depth = 4;
  std::tie(code, message) = refuse("[\n{\"a\": [[[[[[1]]]]]]}]", shallow);
  CHECK(code == ErrorCode::kTooLarge);
  CHECK(message == "line 2: a record nests deeper than 4 levels");
  // Nesting far deeper than any stack could take is refused the same way.
  std::tie(code, message) = refuse("[" + std::string(1'000'000, '['));
  CHECK(code == ErrorCode::kTooLarge);
  std::tie(code, message) = refuse("[{\"a\": \"\xff\"}]");
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message == "line 1 (byte 9): not valid JSON: the text is not valid UTF-8");
}

TEST_CASE("a record that gives a member twice is rejected alone, naming the member") {
  // Boost.JSON alone would keep the later value silently.
  const std::string lines =
      "{\"id\": 1, \"title\": \"a\", \"title\": \"b\"}\n"
      "{\"id\": 2, \"tags\": {\"x\": 1, \"x\": 2}}\n"
      "{\"id\": 3, \"title\": \"c\"}\n";
  const std::string lines_expected =
      "1@1!the member 'title' is given twice\n"
      "2@2!the member 'x' is given twice\n"
      "3@3 {\"id\":3,\"title\":\"c\"}\n";
  CHECK(json_records(lines, true) == lines_expected);
  CHECK(json_records(lines, true, 1) == lines_expected);
  const std::string array =
      "[{\"id\": 1, \"title\": \"a\", \"title\": \"b\"},\n"
      " {\"id\": 2, \"tags\": [{\"x\": 1}, {\"x\": 2}]},\n"
      " {\"id\": 3, \"tags\": {\"x\": 1, \"x\": 2}}]\n";
  const std::string array_expected =
      "1@1!the member 'title' is given twice\n"
      "2@2 {\"id\":2,\"tags\":[{\"x\":1},{\"x\":2}]}\n"
      "3@3!the member 'x' is given twice\n";
  CHECK(json_records(array, false) == array_expected);
  CHECK(json_records(array, false, 1) == array_expected);
}

TEST_CASE("a lone UTF-16 surrogate is named as such, with its record and member") {
  const std::string lines =
      "{\"id\": 1, \"title\": \"\\ud800\"}\n"
      "{\"id\": 2, \"title\": \"x\\udc00\"}\n"
      "{\"id\": 3, \"title\": \"\\ud83d\\ude00\"}\n";
  const std::string lines_expected =
      "1@1!not valid JSON: lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low "
      "one) in member 'title' (byte 21 of the line)\n"
      "2@2!not valid JSON: lone UTF-16 surrogate \\udc00 (a low surrogate without a high one "
      "before it) in member 'title' (byte 22 of the line)\n"
      "3@3 {\"id\":3,\"title\":\"\xF0\x9F\x98\x80\"}\n";
  CHECK(json_records(lines, true) == lines_expected);
  // An array file is refused as a whole, as for any text that is not JSON; at every chunk size,
  // so with the escape cut between two reads.
  const std::string array =
      "[{\"id\": 1, \"title\": \"ok\"},\n"
      " {\"id\": 2, \"title\": \"x\", \"note\": \"\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC"
      "\xE2\x82\xAC\xE2\x82\xAC\\ud800\"}]\n";
  // (The euro signs before it: a piece read earlier may end inside one.)
  for (const std::size_t chunk : {std::size_t(1), std::size_t(7), std::size_t(1) << 16}) {
    CAPTURE(chunk);
    auto [code, message] = error_of([&] { json_records(array, false, chunk); });
    CHECK(code == ErrorCode::kCorrupt);
    CHECK(message ==
          "line 2: not valid JSON: lone UTF-16 surrogate \\ud800 (a high surrogate not followed "
          "by a low one) in member 'note' of record 2");
  }
}

// --- Conversions ------------------------------------------------------------------------------

SourceValue text(std::string_view t, bool quoted = false) {
  SourceValue s;
  s.kind = SourceValue::Kind::kText;
  s.text = t;
  s.quoted = quoted;
  return s;
}

// The converted value as "type:value", or "!" and the reason.
std::string convert(ValueFormat format, const SourceValue& s) {
  std::string error;
  auto v = engine::convert_value(format, s, error);
  if (!v) return "!" + error;
  std::string out = crdt::value_type_name(*v);
  if (const auto* i = std::get_if<std::int64_t>(&*v)) out += ":" + std::to_string(*i);
  if (const auto* d = std::get_if<double>(&*v)) {
    std::ostringstream o;
    o << *d;
    out += ":" + o.str();
  }
  if (const auto* t = std::get_if<std::string>(&*v)) out += ":" + *t;
  if (const auto* b = std::get_if<crdt::Blob>(&*v)) out += ":" + std::to_string(b->bytes.size());
  return out;
}

ValueFormat of(ValueType type) {
  ValueFormat f;
  f.type = type;
  return f;
}

TEST_CASE("numbers: integers and reals, with the separators a mapping names") {
  CHECK(convert(of(ValueType::kInteger), text(" 42 ")) == "integer:42");
  CHECK(convert(of(ValueType::kInteger), text("-7")) == "integer:-7");
  CHECK(convert(of(ValueType::kInteger), text("+7")) == "integer:7");
  CHECK(convert(of(ValueType::kInteger), text("notanint")) == "!'notanint' is not an integer");
  CHECK(convert(of(ValueType::kInteger), text("1.5")) == "!'1.5' is not an integer");
  CHECK(convert(of(ValueType::kInteger), text("99999999999999999999")) ==
        "!'99999999999999999999' is out of the range of a 64-bit integer");
  CHECK(convert(of(ValueType::kInteger), text("")) == "null");
  CHECK(convert(of(ValueType::kInteger), text("", true)) == "null");
  ValueFormat european = of(ValueType::kReal);
  european.decimal = ',';
  european.thousands = ".";
  CHECK(convert(european, text("1.234.567,5")) == "real:1.23457e+06");
  CHECK(convert(european, text("1,5e3")) == "real:1500");
  ValueFormat grouped = of(ValueType::kInteger);
  grouped.thousands = ",";
  CHECK(convert(grouped, text("1,234,567")) == "integer:1234567");
  CHECK(convert(of(ValueType::kReal), text("inf")) == "!'inf' is not a number");
  CHECK(convert(of(ValueType::kReal), text("1e999")) == "!'1e999' is out of the range of a real");
  CHECK(convert(of(ValueType::kNumber), text("12")) == "integer:12");
  CHECK(convert(of(ValueType::kNumber), text("12.5")) == "real:12.5");
  SourceValue three;
  three.kind = SourceValue::Kind::kReal;
  three.real = 3.0;
  CHECK(convert(of(ValueType::kInteger), three) == "integer:3");
  three.real = 3.5;
  CHECK(convert(of(ValueType::kInteger), three) == "!3.5 is not an integer");
  // JSON numbers past int64 or past a double: named as written, never stored changed.
  const boost::json::value record =
      boost::json::parse("{\"u\": 12345678901234567890, \"d\": -1e30, \"inf\": 1e999}");
  std::string storage;
  const SourceValue u = engine::source_from_json(&record.at("u"), storage);
  CHECK(convert(of(ValueType::kInteger), u) ==
        "!12345678901234567890 is out of the range of a 64-bit integer");
  CHECK(convert(of(ValueType::kText), u) == "text:12345678901234567890");
  CHECK(convert(of(ValueType::kJson), u) == "text:12345678901234567890");
  CHECK(convert(of(ValueType::kReal), u) == "real:1.23457e+19");
  std::string storage2;
  CHECK(convert(of(ValueType::kInteger), engine::source_from_json(&record.at("d"), storage2)) ==
        "!-1e+30 is out of the range of a 64-bit integer");
  const SourceValue inf = engine::source_from_json(&record.at("inf"), storage2);
  for (ValueType type :
       {ValueType::kReal, ValueType::kNumber, ValueType::kAny, ValueType::kText, ValueType::kJson})
    CHECK(convert(of(type), inf) == "!a number is out of the range of a real");
}

TEST_CASE("booleans, blobs and JSON") {
  for (const char* yes : {"true", "YES", "y", "T", "on", "1"})
    CHECK(convert(of(ValueType::kBoolean), text(yes)) == "integer:1");
  for (const char* no : {"false", "No", "n", "f", "OFF", "0"})
    CHECK(convert(of(ValueType::kBoolean), text(no)) == "integer:0");
  CHECK(convert(of(ValueType::kBoolean), text("maybe")).rfind("!'maybe' is not a boolean", 0) == 0);
  CHECK(convert(of(ValueType::kBlob), text("\\x00ff10")) == "blob:3");
  CHECK(convert(of(ValueType::kBlob), text("0xABCD")) == "blob:2");
  CHECK(convert(of(ValueType::kBlob), text("abc")) == "!'abc' is not hex: an odd number of digits");
  ValueFormat base64 = of(ValueType::kBlob);
  base64.blob_encoding = ValueFormat::BlobEncoding::kBase64;
  CHECK(convert(base64, text("aGVsbG8=")) == "blob:5");
  CHECK(convert(base64, text("a!")) == "!'a!' is not base64");
  CHECK(convert(of(ValueType::kJson), text("{\"a\": [1, 2]}", true)) == "text:{\"a\":[1,2]}");
  CHECK(convert(of(ValueType::kJson), text("{oops")).rfind("!'{oops' is not JSON", 0) == 0);
  // Numbers keep their ordinary form, not Boost.JSON's 1.5E0, whether the JSON comes from a CSV
  // field or from a JSON record's member.
  CHECK(convert(of(ValueType::kJson), text("{\"x\": 1.5, \"y\": 100.0, \"z\": [1e3, -7]}")) ==
        "text:{\"x\":1.5,\"y\":100.0,\"z\":[1000.0,-7]}");
  const boost::json::value record = boost::json::parse(
      "{\"o\": {\"x\": 0.1, \"big\": 18446744073709551615, \"s\": \"\\u00e9\"}, \"r\": 2.5}");
  std::string storage;
  CHECK(convert(of(ValueType::kJson), engine::source_from_json(&record.at("o"), storage)) ==
        "text:{\"x\":0.1,\"big\":18446744073709551615,\"s\":\"\xC3\xA9\"}");
  CHECK(convert(of(ValueType::kJson), engine::source_from_json(&record.at("r"), storage)) ==
        "text:2.5");
  CHECK(convert(of(ValueType::kText), engine::source_from_json(&record.at("o"), storage)) ==
        "text:{\"x\":0.1,\"big\":18446744073709551615,\"s\":\"\xC3\xA9\"}");
}

TEST_CASE("dates: ISO 8601 or a pattern, checked against the calendar") {
  CHECK(convert(of(ValueType::kDate), text("2024-02-29")) == "text:2024-02-29");
  CHECK(convert(of(ValueType::kDate), text("2023-02-29")) ==
        "!'2023-02-29' is not a date: day 29 of month 2");
  CHECK(convert(of(ValueType::kDate), text("2024-13-45")) ==
        "!'2024-13-45' is not a date: month 13");
  CHECK(convert(of(ValueType::kDate), text("24-1-5")) ==
        "!'24-1-5' is not a date in the form YYYY-MM-DD");
  CHECK(convert(of(ValueType::kDate), text("2024-01-05T10:00")) ==
        "!'2024-01-05T10:00' is not a date: it has a time (use the type datetime)");
  CHECK(convert(of(ValueType::kDatetime), text("2024-01-05T10:30:15.250+02:00")) ==
        "text:2024-01-05 08:30:15.250");
  CHECK(convert(of(ValueType::kDatetime), text("2024-01-01 00:30-01:00")) ==
        "text:2024-01-01 01:30:00");
  CHECK(convert(of(ValueType::kDatetime), text("2024-03-01T00:10:00+01:00")) ==
        "text:2024-02-29 23:10:00");
  CHECK(convert(of(ValueType::kDatetime), text("2024-01-05")) == "text:2024-01-05 00:00:00");
  ValueFormat french = of(ValueType::kDate);
  french.date_format = "%d/%m/%Y";
  CHECK(convert(french, text("5/1/2024")) == "text:2024-01-05");
  CHECK(convert(french, text("31/04/2024")) == "!'31/04/2024' is not a date: day 31 of month 4");
  ValueFormat us = of(ValueType::kDatetime);
  us.date_format = "%b %d, %Y %I:%M %p";
  CHECK(convert(us, text("Mar 5, 2024 12:15 AM")) == "text:2024-03-05 00:15:00");
  CHECK(convert(us, text("march 5, 2024 1:15 pm")) == "text:2024-03-05 13:15:00");
  CHECK(convert(us, text("Mar 5, 2024 13:15 PM")) ==
        "!'Mar 5, 2024 13:15 PM' is not a date and time: hour 13 on a 12-hour clock");
  ValueFormat epoch = of(ValueType::kDatetime);
  epoch.date_format = "epoch";
  CHECK(convert(epoch, text("0")) == "text:1970-01-01 00:00:00");
  CHECK(convert(epoch, text("-1")) == "text:1969-12-31 23:59:59");
  epoch.date_format = "epoch_ms";
  CHECK(convert(epoch, text("1709251200123")) == "text:2024-03-01 00:00:00.123");
  CHECK(engine::check_date_format("%d/%m") == "it needs %Y, %m (or %b) and %d");
  CHECK(engine::check_date_format("%Y-%q") ==
        "'%q' is not one of %Y %m %d %H %M %S %f %I %p %b %B %z %%");
}

TEST_CASE("text: trimmed and cased on request, UTF-8 only; untyped values keep the file's type") {
  ValueFormat f = of(ValueType::kText);
  CHECK(convert(f, text("  Ann  ")) == "text:  Ann  ");
  f.trim = true;
  f.letter_case = ValueFormat::Case::kLower;
  CHECK(convert(f, text("  Ann@Example.COM ")) == "text:ann@example.com");
  CHECK(convert(f, text("caf\xE9")) == "!the text is not valid UTF-8 (byte 4)");
  f.null_texts = {"N/A", "-"};
  CHECK(convert(f, text(" N/A ")) == "null");
  f.default_value = crdt::Value{"unknown"};
  CHECK(convert(f, text("-")) == "text:unknown");
  CHECK(convert(f, SourceValue{}) == "text:unknown");
  const ValueFormat any = of(ValueType::kAny);
  CHECK(convert(any, text("42")) == "integer:42");
  CHECK(convert(any, text("42", true)) == "text:42");
  CHECK(convert(any, text("007")) == "text:007");
  CHECK(convert(any, text("-1.5e3")) == "real:-1500");
  CHECK(convert(any, text("\\x0102")) == "blob:2");
  CHECK(convert(any, text("")) == "null");
  CHECK(convert(any, text("", true)) == "text:");
}

TEST_CASE("a mapping file's mistakes are refused, naming the member") {
  engine::ReadLimits limits;
  auto refusal = [&](const std::string& text) {
    return error_of([&] { engine::parse_mapping(text, limits); }).second;
  };
  CHECK(refusal("[]") == "mapping: expected a JSON object with \"columns\"");
  CHECK(refusal("{\"columns\": {}}") ==
        "mapping: \"columns\" must be an object naming at least "
        "one column");
  CHECK(refusal("{\"columns\": {\"a\": {\"type\": \"dat\"}}}") ==
        "mapping: column 'a', \"type\": unknown type 'dat' (known: text, integer, real, number, "
        "boolean, date, datetime, blob, json, any)");
  CHECK(refusal("{\"columns\": {\"a\": {\"trimm\": true}}}")
            .rfind("mapping: column 'a': unknown setting \"trimm\"", 0) == 0);
  CHECK(refusal("{\"columns\": {\"a\": {\"format\": \"%d-%m\"}}}") ==
        "mapping: column 'a', \"format\": not a date format: it needs %Y, %m (or %b) and %d");
  CHECK(refusal("{\"columns\": {\"a\": 2}}") ==
        "mapping: column 'a': a column number as source needs \"csv\": {\"header\": false}");
  CHECK(refusal("{\"columns\": {\"a\": \"x\"}, \"limits\": {\"max_depth\": 0}}") ==
        "mapping: \"limits\", \"max_depth\": expected a positive integer");
  CHECK(refusal("{\"columns\": {\"a\": \"x\"") ==
        "mapping: not valid JSON: unexpected end of the text at byte 21");
  // Which of the two would a reader of the mapping believe?
  CHECK(refusal("{\"columns\": {\"a\": \"x\", \"a\": \"y\"}}") ==
        "mapping: the member \"a\" is given twice");
  const engine::Mapping m = engine::parse_mapping(
      R"({"csv": {"delimiter": ";", "header": false}, "limits": {"max_records": 5},
          "columns": {"id": 1, "name": {"source": 3, "trim": true, "default": "?"}}})",
      limits);
  CHECK(m.delimiter == ';');
  CHECK(!m.header);
  CHECK(limits.max_records == 5);
  REQUIRE(m.columns.size() == 2);
  CHECK(m.columns[1].source_number == 3);
  CHECK(m.columns[1].format.trim);
  CHECK(m.columns[1].default_source == crdt::Value{"?"});
}

// --- import_file and export_file --------------------------------------------------------------

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lattice-import-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name, const std::string& bytes) const {
    const fs::path p = path / name;
    std::ofstream out(p, std::ios::binary);
    out << bytes;
    return p.string();
  }
  std::string read(const std::string& name) const {
    std::ifstream in(path / name, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
};

constexpr const char* kPeople =
    "CREATE TABLE teams(id TEXT PRIMARY KEY);"
    "INSERT INTO teams VALUES ('red'), ('blue');"
    "CREATE TABLE people(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,"
    " age INTEGER CHECK (age >= 0), born DATE, team TEXT REFERENCES teams(id),"
    " score REAL, visits INTEGER NOT NULL DEFAULT 0);"
    "CREATE TRIGGER people_no_bob BEFORE INSERT ON people WHEN NEW.email = 'bob@x'"
    " BEGIN SELECT RAISE(ABORT, 'no bob'); END;"
    "SELECT lattice_replicate('teams');"
    "SELECT lattice_replicate('people', '{\"visits\": \"counter\"}');";

TEST_CASE("every kind of bad record is rejected alone with its record, line, column and reason") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(kPeople);
  const std::string csv = dir.file("people.csv",
                                   "id,email,age,born,team,score,visits\n"
                                   "1,ann@x,30,1994-05-01,red,1.5,2\n"
                                   "2,cy@x,notanint,1990-01-01,red,,0\n"
                                   "3,di@x,20,2024-13-45,red,,0\n"
                                   "4,ed@x,20\n"
                                   "5,ann@x,20,,blue,,0\n"
                                   "6,fi@x,-3,,blue,,0\n"
                                   "7,gu@x,5,,green,,0\n"
                                   "8,bob@x,5,,red,,0\n"
                                   "9,,5,,red,,0\n"
                                   "10,\"hi\n@x\",5,,red,,0\n"
                                   "11,\"unclosed\"x,5,,red,,0\n"
                                   "12,ja@x,5,,red,2.5e1,1.5\n"
                                   "13,ka@x,5,,red,1e1,7\n");
  engine::ImportOptions options;
  options.errors_path = (dir.path / "errors.csv").string();
  const engine::ImportResult r = engine::import_file(*replica, "people", csv, options);
  CHECK(r.records == 13);
  CHECK(r.inserted == 3);
  CHECK(r.rejected == 10);
  CHECK(dir.read("errors.csv") ==
        "record,line,column,reason,data\n"
        "2,3,age,'notanint' is not an integer,\"2,cy@x,notanint,1990-01-01,red,,0\"\n"
        "3,4,born,'2024-13-45' is not a date: month 13,\"3,di@x,20,2024-13-45,red,,0\"\n"
        "4,5,,\"the record has 3 fields, the header 7\",\"4,ed@x,20\"\n"
        "5,6,email,UNIQUE constraint failed: people.email,\"5,\"\"ann@x\"\",20,,\"\"blue\"\",,0\"\n"
        "6,7,age,CHECK constraint failed: age >= 0,\"6,\"\"fi@x\"\",-3,,\"\"blue\"\",,0\"\n"
        "7,8,,FOREIGN KEY constraint failed,\"7,\"\"gu@x\"\",5,,\"\"green\"\",,0\"\n"
        "8,9,,no bob,\"8,\"\"bob@x\"\",5,,\"\"red\"\",,0\"\n"
        "9,10,email,NOT NULL constraint failed: people.email,\"9,,5,,\"\"red\"\",,0\"\n"
        "11,13,,field 2 has text after its closing quote,\"11,\"\"unclosed\"\"\"\n"
        "12,14,visits,'1.5' is not an integer,\"12,ja@x,5,,red,2.5e1,1.5\"\n");
  CHECK(test::dump_table(*replica, "people") ==
        "int:1|text:ann@x|int:30|text:1994-05-01|text:red|real:1.5|int:2|\n"
        "int:10|text:hi\n@x|int:5|null|text:red|null|int:0|\n"
        "int:13|text:ka@x|int:5|null|text:red|real:10|int:7|\n");
  CHECK(replica->check().problems.empty());
}

TEST_CASE("importing the same file again changes nothing; a changed file updates what changed") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  const std::string path = dir.file("todo.csv",
                                    "id,title,done,votes\n"
                                    "a,buy milk,0,1\n"
                                    "b,walk,1,0\n");
  engine::ImportResult r = engine::import_file(*replica, "todo", path);
  CHECK(r.inserted == 2);
  const auto vector = replica->version_vector();
  const std::string everything = test::dump_everything(*replica);
  r = engine::import_file(*replica, "todo", path);
  CHECK(r.unchanged == 2);
  CHECK(r.inserted + r.updated + r.rejected == 0);
  CHECK(replica->version_vector() == vector);
  CHECK(test::dump_everything(*replica) == everything);

  // Another device adds votes meanwhile; the file changes one title and one count.
  auto other = test::open_todo_replica();
  other->apply(replica->changes_since(crdt::VersionVector{}));
  other->exec("UPDATE todo SET votes = votes + 10 WHERE id = 'a'");
  dir.file("todo.csv",
           "id,title,done,votes\n"
           "a,buy oat milk,0,3\n"
           "b,walk,1,0\n");
  r = engine::import_file(*replica, "todo", path);
  CHECK(r.updated == 1);
  CHECK(r.unchanged == 1);
  replica->apply(other->changes_since(replica->version_vector()));
  other->apply(replica->changes_since(other->version_vector()));
  // The import set the count from 1 to 3 (+2), the other device added 10.
  CHECK(test::dump_table(*replica, "todo") ==
        "text:a|text:buy oat milk|int:0|int:13|\ntext:b|text:walk|int:1|int:0|\n");
  CHECK(replica->digest() == other->digest());
}

TEST_CASE("a key the file gives twice is written once, by its later record; again, not at all") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  const std::string path = dir.file("todo.csv",
                                    "id,title,votes\n"
                                    "a,first,1\n"
                                    "b,walk,0\n"
                                    "a,second,2\n"
                                    ",no key,0\n"
                                    ",no key either,0\n");
  engine::ImportResult r = engine::import_file(*replica, "todo", path);
  CHECK(r.inserted == 2);
  CHECK(r.unchanged == 1);  // the first 'a', which the later one replaces
  CHECK(r.rejected == 2);   // NULL keys are each rejected, never merged
  CHECK(test::dump_table(*replica, "todo") ==
        "text:a|text:second|int:0|int:2|\ntext:b|text:walk|int:0|int:0|\n");
  const auto vector = replica->version_vector();
  const std::string everything = test::dump_everything(*replica);
  r = engine::import_file(*replica, "todo", path);
  CHECK(r.unchanged == 3);
  CHECK(r.inserted + r.updated == 0);
  CHECK(replica->version_vector() == vector);
  CHECK(test::dump_everything(*replica) == everything);
}

TEST_CASE("a hostile file is refused as a whole, and the replica stays exactly as it was") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  replica->exec("INSERT INTO todo(id, title) VALUES ('x', 'keep')");
  const std::string before = test::dump_everything(*replica);
  engine::ImportOptions csv;
  auto refused = [&](const std::string& name, const std::string& bytes,
                     engine::ImportOptions options) {
    const std::string path = dir.file(name, bytes);
    options.errors_path = (dir.path / "errors.csv").string();
    fs::remove(options.errors_path);
    auto result = error_of([&] { engine::import_file(*replica, "todo", path, options); });
    CHECK(test::dump_everything(*replica) == before);
    CHECK(!fs::exists(options.errors_path));
    CHECK(result.second.rfind("'" + path + "': ", 0) == 0);
    return result;
  };
  std::string good_lines = "id,title\n";
  for (int i = 0; i < 5000; ++i) good_lines += "k" + std::to_string(i) + ",fine\n";

  // Binary garbage: NUL bytes, even after many good records.
  std::string binary = good_lines;
  for (int i = 0; i < 256; ++i) binary += static_cast<char>(i);
  auto [code, message] = refused("binary.csv", binary, csv);
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message.find("line 5002") != std::string::npos);
  CHECK(message.find("this is not a text file") != std::string::npos);

  // A quote opened near the end swallows the rest of the file.
  std::tie(code, message) = refused("unclosed.csv", good_lines + "z,\"never closed\nmore\n", csv);
  CHECK(code == ErrorCode::kCorrupt);
  CHECK(message.find("line 5002: a quoted field opened here is never closed") != std::string::npos);

  // Too many records for the limit.
  engine::ImportOptions few = csv;
  few.limits.max_records = 1000;
  std::tie(code, message) = refused("many.csv", good_lines, few);
  CHECK(code == ErrorCode::kTooLarge);
  CHECK(message.find("more than 1000 records") != std::string::npos);

  // A file over the size limit.
  engine::ImportOptions small = csv;
  small.limits.max_file_bytes = 1000;
  std::tie(code, message) = refused("big.csv", good_lines, small);
  CHECK(code == ErrorCode::kTooLarge);

  // JSON nested deeper than the limit, in an array file; JSON that is not an array.
  engine::ImportOptions json;
  json.format = DataFormat::kJson;
  std::string deep = "[";
  for (int i = 0; i < 100; ++i) deep += "{\"id\": \"d" + std::to_string(i) + "\"},\n";
  deep += "{\"id\": \"deep\", \"title\": " + std::string(40, '[') + std::string(40, ']') + "}]";
  std::tie(code, message) = refused("deep.json", deep, json);
  CHECK(code == ErrorCode::kTooLarge);
  CHECK(message.find("line 101: a record nests deeper than 32 levels") != std::string::npos);
  std::tie(code, message) = refused("object.json", "{\"id\": \"a\"}", json);
  CHECK(code == ErrorCode::kCorrupt);

  // A header naming no column, a file with no header.
  std::tie(code, message) = refused("header.csv", "id,titel\na,b\n", csv);
  CHECK(code == ErrorCode::kInvalidArgument);
  CHECK(message.find("the header's column 'titel' is no column of table todo") !=
        std::string::npos);
  std::tie(code, message) = refused("empty.csv", "", csv);
  CHECK(code == ErrorCode::kInvalidArgument);
}

TEST_CASE("records over a limit are rejected alone, in CSV, NDJSON and JSON") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  engine::ImportOptions options;
  options.limits.max_field_bytes = 1000;
  options.limits.max_record_bytes = 2000;
  options.limits.max_depth = 8;
  const std::string huge(5000, 'h');
  engine::ImportResult r = engine::import_file(
      *replica, "todo", dir.file("huge.csv", "id,title\na,ok\nb," + huge + "\nc,ok\n"), options);
  CHECK(r.inserted == 2);
  REQUIRE(r.rejected == 1);
  CHECK(r.first_rejections[0].reason == "field 2 is longer than 1000 bytes");
  options.format = DataFormat::kNdjson;
  r = engine::import_file(
      *replica, "todo",
      dir.file("huge.ndjson", "{\"id\": \"d\"}\n{\"id\": \"e\", \"title\": \"" + huge +
                                  "\"}\n{\"id\": \"f\", \"title\": " + std::string(20, '[') +
                                  std::string(20, ']') + "}\n"),
      options);
  CHECK(r.inserted == 1);
  REQUIRE(r.rejected == 2);
  CHECK(r.first_rejections[0].reason == "the line is longer than 2000 bytes");
  CHECK(r.first_rejections[1].reason == "the record nests deeper than 8 levels");
  options.format = DataFormat::kJson;
  r = engine::import_file(
      *replica, "todo",
      dir.file("huge.json", "[{\"id\": \"g\"}, {\"id\": \"h\", \"title\": \"" + huge + "\"}]"),
      options);
  CHECK(r.inserted == 1);
  REQUIRE(r.rejected == 1);
  CHECK(r.first_rejections[0].reason == "the record is longer than 2000 bytes");
}

TEST_CASE("a mapping takes values from nested JSON, converts and normalizes them") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(
      "CREATE TABLE customers(id TEXT PRIMARY KEY, email TEXT, city TEXT, balance REAL,"
      " joined DATE, vip BOOLEAN, note TEXT DEFAULT 'none');"
      "SELECT lattice_replicate('customers')");
  const std::string mapping = R"({
    "columns": {
      "id": "/customer/id",
      "email": {"source": "/customer/contact/email", "trim": true, "case": "lower"},
      "city": {"source": "/address/city", "default": "unknown"},
      "balance": {"source": "balance", "decimal": ",", "thousands": "."},
      "joined": {"source": "joined", "format": "%d/%m/%Y"},
      "vip": "vip"
    }
  })";
  engine::ImportOptions options;
  options.format = DataFormat::kNdjson;
  options.mapping = mapping;
  const engine::ImportResult r = engine::import_file(
      *replica, "customers",
      dir.file("c.ndjson",
               "{\"customer\": {\"id\": \"c1\", \"contact\": {\"email\": \" Ann@X.org \"}},"
               " \"address\": {\"city\": \"Lyon\"}, \"balance\": \"1.234,50\", \"joined\": "
               "\"5/3/2021\", \"vip\": \"yes\", \"extra\": 1}\n"
               "{\"customer\": {\"id\": \"c2\"}, \"balance\": 3, \"joined\": \"31/02/2021\"}\n"
               "{\"customer\": {\"id\": \"c3\"}, \"balance\": 3, \"vip\": false}\n"),
      options);
  CHECK(r.inserted == 2);
  REQUIRE(r.rejected == 1);
  CHECK(r.first_rejections[0].record == 2);
  CHECK(r.first_rejections[0].column == "joined");
  CHECK(r.first_rejections[0].reason == "'31/02/2021' is not a date: day 31 of month 2");
  // `note` is not mapped: it keeps the table's default.
  CHECK(test::dump_table(*replica, "customers") ==
        "text:c1|text:ann@x.org|text:Lyon|real:1234.5|text:2021-03-05|int:1|text:none|\n"
        "text:c3|null|text:unknown|real:3|null|int:0|text:none|\n");
}

TEST_CASE("JSON without a mapping: members are columns, a missing one takes the default") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  engine::ImportOptions options;
  options.format = DataFormat::kJson;
  const engine::ImportResult r =
      engine::import_file(*replica, "todo",
                          dir.file("t.json",
                                   "[{\"id\": \"a\", \"title\": \"t\", \"votes\": 2},\n"
                                   " {\"id\": \"b\", \"titel\": \"typo\"},\n"
                                   " {\"id\": \"c\", \"DONE\": true}]"),
                          options);
  CHECK(r.inserted == 2);
  REQUIRE(r.rejected == 1);
  CHECK(r.first_rejections[0].line == 2);
  CHECK(r.first_rejections[0].reason ==
        "the member 'titel' is no column of table todo; map the file's members with a mapping "
        "file (--map)");
  CHECK(test::dump_table(*replica, "todo") ==
        "text:a|text:t|int:0|int:2|\ntext:c|null|int:1|int:0|\n");
}

TEST_CASE("JSON records with a repeated member or a lone surrogate go to the errors file") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  engine::ImportOptions options;
  options.format = DataFormat::kNdjson;
  options.errors_path = (dir.path / "errors.csv").string();
  const engine::ImportResult r =
      engine::import_file(*replica, "todo",
                          dir.file("t.ndjson",
                                   "{\"id\": \"a\", \"title\": \"first\"}\n"
                                   "{\"id\": \"b\", \"votes\": 1, \"votes\": 5}\n"
                                   "{\"id\": \"c\", \"title\": \"\\udc00\"}\n"),
                          options);
  CHECK(r.inserted == 1);
  CHECK(r.rejected == 2);
  CHECK(dir.read("errors.csv") ==
        "record,line,column,reason,data\n"
        "2,2,,the member 'votes' is given twice,\"{\"\"id\"\": \"\"b\"\", \"\"votes\"\": 1, "
        "\"\"votes\"\": 5}\"\n"
        "3,3,,not valid JSON: lone UTF-16 surrogate \\udc00 (a low surrogate without a high one "
        "before it) in member 'title' (byte 23 of the line),\"{\"\"id\"\": \"\"c\"\", "
        "\"\"title\"\": \"\"\\udc00\"\"}\"\n");
  CHECK(test::dump_table(*replica, "todo") == "text:a|text:first|int:0|int:0|\n");
}

TEST_CASE("progress is reported before the first batch and after each, with the total") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  std::string csv = "id,title\n";
  for (int i = 0; i < 250; ++i) csv += "k" + std::to_string(i) + ",t\n";
  engine::ImportOptions options;
  options.batch_rows = 100;
  std::vector<std::string> seen;
  options.on_progress = [&](const engine::ImportProgress& p) {
    seen.push_back(std::to_string(p.records) + "/" + std::to_string(p.total_records));
  };
  engine::import_file(*replica, "todo", dir.file("p.csv", csv), options);
  CHECK(seen == std::vector<std::string>{"0/250", "100/250", "200/250", "250/250"});
}

// A table of every kind of value, untyped and typed, for round trips.
constexpr const char* kAllTypes =
    "CREATE TABLE v(id INTEGER PRIMARY KEY, untyped, t TEXT, i INTEGER, r REAL, b BLOB);"
    "SELECT lattice_replicate('v');"
    "INSERT INTO v VALUES"
    " (1, NULL, NULL, NULL, NULL, NULL),"
    " (2, '', '', 0, 0.0, x''),"
    " (3, 5, '5', 5, 5.0, x'05'),"
    " (4, '5', 'a,\"b\"\nc', -9223372036854775808, 2.5e-300, x'00ff'),"
    " (5, 1.5, ' spaced ', 9223372036854775807, -0.0, x'deadbeef'),"
    " (6, x'0a0b', '\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80', 1, 1e300, NULL),"
    " (7, '007', 'NULL', 2, 0.1, NULL),"
    " (8, 'Infinity', 'Infinity', 3, -1e999, NULL)";

TEST_CASE("what export writes, import reads back to the same rows, in every format") {
  TempDir dir;
  auto source_replica = storage::Replica::open((dir.path / "source.db").string());
  source_replica->exec(kAllTypes);
  for (DataFormat format : {DataFormat::kCsv, DataFormat::kNdjson, DataFormat::kJson}) {
    CAPTURE(engine::data_format_name(format));
    const std::string path =
        (dir.path / (std::string("v.") + engine::data_format_name(format))).string();
    CHECK(engine::export_file(*source_replica, "v", format, path).rows == 8);
    auto copy = storage::Replica::open(
        (dir.path / (std::string("copy-") + engine::data_format_name(format) + ".db")).string());
    copy->exec(
        "CREATE TABLE v(id INTEGER PRIMARY KEY, untyped, t TEXT, i INTEGER, r REAL, b BLOB);"
        "SELECT lattice_replicate('v')");
    engine::ImportOptions options;
    options.format = format;
    const engine::ImportResult r = engine::import_file(*copy, "v", path, options);
    CHECK(r.rejected == 0);
    for (const auto& x : r.first_rejections) CAPTURE(x.reason);
    CHECK(test::dump_table(*copy, "v") == test::dump_table(*source_replica, "v"));
  }
}

TEST_CASE("a JSON column is exported as the JSON it holds, and reads back to the same text") {
  TempDir dir;
  constexpr const char* kSchema =
      "CREATE TABLE d(id TEXT PRIMARY KEY, body JSON);"
      "SELECT lattice_replicate('d');";
  auto source_replica = storage::Replica::open((dir.path / "source.db").string());
  source_replica->exec(kSchema);
  source_replica->exec(
      "INSERT INTO d VALUES ('a', '{\"tags\":[\"x\",\"y\"],\"n\":1.5}'), ('b', '\"text\"'), "
      "('c', '5'), ('d', '[]'), ('e', NULL)");
  std::string ndjson;
  engine::export_rows(*source_replica, "SELECT * FROM d WHERE id = 'a'", DataFormat::kNdjson,
                      [&](std::string_view bytes) { ndjson += bytes; });
  CHECK(ndjson == "{\"id\": \"a\", \"body\": {\"tags\":[\"x\",\"y\"],\"n\":1.5}}\n");
  for (DataFormat format : {DataFormat::kCsv, DataFormat::kNdjson, DataFormat::kJson}) {
    CAPTURE(engine::data_format_name(format));
    const std::string name = engine::data_format_name(format);
    const std::string path = (dir.path / ("d." + name)).string();
    CHECK(engine::export_file(*source_replica, "d", format, path).rows == 5);
    auto copy = storage::Replica::open((dir.path / ("copy-" + name + ".db")).string());
    copy->exec(kSchema);
    engine::ImportOptions options;
    options.format = format;
    CHECK(engine::import_file(*copy, "d", path, options).rejected == 0);
    CHECK(test::dump_table(*copy, "d") == test::dump_table(*source_replica, "d"));
  }
}

TEST_CASE("export writes a table in key order, or a query's rows, and refuses anything else") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  replica->exec("INSERT INTO todo(id, title, votes) VALUES ('b', 'two', 2), ('a', 'one', 1)");
  auto exported = [&](std::string_view what, DataFormat format) {
    std::string out;
    engine::export_rows(*replica, what, format, [&](std::string_view bytes) { out += bytes; });
    return out;
  };
  CHECK(exported("todo", DataFormat::kCsv) ==
        "id,title,done,votes\n\"a\",\"one\",0,1\n\"b\",\"two\",0,2\n");
  CHECK(exported("SELECT id, votes * 2 AS double FROM todo WHERE votes > 1", DataFormat::kNdjson) ==
        "{\"id\": \"b\", \"double\": 4}\n");
  CHECK(exported("SELECT 1 WHERE 0", DataFormat::kJson) == "[]\n");
  CHECK(exported("SELECT x'00' AS b, 1.0 AS r", DataFormat::kJson) ==
        "[\n{\"b\": {\"blob\": \"00\"}, \"r\": 1.0}\n]\n");
  const std::string before = test::dump_everything(*replica);
  CHECK(error_of([&] { exported("DELETE FROM todo", DataFormat::kCsv); }).first ==
        ErrorCode::kInvalidArgument);
  CHECK(error_of([&] { exported("SELECT 1; DELETE FROM todo", DataFormat::kCsv); }).first ==
        ErrorCode::kInvalidArgument);
  CHECK(error_of([&] { exported("nosuchtable", DataFormat::kCsv); }).first ==
        ErrorCode::kInvalidArgument);
  CHECK(test::dump_everything(*replica) == before);
  replica->exec("INSERT INTO todo(id, title) VALUES ('c', CAST(x'ff' AS TEXT))");
  auto [code, message] = error_of([&] { exported("todo", DataFormat::kJson); });
  CHECK(code == ErrorCode::kInvalidArgument);
  CHECK(message ==
        "row 3, column title: the text is not valid UTF-8 (byte 1), which JSON cannot carry; "
        "export it as csv");
  // A failed export to a file leaves no file behind.
  const std::string path = (dir.path / "todo.json").string();
  CHECK(error_of([&] { engine::export_file(*replica, "todo", DataFormat::kJson, path); }).first ==
        ErrorCode::kInvalidArgument);
  CHECK(!fs::exists(path));
  CHECK(!fs::exists(path + ".tmp"));
}

TEST_CASE("an import into a replicated table syncs like any write; inside a transaction it waits") {
  TempDir dir;
  auto replica = storage::Replica::open((dir.path / "r.db").string());
  replica->exec(test::kTodoSchema);
  std::vector<storage::ChangeEvent> events;
  replica->subscribe([&](const auto& e) { events.insert(events.end(), e.begin(), e.end()); });
  const std::string path = dir.file("t.csv", "id,title,votes\na,x,1\nb,y,2\n");
  engine::import_file(*replica, "todo", path);
  CHECK(events.size() == 2);
  auto other = test::open_todo_replica();
  other->apply(replica->changes_since(crdt::VersionVector{}));
  CHECK(other->digest() == replica->digest());
  replica->exec("BEGIN");
  CHECK(error_of([&] { engine::import_file(*replica, "todo", path); }).first == ErrorCode::kState);
  replica->exec("ROLLBACK");
}

}  // namespace
}  // namespace lattice
