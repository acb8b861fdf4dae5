// The C API (engine/include/lattice/lattice.h) over storage::Replica and engine::SyncClient.
// Every entry point is noexcept and runs its body through capi::guard().

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "crdt/version_vector.hpp"
#include "engine/capi/detail/guard.hpp"
#include "engine/import_export/table_export.hpp"
#include "engine/import_export/table_import.hpp"
#include "engine/sync/sync_client.hpp"
#include "lattice/lattice.h"
#include "storage/replica.hpp"
#include "storage/sqlite.hpp"

using lattice::Error;
using lattice::ErrorCode;
using lattice::capi::fail;
using lattice::capi::guard;
using lattice::capi::make_buffer;

// The codes are defined once, as lattice::ErrorCode; the C names must keep its numbers.
static_assert(LATTICE_OK == static_cast<int>(ErrorCode::kOk));
static_assert(LATTICE_ERR_INVALID_ARGUMENT == static_cast<int>(ErrorCode::kInvalidArgument));
static_assert(LATTICE_ERR_CORRUPT == static_cast<int>(ErrorCode::kCorrupt));
static_assert(LATTICE_ERR_UNSUPPORTED_VERSION == static_cast<int>(ErrorCode::kUnsupportedVersion));
static_assert(LATTICE_ERR_TOO_LARGE == static_cast<int>(ErrorCode::kTooLarge));
static_assert(LATTICE_ERR_UNKNOWN_TABLE == static_cast<int>(ErrorCode::kUnknownTable));
static_assert(LATTICE_ERR_UNKNOWN_COLUMN == static_cast<int>(ErrorCode::kUnknownColumn));
static_assert(LATTICE_ERR_TYPE_MISMATCH == static_cast<int>(ErrorCode::kTypeMismatch));
static_assert(LATTICE_ERR_CLOCK_DRIFT == static_cast<int>(ErrorCode::kClockDrift));
static_assert(LATTICE_ERR_SQL == static_cast<int>(ErrorCode::kSql));
static_assert(LATTICE_ERR_IO == static_cast<int>(ErrorCode::kIo));
static_assert(LATTICE_ERR_BUSY == static_cast<int>(ErrorCode::kBusy));
static_assert(LATTICE_ERR_SCHEMA == static_cast<int>(ErrorCode::kSchema));
static_assert(LATTICE_ERR_STATE == static_cast<int>(ErrorCode::kState));
static_assert(LATTICE_ERR_INTERNAL == static_cast<int>(ErrorCode::kInternal));
static_assert(LATTICE_ERR_UNAUTHORIZED == static_cast<int>(ErrorCode::kUnauthorized));
static_assert(LATTICE_ERR_FORBIDDEN == static_cast<int>(ErrorCode::kForbidden));
static_assert(LATTICE_ERR_COPIED_REPLICA == static_cast<int>(ErrorCode::kCopiedReplica));
static_assert(LATTICE_ERR_KEY == static_cast<int>(ErrorCode::kKey));
static_assert(static_cast<int>(lattice::engine::SyncState::kOffline) == LATTICE_SYNC_OFFLINE);
static_assert(static_cast<int>(lattice::engine::SyncState::kConnecting) == LATTICE_SYNC_CONNECTING);
static_assert(static_cast<int>(lattice::engine::SyncState::kSyncing) == LATTICE_SYNC_SYNCING);
static_assert(static_cast<int>(lattice::engine::SyncState::kLive) == LATTICE_SYNC_LIVE);

namespace {

// What a replica handle and the statements prepared on it share, so that a statement outlives
// its replica's close (and free) safely: it then reports LATTICE_ERR_STATE.
struct ReplicaState {
  std::unique_ptr<lattice::storage::Replica> replica;  // null once closed
  std::set<lattice_stmt*> statements;                  // prepared and not finalized
  std::set<int> subscriptions;
};

}  // namespace

struct lattice_replica {
  std::shared_ptr<ReplicaState> state;
};

struct lattice_stmt {
  std::shared_ptr<ReplicaState> state;
  sqlite3_stmt* stmt = nullptr;  // null once finalized by the replica's close
  std::string sql;
  std::vector<std::string> names;  // result column names, copied so they stay valid
  bool has_row = false;
};

struct lattice_sync {
  std::unique_ptr<lattice::engine::SyncClient> client;
  std::atomic<bool> stopped{false};
};

namespace {

[[noreturn]] void throw_error(ErrorCode code, const std::string& message) {
  throw Error(code, message);
}

void require(const void* pointer, const char* what) {
  if (!pointer) throw_error(ErrorCode::kInvalidArgument, std::string(what) + " is NULL");
}

lattice::storage::Replica& open_replica(lattice_replica* handle) {
  require(handle, "replica");
  if (!handle->state->replica) throw_error(ErrorCode::kState, "the replica is closed");
  return *handle->state->replica;
}

lattice::storage::Replica& live_statement(lattice_stmt* stmt) {
  require(stmt, "stmt");
  if (!stmt->stmt || !stmt->state->replica)
    throw_error(ErrorCode::kState, "the statement's replica is closed");
  return *stmt->state->replica;
}

void finalize_statement(lattice_stmt* stmt) {
  if (stmt->stmt) sqlite3_finalize(stmt->stmt);
  stmt->stmt = nullptr;
  stmt->has_row = false;
}

// Copies at most `struct_size` bytes of a caller's options struct over defaults, so a program
// built against an older, shorter struct keeps working.
template <class Options>
Options read_options(const Options* given, const Options& defaults, const char* what) {
  Options options = defaults;
  if (!given) return options;
  if (given->struct_size < sizeof(std::size_t))
    throw_error(ErrorCode::kInvalidArgument,
                std::string(what) + ".struct_size is too small: set it to sizeof(" + what + ")");
  std::memcpy(&options, given, std::min(given->struct_size, sizeof(Options)));
  options.struct_size = sizeof(Options);
  return options;
}

std::chrono::milliseconds duration_option(int ms, int default_ms, const char* what) {
  if (ms < 0)
    throw_error(ErrorCode::kInvalidArgument,
                std::string("lattice_sync_options.") + what + " is negative");
  return std::chrono::milliseconds(ms == 0 ? default_ms : ms);
}

// Turns a failed sqlite3_bind_* into an Error.
void check_bind(lattice_stmt* stmt, int index, int rc) {
  if (rc == SQLITE_OK) return;
  if (rc == SQLITE_RANGE)
    throw_error(ErrorCode::kInvalidArgument,
                "parameter index " + std::to_string(index) + " is out of range 1.." +
                    std::to_string(sqlite3_bind_parameter_count(stmt->stmt)) + " of '" + stmt->sql +
                    "'");
  if (rc == SQLITE_MISUSE)
    throw_error(ErrorCode::kState,
                "cannot bind while the statement is running: reset it first ('" + stmt->sql + "')");
  if (rc == SQLITE_TOOBIG)
    throw_error(ErrorCode::kTooLarge,
                "parameter " + std::to_string(index) + " is larger than SQLite allows");
  lattice::storage::throw_sqlite(sqlite3_db_handle(stmt->stmt), rc,
                                 "bind parameter " + std::to_string(index));
}

lattice_value to_c_value(const lattice::crdt::Value& value) {
  lattice_value out{};
  out.type = LATTICE_NULL;
  if (const auto* i = std::get_if<std::int64_t>(&value)) {
    out.type = LATTICE_INTEGER;
    out.integer = *i;
  } else if (const auto* d = std::get_if<double>(&value)) {
    out.type = LATTICE_REAL;
    out.real = *d;
  } else if (const auto* s = std::get_if<std::string>(&value)) {
    out.type = LATTICE_TEXT;
    out.bytes = s->c_str();
    out.size = s->size();
  } else if (const auto* b = std::get_if<lattice::crdt::Blob>(&value)) {
    out.type = LATTICE_BLOB;
    out.bytes = b->bytes.c_str();
    out.size = b->bytes.size();
  }
  return out;
}

lattice_sync_status to_c_status(const lattice::engine::SyncStatus& status) {
  lattice_sync_status out{};
  out.state = static_cast<lattice_sync_state>(status.state);
  out.pending = status.pending;
  out.in_sync = status.in_sync;
  out.fatal = status.fatal;
  out.last_error = status.last_error.c_str();
  return out;
}

// The 32 bytes of an options struct's encryption_key, or none for NULL.
std::optional<lattice::storage::FileKey> file_key(const std::uint8_t* bytes) {
  if (!bytes) return std::nullopt;
  lattice::storage::FileKey key;
  std::memcpy(key.data(), bytes, key.size());
  return key;
}

}  // namespace

extern "C" {

// ---- Errors and bytes -----------------------------------------------------------------------

const char* lattice_error_code_name(lattice_code code) noexcept {
  if (code == LATTICE_ROW) return "row";
  if (code == LATTICE_DONE) return "done";
  return lattice::error_code_name(static_cast<ErrorCode>(code));
}

int lattice_api_version(void) noexcept { return LATTICE_API_VERSION; }

void lattice_buffer_free(lattice_buffer* buffer) noexcept {
  if (!buffer) return;
  std::free(buffer->data);
  buffer->data = nullptr;
  buffer->size = 0;
}

// ---- Replicas -------------------------------------------------------------------------------

lattice_replica* lattice_replica_open(const char* path, const lattice_replica_options* options,
                                      lattice_error* error) noexcept {
  lattice_replica* result = nullptr;
  guard(error, [&] {
    require(path, "path");
    const lattice_replica_options given = read_options(
        options, lattice_replica_options LATTICE_REPLICA_OPTIONS_INIT, "lattice_replica_options");
    lattice::storage::ReplicaOptions replica_options;
    if (given.synchronous) {
      // Spliced into a PRAGMA, so only SQLite's own words are accepted.
      std::string mode = given.synchronous;
      for (auto& c : mode) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (mode != "OFF" && mode != "NORMAL" && mode != "FULL" && mode != "EXTRA")
        throw_error(ErrorCode::kInvalidArgument,
                    "synchronous must be OFF, NORMAL, FULL or EXTRA, not '" +
                        std::string(given.synchronous) + "'");
      replica_options.synchronous = mode;
    }
    if (given.busy_timeout_ms < 0)
      throw_error(ErrorCode::kInvalidArgument, "busy_timeout_ms is negative");
    if (given.busy_timeout_ms > 0) replica_options.busy_timeout_ms = given.busy_timeout_ms;
    replica_options.encryption_key = file_key(given.encryption_key);
    auto state = std::make_shared<ReplicaState>();
    state->replica = lattice::storage::Replica::open(path, std::move(replica_options));
    result = new lattice_replica{std::move(state)};
  });
  return result;
}

lattice_code lattice_replica_close(lattice_replica* replica, lattice_error* error) noexcept {
  return guard(error, [&] {
    open_replica(replica);
    ReplicaState& state = *replica->state;
    for (lattice_stmt* stmt : state.statements) finalize_statement(stmt);
    state.statements.clear();
    state.subscriptions.clear();
    state.replica.reset();
  });
}

void lattice_replica_free(lattice_replica* replica) noexcept {
  if (!replica) return;
  if (replica->state->replica) lattice_replica_close(replica, nullptr);
  delete replica;
}

lattice_code lattice_replica_rotate_key(lattice_replica* replica, const uint8_t* new_key,
                                        lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(new_key, "new_key");
    r.rotate_key(*file_key(new_key));
  });
}

lattice_code lattice_replica_exec(lattice_replica* replica, const char* sql,
                                  lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(sql, "sql");
    r.exec(sql);
  });
}

lattice_code lattice_replica_replicate(lattice_replica* replica, const char* table,
                                       const char* column_types_json,
                                       lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(table, "table");
    r.replicate(table, column_types_json ? column_types_json : "{}");
  });
}

lattice_code lattice_replica_migrate(lattice_replica* replica, int64_t version, const char* sql,
                                     bool* ran, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(sql, "sql");
    const bool did = r.migrate(version, sql);
    if (ran) *ran = did;
  });
}

lattice_code lattice_replica_version_vector(lattice_replica* replica, lattice_buffer* out,
                                            lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(out, "out");
    *out = make_buffer(r.version_vector().to_json());
  });
}

lattice_code lattice_replica_write_snapshot(lattice_replica* replica, const char* path,
                                            lattice_buffer* held, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(path, "path");
    const std::string vector = r.write_snapshot(path).to_json();
    if (held) *held = make_buffer(vector);
  });
}

lattice_code lattice_replica_install_snapshot(lattice_replica* replica, const char* path,
                                              lattice_buffer* held, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(path, "path");
    const std::string vector = r.install_snapshot(path).to_json();
    if (held) *held = make_buffer(vector);
  });
}

lattice_code lattice_replica_changes_since(lattice_replica* replica, const char* since_json,
                                           size_t max_changes, lattice_buffer* out,
                                           lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(out, "out");
    lattice::crdt::VersionVector since;
    if (since_json && *since_json) since = lattice::crdt::VersionVector::from_json(since_json);
    const lattice::crdt::Changeset changes =
        max_changes == 0 ? r.changes_since(since) : r.changes_since(since, max_changes);
    *out = make_buffer(lattice::crdt::encode_changeset(changes));
  });
}

lattice_code lattice_replica_apply(lattice_replica* replica, const void* bytes, size_t size,
                                   lattice_apply_result* result, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    if (size > 0) require(bytes, "bytes");
    const auto changeset = lattice::crdt::decode_changeset(
        std::string_view(static_cast<const char*>(bytes), bytes ? size : 0));
    const lattice::storage::ApplyResult applied = r.apply(changeset);
    if (result) *result = lattice_apply_result{applied.received, applied.applied};
  });
}

// ---- Change subscriptions -------------------------------------------------------------------

lattice_code lattice_replica_subscribe(lattice_replica* replica, lattice_change_callback callback,
                                       void* context, int* subscription,
                                       lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(reinterpret_cast<const void*>(callback), "callback");
    require(subscription, "subscription");
    *subscription =
        r.subscribe([callback, context](const std::vector<lattice::storage::ChangeEvent>& events) {
          // The C view borrows from `events` and from these vectors, alive for the call.
          std::vector<std::vector<lattice_value>> keys(events.size());
          std::vector<std::vector<const char*>> columns(events.size());
          std::vector<lattice_change> changes(events.size());
          for (std::size_t i = 0; i < events.size(); ++i) {
            const auto& event = events[i];
            for (const auto& value : event.primary_key) keys[i].push_back(to_c_value(value));
            for (const auto& column : event.columns) columns[i].push_back(column.c_str());
            changes[i].table = event.table.c_str();
            changes[i].primary_key = keys[i].data();
            changes[i].primary_key_count = keys[i].size();
            changes[i].columns = columns[i].data();
            changes[i].column_count = columns[i].size();
            changes[i].deleted = event.deleted;
            changes[i].merged = event.origin == lattice::storage::ChangeEvent::Origin::kMerged;
            changes[i].conflict = event.conflict.empty() ? nullptr : event.conflict.c_str();
          }
          callback(context, changes.data(), changes.size());
        });
    replica->state->subscriptions.insert(*subscription);
  });
}

lattice_code lattice_replica_unsubscribe(lattice_replica* replica, int subscription,
                                         lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    if (replica->state->subscriptions.erase(subscription) == 0)
      throw_error(ErrorCode::kInvalidArgument,
                  "no subscription " + std::to_string(subscription) + " on this replica");
    r.unsubscribe(subscription);
  });
}

// ---- Import and export ----------------------------------------------------------------------

lattice_code lattice_replica_import(lattice_replica* replica, const char* table, const char* path,
                                    const lattice_import_options* options,
                                    lattice_import_result* result, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(table, "table");
    require(path, "path");
    const lattice_import_options given = read_options(
        options, lattice_import_options LATTICE_IMPORT_OPTIONS_INIT, "lattice_import_options");
    lattice::engine::ImportOptions import;
    if (given.format) {
      auto format = lattice::engine::data_format_from_name(given.format);
      if (!format)
        throw_error(ErrorCode::kInvalidArgument,
                    "format must be csv, ndjson or json, not '" + std::string(given.format) + "'");
      import.format = *format;
    }
    if (given.mapping_json) import.mapping = given.mapping_json;
    if (given.errors_path) import.errors_path = given.errors_path;
    if (given.batch_rows) import.batch_rows = given.batch_rows;
    if (given.on_progress) {
      import.on_progress = [ callback = given.on_progress,
                             context = given.context ](const lattice::engine::ImportProgress& p) {
        callback(context, p.records, p.total_records, p.rejected);
    };
    }
    const lattice::engine::ImportResult imported =
        lattice::engine::import_file(r, table, path, import);
    if (result) {
    result->records = imported.records;
    result->inserted = imported.inserted;
    result->updated = imported.updated;
    result->unchanged = imported.unchanged;
    result->rejected = imported.rejected;
    }
});
}

lattice_code lattice_replica_export(lattice_replica* replica, const char* table_or_query,
                                    const char* format, const char* path, lattice_buffer* out,
                                    uint64_t* rows, lattice_error* error) noexcept {
  return guard(error, [&] {
    auto& r = open_replica(replica);
    require(table_or_query, "table_or_query");
    if (!path && !out) throw_error(ErrorCode::kInvalidArgument, "path and out are both NULL");
    lattice::engine::DataFormat data_format = lattice::engine::DataFormat::kCsv;
    if (format) {
      auto parsed = lattice::engine::data_format_from_name(format);
      if (!parsed)
        throw_error(ErrorCode::kInvalidArgument,
                    "format must be csv, ndjson or json, not '" + std::string(format) + "'");
      data_format = *parsed;
    }
    lattice::engine::ExportResult exported;
    if (path) {
      exported = lattice::engine::export_file(r, table_or_query, data_format, path);
    } else {
      std::string bytes;
      exported = lattice::engine::export_rows(r, table_or_query, data_format,
                                              [&](std::string_view piece) { bytes += piece; });
      *out = make_buffer(bytes);
    }
    if (rows) *rows = exported.rows;
  });
}

// ---- Statements -----------------------------------------------------------------------------

lattice_stmt* lattice_stmt_prepare(lattice_replica* replica, const char* sql,
                                   lattice_error* error) noexcept {
  lattice_stmt* result = nullptr;
  guard(error, [&] {
    auto& r = open_replica(replica);
    require(sql, "sql");
    auto stmt = std::make_unique<lattice_stmt>();
    stmt->state = replica->state;
    stmt->sql = sql;
    r.run_on_connection([&](sqlite3* db) {
      const char* tail = nullptr;
      const int rc = sqlite3_prepare_v2(db, sql, -1, &stmt->stmt, &tail);
      if (rc != SQLITE_OK) lattice::storage::throw_sqlite(db, rc, sql);
      if (!stmt->stmt)
        throw_error(ErrorCode::kInvalidArgument, "no SQL statement in '" + std::string(sql) + "'");
      // A second statement would be silently ignored by SQLite; refuse it instead.
      sqlite3_stmt* next = nullptr;
      const int next_rc = sqlite3_prepare_v2(db, tail, -1, &next, nullptr);
      if (next) sqlite3_finalize(next);
      if (next_rc != SQLITE_OK || next) {
        sqlite3_finalize(stmt->stmt);
        stmt->stmt = nullptr;
        throw_error(ErrorCode::kInvalidArgument,
                    "more than one SQL statement in '" + std::string(sql) +
                        "': prepare them one at a time, or use lattice_replica_exec");
      }
    });
    for (int i = 0; i < sqlite3_column_count(stmt->stmt); ++i) {
      const char* name = sqlite3_column_name(stmt->stmt, i);
      stmt->names.emplace_back(name ? name : "");
    }
    replica->state->statements.insert(stmt.get());
    result = stmt.release();
  });
  return result;
}

lattice_code lattice_stmt_bind_int64(lattice_stmt* stmt, int index, int64_t value,
                                     lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    check_bind(stmt, index, sqlite3_bind_int64(stmt->stmt, index, value));
  });
}

lattice_code lattice_stmt_bind_double(lattice_stmt* stmt, int index, double value,
                                      lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    check_bind(stmt, index, sqlite3_bind_double(stmt->stmt, index, value));
  });
}

lattice_code lattice_stmt_bind_text(lattice_stmt* stmt, int index, const char* text, size_t size,
                                    lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    require(text, "text");
    const std::size_t n = size == SIZE_MAX ? std::strlen(text) : size;
    check_bind(stmt, index,
               sqlite3_bind_text64(stmt->stmt, index, text, n, SQLITE_TRANSIENT, SQLITE_UTF8));
  });
}

lattice_code lattice_stmt_bind_blob(lattice_stmt* stmt, int index, const void* bytes, size_t size,
                                    lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    if (size > 0) require(bytes, "bytes");
    // SQLite binds a NULL pointer as SQL NULL, so an empty blob gets a non-null one.
    static const char kEmpty = 0;
    check_bind(
        stmt, index,
        sqlite3_bind_blob64(stmt->stmt, index, size > 0 ? bytes : &kEmpty, size, SQLITE_TRANSIENT));
  });
}

lattice_code lattice_stmt_bind_null(lattice_stmt* stmt, int index, lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    check_bind(stmt, index, sqlite3_bind_null(stmt->stmt, index));
  });
}

lattice_code lattice_stmt_step(lattice_stmt* stmt, lattice_error* error) noexcept {
  lattice_code outcome = LATTICE_DONE;
  const lattice_code code = guard(error, [&] {
    auto& r = live_statement(stmt);
    stmt->has_row = false;
    r.run_on_connection([&](sqlite3* db) {
      const int rc = sqlite3_step(stmt->stmt);
      if (rc == SQLITE_ROW) {
        stmt->has_row = true;
        outcome = LATTICE_ROW;
      } else if (rc != SQLITE_DONE) {
        lattice::storage::throw_sqlite(db, rc, stmt->sql);
      }
    });
  });
  return code == LATTICE_OK ? outcome : code;
}

lattice_code lattice_stmt_reset(lattice_stmt* stmt, lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    stmt->has_row = false;
    // sqlite3_reset repeats the last step's error, which the step already reported.
    sqlite3_reset(stmt->stmt);
  });
}

lattice_code lattice_stmt_clear_bindings(lattice_stmt* stmt, lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    sqlite3_clear_bindings(stmt->stmt);
  });
}

int lattice_stmt_column_count(lattice_stmt* stmt) noexcept {
  if (!stmt || !stmt->stmt) return 0;
  return sqlite3_column_count(stmt->stmt);
}

const char* lattice_stmt_column_name(lattice_stmt* stmt, int index, lattice_error* error) noexcept {
  const char* name = nullptr;
  guard(error, [&] {
    live_statement(stmt);
    const int count = sqlite3_column_count(stmt->stmt);
    if (index < 0 || index >= count)
      throw_error(ErrorCode::kInvalidArgument, "column index " + std::to_string(index) +
                                                   " is out of range 0.." +
                                                   std::to_string(count - 1));
    // A schema change re-prepares the statement, and `SELECT *` may then change its columns.
    if (static_cast<int>(stmt->names.size()) != count ||
        stmt->names[index] != sqlite3_column_name(stmt->stmt, index)) {
      stmt->names.clear();
      for (int i = 0; i < count; ++i) stmt->names.emplace_back(sqlite3_column_name(stmt->stmt, i));
    }
    name = stmt->names[index].c_str();
  });
  return name;
}

lattice_code lattice_stmt_column(lattice_stmt* stmt, int index, lattice_value* out,
                                 lattice_error* error) noexcept {
  return guard(error, [&] {
    live_statement(stmt);
    require(out, "out");
    if (!stmt->has_row)
      throw_error(ErrorCode::kState, "no row is ready: step the statement until LATTICE_ROW");
    const int count = sqlite3_column_count(stmt->stmt);
    if (index < 0 || index >= count)
      throw_error(ErrorCode::kInvalidArgument, "column index " + std::to_string(index) +
                                                   " is out of range 0.." +
                                                   std::to_string(count - 1));
    lattice_value value{};
    value.type = LATTICE_NULL;
    sqlite3_stmt* s = stmt->stmt;
    switch (sqlite3_column_type(s, index)) {
      case SQLITE_INTEGER:
        value.type = LATTICE_INTEGER;
        value.integer = sqlite3_column_int64(s, index);
        break;
      case SQLITE_FLOAT:
        value.type = LATTICE_REAL;
        value.real = sqlite3_column_double(s, index);
        break;
      case SQLITE_TEXT:
        value.type = LATTICE_TEXT;
        value.bytes = reinterpret_cast<const char*>(sqlite3_column_text(s, index));
        value.size = static_cast<std::size_t>(sqlite3_column_bytes(s, index));
        if (!value.bytes) throw std::bad_alloc();  // SQLite's only reason for NULL here
        break;
      case SQLITE_BLOB:
        value.type = LATTICE_BLOB;
        value.bytes = static_cast<const char*>(sqlite3_column_blob(s, index));
        value.size = static_cast<std::size_t>(sqlite3_column_bytes(s, index));
        if (!value.bytes) value.bytes = "";  // an empty blob
        break;
      default:
        break;
    }
    *out = value;
  });
}

void lattice_stmt_finalize(lattice_stmt* stmt) noexcept {
  if (!stmt) return;
  stmt->state->statements.erase(stmt);
  finalize_statement(stmt);
  delete stmt;
}

// ---- Sync -----------------------------------------------------------------------------------

const char* lattice_sync_state_name(lattice_sync_state state) noexcept {
  // A C caller may pass any int; reading it as the enum would be undefined in C++ when it is
  // out of the enum's range, so it is read as the int it is.
  int raw = 0;
  static_assert(sizeof raw == sizeof state);
  std::memcpy(&raw, &state, sizeof raw);
  if (raw < LATTICE_SYNC_OFFLINE || raw > LATTICE_SYNC_LIVE) return "unknown";
  return lattice::engine::sync_state_name(static_cast<lattice::engine::SyncState>(raw));
}

lattice_sync* lattice_sync_start(const char* replica_path, const char* url, const char* token,
                                 const lattice_sync_options* options,
                                 lattice_error* error) noexcept {
  lattice_sync* result = nullptr;
  guard(error, [&] {
    require(replica_path, "replica_path");
    require(url, "url");
    require(token, "token");
    const lattice_sync_options given = read_options(
        options, lattice_sync_options LATTICE_SYNC_OPTIONS_INIT, "lattice_sync_options");
    lattice::engine::SyncClientOptions client_options;
    if (given.ca_file) client_options.ca_file = given.ca_file;
    client_options.allow_insecure_remote = given.allow_insecure_remote;
    client_options.bootstrap_from_snapshot = !given.no_snapshot;
    client_options.replica_options.encryption_key = file_key(given.encryption_key);
    client_options.min_backoff = duration_option(given.min_backoff_ms, 100, "min_backoff_ms");
    client_options.max_backoff = duration_option(given.max_backoff_ms, 30'000, "max_backoff_ms");
    client_options.poll_interval = duration_option(given.poll_interval_ms, 50, "poll_interval_ms");
    client_options.connect_timeout =
        duration_option(given.connect_timeout_ms, 10'000, "connect_timeout_ms");
    if (given.on_status) {
      client_options.on_status = [callback = given.on_status,
                                  context = given.context](const lattice::engine::SyncStatus& s) {
        const lattice_sync_status status = to_c_status(s);
        callback(context, &status);
      };
    }
    if (given.renew_token) {
      client_options.renew_token = [callback = given.renew_token,
                                    context = given.renew_context](const std::string& reason) {
        // Room for the longest token a relay accepts (relay/token.hpp: 8 KiB) and its NUL.
        std::string out(8193, '\0');
        if (!callback(context, reason.c_str(), out.data(), out.size())) return std::string();
        out.resize(::strnlen(out.data(), out.size() - 1));
        return out;
      };
    }
    auto sync = std::make_unique<lattice_sync>();
    sync->client = std::make_unique<lattice::engine::SyncClient>(replica_path, url, token,
                                                                 std::move(client_options));
    sync->client->start();
    result = sync.release();
  });
  return result;
}

void lattice_sync_stop(lattice_sync* sync) noexcept {
  if (!sync) return;
  sync->stopped = true;
  // stop() throws only when called from the client's own thread, which the header forbids.
  guard(nullptr, [&] { sync->client->stop(); });
}

void lattice_sync_free(lattice_sync* sync) noexcept {
  if (!sync) return;
  lattice_sync_stop(sync);
  delete sync;
}

lattice_sync_state lattice_sync_get_state(lattice_sync* sync) noexcept {
  lattice_sync_state state = LATTICE_SYNC_OFFLINE;
  guard(nullptr, [&] {
    if (sync) state = static_cast<lattice_sync_state>(sync->client->state());
  });
  return state;
}

uint64_t lattice_sync_get_pending(lattice_sync* sync) noexcept {
  std::uint64_t pending = 0;
  guard(nullptr, [&] {
    if (sync) pending = sync->client->pending();
  });
  return pending;
}

lattice_code lattice_sync_get_last_error(lattice_sync* sync, lattice_buffer* out,
                                         lattice_error* error) noexcept {
  return guard(error, [&] {
    require(sync, "sync");
    require(out, "out");
    *out = make_buffer(sync->client->last_error());
  });
}

lattice_code lattice_sync_wait_in_sync(lattice_sync* sync, int timeout_ms, bool* in_sync,
                                       lattice_error* error) noexcept {
  return guard(error, [&] {
    require(sync, "sync");
    require(in_sync, "in_sync");
    if (timeout_ms < 0) throw_error(ErrorCode::kInvalidArgument, "timeout_ms is negative");
    *in_sync = false;
    if (sync->stopped) throw_error(ErrorCode::kState, "the sync client is stopped");
    if (sync->client->wait_until_in_sync(std::chrono::milliseconds(timeout_ms))) {
      *in_sync = true;
      return;
    }
    const lattice::engine::SyncStatus status = sync->client->status();
    if (status.fatal)
      throw_error(ErrorCode::kState, "the sync client gave up: " + status.last_error);
    if (sync->stopped) throw_error(ErrorCode::kState, "the sync client is stopped");
  });
}

}  // extern "C"
