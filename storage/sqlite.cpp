#include "storage/sqlite.hpp"

namespace lattice::storage {

void throw_sqlite(sqlite3* db, int rc, std::string_view what) {
  const int primary = rc & 0xff;
  ErrorCode code = ErrorCode::kSql;
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) code = ErrorCode::kBusy;
  if (primary == SQLITE_IOERR || primary == SQLITE_FULL || primary == SQLITE_CANTOPEN ||
      primary == SQLITE_READONLY || primary == SQLITE_PERM || primary == SQLITE_NOTADB ||
      primary == SQLITE_CORRUPT)
    code = ErrorCode::kIo;
  std::string message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  // The encrypting VFS's answer for a page whose tag fails (encrypted_vfs.cpp).
  if (rc == SQLITE_IOERR_AUTH || (db && sqlite3_extended_errcode(db) == SQLITE_IOERR_AUTH)) {
    code = ErrorCode::kCorrupt;
    message = "a page of the encrypted file fails to authenticate: the file was altered or damaged";
  }
  if (!what.empty()) message += " (" + std::string(what) + ")";
  throw Error(code, message);
}

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db) {
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
  if (rc != SQLITE_OK) throw_sqlite(db, rc, sql);
}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    if (stmt_) sqlite3_finalize(stmt_);
    db_ = std::exchange(other.db_, nullptr);
    stmt_ = std::exchange(other.stmt_, nullptr);
  }
  return *this;
}

Statement::~Statement() {
  if (stmt_) sqlite3_finalize(stmt_);
}

namespace {

int bind_value(sqlite3_stmt* stmt, int index, const crdt::Value& value,
               sqlite3_destructor_type bytes) {
  switch (value.index()) {
    case 0:
      return sqlite3_bind_null(stmt, index);
    case 1:
      return sqlite3_bind_int64(stmt, index, std::get<std::int64_t>(value));
    case 2:
      return sqlite3_bind_double(stmt, index, std::get<double>(value));
    case 3: {
      const auto& s = std::get<std::string>(value);
      return sqlite3_bind_text64(stmt, index, s.data(), s.size(), bytes, SQLITE_UTF8);
    }
    default: {
      const auto& b = std::get<crdt::Blob>(value).bytes;
      return sqlite3_bind_blob64(stmt, index, b.data(), b.size(), bytes);
    }
  }
}

}  // namespace

Statement& Statement::bind(int index, const crdt::Value& value) {
  const int rc = bind_value(stmt_, index, value, SQLITE_TRANSIENT);
  if (rc != SQLITE_OK) throw_sqlite(db_, rc, "binding a parameter");
  return *this;
}

Statement& Statement::bind_borrowed(int index, const crdt::Value& value) {
  const int rc = bind_value(stmt_, index, value, SQLITE_STATIC);
  if (rc != SQLITE_OK) throw_sqlite(db_, rc, "binding a parameter");
  return *this;
}

Statement& Statement::bind(int index, std::int64_t value) {
  const int rc = sqlite3_bind_int64(stmt_, index, value);
  if (rc != SQLITE_OK) throw_sqlite(db_, rc, "binding a parameter");
  return *this;
}

Statement& Statement::bind(int index, std::string_view text) {
  const int rc =
      sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
  if (rc != SQLITE_OK) throw_sqlite(db_, rc, "binding a parameter");
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view bytes) {
  const int rc = sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_TRANSIENT);
  if (rc != SQLITE_OK) throw_sqlite(db_, rc, "binding a parameter");
  return *this;
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const char* sql = sqlite3_sql(stmt_);
  std::string what = sql ? sql : "";
  sqlite3_reset(stmt_);
  throw_sqlite(db_, rc, what);
}

void Statement::run() {
  while (step()) {
  }
  reset();
}

int Statement::try_run(std::string& message) {
  int rc;
  while ((rc = sqlite3_step(stmt_)) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) {
    rc = sqlite3_extended_errcode(db_);
    message = sqlite3_errmsg(db_);
  }
  sqlite3_reset(stmt_);
  return rc;
}

void Statement::reset() { sqlite3_reset(stmt_); }

crdt::Value Statement::column(int index) const {
  return value_from_sqlite(sqlite3_column_value(stmt_, index));
}

std::string_view Statement::column_blob(int index) const {
  const void* data = sqlite3_column_blob(stmt_, index);
  const int size = sqlite3_column_bytes(stmt_, index);
  return {static_cast<const char*>(data), static_cast<std::size_t>(size)};
}

std::string Statement::column_text(int index) const {
  const unsigned char* text = sqlite3_column_text(stmt_, index);
  const int size = sqlite3_column_bytes(stmt_, index);
  return text ? std::string(reinterpret_cast<const char*>(text), size) : std::string();
}

void exec_sql(sqlite3* db, std::string_view sql) {
  std::string text(sql);
  char* message = nullptr;
  const int rc = sqlite3_exec(db, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string what = message ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    throw_sqlite(nullptr, rc, what);
  }
}

crdt::Value value_from_sqlite(sqlite3_value* v) {
  switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER:
      return std::int64_t{sqlite3_value_int64(v)};
    case SQLITE_FLOAT:
      return sqlite3_value_double(v);
    case SQLITE_TEXT: {
      const auto* text = reinterpret_cast<const char*>(sqlite3_value_text(v));
      return std::string(text, static_cast<std::size_t>(sqlite3_value_bytes(v)));
    }
    case SQLITE_BLOB: {
      const auto* data = static_cast<const char*>(sqlite3_value_blob(v));
      return crdt::Blob{
          std::string(data ? data : "", static_cast<std::size_t>(sqlite3_value_bytes(v)))};
    }
    default:
      return std::monostate{};
  }
}

void result_value(sqlite3_context* ctx, const crdt::Value& value) {
  switch (value.index()) {
    case 0:
      sqlite3_result_null(ctx);
      break;
    case 1:
      sqlite3_result_int64(ctx, std::get<std::int64_t>(value));
      break;
    case 2:
      sqlite3_result_double(ctx, std::get<double>(value));
      break;
    case 3: {
      const auto& s = std::get<std::string>(value);
      sqlite3_result_text64(ctx, s.data(), s.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    }
    case 4: {
      const auto& b = std::get<crdt::Blob>(value).bytes;
      sqlite3_result_blob64(ctx, b.data(), b.size(), SQLITE_TRANSIENT);
      break;
    }
  }
}

std::string quote_literal(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += '\'';
  return out;
}

std::string quote_identifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

}  // namespace lattice::storage
