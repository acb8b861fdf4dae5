#pragma once
// A writer of the Prometheus text exposition format (version 0.0.4), for the relay's
// `GET /metrics`. The metric names and their meaning are listed in docs/relay.md.
// A value type; not thread-safe.

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

namespace lattice::relay {

class MetricsWriter {
 public:
  // One sample of a metric without labels, preceded by its HELP and TYPE lines.
  void gauge(std::string_view name, std::string_view help, double value);
  void counter(std::string_view name, std::string_view help, std::uint64_t value);

  // A counter with one label, one sample per entry of `values` (label value -> count). With
  // no entries only HELP and TYPE are written.
  void labeled_counter(std::string_view name, std::string_view help, std::string_view label,
                       const std::map<std::string, std::uint64_t>& values);
  // The same for a gauge.
  void labeled_gauge(std::string_view name, std::string_view help, std::string_view label,
                     const std::map<std::string, double>& values);

  // A histogram from per-bucket (not cumulative) counts: `counts` has one more entry than
  // `bounds`, the last for values above the largest bound. Written with cumulative `_bucket`
  // samples, `le="+Inf"`, `_sum` and `_count`.
  void histogram(std::string_view name, std::string_view help, std::span<const double> bounds,
                 std::span<const std::uint64_t> counts, double sum);

  // Everything written so far.
  const std::string& text() const { return text_; }

 private:
  void header(std::string_view name, std::string_view help, std::string_view type);
  std::string text_;
};

// A label value escaped for the text format (backslash, double quote and newline).
std::string escape_label_value(std::string_view value);

}  // namespace lattice::relay
