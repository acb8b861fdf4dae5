#include "engine/import_export/csv.hpp"

#include <charconv>
#include <cmath>

#include "crdt/error.hpp"

namespace lattice::engine {

namespace {
constexpr std::size_t kBufferBytes = 1 << 16;
}  // namespace

CsvReader::CsvReader(ByteSource source, char delimiter, const ReadLimits& limits)
    : source_(std::move(source)), delimiter_(delimiter), limits_(limits), buffer_(kBufferBytes) {}

bool CsvReader::refill() {
  consumed_ += end_;
  pos_ = end_ = 0;
  end_ = source_(buffer_.data(), buffer_.size());
  return end_ > 0;
}

void CsvReader::nul_byte() const {
  throw Error(ErrorCode::kCorrupt, "line " + std::to_string(line_) + " (byte " +
                                       std::to_string(bytes_read() + 1) +
                                       ") holds a NUL byte: this is not a text file");
}

// Adds one byte to the current field, within the limits; past them the record is refused and
// its further bytes are only counted.
void CsvReader::append(CsvRecord& record, CsvField& field, char c) {
  if (c == '\0') nul_byte();
  if (++record_bytes_ > limits_.max_record_bytes) {
    if (record.error.empty())
      record.error =
          "the record is longer than " + std::to_string(limits_.max_record_bytes) + " bytes";
    return;
  }
  if (field.text.size() >= limits_.max_field_bytes) {
    if (record.error.empty())
      record.error = "field " + std::to_string(record.count + 1) + " is longer than " +
                     std::to_string(limits_.max_field_bytes) + " bytes";
    return;
  }
  if (record.error.empty()) field.text += c;
}

void CsvReader::skip_rest_of_record() {
  bool quoted = false;
  for (int c; (c = peek()) >= 0;) {
    ++pos_;
    if (c == 0) nul_byte();
    if (c == '"') quoted = !quoted;
    if (c == '\n') {
      ++line_;
      if (!quoted) return;
    }
  }
}

bool CsvReader::next(CsvRecord& record) {
  record.count = 0;
  record.error.clear();
  record_bytes_ = 0;
  if (!started_) {
    started_ = true;
    // A UTF-8 byte order mark, which a source may hand over a byte at a time.
    while (peek() >= 0 && end_ - pos_ < 3) {
      std::vector<char> start(buffer_.begin() + static_cast<std::ptrdiff_t>(pos_),
                              buffer_.begin() + static_cast<std::ptrdiff_t>(end_));
      const std::size_t more = source_(buffer_.data() + start.size(), 3 - start.size());
      std::copy(start.begin(), start.end(), buffer_.begin());
      consumed_ += pos_;
      pos_ = 0;
      end_ = start.size() + more;
      if (more == 0) break;
    }
    if (end_ - pos_ >= 3 && buffer_[pos_] == '\xEF' && buffer_[pos_ + 1] == '\xBB' &&
        buffer_[pos_ + 2] == '\xBF')
      pos_ += 3;
  }
  // Blank lines.
  for (;;) {
    const int c = peek();
    if (c < 0) return false;
    if (c == '\n') {
      ++pos_;
      ++line_;
    } else if (c == '\r') {
      ++pos_;
    } else {
      break;
    }
  }
  record.line = line_;
  for (;;) {
    if (record.count == record.fields.size()) record.fields.emplace_back();
    CsvField scratch;
    const bool keep = record.count < limits_.max_fields;
    if (!keep && record.error.empty())
      record.error = "the record has more than " + std::to_string(limits_.max_fields) + " fields";
    CsvField& field = keep ? record.fields[record.count] : scratch;
    field.text.clear();
    field.quoted = false;
    int c = peek();
    if (c == '"') {
      field.quoted = true;
      ++pos_;
      const std::uint64_t opened = line_;
      for (;;) {
        c = peek();
        if (c < 0)
          throw Error(ErrorCode::kCorrupt,
                      "line " + std::to_string(opened) +
                          ": a quoted field opened here is never closed (a missing '\"')");
        ++pos_;
        if (c == '"') {
          if (peek() != '"') break;
          ++pos_;
        } else if (c == '\n') {
          ++line_;
        }
        append(record, field, static_cast<char>(c));
      }
      c = peek();
      if (c >= 0 && c != delimiter_ && c != '\n' && c != '\r') {
        if (record.error.empty())
          record.error =
              "field " + std::to_string(record.count + 1) + " has text after its closing quote";
        if (keep) ++record.count;
        skip_rest_of_record();
        return true;
      }
    } else {
      // Unquoted: up to the delimiter or the end of the line, quotes taken as they are.
      for (;;) {
        if (pos_ == end_ && !refill()) break;
        const char* start = buffer_.data() + pos_;
        const char* stop = buffer_.data() + end_;
        const char* p = start;
        while (p < stop && *p != delimiter_ && *p != '\n' && *p != '\r' && *p != '\0') ++p;
        const auto n = static_cast<std::size_t>(p - start);
        if (record.error.empty() && field.text.size() + n <= limits_.max_field_bytes &&
            record_bytes_ + n <= limits_.max_record_bytes) {
          field.text.append(start, n);
          record_bytes_ += n;
          pos_ += n;
        } else {
          for (std::size_t i = 0; i < n; ++i) append(record, field, start[i]);
          pos_ += n;
        }
        if (p < stop) {
          if (*p == '\0') nul_byte();
          break;
        }
      }
      c = peek();
    }
    if (keep) ++record.count;
    if (c == delimiter_) {
      ++pos_;
      ++record_bytes_;
      continue;
    }
    // The end of the record: CRLF, LF, a lone CR, or the end of the file.
    if (c == '\r') {
      ++pos_;
      if (peek() == '\n') ++pos_;
      ++line_;
    } else if (c == '\n') {
      ++pos_;
      ++line_;
    }
    return true;
  }
}

void append_csv_text(std::string& out, std::string_view text, char delimiter, bool always_quote) {
  bool quote = always_quote || text.empty() || text.front() == ' ' || text.back() == ' ' ||
               text.front() == '\t' || text.back() == '\t';
  for (char c : text)
    if (c == delimiter || c == '"' || c == '\n' || c == '\r') quote = true;
  if (!quote) {
    out += text;
    return;
  }
  out += '"';
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
}

void append_csv_value(std::string& out, const crdt::Value& value, char delimiter) {
  switch (value.index()) {
    case 0:
      return;
    case 1:
      out += std::to_string(std::get<std::int64_t>(value));
      return;
    case 2: {
      const double d = std::get<double>(value);
      if (std::isinf(d)) {
        out += d > 0 ? "Infinity" : "-Infinity";
        return;
      }
      char buffer[32];
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, d);
      std::string text(buffer, end);
      if (text.find_first_of(".eEn") == std::string::npos) text += ".0";
      out += text;
      return;
    }
    case 3:
      append_csv_text(out, std::get<std::string>(value), delimiter, true);
      return;
    default: {
      static const char* digits = "0123456789abcdef";
      out += "\\x";
      for (unsigned char c : std::get<crdt::Blob>(value).bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
      }
    }
  }
}

}  // namespace lattice::engine
