#include "bench/support.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "crdt/json.hpp"

#ifndef LATTICE_SOURCE_DIR
#define LATTICE_SOURCE_DIR ""
#endif
#ifndef LATTICE_BUILD_TYPE
#define LATTICE_BUILD_TYPE "unknown"
#endif
#if defined(__clang__)
#define LATTICE_BENCH_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define LATTICE_BENCH_COMPILER "g++ " __VERSION__
#else
#define LATTICE_BENCH_COMPILER "unknown"
#endif

namespace lattice::bench {

// --- Time, text, files ----------------------------------------------------------------------

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string command_output(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "";
  char buffer[4096];
  std::string out;
  if (std::fgets(buffer, sizeof buffer, pipe.get())) out = buffer;
  return trim(out);
}

std::string fixed(double value, int digits) {
  if (!std::isfinite(value)) return "null";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, value);
  return buffer;
}

Json& Json::str(const std::string& key, const std::string& value) {
  return raw(key, crdt::json_quote(value));
}

Json& Json::raw(const std::string& key, const std::string& value) {
  text_ += (text_.empty() ? "{" : ", ") + crdt::json_quote(key) + ": " + value;
  return *this;
}

// --- Statistics -----------------------------------------------------------------------------

Percentiles percentiles(std::vector<double> samples, std::size_t missing) {
  Percentiles p;
  const std::size_t n = samples.size() + missing;
  if (n == 0) return p;
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const std::size_t rank = std::min(n - 1, static_cast<std::size_t>(std::ceil(q * n)) - 1);
    return rank < samples.size() ? samples[rank] : INFINITY;
  };
  p.p50 = at(0.50);
  p.p99 = at(0.99);
  p.max = missing ? INFINITY : samples.back();
  return p;
}

std::string percentiles_json(const Percentiles& p) {
  return Json().num("p50", p.p50, 3).num("p99", p.p99, 3).num("max", p.max, 3).text();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// --- Processes, /proc -----------------------------------------------------------------------

CpuTicks cpu_ticks(const std::string& pid) {
  const std::string stat = read_file("/proc/" + pid + "/stat");
  CpuTicks ticks;
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return ticks;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  // After the command: state is field 3; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) ticks.utime = std::stoll(field);
    if (i == 15) ticks.stime = std::stoll(field);
  }
  return ticks;
}

long long status_kib(const std::string& pid, const std::string& key) {
  std::istringstream lines(read_file("/proc/" + pid + "/status"));
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  return -1;
}

std::string loadavg() {
  std::istringstream in(read_file("/proc/loadavg"));
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double runqueue_wait_s(const std::string& pid) {
  double total = 0;
  std::error_code ec;
  for (const auto& task : fs::directory_iterator("/proc/" + pid + "/task", ec)) {
    std::istringstream in(read_file(task.path() / "schedstat"));
    double run = 0, wait = 0;
    if (in >> run >> wait) total += wait / 1e9;
  }
  return total;
}

void CpuMeter::restart() {
  start_ = cpu_ticks(pid_);
  wait_ = runqueue_wait_s(pid_);
  wall_ = Clock::now();
}

double CpuMeter::wait_percent() const {
  const double wall = std::chrono::duration<double>(Clock::now() - wall_).count();
  return wall > 0 ? 100.0 * (runqueue_wait_s(pid_) - wait_) / wall : 0;
}

double CpuMeter::percent() const {
  const double wall = std::chrono::duration<double>(Clock::now() - wall_).count();
  return wall > 0 ? 100.0 * seconds() / wall : 0;
}

double CpuMeter::seconds() const {
  const double ticks = static_cast<double>(cpu_ticks(pid_).total() - start_.total());
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return trim(line.substr(colon + 1));
    }
  return "unknown";
}

// --- What was measured ----------------------------------------------------------------------

namespace {

// `git`, run in the source tree when the build knows where it is.
std::string git() {
  const std::string dir = LATTICE_SOURCE_DIR;
  return dir.empty() ? "git" : "git -C '" + dir + "'";
}

}  // namespace

std::string source_commit() {
  std::string commit = command_output(git() + " rev-parse --short HEAD 2>/dev/null");
  return commit.empty() ? "unknown" : commit;
}

bool source_modified() {
  return !command_output(git() + " status --porcelain --untracked-files=no 2>/dev/null").empty();
}

const char* build_type() { return LATTICE_BUILD_TYPE; }

const char* compiler() { return LATTICE_BENCH_COMPILER; }

// --- Temporary files ------------------------------------------------------------------------

TempDir::TempDir(const std::string& parent, const std::string& prefix) {
  std::string pattern = (fs::path(parent) / (prefix + "XXXXXX")).string();
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("cannot create a temporary directory in '" + parent + "'");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

}  // namespace lattice::bench
