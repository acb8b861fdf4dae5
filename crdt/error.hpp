#pragma once
// The one error type of the project: a code and a message that names what was wrong.

#include <stdexcept>
#include <string>

namespace lattice {

// Stable numbers: the C API (issue "Embedding everywhere") reuses them as LATTICE_ERR_*.
enum class ErrorCode : int {
  kOk = 0,
  kInvalidArgument = 1,     // a caller passed something malformed (bad JSON, bad hex, bad flag)
  kCorrupt = 2,             // bytes that do not decode: truncated, wrong type, hostile sizes
  kUnsupportedVersion = 3,  // a format or protocol version newer than this build speaks
  kTooLarge = 4,            // over a documented size limit
  kUnknownTable = 5,        // a change names a table this replica does not replicate
  kUnknownColumn = 6,       // a change names a column this replica's table lacks
  kTypeMismatch = 7,        // a value or column kind that does not fit the column
  kClockDrift = 8,          // a remote timestamp too far in the future
  kSql = 9,                 // SQLite refused a statement (bad SQL, constraint, ...)
  kIo = 10,                 // the file system failed (full disk, permissions, ...)
  kBusy = 11,               // the database is locked by another writer
  kSchema = 12,             // a table cannot be replicated, or schemas disagree
  kState = 13,              // a call made in the wrong state (closed handle, nested apply)
  kInternal = 14,           // a bug in Lattice
  kUnauthorized = 15,       // a missing, expired, badly signed or wrong-namespace token
  kForbidden = 16,          // a valid token without the right for the call
  kCopiedReplica = 17,      // a replica file and a copy of it (or a restored backup) both wrote
  kKey = 18,                // an encrypted replica opened without its key or with another one
};

// Returns a short, stable name for `code` ("corrupt", "clock_drift", ...).
const char* error_code_name(ErrorCode code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace lattice
