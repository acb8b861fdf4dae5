#pragma once
// Thin RAII over the SQLite C API: a statement handle that binds and reads crdt::Value and turns
// every failure into lattice::Error(kSql/kBusy/kIo) with SQLite's own message and the SQL text.

#include <sqlite3.h>

#include <string>
#include <string_view>
#include <utility>

#include "crdt/error.hpp"
#include "crdt/value.hpp"

namespace lattice::storage {

// Throws the Error matching `rc` on `db` (kBusy, kIo, kSql), with `what` as context.
[[noreturn]] void throw_sqlite(sqlite3* db, int rc, std::string_view what);

// A prepared statement. Move-only; finalized on destruction. Not thread-safe.
class Statement {
 public:
  Statement() = default;
  // Prepares one statement. Throws Error(kSql) naming the SQL.
  Statement(sqlite3* db, std::string_view sql);
  Statement(Statement&& other) noexcept { *this = std::move(other); }
  Statement& operator=(Statement&& other) noexcept;
  ~Statement();

  explicit operator bool() const { return stmt_ != nullptr; }

  // Binds parameter `index` (1-based). Returns *this so calls chain.
  Statement& bind(int index, const crdt::Value& value);
  // The same without copying text or blob bytes: `value` must stay as it is until the statement
  // is reset or bound again (bulk writes bind many values that outlive their step).
  Statement& bind_borrowed(int index, const crdt::Value& value);
  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, std::string_view text);
  Statement& bind(int index, const std::string& text) {
    return bind(index, std::string_view(text));
  }
  Statement& bind(int index, const char* text) { return bind(index, std::string_view(text)); }
  Statement& bind_blob(int index, std::string_view bytes);

  // Runs one step: true when a row is ready, false when done. Throws on error.
  bool step();
  // Steps until done, then resets. For statements that return no rows.
  void run();
  // The same, without throwing: SQLITE_DONE, or the extended result code of the failure with
  // SQLite's message in `message`. For callers that handle constraint failures themselves.
  int try_run(std::string& message);
  // Resets, keeping the statement prepared and its bindings (callers rebind every parameter).
  void reset();

  int column_count() const { return sqlite3_column_count(stmt_); }
  crdt::Value column(int index) const;
  std::int64_t column_int(int index) const { return sqlite3_column_int64(stmt_, index); }
  bool column_is_null(int index) const { return sqlite3_column_type(stmt_, index) == SQLITE_NULL; }
  std::string_view column_blob(int index) const;
  std::string column_text(int index) const;
  const char* column_name(int index) const { return sqlite3_column_name(stmt_, index); }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

// Runs SQL text that may hold several statements and returns no rows. Throws on error.
void exec_sql(sqlite3* db, std::string_view sql);

// Reads value `v` of a function argument or column as a crdt::Value.
crdt::Value value_from_sqlite(sqlite3_value* v);
// Sets a function's result to `value`.
void result_value(sqlite3_context* ctx, const crdt::Value& value);

// "name" with embedded quotes doubled: safe to splice into SQL as an identifier.
std::string quote_identifier(std::string_view name);
// 'text' with embedded quotes doubled: safe to splice into SQL as a string literal.
std::string quote_literal(std::string_view text);

}  // namespace lattice::storage
