/* Lattice's C API: a stable C11 ABI for applications written in any language (Android NDK,
 * JNI, Swift, Python ctypes, ...). The shared library liblattice.so exports exactly the
 * functions declared here, all prefixed `lattice_`. The C++ API (lattice/lattice.hpp) is the
 * same engine; this header is the one to use across a language or library boundary.
 *
 * CONVENTIONS
 *
 * Errors. A call that can fail returns a lattice_code (LATTICE_OK, 0, on success) or, when it
 * creates a handle, the handle (NULL on failure). Its last argument is a `lattice_error*` that
 * may be NULL; it is filled only on failure, with the same code and a message naming what was
 * wrong ("near \"SELEC\": syntax error in SELEC 1", "changeset truncated at byte 12 of 40").
 * No C++ exception ever crosses this boundary. The codes are the numbers of the C++
 * lattice::ErrorCode (crdt/error.hpp); the build checks that they agree.
 *
 * Memory. Strings passed in are NUL-terminated UTF-8 and copied when kept. What the library
 * returns is either BORROWED (a `const` pointer, valid for the stated time, never freed by the
 * caller) or OWNED (a lattice_buffer, which the caller frees with lattice_buffer_free()). Each
 * function says which.
 *
 * Handles. lattice_replica and lattice_sync are closed (close/stop) and released (free) by
 * separate calls: after close or stop the handle stays valid, and calls on it fail with
 * LATTICE_ERR_STATE instead of touching freed memory (a stopped sync client's getters still
 * answer). After a free call, the handle must not be used. Free calls accept NULL.
 *
 * Threads.
 *   - A lattice_replica, and the lattice_stmt handles prepared on it, are used by one thread at
 *     a time (any thread, but not two at once): callers serialize their calls. Several
 *     replicas, on the same file or not, may be used from different threads at once.
 *   - A lattice_sync may be called from any thread at any time until lattice_sync_free(),
 *     except that lattice_sync_stop() and lattice_sync_free() must not be called from its own
 *     status callback.
 *   - lattice_buffer_free(), lattice_error_code_name(), lattice_sync_state_name() and
 *     lattice_api_version() may be called from any thread.
 *   - Change callbacks (lattice_replica_subscribe) run on the thread that made the replica call
 *     which committed the change; sync status callbacks run on the sync client's own thread.
 *     Callbacks must return normally (no longjmp, no C++ exception).
 *
 * Version. LATTICE_API_VERSION is bumped on any change to the API; lattice_api_version()
 * returns the version the library was built with. Structs passed in begin with `struct_size`
 * (set it to sizeof the struct, or use the *_INIT macros) so fields can be added at their end
 * without breaking programs built against an older header.
 */
#ifndef LATTICE_LATTICE_H
#define LATTICE_LATTICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(LATTICE_BUILDING_SHARED)
#define LATTICE_API __declspec(dllexport)
#elif defined(LATTICE_STATIC)
#define LATTICE_API
#else
#define LATTICE_API __declspec(dllimport)
#endif
#else
#define LATTICE_API __attribute__((visibility("default")))
#endif

/* C++ callers see that no exception leaves a Lattice function. */
#ifdef __cplusplus
#define LATTICE_NOEXCEPT noexcept
#else
#define LATTICE_NOEXCEPT
#endif

#define LATTICE_API_VERSION 6

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Errors -------------------------------------------------------------------------------- */

/* Result codes. 0 is success; 1..16 are errors, the same numbers as lattice::ErrorCode. */
typedef int lattice_code;
enum {
  LATTICE_OK = 0,
  LATTICE_ERR_INVALID_ARGUMENT = 1,    /* malformed argument: NULL, bad JSON, bad index, ... */
  LATTICE_ERR_CORRUPT = 2,             /* bytes that do not decode (a changeset) */
  LATTICE_ERR_UNSUPPORTED_VERSION = 3, /* a format or protocol newer than this build speaks */
  LATTICE_ERR_TOO_LARGE = 4,           /* over a documented size limit */
  LATTICE_ERR_UNKNOWN_TABLE = 5,       /* a change names a table this replica lacks */
  LATTICE_ERR_UNKNOWN_COLUMN = 6,      /* a change names a column this replica's table lacks */
  LATTICE_ERR_TYPE_MISMATCH = 7,       /* a value or column kind that does not fit the column */
  LATTICE_ERR_CLOCK_DRIFT = 8,         /* a remote timestamp too far in the future */
  LATTICE_ERR_SQL = 9,                 /* SQLite refused a statement (syntax, constraint, ...) */
  LATTICE_ERR_IO = 10,                 /* the file system failed */
  LATTICE_ERR_BUSY = 11,               /* the database is locked by another writer */
  LATTICE_ERR_SCHEMA = 12,             /* a table cannot be replicated, or schemas disagree */
  LATTICE_ERR_STATE = 13,              /* wrong state: a closed handle, apply in a transaction */
  LATTICE_ERR_INTERNAL = 14,           /* a bug in Lattice (or out of memory) */
  LATTICE_ERR_UNAUTHORIZED = 15,       /* a missing, expired or badly signed token */
  LATTICE_ERR_FORBIDDEN = 16,          /* a valid token without the right for the call */
  LATTICE_ERR_COPIED_REPLICA = 17,     /* a replica file and a copy of it both wrote: rekey one */
  LATTICE_ERR_KEY = 18                 /* an encrypted replica opened without its key, or another */
};

/* Results of lattice_stmt_step() besides the error codes. */
enum { LATTICE_ROW = 100, LATTICE_DONE = 101 };

#define LATTICE_ERROR_MESSAGE_SIZE 512

/* Filled only on failure. `message` is NUL-terminated, cut to fit. */
typedef struct lattice_error {
  lattice_code code;
  char message[LATTICE_ERROR_MESSAGE_SIZE];
} lattice_error;

/* A short stable name for `code` ("ok", "corrupt", "clock_drift", ...; "row" and "done" for
 * the step results; "unknown" otherwise). Static storage: never freed. */
LATTICE_API const char* lattice_error_code_name(lattice_code code) LATTICE_NOEXCEPT;

/* LATTICE_API_VERSION as the library was built. */
LATTICE_API int lattice_api_version(void) LATTICE_NOEXCEPT;

/* ---- Bytes --------------------------------------------------------------------------------- */

/* Owned bytes returned by the library. `data` is followed by a NUL byte not counted in `size`,
 * so text (JSON, messages) can be read as a C string. Free with lattice_buffer_free(). */
typedef struct lattice_buffer {
  uint8_t* data;
  size_t size;
} lattice_buffer;

/* Frees `buffer->data` and sets the buffer to {NULL, 0}. NULL and empty buffers are fine. */
LATTICE_API void lattice_buffer_free(lattice_buffer* buffer) LATTICE_NOEXCEPT;

/* ---- Values -------------------------------------------------------------------------------- */

typedef enum lattice_type {
  LATTICE_NULL = 0,
  LATTICE_INTEGER = 1,
  LATTICE_REAL = 2,
  LATTICE_TEXT = 3,
  LATTICE_BLOB = 4
} lattice_type;

/* A value as SQLite stores it. For TEXT and BLOB, `bytes` and `size` are BORROWED (lifetime
 * stated where the value is handed out); text is UTF-8 and also NUL-terminated. */
typedef struct lattice_value {
  lattice_type type;
  int64_t integer;   /* LATTICE_INTEGER */
  double real;       /* LATTICE_REAL */
  const char* bytes; /* LATTICE_TEXT, LATTICE_BLOB; NULL otherwise */
  size_t size;       /* bytes' length, without the NUL */
} lattice_value;

/* ---- Replicas ------------------------------------------------------------------------------ */

/* A replica file (storage::Replica). One thread at a time. */
typedef struct lattice_replica lattice_replica;

typedef struct lattice_replica_options {
  size_t struct_size;      /* sizeof(lattice_replica_options) */
  const char* synchronous; /* PRAGMA synchronous: "FULL" or "NORMAL"; NULL: "NORMAL" */
  int busy_timeout_ms;     /* wait for another connection's write lock; 0: 5000 */
  /* 32 bytes (BORROWED for the call): the file is encrypted at rest under this key
   * (docs/encryption.md); a new file is created encrypted, an existing one opens only under its
   * own key (LATTICE_ERR_KEY otherwise). NULL: a plain SQLite file. Added in API version 6. */
  const uint8_t* encryption_key;
} lattice_replica_options;
#define LATTICE_REPLICA_OPTIONS_INIT \
  { sizeof(lattice_replica_options), NULL, 0, NULL }

/* Opens (creating when missing) the replica at `path` (":memory:" for a private in-memory one);
 * `options` may be NULL. Returns an OWNED handle, released with lattice_replica_free(), or NULL
 * on failure: LATTICE_ERR_IO (cannot open), LATTICE_ERR_UNSUPPORTED_VERSION (written by a newer
 * Lattice), LATTICE_ERR_KEY (an encrypted file without its key or with another, a plain file with
 * a key), LATTICE_ERR_INVALID_ARGUMENT. */
LATTICE_API lattice_replica* lattice_replica_open(const char* path,
                                                  const lattice_replica_options* options,
                                                  lattice_error* error) LATTICE_NOEXCEPT;

/* Closes the database: finalizes the statements still prepared on it (they then fail with
 * LATTICE_ERR_STATE, but must still be finalized) and drops its subscriptions. The handle stays
 * valid; later calls on it fail with LATTICE_ERR_STATE. Closing twice is LATTICE_ERR_STATE. */
LATTICE_API lattice_code lattice_replica_close(lattice_replica* replica,
                                               lattice_error* error) LATTICE_NOEXCEPT;

/* Closes the replica if open and releases the handle. NULL is fine. Statements prepared on it
 * must still be finalized with lattice_stmt_finalize(). */
LATTICE_API void lattice_replica_free(lattice_replica* replica) LATTICE_NOEXCEPT;

/* Re-encrypts the file of a replica opened with an encryption_key under `new_key` (32 bytes,
 * BORROWED for the call), in place (docs/encryption.md, "Rotating the key"). The replica needs
 * the file to itself: other connections (a lattice_sync on the same file: stop it first) make
 * it wait busy_timeout_ms and then fail with LATTICE_ERR_BUSY, changing nothing. A rotation cut
 * short by a crash leaves the file under the old key. LATTICE_ERR_STATE for a plain replica or
 * inside a transaction, LATTICE_ERR_CORRUPT, LATTICE_ERR_IO. Added in API version 6. */
LATTICE_API lattice_code lattice_replica_rotate_key(lattice_replica* replica,
                                                    const uint8_t* new_key,
                                                    lattice_error* error) LATTICE_NOEXCEPT;

/* Runs one or more SQL statements (BEGIN and COMMIT included), discarding result rows.
 * LATTICE_ERR_SQL names the failing statement; LATTICE_ERR_SCHEMA for a refused ALTER or DROP
 * of a replicated table. */
LATTICE_API lattice_code lattice_replica_exec(lattice_replica* replica, const char* sql,
                                              lattice_error* error) LATTICE_NOEXCEPT;

/* Makes `table` replicated. `column_types_json` maps column names to "lww" or "counter", e.g.
 * {"votes": "counter"}; absent columns are "lww"; NULL means {}. LATTICE_ERR_SCHEMA names the
 * table and the reason (no primary key, a counter that is not an integer, other column types
 * than an earlier call gave, ...); LATTICE_ERR_INVALID_ARGUMENT for bad JSON. */
LATTICE_API lattice_code lattice_replica_replicate(lattice_replica* replica, const char* table,
                                                   const char* column_types_json,
                                                   lattice_error* error) LATTICE_NOEXCEPT;

/* Runs `sql`, the migration numbered `version` (1 and up), once: in one transaction, unless
 * the replica's schema version is already `version` or later (docs/schema-evolution.md).
 * `*ran` (may be NULL) says whether it ran. LATTICE_ERR_SCHEMA when migration `version` ran
 * before with other SQL; nothing of a failing migration is applied. */
LATTICE_API lattice_code lattice_replica_migrate(lattice_replica* replica, int64_t version,
                                                 const char* sql, bool* ran,
                                                 lattice_error* error) LATTICE_NOEXCEPT;

/* This replica's version vector as JSON, {"<32 hex digits site id>": seq, ...}, into `out`
 * (OWNED: free with lattice_buffer_free; NUL-terminated). */
LATTICE_API lattice_code lattice_replica_version_vector(lattice_replica* replica,
                                                        lattice_buffer* out,
                                                        lattice_error* error) LATTICE_NOEXCEPT;

/* The changes a holder of `since_json` (a version vector as lattice_replica_version_vector
 * writes it; NULL or "" for the empty vector: everything) lacks, as changeset bytes
 * (docs/changeset-format.md) into `out` (OWNED: free with lattice_buffer_free). With
 * `max_changes` > 0 the changeset is cut after about that many column changes at a transaction
 * boundary; call again with the receiver's new version vector to continue. 0: no limit.
 * LATTICE_ERR_INVALID_ARGUMENT for a malformed vector. */
LATTICE_API lattice_code lattice_replica_changes_since(lattice_replica* replica,
                                                       const char* since_json, size_t max_changes,
                                                       lattice_buffer* out,
                                                       lattice_error* error) LATTICE_NOEXCEPT;

/* Writes this replica's replicated state, as of one moment, to a new SQLite file at `path` (a
 * snapshot: every replicated table with its metadata and held rows; docs/architecture.md,
 * "Snapshots"). The version vector it holds, as JSON, into `held` (may be NULL; OWNED: free with
 * lattice_buffer_free). LATTICE_ERR_IO when `path` exists or cannot be written (nothing is left
 * there then); LATTICE_ERR_STATE inside an open transaction. */
LATTICE_API lattice_code lattice_replica_write_snapshot(lattice_replica* replica, const char* path,
                                                        lattice_buffer* held,
                                                        lattice_error* error) LATTICE_NOEXCEPT;

/* Installs the snapshot at `path` (lattice_replica_write_snapshot) into this replica, which must
 * have its replicated schema in place and must not have written or merged anything yet: how an
 * application seeds a new replica with a data set it ships or downloads, far faster than
 * merging the same changes. Afterwards the replica holds what merging every change of the
 * snapshot would give, under its own site id, and syncs from there; subscribers are not called
 * for the rows installed. The new version vector, as JSON, into `held` (may be NULL; OWNED). On
 * failure the replica is exactly as it was: LATTICE_ERR_STATE (not empty, or inside an open
 * transaction), LATTICE_ERR_SCHEMA (another replicated schema, or rows that break a constraint
 * this replica declares and the snapshot's source did not: sync change by change; the message
 * names the table), LATTICE_ERR_CORRUPT (not a snapshot, or one whose rows disagree with its
 * metadata), LATTICE_ERR_UNSUPPORTED_VERSION, LATTICE_ERR_COPIED_REPLICA (it holds this
 * replica's own changes), LATTICE_ERR_CLOCK_DRIFT, LATTICE_ERR_IO. */
LATTICE_API lattice_code lattice_replica_install_snapshot(lattice_replica* replica,
                                                          const char* path, lattice_buffer* held,
                                                          lattice_error* error) LATTICE_NOEXCEPT;

typedef struct lattice_apply_result {
  uint64_t received; /* column changes in the changeset */
  uint64_t applied;  /* of those, the ones that won and changed this replica */
} lattice_apply_result;

/* Merges changeset bytes (`size` bytes at `bytes`, BORROWED for the call) in one transaction;
 * `result` may be NULL. Idempotent; the order of changesets does not matter. On failure the
 * replica is exactly as it was: LATTICE_ERR_CORRUPT, LATTICE_ERR_TOO_LARGE or
 * LATTICE_ERR_UNSUPPORTED_VERSION for bytes that do not decode; LATTICE_ERR_UNKNOWN_TABLE,
 * LATTICE_ERR_UNKNOWN_COLUMN, LATTICE_ERR_TYPE_MISMATCH, LATTICE_ERR_SCHEMA for changes that do
 * not fit this replica; LATTICE_ERR_CLOCK_DRIFT; LATTICE_ERR_STATE inside an open transaction. */
LATTICE_API lattice_code lattice_replica_apply(lattice_replica* replica, const void* bytes,
                                               size_t size, lattice_apply_result* result,
                                               lattice_error* error) LATTICE_NOEXCEPT;

/* ---- Import and export (docs/import-export.md) ------------------------------------------------
 */

/* Called after each batch an import commits, and once before the first, on the thread that
 * called lattice_replica_import(): `records` read so far of `total` in the file, `rejected` of
 * them refused. It must not call the replica. */
typedef void (*lattice_import_progress_callback)(void* context, uint64_t records, uint64_t total,
                                                 uint64_t rejected);

typedef struct lattice_import_options {
  size_t struct_size;       /* sizeof(lattice_import_options) */
  const char* format;       /* "csv", "ndjson" or "json"; NULL: "csv" */
  const char* mapping_json; /* the mapping file's text (JSON); NULL: columns matched by name */
  const char* errors_path;  /* where to write the rejected records as CSV; NULL: not written */
  size_t batch_rows;        /* rows per transaction; 0: 100000 */
  lattice_import_progress_callback on_progress; /* NULL: none */
  void* context;                                /* passed to on_progress */
} lattice_import_options;
#define LATTICE_IMPORT_OPTIONS_INIT \
  { sizeof(lattice_import_options), NULL, NULL, NULL, 0, NULL, NULL }

typedef struct lattice_import_result {
  uint64_t records;   /* records in the file */
  uint64_t inserted;  /* rows that were not in the table */
  uint64_t updated;   /* rows that were, with some imported column different */
  uint64_t unchanged; /* rows equal in every imported column: nothing written */
  uint64_t rejected;  /* records refused, each a line of the errors file */
} lattice_import_result;

/* Imports the file at `path` (CSV, NDJSON or JSON) into `table`, which needs a primary key: each
 * record becomes a row, inserted when its key is new, updated when it differs, left alone when
 * equal, as this replica's own writes, in one transaction per batch. A record that does not fit
 * (a value that does not convert to its column's type, a constraint, a trigger's refusal) is
 * rejected alone and, with `errors_path`, written there with its record and line numbers, the
 * column and the reason; the call still returns LATTICE_OK (see result->rejected). A file that
 * cannot be read to its end is refused before anything is written: LATTICE_ERR_CORRUPT (not a
 * text file, an unclosed quote, JSON that is not an array of objects), LATTICE_ERR_TOO_LARGE
 * (over a limit); also LATTICE_ERR_IO, LATTICE_ERR_INVALID_ARGUMENT (a bad mapping, a header or
 * mapping naming no column, a key column not imported, an unknown format),
 * LATTICE_ERR_SCHEMA (no such table), LATTICE_ERR_STATE (inside an open transaction).
 * `options` and `result` may be NULL. Importing the same file again changes nothing. */
LATTICE_API lattice_code lattice_replica_import(lattice_replica* replica, const char* table,
                                                const char* path,
                                                const lattice_import_options* options,
                                                lattice_import_result* result,
                                                lattice_error* error) LATTICE_NOEXCEPT;

/* Exports the rows of `table_or_query` (a table or view name, in primary-key order for a table,
 * or one read-only SQL statement) as `format` ("csv", "ndjson" or "json"; NULL: "csv"): into the
 * file at `path` (written through PATH.tmp and a rename), or, when `path` is NULL, into `out`
 * (OWNED: free with lattice_buffer_free). Sets `*rows` (may be NULL) to the number of rows.
 * LATTICE_ERR_INVALID_ARGUMENT for a name that is neither, a statement that writes, text that
 * JSON cannot carry (not UTF-8), or neither `path` nor `out`; LATTICE_ERR_SQL when the query
 * fails; LATTICE_ERR_IO when the file cannot be written. */
LATTICE_API lattice_code lattice_replica_export(lattice_replica* replica,
                                                const char* table_or_query, const char* format,
                                                const char* path, lattice_buffer* out,
                                                uint64_t* rows,
                                                lattice_error* error) LATTICE_NOEXCEPT;

/* ---- Change subscriptions ------------------------------------------------------------------ */

/* One row touched by a committed transaction. Everything in it is BORROWED for the duration of
 * the callback. */
typedef struct lattice_change {
  const char* table;
  const lattice_value* primary_key; /* the key's values, in key order */
  size_t primary_key_count;
  const char* const* columns; /* the columns written; none for a delete */
  size_t column_count;
  bool deleted;
  bool merged; /* true: from lattice_replica_apply; false: a local write */
  /* NULL, or why a merge took the row out of its table (`deleted` is then true): it breaks a
   * declared constraint and waits in the lattice_conflicts view (docs/data-quality.md). One of
   * "unique", "check", "not_null", "foreign_key", "type", "trigger". */
  const char* conflict;
} lattice_change;

/* Receives the rows of one committed transaction, on the thread of the replica call that
 * committed it, after the commit. It may call lattice_replica_unsubscribe() on the same replica
 * but no other function on it. */
typedef void (*lattice_change_callback)(void* context, const lattice_change* changes, size_t count);

/* Calls `callback` with `context` after each transaction that touches replicated tables,
 * local or merged, until unsubscribed or closed. Writes are seen once they commit: a write by
 * a statement on this replica is delivered at the end of the call that finds no transaction
 * open. Sets `*subscription` to an id for lattice_replica_unsubscribe(). */
LATTICE_API lattice_code lattice_replica_subscribe(lattice_replica* replica,
                                                   lattice_change_callback callback, void* context,
                                                   int* subscription,
                                                   lattice_error* error) LATTICE_NOEXCEPT;

/* Removes a subscription; LATTICE_ERR_INVALID_ARGUMENT when `subscription` is not one. */
LATTICE_API lattice_code lattice_replica_unsubscribe(lattice_replica* replica, int subscription,
                                                     lattice_error* error) LATTICE_NOEXCEPT;

/* ---- Statements ---------------------------------------------------------------------------- */

/* A prepared SQL statement on a replica. Same thread rules as its replica. */
typedef struct lattice_stmt lattice_stmt;

/* Prepares one SQL statement (`sql` may end with a ';' and whitespace or comments, but hold no
 * second statement). Returns an OWNED handle, released with lattice_stmt_finalize(), or NULL:
 * LATTICE_ERR_SQL for SQL that does not compile, LATTICE_ERR_INVALID_ARGUMENT for an empty or
 * multi-statement `sql`, LATTICE_ERR_STATE on a closed replica. */
LATTICE_API lattice_stmt* lattice_stmt_prepare(lattice_replica* replica, const char* sql,
                                               lattice_error* error) LATTICE_NOEXCEPT;

/* Bind parameter `index` (1-based, as in SQLite: ?, ?NNN) to a value; text and blob bytes are
 * copied. Call before the first step or after lattice_stmt_reset(). Unbound parameters are NULL.
 * LATTICE_ERR_INVALID_ARGUMENT for an index out of range. */
LATTICE_API lattice_code lattice_stmt_bind_int64(lattice_stmt* stmt, int index, int64_t value,
                                                 lattice_error* error) LATTICE_NOEXCEPT;
LATTICE_API lattice_code lattice_stmt_bind_double(lattice_stmt* stmt, int index, double value,
                                                  lattice_error* error) LATTICE_NOEXCEPT;
/* `text` is UTF-8 of `size` bytes; size SIZE_MAX means NUL-terminated. */
LATTICE_API lattice_code lattice_stmt_bind_text(lattice_stmt* stmt, int index, const char* text,
                                                size_t size, lattice_error* error) LATTICE_NOEXCEPT;
/* `bytes` may be NULL when `size` is 0 (an empty blob). */
LATTICE_API lattice_code lattice_stmt_bind_blob(lattice_stmt* stmt, int index, const void* bytes,
                                                size_t size, lattice_error* error) LATTICE_NOEXCEPT;
LATTICE_API lattice_code lattice_stmt_bind_null(lattice_stmt* stmt, int index,
                                                lattice_error* error) LATTICE_NOEXCEPT;

/* Runs the statement to its next row. Returns LATTICE_ROW when a row is ready (read it with
 * lattice_stmt_column), LATTICE_DONE when finished (stepping again restarts it), or an error
 * code (LATTICE_ERR_SQL for a constraint, LATTICE_ERR_BUSY, LATTICE_ERR_SCHEMA, ...); after an
 * error, reset the statement before stepping again. Change callbacks of a write run when the
 * statement is done and no transaction is open. */
LATTICE_API lattice_code lattice_stmt_step(lattice_stmt* stmt,
                                           lattice_error* error) LATTICE_NOEXCEPT;

/* Rewinds the statement to before its first row, keeping its bindings. */
LATTICE_API lattice_code lattice_stmt_reset(lattice_stmt* stmt,
                                            lattice_error* error) LATTICE_NOEXCEPT;

/* Sets every parameter back to NULL. */
LATTICE_API lattice_code lattice_stmt_clear_bindings(lattice_stmt* stmt,
                                                     lattice_error* error) LATTICE_NOEXCEPT;

/* The number of result columns (0 for a statement that returns no rows, or a finalized or
 * closed one). */
LATTICE_API int lattice_stmt_column_count(lattice_stmt* stmt) LATTICE_NOEXCEPT;

/* The name of result column `index` (0-based): BORROWED, valid until the statement is finalized
 * or its replica closed. NULL on failure (LATTICE_ERR_INVALID_ARGUMENT, LATTICE_ERR_STATE). */
LATTICE_API const char* lattice_stmt_column_name(lattice_stmt* stmt, int index,
                                                 lattice_error* error) LATTICE_NOEXCEPT;

/* Reads column `index` (0-based) of the current row into `out`. Text and blob bytes are
 * BORROWED, valid until the next step, reset or finalize of this statement. LATTICE_ERR_STATE
 * when no row is ready; LATTICE_ERR_INVALID_ARGUMENT for an index out of range. */
LATTICE_API lattice_code lattice_stmt_column(lattice_stmt* stmt, int index, lattice_value* out,
                                             lattice_error* error) LATTICE_NOEXCEPT;

/* Finalizes the statement and releases the handle. NULL is fine. */
LATTICE_API void lattice_stmt_finalize(lattice_stmt* stmt) LATTICE_NOEXCEPT;

/* ---- Sync with a relay --------------------------------------------------------------------- */

/* A sync client (engine::SyncClient): keeps a replica file in sync with a relay on its own
 * thread, reconnecting with backoff, until stopped. Any thread may call it. */
typedef struct lattice_sync lattice_sync;

typedef enum lattice_sync_state {
  LATTICE_SYNC_OFFLINE = 0,
  LATTICE_SYNC_CONNECTING = 1,
  LATTICE_SYNC_SYNCING = 2, /* connected, catching up */
  LATTICE_SYNC_LIVE = 3     /* connected and caught up: changes flow as they happen */
} lattice_sync_state;

/* "offline", "connecting", "syncing", "live"; "unknown" otherwise. Static storage. */
LATTICE_API const char* lattice_sync_state_name(lattice_sync_state state) LATTICE_NOEXCEPT;

/* A snapshot handed to the status callback; everything BORROWED for the callback. */
typedef struct lattice_sync_status {
  lattice_sync_state state;
  uint64_t pending;       /* local transactions the relay has not acknowledged */
  bool in_sync;           /* relay acknowledged everything, and this replica holds its changes */
  bool fatal;             /* an error reconnecting cannot fix (bad token, ...): stays offline */
  const char* last_error; /* the latest failure, "" when none yet */
} lattice_sync_status;

/* Called on the sync client's thread whenever its status changes, one call at a time. It must
 * not block for long and must not call lattice_sync_stop() or lattice_sync_free(). */
typedef void (*lattice_sync_status_callback)(void* context, const lattice_sync_status* status);

/* Called on the sync client's thread when the relay refuses the token as unauthorized (it
 * expired on an open connection, or at a hello), with the relay's reason (BORROWED for the call).
 * Write a new NUL-terminated token into `out` (`capacity` bytes, room for any token a relay
 * accepts) and return true to reconnect with it at once; return false to give up (the client then
 * stays offline: fatal). It may block while it fetches a token (the client's I/O waits) and must
 * not call lattice_sync_stop() or lattice_sync_free(). Added in API version 2. */
typedef bool (*lattice_sync_token_callback)(void* context, const char* reason, char* out,
                                            size_t capacity);

typedef struct lattice_sync_options {
  size_t struct_size;         /* sizeof(lattice_sync_options) */
  const char* ca_file;        /* PEM certificates to trust besides the system's; NULL: none */
  bool allow_insecure_remote; /* allow ws:// to a host that is not loopback */
  int min_backoff_ms;         /* first reconnect delay; 0: 100 */
  int max_backoff_ms;         /* largest reconnect delay; 0: 30000 */
  int poll_interval_ms;       /* how often other connections' writes are looked for; 0: 50 */
  int connect_timeout_ms;     /* bound on one connection attempt; 0: 10000 */
  lattice_sync_status_callback on_status;  /* NULL: none */
  void* context;                           /* passed to on_status */
  lattice_sync_token_callback renew_token; /* NULL: an unauthorized token is fatal (API 2) */
  void* renew_context;                     /* passed to renew_token (API 2) */
  /* A replica that has written and merged nothing starts from a snapshot of the namespace the
   * relay serves, downloaded into `<replica_path>-snapshot` (resumed after an interruption) and
   * installed, then syncs what changed since; on any refusal it syncs change by change. True
   * turns this off: always change by change. Added in API version 5. */
  bool no_snapshot;
  /* The replica file's key when it is encrypted at rest: 32 bytes, copied at the call (see
   * lattice_replica_options). NULL: a plain file. Added in API version 6. */
  const uint8_t* encryption_key;
} lattice_sync_options;
#define LATTICE_SYNC_OPTIONS_INIT \
  { sizeof(lattice_sync_options), NULL, false, 0, 0, 0, 0, NULL, NULL, NULL, NULL, false, NULL }

/* Starts keeping the replica file at `replica_path` in sync with the relay at `url`
 * (wss://HOST:PORT/NAMESPACE, or ws:// to loopback) using bearer `token`; `options` may be NULL.
 * The client opens its own connection to the file: the application keeps writing through its
 * own lattice_replica and the client notices. Returns an OWNED handle, released with
 * lattice_sync_free(), or NULL: LATTICE_ERR_INVALID_ARGUMENT for a malformed or refused URL,
 * the errors of lattice_replica_open. Connection failures are not errors here: the client
 * retries and reports them through its status. */
LATTICE_API lattice_sync* lattice_sync_start(const char* replica_path, const char* url,
                                             const char* token, const lattice_sync_options* options,
                                             lattice_error* error) LATTICE_NOEXCEPT;

/* Closes the connection (waiting up to about 2 s for a clean close) and joins the client's
 * thread. Idempotent; a stopped client stays stopped, and its getters keep answering. */
LATTICE_API void lattice_sync_stop(lattice_sync* sync) LATTICE_NOEXCEPT;

/* Stops the client if running and releases the handle. NULL is fine. */
LATTICE_API void lattice_sync_free(lattice_sync* sync) LATTICE_NOEXCEPT;

/* The current state (LATTICE_SYNC_OFFLINE for NULL or a stopped client). */
LATTICE_API lattice_sync_state lattice_sync_get_state(lattice_sync* sync) LATTICE_NOEXCEPT;

/* Local transactions the relay has not acknowledged, as far as the client knows (0 for NULL). */
LATTICE_API uint64_t lattice_sync_get_pending(lattice_sync* sync) LATTICE_NOEXCEPT;

/* The latest failure as text into `out` (OWNED: free with lattice_buffer_free; "" when none
 * happened yet; not cleared by a later success). */
LATTICE_API lattice_code lattice_sync_get_last_error(lattice_sync* sync, lattice_buffer* out,
                                                     lattice_error* error) LATTICE_NOEXCEPT;

/* Blocks up to `timeout_ms` until the client is in sync, with every write committed to the file
 * before the call included, and sets `*in_sync` (true: in sync; false: timed out). Returns
 * LATTICE_ERR_STATE when the client is stopped or stopped trying after a fatal error (the
 * message gives its last error). */
LATTICE_API lattice_code lattice_sync_wait_in_sync(lattice_sync* sync, int timeout_ms,
                                                   bool* in_sync,
                                                   lattice_error* error) LATTICE_NOEXCEPT;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LATTICE_LATTICE_H */
