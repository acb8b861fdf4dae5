#include "crdt/error.hpp"

namespace lattice {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kCorrupt:
      return "corrupt";
    case ErrorCode::kUnsupportedVersion:
      return "unsupported_version";
    case ErrorCode::kTooLarge:
      return "too_large";
    case ErrorCode::kUnknownTable:
      return "unknown_table";
    case ErrorCode::kUnknownColumn:
      return "unknown_column";
    case ErrorCode::kTypeMismatch:
      return "type_mismatch";
    case ErrorCode::kClockDrift:
      return "clock_drift";
    case ErrorCode::kSql:
      return "sql";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kSchema:
      return "schema";
    case ErrorCode::kState:
      return "state";
    case ErrorCode::kInternal:
      return "internal";
    case ErrorCode::kUnauthorized:
      return "unauthorized";
    case ErrorCode::kForbidden:
      return "forbidden";
    case ErrorCode::kCopiedReplica:
      return "copied_replica";
    case ErrorCode::kKey:
      return "key";
  }
  // A number from across the C ABI that this build does not know.
  return "unknown";
}

}  // namespace lattice
