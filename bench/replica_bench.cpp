// lattice-bench: what replication costs, against plain SQLite measured in the same run.
//
// One table, t(id TEXT PRIMARY KEY, a TEXT, b INTEGER, c REAL), N rows, on files in a fresh
// temporary directory; then the same steps on ti(id INTEGER PRIMARY KEY, ...), keys "ipk_...".
// The plain database and the replica use the same pragmas (WAL, synchronous=NORMAL,
// temp_store=MEMORY), the same prepared statements and one transaction per step. Every step
// runs --repeats times on fresh files; a figure is the median of its repetitions, and a ratio is
// the median of the per-repetition ratios (each pair runs back to back, which cancels most of a
// shared machine's drift). Prints one JSON object on stdout, progress on stderr. With --scale, also
// the main ratios at 10,000 and 1,000,000 rows, under "scale". docs/benchmarks.md explains the
// figures and the goals they are held to.
//
// With --import, it measures instead import_file() of a CSV file of the same rows into a
// replicated table against the sqlite3 shell's .import of the same file, in the same run.

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/support.hpp"
#include "crdt/json.hpp"
#include "lattice/lattice.hpp"

namespace {

namespace fs = std::filesystem;
using lattice::bench::build_type;
using lattice::bench::Clock;
using lattice::bench::compiler;
using lattice::bench::cpu_model;
using lattice::bench::median;
using lattice::bench::ms_since;
using lattice::bench::read_file;
using lattice::bench::source_commit;
using lattice::bench::source_modified;
using lattice::bench::TempDir;

constexpr const char* kUsage =
    R"(usage: lattice-bench [--rows N] [--repeats N] [--dir DIR] [--scale]
       lattice-bench --import [--rows N] [--repeats N] [--dir DIR] [--sqlite3 PATH] [--captured]
  --rows N        rows in the table (default 100000; with --import 1000000)
  --repeats N     repetitions of every step, fresh files each time; medians reported (default 3)
  --dir DIR       where to create the temporary directory (default $TMPDIR or /tmp)
  --scale         also run the workload on t at 10,000 and 1,000,000 rows (minutes) and add
                  "scale": one object per row count, ascending (--rows included), holding
                  "rows" and the ratios insert, update_1col, update_3col, delete,
                  apply_vs_plain_upsert, apply_updates_vs_plain_upsert, size, size_after_updates,
                  snapshot_install_vs_copy, snapshot_install_vs_apply
  --import        instead: `import_file` of a CSV file of the rows into a replicated table,
                  against `sqlite3 .import` of the same file into a plain table
  --cache-kib N   a page cache of N KiB for both sides (the plain database and every replica)
                  instead of SQLite's default 2,000 KiB (ReplicaOptions::cache_size_kib)
  --sqlite3 PATH  the sqlite3 shell for --import (default: sqlite3 on the PATH)
  --captured      with --import, also import through the captured statements (slow)
Prints one JSON object on stdout; progress goes to stderr. Keys without a prefix are for
t(id TEXT PRIMARY KEY, ...); keys "ipk_..." for the same steps on ti(id INTEGER PRIMARY KEY, ...)
("ipk_refused" says why when a step on ti failed; its later steps are then missing); keys
"encrypted_..." for a replica encrypted at rest against the same unencrypted.
)";

constexpr const char* kSchema = "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT, b INTEGER, c REAL)";
// The same columns with the constraints applications declare, all of which the benchmark's rows
// satisfy: what checking them at merge costs (docs/data-quality.md).
constexpr const char* kConstrainedSchema =
    "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT NOT NULL UNIQUE, b INTEGER NOT NULL "
    "CHECK (b >= 0), c REAL CHECK (c < 1e12))";
// The same columns keyed by an INTEGER PRIMARY KEY (the rowid), every id given explicitly as a
// replicated such table requires (docs/data-quality.md, "INTEGER PRIMARY KEY ids").
constexpr const char* kIntegerKeySchema =
    "CREATE TABLE ti(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL)";

// A table the workload runs on, and the prefix of its keys in the JSON.
struct Table {
  const char* name;
  const char* schema;
  bool integer_key;  // id is `key` (INTEGER PRIMARY KEY), else `id` (TEXT)
  const char* prefix;
};
constexpr Table kText{"t", kSchema, false, ""};
constexpr Table kIntegerKey{"ti", kIntegerKeySchema, true, "ipk_"};

struct Options {
  std::size_t rows = 0;  // 0: the mode's default
  int repeats = 3;
  std::string dir;
  bool import = false;
  bool captured = false;
  bool scale = false;
  int cache_kib = 0;  // 0: SQLite's default page cache
  std::string sqlite3 = "sqlite3";
};

struct Row {
  std::string id;
  std::int64_t key = 0;  // the id in ti: positive, scattered like lattice_id()'s
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

// --cache-kib: the page cache of every database the run opens, in KiB; 0 for SQLite's default.
int g_cache_kib = 0;

lattice::ReplicaOptions replica_options() {
  lattice::ReplicaOptions options;
  options.cache_size_kib = g_cache_kib;
  return options;
}

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
    exec(db_, "PRAGMA temp_store=MEMORY");
    if (g_cache_kib > 0) exec(db_, "PRAGMA cache_size=-" + std::to_string(g_cache_kib));
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
    const std::uint64_t random = next();
    std::snprintf(buffer, sizeof buffer, "%016llx-%06zu", static_cast<unsigned long long>(random),
                  i);
    rows[i].id = buffer;
    rows[i].key = static_cast<std::int64_t>(random >> 1) | 1;
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

// Binds a row's id in `table` to parameter `i`.
void bind_id(Stmt& stmt, int i, const Row& r, const Table& table) {
  if (table.integer_key) {
    stmt.integer(i, r.key);
  } else {
    stmt.text(i, r.id);
  }
}

double insert_rows(sqlite3* db, const std::vector<Row>& rows, const char* verb = "INSERT",
                   const Table& table = kText) {
  Stmt insert(db, std::string(verb) + " INTO " + table.name + "(id, a, b, c) VALUES (?, ?, ?, ?)");
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      bind_id(insert, 1, r, table);
      insert.text(2, r.a).integer(3, r.b).real(4, r.c);
      insert.run();
    }
  });
}

double update_one_column(sqlite3* db, const std::vector<Row>& rows, const Table& table) {
  Stmt update(db, std::string("UPDATE ") + table.name + " SET b = ? WHERE id = ?");
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      update.integer(1, r.b + 1);
      bind_id(update, 2, r, table);
      update.run();
    }
  });
}

// The values update_three_columns() writes.
Row edited(const Row& r) { return {r.id, r.key, r.a + " (edited)", r.b + 2, r.c + 1}; }

double update_three_columns(sqlite3* db, const std::vector<Row>& rows, const Table& table) {
  Stmt update(db, std::string("UPDATE ") + table.name + " SET a = ?, b = ?, c = ? WHERE id = ?");
  std::string a;
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      a = r.a + " (edited)";
      update.text(1, a).integer(2, r.b + 2).real(3, r.c + 1);
      bind_id(update, 4, r, table);
      update.run();
    }
  });
}

double delete_rows(sqlite3* db, const std::vector<Row>& rows, const Table& table) {
  Stmt remove(db, std::string("DELETE FROM ") + table.name + " WHERE id = ?");
  return timed_transaction(db, [&] {
    for (const Row& r : rows) {
      bind_id(remove, 1, r, table);
      remove.run();
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
std::string fingerprint(sqlite3* db, const Table& table = kText) {
  Stmt s(db, std::string("SELECT count(*), sum(b), total(c), sum(length(a)) FROM ") + table.name);
  s.step();
  std::ostringstream out;
  out << s.column_int(0) << "/" << s.column_int(1) << "/" << s.column_double(2) << "/"
      << s.column_int(3);
  return out.str();
}

// --- Reporting.

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
    } else if (arg == "--import") {
      options.import = true;
    } else if (arg == "--cache-kib") {
      options.cache_kib = static_cast<int>(count(1));
    } else if (arg == "--scale") {
      options.scale = true;
    } else if (arg == "--captured") {
      options.captured = true;
    } else if (arg == "--sqlite3") {
      options.sqlite3 = value();
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  if (options.captured && !options.import)
    throw std::invalid_argument("--captured goes with --import");
  if (options.scale && options.import) throw std::invalid_argument("--scale goes without --import");
  if (options.rows == 0) options.rows = options.import ? 1'000'000 : 100'000;
  return options;
}

// What a reader needs to trust a figure: the commit, the build, the machine, and how busy it was
// (the 1-minute load average when the run ends; the machine is shared). JSON members, each
// line ending with a comma but the last.
std::string run_facts() {
  std::ostringstream out;
  out << "  \"commit\": " << lattice::crdt::json_quote(source_commit()) << ",\n";
  out << "  \"source_modified\": " << (source_modified() ? "true" : "false") << ",\n";
  out << "  \"build_type\": " << lattice::crdt::json_quote(build_type()) << ",\n";
  out << "  \"compiler\": " << lattice::crdt::json_quote(compiler()) << ",\n";
  out << "  \"sqlite_version\": " << lattice::crdt::json_quote(sqlite3_libversion()) << ",\n";
  double load[1] = {-1};
  if (getloadavg(load, 1) != 1) load[0] = -1;
  char loadavg[32];
  std::snprintf(loadavg, sizeof loadavg, "%.2f", load[0]);
  out << "  \"machine\": {\"nproc\": " << sysconf(_SC_NPROCESSORS_ONLN)
      << ", \"model\": " << lattice::crdt::json_quote(cpu_model()) << ", \"load_1min\": " << loadavg
      << "}\n";
  return out.str();
}

// Opens a replica holding an empty replicated table (t unless `table` says otherwise).
std::unique_ptr<lattice::Replica> open_replica(const fs::path& path, const char* schema = kSchema,
                                               const char* table = "t") {
  auto replica = lattice::Replica::open(path.string(), replica_options());
  replica->exec(schema);
  replica->replicate(table);
  return replica;
}

using Samples = std::map<std::string, std::vector<double>>;

// One repetition of the workload on `table`, on files in `dir`; adds its figures to `samples`
// under the table's prefix. With `constrained`, also the merge into a table that declares
// constraints (t only). An error names the step it happened in.
void measure(const Table& table, const std::vector<Row>& rows, const fs::path& dir,
             bool constrained, Samples& samples) {
  const std::string prefix = table.prefix;
  auto add = [&](const std::string& key, double value) { samples[prefix + key].push_back(value); };
  auto file = [&](const std::string& name) { return dir / (prefix + name); };
  std::string step = "open";
  try {
    PlainDb plain(file("plain.db"));
    exec(plain.get(), table.schema);
    auto replica = open_replica(file("replica.db"), table.schema, table.name);
    sqlite3* replicated = replica->connection();
    // Step `name` on the plain table, then on the replicated one: "<name>_plain_ms",
    // "<name>_replicated_ms" and "<name>_ratio".
    auto compare = [&](const std::string& name, const std::function<double(sqlite3*)>& on) {
      step = name;
      const double plain_ms = on(plain.get());
      const double replicated_ms = on(replicated);
      add(name + "_plain_ms", plain_ms);
      add(name + "_replicated_ms", replicated_ms);
      add(name + "_ratio", replicated_ms / plain_ms);
    };
    // Both files' sizes: "<name>_plain_bytes", "<name>_replicated_bytes" and "<name>_ratio".
    auto sizes = [&](const std::string& name) {
      step = name;
      const auto plain_bytes =
          static_cast<double>(checkpointed_size(plain.get(), file("plain.db")));
      const auto replicated_bytes =
          static_cast<double>(checkpointed_size(replicated, file("replica.db")));
      add(name + "_plain_bytes", plain_bytes);
      add(name + "_replicated_bytes", replicated_bytes);
      add(name + "_ratio", replicated_bytes / plain_bytes);
    };

    compare("insert", [&](sqlite3* db) { return insert_rows(db, rows, "INSERT", table); });
    sizes("size");  // after the insert

    // Extraction: everything, as a new peer would ask for it.
    step = "extract";
    auto start = Clock::now();
    const lattice::Changeset changeset = replica->changes_since({});
    const double extract_ms = ms_since(start);
    const auto changes = static_cast<double>(changeset.change_count());
    start = Clock::now();
    const std::string bytes = lattice::encode(changeset);
    const double encode_ms = ms_since(start);
    add("changes", changes);
    add("changeset_bytes", static_cast<double>(bytes.size()));
    add("extract_ms", extract_ms);
    add("extract_changes_per_s", changes / extract_ms * 1000);
    add("encode_ms", encode_ms);

    // Merge into a fresh replica, against a plain upsert of the same rows into a fresh table.
    step = "apply";
    auto target = open_replica(file("target.db"), table.schema, table.name);
    start = Clock::now();
    const lattice::Changeset decoded = lattice::decode(bytes);
    const double decode_ms = ms_since(start);
    start = Clock::now();
    const lattice::ApplyResult applied = target->apply(decoded);
    const double apply_ms = ms_since(start);
    if (static_cast<double>(applied.applied) != changes)
      throw std::runtime_error("apply took " + std::to_string(applied.applied) + " of " +
                               std::to_string(changeset.change_count()) +
                               " changes into a fresh replica");
    if (fingerprint(target->connection(), table) != fingerprint(replicated, table))
      throw std::runtime_error(
          "the merged table differs from its source: " + fingerprint(target->connection(), table) +
          " vs " + fingerprint(replicated, table));
    PlainDb upsert(file("upsert.db"));
    exec(upsert.get(), table.schema);
    const double upsert_ms = insert_rows(upsert.get(), rows, "INSERT OR REPLACE", table);
    const double merge_ms = decode_ms + apply_ms;
    add("decode_ms", decode_ms);
    add("apply_ms", apply_ms);
    add("apply_changes_per_s", changes / merge_ms * 1000);
    add("plain_upsert_ms", upsert_ms);
    add("apply_vs_plain_upsert_ratio", merge_ms / upsert_ms);

    // The same state by snapshot (Replica::write_snapshot, install_snapshot) of the replica the
    // changes merged into, as a relay holds them, against copying that replica's file
    // (checkpointed, page cache warm) and against the merge above.
    step = "snapshot";
    checkpointed_size(target->connection(), file("target.db"));
    start = Clock::now();
    fs::copy_file(file("target.db"), file("copy.db"));
    const double copy_ms = ms_since(start);
    start = Clock::now();
    target->write_snapshot(file("snapshot.db").string());
    const double snapshot_write_ms = ms_since(start);
    auto installed = open_replica(file("installed.db"), table.schema, table.name);
    start = Clock::now();
    installed->install_snapshot(file("snapshot.db").string());
    const double snapshot_install_ms = ms_since(start);
    if (fingerprint(installed->connection(), table) != fingerprint(replicated, table))
      throw std::runtime_error("the installed snapshot differs from its source");
    add("file_copy_ms", copy_ms);
    add("snapshot_bytes", static_cast<double>(fs::file_size(file("snapshot.db"))));
    add("snapshot_write_ms", snapshot_write_ms);
    add("snapshot_install_ms", snapshot_install_ms);
    add("snapshot_changes_per_s", changes / (snapshot_write_ms + snapshot_install_ms) * 1000);
    add("snapshot_install_vs_copy_ratio", snapshot_install_ms / copy_ms);
    add("snapshot_install_vs_apply_ratio", snapshot_install_ms / merge_ms);

    if (constrained) {
      // The same merge into a table that declares constraints (checked as rows are written).
      step = "apply_constrained";
      auto checked_replica = open_replica(file("constrained.db"), kConstrainedSchema);
      start = Clock::now();
      const lattice::ApplyResult checked = checked_replica->apply(decoded);
      const double constrained_ms = ms_since(start);
      if (static_cast<double>(checked.applied) != changes ||
          fingerprint(checked_replica->connection()) != fingerprint(replicated))
        throw std::runtime_error("the merge into the constrained table differs from its source");
      add("apply_constrained_ms", constrained_ms);
      add("apply_constrained_ratio", constrained_ms / apply_ms);
      // What the same constraints cost plain SQLite (the unique index above all): the part of
      // the ratio above that is SQLite's own, not Lattice's.
      PlainDb plain_constrained(file("plain-constrained.db"));
      exec(plain_constrained.get(), kConstrainedSchema);
      PlainDb plain_free(file("plain-free.db"));
      exec(plain_free.get(), kSchema);
      const double constrained_plain_ms = insert_rows(plain_constrained.get(), rows);
      const double free_plain_ms = insert_rows(plain_free.get(), rows);
      add("plain_constrained_insert_ratio", constrained_plain_ms / free_plain_ms);
    }

    // Updates of every row: one column, then three.
    compare("update_1col", [&](sqlite3* db) { return update_one_column(db, rows, table); });
    compare("update_3col", [&](sqlite3* db) { return update_three_columns(db, rows, table); });
    if (fingerprint(plain.get(), table) != fingerprint(replicated, table))
      throw std::runtime_error("the replicated table differs from the plain one after updates");

    // Size again: every column of every row now has its own version.
    sizes("size_after_updates");

    // Merge of the updates into the replica that holds the rows from the merge above: what it
    // lacks (the latest a, b and c of every row), against an upsert of the same new values into
    // the plain table that holds the old rows.
    step = "apply_updates";
    const lattice::Changeset updates = replica->changes_since(target->version_vector());
    const auto update_changes = static_cast<double>(updates.change_count());
    start = Clock::now();
    const lattice::ApplyResult merged = target->apply(updates);
    const double apply_updates_ms = ms_since(start);
    if (static_cast<double>(merged.applied) != update_changes ||
        fingerprint(target->connection(), table) != fingerprint(replicated, table))
      throw std::runtime_error("the merge of the updates differs from its source");
    std::vector<Row> new_values;
    new_values.reserve(rows.size());
    for (const Row& r : rows) new_values.push_back(edited(r));
    const double upsert_updates_ms =
        insert_rows(upsert.get(), new_values, "INSERT OR REPLACE", table);
    if (fingerprint(upsert.get(), table) != fingerprint(plain.get(), table))
      throw std::runtime_error("the plain upsert of the updates differs from the updated table");
    add("apply_updates_changes", update_changes);
    add("apply_updates_ms", apply_updates_ms);
    add("apply_updates_changes_per_s", update_changes / apply_updates_ms * 1000);
    add("plain_upsert_updates_ms", upsert_updates_ms);
    add("apply_updates_vs_plain_upsert_ratio", apply_updates_ms / upsert_updates_ms);

    // Delete every row.
    compare("delete", [&](sqlite3* db) { return delete_rows(db, rows, table); });
    if (fingerprint(plain.get(), table) != fingerprint(replicated, table))
      throw std::runtime_error("the replicated table differs from the plain one after deletes");
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(table.name) + ", step " + step + ": " + e.what());
  }
}

// Encryption at rest (ReplicaOptions::encryption_key, docs/encryption.md) against the same
// replica unencrypted, both in the same run: inserting every row, a full scan of the table
// with SQLite's page cache cold (both replicas closed and opened again; the operating system's
// cache is warm for both), and updating one column of every row in random order.
// "encrypted_<step>_ratio" is the encrypted replica's time over the unencrypted one's.
void measure_encryption(const std::vector<Row>& rows, const fs::path& dir, Samples& samples) {
  lattice::ReplicaOptions encrypted_options = replica_options();
  encrypted_options.encryption_key = lattice::storage::parse_file_key(
      "5f0e3c9a8b7d6e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091", "bench key");
  const fs::path plain_path = dir / "unencrypted.db", encrypted_path = dir / "encrypted.db";
  auto open = [&](bool encrypted) {
    return lattice::Replica::open((encrypted ? encrypted_path : plain_path).string(),
                                  encrypted ? encrypted_options : replica_options());
  };
  std::unique_ptr<lattice::Replica> replicas[2] = {open(false), open(true)};
  for (auto& replica : replicas) {
    replica->exec(kSchema);
    replica->replicate("t");
  }
  auto compare = [&](const std::string& name, const std::function<double(sqlite3*)>& on) {
    const double plain_ms = on(replicas[0]->connection());
    const double encrypted_ms = on(replicas[1]->connection());
    samples["encrypted_" + name + "_ms"].push_back(encrypted_ms);
    samples["encrypted_" + name + "_ratio"].push_back(encrypted_ms / plain_ms);
  };
  compare("insert", [&](sqlite3* db) { return insert_rows(db, rows); });

  for (int i = 0; i < 2; ++i) {
    checkpointed_size(replicas[i]->connection(), i ? encrypted_path : plain_path);
    replicas[i].reset();
    replicas[i] = open(i == 1);
  }
  std::string sums[2];
  compare("cold_scan", [&](sqlite3* db) {
    const auto start = Clock::now();
    sums[db == replicas[1]->connection()] = fingerprint(db);
    return ms_since(start);
  });
  if (sums[0] != sums[1]) throw std::runtime_error("the encrypted replica's table differs");

  std::vector<Row> shuffled = rows;
  std::mt19937_64 random(7);
  std::shuffle(shuffled.begin(), shuffled.end(), random);
  compare("random_update", [&](sqlite3* db) { return update_one_column(db, shuffled, kText); });
}

// A device of a namespace where `sites` devices write: one replica that knows them all merges
// 2,000 single-row deltas, one after another, each from the next site, with since and until the
// whole vectors, as a sync session hands a relay's delta on. Microseconds per merge.
double delta_merge_us(const fs::path& dir, int sites) {
  const char* schema = "CREATE TABLE s(id TEXT PRIMARY KEY, v INTEGER)";
  auto device = open_replica(dir / ("sites" + std::to_string(sites) + ".db"), schema, "s");
  std::vector<std::unique_ptr<lattice::Replica>> writers;
  for (int i = 0; i < sites; ++i) {
    writers.push_back(open_replica(":memory:", schema, "s"));
    writers.back()->exec("INSERT INTO s VALUES ('w" + std::to_string(i) + "', 0)");
    device->apply(writers.back()->changes_since(device->version_vector()));
  }
  constexpr int kDeltas = 2'000;
  std::vector<lattice::Changeset> deltas;
  std::vector<lattice::VersionVector> sent(sites);
  for (int i = 0; i < sites; ++i) sent[i] = writers[i]->version_vector();
  lattice::VersionVector at = device->version_vector();
  for (int d = 0; d < kDeltas; ++d) {
    const int i = d % sites;
    writers[i]->exec("UPDATE s SET v = v + 1 WHERE id = 'w" + std::to_string(i) + "'");
    lattice::Changeset delta = writers[i]->changes_since(sent[i]);
    sent[i] = writers[i]->version_vector();
    delta.since = at;
    at.merge(delta.until);
    delta.until = at;
    deltas.push_back(std::move(delta));
  }
  const auto start = Clock::now();
  for (const auto& delta : deltas) device->apply(delta);
  const double ms = ms_since(start);
  if (!(device->version_vector() == at))
    throw std::runtime_error("the device's vector is not the deltas' last until");
  return ms * 1000 / kDeltas;
}

// The workload over `repeats` repetitions on fresh files: t, and with `full` also the constrained
// merge and ti. A failure on ti goes to `ipk_refused` instead of ending the run.
Samples measure_all(const Options& options, std::size_t n, bool full, std::string& ipk_refused) {
  const std::vector<Row> rows = make_rows(n);
  TempDir temp(options.dir, "lattice-bench-");
  Samples samples;
  for (int rep = 0; rep < options.repeats; ++rep) {
    const fs::path dir = temp.path() / ("rep" + std::to_string(rep));
    fs::create_directory(dir);
    std::fprintf(stderr, "lattice-bench: repetition %d of %d, %zu rows\n", rep + 1, options.repeats,
                 n);
    measure(kText, rows, dir, full, samples);
    if (full) {
      measure_encryption(rows, dir, samples);
      const double few = delta_merge_us(dir, 10), many = delta_merge_us(dir, 500);
      samples["delta_merge_10_sites_us"].push_back(few);
      samples["delta_merge_500_sites_us"].push_back(many);
      samples["delta_merge_500_vs_10_sites_ratio"].push_back(many / few);
    }
    if (!full || !ipk_refused.empty()) continue;
    try {
      measure(kIntegerKey, rows, dir, false, samples);
    } catch (const std::exception& e) {
      ipk_refused = e.what();
      std::fprintf(stderr, "lattice-bench: %s\n", e.what());
    }
  }
  return samples;
}

// The figures, in the order printed, with their decimals; a table's figures take its prefix.
constexpr std::pair<const char*, int> kFigures[] = {
    {"insert_plain_ms", 1},
    {"insert_replicated_ms", 1},
    {"insert_ratio", 2},
    {"update_1col_plain_ms", 1},
    {"update_1col_replicated_ms", 1},
    {"update_1col_ratio", 2},
    {"update_3col_plain_ms", 1},
    {"update_3col_replicated_ms", 1},
    {"update_3col_ratio", 2},
    {"delete_plain_ms", 1},
    {"delete_replicated_ms", 1},
    {"delete_ratio", 2},
    {"changes", 0},
    {"changeset_bytes", 0},
    {"extract_ms", 1},
    {"extract_changes_per_s", 0},
    {"encode_ms", 1},
    {"decode_ms", 1},
    {"apply_ms", 1},
    {"apply_changes_per_s", 0},
    {"plain_upsert_ms", 1},
    {"apply_vs_plain_upsert_ratio", 2},
    {"file_copy_ms", 1},
    {"snapshot_bytes", 0},
    {"snapshot_write_ms", 1},
    {"snapshot_install_ms", 1},
    {"snapshot_changes_per_s", 0},
    {"snapshot_install_vs_copy_ratio", 2},
    {"snapshot_install_vs_apply_ratio", 2},
    {"apply_constrained_ms", 1},
    {"apply_constrained_ratio", 2},
    {"plain_constrained_insert_ratio", 2},
    {"apply_updates_changes", 0},
    {"apply_updates_ms", 1},
    {"apply_updates_changes_per_s", 0},
    {"plain_upsert_updates_ms", 1},
    {"apply_updates_vs_plain_upsert_ratio", 2},
    {"size_plain_bytes", 0},
    {"size_replicated_bytes", 0},
    {"size_ratio", 2},
    {"size_after_updates_plain_bytes", 0},
    {"size_after_updates_replicated_bytes", 0},
    {"size_after_updates_ratio", 2},
    {"delta_merge_10_sites_us", 1},
    {"delta_merge_500_sites_us", 1},
    {"delta_merge_500_vs_10_sites_ratio", 2},
    {"encrypted_insert_ms", 1},
    {"encrypted_insert_ratio", 2},
    {"encrypted_cold_scan_ms", 1},
    {"encrypted_cold_scan_ratio", 2},
    {"encrypted_random_update_ms", 1},
    {"encrypted_random_update_ratio", 2},
};

// What --scale reports per row count.
constexpr const char* kScaleRatios[] = {
    "insert_ratio",
    "update_1col_ratio",
    "update_3col_ratio",
    "delete_ratio",
    "apply_vs_plain_upsert_ratio",
    "apply_updates_vs_plain_upsert_ratio",
    "size_ratio",
    "size_after_updates_ratio",
    "snapshot_install_vs_copy_ratio",
    "snapshot_install_vs_apply_ratio",
};

// The scale figures of one row count as one JSON object.
std::string scale_object(std::size_t n, const Samples& samples) {
  lattice::bench::Json json;
  json.integer("rows", static_cast<std::int64_t>(n));
  for (const char* key : kScaleRatios) json.num(key, median(samples.at(key)));
  return json.text();
}

int run(const Options& options) {
  std::string ipk_refused;
  const Samples samples = measure_all(options, options.rows, true, ipk_refused);

  std::ostringstream out;
  out << "{\n";
  out << "  \"rows\": " << options.rows << ",\n";
  out << "  \"repeats\": " << options.repeats << ",\n";
  out << "  \"cache_kib\": " << options.cache_kib << ",\n";
  for (const char* prefix : {kText.prefix, kIntegerKey.prefix}) {
    for (const auto& [name, decimals] : kFigures) {
      const auto found = samples.find(prefix + std::string(name));
      if (found == samples.end()) continue;
      out << "  \"" << found->first
          << "\": " << lattice::bench::fixed(median(found->second), decimals) << ",\n";
    }
  }
  if (!ipk_refused.empty())
    out << "  \"ipk_refused\": " << lattice::crdt::json_quote(ipk_refused) << ",\n";

  if (options.scale) {
    std::map<std::size_t, std::string> scale;
    scale[options.rows] = scale_object(options.rows, samples);
    for (const std::size_t n : {std::size_t{10'000}, std::size_t{1'000'000}}) {
      if (scale.count(n)) continue;
      std::string unused;
      scale[n] = scale_object(n, measure_all(options, n, false, unused));
    }
    out << "  \"scale\": [\n";
    std::size_t i = 0;
    for (const auto& [n, object] : scale)
      out << "    " << object << (++i < scale.size() ? ",\n" : "\n");
    out << "  ],\n";
  }
  out << run_facts() << "}\n";
  std::fputs(out.str().c_str(), stdout);
  return 0;
}

// --- The import benchmark (--import): docs/benchmarks.md, "Import 1,000,000 CSV rows".

// The rows as a CSV file with a header, as an export would write them (the `a` column holds a
// comma, so it is quoted).
void write_csv(const std::vector<Row>& rows, const fs::path& path) {
  std::ofstream out(path, std::ios::binary);
  out << "id,a,b,c\n";
  char real[32];
  for (const Row& r : rows) {
    auto [end, ec] = std::to_chars(real, real + sizeof real, r.c);
    out << r.id << ",\"" << r.a << "\"," << r.b << ',' << std::string_view(real, end - real)
        << '\n';
  }
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// Runs a program with its output in `log`; returns the elapsed milliseconds. Throws when it
// fails.
double run_program(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  std::vector<std::string> storage = args;
  for (auto& a : storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const auto start = Clock::now();
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  const double ms = ms_since(start);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(args[0] + " failed (" + std::to_string(WEXITSTATUS(status)) +
                             "): " + read_file(log));
  }
  return ms;
}

int run_import(const Options& options) {
  TempDir temp(options.dir, "lattice-bench-");
  const fs::path csv = temp.path() / "t.csv";
  {
    const std::vector<Row> rows = make_rows(options.rows);
    write_csv(rows, csv);
  }
  std::map<std::string, std::vector<double>> samples;
  std::string expected;
  for (int rep = 0; rep < options.repeats; ++rep) {
    const fs::path dir = temp.path() / ("rep" + std::to_string(rep));
    fs::create_directory(dir);
    std::fprintf(stderr, "lattice-bench --import: repetition %d of %d, %zu rows\n", rep + 1,
                 options.repeats, options.rows);

    // The baseline: the sqlite3 shell's .import, as one runs it, into a plain table of the same
    // schema (a key, so the same index is built), and into a table it makes itself (all text,
    // no key: the least work it can do).
    const double sqlite3_ms =
        run_program({options.sqlite3, (dir / "plain.db").string(), "-cmd", kSchema,
                     ".import --csv --skip 1 " + csv.string() + " t"},
                    dir / "sqlite3.log");
    const double untyped_ms = run_program(
        {options.sqlite3, (dir / "untyped.db").string(), ".import --csv " + csv.string() + " t"},
        dir / "sqlite3-untyped.log");

    auto replica = open_replica(dir / "replica.db");
    auto start = Clock::now();
    const lattice::ImportResult imported = lattice::import_file(*replica, "t", csv.string());
    const double lattice_ms = ms_since(start);
    if (imported.inserted != options.rows || imported.rejected != 0)
      throw std::runtime_error("the import inserted " + std::to_string(imported.inserted) +
                               " rows and rejected " + std::to_string(imported.rejected));
    start = Clock::now();
    const lattice::ImportResult again = lattice::import_file(*replica, "t", csv.string());
    const double reimport_ms = ms_since(start);
    if (again.unchanged != options.rows)
      throw std::runtime_error("importing the file again changed rows");

    PlainDb plain(dir / "plain.db");
    if (fingerprint(plain.get()) != fingerprint(replica->connection()))
      throw std::runtime_error(
          "the imported table differs from sqlite3's: " + fingerprint(replica->connection()) +
          " vs " + fingerprint(plain.get()));
    if (!replica->check().problems.empty())
      throw std::runtime_error("lattice check: " + replica->check().problems.front());
    samples["sqlite3_import_ms"].push_back(sqlite3_ms);
    samples["sqlite3_import_untyped_ms"].push_back(untyped_ms);
    samples["lattice_import_ms"].push_back(lattice_ms);
    samples["import_ratio"].push_back(lattice_ms / sqlite3_ms);
    samples["import_vs_untyped_ratio"].push_back(lattice_ms / untyped_ms);
    samples["reimport_unchanged_ms"].push_back(reimport_ms);

    if (options.captured) {
      // The same import through the capture triggers: what the direct path saves.
      auto captured = open_replica(dir / "captured.db");
      lattice::ImportOptions statements;
      statements.bulk_path = lattice::BulkPath::kStatements;
      start = Clock::now();
      lattice::import_file(*captured, "t", csv.string(), statements);
      const double captured_ms = ms_since(start);
      if (captured->digest() != replica->digest())
        throw std::runtime_error("the captured import differs from the direct one");
      samples["captured_import_ms"].push_back(captured_ms);
      samples["captured_vs_direct_ratio"].push_back(captured_ms / lattice_ms);
    }
  }

  std::ostringstream out;
  out << "{\n";
  out << "  \"mode\": \"import\",\n";
  out << "  \"rows\": " << options.rows << ",\n";
  out << "  \"repeats\": " << options.repeats << ",\n";
  out << "  \"cache_kib\": " << options.cache_kib << ",\n";
  out << "  \"csv_bytes\": " << fs::file_size(csv) << ",\n";
  for (const auto& [key, values] : samples) {
    char buffer[64];
    const bool ratio = key.find("ratio") != std::string::npos;
    std::snprintf(buffer, sizeof buffer, "%.*f", ratio ? 2 : 1, median(values));
    out << "  \"" << key << "\": " << buffer << ",\n";
  }
  out << run_facts() << "}\n";
  std::fputs(out.str().c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_options(argc, argv);
    g_cache_kib = options.cache_kib;
    if (options.import) return run_import(options);
    return run(options);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "lattice-bench: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lattice-bench: %s\n", e.what());
    return 1;
  }
}
