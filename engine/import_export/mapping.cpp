#include "engine/import_export/mapping.hpp"

#include <boost/json/value.hpp>

#include "crdt/error.hpp"
#include "storage/json_reader.hpp"

namespace lattice::engine {

namespace json = boost::json;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& why) {
  throw Error(ErrorCode::kInvalidArgument, "mapping: " + where + (where.empty() ? "" : ": ") + why);
}

std::string text_of(const json::string& s) { return std::string(s.data(), s.size()); }

std::string lower(std::string_view text) {
  std::string out(text);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string expect_string(const json::value& v, const std::string& where) {
  if (!v.is_string()) fail(where, "expected a string");
  return text_of(v.get_string());
}

bool expect_bool(const json::value& v, const std::string& where) {
  if (!v.is_bool()) fail(where, "expected true or false");
  return v.get_bool();
}

std::uint64_t expect_count(const json::value& v, const std::string& where) {
  if (v.is_int64() && v.get_int64() > 0) return static_cast<std::uint64_t>(v.get_int64());
  if (v.is_uint64() && v.get_uint64() > 0) return v.get_uint64();
  fail(where, "expected a positive integer");
}

ColumnMapping column_of(const std::string& name, const json::value& spec, bool header) {
  const std::string where = "column '" + name + "'";
  ColumnMapping m;
  m.column = name;
  if (spec.is_string()) {
    m.source = text_of(spec.get_string());
    return m;
  }
  if (spec.is_int64() || spec.is_uint64()) {
    m.source_number = expect_count(spec, where);
    if (header) fail(where, "a column number as source needs \"csv\": {\"header\": false}");
    return m;
  }
  if (!spec.is_object())
    fail(where, "expected a source (a string, or a CSV column number) or an object");
  const json::value* default_value = nullptr;
  for (const auto& [key_view, value] : spec.get_object()) {
    const std::string key(key_view.data(), key_view.size());
    const std::string at = where + ", \"" + key + "\"";
    ValueFormat& f = m.format;
    if (key == "source") {
      if (value.is_int64() || value.is_uint64()) {
        m.source_number = expect_count(value, at);
      } else {
        m.source = expect_string(value, at);
        if (m.source.empty()) fail(at, "the source is empty");
      }
    } else if (key == "type") {
      const std::string type = expect_string(value, at);
      auto parsed = value_type_from_name(type);
      if (!parsed)
        fail(at, "unknown type '" + type +
                     "' (known: text, integer, real, number, boolean, date, datetime, blob, json, "
                     "any)");
      f.type = *parsed;
      m.type_given = true;
    } else if (key == "trim") {
      f.trim = expect_bool(value, at);
    } else if (key == "case") {
      const std::string c = expect_string(value, at);
      if (c == "lower") {
        f.letter_case = ValueFormat::Case::kLower;
      } else if (c == "upper") {
        f.letter_case = ValueFormat::Case::kUpper;
      } else if (c != "keep") {
        fail(at, "expected \"lower\", \"upper\" or \"keep\"");
      }
    } else if (key == "decimal") {
      const std::string d = expect_string(value, at);
      if (d != "." && d != ",") fail(at, "expected \".\" or \",\"");
      f.decimal = d[0];
    } else if (key == "thousands") {
      f.thousands = expect_string(value, at);
      if (f.thousands.size() > 4) fail(at, "expected a separator of at most 4 bytes");
      for (char c : f.thousands)
        if (c >= '0' && c <= '9') fail(at, "a digit cannot separate digits");
    } else if (key == "format") {
      f.date_format = expect_string(value, at);
      const std::string why = check_date_format(f.date_format);
      if (!why.empty()) fail(at, "not a date format: " + why);
    } else if (key == "encoding") {
      const std::string e = expect_string(value, at);
      if (e == "hex") {
        f.blob_encoding = ValueFormat::BlobEncoding::kHex;
      } else if (e == "base64") {
        f.blob_encoding = ValueFormat::BlobEncoding::kBase64;
      } else {
        fail(at, "expected \"hex\" or \"base64\"");
      }
    } else if (key == "null") {
      if (!value.is_array()) fail(at, "expected an array of strings");
      for (const auto& item : value.get_array()) f.null_texts.push_back(expect_string(item, at));
    } else if (key == "default") {
      default_value = &value;
    } else {
      fail(where, "unknown setting \"" + key +
                      "\" (known: source, type, trim, case, decimal, thousands, format, "
                      "encoding, null, default)");
    }
  }
  if (m.source_number && header)
    fail(where, "a column number as source needs \"csv\": {\"header\": false}");
  if (!m.format.thousands.empty() && m.format.thousands == std::string(1, m.format.decimal))
    fail(where, "the thousands separator is also the decimal separator");
  if (!m.format.date_format.empty() && m.type_given && m.format.type != ValueType::kDate &&
      m.format.type != ValueType::kDatetime)
    fail(where, "\"format\" is for the types date and datetime");
  if (default_value) {
    // Converted by the column's type once the import knows it (Importer).
    switch (default_value->kind()) {
      case json::kind::string:
        m.default_source = crdt::Value{text_of(default_value->get_string())};
        break;
      case json::kind::int64:
        m.default_source = crdt::Value{default_value->get_int64()};
        break;
      case json::kind::uint64:
      case json::kind::double_:
        m.default_source = crdt::Value{default_value->to_number<double>()};
        break;
      case json::kind::bool_:
        m.default_source = crdt::Value{std::int64_t{default_value->get_bool() ? 1 : 0}};
        break;
      case json::kind::null:
        break;
      default:
        fail(where + ", \"default\"", "expected a string, a number, a boolean or null");
    }
  }
  return m;
}

void read_limits(const json::value& v, ReadLimits& limits) {
  if (!v.is_object()) fail("\"limits\"", "expected an object");
  for (const auto& [key_view, value] : v.get_object()) {
    const std::string key(key_view.data(), key_view.size());
    const std::string at = "\"limits\", \"" + key + "\"";
    const std::uint64_t n = expect_count(value, at);
    if (key == "max_file_bytes") {
      limits.max_file_bytes = n;
    } else if (key == "max_records") {
      limits.max_records = n;
    } else if (key == "max_record_bytes") {
      limits.max_record_bytes = static_cast<std::size_t>(n);
    } else if (key == "max_field_bytes") {
      limits.max_field_bytes = static_cast<std::size_t>(n);
    } else if (key == "max_fields") {
      limits.max_fields = static_cast<std::size_t>(n);
    } else if (key == "max_depth") {
      if (n > 1000) fail(at, "at most 1000");
      limits.max_depth = static_cast<std::size_t>(n);
    } else {
      fail("\"limits\"", "unknown limit \"" + key +
                             "\" (known: max_file_bytes, max_records, max_record_bytes, "
                             "max_field_bytes, max_fields, max_depth)");
    }
  }
}

}  // namespace

Mapping parse_mapping(std::string_view text, ReadLimits& limits) {
  json::value root;
  if (const auto problem = storage::read_json(text, 8, root)) {
    if (problem->kind == storage::JsonProblem::Kind::kDuplicate)
      fail("", "the member \"" + problem->member + "\" is given twice");
    fail("", "not valid JSON: " + problem->what + " at byte " + std::to_string(problem->offset));
  }
  if (!root.is_object()) fail("", "expected a JSON object with \"columns\"");
  Mapping mapping;
  const json::value* columns = nullptr;
  for (const auto& [key_view, value] : root.get_object()) {
    const std::string key(key_view.data(), key_view.size());
    if (key == "columns") {
      columns = &value;
    } else if (key == "csv") {
      if (!value.is_object()) fail("\"csv\"", "expected an object");
      for (const auto& [k, v] : value.get_object()) {
        const std::string setting(k.data(), k.size());
        if (setting == "delimiter") {
          const std::string d = expect_string(v, "\"csv\", \"delimiter\"");
          if (d == "\\t" || d == "tab") {
            mapping.delimiter = '\t';
          } else if (d.size() == 1 && d != "\"" && d != "\n" && d != "\r") {
            mapping.delimiter = d[0];
          } else {
            fail("\"csv\", \"delimiter\"", "expected one character (or \"tab\")");
          }
        } else if (setting == "header") {
          mapping.header = expect_bool(v, "\"csv\", \"header\"");
        } else {
          fail("\"csv\"", "unknown setting \"" + setting + "\" (known: delimiter, header)");
        }
      }
    } else if (key == "limits") {
      read_limits(value, limits);
    } else {
      fail("", "unknown member \"" + key + "\" (known: columns, csv, limits)");
    }
  }
  if (!columns || !columns->is_object() || columns->get_object().empty())
    fail("", "\"columns\" must be an object naming at least one column");
  for (const auto& [name, spec] : columns->get_object()) {
    ColumnMapping m = column_of(std::string(name.data(), name.size()), spec, mapping.header);
    if (m.source.empty() && !m.source_number) m.source = m.column;
    mapping.columns.push_back(std::move(m));
  }
  return mapping;
}

ValueType default_type(std::string_view declared_type, crdt::Affinity affinity, bool counter) {
  if (counter) return ValueType::kInteger;
  const std::string type = lower(declared_type);
  if (type.find("bool") != std::string::npos) return ValueType::kBoolean;
  if (type.find("datetime") != std::string::npos || type.find("timestamp") != std::string::npos)
    return ValueType::kDatetime;
  if (type.find("date") != std::string::npos) return ValueType::kDate;
  if (type.find("json") != std::string::npos) return ValueType::kJson;
  switch (affinity) {
    case crdt::Affinity::kInteger:
      return ValueType::kInteger;
    case crdt::Affinity::kReal:
      return ValueType::kReal;
    case crdt::Affinity::kNumeric:
      return ValueType::kNumber;
    case crdt::Affinity::kText:
      return ValueType::kText;
    case crdt::Affinity::kBlob:
      break;
  }
  return type.find("blob") != std::string::npos ? ValueType::kBlob : ValueType::kAny;
}

}  // namespace lattice::engine
