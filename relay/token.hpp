#pragma once
// Bearer tokens for the relay: JWTs (RFC 7519) signed with HMAC-SHA256 under a named shared
// secret. A token says which device (`sub`) may use which namespace (`ns`) with which rights,
// and until when. Times are Unix seconds passed in by the caller; nothing here reads a clock.
//
// Token shape:
//   header  {"alg":"HS256","typ":"JWT","kid":"<key name>"}
//   payload {"sub":"<device>","ns":"<namespace>","rights":"read,write","iat":<s>,"exp":<s>}
// each part base64url-encoded without padding, joined with '.', then '.' and the base64url
// HMAC-SHA256 of "<header>.<payload>" under the secret named by `kid`.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crdt/error.hpp"

namespace lattice::relay {

// What a token lets its bearer do in its namespace. Bits; combine with `|`.
enum Right : unsigned { kRead = 1, kWrite = 2, kAdmin = 4 };
inline constexpr unsigned kAllRights = kRead | kWrite | kAdmin;

// Parses a comma-separated list of right names ("read", "write", "admin"; spaces around
// names allowed; repeats harmless) into bits. Error(kInvalidArgument) for an empty list, an
// empty item or an unknown name (the message names it).
unsigned parse_rights(std::string_view csv);

// The names of the bits in `rights`, in the order read,write,admin, comma-separated; "" for 0.
// Error(kInvalidArgument) if `rights` has bits outside kAllRights.
std::string format_rights(unsigned rights);

// A duration with a unit: "30s", "15m", "1h", "7d" (a positive decimal count and exactly one
// unit letter) in seconds. Error(kInvalidArgument) for anything else, zero, or overflow.
std::int64_t parse_duration(std::string_view text);

// What a token says. `key_name` is the key that signed it (the header's `kid`); sign()
// ignores it and uses the ring's signing key.
struct TokenClaims {
  std::string subject;          // `sub`: the device or user the token was issued to
  std::string ns;               // `ns`: the namespace it is valid for
  unsigned rights = 0;          // `rights`: Right bits
  std::int64_t issued_at = 0;   // `iat`, Unix seconds (0 when a verified token had none)
  std::int64_t expires_at = 0;  // `exp`, Unix seconds
  std::string key_name;
};

// How far in the future a token's `iat` or `nbf` may lie, for clocks that disagree a little.
inline constexpr std::int64_t kClockSkewSeconds = 60;
// Tokens longer than this are refused before any parsing.
inline constexpr std::size_t kMaxTokenBytes = 8192;
// The shortest secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
inline constexpr std::size_t kMinSecretBytes = 32;

// Throws Error(kUnauthorized) "token is for namespace 'a', not 'b'" when claims.ns != ns, and
// Error(kForbidden) "token lacks the write right" (naming the first missing right) when
// `rights` has a bit that claims.rights lacks. Returns normally otherwise.
void require(const TokenClaims& claims, std::string_view ns, unsigned rights);

// The named secrets a relay signs and accepts tokens with. The first key signs new tokens;
// every key verifies, so a key can be rotated by putting the new one first and dropping the
// old one once the tokens signed with it have expired.
// A value type; const members are safe to call from any thread.
class KeyRing {
 public:
  // Reads a key file: one `NAME SECRET` line per key, separated by spaces or tabs. Blank lines
  // and lines starting with `#` are ignored. NAME is [A-Za-z0-9_.-]+, SECRET at least
  // kMinSecretBytes non-blank characters, used as they are (not decoded). Errors name the
  // file and, for content, the line: Error(kIo) when the file cannot be read,
  // Error(kInvalidArgument) for a malformed line, a bad name, a short secret, a duplicate
  // name, or a file without keys; Error(kIo) for a file other users may read (any permission
  // bit for "others"), naming its mode. Messages never contain secrets.
  static KeyRing load(const std::string& path);

  // A ring from (name, secret) pairs, the first one signing. The name, length and duplicate
  // rules of load() apply (errors say "key #2: ..."); Error(kInvalidArgument) for no keys.
  static KeyRing from_keys(std::vector<std::pair<std::string, std::string>> keys);

  // The name of the key that signs new tokens.
  const std::string& signing_key_name() const { return keys_.front().name; }
  std::size_t size() const { return keys_.size(); }

  // A signed token for `claims` (key_name ignored). Error(kInvalidArgument) when subject or
  // ns is empty or not UTF-8, rights is 0 or has unknown bits, or expires_at <= issued_at.
  std::string sign(const TokenClaims& claims) const;

  // Checks `token` at time `now_unix` and returns its claims. Strict: three base64url parts
  // without padding, a JSON header with alg exactly "HS256" (anything else, "none" included,
  // is refused), no `crit`, typ "JWT" if present, and a `kid` naming a key of this ring; the
  // signature compared in constant time; a JSON payload with string `sub`, `ns` and `rights`
  // and integer `exp` > now_unix; `iat` and `nbf`, if present, integers at most
  // kClockSkewSeconds ahead of now_unix. Every failure is Error(kUnauthorized) with a message
  // naming what was wrong. Namespace and rights are not checked here: see require().
  TokenClaims verify(std::string_view token, std::int64_t now_unix) const;

 private:
  struct Key {
    std::string name;
    std::string secret;
  };
  explicit KeyRing(std::vector<Key> keys) : keys_(std::move(keys)) {}
  const Key* find(std::string_view name) const;

  std::vector<Key> keys_;  // never empty
};

}  // namespace lattice::relay
