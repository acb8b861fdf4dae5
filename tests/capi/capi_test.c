/* The C API (lattice/lattice.h) exercised from C: every function, its error paths (bad SQL, bad
 * changeset bytes, use after close, NULL arguments) and live sync of two replicas through a real
 * lattice-relay.
 *
 *   capi_test [RELAY_PATH]
 *
 * RELAY_PATH (or the LATTICE_RELAY_PATH environment variable) is the lattice-relay executable;
 * without it the sync cases are skipped, loudly. LATTICE_RELAY_EMULATOR, when set, runs it
 * through an emulator (qemu-aarch64 for a cross build). Only POSIX calls (no glibc extensions), so
 * that it also runs cross-built under qemu-aarch64. Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lattice/lattice.h"

/* ---- A tiny test harness ------------------------------------------------------------------ */

static int g_checks = 0;
static int g_failures = 0;
static const char* g_case = "";

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    ++g_checks;                                                                             \
    if (!(cond)) {                                                                          \
      ++g_failures;                                                                         \
      fprintf(stderr, "%s:%d: [%s] CHECK failed: %s\n", __FILE__, __LINE__, g_case, #cond); \
    }                                                                                       \
  } while (0)

/* A call that must succeed; prints its error otherwise. */
#define CHECK_OK(call)                                                                      \
  do {                                                                                      \
    lattice_error check_ok_error_;                                                          \
    ++g_checks;                                                                             \
    if ((call) != LATTICE_OK) {                                                             \
      ++g_failures;                                                                         \
      fprintf(stderr, "%s:%d: [%s] %s failed: %s: %s\n", __FILE__, __LINE__, g_case, #call, \
              lattice_error_code_name(check_ok_error_.code), check_ok_error_.message);      \
    }                                                                                       \
  } while (0)
/* CHECK_OK's calls pass E as their error argument. */
#define E (&check_ok_error_)

/* A call that must fail with `code`, filling the error with a message. */
static void check_fails(const char* file, int line, const char* what, lattice_code got,
                        const lattice_error* error, lattice_code want) {
  ++g_checks;
  if (got != want || error->code != want || error->message[0] == '\0') {
    ++g_failures;
    fprintf(stderr, "%s:%d: [%s] %s: wanted %s, got %s (error %s: '%s')\n", file, line, g_case,
            what, lattice_error_code_name(want), lattice_error_code_name(got),
            lattice_error_code_name(error->code), error->message);
  }
}
#define CHECK_FAILS(call, err, want) check_fails(__FILE__, __LINE__, #call, (call), (err), (want))

static bool contains(const char* haystack, const char* needle) {
  return haystack && strstr(haystack, needle) != NULL;
}

static char g_dir[256];

static const char* path_in_dir(char* out, size_t size, const char* name) {
  snprintf(out, size, "%s/%s", g_dir, name);
  return out;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static const char* kSchema =
    "CREATE TABLE IF NOT EXISTS todo(id TEXT PRIMARY KEY, title TEXT, "
    "votes INTEGER NOT NULL DEFAULT 0, done REAL, icon BLOB)";

/* A replica file in the test directory with the todo table replicated. */
/* The todo table in a replica at `name`, encrypted under `key` unless it is NULL. */
static lattice_replica* open_todo_with_key(const char* name, const uint8_t* key) {
  char path[512];
  lattice_replica_options options = LATTICE_REPLICA_OPTIONS_INIT;
  options.encryption_key = key;
  lattice_replica* r = lattice_replica_open(path_in_dir(path, sizeof path, name), &options, NULL);
  CHECK(r != NULL);
  if (!r) return NULL;
  CHECK(lattice_replica_exec(r, kSchema, NULL) == LATTICE_OK);
  CHECK(lattice_replica_replicate(r, "todo", "{\"votes\": \"counter\"}", NULL) == LATTICE_OK);
  return r;
}

static lattice_replica* open_todo(const char* name) { return open_todo_with_key(name, NULL); }

/* The integer result of a one-row, one-column query, or -999 when there is none. */
static int64_t query_int(lattice_replica* r, const char* sql) {
  int64_t result = -999;
  lattice_stmt* s = lattice_stmt_prepare(r, sql, NULL);
  if (!s) return result;
  if (lattice_stmt_step(s, NULL) == LATTICE_ROW) {
    lattice_value v;
    if (lattice_stmt_column(s, 0, &v, NULL) == LATTICE_OK && v.type == LATTICE_INTEGER)
      result = v.integer;
  }
  lattice_stmt_finalize(s);
  return result;
}

/* The text of a one-row, one-column query into `out` ("" when none). */
static const char* query_text(lattice_replica* r, const char* sql, char* out, size_t size) {
  out[0] = '\0';
  lattice_stmt* s = lattice_stmt_prepare(r, sql, NULL);
  if (!s) return out;
  if (lattice_stmt_step(s, NULL) == LATTICE_ROW) {
    lattice_value v;
    if (lattice_stmt_column(s, 0, &v, NULL) == LATTICE_OK && v.type == LATTICE_TEXT)
      snprintf(out, size, "%s", v.bytes);
  }
  lattice_stmt_finalize(s);
  return out;
}

/* ---- Cases -------------------------------------------------------------------------------- */

static void test_names_and_version(void) {
  g_case = "names and version";
  CHECK(lattice_api_version() == LATTICE_API_VERSION);
  static const char* const kNames[] = {"ok",
                                       "invalid_argument",
                                       "corrupt",
                                       "unsupported_version",
                                       "too_large",
                                       "unknown_table",
                                       "unknown_column",
                                       "type_mismatch",
                                       "clock_drift",
                                       "sql",
                                       "io",
                                       "busy",
                                       "schema",
                                       "state",
                                       "internal",
                                       "unauthorized",
                                       "forbidden",
                                       "copied_replica",
                                       "key"};
  for (int code = 0; code <= LATTICE_ERR_KEY; ++code)
    CHECK(strcmp(lattice_error_code_name(code), kNames[code]) == 0);
  CHECK(strcmp(lattice_error_code_name(LATTICE_ROW), "row") == 0);
  CHECK(strcmp(lattice_error_code_name(LATTICE_DONE), "done") == 0);
  CHECK(strcmp(lattice_error_code_name(-1), "unknown") == 0);
  CHECK(strcmp(lattice_error_code_name(19), "unknown") == 0);
  CHECK(strcmp(lattice_sync_state_name(LATTICE_SYNC_OFFLINE), "offline") == 0);
  CHECK(strcmp(lattice_sync_state_name(LATTICE_SYNC_CONNECTING), "connecting") == 0);
  CHECK(strcmp(lattice_sync_state_name(LATTICE_SYNC_SYNCING), "syncing") == 0);
  CHECK(strcmp(lattice_sync_state_name(LATTICE_SYNC_LIVE), "live") == 0);
  CHECK(strcmp(lattice_sync_state_name((lattice_sync_state)42), "unknown") == 0);
  lattice_buffer empty = {NULL, 0};
  lattice_buffer_free(&empty); /* an empty buffer and NULL are fine */
  lattice_buffer_free(NULL);
}

static void test_open(void) {
  g_case = "open";
  lattice_error error;
  char path[512];

  /* The error is left alone on success. */
  error.code = 12345;
  lattice_replica_options options = LATTICE_REPLICA_OPTIONS_INIT;
  options.synchronous = "full";
  options.busy_timeout_ms = 100;
  lattice_replica* r =
      lattice_replica_open(path_in_dir(path, sizeof path, "open.db"), &options, &error);
  CHECK(r != NULL);
  CHECK(error.code == 12345);
  lattice_replica_free(r);

  CHECK(lattice_replica_open(NULL, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "path"));

  CHECK(lattice_replica_open(path_in_dir(path, sizeof path, "no/such/dir/x.db"), NULL, &error) ==
        NULL);
  CHECK(error.code == LATTICE_ERR_IO && contains(error.message, "no/such/dir"));

  options.synchronous = "FULL; DROP TABLE x";
  CHECK(lattice_replica_open(path, &options, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "synchronous"));

  lattice_replica_options zero;
  memset(&zero, 0, sizeof zero);
  CHECK(lattice_replica_open(path, &zero, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "struct_size"));

  /* A NULL error is fine. */
  CHECK(lattice_replica_open(NULL, NULL, NULL) == NULL);

  /* In memory. */
  r = lattice_replica_open(":memory:", NULL, &error);
  CHECK(r != NULL);
  CHECK(query_int(r, "SELECT 6 * 7") == 42);
  lattice_replica_free(r);
  lattice_replica_free(NULL);
}

/* A replica encrypted at rest: only its own key opens it; the file holds no plaintext. */
static void test_encrypted(void) {
  char path[4096];
  lattice_error error;
  uint8_t key[32], other[32];
  for (int i = 0; i < 32; ++i) {
    key[i] = (uint8_t)(i * 7 + 1);
    other[i] = (uint8_t)(i * 7 + 2);
  }
  path_in_dir(path, sizeof path, "sealed.db");
  lattice_replica_options options = LATTICE_REPLICA_OPTIONS_INIT;
  options.encryption_key = key;
  lattice_replica* r = lattice_replica_open(path, &options, &error);
  CHECK(r != NULL);
  CHECK(lattice_replica_exec(r,
                             "CREATE TABLE diary(id TEXT PRIMARY KEY, entry TEXT);"
                             "SELECT lattice_replicate('diary');"
                             "INSERT INTO diary VALUES ('d1', 'the hidden orchard')",
                             &error) == LATTICE_OK);
  lattice_replica_free(r);

  FILE* file = fopen(path, "rb");
  CHECK(file != NULL);
  static char bytes[1 << 20];
  const size_t size = file ? fread(bytes, 1, sizeof bytes, file) : 0;
  if (file) fclose(file);
  CHECK(size > 0);
  bool plaintext = false;
  for (size_t i = 0; i + 7 <= size; ++i)
    plaintext = plaintext || memcmp(bytes + i, "orchard", 7) == 0;
  CHECK(!plaintext);

  CHECK(lattice_replica_open(path, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_KEY && contains(error.message, "without its key"));
  options.encryption_key = other;
  CHECK(lattice_replica_open(path, &options, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_KEY && contains(error.message, "does not decrypt"));
  options.encryption_key = key;
  r = lattice_replica_open(path, &options, &error);
  CHECK(r != NULL);
  CHECK(query_int(r, "SELECT count(*) FROM diary WHERE entry LIKE '%orchard'") == 1);

  /* Rotation: afterwards only the new key opens the file. */
  CHECK(lattice_replica_rotate_key(r, NULL, &error) == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_replica_rotate_key(r, other, &error) == LATTICE_OK);
  CHECK(lattice_replica_exec(r, "INSERT INTO diary VALUES ('d2', 'after the rotation')", &error) ==
        LATTICE_OK);
  lattice_replica_free(r);
  CHECK(lattice_replica_open(path, &options, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_KEY);
  options.encryption_key = other;
  r = lattice_replica_open(path, &options, &error);
  CHECK(r != NULL);
  if (r) CHECK(query_int(r, "SELECT count(*) FROM diary") == 2);
  lattice_replica_free(r);
  r = lattice_replica_open(":memory:", NULL, &error);
  CHECK(r != NULL);
  if (r) CHECK(lattice_replica_rotate_key(r, key, &error) == LATTICE_ERR_STATE);
  lattice_replica_free(r);
}

static void test_statements(void) {
  g_case = "statements";
  lattice_error error;
  lattice_replica* r = open_todo("stmt.db");
  if (!r) return;

  lattice_stmt* insert = lattice_stmt_prepare(
      r, "INSERT INTO todo(id, title, votes, done, icon) VALUES (?, ?, ?, ?, ?);  -- one row",
      &error);
  CHECK(insert != NULL);
  if (!insert) return;
  CHECK(lattice_stmt_column_count(insert) == 0);
  static const unsigned char kIcon[] = {0x00, 0xff, 0x10, 0x00, 0x7f};
  CHECK_OK(lattice_stmt_bind_text(insert, 1, "a", SIZE_MAX, E));
  CHECK_OK(lattice_stmt_bind_text(insert, 2, "buy milk and more", 8, E)); /* "buy milk" */
  CHECK_OK(lattice_stmt_bind_int64(insert, 3, INT64_C(9007199254740993), E));
  CHECK_OK(lattice_stmt_bind_double(insert, 4, 0.25, E));
  CHECK_OK(lattice_stmt_bind_blob(insert, 5, kIcon, sizeof kIcon, E));
  CHECK(lattice_stmt_step(insert, &error) == LATTICE_DONE);

  /* Reset keeps bindings; rebind some; clear_bindings makes the rest NULL. */
  CHECK_OK(lattice_stmt_reset(insert, E));
  CHECK_OK(lattice_stmt_clear_bindings(insert, E));
  CHECK_OK(lattice_stmt_bind_text(insert, 1, "b", 1, E));
  CHECK_OK(lattice_stmt_bind_null(insert, 2, E));
  CHECK_OK(lattice_stmt_bind_int64(insert, 3, -3, E));
  CHECK_OK(lattice_stmt_bind_blob(insert, 5, NULL, 0, E)); /* an empty blob, not NULL */
  CHECK(lattice_stmt_step(insert, &error) == LATTICE_DONE);

  /* A constraint violation is reported by step; then reset and go on. */
  CHECK_OK(lattice_stmt_reset(insert, E));
  CHECK_FAILS(lattice_stmt_step(insert, &error), &error, LATTICE_ERR_SQL);
  CHECK(contains(error.message, "UNIQUE"));
  CHECK_OK(lattice_stmt_reset(insert, E));

  /* Binding errors. */
  CHECK_FAILS(lattice_stmt_bind_int64(insert, 0, 1, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_int64(insert, 6, 1, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(contains(error.message, "out of range"));
  CHECK_FAILS(lattice_stmt_bind_double(insert, 6, 1.0, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_text(insert, 6, "x", 1, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_text(insert, 1, NULL, 0, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_blob(insert, 6, "x", 1, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_blob(insert, 1, NULL, 3, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_null(insert, 6, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  lattice_stmt_finalize(insert);

  /* Read both rows back with every type. */
  lattice_stmt* select = lattice_stmt_prepare(
      r, "SELECT id, title, votes, done, icon FROM todo WHERE votes <> ? ORDER BY id", &error);
  CHECK(select != NULL);
  if (!select) return;
  CHECK_OK(lattice_stmt_bind_int64(select, 1, 12345, E));
  CHECK(lattice_stmt_column_count(select) == 5);
  CHECK(strcmp(lattice_stmt_column_name(select, 0, &error), "id") == 0);
  CHECK(strcmp(lattice_stmt_column_name(select, 4, &error), "icon") == 0);
  CHECK(lattice_stmt_column_name(select, 5, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_stmt_column_name(select, -1, &error) == NULL);

  lattice_value v;
  CHECK_FAILS(lattice_stmt_column(select, 0, &v, &error), &error, LATTICE_ERR_STATE);
  CHECK(contains(error.message, "no row"));

  CHECK(lattice_stmt_step(select, &error) == LATTICE_ROW);
  CHECK_OK(lattice_stmt_column(select, 0, &v, E));
  CHECK(v.type == LATTICE_TEXT && v.size == 1 && strcmp(v.bytes, "a") == 0);
  CHECK_OK(lattice_stmt_column(select, 1, &v, E));
  CHECK(v.type == LATTICE_TEXT && v.size == 8 && memcmp(v.bytes, "buy milk", 8) == 0 &&
        v.bytes[8] == '\0');
  CHECK_OK(lattice_stmt_column(select, 2, &v, E));
  CHECK(v.type == LATTICE_INTEGER && v.integer == INT64_C(9007199254740993));
  CHECK_OK(lattice_stmt_column(select, 3, &v, E));
  CHECK(v.type == LATTICE_REAL && v.real == 0.25);
  CHECK_OK(lattice_stmt_column(select, 4, &v, E));
  CHECK(v.type == LATTICE_BLOB && v.size == sizeof kIcon && memcmp(v.bytes, kIcon, v.size) == 0);
  CHECK_FAILS(lattice_stmt_column(select, 5, &v, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_column(select, 0, NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  /* Binding while running is refused until reset. */
  CHECK_FAILS(lattice_stmt_bind_int64(select, 1, 0, &error), &error, LATTICE_ERR_STATE);

  CHECK(lattice_stmt_step(select, &error) == LATTICE_ROW);
  CHECK_OK(lattice_stmt_column(select, 0, &v, E));
  CHECK(v.type == LATTICE_TEXT && strcmp(v.bytes, "b") == 0);
  CHECK_OK(lattice_stmt_column(select, 1, &v, E));
  CHECK(v.type == LATTICE_NULL && v.bytes == NULL);
  CHECK_OK(lattice_stmt_column(select, 2, &v, E));
  CHECK(v.type == LATTICE_INTEGER && v.integer == -3);
  CHECK_OK(lattice_stmt_column(select, 3, &v, E));
  CHECK(v.type == LATTICE_NULL);
  CHECK_OK(lattice_stmt_column(select, 4, &v, E));
  CHECK(v.type == LATTICE_BLOB && v.size == 0 && v.bytes != NULL);

  CHECK(lattice_stmt_step(select, &error) == LATTICE_DONE);
  CHECK_FAILS(lattice_stmt_column(select, 0, &v, &error), &error, LATTICE_ERR_STATE);
  /* Stepping after done starts over. */
  CHECK(lattice_stmt_step(select, &error) == LATTICE_ROW);
  lattice_stmt_finalize(select);
  lattice_stmt_finalize(NULL);

  /* Prepare errors. */
  CHECK(lattice_stmt_prepare(r, "SELEC 1", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_SQL && contains(error.message, "syntax error"));
  CHECK(lattice_stmt_prepare(r, "SELECT * FROM no_such_table", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_SQL && contains(error.message, "no_such_table"));
  CHECK(lattice_stmt_prepare(r, "SELECT 1; SELECT 2", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "more than one"));
  CHECK(lattice_stmt_prepare(r, "  -- nothing", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_stmt_prepare(r, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_stmt_prepare(NULL, "SELECT 1", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  /* Lattice's own refusals come through with their code, not as a generic SQL error. */
  CHECK(lattice_stmt_prepare(r, "DROP TABLE todo", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_SCHEMA && contains(error.message, "todo"));
  lattice_stmt* key_update =
      lattice_stmt_prepare(r, "UPDATE todo SET id = 'z' WHERE id = 'a'", &error);
  CHECK(key_update != NULL);
  CHECK_FAILS(lattice_stmt_step(key_update, &error), &error, LATTICE_ERR_SQL);
  CHECK(contains(error.message, "primary key"));
  lattice_stmt_finalize(key_update);

  /* exec and replicate errors. */
  CHECK_FAILS(lattice_replica_exec(r, "CREATE TABLE t(x); SELEC 1", &error), &error,
              LATTICE_ERR_SQL);
  CHECK(contains(error.message, "SELEC 1"));
  CHECK_FAILS(lattice_replica_exec(r, "ALTER TABLE todo RENAME COLUMN id TO key", &error), &error,
              LATTICE_ERR_SCHEMA);
  /* Schema changes of a replicated table go through exec or migrate, not a statement. */
  CHECK(lattice_stmt_prepare(r, "ALTER TABLE todo ADD COLUMN y", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_SCHEMA && contains(error.message, "lattice_replica_exec"));
  CHECK_FAILS(lattice_replica_exec(r, NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_replicate(r, "t", NULL, &error), &error, LATTICE_ERR_SCHEMA);
  CHECK(contains(error.message, "PRIMARY KEY"));
  CHECK_FAILS(lattice_replica_replicate(r, "todo", "{\"votes\": ", &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_replicate(r, "todo", "{\"votes\": \"lww\"}", &error), &error,
              LATTICE_ERR_SCHEMA);
  CHECK_FAILS(lattice_replica_replicate(r, NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  lattice_replica_free(r);
}

/* Everything a change callback saw, copied out. */
typedef struct {
  int calls;
  int count;
  char table[32];
  char key[32];
  int key_count;
  char columns[128];
  bool deleted;
  bool merged;
  char conflict[16];  /* the last non-NULL conflict of any change seen */
  int unsubscribe_id; /* when > 0, the callback unsubscribes itself */
  lattice_replica* replica;
} Seen;

static void on_change(void* context, const lattice_change* changes, size_t count) {
  Seen* seen = (Seen*)context;
  ++seen->calls;
  seen->count += (int)count;
  const lattice_change* last = &changes[count - 1];
  snprintf(seen->table, sizeof seen->table, "%s", last->table);
  seen->key_count = (int)last->primary_key_count;
  seen->key[0] = '\0';
  if (last->primary_key_count > 0 && last->primary_key[0].type == LATTICE_TEXT)
    snprintf(seen->key, sizeof seen->key, "%s", last->primary_key[0].bytes);
  seen->columns[0] = '\0';
  for (size_t i = 0; i < last->column_count; ++i) {
    if (i) strncat(seen->columns, ",", sizeof seen->columns - strlen(seen->columns) - 1);
    strncat(seen->columns, last->columns[i], sizeof seen->columns - strlen(seen->columns) - 1);
  }
  seen->deleted = last->deleted;
  seen->merged = last->merged;
  for (size_t i = 0; i < count; ++i)
    if (changes[i].conflict)
      snprintf(seen->conflict, sizeof seen->conflict, "%s", changes[i].conflict);
  if (seen->unsubscribe_id > 0) {
    CHECK(lattice_replica_unsubscribe(seen->replica, seen->unsubscribe_id, NULL) == LATTICE_OK);
    seen->unsubscribe_id = 0;
  }
}

static void test_changesets_and_subscriptions(void) {
  g_case = "changesets and subscriptions";
  lattice_error error;
  lattice_replica* a = open_todo("a.db");
  lattice_replica* b = open_todo("b.db");
  if (!a || !b) return;

  Seen seen_a, seen_b;
  memset(&seen_a, 0, sizeof seen_a);
  memset(&seen_b, 0, sizeof seen_b);
  int sub_a = 0, sub_b = 0;
  CHECK_OK(lattice_replica_subscribe(a, on_change, &seen_a, &sub_a, E));
  CHECK_OK(lattice_replica_subscribe(b, on_change, &seen_b, &sub_b, E));
  CHECK(sub_a > 0 && sub_b > 0);

  /* Local writes, through exec and through a statement. */
  CHECK_OK(lattice_replica_exec(a, "INSERT INTO todo(id, title) VALUES ('x', 'buy milk')", E));
  CHECK(seen_a.calls == 1 && seen_a.count == 1);
  CHECK(strcmp(seen_a.table, "todo") == 0 && strcmp(seen_a.key, "x") == 0);
  CHECK(seen_a.key_count == 1 && !seen_a.deleted && !seen_a.merged);
  lattice_stmt* vote =
      lattice_stmt_prepare(a, "UPDATE todo SET votes = votes + 1 WHERE id = ?", &error);
  CHECK(vote != NULL);
  CHECK_OK(lattice_stmt_bind_text(vote, 1, "x", SIZE_MAX, E));
  CHECK(lattice_stmt_step(vote, &error) == LATTICE_DONE);
  CHECK(seen_a.calls == 2 && strcmp(seen_a.columns, "votes") == 0);
  lattice_stmt_finalize(vote);
  /* A transaction is delivered once, at its commit. */
  CHECK_OK(lattice_replica_exec(a,
                                "BEGIN; INSERT INTO todo(id, title) VALUES ('y', 'walk');"
                                "INSERT INTO todo(id, title) VALUES ('z', 'read'); COMMIT",
                                E));
  CHECK(seen_a.calls == 3 && seen_a.count == 4);

  /* a -> b: everything. */
  lattice_buffer changes = {NULL, 0};
  CHECK_OK(lattice_replica_changes_since(a, NULL, 0, &changes, E));
  CHECK(changes.data != NULL && changes.size > 0);
  lattice_apply_result result = {0, 0};
  CHECK_OK(lattice_replica_apply(b, changes.data, changes.size, &result, E));
  CHECK(result.received > 0 && result.applied == result.received);
  CHECK(seen_b.calls == 1 && seen_b.count == 3 && seen_b.merged);
  CHECK(query_int(b, "SELECT votes FROM todo WHERE id = 'x'") == 1);
  char text[128];
  CHECK(strcmp(query_text(b, "SELECT title FROM todo WHERE id = 'x'", text, sizeof text),
               "buy milk") == 0);
  /* Applying again changes nothing; result may be NULL. */
  CHECK_OK(lattice_replica_apply(b, changes.data, changes.size, NULL, E));
  CHECK(query_int(b, "SELECT count(*) FROM todo") == 3);

  /* Bad bytes: each damaged form is refused, and b is as it was. */
  CHECK_FAILS(lattice_replica_apply(b, changes.data, changes.size / 2, NULL, &error), &error,
              LATTICE_ERR_CORRUPT);
  CHECK(contains(error.message, "byte") || contains(error.message, "truncated"));
  static const unsigned char kGarbage[] = {0xc1, 0x00, 0x13, 0x37};
  CHECK_FAILS(lattice_replica_apply(b, kGarbage, sizeof kGarbage, NULL, &error), &error,
              LATTICE_ERR_CORRUPT);
  CHECK_FAILS(lattice_replica_apply(b, NULL, 0, NULL, &error), &error, LATTICE_ERR_CORRUPT);
  CHECK_FAILS(lattice_replica_apply(b, NULL, 5, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(query_int(b, "SELECT count(*) FROM todo") == 3);

  /* A replica that does not replicate the table yet (an older schema version) keeps the
   * changes; replicating the table later shows them. */
  lattice_replica* bare = lattice_replica_open(":memory:", NULL, &error);
  CHECK(bare != NULL);
  CHECK_OK(lattice_replica_apply(bare, changes.data, changes.size, NULL, E));
  CHECK_OK(lattice_replica_exec(bare, kSchema, E));
  CHECK_OK(lattice_replica_replicate(bare, "todo", "{\"votes\": \"counter\"}", E));
  CHECK(query_int(bare, "SELECT count(*) FROM todo") == 3);
  lattice_replica_free(bare);

  /* Not inside an open transaction. */
  CHECK_OK(lattice_replica_exec(b, "BEGIN", E));
  CHECK_FAILS(lattice_replica_apply(b, changes.data, changes.size, NULL, &error), &error,
              LATTICE_ERR_STATE);
  CHECK_OK(lattice_replica_exec(b, "ROLLBACK", E));
  lattice_buffer_free(&changes);
  CHECK(changes.data == NULL && changes.size == 0);

  /* b -> a, since a's vector: only b's own write, which a's subscription sees as merged. */
  CHECK_OK(lattice_replica_exec(b, "UPDATE todo SET title = 'buy oat milk' WHERE id = 'x'", E));
  CHECK(seen_b.calls == 2 && !seen_b.merged && strcmp(seen_b.columns, "title") == 0);
  lattice_buffer vv_a = {NULL, 0};
  CHECK_OK(lattice_replica_version_vector(a, &vv_a, E));
  CHECK(vv_a.data != NULL && vv_a.data[0] == '{' && vv_a.data[vv_a.size] == '\0');
  CHECK_OK(lattice_replica_changes_since(b, (const char*)vv_a.data, 0, &changes, E));
  CHECK_OK(lattice_replica_apply(a, changes.data, changes.size, &result, E));
  CHECK(result.received == 1 && result.applied == 1);
  CHECK(seen_a.merged && strcmp(seen_a.columns, "title") == 0 && strcmp(seen_a.key, "x") == 0);
  CHECK(strcmp(query_text(a, "SELECT title FROM todo WHERE id = 'x'", text, sizeof text),
               "buy oat milk") == 0);
  lattice_buffer_free(&changes);
  lattice_buffer_free(&vv_a);

  /* The vectors now agree, so nothing is missing either way. */
  lattice_buffer vv_b = {NULL, 0};
  CHECK_OK(lattice_replica_version_vector(a, &vv_a, E));
  CHECK_OK(lattice_replica_version_vector(b, &vv_b, E));
  CHECK(vv_a.size == vv_b.size && memcmp(vv_a.data, vv_b.data, vv_a.size) == 0);
  CHECK_OK(lattice_replica_changes_since(a, (const char*)vv_b.data, 0, &changes, E));
  CHECK_OK(lattice_replica_apply(b, changes.data, changes.size, &result, E));
  CHECK(result.received == 0 && result.applied == 0);
  lattice_buffer_free(&changes);
  lattice_buffer_free(&vv_b);
  lattice_buffer_free(&vv_a);

  /* Bad version vectors. */
  CHECK_FAILS(lattice_replica_changes_since(a, "{\"zz\": 1}", 0, &changes, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_changes_since(a, "[", 0, &changes, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_changes_since(a, NULL, 0, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_version_vector(a, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);

  /* In chunks: a fresh replica catches up from a, one transaction at a time. */
  lattice_replica* c = open_todo("c.db");
  int rounds = 0;
  for (; rounds < 20; ++rounds) {
    lattice_buffer vv_c = {NULL, 0};
    CHECK_OK(lattice_replica_version_vector(c, &vv_c, E));
    CHECK_OK(lattice_replica_changes_since(a, (const char*)vv_c.data, 1, &changes, E));
    CHECK_OK(lattice_replica_apply(c, changes.data, changes.size, &result, E));
    lattice_buffer_free(&changes);
    lattice_buffer_free(&vv_c);
    if (result.received == 0) break;
  }
  CHECK(rounds >= 3 && rounds < 20);
  CHECK(query_int(c, "SELECT count(*) FROM todo") == 3);
  CHECK(query_int(c, "SELECT votes FROM todo WHERE id = 'x'") == 1);
  lattice_replica_free(c);

  /* Unsubscribing: unknown ids are refused; a callback may unsubscribe itself. */
  CHECK_FAILS(lattice_replica_unsubscribe(a, sub_a + 1000, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_OK(lattice_replica_unsubscribe(b, sub_b, E));
  CHECK_FAILS(lattice_replica_unsubscribe(b, sub_b, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  const int b_calls = seen_b.calls;
  CHECK_OK(lattice_replica_exec(b, "DELETE FROM todo WHERE id = 'z'", E));
  CHECK(seen_b.calls == b_calls);
  seen_a.unsubscribe_id = sub_a;
  seen_a.replica = a;
  CHECK_OK(lattice_replica_exec(a, "DELETE FROM todo WHERE id = 'z'", E));
  CHECK(seen_a.deleted && strcmp(seen_a.columns, "") == 0 && seen_a.unsubscribe_id == 0);
  const int a_calls = seen_a.calls;
  CHECK_OK(lattice_replica_exec(a, "DELETE FROM todo WHERE id = 'y'", E));
  CHECK(seen_a.calls == a_calls);
  CHECK_FAILS(lattice_replica_subscribe(a, NULL, NULL, &sub_a, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_subscribe(a, on_change, NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);

  lattice_replica_free(a);
  lattice_replica_free(b);
}

/* A merged row that breaks a UNIQUE constraint is held: the callback says so, and the
 * lattice_conflicts view names it (docs/data-quality.md). */
static void test_held_rows(void) {
  g_case = "held rows";
  static const char* kUsers =
      "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);"
      "SELECT lattice_replicate('users')";
  lattice_replica* a = lattice_replica_open(":memory:", NULL, NULL);
  lattice_replica* b = lattice_replica_open(":memory:", NULL, NULL);
  CHECK(a && b);
  if (!a || !b) return;
  CHECK_OK(lattice_replica_exec(a, kUsers, E));
  CHECK_OK(lattice_replica_exec(b, kUsers, E));
  CHECK_OK(lattice_replica_exec(a, "INSERT INTO users VALUES ('u1', 'x@example.com', 'a')", E));
  CHECK_OK(lattice_replica_exec(b, "INSERT INTO users VALUES ('u2', 'x@example.com', 'b')", E));
  Seen seen;
  memset(&seen, 0, sizeof seen);
  int sub = 0;
  CHECK_OK(lattice_replica_subscribe(b, on_change, &seen, &sub, E));
  lattice_buffer changes = {NULL, 0};
  CHECK_OK(lattice_replica_changes_since(a, NULL, 0, &changes, E));
  CHECK_OK(lattice_replica_apply(b, changes.data, changes.size, NULL, E));
  lattice_buffer_free(&changes);
  CHECK(strcmp(seen.conflict, "unique") == 0);
  CHECK(query_int(b, "SELECT count(*) FROM users") == 1);
  char text[64];
  CHECK(strcmp(query_text(b, "SELECT reason FROM lattice_conflicts", text, sizeof text),
               "unique") == 0);
  lattice_replica_free(a);
  lattice_replica_free(b);
}

/* Writes `text` to the file `name` in the test directory; returns its path in `out`. */
static const char* write_test_file(char* out, size_t size, const char* name, const char* text) {
  path_in_dir(out, size, name);
  FILE* f = fopen(out, "wb");
  CHECK(f != NULL);
  if (!f) return out;
  fputs(text, f);
  fclose(f);
  return out;
}

static void on_import_progress(void* context, uint64_t records, uint64_t total, uint64_t rejected) {
  uint64_t* last = (uint64_t*)context;
  last[0] = records;
  last[1] = total;
  last[2] = rejected;
}

static void test_import_export(void) {
  g_case = "import and export";
  lattice_replica* r = open_todo("import.db");
  lattice_error error;
  char csv[512], rejected_path[512];
  write_test_file(csv, sizeof csv, "todo.csv",
                  "id,title,votes,done\n"
                  "a,\"buy milk, eggs\",3,0.5\n"
                  "b,walk,notanint,1\n"
                  "c,\"\",,\n");
  path_in_dir(rejected_path, sizeof rejected_path, "rejected.csv");

  lattice_import_options options = LATTICE_IMPORT_OPTIONS_INIT;
  uint64_t progress[3] = {0, 0, 0};
  options.errors_path = rejected_path;
  options.on_progress = on_import_progress;
  options.context = progress;
  lattice_import_result result;
  CHECK_OK(lattice_replica_import(r, "todo", csv, &options, &result, E));
  CHECK(result.records == 3 && result.inserted == 1 && result.rejected == 2);
  CHECK(progress[0] == 3 && progress[1] == 3 && progress[2] == 2);
  char text[512];
  CHECK(strcmp(query_text(r, "SELECT title FROM todo WHERE id = 'a'", text, sizeof text),
               "buy milk, eggs") == 0);
  FILE* f = fopen(rejected_path, "rb");
  CHECK(f != NULL);
  if (f) {
    char buffer[1024] = {0};
    CHECK(fread(buffer, 1, sizeof buffer - 1, f) > 0);
    fclose(f);
    CHECK(contains(buffer, "record,line,column,reason,data"));
    CHECK(contains(buffer, "2,3,votes,'notanint' is not an integer"));
    CHECK(contains(buffer, "3,4,votes,\"counter column todo.votes takes integer values only"));
  }
  /* Again: nothing changes. */
  CHECK_OK(lattice_replica_import(r, "todo", csv, &options, &result, E));
  CHECK(result.unchanged == 1 && result.inserted == 0 && result.updated == 0);

  /* Export into a buffer and into a file; the file reads back the same rows. */
  lattice_buffer out = {NULL, 0};
  uint64_t rows = 0;
  CHECK_OK(lattice_replica_export(r, "todo", "ndjson", NULL, &out, &rows, E));
  CHECK(rows == 1);
  CHECK(out.data && contains((const char*)out.data, "\"title\": \"buy milk, eggs\""));
  lattice_buffer_free(&out);
  char exported[512];
  path_in_dir(exported, sizeof exported, "todo.json");
  CHECK_OK(lattice_replica_export(r, "SELECT * FROM todo", "json", exported, NULL, &rows, E));
  lattice_replica* copy = open_todo("import-copy.db");
  lattice_import_options json = LATTICE_IMPORT_OPTIONS_INIT;
  json.format = "json";
  CHECK_OK(lattice_replica_import(copy, "todo", exported, &json, &result, E));
  CHECK(result.inserted == 1);
  CHECK(query_int(copy, "SELECT votes FROM todo WHERE id = 'a'") == 3);

  /* Errors: a file that is not text is refused whole; bad arguments. */
  char binary[512];
  write_test_file(binary, sizeof binary, "binary.csv", "id,title\nx,\001\002");
  f = fopen(binary, "ab");
  if (f) {
    fputc(0, f);
    fclose(f);
  }
  CHECK_FAILS(lattice_replica_import(r, "todo", binary, NULL, &result, &error), &error,
              LATTICE_ERR_CORRUPT);
  CHECK(contains(error.message, "binary.csv") && contains(error.message, "NUL"));
  CHECK(query_int(r, "SELECT count(*) FROM todo") == 1);
  json.format = "xml";
  CHECK_FAILS(lattice_replica_import(r, "todo", csv, &json, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_import(r, "nope", csv, NULL, NULL, &error), &error,
              LATTICE_ERR_SCHEMA);
  CHECK_FAILS(lattice_replica_export(r, "todo", "csv", NULL, NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_export(r, "DELETE FROM todo", NULL, NULL, &out, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(query_int(r, "SELECT count(*) FROM todo") == 1);
  lattice_replica_free(copy);
  lattice_replica_free(r);
}

/* Migrations run once; a column added to a replicated table is captured. */
static void test_migrate(void) {
  g_case = "migrate";
  lattice_error error;
  lattice_replica* r = lattice_replica_open(":memory:", NULL, NULL);
  CHECK(r != NULL);
  if (!r) return;
  bool ran = false;
  CHECK_OK(lattice_replica_migrate(
      r, 1, "CREATE TABLE note(id TEXT PRIMARY KEY, body TEXT); SELECT lattice_replicate('note')",
      &ran, E));
  CHECK(ran);
  CHECK_OK(lattice_replica_migrate(r, 2, "ALTER TABLE note ADD COLUMN pinned INTEGER", &ran, E));
  CHECK(ran);
  CHECK_OK(lattice_replica_migrate(r, 2, "ALTER TABLE note ADD COLUMN pinned INTEGER", &ran, E));
  CHECK(!ran);
  CHECK_FAILS(lattice_replica_migrate(r, 2, "SELECT 1", NULL, &error), &error, LATTICE_ERR_SCHEMA);
  CHECK_FAILS(lattice_replica_migrate(r, 3, NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_OK(lattice_replica_exec(r, "INSERT INTO note VALUES ('a', 'hi', 1)", E));
  CHECK(query_int(r, "SELECT pinned FROM note") == 1);
  lattice_replica_free(r);
}

/* A snapshot seeds a new replica with another's rows; it then writes as itself. */
static void test_snapshots(void) {
  g_case = "snapshots";
  lattice_error error;
  char path[512], vector[512];
  lattice_replica* shop = open_todo("shop.db");
  lattice_replica* phone = open_todo("phone.db");
  if (!shop || !phone) return;
  CHECK_OK(lattice_replica_exec(
      shop, "INSERT INTO todo(id, title, votes) VALUES ('a', 'bread', 2), ('b', 'milk', 1)", E));
  lattice_buffer held = {0};
  path_in_dir(path, sizeof path, "shop.snapshot");
  CHECK_OK(lattice_replica_write_snapshot(shop, path, &held, E));
  snprintf(vector, sizeof vector, "%s", held.data ? (const char*)held.data : "");
  lattice_buffer_free(&held);
  CHECK(contains(vector, "\": 1}"));
  CHECK_FAILS(lattice_replica_write_snapshot(shop, path, NULL, &error), &error, LATTICE_ERR_IO);

  CHECK_OK(lattice_replica_install_snapshot(phone, path, &held, E));
  CHECK(held.data != NULL && strcmp((const char*)held.data, vector) == 0);
  lattice_buffer_free(&held);
  CHECK(query_int(phone, "SELECT sum(votes) FROM todo") == 3);
  CHECK_FAILS(lattice_replica_install_snapshot(phone, path, NULL, &error), &error,
              LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_install_snapshot(phone, NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);

  /* The phone's write is its own: a changeset of it merges into the shop. */
  CHECK_OK(lattice_replica_exec(phone, "UPDATE todo SET votes = votes + 5 WHERE id = 'a'", E));
  lattice_buffer changes = {0};
  CHECK_OK(lattice_replica_changes_since(phone, vector, 0, &changes, E));
  lattice_apply_result result = {0, 0};
  CHECK_OK(lattice_replica_apply(shop, changes.data, changes.size, &result, E));
  lattice_buffer_free(&changes);
  CHECK(result.applied == 1);
  CHECK(query_int(shop, "SELECT votes FROM todo WHERE id = 'a'") == 7);
  lattice_replica_free(phone);
  lattice_replica_free(shop);
}

static void test_use_after_close(void) {
  g_case = "use after close";
  lattice_error error;
  lattice_replica* r = open_todo("closed.db");
  if (!r) return;
  Seen seen;
  memset(&seen, 0, sizeof seen);
  int sub = 0;
  CHECK_OK(lattice_replica_subscribe(r, on_change, &seen, &sub, E));
  lattice_stmt* s = lattice_stmt_prepare(r, "SELECT id FROM todo", &error);
  lattice_stmt* s2 = lattice_stmt_prepare(r, "SELECT 1", &error);
  CHECK(s != NULL && s2 != NULL);
  lattice_stmt_finalize(s2); /* finalized before the close: fine */
  CHECK_OK(lattice_replica_close(r, E));

  CHECK_FAILS(lattice_replica_close(r, &error), &error, LATTICE_ERR_STATE);
  CHECK(contains(error.message, "closed"));
  CHECK_FAILS(lattice_replica_exec(r, "SELECT 1", &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_replicate(r, "todo", NULL, &error), &error, LATTICE_ERR_STATE);
  lattice_buffer out = {NULL, 0};
  CHECK_FAILS(lattice_replica_version_vector(r, &out, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_changes_since(r, NULL, 0, &out, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_apply(r, "x", 1, NULL, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_import(r, "todo", "x.csv", NULL, NULL, &error), &error,
              LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_export(r, "todo", NULL, NULL, &out, NULL, &error), &error,
              LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_subscribe(r, on_change, &seen, &sub, &error), &error,
              LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_replica_unsubscribe(r, sub, &error), &error, LATTICE_ERR_STATE);
  CHECK(lattice_stmt_prepare(r, "SELECT 1", &error) == NULL);
  CHECK(error.code == LATTICE_ERR_STATE);

  /* The statement prepared before the close refuses everything but finalize. */
  lattice_value v;
  CHECK_FAILS(lattice_stmt_step(s, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_stmt_bind_int64(s, 1, 1, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_stmt_reset(s, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_stmt_clear_bindings(s, &error), &error, LATTICE_ERR_STATE);
  CHECK_FAILS(lattice_stmt_column(s, 0, &v, &error), &error, LATTICE_ERR_STATE);
  CHECK(lattice_stmt_column_name(s, 0, &error) == NULL && error.code == LATTICE_ERR_STATE);
  CHECK(lattice_stmt_column_count(s) == 0);
  lattice_replica_free(r); /* the statement outlives its replica's handle */
  lattice_stmt_finalize(s);

  /* NULL handles. */
  CHECK_FAILS(lattice_replica_close(NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_exec(NULL, "SELECT 1", &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_apply(NULL, "x", 1, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_import(NULL, "todo", "x.csv", NULL, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_replica_export(NULL, "todo", NULL, NULL, &out, NULL, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_step(NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_reset(NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_clear_bindings(NULL, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_bind_null(NULL, 1, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_stmt_column(NULL, 0, &v, &error), &error, LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_stmt_column_count(NULL) == 0);
  CHECK(lattice_stmt_column_name(NULL, 0, &error) == NULL);
}

/* ---- Sync through a real relay ------------------------------------------------------------ */

/* Replaces this process with argv[0] run with argv, through the emulator named by
 * LATTICE_RELAY_EMULATOR when set (space-separated words, e.g. "qemu-aarch64 -L /usr/aarch64-
 * linux-gnu"): a cross-built test running under qemu-user cannot exec a foreign binary itself. */
static void exec_program(char* const argv[]) {
  char* words[64];
  int n = 0;
  static char emulator[1024];
  const char* given = getenv("LATTICE_RELAY_EMULATOR");
  if (given && *given) {
    snprintf(emulator, sizeof emulator, "%s", given);
    for (char* word = strtok(emulator, " "); word && n < 32; word = strtok(NULL, " "))
      words[n++] = word;
  }
  for (int i = 0; argv[i] && n < 63; ++i) words[n++] = argv[i];
  words[n] = NULL;
  execv(words[0], words);
  _exit(127);
}

/* Runs argv to completion with stdout captured into `out`; returns its exit status or -1. */
static int run_capture(char* const argv[], char* out, size_t size, int timeout_s) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    exec_program(argv);
  }
  close(fds[1]);
  size_t used = 0;
  const double deadline = now_seconds() + timeout_s;
  for (;;) {
    struct pollfd p = {fds[0], POLLIN, 0};
    const int left_ms = (int)((deadline - now_seconds()) * 1000);
    if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0) break;
    ssize_t n = read(fds[0], out + used, size - 1 - used);
    if (n <= 0) break;
    used += (size_t)n;
    if (used + 1 >= size) break;
  }
  out[used] = '\0';
  close(fds[0]);
  int status = 0;
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (now_seconds() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    sleep_ms(10);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

typedef struct {
  pid_t pid;
  int port;
} Relay;

/* Starts `lattice-relay serve --insecure` on 127.0.0.1, port 0, and reads the port it chose. */
static bool start_relay(const char* relay_path, Relay* relay) {
  char data[512], keys[512], schema[512], err_log[512];
  path_in_dir(data, sizeof data, "relay-data");
  path_in_dir(keys, sizeof keys, "keys");
  path_in_dir(schema, sizeof schema, "schema.sql");
  path_in_dir(err_log, sizeof err_log, "relay.err");
  FILE* f = fopen(keys, "w");
  if (!f) return false;
  fputs("k1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", f);
  fclose(f);
  chmod(keys, 0600); /* the relay refuses a key file other users may read */
  f = fopen(schema, "w");
  if (!f) return false;
  fprintf(f, "%s;\nSELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');\n", kSchema);
  fclose(f);

  int fds[2];
  if (pipe(fds) != 0) return false;
  relay->pid = fork();
  if (relay->pid < 0) return false;
  if (relay->pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    int err = open(err_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err >= 0) dup2(err, STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    char* argv[] = {(char*)relay_path, "serve", "--listen",   "127.0.0.1:0", "--data", data,
                    "--key-file",      keys,    "--insecure", "--schema",    schema,   NULL};
    exec_program(argv);
  }
  close(fds[1]);
  /* "listening on 127.0.0.1:PORT\n", within 20 s. */
  char line[256];
  size_t used = 0;
  relay->port = 0;
  const double deadline = now_seconds() + 20;
  while (used + 1 < sizeof line && !memchr(line, '\n', used)) {
    struct pollfd p = {fds[0], POLLIN, 0};
    const int left_ms = (int)((deadline - now_seconds()) * 1000);
    if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0) break;
    ssize_t n = read(fds[0], line + used, sizeof line - 1 - used);
    if (n <= 0) break;
    used += (size_t)n;
  }
  line[used] = '\0';
  close(fds[0]); /* the relay prints nothing else on stdout */
  const char* at = strstr(line, "listening on ");
  const char* colon = at ? strrchr(line, ':') : NULL;
  if (colon) relay->port = atoi(colon + 1);
  if (relay->port <= 0) fprintf(stderr, "relay did not say where it listens: '%s'\n", line);
  return relay->port > 0;
}

static void stop_relay(Relay* relay) {
  if (relay->pid <= 0) return;
  kill(relay->pid, SIGTERM);
  const double deadline = now_seconds() + 10;
  int status = 0;
  while (waitpid(relay->pid, &status, WNOHANG) == 0) {
    if (now_seconds() > deadline) {
      kill(relay->pid, SIGKILL);
      waitpid(relay->pid, &status, 0);
      break;
    }
    sleep_ms(20);
  }
  relay->pid = 0;
}

/* What the status callbacks saw, from the sync thread. */
typedef struct {
  atomic_int calls;
  atomic_int saw_live;
  atomic_int saw_fatal;
} StatusSeen;

static void on_status(void* context, const lattice_sync_status* status) {
  StatusSeen* seen = (StatusSeen*)context;
  atomic_fetch_add(&seen->calls, 1);
  if (status->state == LATTICE_SYNC_LIVE) atomic_store(&seen->saw_live, 1);
  if (status->fatal && status->last_error && status->last_error[0])
    atomic_store(&seen->saw_fatal, 1);
}

/* A token renewal callback: mints a fresh token with the lattice-relay CLI. */
typedef struct {
  const char* relay_path;
  const char* keys;
  atomic_int calls;
} Renewer;

static bool renew_token(void* context, const char* reason, char* out, size_t capacity) {
  Renewer* renewer = (Renewer*)context;
  atomic_fetch_add(&renewer->calls, 1);
  if (!strstr(reason, "expired")) return false;
  char* argv[] = {(char*)renewer->relay_path,
                  "token",
                  "--key-file",
                  (char*)renewer->keys,
                  "--ns",
                  "board",
                  "--rights",
                  "read,write",
                  "--ttl",
                  "1h",
                  NULL};
  if (run_capture(argv, out, capacity, 20) != 0) return false;
  out[strcspn(out, "\r\n")] = '\0';
  return true;
}

static void test_sync(const char* relay_path) {
  g_case = "sync";
  if (!relay_path) {
    fprintf(stderr, "capi_test: SKIPPED the sync cases: pass the lattice-relay path as argv[1]\n");
    return;
  }
  lattice_error error;
  Relay relay = {0, 0};
  if (!start_relay(relay_path, &relay)) {
    CHECK(!"the relay started");
    stop_relay(&relay);
    return;
  }
  char keys[512], token[1024];
  path_in_dir(keys, sizeof keys, "keys");
  char* token_argv[] = {(char*)relay_path, "token",      "--key-file", keys, "--ns", "board",
                        "--rights",        "read,write", "--ttl",      "1h", NULL};
  CHECK(run_capture(token_argv, token, sizeof token, 20) == 0);
  token[strcspn(token, "\r\n")] = '\0';
  CHECK(strlen(token) > 20);
  char url[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/board", relay.port);

  /* Two devices: phone writes, laptop (encrypted at rest) receives, both through the relay. */
  uint8_t laptop_key[32];
  for (int i = 0; i < 32; ++i) laptop_key[i] = (uint8_t)(200 - i);
  lattice_replica* phone = open_todo("phone.db");
  lattice_replica* laptop = open_todo_with_key("laptop.db", laptop_key);
  CHECK_OK(
      lattice_replica_exec(phone, "INSERT INTO todo(id, title) VALUES ('p', 'offline edit')", E));
  char phone_path[512], laptop_path[512];
  path_in_dir(phone_path, sizeof phone_path, "phone.db");
  path_in_dir(laptop_path, sizeof laptop_path, "laptop.db");

  StatusSeen phone_seen, laptop_seen;
  atomic_init(&phone_seen.calls, 0);
  atomic_init(&phone_seen.saw_live, 0);
  atomic_init(&phone_seen.saw_fatal, 0);
  atomic_init(&laptop_seen.calls, 0);
  atomic_init(&laptop_seen.saw_live, 0);
  atomic_init(&laptop_seen.saw_fatal, 0);
  lattice_sync_options options = LATTICE_SYNC_OPTIONS_INIT;
  options.min_backoff_ms = 50;
  options.max_backoff_ms = 500;
  options.poll_interval_ms = 20;
  options.connect_timeout_ms = 5000;
  options.on_status = on_status;
  options.context = &phone_seen;
  lattice_sync* phone_sync = lattice_sync_start(phone_path, url, token, &options, &error);
  CHECK(phone_sync != NULL);
  options.context = &laptop_seen;
  options.encryption_key = laptop_key;
  lattice_sync* laptop_sync = lattice_sync_start(laptop_path, url, token, &options, &error);
  options.encryption_key = NULL;
  CHECK(laptop_sync != NULL);
  if (!phone_sync || !laptop_sync) {
    fprintf(stderr, "lattice_sync_start: %s\n", error.message);
    lattice_sync_free(phone_sync);
    lattice_sync_free(laptop_sync);
    lattice_replica_free(phone);
    lattice_replica_free(laptop);
    stop_relay(&relay);
    return;
  }

  bool in_sync = false;
  CHECK_OK(lattice_sync_wait_in_sync(phone_sync, 20000, &in_sync, E));
  CHECK(in_sync);
  CHECK(lattice_sync_get_pending(phone_sync) == 0);
  /* The laptop receives the phone's offline edit, then a live one. */
  const double t0 = now_seconds();
  while (query_int(laptop, "SELECT count(*) FROM todo WHERE id = 'p'") != 1 &&
         now_seconds() - t0 < 20)
    sleep_ms(20);
  CHECK(query_int(laptop, "SELECT count(*) FROM todo WHERE id = 'p'") == 1);
  CHECK_OK(lattice_replica_exec(phone, "UPDATE todo SET votes = votes + 2 WHERE id = 'p'", E));
  CHECK_OK(lattice_replica_exec(laptop, "UPDATE todo SET votes = votes + 3 WHERE id = 'p'", E));
  CHECK_OK(lattice_sync_wait_in_sync(phone_sync, 20000, &in_sync, E));
  CHECK(in_sync);
  CHECK_OK(lattice_sync_wait_in_sync(laptop_sync, 20000, &in_sync, E));
  CHECK(in_sync);
  const double t1 = now_seconds();
  while ((query_int(laptop, "SELECT votes FROM todo WHERE id = 'p'") != 5 ||
          query_int(phone, "SELECT votes FROM todo WHERE id = 'p'") != 5) &&
         now_seconds() - t1 < 20)
    sleep_ms(20);
  CHECK(query_int(phone, "SELECT votes FROM todo WHERE id = 'p'") == 5);
  CHECK(query_int(laptop, "SELECT votes FROM todo WHERE id = 'p'") == 5);

  CHECK(lattice_sync_get_state(phone_sync) == LATTICE_SYNC_LIVE);
  CHECK(atomic_load(&phone_seen.saw_live) == 1 && atomic_load(&laptop_seen.saw_live) == 1);
  CHECK(atomic_load(&phone_seen.calls) >= 2);
  lattice_buffer last_error = {NULL, 0};
  CHECK_OK(lattice_sync_get_last_error(phone_sync, &last_error, E));
  CHECK(last_error.data != NULL && last_error.data[last_error.size] == '\0');
  lattice_buffer_free(&last_error);

  /* A token that expires on the open connection is renewed through the callback (API 2). */
  {
    char short_token[1024];
    char* short_argv[] = {(char*)relay_path, "token",      "--key-file", keys, "--ns", "board",
                          "--rights",        "read,write", "--ttl",      "2s", NULL};
    CHECK(run_capture(short_argv, short_token, sizeof short_token, 20) == 0);
    short_token[strcspn(short_token, "\r\n")] = '\0';
    Renewer renewer = {relay_path, keys, 0};
    atomic_init(&renewer.calls, 0);
    lattice_sync_options renewing = LATTICE_SYNC_OPTIONS_INIT;
    renewing.min_backoff_ms = 50;
    renewing.poll_interval_ms = 20;
    renewing.renew_token = renew_token;
    renewing.renew_context = &renewer;
    lattice_replica* tablet = open_todo("tablet.db");
    char tablet_path[512];
    path_in_dir(tablet_path, sizeof tablet_path, "tablet.db");
    lattice_sync* tablet_sync =
        lattice_sync_start(tablet_path, url, short_token, &renewing, &error);
    CHECK(tablet_sync != NULL);
    CHECK_OK(lattice_sync_wait_in_sync(tablet_sync, 20000, &in_sync, E));
    CHECK(in_sync);
    sleep_ms(3000); /* the first token expires while connected */
    CHECK_OK(lattice_replica_exec(tablet, "INSERT INTO todo(id, title) VALUES ('t', 'late')", E));
    CHECK_OK(lattice_sync_wait_in_sync(tablet_sync, 20000, &in_sync, E));
    CHECK(in_sync);
    CHECK(atomic_load(&renewer.calls) == 1);
    lattice_sync_free(tablet_sync);
    lattice_replica_free(tablet);
  }

  /* Stopped: the getters still answer, waiting is refused. */
  lattice_sync_stop(phone_sync);
  lattice_sync_stop(phone_sync); /* idempotent */
  CHECK(lattice_sync_get_state(phone_sync) == LATTICE_SYNC_OFFLINE);
  CHECK_FAILS(lattice_sync_wait_in_sync(phone_sync, 10, &in_sync, &error), &error,
              LATTICE_ERR_STATE);
  CHECK(!in_sync && contains(error.message, "stopped"));
  CHECK_OK(lattice_sync_get_last_error(phone_sync, &last_error, E));
  lattice_buffer_free(&last_error);
  lattice_sync_free(phone_sync);
  lattice_sync_free(laptop_sync);

  /* A bad token: the relay refuses it, the client gives up and says why. */
  StatusSeen bad_seen;
  atomic_init(&bad_seen.calls, 0);
  atomic_init(&bad_seen.saw_live, 0);
  atomic_init(&bad_seen.saw_fatal, 0);
  options.context = &bad_seen;
  lattice_sync* bad = lattice_sync_start(phone_path, url, "not-a-token", &options, &error);
  CHECK(bad != NULL);
  CHECK_FAILS(lattice_sync_wait_in_sync(bad, 20000, &in_sync, &error), &error, LATTICE_ERR_STATE);
  CHECK(contains(error.message, "unauthorized"));
  /* The callback reporting it may still be on its way from the sync thread. */
  const double t2 = now_seconds();
  while (atomic_load(&bad_seen.saw_fatal) == 0 && now_seconds() - t2 < 5) sleep_ms(10);
  CHECK(atomic_load(&bad_seen.saw_fatal) == 1);
  CHECK_OK(lattice_sync_get_last_error(bad, &last_error, E));
  CHECK(contains((const char*)last_error.data, "unauthorized"));
  lattice_buffer_free(&last_error);
  lattice_sync_free(bad);

  /* Refusals at start. */
  CHECK(lattice_sync_start(phone_path, "http://127.0.0.1:1/board", token, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_sync_start(phone_path, "ws://10.255.255.1:9/board", token, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_sync_start(NULL, url, token, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  CHECK(lattice_sync_start(phone_path, NULL, token, NULL, &error) == NULL);
  CHECK(lattice_sync_start(phone_path, url, NULL, NULL, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT);
  options.min_backoff_ms = -1;
  CHECK(lattice_sync_start(phone_path, url, token, &options, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "min_backoff_ms"));
  lattice_sync_options zero;
  memset(&zero, 0, sizeof zero);
  CHECK(lattice_sync_start(phone_path, url, token, &zero, &error) == NULL);
  CHECK(error.code == LATTICE_ERR_INVALID_ARGUMENT && contains(error.message, "struct_size"));

  /* NULL handles. */
  CHECK(lattice_sync_get_state(NULL) == LATTICE_SYNC_OFFLINE);
  CHECK(lattice_sync_get_pending(NULL) == 0);
  CHECK_FAILS(lattice_sync_get_last_error(NULL, &last_error, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  CHECK_FAILS(lattice_sync_wait_in_sync(NULL, 10, &in_sync, &error), &error,
              LATTICE_ERR_INVALID_ARGUMENT);
  lattice_sync_stop(NULL);
  lattice_sync_free(NULL);

  lattice_replica_free(phone);
  lattice_replica_free(laptop);
  stop_relay(&relay);
}

static int remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

int main(int argc, char** argv) {
  const char* relay_path = argc > 1 ? argv[1] : getenv("LATTICE_RELAY_PATH");
  const char* tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof g_dir, "%s/lattice_capi_test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(g_dir)) {
    fprintf(stderr, "capi_test: mkdtemp: %s\n", strerror(errno));
    return 1;
  }
  const double start = now_seconds();
  test_names_and_version();
  test_open();
  test_encrypted();
  test_statements();
  test_changesets_and_subscriptions();
  test_held_rows();
  test_import_export();
  test_migrate();
  test_snapshots();
  test_use_after_close();
  test_sync(relay_path);
  nftw(g_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  printf("capi_test: %d checks, %d failed, %.1f s\n", g_checks, g_failures, now_seconds() - start);
  return g_failures == 0 ? 0 : 1;
}
