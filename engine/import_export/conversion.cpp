#include "engine/import_export/conversion.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "crdt/hex.hpp"
#include "crdt/json.hpp"

namespace lattice::engine {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trimmed(std::string_view text) {
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

char lower_ascii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower_ascii(a[i]) != lower_ascii(b[i])) return false;
  return true;
}

// The value as quoted in an error message: at most 40 bytes of it.
std::string shown(std::string_view text) {
  if (text.size() > 40) return "'" + std::string(text.substr(0, 37)) + "...'";
  return "'" + std::string(text) + "'";
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// The text of a number with the format's separators normalized away: no spaces around it, no
// digit-group separators, '.' as the decimal point, no leading '+'. Empty with `error` set when
// it holds something else.
std::string normalized_number(const ValueFormat& format, std::string_view text,
                              std::string& error) {
  std::string_view t = trimmed(text);
  std::string out;
  out.reserve(t.size());
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (!format.thousands.empty() && t.substr(i, format.thousands.size()) == format.thousands) {
      i += format.thousands.size() - 1;
      continue;
    }
    const char c = t[i];
    if (c == format.decimal) {
      out += '.';
    } else if (c == '.' && format.decimal != '.') {
      error = shown(text) + " is not a number: '.' is not the decimal separator here";
      return {};
    } else {
      out += c;
    }
  }
  if (!out.empty() && out[0] == '+') out.erase(0, 1);
  if (out.empty()) error = shown(text) + " is not a number";
  return out;
}

std::optional<std::int64_t> parse_integer(const ValueFormat& format, std::string_view text,
                                          std::string& error) {
  const std::string n = normalized_number(format, text, error);
  if (n.empty()) return std::nullopt;
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), value);
  if (ec == std::errc::result_out_of_range) {
    error = shown(text) + " is out of the range of a 64-bit integer";
    return std::nullopt;
  }
  if (ec != std::errc() || end != n.data() + n.size()) {
    error = shown(text) + " is not an integer";
    return std::nullopt;
  }
  return value;
}

// "Infinity" and "-Infinity", how export writes the infinities SQLite can store.
std::optional<double> infinity(std::string_view text) {
  if (text == "Infinity") return std::numeric_limits<double>::infinity();
  if (text == "-Infinity") return -std::numeric_limits<double>::infinity();
  return std::nullopt;
}

std::optional<double> parse_real(const ValueFormat& format, std::string_view text,
                                 std::string& error) {
  if (auto inf = infinity(trimmed(text))) return inf;
  const std::string n = normalized_number(format, text, error);
  if (n.empty()) return std::nullopt;
  bool digits = false, allowed = true;
  for (char c : n) {
    digits = digits || is_digit(c);
    allowed = allowed && (is_digit(c) || c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+');
  }
  double value = 0;
  auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), value);
  if (!digits || !allowed || ec != std::errc() || end != n.data() + n.size() ||
      !std::isfinite(value)) {
    error = shown(text) + (ec == std::errc::result_out_of_range ? " is out of the range of a real"
                                                                : " is not a number");
    return std::nullopt;
  }
  return value;
}

// JSON's number grammar, which is how an untyped CSV field is recognised as a number: no
// leading zeros or '+', so that '007' and '+1' stay text.
bool json_number_text(std::string_view t, bool& integral) {
  std::size_t i = 0;
  if (i < t.size() && t[i] == '-') ++i;
  if (i >= t.size() || !is_digit(t[i])) return false;
  if (t[i] == '0' && i + 1 < t.size() && is_digit(t[i + 1])) return false;
  while (i < t.size() && is_digit(t[i])) ++i;
  integral = true;
  if (i < t.size() && t[i] == '.') {
    integral = false;
    if (++i >= t.size() || !is_digit(t[i])) return false;
    while (i < t.size() && is_digit(t[i])) ++i;
  }
  if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) {
    integral = false;
    ++i;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
    if (i >= t.size() || !is_digit(t[i])) return false;
    while (i < t.size() && is_digit(t[i])) ++i;
  }
  return i == t.size();
}

std::optional<crdt::Blob> parse_hex(std::string_view text, std::string& error) {
  std::string_view t = trimmed(text);
  if (t.size() >= 2 &&
      (t.substr(0, 2) == "\\x" || t.substr(0, 2) == "0x" || t.substr(0, 2) == "0X"))
    t.remove_prefix(2);
  if (t.size() % 2 != 0) {
    error = shown(text) + " is not hex: an odd number of digits";
    return std::nullopt;
  }
  crdt::Blob blob;
  blob.bytes.reserve(t.size() / 2);
  for (std::size_t i = 0; i < t.size(); i += 2) {
    const int hi = crdt::hex_digit(t[i]), lo = crdt::hex_digit(t[i + 1]);
    if (hi < 0 || lo < 0) {
      error = shown(text) + " is not hex";
      return std::nullopt;
    }
    blob.bytes += static_cast<char>(hi * 16 + lo);
  }
  return blob;
}

std::optional<crdt::Blob> parse_base64(std::string_view text, std::string& error) {
  std::string_view t = trimmed(text);
  while (!t.empty() && t.back() == '=') t.remove_suffix(1);
  auto sextet = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  crdt::Blob blob;
  std::uint32_t bits = 0;
  int count = 0;
  for (char c : t) {
    const int v = sextet(c);
    if (v < 0) {
      error = shown(text) + " is not base64";
      return std::nullopt;
    }
    bits = ((bits << 6) | static_cast<std::uint32_t>(v)) & 0xffffff;
    count += 6;
    if (count >= 8) {
      count -= 8;
      blob.bytes += static_cast<char>((bits >> count) & 0xff);
    }
  }
  if (count >= 6) {
    error = shown(text) + " is not base64: it ends in the middle of a byte";
    return std::nullopt;
  }
  return blob;
}

// --- Dates -------------------------------------------------------------------------------------

struct DateTime {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  std::string fraction;  // digits after the seconds' point
  bool has_time = false;
  std::optional<int> offset_minutes;  // east of UTC
};

bool leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int days_in_month(int y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : days[m - 1];
}

// Days since 1970-01-01 of a civil date, and back (proleptic Gregorian; H. Hinnant's
// algorithms, http://howardhinnant.github.io/date_algorithms.html).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, int& y, int& m, int& d) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  y = static_cast<int>(static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2));
}

// Why the fields are not a real date and time, or empty.
std::string invalid_date(const DateTime& t) {
  if (t.year < 1 || t.year > 9999) return "year " + std::to_string(t.year);
  if (t.month < 1 || t.month > 12) return "month " + std::to_string(t.month);
  if (t.day < 1 || t.day > days_in_month(t.year, t.month))
    return "day " + std::to_string(t.day) + " of month " + std::to_string(t.month);
  if (t.hour > 23) return "hour " + std::to_string(t.hour);
  if (t.minute > 59) return "minute " + std::to_string(t.minute);
  if (t.second > 59) return "second " + std::to_string(t.second);
  return {};
}

const char* const kMonths[] = {"january",   "february", "march",    "april",
                               "may",       "june",     "july",     "august",
                               "september", "october",  "november", "december"};

// Reads 1..max digits (exactly `max` when `exact`) at `i`.
bool read_number(std::string_view s, std::size_t& i, int max, bool exact, int& out) {
  int n = 0, value = 0;
  while (i < s.size() && n < max && is_digit(s[i])) {
    value = value * 10 + (s[i++] - '0');
    ++n;
  }
  out = value;
  return exact ? n == max : n > 0;
}

bool read_offset(std::string_view s, std::size_t& i, std::optional<int>& offset) {
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    ++i;
    offset = 0;
    return true;
  }
  if (i >= s.size() || (s[i] != '+' && s[i] != '-')) return false;
  const int sign = s[i++] == '-' ? -1 : 1;
  int hours = 0, minutes = 0;
  if (!read_number(s, i, 2, true, hours)) return false;
  if (i < s.size() && s[i] == ':') ++i;
  if (i < s.size() && is_digit(s[i]) && !read_number(s, i, 2, true, minutes)) return false;
  if (hours > 23 || minutes > 59) return false;
  offset = sign * (hours * 60 + minutes);
  return true;
}

// ISO 8601: YYYY-MM-DD, then (with a time) T or a space, HH:MM[:SS[.fff]], then Z or an offset.
bool parse_iso(std::string_view s, DateTime& t) {
  std::size_t i = 0;
  if (!read_number(s, i, 4, true, t.year) || i >= s.size() || s[i++] != '-' ||
      !read_number(s, i, 2, true, t.month) || i >= s.size() || s[i++] != '-' ||
      !read_number(s, i, 2, true, t.day))
    return false;
  if (i == s.size()) return true;
  if (s[i] != 'T' && s[i] != 't' && s[i] != ' ') return false;
  ++i;
  t.has_time = true;
  if (!read_number(s, i, 2, true, t.hour) || i >= s.size() || s[i++] != ':' ||
      !read_number(s, i, 2, true, t.minute))
    return false;
  if (i < s.size() && s[i] == ':') {
    ++i;
    if (!read_number(s, i, 2, true, t.second)) return false;
    if (i < s.size() && (s[i] == '.' || s[i] == ',')) {
      ++i;
      while (i < s.size() && is_digit(s[i]) && t.fraction.size() < 9) t.fraction += s[i++];
      if (t.fraction.empty()) return false;
    }
  }
  if (i < s.size() && !read_offset(s, i, t.offset_minutes)) return false;
  return i == s.size();
}

// The pattern directives that read a number into a field: %Y exactly four digits, the others
// one or two.
struct NumericField {
  char directive;
  int DateTime::*member;
  int digits;
  bool exact;
  bool time;
};
constexpr NumericField kNumericFields[] = {
    {'Y', &DateTime::year, 4, true, false},   {'m', &DateTime::month, 2, false, false},
    {'d', &DateTime::day, 2, false, false},   {'H', &DateTime::hour, 2, false, true},
    {'M', &DateTime::minute, 2, false, true}, {'S', &DateTime::second, 2, false, true},
};

const NumericField* numeric_field(char directive) {
  for (const auto& f : kNumericFields)
    if (f.directive == directive) return &f;
  return nullptr;
}

// A strptime-like pattern (ValueFormat::date_format).
bool parse_pattern(std::string_view s, std::string_view pattern, DateTime& t, std::string& why) {
  std::size_t i = 0;
  int hour12 = -1;
  std::optional<bool> pm;
  for (std::size_t p = 0; p < pattern.size(); ++p) {
    const char c = pattern[p];
    if (c == ' ') {
      if (i >= s.size() || !is_space(s[i])) return false;
      while (i < s.size() && is_space(s[i])) ++i;
      continue;
    }
    if (c != '%' || p + 1 >= pattern.size()) {
      if (i >= s.size() || s[i] != c) return false;
      ++i;
      continue;
    }
    const char directive = pattern[++p];
    bool ok = true;
    if (const NumericField* field = numeric_field(directive)) {
      ok = read_number(s, i, field->digits, field->exact, t.*(field->member));
      t.has_time = t.has_time || field->time;
      if (!ok) return false;
      continue;
    }
    switch (directive) {
      case 'I':
        ok = read_number(s, i, 2, false, hour12);
        t.has_time = true;
        if (ok && (hour12 < 1 || hour12 > 12)) {
          why = "hour " + std::to_string(hour12) + " on a 12-hour clock";
          return false;
        }
        break;
      case 'f':
        while (i < s.size() && is_digit(s[i]) && t.fraction.size() < 9) t.fraction += s[i++];
        ok = !t.fraction.empty();
        break;
      case 'p':
        if (i + 2 <= s.size() && equals_ignoring_case(s.substr(i, 2), "am")) {
          pm = false;
        } else if (i + 2 <= s.size() && equals_ignoring_case(s.substr(i, 2), "pm")) {
          pm = true;
        } else {
          ok = false;
        }
        i += 2;
        break;
      case 'b':
      case 'B': {
        ok = false;
        for (int m = 0; m < 12 && !ok; ++m) {
          const std::string_view full = kMonths[m];
          for (std::string_view name : {full, full.substr(0, 3)}) {
            if (i + name.size() <= s.size() &&
                equals_ignoring_case(s.substr(i, name.size()), name)) {
              t.month = m + 1;
              i += name.size();
              ok = true;
              break;
            }
          }
        }
        break;
      }
      case 'z':
        ok = read_offset(s, i, t.offset_minutes);
        break;
      case '%':
        ok = i < s.size() && s[i++] == '%';
        break;
      default:
        ok = false;
    }
    if (!ok) return false;
  }
  if (hour12 >= 0) t.hour = hour12 % 12 + (pm.value_or(false) ? 12 : 0);
  return i == s.size();
}

std::string format_date(const DateTime& t) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02d", t.year, t.month, t.day);
  return buffer;
}

std::string format_datetime(const DateTime& t) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, " %02d:%02d:%02d", t.hour, t.minute, t.second);
  std::string out = format_date(t) + buffer;
  if (!t.fraction.empty()) out += "." + t.fraction;
  return out;
}

// Moves a time with an offset to UTC.
void to_utc(DateTime& t) {
  if (!t.offset_minutes || *t.offset_minutes == 0) return;
  std::int64_t minutes =
      days_from_civil(t.year, static_cast<unsigned>(t.month), static_cast<unsigned>(t.day)) * 1440 +
      t.hour * 60 + t.minute - *t.offset_minutes;
  const std::int64_t days = minutes >= 0 ? minutes / 1440 : (minutes - 1439) / 1440;
  minutes -= days * 1440;
  civil_from_days(days, t.year, t.month, t.day);
  t.hour = static_cast<int>(minutes / 60);
  t.minute = static_cast<int>(minutes % 60);
}

// Seconds or milliseconds since 1970-01-01 UTC (date_format "epoch", "epoch_ms").
std::optional<crdt::Value> convert_epoch(const SourceValue& source, bool ms_unit, bool with_time,
                                         std::string& error) {
  const char* what = with_time ? "a date and time" : "a date";
  std::int64_t count = 0;
  if (source.kind == SourceValue::Kind::kInteger) {
    count = source.integer;
  } else if (source.kind == SourceValue::Kind::kText) {
    ValueFormat plain;
    auto parsed = parse_integer(plain, source.text, error);
    if (!parsed) {
      error = shown(source.text) + " is not " + what + ": not a whole number of " +
              (ms_unit ? "milliseconds" : "seconds") + " since 1970";
      return std::nullopt;
    }
    count = *parsed;
  } else {
    error = std::string("not ") + what + ": the value is not a number";
    return std::nullopt;
  }
  std::int64_t ms = count;
  if (!ms_unit && __builtin_mul_overflow(count, std::int64_t{1000}, &ms))
    ms = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kFirstMs = -62135596800000;  // 0001-01-01
  constexpr std::int64_t kLimitMs = 253402300800000;  // 10000-01-01
  if (ms < kFirstMs || ms >= kLimitMs) {
    error = std::to_string(count) + " is out of the range of dates (years 1 to 9999)";
    return std::nullopt;
  }
  DateTime t;
  const std::int64_t days = ms >= 0 ? ms / 86400000 : (ms - 86399999) / 86400000;
  const std::int64_t rest = ms - days * 86400000;
  civil_from_days(days, t.year, t.month, t.day);
  t.hour = static_cast<int>(rest / 3600000);
  t.minute = static_cast<int>(rest / 60000 % 60);
  t.second = static_cast<int>(rest / 1000 % 60);
  if (ms_unit && rest % 1000) t.fraction = std::to_string(1000 + rest % 1000).substr(1);
  return crdt::Value{with_time ? format_datetime(t) : format_date(t)};
}

std::optional<crdt::Value> convert_date(const ValueFormat& format, const SourceValue& source,
                                        bool with_time, std::string& error) {
  if (format.date_format == "epoch" || format.date_format == "epoch_ms")
    return convert_epoch(source, format.date_format == "epoch_ms", with_time, error);
  const char* what = with_time ? "a date and time" : "a date";
  if (source.kind != SourceValue::Kind::kText) {
    error = std::string("not ") + what + ": the value is not text";
    return std::nullopt;
  }
  DateTime t;
  const std::string_view text = trimmed(source.text);
  std::string why;
  const bool parsed = format.date_format.empty() ? parse_iso(text, t)
                                                 : parse_pattern(text, format.date_format, t, why);
  if (!parsed) {
    const std::string form = format.date_format.empty()
                                 ? std::string(with_time ? "YYYY-MM-DD HH:MM:SS" : "YYYY-MM-DD")
                                 : "'" + format.date_format + "'";
    error = shown(source.text) + " is not " + what +
            (why.empty() ? " in the form " + form : ": " + why);
    return std::nullopt;
  }
  why = invalid_date(t);
  if (!why.empty()) {
    error = shown(source.text) + " is not " + what + ": " + why;
    return std::nullopt;
  }
  if (!with_time && (t.has_time || t.offset_minutes)) {
    error = shown(source.text) + " is not a date: it has a time (use the type datetime)";
    return std::nullopt;
  }
  to_utc(t);
  return crdt::Value{with_time ? format_datetime(t) : format_date(t)};
}

std::string apply_case(const ValueFormat& format, std::string text) {
  if (format.letter_case == ValueFormat::Case::kKeep) return text;
  for (auto& c : text) {
    if (format.letter_case == ValueFormat::Case::kLower) c = lower_ascii(c);
    if (format.letter_case == ValueFormat::Case::kUpper && c >= 'a' && c <= 'z')
      c = static_cast<char>(c - 'a' + 'A');
  }
  return text;
}

std::optional<crdt::Value> text_value(const ValueFormat& format, std::string_view text,
                                      std::string& error) {
  const std::size_t bad = invalid_utf8_at(text);
  if (bad != std::string_view::npos) {
    error = "the text is not valid UTF-8 (byte " + std::to_string(bad + 1) + ")";
    return std::nullopt;
  }
  return crdt::Value{apply_case(format, std::string(format.trim ? trimmed(text) : text))};
}

// A JSON number or boolean as text.
std::string scalar_text(const SourceValue& source) {
  switch (source.kind) {
    case SourceValue::Kind::kInteger:
      return std::to_string(source.integer);
    case SourceValue::Kind::kReal: {
      if (!source.text.empty()) return std::string(source.text);
      char buffer[32];
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, source.real);
      return std::string(buffer, end);
    }
    case SourceValue::Kind::kBoolean:
      return source.boolean ? "true" : "false";
    default:
      return std::string(source.text);
  }
}

std::optional<crdt::Value> to_integer(const ValueFormat& format, const SourceValue& source,
                                      std::string& error) {
  using Kind = SourceValue::Kind;
  switch (source.kind) {
    case Kind::kInteger:
      return crdt::Value{source.integer};
    case Kind::kBoolean:
      return crdt::Value{std::int64_t{source.boolean ? 1 : 0}};
    case Kind::kReal:
      if (std::trunc(source.real) != source.real) {
        error = scalar_text(source) + " is not an integer";
      } else if (source.real < -9223372036854775808.0 || source.real >= 9223372036854775808.0) {
        error = scalar_text(source) + " is out of the range of a 64-bit integer";
      } else {
        return crdt::Value{static_cast<std::int64_t>(source.real)};
      }
      return std::nullopt;
    case Kind::kText:
      if (auto v = parse_integer(format, source.text, error)) return crdt::Value{*v};
      return std::nullopt;
    default:
      error = "a JSON object or array is not an integer";
      return std::nullopt;
  }
}

std::optional<crdt::Value> to_number(const ValueFormat& format, const SourceValue& source,
                                     bool integers, std::string& error) {
  using Kind = SourceValue::Kind;
  switch (source.kind) {
    case Kind::kInteger:
      if (integers) return crdt::Value{source.integer};
      return crdt::Value{static_cast<double>(source.integer)};
    case Kind::kBoolean:
      if (integers) return crdt::Value{std::int64_t{source.boolean ? 1 : 0}};
      return crdt::Value{source.boolean ? 1.0 : 0.0};
    case Kind::kReal:
      return crdt::Value{source.real};
    case Kind::kText: {
      if (integers) {
        std::string ignored;
        if (auto v = parse_integer(format, source.text, ignored)) return crdt::Value{*v};
      }
      if (auto v = parse_real(format, source.text, error)) return crdt::Value{*v};
      return std::nullopt;
    }
    default:
      error = "a JSON object or array is not a number";
      return std::nullopt;
  }
}

std::optional<crdt::Value> to_boolean(const SourceValue& source, std::string& error) {
  using Kind = SourceValue::Kind;
  if (source.kind == Kind::kBoolean) return crdt::Value{std::int64_t{source.boolean ? 1 : 0}};
  if (source.kind == Kind::kInteger && (source.integer == 0 || source.integer == 1))
    return crdt::Value{source.integer};
  if (source.kind == Kind::kText) {
    const std::string_view t = trimmed(source.text);
    for (std::string_view yes : {"true", "yes", "y", "t", "on", "1"})
      if (equals_ignoring_case(t, yes)) return crdt::Value{std::int64_t{1}};
    for (std::string_view no : {"false", "no", "n", "f", "off", "0"})
      if (equals_ignoring_case(t, no)) return crdt::Value{std::int64_t{0}};
  }
  error = (source.kind == Kind::kText ? shown(source.text) : scalar_text(source)) +
          " is not a boolean (true/false, yes/no, y/n, t/f, on/off, 1/0)";
  return std::nullopt;
}

// The hex digits of {"blob": "<hex>"}, how JSON export writes a blob (crdt/json.hpp).
std::optional<std::string_view> blob_object(const SourceValue& source) {
  if (source.kind != SourceValue::Kind::kStructured || !source.json || !source.json->is_object())
    return std::nullopt;
  const auto& object = source.json->get_object();
  const auto* hex = object.if_contains("blob");
  if (object.size() != 1 || !hex || !hex->is_string()) return std::nullopt;
  return std::string_view(hex->get_string().data(), hex->get_string().size());
}

std::optional<crdt::Value> to_blob(const ValueFormat& format, const SourceValue& source,
                                   std::string& error) {
  if (auto hex = blob_object(source)) {
    if (auto blob = parse_hex(*hex, error)) return crdt::Value{*blob};
    return std::nullopt;
  }
  if (source.kind != SourceValue::Kind::kText) {
    error = "not a blob: the value is not text, nor {\"blob\": \"<hex>\"}";
    return std::nullopt;
  }
  auto blob = format.blob_encoding == ValueFormat::BlobEncoding::kHex
                  ? parse_hex(source.text, error)
                  : parse_base64(source.text, error);
  if (blob) return crdt::Value{*blob};
  return std::nullopt;
}

std::optional<crdt::Value> to_json(const SourceValue& source, std::string& error) {
  namespace json = boost::json;
  switch (source.kind) {
    case SourceValue::Kind::kText: {
      if (source.from_json) return crdt::Value{crdt::json_quote(source.text)};
      // A CSV field holds JSON text: it must be JSON.
      json::error_code ec;
      const json::value parsed =
          json::parse(json::string_view(source.text.data(), source.text.size()), ec);
      if (ec) {
        error = shown(source.text) + " is not JSON (" + ec.message() + ")";
        return std::nullopt;
      }
      return crdt::Value{json_text(parsed)};
    }
    case SourceValue::Kind::kReal:
      if (!source.text.empty()) return crdt::Value{std::string(source.text)};
      return crdt::Value{crdt::json_value(crdt::Value{source.real})};
    case SourceValue::Kind::kStructured:
      return crdt::Value{std::string(source.text)};
    default:
      return crdt::Value{scalar_text(source)};
  }
}

// The file's own type (ValueType::kAny).
std::optional<crdt::Value> as_given(const ValueFormat& format, const SourceValue& source,
                                    std::string& error) {
  using Kind = SourceValue::Kind;
  switch (source.kind) {
    case Kind::kInteger:
      return crdt::Value{source.integer};
    case Kind::kReal:
      return crdt::Value{source.real};
    case Kind::kBoolean:
      return crdt::Value{std::int64_t{source.boolean ? 1 : 0}};
    case Kind::kStructured:
      if (auto hex = blob_object(source)) {
        if (auto blob = parse_hex(*hex, error)) return crdt::Value{*blob};
        return std::nullopt;
      }
      return crdt::Value{std::string(source.text)};
    default:
      break;
  }
  if (!source.quoted) {
    const std::string_view t = source.text;
    bool integral = false;
    if (json_number_text(t, integral)) {
      if (integral) {
        std::int64_t v = 0;
        auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
        if (ec == std::errc() && end == t.data() + t.size()) return crdt::Value{v};
      } else {
        double v = 0;
        auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
        if (ec == std::errc() && end == t.data() + t.size() && std::isfinite(v))
          return crdt::Value{v};
      }
    }
    if (t.size() >= 2 && t.substr(0, 2) == "\\x") {
      std::string ignored;
      if (auto blob = parse_hex(t, ignored)) return crdt::Value{*blob};
    }
    if (auto inf = infinity(t)) return crdt::Value{*inf};
  }
  return text_value(format, source.text, error);
}

}  // namespace

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::kText:
      return "text";
    case ValueType::kInteger:
      return "integer";
    case ValueType::kReal:
      return "real";
    case ValueType::kNumber:
      return "number";
    case ValueType::kBoolean:
      return "boolean";
    case ValueType::kDate:
      return "date";
    case ValueType::kDatetime:
      return "datetime";
    case ValueType::kBlob:
      return "blob";
    case ValueType::kJson:
      return "json";
    case ValueType::kAny:
      break;
  }
  return "any";
}

std::optional<ValueType> value_type_from_name(std::string_view name) {
  for (ValueType type : {ValueType::kText, ValueType::kInteger, ValueType::kReal,
                         ValueType::kNumber, ValueType::kBoolean, ValueType::kDate,
                         ValueType::kDatetime, ValueType::kBlob, ValueType::kJson, ValueType::kAny})
    if (name == value_type_name(type)) return type;
  return std::nullopt;
}

std::string check_date_format(std::string_view pattern) {
  if (pattern.empty() || pattern == "epoch" || pattern == "epoch_ms") return {};
  bool year = false, month = false, day = false, hour12 = false, am_pm = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') continue;
    if (++i >= pattern.size()) return "it ends with a lone '%'";
    switch (pattern[i]) {
      case 'Y':
        year = true;
        break;
      case 'm':
      case 'b':
      case 'B':
        month = true;
        break;
      case 'd':
        day = true;
        break;
      case 'I':
        hour12 = true;
        break;
      case 'p':
        am_pm = true;
        break;
      case 'H':
      case 'M':
      case 'S':
      case 'f':
      case 'z':
      case '%':
        break;
      default:
        return std::string("'%") + pattern[i] +
               "' is not one of %Y %m %d %H %M %S %f %I %p %b %B %z %%";
    }
  }
  if (!year || !month || !day) return "it needs %Y, %m (or %b) and %d";
  if (hour12 != am_pm) return "%I and %p go together";
  return {};
}

std::string json_text(const boost::json::value& value) {
  namespace json = boost::json;
  switch (value.kind()) {
    case json::kind::object: {
      std::string out = "{";
      for (const auto& member : value.get_object()) {
        if (out.size() > 1) out += ',';
        out += crdt::json_quote(std::string_view(member.key().data(), member.key().size()));
        out += ':';
        out += json_text(member.value());
      }
      return out + "}";
    }
    case json::kind::array: {
      std::string out = "[";
      for (const auto& element : value.get_array()) {
        if (out.size() > 1) out += ',';
        out += json_text(element);
      }
      return out + "]";
    }
    case json::kind::string:
      return crdt::json_quote(
          std::string_view(value.get_string().data(), value.get_string().size()));
    case json::kind::int64:
      return std::to_string(value.get_int64());
    case json::kind::uint64:
      return std::to_string(value.get_uint64());
    case json::kind::double_:
      return crdt::json_value(crdt::Value{value.get_double()});
    case json::kind::bool_:
      return value.get_bool() ? "true" : "false";
    case json::kind::null:
      break;
  }
  return "null";
}

SourceValue source_from_json(const boost::json::value* value, std::string& storage) {
  namespace json = boost::json;
  SourceValue source;
  source.from_json = true;
  if (!value) return source;  // kMissing
  switch (value->kind()) {
    case json::kind::null:
      source.kind = SourceValue::Kind::kNull;
      break;
    case json::kind::string:
      source.kind = SourceValue::Kind::kText;
      source.text = std::string_view(value->get_string().data(), value->get_string().size());
      source.quoted = true;
      break;
    case json::kind::int64:
      source.kind = SourceValue::Kind::kInteger;
      source.integer = value->get_int64();
      break;
    case json::kind::uint64:
      // Over the range of int64: a real, whose text keeps every digit for text and messages.
      source.kind = SourceValue::Kind::kReal;
      source.real = static_cast<double>(value->get_uint64());
      storage = std::to_string(value->get_uint64());
      source.text = storage;
      break;
    case json::kind::double_:
      source.kind = SourceValue::Kind::kReal;
      source.real = value->get_double();
      break;
    case json::kind::bool_:
      source.kind = SourceValue::Kind::kBoolean;
      source.boolean = value->get_bool();
      break;
    default:
      source.kind = SourceValue::Kind::kStructured;
      storage = json_text(*value);
      source.text = storage;
      source.json = value;
  }
  return source;
}

std::optional<crdt::Value> convert_value(const ValueFormat& format, const SourceValue& source,
                                         std::string& error) {
  using Kind = SourceValue::Kind;
  const crdt::Value null_or_default = format.default_value.value_or(crdt::Value{});
  if (source.kind == Kind::kMissing || source.kind == Kind::kNull) return null_or_default;
  if (source.kind == Kind::kReal && !std::isfinite(source.real)) {
    // A JSON number past a double's range (1e999), which Boost.JSON reads as an infinity.
    error = "a number is out of the range of a real";
    return std::nullopt;
  }
  if (source.kind == Kind::kText) {
    if (!source.quoted && source.text.empty()) return null_or_default;
    const std::string_view t = trimmed(source.text);
    for (const auto& null_text : format.null_texts)
      if (t == null_text) return null_or_default;
    const bool textual = format.type == ValueType::kText || format.type == ValueType::kAny ||
                         format.type == ValueType::kJson;
    if (!textual && t.empty()) return null_or_default;
  }
  switch (format.type) {
    case ValueType::kText:
      if (source.kind == Kind::kText || source.kind == Kind::kStructured)
        return text_value(format, source.text, error);
      return crdt::Value{scalar_text(source)};
    case ValueType::kInteger:
      return to_integer(format, source, error);
    case ValueType::kReal:
      return to_number(format, source, false, error);
    case ValueType::kNumber:
      return to_number(format, source, true, error);
    case ValueType::kBoolean:
      return to_boolean(source, error);
    case ValueType::kDate:
    case ValueType::kDatetime:
      return convert_date(format, source, format.type == ValueType::kDatetime, error);
    case ValueType::kBlob:
      return to_blob(format, source, error);
    case ValueType::kJson:
      return to_json(source, error);
    case ValueType::kAny:
      break;
  }
  return as_given(format, source, error);
}

}  // namespace lattice::engine
