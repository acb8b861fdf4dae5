// libFuzzer target for what an import reads from an untrusted file (engine/import_export/): the
// CSV reader, the NDJSON and JSON array readers, the mapping file parser and the value
// conversions. The first byte picks the reader; any bytes must give records or lattice::Error,
// never a crash, a hang or memory beyond the limits. Built only with -DLATTICE_FUZZ=ON under
// clang; see tests/fuzz/CMakeLists.txt.

#include <cstddef>
#include <cstdint>
#include <string>

#include "crdt/error.hpp"
#include "engine/import_export/conversion.hpp"
#include "engine/import_export/csv.hpp"
#include "engine/import_export/json_records.hpp"
#include "engine/import_export/mapping.hpp"

namespace {

using namespace lattice::engine;

constexpr ValueType kTypes[] = {ValueType::kText,     ValueType::kInteger, ValueType::kReal,
                                ValueType::kNumber,   ValueType::kBoolean, ValueType::kDate,
                                ValueType::kDatetime, ValueType::kBlob,    ValueType::kJson,
                                ValueType::kAny};

ReadLimits small_limits() {
  ReadLimits limits;
  limits.max_record_bytes = 4096;
  limits.max_field_bytes = 1024;
  limits.max_fields = 64;
  limits.max_depth = 16;
  return limits;
}

ByteSource source_of(const std::string& bytes) {
  std::size_t offset = 0;
  return [&bytes, offset](char* buffer, std::size_t size) mutable {
    // Small pieces, so that every boundary is met.
    const std::size_t n = std::min({size, std::size_t{7}, bytes.size() - offset});
    bytes.copy(buffer, n, offset);
    offset += n;
    return n;
  };
}

void convert_all(const SourceValue& value) {
  for (ValueType type : kTypes) {
    ValueFormat format;
    format.type = type;
    std::string error;
    (void)convert_value(format, value, error);
    format.date_format = "%d/%m/%Y %H:%M:%S";
    format.decimal = ',';
    format.thousands = ".";
    (void)convert_value(format, value, error);
  }
}

void read_csv(const std::string& bytes) {
  CsvReader reader(source_of(bytes), ',', small_limits());
  CsvRecord record;
  while (reader.next(record)) {
    for (std::size_t i = 0; i < record.count; ++i) {
      SourceValue value;
      value.kind = SourceValue::Kind::kText;
      value.text = record.fields[i].text;
      value.quoted = record.fields[i].quoted;
      convert_all(value);
    }
  }
}

void read_json(const std::string& bytes, JsonRecordReader::Layout layout) {
  JsonRecordReader reader(source_of(bytes), layout, small_limits());
  JsonRecord record;
  while (reader.next(record)) {
    if (!record.error.empty()) continue;
    for (const auto& member : record.value.get_object()) {
      std::string storage;
      const SourceValue value = source_from_json(&member.value(), storage);
      convert_all(value);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 4) {
      case 0:
        read_csv(bytes);
        break;
      case 1:
        read_json(bytes, JsonRecordReader::Layout::kLines);
        break;
      case 2:
        read_json(bytes, JsonRecordReader::Layout::kArray);
        break;
      default: {
        ReadLimits limits;
        (void)parse_mapping(bytes, limits);
      }
    }
  } catch (const lattice::Error&) {
    // Refused: what the reader must do with such bytes.
  }
  return 0;
}
