#pragma once
// What the benchmark programs of bench/ share: clocks and formatting, the one-line JSON object
// they print, latency statistics, readers of /proc for a process's CPU and memory, the
// commit and build a run measured, and a temporary directory. Linux only (/proc, mkdtemp).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lattice::bench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// --- Time, text, files ----------------------------------------------------------------------

// The steady clock's reading in nanoseconds: a send time that another thread can compare.
std::int64_t now_ns();

// Milliseconds elapsed since `start`.
double ms_since(Clock::time_point start);

// `s` without leading and trailing white space.
std::string trim(std::string s);

// The whole content of a file, or "" when it cannot be read.
std::string read_file(const fs::path& path);

// The first line a shell command prints, or "" when it fails.
std::string command_output(const std::string& command);

// `value` with `digits` decimals, or "null" when it is not finite (a JSON number either way).
std::string fixed(double value, int digits = 2);

// One JSON object, fields in the order they are added.
class Json {
 public:
  Json& num(const std::string& key, double value, int digits = 2) {
    return raw(key, fixed(value, digits));
  }
  Json& integer(const std::string& key, std::int64_t value) {
    return raw(key, std::to_string(value));
  }
  Json& str(const std::string& key, const std::string& value);
  Json& boolean(const std::string& key, bool value) { return raw(key, value ? "true" : "false"); }
  Json& raw(const std::string& key, const std::string& value);
  std::string text() const { return text_.empty() ? "{}" : text_ + "}"; }

 private:
  std::string text_;
};

// --- Statistics -----------------------------------------------------------------------------

struct Percentiles {
  double p50 = NAN, p99 = NAN, max = NAN;
};

// Percentiles over `samples` plus `missing` samples counted as infinitely late.
Percentiles percentiles(std::vector<double> samples, std::size_t missing = 0);

// {"p50": …, "p99": …, "max": …} with three decimals.
std::string percentiles_json(const Percentiles& p);

// The median of `values` (the mean of the middle two when their number is even); not empty.
double median(std::vector<double> values);

// --- Processes, /proc -----------------------------------------------------------------------

// Clock ticks a process spent in user and kernel mode (/proc/PID/stat).
struct CpuTicks {
  long long utime = 0, stime = 0;
  long long total() const { return utime + stime; }
};

// The CPU ticks of process `pid` ("self" for this one).
CpuTicks cpu_ticks(const std::string& pid);

// A field of /proc/PID/status in KiB (VmRSS, VmHWM), or -1.
long long status_kib(const std::string& pid, const std::string& key);

// The 1, 5 and 15-minute load averages as /proc/loadavg writes them, space-separated.
std::string loadavg();

// Nanoseconds the threads of a process spent waiting for a core while runnable (the second
// field of /proc/PID/task/TID/schedstat), summed over its threads.
double runqueue_wait_s(const std::string& pid);

// CPU used by a process over a stretch of wall time, as a percentage of one core, and the time
// its threads were runnable but waiting for a core (the machine is shared).
class CpuMeter {
 public:
  explicit CpuMeter(std::string pid) : pid_(std::move(pid)) { restart(); }
  void restart();
  // Seconds of waiting for a core, as a percentage of the wall time since the start.
  double wait_percent() const;
  double percent() const;
  // CPU seconds used since the start.
  double seconds() const;

 private:
  std::string pid_;
  CpuTicks start_;
  double wait_ = 0;
  Clock::time_point wall_;
};

// The processor's model name from /proc/cpuinfo, or "unknown".
std::string cpu_model();

// --- What was measured ----------------------------------------------------------------------

// The short commit of the source tree this program was built from (git), or "unknown".
std::string source_commit();

// True when the tree had uncommitted changes to tracked files: the commit alone does not name
// what was measured.
bool source_modified();

// The CMake build type this program was built with, so a Debug figure is never mistaken for a
// Release one.
const char* build_type();

// The compiler and its version.
const char* compiler();

// --- Temporary files ------------------------------------------------------------------------

// A temporary directory, removed with everything in it when the run ends.
class TempDir {
 public:
  // A new directory in `parent` named `prefix` and six random characters.
  TempDir(const std::string& parent, const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace lattice::bench
