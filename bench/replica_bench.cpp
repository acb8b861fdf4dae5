// lattice-bench: what replication costs, against plain SQLite measured in the same run.
//
// One table, t(id TEXT PRIMARY KEY, a TEXT, b INTEGER, c REAL), N rows, on files in a fresh
// temporary directory. The plain database and the replica use the same pragmas (WAL,
// synchronous=NORMAL), the same prepared statements and one transaction per step. Every step
// runs --repeats times on fresh files; a figure is the median of its repetitions, and a ratio
// is the median of the per-repetition ratios (each pair runs back to back, which cancels most
// of a shared machine's drift). Prints one JSON object on stdout, progress on stderr.
// docs/benchmarks.md explains the figures and the goals they are held to.

#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "lattice/lattice.hpp"

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

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: lattice-bench [--rows N] [--repeats N] [--dir DIR]
  --rows N      rows in the table (default 100000)
  --repeats N   repetitions of every step, fresh files each time; medians reported (default 3)
  --dir DIR     where to create the temporary directory (default $TMPDIR or /tmp)
Prints one JSON object on stdout; progress goes to stderr.
)";

constexpr const char* kSchema = "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT, b INTEGER, c REAL)";
// The same columns with the constraints applications declare, all of which the benchmark's rows
// satisfy: what checking them at merge costs (docs/data-quality.md).
constexpr const char* kConstrainedSchema =
    "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT NOT NULL UNIQUE, b INTEGER NOT NULL "
    "CHECK (b >= 0), c REAL CHECK (c < 1e12))";

struct Options {
  std::size_t rows = 100000;
  int repeats = 3;
  std::string dir;
};

struct Row {
  std::string id;
  std::string a;
  std::int64_t b = 0;
  double c = 0;
};

// --- SQLite, directly: the same calls drive the plain database and the replica's connection.

void check(sqlite3* db, int rc, const std::string& what) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return;
  throw std::runtime_error(what + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
}

void exec(sqlite3* db, const std::string& sql) {
  check(db, sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), sql);
}

class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db), sql_(sql) {
    check(db, sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr), sql);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& text(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
    return *this;
  }
  Stmt& integer(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& real(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  // Steps once; true when a row is ready.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    check(db_, rc, sql_);
    return rc == SQLITE_ROW;
  }
  // Steps to completion and resets, keeping the bindings' slots for the next row.
  void run() {
    while (step()) {
    }
    sqlite3_reset(stmt_);
  }
  std::int64_t column_int(int i) const { return sqlite3_column_int64(stmt_, i); }
  double column_double(int i) const { return sqlite3_column_double(stmt_, i); }

 private:
  sqlite3* db_;
  std::string sql_;
  sqlite3_stmt* stmt_ = nullptr;
};

// A plain database with the replica's pragmas (storage/replica.cpp: Replica::open).
class PlainDb {
 public:
  explicit PlainDb(const fs::path& path) {
    check(db_,
          sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr),
          "open " + path.string());
    sqlite3_busy_timeout(db_, 5000);
    exec(db_, "PRAGMA journal_mode=WAL");
    exec(db_, "PRAGMA synchronous=NORMAL");
  }
  ~PlainDb() { sqlite3_close_v2(db_); }
  PlainDb(const PlainDb&) = delete;
  PlainDb& operator=(const PlainDb&) = delete;
  sqlite3* get() const { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

// --- The workload.

// Deterministic pseudo-random ids in random order, like UUIDs: both B-trees see scattered keys.
std::vector<Row> make_rows(std::size_t n) {
  std::vector<Row> rows(n);
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  char buffer[64];
  for (std::size_t i = 0; i < n; ++i) {
    std::snprintf(buffer, sizeof buffer, "%016llx-%06zu", static_cast<unsigned long long>(next()),
                  i);
    rows[i].id = buffer;
    std::snprintf(buffer, sizeof buffer, "item %zu, colour %llu", i,
                  static_cast<unsigned long long>(next() % 1000));
    rows[i].a = buffer;
    rows[i].b = static_cast<std::int64_t>(i) * 7;
    rows[i].c = static_cast<double>(i) * 0.25;
  }
  return rows;
}

// Runs `body` inside BEGIN/COMMIT and returns the elapsed milliseconds, commit included.
double timed_transaction(sqlite3* db, const std::function<void()>& body) {
  const auto start = Clock::now();
  exec(db, "BEGIN");
  body();
  exec(db, "COMMIT");
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double insert_rows(sqlite3* db, const std::vector<Row>& rows, const char* verb = "INSERT") {
  Stmt insert(db, std::string(verb) + " INTO t(id, a, b, c) VALUES (?, ?, ?, ?)");
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      insert.text(1, r.id).text(2, r.a).integer(3, r.b).real(4, r.c);
      insert.run();
    }
  });
}

double update_one_column(sqlite3* db, const std::vector<Row>& rows) {
  Stmt update(db, "UPDATE t SET b = ? WHERE id = ?");
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      update.integer(1, r.b + 1).text(2, r.id);
      update.run();
    }
  });
}

double update_three_columns(sqlite3* db, const std::vector<Row>& rows) {
  Stmt update(db, "UPDATE t SET a = ?, b = ?, c = ? WHERE id = ?");
  std::string a;
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      a = r.a + " (edited)";
      update.text(1, a).integer(2, r.b + 2).real(3, r.c + 1).text(4, r.id);
      update.run();
    }
  });
}

// Checkpoints the WAL into the main file and truncates it; returns the files' total size.
std::uintmax_t checkpointed_size(sqlite3* db, const fs::path& path) {
  exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
  std::uintmax_t total = fs::file_size(path);
  const fs::path wal = path.string() + "-wal";
  if (fs::exists(wal)) total += fs::file_size(wal);
  return total;
}

// count(*), sum(b), total(c): enough to see that a merge produced the same table.
std::string fingerprint(sqlite3* db) {
  Stmt s(db, "SELECT count(*), sum(b), total(c), sum(length(a)) FROM t");
  s.step();
  std::ostringstream out;
  out << s.column_int(0) << "/" << s.column_int(1) << "/" << s.column_double(2) << "/"
      << s.column_int(3);
  return out.str();
}

double elapsed_ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// --- Reporting.

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
      out += buffer;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

// The first line a shell command prints, or "" when it fails.
std::string command_output(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return "";
  char buffer[256];
  std::string out;
  if (std::fgets(buffer, sizeof buffer, pipe.get())) out = buffer;
  return trim(out);
}

std::string source_commit() {
  const std::string dir = LATTICE_SOURCE_DIR;
  const std::string git = dir.empty() ? "git" : "git -C '" + dir + "'";
  std::string commit = command_output(git + " rev-parse --short HEAD 2>/dev/null");
  return commit.empty() ? "unknown" : commit;
}

// True when the tree had uncommitted changes to tracked files: the commit alone does not name
// what was measured.
bool source_modified() {
  const std::string dir = LATTICE_SOURCE_DIR;
  const std::string git = dir.empty() ? "git" : "git -C '" + dir + "'";
  return !command_output(git + " status --porcelain --untracked-files=no 2>/dev/null").empty();
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

Options parse_options(int argc, char** argv) {
  Options options;
  if (const char* tmp = std::getenv("TMPDIR"); tmp && *tmp) options.dir = tmp;
  if (options.dir.empty()) options.dir = "/tmp";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    auto count = [&](long long min) {
      const std::string v = value();
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end || n < min)
        throw std::invalid_argument(arg + " takes an integer >= " + std::to_string(min) +
                                    ", not '" + v + "'");
      return n;
    };
    if (arg == "--rows") {
      options.rows = static_cast<std::size_t>(count(1));
    } else if (arg == "--repeats") {
      options.repeats = static_cast<int>(count(1));
    } else if (arg == "--dir") {
      options.dir = value();
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  return options;
}

// A temporary directory, removed with everything in it when the run ends.
class TempDir {
 public:
  explicit TempDir(const std::string& parent) {
    std::string pattern = (fs::path(parent) / "lattice-bench-XXXXXX").string();
    if (!mkdtemp(pattern.data()))
      throw std::runtime_error("cannot create a temporary directory in '" + parent + "'");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Opens a replica holding an empty replicated t.
std::unique_ptr<lattice::Replica> open_replica(const fs::path& path, const char* schema = kSchema) {
  auto replica = lattice::Replica::open(path.string());
  replica->exec(schema);
  replica->replicate("t");
  return replica;
}

int run(const Options& options) {
  const std::vector<Row> rows = make_rows(options.rows);
  TempDir temp(options.dir);
  std::map<std::string, std::vector<double>> samples;
  std::size_t changes = 0, changeset_bytes = 0;

  for (int rep = 0; rep < options.repeats; ++rep) {
    const fs::path dir = temp.path() / ("rep" + std::to_string(rep));
    fs::create_directory(dir);
    std::fprintf(stderr, "lattice-bench: repetition %d of %d, %zu rows\n", rep + 1, options.repeats,
                 options.rows);

    PlainDb plain(dir / "plain.db");
    exec(plain.get(), kSchema);
    auto replica = open_replica(dir / "replica.db");
    sqlite3* replicated = replica->connection();

    // Insert.
    const double insert_plain = insert_rows(plain.get(), rows);
    const double insert_replicated = insert_rows(replicated, rows);
    samples["insert_plain_ms"].push_back(insert_plain);
    samples["insert_replicated_ms"].push_back(insert_replicated);
    samples["insert_ratio"].push_back(insert_replicated / insert_plain);

    // Size, after the insert.
    const auto size_plain = static_cast<double>(checkpointed_size(plain.get(), dir / "plain.db"));
    const auto size_replicated =
        static_cast<double>(checkpointed_size(replicated, dir / "replica.db"));
    samples["size_plain_bytes"].push_back(size_plain);
    samples["size_replicated_bytes"].push_back(size_replicated);
    samples["size_ratio"].push_back(size_replicated / size_plain);

    // Extraction: everything, as a new peer would ask for it.
    auto start = Clock::now();
    const lattice::Changeset changeset = replica->changes_since({});
    const double extract_ms = elapsed_ms(start);
    changes = changeset.change_count();
    start = Clock::now();
    const std::string bytes = lattice::encode(changeset);
    const double encode_ms = elapsed_ms(start);
    changeset_bytes = bytes.size();
    samples["extract_ms"].push_back(extract_ms);
    samples["extract_changes_per_s"].push_back(static_cast<double>(changes) / extract_ms * 1000);
    samples["encode_ms"].push_back(encode_ms);

    // Merge into a fresh replica, against a plain upsert of the same rows into a fresh table.
    auto target = open_replica(dir / "target.db");
    start = Clock::now();
    const lattice::Changeset decoded = lattice::decode(bytes);
    const double decode_ms = elapsed_ms(start);
    start = Clock::now();
    const lattice::ApplyResult applied = target->apply(decoded);
    const double apply_ms = elapsed_ms(start);
    if (applied.applied != changes)
      throw std::runtime_error("apply took " + std::to_string(applied.applied) + " of " +
                               std::to_string(changes) + " changes into a fresh replica");
    if (fingerprint(target->connection()) != fingerprint(replicated))
      throw std::runtime_error(
          "the merged table differs from its source: " + fingerprint(target->connection()) +
          " vs " + fingerprint(replicated));
    PlainDb upsert(dir / "upsert.db");
    exec(upsert.get(), kSchema);
    const double upsert_ms = insert_rows(upsert.get(), rows, "INSERT OR REPLACE");
    const double merge_ms = decode_ms + apply_ms;
    samples["decode_ms"].push_back(decode_ms);
    samples["apply_ms"].push_back(apply_ms);
    samples["apply_changes_per_s"].push_back(static_cast<double>(changes) / merge_ms * 1000);
    samples["plain_upsert_ms"].push_back(upsert_ms);
    samples["apply_vs_plain_upsert_ratio"].push_back(merge_ms / upsert_ms);

    // The same merge into a table that declares constraints (checked as rows are written).
    auto constrained = open_replica(dir / "constrained.db", kConstrainedSchema);
    start = Clock::now();
    const lattice::ApplyResult checked = constrained->apply(decoded);
    const double constrained_ms = elapsed_ms(start);
    if (checked.applied != changes ||
        fingerprint(constrained->connection()) != fingerprint(replicated))
      throw std::runtime_error("the merge into the constrained table differs from its source");
    samples["apply_constrained_ms"].push_back(constrained_ms);
    samples["apply_constrained_ratio"].push_back(constrained_ms / apply_ms);
    // What the same constraints cost plain SQLite (the unique index above all): the part of
    // the ratio above that is SQLite's own, not Lattice's.
    PlainDb plain_constrained(dir / "plain-constrained.db");
    exec(plain_constrained.get(), kConstrainedSchema);
    PlainDb plain_free(dir / "plain-free.db");
    exec(plain_free.get(), kSchema);
    const double constrained_plain_ms = insert_rows(plain_constrained.get(), rows);
    const double free_plain_ms = insert_rows(plain_free.get(), rows);
    samples["plain_constrained_insert_ratio"].push_back(constrained_plain_ms / free_plain_ms);

    // Updates of every row: one column, then three.
    const double update1_plain = update_one_column(plain.get(), rows);
    const double update1_replicated = update_one_column(replicated, rows);
    samples["update_1col_plain_ms"].push_back(update1_plain);
    samples["update_1col_replicated_ms"].push_back(update1_replicated);
    samples["update_1col_ratio"].push_back(update1_replicated / update1_plain);
    const double update3_plain = update_three_columns(plain.get(), rows);
    const double update3_replicated = update_three_columns(replicated, rows);
    samples["update_3col_plain_ms"].push_back(update3_plain);
    samples["update_3col_replicated_ms"].push_back(update3_replicated);
    samples["update_3col_ratio"].push_back(update3_replicated / update3_plain);
    if (fingerprint(plain.get()) != fingerprint(replicated))
      throw std::runtime_error("the replicated table differs from the plain one after updates");

    // Size again: every column of every row now has its own version.
    const auto updated_plain =
        static_cast<double>(checkpointed_size(plain.get(), dir / "plain.db"));
    const auto updated_replicated =
        static_cast<double>(checkpointed_size(replicated, dir / "replica.db"));
    samples["size_after_updates_plain_bytes"].push_back(updated_plain);
    samples["size_after_updates_replicated_bytes"].push_back(updated_replicated);
    samples["size_after_updates_ratio"].push_back(updated_replicated / updated_plain);
  }

  auto figure = [&](const std::string& key, int decimals) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", decimals, median(samples.at(key)));
    return "\"" + key + "\": " + buffer;
  };
  std::ostringstream out;
  out << "{\n";
  out << "  \"rows\": " << options.rows << ",\n";
  out << "  \"repeats\": " << options.repeats << ",\n";
  for (const char* key : {"insert_plain_ms", "insert_replicated_ms"})
    out << "  " << figure(key, 1) << ",\n";
  out << "  " << figure("insert_ratio", 2) << ",\n";
  for (const char* key : {"update_1col_plain_ms", "update_1col_replicated_ms"})
    out << "  " << figure(key, 1) << ",\n";
  out << "  " << figure("update_1col_ratio", 2) << ",\n";
  for (const char* key : {"update_3col_plain_ms", "update_3col_replicated_ms"})
    out << "  " << figure(key, 1) << ",\n";
  out << "  " << figure("update_3col_ratio", 2) << ",\n";
  out << "  \"changes\": " << changes << ",\n";
  out << "  \"changeset_bytes\": " << changeset_bytes << ",\n";
  out << "  " << figure("extract_ms", 1) << ",\n";
  out << "  " << figure("extract_changes_per_s", 0) << ",\n";
  out << "  " << figure("encode_ms", 1) << ",\n";
  out << "  " << figure("decode_ms", 1) << ",\n";
  out << "  " << figure("apply_ms", 1) << ",\n";
  out << "  " << figure("apply_changes_per_s", 0) << ",\n";
  out << "  " << figure("plain_upsert_ms", 1) << ",\n";
  out << "  " << figure("apply_vs_plain_upsert_ratio", 2) << ",\n";
  out << "  " << figure("apply_constrained_ms", 1) << ",\n";
  out << "  " << figure("apply_constrained_ratio", 2) << ",\n";
  out << "  " << figure("plain_constrained_insert_ratio", 2) << ",\n";
  for (const char* key : {"size_plain_bytes", "size_replicated_bytes"})
    out << "  " << figure(key, 0) << ",\n";
  out << "  " << figure("size_ratio", 2) << ",\n";
  for (const char* key : {"size_after_updates_plain_bytes", "size_after_updates_replicated_bytes"})
    out << "  " << figure(key, 0) << ",\n";
  out << "  " << figure("size_after_updates_ratio", 2) << ",\n";
  out << "  \"commit\": " << json_string(source_commit()) << ",\n";
  out << "  \"source_modified\": " << (source_modified() ? "true" : "false") << ",\n";
  out << "  \"build_type\": " << json_string(LATTICE_BUILD_TYPE) << ",\n";
  out << "  \"compiler\": " << json_string(LATTICE_BENCH_COMPILER) << ",\n";
  out << "  \"sqlite_version\": " << json_string(sqlite3_libversion()) << ",\n";
  out << "  \"machine\": {\"nproc\": " << sysconf(_SC_NPROCESSORS_ONLN)
      << ", \"model\": " << json_string(cpu_model()) << "}\n";
  out << "}\n";
  std::fputs(out.str().c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "lattice-bench: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lattice-bench: %s\n", e.what());
    return 1;
  }
}
