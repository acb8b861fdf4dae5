#include "relay/metrics.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace lattice::relay {

namespace {

// Shortest round-trip text of a double, as Prometheus parses it.
std::string number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  // Prefer the short form when it reads back the same.
  for (int precision = 1; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof shorter, "%.*g", precision, value);
    if (std::strtod(shorter, nullptr) == value) return shorter;
  }
  return buffer;
}

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

void MetricsWriter::header(std::string_view name, std::string_view help, std::string_view type) {
  text_.append("# HELP ").append(name).append(" ").append(help).append("\n");
  text_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void MetricsWriter::gauge(std::string_view name, std::string_view help, double value) {
  header(name, help, "gauge");
  text_.append(name).append(" ").append(number(value)).append("\n");
}

void MetricsWriter::counter(std::string_view name, std::string_view help, std::uint64_t value) {
  header(name, help, "counter");
  text_.append(name).append(" ").append(std::to_string(value)).append("\n");
}

void MetricsWriter::labeled_gauge(std::string_view name, std::string_view help,
                                  std::string_view label,
                                  const std::map<std::string, double>& values) {
  header(name, help, "gauge");
  for (const auto& [key, value] : values) {
    text_.append(name).append("{").append(label).append("=\"");
    text_.append(escape_label_value(key)).append("\"} ").append(number(value)).append("\n");
  }
}

void MetricsWriter::labeled_counter(std::string_view name, std::string_view help,
                                    std::string_view label,
                                    const std::map<std::string, std::uint64_t>& values) {
  header(name, help, "counter");
  for (const auto& [key, value] : values) {
    text_.append(name).append("{").append(label).append("=\"");
    text_.append(escape_label_value(key)).append("\"} ").append(std::to_string(value));
    text_.append("\n");
  }
}

void MetricsWriter::histogram(std::string_view name, std::string_view help,
                              std::span<const double> bounds, std::span<const std::uint64_t> counts,
                              double sum) {
  header(name, help, "histogram");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    cumulative += i < counts.size() ? counts[i] : 0;
    text_.append(name).append("_bucket{le=\"").append(number(bounds[i])).append("\"} ");
    text_.append(std::to_string(cumulative)).append("\n");
  }
  if (counts.size() > bounds.size()) cumulative += counts[bounds.size()];
  text_.append(name).append("_bucket{le=\"+Inf\"} ").append(std::to_string(cumulative));
  text_.append("\n");
  text_.append(name).append("_sum ").append(number(sum)).append("\n");
  text_.append(name).append("_count ").append(std::to_string(cumulative)).append("\n");
}

}  // namespace lattice::relay
