// The `lattice` command-line tool: a replica's SQL shell, changeset exchange by files, sync
// with a relay, and import and export of tables as CSV and JSON files.
// Its contract (commands, output, exit status) is in README.md and docs/cli.md.

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "lattice/lattice.hpp"

namespace {

constexpr const char* kUsage = R"(usage:
  lattice exec DB SQL                          run SQL; print result rows tab-separated
  lattice changes DB [--since VVFILE] --out FILE [--max-bytes N]
                                               write the changes a holder of VVFILE lacks, in
                                               FILE, FILE.1, ... of at most N bytes each
  lattice apply DB FILE...                     merge changeset files, in one transaction
  lattice vv DB                                print the replica's version vector as JSON
  lattice check DB                             check metadata against tables, list held rows
  lattice rekey DB [--keep-through N]          give a copied or restored replica a new site id
  lattice rotate-key DB --key-file FILE --new-key-file NEW
                                               re-encrypt an encrypted replica under the key
                                               in NEW (no other connection may have it open)
  lattice snapshot DB FILE                     write DB's replicated state to a new file FILE
  lattice install-snapshot DB FILE             install snapshot FILE into DB, a replica whose
                                               schema is in place and that holds nothing yet
  lattice migrate DB VERSION SQL               run migration VERSION once (schema changes)
  lattice sync DB URL [--token-file FILE] [--once | --verify] [--ca-file FILE]
               [--timeout SECONDS] [--allow-insecure-remote] [--no-snapshot]
                                               sync with a relay at wss://HOST:PORT/NAMESPACE;
                                               the token from FILE or $LATTICE_TOKEN; an
                                               empty DB starts from the relay's snapshot
  lattice import DB TABLE FILE [--format csv|ndjson|json] [--map MAPFILE] [--errors FILE]
               [--batch N] [--progress]        import a file's records as rows, by primary key
  lattice export DB TABLE|QUERY [--format csv|ndjson|json] [--out FILE]
                                               write a table's or a query's rows
Every command takes --key-file FILE for a replica encrypted at rest: FILE holds its key, 64
hexadecimal digits; `exec` creates a new replica encrypted under it.
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string format_value(const lattice::Value& value) {
  switch (value.index()) {
    case 0:
      return "";
    case 1:
      return std::to_string(std::get<std::int64_t>(value));
    case 2: {
      char buffer[32];
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, std::get<double>(value));
      std::string text(buffer, end);
      // A real stays recognisable as one: 2.0, not 2.
      if (text.find_first_of(".eEn") == std::string::npos) text += ".0";
      return text;
    }
    case 3:
      return std::get<std::string>(value);
    default: {
      static const char* digits = "0123456789ABCDEF";
      std::string out = "X'";
      for (unsigned char c : std::get<lattice::crdt::Blob>(value).bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
      }
      return out + "'";
    }
  }
}

std::string read_file(const std::string& path, std::size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw lattice::Error(lattice::ErrorCode::kIo, "cannot read '" + path + "'");
  std::string bytes;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    bytes.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (bytes.size() > limit)
      throw lattice::Error(lattice::ErrorCode::kTooLarge,
                           "'" + path + "' is larger than " + std::to_string(limit) + " bytes");
  }
  return bytes;
}

// Writes through a temporary file and a rename, so a reader never sees half a file.
void write_file(const std::string& path, const std::string& bytes) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) throw lattice::Error(lattice::ErrorCode::kIo, "cannot write '" + temporary + "'");
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0)
    throw lattice::Error(lattice::ErrorCode::kIo,
                         "cannot rename '" + temporary + "' to '" + path + "'");
}

// The options every command opens replicas with: --key-file sets the encryption key.
lattice::ReplicaOptions& replica_options() {
  static lattice::ReplicaOptions options;
  return options;
}

std::unique_ptr<lattice::Replica> open_replica(const std::string& path) {
  return lattice::Replica::open(path, replica_options());
}

// Opens an existing replica: only `exec` creates one.
std::unique_ptr<lattice::Replica> open_existing(const std::string& path) {
  if (!std::filesystem::exists(path))
    throw lattice::Error(lattice::ErrorCode::kIo, "no replica at '" + path + "'");
  return open_replica(path);
}

// Takes `--key-file FILE` (anywhere among the arguments, every command accepts it) out of
// `args` and reads the key into replica_options().
void take_key_file(std::vector<std::string>& args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] != "--key-file") continue;
    if (i + 1 >= args.size()) throw UsageError("--key-file needs a FILE");
    if (replica_options().encryption_key) throw UsageError("--key-file given twice");
    replica_options().encryption_key = lattice::storage::read_file_key(args[i + 1]);
    args.erase(args.begin() + static_cast<std::ptrdiff_t>(i),
               args.begin() + static_cast<std::ptrdiff_t>(i + 2));
    --i;
  }
}

lattice::VersionVector read_version_vector(const std::string& path) {
  try {
    return lattice::VersionVector::from_json(read_file(path, 1 << 20));
  } catch (const lattice::Error& e) {
    throw lattice::Error(e.code(), "'" + path + "': " + e.what());
  }
}

// One line, whatever the message holds.
std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return text;
}

// Seconds as given to --timeout: a non-negative decimal number.
double parse_seconds(const std::string& text) {
  double value = -1;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !(value >= 0) || value > 1e9)
    throw UsageError("--timeout takes a number of seconds, not '" + text + "'");
  return value;
}

// The first line of `path`, without its line ending or surrounding blanks: a bearer token.
// Errors name the file, never its content.
std::string read_token_file(const std::string& path) {
  std::string text = read_file(path, 64 * 1024);
  text = text.substr(0, text.find_first_of("\r\n"));
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos)
    throw lattice::Error(lattice::ErrorCode::kInvalidArgument,
                         "token file '" + path + "' holds no token on its first line");
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// `lattice sync`: see docs/cli.md.
int run_sync(const std::vector<std::string>& args) {
  if (args.size() < 3) throw UsageError("'sync' needs DB and URL");
  const std::string& db = args[1];
  const std::string& url = args[2];
  std::string token;
  bool once = false, verify = false, has_token = false;
  double timeout_seconds = -1;
  lattice::SyncClientOptions options;
  options.replica_options = replica_options();
  std::string token_file;
  for (std::size_t i = 3; i < args.size(); ++i) {
    if (args[i] == "--token" && i + 1 < args.size()) {
      // Still accepted, but the process list shows it to every user of the machine.
      token = args[++i];
      has_token = true;
      std::fprintf(stderr,
                   "lattice: warning: --token shows the token to other users (ps); use "
                   "--token-file FILE or the LATTICE_TOKEN environment variable\n");
    } else if (args[i] == "--token-file" && i + 1 < args.size()) {
      token_file = args[++i];
    } else if (args[i] == "--once") {
      once = true;
    } else if (args[i] == "--verify") {
      once = verify = true;
    } else if (args[i] == "--ca-file" && i + 1 < args.size()) {
      options.ca_file = args[++i];
    } else if (args[i] == "--timeout" && i + 1 < args.size()) {
      timeout_seconds = parse_seconds(args[++i]);
    } else if (args[i] == "--allow-insecure-remote") {
      options.allow_insecure_remote = true;
    } else if (args[i] == "--no-snapshot") {
      options.bootstrap_from_snapshot = false;
    } else {
      // Not echoed: a token put in the wrong place would land in the terminal and its logs.
      throw UsageError("unexpected argument #" + std::to_string(i + 1) + " to 'sync'" +
                       (args[i].rfind("--", 0) == 0 ? " ('" + args[i] + "')" : std::string()));
    }
  }
  if (!token_file.empty()) {
    if (has_token) throw UsageError("--token and --token-file exclude each other");
    token = read_token_file(token_file);
    has_token = true;
  } else if (!has_token) {
    if (const char* from_env = std::getenv("LATTICE_TOKEN"); from_env && *from_env) {
      token = from_env;
      has_token = true;
    }
  }
  if (!has_token)
    throw UsageError("'sync' needs a token: --token-file FILE or the LATTICE_TOKEN variable");
  if (timeout_seconds < 0) timeout_seconds = once ? 60 : 0;
  // Not made here: a device's replica needs the namespace's schema, which only it knows.
  if (!std::filesystem::exists(db))
    throw lattice::Error(lattice::ErrorCode::kIo,
                         "no replica at '" + db +
                             "'; a new device starts from a replica with the namespace's "
                             "schema and no rows (lattice exec " +
                             db + " SCHEMA_SQL), then the relay's snapshot fills it");

  using Clock = std::chrono::steady_clock;
  constexpr auto kQuietWait = std::chrono::seconds(3);  // `--once`: silent this long
  const auto started = Clock::now();
  const auto timeout =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  auto fail_with_status = [](const lattice::SyncStatus& status) {
    std::fprintf(stderr, "lattice: %s\n", one_line(status.last_error).c_str());
    return 1;
  };

  if (once) {
    lattice::SyncClient client(db, url, token, options);
    client.start();
    // Until in sync, the timeout, or an error that waiting within it would not cure: besides
    // the fatal ones, schema_ahead (it takes an admin device or the operator to bring the
    // version; a long-running sync waits for that, one sync does not).
    // Past the first seconds, what keeps it from syncing is said on stderr (each new error,
    // at most every 5 s), rather than a silent wait until the timeout.
    bool in_sync = false;
    std::string said;
    auto said_at = started;
    for (;;) {
      const auto left = timeout - (Clock::now() - started);
      if (left <= Clock::duration::zero()) break;
      in_sync = client.wait_until_in_sync(
          std::min(std::chrono::duration_cast<std::chrono::milliseconds>(left),
                   std::chrono::milliseconds(200)));
      const lattice::SyncStatus now = client.status();
      if (in_sync || now.fatal ||
          now.last_wire_error == lattice::transport::WireError::kSchemaAhead)
        break;
      const auto at = Clock::now();
      if (!now.last_error.empty() && now.last_error != said && at - started >= kQuietWait &&
          (said.empty() || at - said_at >= std::chrono::seconds(5))) {
        std::fprintf(stderr, "lattice: not in sync yet, trying again (%.0f s left): %s\n",
                     std::chrono::duration<double>(timeout - (at - started)).count(),
                     one_line(now.last_error).c_str());
        said = now.last_error;
        said_at = at;
      }
    }
    const lattice::SyncStatus status = client.status();
    if (in_sync && verify) {
      const auto digests = client.digests(std::chrono::seconds(30));
      client.stop();
      if (!digests)
        throw lattice::Error(lattice::ErrorCode::kState, "the relay did not send its digest");
      const auto differences = lattice::compare_digests(digests->local, digests->relay);
      if (differences.empty()) {
        std::printf("verified: this replica and the relay hold the same rows\n%s",
                    digests->local.c_str());
        return 0;
      }
      for (const auto& line : differences) std::printf("differs: %s\n", line.c_str());
      // Digests cover the tables and columns this replica has; the relay's, every version's.
      auto replica = open_replica(db);
      const auto newer = replica->query(
          "SELECT (SELECT count(*) FROM lattice_tables WHERE future = 1) + "
          "(SELECT count(*) FROM lattice_columns WHERE future = 1)");
      if (std::get<std::int64_t>(newer.rows.at(0).at(0)) > 0)
        std::printf(
            "note: this replica holds tables or columns of a newer schema version than its own "
            "(%lld), which its digest leaves out; they agree once it migrates to the "
            "namespace's version\n",
            static_cast<long long>(replica->schema_version()));
      std::fprintf(stderr, "lattice: verify: this replica and the relay differ (%s)\n",
                   differences.front().c_str());
      return 1;
    }
    client.stop();
    if (in_sync) {
      std::printf("in sync\n");
      return 0;
    }
    if (status.fatal || status.last_wire_error == lattice::transport::WireError::kSchemaAhead)
      return fail_with_status(status);
    std::fprintf(
        stderr, "lattice: timed_out: timed out after %g s, not in sync (%s, %llu pending%s%s)\n",
        timeout_seconds, lattice::sync_state_name(status.state),
        static_cast<unsigned long long>(status.pending),
        status.last_error.empty() ? "" : "; last error: ", one_line(status.last_error).c_str());
    return 1;
  }

  // Until SIGINT or SIGTERM. Blocked here, before the client's thread exists, so that only
  // sigtimedwait below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  lattice::SyncState printed_state = lattice::SyncState::kOffline;
  bool printed_any = false;
  std::string printed_error;
  options.on_status = [&](const lattice::SyncStatus& status) {
    // On the client's thread; main() only reads the client through status().
    if (!printed_any || status.state != printed_state) {
      std::printf("state: %s, pending %llu\n", lattice::sync_state_name(status.state),
                  static_cast<unsigned long long>(status.pending));
      printed_state = status.state;
      printed_any = true;
    }
    if (!status.last_error.empty() && status.last_error != printed_error) {
      std::printf("error: %s\n", one_line(status.last_error).c_str());
      printed_error = status.last_error;
    }
    std::fflush(stdout);
  };
  lattice::SyncClient client(db, url, token, options);
  client.start();
  const timespec tick{0, 100'000'000};
  for (;;) {
    if (sigtimedwait(&signals, nullptr, &tick) > 0) break;
    const lattice::SyncStatus status = client.status();
    if (status.fatal) {
      client.stop();
      return fail_with_status(status);
    }
    if (timeout_seconds > 0 && Clock::now() - started >= timeout) break;
  }
  client.stop();
  return 0;
}

// `lattice changes`: see docs/cli.md. The output is cut into files of at most `max_bytes`
// (the decode limit when not given, so `apply` takes every file `changes` writes): at
// transaction boundaries where it can, between the rows of one transaction where a transaction
// alone is larger (those parts are whole only together, so they apply in one call).
int run_changes(const std::vector<std::string>& args) {
  if (args.size() < 2) throw UsageError("'changes' needs DB");
  std::string since_file, out_file;
  std::size_t max_bytes = lattice::crdt::DecodeLimits{}.max_bytes;
  for (std::size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "--since" && i + 1 < args.size()) {
      since_file = args[++i];
    } else if (args[i] == "--out" && i + 1 < args.size()) {
      out_file = args[++i];
    } else if (args[i] == "--max-bytes" && i + 1 < args.size()) {
      const std::string& text = args[++i];
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), max_bytes);
      if (ec != std::errc() || end != text.data() + text.size() || max_bytes < 1024 ||
          max_bytes > lattice::crdt::DecodeLimits{}.max_bytes)
        throw UsageError("--max-bytes takes a number of bytes from 1024 to " +
                         std::to_string(lattice::crdt::DecodeLimits{}.max_bytes) + ", not '" +
                         text + "'");
    } else {
      throw UsageError("unexpected argument '" + args[i] + "' to 'changes'");
    }
  }
  if (out_file.empty()) throw UsageError("'changes' needs --out FILE");
  lattice::VersionVector since;
  if (!since_file.empty()) since = read_version_vector(since_file);
  auto replica = open_existing(args[1]);
  const lattice::VersionVector full = replica->version_vector();
  const lattice::SiteId& own = replica->site_id();
  if (since.get(own) > full.get(own))
    throw lattice::Error(
        lattice::ErrorCode::kCopiedReplica,
        "'" + since_file + "' says its holder has " + std::to_string(since.get(own)) +
            " of this replica's own transactions, but this replica wrote " +
            std::to_string(full.get(own)) +
            ": the holder received them from a copy of this file, or this file is a restored "
            "backup. Give this file a new site id with `lattice rekey DB --keep-through N`, N "
            "the number of its own transactions when it was copied or backed up");
  std::vector<std::string> parts;
  std::size_t changes = 0, chunk = 1'000'000;
  lattice::VersionVector holder = since;
  for (;;) {
    lattice::Changeset cs = replica->changes_since(holder, chunk);
    std::string bytes = lattice::encode(cs);
    if (bytes.size() > max_bytes && chunk > 1 && cs.change_count() > 1) {
      // Fewer changes a file, in proportion, with some room.
      chunk = std::max<std::size_t>(
          1, std::min(chunk, cs.change_count()) * (max_bytes / 2) / bytes.size());
      continue;
    }
    changes += cs.change_count();
    if (bytes.size() > max_bytes) {
      // One transaction alone is larger: its rows go in several files, the vector only in the
      // last one. Each row's size is measured once, alone under the same header.
      lattice::Changeset part = cs;
      part.rows.clear();
      part.until = cs.since;
      lattice::Changeset alone = part;
      const std::size_t header = lattice::encode(part).size() + 64;  // room for `until`
      std::size_t size = header;
      for (std::size_t r = 0; r < cs.rows.size(); ++r) {
        alone.rows.assign(1, cs.rows[r]);
        const std::size_t row_bytes = lattice::encode(alone).size() - (header - 64);
        if (row_bytes + header > max_bytes)
          throw lattice::Error(lattice::ErrorCode::kTooLarge,
                               "a row of table id " + std::to_string(cs.rows[r].table) +
                                   " alone takes " + std::to_string(row_bytes + header) +
                                   " bytes with its header, over --max-bytes " +
                                   std::to_string(max_bytes));
        if (size + row_bytes > max_bytes) {
          parts.push_back(lattice::encode(part));
          part.rows.clear();
          size = header;
        }
        part.rows.push_back(std::move(cs.rows[r]));
        size += row_bytes;
      }
      part.until = cs.until;
      parts.push_back(lattice::encode(part));
    } else {
      parts.push_back(std::move(bytes));
    }
    const bool progress = !(cs.until == holder);
    holder = cs.until;
    if (holder.dominates(full) || !progress) break;
  }
  std::string names;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string name = i == 0 ? out_file : out_file + "." + std::to_string(i);
    write_file(name, parts[i]);
    names += (i ? ", " : "") + name;
  }
  // A stale FILE.N from an earlier, longer run would be taken for part of this one.
  for (std::size_t i = parts.size(); std::filesystem::exists(out_file + "." + std::to_string(i));
       ++i)
    std::filesystem::remove(out_file + "." + std::to_string(i));
  std::printf("wrote %zu changes to %s\n", changes, names.c_str());
  return 0;
}

// `lattice apply`: every file in one transaction, in the order their vectors chain (each
// file's `since` held when it is applied), whatever order they are named in.
int run_apply(const std::vector<std::string>& args) {
  if (args.size() < 3) throw UsageError("'apply' needs DB and FILE");
  auto replica = open_existing(args[1]);
  const std::size_t limit = lattice::crdt::DecodeLimits{}.max_bytes;
  struct File {
    std::string path;
    lattice::crdt::ChangesetVectors vectors;
  };
  std::vector<File> files;
  for (std::size_t i = 2; i < args.size(); ++i) {
    try {
      files.push_back({args[i], lattice::crdt::peek_changeset_vectors(read_file(args[i], limit))});
    } catch (const lattice::Error& e) {
      throw lattice::Error(e.code(), "'" + args[i] + "': " + e.what());
    }
  }
  std::vector<File> ordered;
  lattice::VersionVector held = replica->version_vector();
  while (!files.empty()) {
    auto next = std::find_if(files.begin(), files.end(),
                             [&](const File& f) { return held.dominates(f.vectors.since); });
    if (next == files.end()) next = files.begin();  // merged, though its vector is not adopted
    held.merge(next->vectors.until);
    ordered.push_back(std::move(*next));
    files.erase(next);
  }
  lattice::Changeset current;
  const lattice::ApplyResult result =
      replica->apply_all(ordered.size(), [&](std::size_t i) -> const lattice::Changeset& {
        try {
          current = lattice::decode(read_file(ordered[i].path, limit));
        } catch (const lattice::Error& e) {
          throw lattice::Error(e.code(), "'" + ordered[i].path + "': " + e.what());
        }
        return current;
      });
  std::printf("applied %zu of %zu changes\n", result.applied, result.received);
  return 0;
}

// The format named by --format, else by the file's extension (.csv, .ndjson or .jsonl, .json).
lattice::DataFormat format_of(const std::string& given, const std::string& file,
                              const char* command, bool csv_by_default) {
  if (!given.empty()) {
    if (auto format = lattice::data_format_from_name(given)) return *format;
    throw UsageError("--format takes csv, ndjson or json, not '" + given + "'");
  }
  const std::string extension = std::filesystem::path(file).extension().string();
  if (extension == ".csv") return lattice::DataFormat::kCsv;
  if (extension == ".ndjson" || extension == ".jsonl") return lattice::DataFormat::kNdjson;
  if (extension == ".json") return lattice::DataFormat::kJson;
  if (csv_by_default) return lattice::DataFormat::kCsv;
  throw UsageError(std::string("'") + command + "' needs --format csv|ndjson|json for '" + file +
                   "'");
}

// `lattice import`: see docs/cli.md and docs/import-export.md.
int run_import(const std::vector<std::string>& args) {
  if (args.size() < 4) throw UsageError("'import' needs DB, TABLE and FILE");
  std::string format_name, map_file;
  bool always_progress = false;
  lattice::ImportOptions options;
  for (std::size_t i = 4; i < args.size(); ++i) {
    if (args[i] == "--format" && i + 1 < args.size()) {
      format_name = args[++i];
    } else if (args[i] == "--map" && i + 1 < args.size()) {
      map_file = args[++i];
    } else if (args[i] == "--errors" && i + 1 < args.size()) {
      options.errors_path = args[++i];
    } else if (args[i] == "--batch" && i + 1 < args.size()) {
      const std::string& text = args[++i];
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), options.batch_rows);
      if (ec != std::errc() || end != text.data() + text.size() || options.batch_rows == 0 ||
          options.batch_rows > 10'000'000)
        throw UsageError("--batch takes a number of rows from 1 to 10000000, not '" + text + "'");
    } else if (args[i] == "--progress") {
      always_progress = true;
    } else {
      throw UsageError("unexpected argument '" + args[i] + "' to 'import'");
    }
  }
  options.format = format_of(format_name, args[3], "import", false);
  if (!map_file.empty()) {
    try {
      options.mapping = read_file(map_file, 1 << 20);
    } catch (const lattice::Error& e) {
      throw lattice::Error(e.code(), std::string(e.what()) + " (the mapping file)");
    }
  }
  auto replica = open_existing(args[1]);

  // A progress line on stderr once the import has run a second (at once with --progress),
  // then at most once a second: rewritten in place on a terminal, a line each time otherwise.
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  auto last = started;
  const bool terminal = isatty(STDERR_FILENO) != 0;
  bool printed = false;
  options.on_progress = [&](const lattice::ImportProgress& p) {
    const auto now = Clock::now();
    if (!always_progress && now - started < std::chrono::seconds(1)) return;
    if (printed && now - last < std::chrono::seconds(1) && p.records < p.total_records) return;
    last = now;
    printed = true;
    const double percent = p.total_records ? 100.0 * p.records / p.total_records : 100.0;
    std::fprintf(stderr, "%simporting %s: %llu of %llu records (%.0f%%), %llu rejected%s",
                 terminal ? "\r" : "", args[2].c_str(), static_cast<unsigned long long>(p.records),
                 static_cast<unsigned long long>(p.total_records), percent,
                 static_cast<unsigned long long>(p.rejected), terminal ? "" : "\n");
    std::fflush(stderr);
  };
  const lattice::ImportResult r = [&] {
    try {
      return lattice::import_file(*replica, args[2], args[3], options);
    } catch (...) {
      if (printed && terminal) std::fputc('\n', stderr);
      throw;
    }
  }();
  if (printed && terminal) std::fputc('\n', stderr);
  std::printf(
      "imported %llu %s into %s: %llu inserted, %llu updated, %llu unchanged, %llu "
      "rejected%s%s%s\n",
      static_cast<unsigned long long>(r.records), r.records == 1 ? "record" : "records",
      args[2].c_str(), static_cast<unsigned long long>(r.inserted),
      static_cast<unsigned long long>(r.updated), static_cast<unsigned long long>(r.unchanged),
      static_cast<unsigned long long>(r.rejected),
      r.rejected && !options.errors_path.empty() ? " (see " : "",
      r.rejected && !options.errors_path.empty() ? options.errors_path.c_str() : "",
      r.rejected && !options.errors_path.empty() ? ")" : "");
  if (r.rejected == 0) return 0;
  if (options.errors_path.empty()) {
    const std::size_t shown = std::min<std::size_t>(r.first_rejections.size(), 10);
    for (std::size_t i = 0; i < shown; ++i) {
      const auto& x = r.first_rejections[i];
      std::fprintf(stderr, "rejected: record %llu (line %llu)%s%s: %s\n",
                   static_cast<unsigned long long>(x.record),
                   static_cast<unsigned long long>(x.line), x.column.empty() ? "" : ", column ",
                   x.column.c_str(), one_line(x.reason).c_str());
    }
    if (r.rejected > shown)
      std::fprintf(stderr, "rejected: %llu more; write them all with --errors FILE\n",
                   static_cast<unsigned long long>(r.rejected - shown));
  }
  return 3;
}

// `lattice export`: see docs/cli.md and docs/import-export.md.
int run_export(const std::vector<std::string>& args) {
  if (args.size() < 3) throw UsageError("'export' needs DB and TABLE or QUERY");
  std::string format_name, out_file;
  for (std::size_t i = 3; i < args.size(); ++i) {
    if (args[i] == "--format" && i + 1 < args.size()) {
      format_name = args[++i];
    } else if (args[i] == "--out" && i + 1 < args.size()) {
      out_file = args[++i];
    } else {
      throw UsageError("unexpected argument '" + args[i] + "' to 'export'");
    }
  }
  const lattice::DataFormat format = format_of(format_name, out_file, "export", true);
  auto replica = open_existing(args[1]);
  if (!out_file.empty()) {
    const lattice::ExportResult r = lattice::export_file(*replica, args[2], format, out_file);
    std::printf("exported %llu rows to %s\n", static_cast<unsigned long long>(r.rows),
                out_file.c_str());
    return 0;
  }
  lattice::export_rows(*replica, args[2], format, [](std::string_view bytes) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size())
      throw lattice::Error(lattice::ErrorCode::kIo, "cannot write to standard output");
  });
  if (std::fflush(stdout) != 0)
    throw lattice::Error(lattice::ErrorCode::kIo, "cannot write to standard output");
  return 0;
}

int run(const std::vector<std::string>& args) {
  if (args.empty()) throw UsageError("missing command");
  const std::string& command = args[0];
  auto need = [&](std::size_t count) {
    if (args.size() < count) throw UsageError("'" + command + "' needs more arguments");
  };

  if (command == "exec") {
    need(3);
    if (args.size() > 3) throw UsageError("'exec' takes DB and one SQL argument");
    auto replica = open_replica(args[1]);
    replica->exec(args[2], [](const auto&, const std::vector<lattice::Value>& row) {
      std::string line;
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (i) line += '\t';
        line += format_value(row[i]);
      }
      line += '\n';
      std::fwrite(line.data(), 1, line.size(), stdout);
    });
    return 0;
  }
  if (command == "changes") return run_changes(args);
  if (command == "apply") return run_apply(args);
  if (command == "vv") {
    need(2);
    if (args.size() > 2) throw UsageError("'vv' takes DB only");
    auto replica = open_existing(args[1]);
    std::printf("%s\n", replica->version_vector().to_json().c_str());
    return 0;
  }
  if (command == "check") {
    need(2);
    if (args.size() > 2) throw UsageError("'check' takes DB only");
    auto replica = open_existing(args[1]);
    const lattice::CheckReport report = replica->check();
    std::int64_t held = 0, superseded = 0;
    for (const auto& t : report.tables) {
      std::printf("table %s: %lld shown, %lld held, %lld superseded\n", t.table.c_str(),
                  static_cast<long long>(t.shown), static_cast<long long>(t.held),
                  static_cast<long long>(t.superseded));
      held += t.held;
      superseded += t.superseded;
    }
    for (const auto& row : replica
                               ->query("SELECT \"table\", \"key\", reason, \"constraint\" "
                                       "FROM lattice_conflicts ORDER BY 1, 2")
                               .rows) {
      std::printf("conflict: %s %s %s%s%s\n", format_value(row[0]).c_str(),
                  format_value(row[1]).c_str(), format_value(row[2]).c_str(),
                  format_value(row[3]).empty() ? "" : " ", format_value(row[3]).c_str());
    }
    for (const auto& p : report.problems) std::printf("problem: %s\n", one_line(p).c_str());
    if (!report.problems.empty()) {
      std::fprintf(stderr, "lattice: check: %zu problem(s); first: %s\n", report.problems.size(),
                   one_line(report.problems.front()).c_str());
      return 1;
    }
    std::printf("ok: metadata and tables agree; %lld row(s) held, %lld superseded%s\n",
                static_cast<long long>(held), static_cast<long long>(superseded),
                held + superseded ? " (see lattice_conflicts)" : "");
    return 0;
  }
  if (command == "migrate") {
    need(4);
    if (args.size() > 4) throw UsageError("'migrate' takes DB, VERSION and one SQL argument");
    std::int64_t version = 0;
    const std::string& text = args[2];
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), version);
    if (ec != std::errc() || end != text.data() + text.size())
      throw UsageError("VERSION is a migration number, not '" + text + "'");
    auto replica = open_replica(args[1]);
    const bool ran = replica->migrate(version, args[3]);
    std::printf(ran ? "migrated to version %lld\n" : "already at version %lld\n",
                static_cast<long long>(ran ? version : replica->schema_version()));
    return 0;
  }
  if (command == "rekey") {
    need(2);
    auto replica = open_existing(args[1]);
    std::uint64_t keep_through = replica->acknowledged();
    for (std::size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--keep-through" && i + 1 < args.size()) {
        const std::string& text = args[++i];
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), keep_through);
        if (ec != std::errc() || end != text.data() + text.size())
          throw UsageError("--keep-through takes a sequence number, not '" + text + "'");
      } else {
        throw UsageError("unexpected argument '" + args[i] + "' to 'rekey'");
      }
    }
    const std::string old_site = replica->site_id().to_hex();
    const std::uint64_t head = replica->version_vector().get(replica->site_id());
    replica->rekey(keep_through);
    std::printf(
        "rekeyed: new site id %s; own transactions 1..%llu stay under %s, %llu later "
        "ones moved to the new id\n",
        replica->site_id().to_hex().c_str(), static_cast<unsigned long long>(keep_through),
        old_site.c_str(), static_cast<unsigned long long>(head - std::min(head, keep_through)));
    return 0;
  }
  if (command == "rotate-key") {
    need(2);
    if (args.size() != 4 || args[2] != "--new-key-file")
      throw UsageError("'rotate-key' takes DB, --key-file FILE and --new-key-file NEW");
    if (!replica_options().encryption_key)
      throw UsageError("'rotate-key' needs --key-file with the replica's current key");
    const auto new_key = lattice::storage::read_file_key(args[3]);
    open_existing(args[1])->rotate_key(new_key);
    std::printf("rotated: '%s' is encrypted under the key in '%s'\n", args[1].c_str(),
                args[3].c_str());
    return 0;
  }
  if (command == "snapshot" || command == "install-snapshot") {
    need(3);
    if (args.size() > 3) throw UsageError("'" + command + "' takes DB and FILE only");
    auto replica = open_existing(args[1]);
    if (command == "snapshot") {
      const lattice::VersionVector held = replica->write_snapshot(args[2]);
      std::printf("wrote snapshot %s (%llu bytes) holding %s\n", args[2].c_str(),
                  static_cast<unsigned long long>(std::filesystem::file_size(args[2])),
                  held.to_json().c_str());
    } else {
      const lattice::VersionVector held = replica->install_snapshot(args[2]);
      std::printf("installed snapshot %s; the replica holds %s under its own site id %s\n",
                  args[2].c_str(), held.to_json().c_str(), replica->site_id().to_hex().c_str());
    }
    return 0;
  }
  if (command == "sync") return run_sync(args);
  if (command == "import") return run_import(args);
  if (command == "export") return run_export(args);
  if (command == "help" || command == "--help" || command == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  throw UsageError("unknown command '" + command + "'");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    take_key_file(args);
    return run(args);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lattice: usage: %s (run 'lattice help')\n", e.what());
    return 2;
  } catch (const lattice::Error& e) {
    std::fprintf(stderr, "lattice: %s: %s\n", lattice::error_code_name(e.code()),
                 one_line(e.what()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lattice: internal: %s\n", one_line(e.what()).c_str());
    return 1;
  }
}
