#include "relay/token.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "relay/detail/json.hpp"

namespace lattice::relay {
namespace {

using detail::JsonObject;
using detail::JsonValue;

constexpr std::size_t kSignatureBytes = 32;  // HMAC-SHA256

[[noreturn]] void unauthorized(const std::string& message) {
  throw Error(ErrorCode::kUnauthorized, message);
}

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorCode::kInvalidArgument, message);
}

// Untrusted text (from a token or a caller) made safe to put in a message or a log line:
// quoted, shortened, and with bytes outside printable ASCII shown as '?'.
std::string quoted(std::string_view text) {
  constexpr std::size_t kMax = 64;
  std::string out = "'";
  for (std::size_t i = 0; i < text.size() && i < kMax; ++i) {
    char c = text[i];
    out += (c >= 0x20 && c < 0x7F) ? c : '?';
  }
  if (text.size() > kMax) out += "...";
  out += "'";
  return out;
}

// --- base64url (RFC 4648 §5), without padding ---------------------------------------------

constexpr char kBase64UrlAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  std::size_t i = 0;
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t v = (at(i) << 16) | (at(i + 1) << 8) | at(i + 2);
    out += kBase64UrlAlphabet[(v >> 18) & 63];
    out += kBase64UrlAlphabet[(v >> 12) & 63];
    out += kBase64UrlAlphabet[(v >> 6) & 63];
    out += kBase64UrlAlphabet[v & 63];
  }
  std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    std::uint32_t v = at(i) << 16;
    out += kBase64UrlAlphabet[(v >> 18) & 63];
    out += kBase64UrlAlphabet[(v >> 12) & 63];
  } else if (rest == 2) {
    std::uint32_t v = (at(i) << 16) | (at(i + 1) << 8);
    out += kBase64UrlAlphabet[(v >> 18) & 63];
    out += kBase64UrlAlphabet[(v >> 12) & 63];
    out += kBase64UrlAlphabet[(v >> 6) & 63];
  }
  return out;
}

int base64url_digit(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// Decodes one token part. Strict, so that each byte string has exactly one encoding: no
// padding, no other alphabet, and the unused low bits of the last character must be zero.
// `what` names the part in messages ("token header").
std::string base64url_decode(std::string_view text, const char* what) {
  if (text.size() % 4 == 1) {
    unauthorized(std::string(what) + " is not base64url: " + std::to_string(text.size()) +
                 " characters is not a possible unpadded length");
  }
  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    int d = base64url_digit(text[i]);
    if (d < 0) {
      char c = text[i];
      std::string shown = (c >= 0x21 && c < 0x7F) ? std::string("'") + c + "'" : "a non-printable";
      unauthorized(std::string(what) + " is not base64url: " + shown + " character at offset " +
                   std::to_string(i));
    }
    acc = (acc << 6) | static_cast<std::uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
    unauthorized(std::string(what) + " is not base64url: its last character has nonzero " +
                 "padding bits (not the canonical encoding)");
  }
  return out;
}

// --- HMAC-SHA256 --------------------------------------------------------------------------

std::string hmac_sha256(std::string_view secret, std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest,
           &length) == nullptr ||
      length != kSignatureBytes) {
    throw Error(ErrorCode::kInternal, "HMAC-SHA256 failed in OpenSSL");
  }
  return std::string(reinterpret_cast<const char*>(digest), length);
}

// --- time ---------------------------------------------------------------------------------

// Unix seconds as "2024-03-01T12:00:00Z" (proleptic Gregorian, UTC): days-to-civil after
// Howard Hinnant's chrono-compatible algorithms, so no <chrono> or time zone is involved.
std::string iso_time(std::int64_t unix_seconds) {
  std::int64_t days = unix_seconds / 86400;
  std::int64_t secs = unix_seconds % 86400;
  if (secs < 0) {
    secs += 86400;
    days -= 1;
  }
  std::int64_t z = days + 719468;
  std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  std::int64_t doe = z - era * 146097;
  std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  std::int64_t year = yoe + era * 400;
  std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  std::int64_t mp = (5 * doy + 2) / 153;
  std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  if (month <= 2) ++year;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ",
                static_cast<long long>(year), static_cast<long long>(month),
                static_cast<long long>(day), static_cast<long long>(secs / 3600),
                static_cast<long long>(secs / 60 % 60), static_cast<long long>(secs % 60));
  return buf;
}

// --- claims -------------------------------------------------------------------------------

const JsonValue* member(const JsonObject& object, std::string_view name) {
  auto it = object.find(name);
  return it == object.end() ? nullptr : &it->second;
}

std::string required_string_claim(const JsonObject& payload, std::string_view name) {
  const JsonValue* value = member(payload, name);
  if (value == nullptr) unauthorized("token has no '" + std::string(name) + "' claim");
  if (value->kind != JsonValue::Kind::kString) {
    unauthorized("token claim '" + std::string(name) + "' must be a string, not " +
                 detail::json_kind_name(value->kind));
  }
  if (value->string.empty()) unauthorized("token claim '" + std::string(name) + "' is empty");
  return value->string;
}

std::optional<std::int64_t> integer_claim(const JsonObject& payload, std::string_view name) {
  const JsonValue* value = member(payload, name);
  if (value == nullptr) return std::nullopt;
  if (value->kind != JsonValue::Kind::kInteger) {
    unauthorized("token claim '" + std::string(name) +
                 "' must be an integer number of seconds, not " +
                 (value->kind == JsonValue::Kind::kNumber ? std::string("a fraction or huge number")
                                                          : detail::json_kind_name(value->kind)));
  }
  return value->integer;
}

// --- keys ---------------------------------------------------------------------------------

bool valid_key_name(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// `where` prefixes messages: "key file 'keys.txt' line 3" or "key #2".
void check_key(std::string_view name, std::string_view secret, const std::string& where) {
  if (!valid_key_name(name)) {
    invalid(where + ": key name " + quoted(name) + " is not [A-Za-z0-9_.-]+");
  }
  if (secret.size() < kMinSecretBytes) {
    invalid(where + ": the secret of key '" + std::string(name) + "' is " +
            std::to_string(secret.size()) + " characters; at least " +
            std::to_string(kMinSecretBytes) + " are required");
  }
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }

}  // namespace

// --- rights and durations -----------------------------------------------------------------

unsigned parse_rights(std::string_view csv) {
  bool all_blank = true;
  for (char c : csv) all_blank = all_blank && is_blank(c);
  if (all_blank) invalid("empty rights list: expected e.g. 'read,write'");
  unsigned rights = 0;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = csv.find(',', start);
    std::string_view item =
        csv.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!item.empty() && is_blank(item.front())) item.remove_prefix(1);
    while (!item.empty() && is_blank(item.back())) item.remove_suffix(1);
    if (item == "read") {
      rights |= kRead;
    } else if (item == "write") {
      rights |= kWrite;
    } else if (item == "admin") {
      rights |= kAdmin;
    } else if (item.empty()) {
      invalid("empty item in rights list " + quoted(csv));
    } else {
      invalid("unknown right " + quoted(item) + " (known: read, write, admin)");
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return rights;
}

std::string format_rights(unsigned rights) {
  if ((rights & ~kAllRights) != 0) {
    invalid("unknown right bits " + std::to_string(rights & ~kAllRights));
  }
  std::string out;
  auto add = [&](unsigned bit, const char* name) {
    if ((rights & bit) == 0) return;
    if (!out.empty()) out += ',';
    out += name;
  };
  add(kRead, "read");
  add(kWrite, "write");
  add(kAdmin, "admin");
  return out;
}

std::int64_t parse_duration(std::string_view text) {
  auto bad = [&]() -> std::int64_t {
    invalid("bad duration " + quoted(text) +
            ": expected a positive count and one unit s, m, h or d (30s, 15m, 1h, 7d)");
  };
  if (text.size() < 2) return bad();
  std::int64_t unit;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      return bad();
  }
  std::int64_t count = 0;
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  for (char c : text.substr(0, text.size() - 1)) {
    if (c < '0' || c > '9') return bad();
    if (count > (kMax - (c - '0')) / 10) invalid("duration " + quoted(text) + " is too large");
    count = count * 10 + (c - '0');
  }
  if (count == 0) return bad();
  if (count > kMax / unit) invalid("duration " + quoted(text) + " is too large");
  return count * unit;
}

void require(const TokenClaims& claims, std::string_view ns, unsigned rights) {
  if (claims.ns != ns) {
    unauthorized("token is for namespace " + quoted(claims.ns) + ", not " + quoted(ns));
  }
  if ((rights & ~kAllRights) != 0) {
    invalid("require(): unknown right bits " + std::to_string(rights & ~kAllRights));
  }
  static constexpr std::pair<unsigned, const char*> kNames[] = {
      {kRead, "read"}, {kWrite, "write"}, {kAdmin, "admin"}};
  for (auto [bit, name] : kNames) {
    if ((rights & bit) != 0 && (claims.rights & bit) == 0) {
      throw Error(ErrorCode::kForbidden, std::string("token lacks the ") + name + " right");
    }
  }
}

// --- KeyRing ------------------------------------------------------------------------------

KeyRing KeyRing::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    int err = errno;
    throw Error(ErrorCode::kIo, "cannot open key file '" + path + "': " + std::strerror(err));
  }
  // Whoever reads the key file can mint tokens for every namespace: a file other users may
  // read is refused, not silently used.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & S_IRWXO) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    throw Error(ErrorCode::kIo, "key file '" + path + "' has mode " + mode +
                                    ": other users may read it, and with it mint any token; "
                                    "run chmod 600 '" +
                                    path + "'");
  }
  std::vector<Key> keys;
  std::vector<int> key_lines;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    std::string where = "key file '" + path + "' line " + std::to_string(line_number);
    std::string_view rest = line;
    if (!rest.empty() && rest.back() == '\r') rest.remove_suffix(1);
    std::vector<std::string_view> fields;
    for (;;) {
      while (!rest.empty() && is_blank(rest.front())) rest.remove_prefix(1);
      if (rest.empty()) break;
      std::size_t end = 0;
      while (end < rest.size() && !is_blank(rest[end])) ++end;
      fields.push_back(rest.substr(0, end));
      rest.remove_prefix(end);
    }
    if (fields.empty() || fields.front().front() == '#') continue;
    if (fields.size() != 2) {
      // The fields are not shown: one of them may be a secret.
      invalid(where + ": expected 'NAME SECRET', found " + std::to_string(fields.size()) +
              (fields.size() == 1 ? " field" : " fields"));
    }
    check_key(fields[0], fields[1], where);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i].name == fields[0]) {
        invalid(where + ": duplicate key name '" + keys[i].name + "' (first on line " +
                std::to_string(key_lines[i]) + ")");
      }
    }
    keys.push_back(Key{std::string(fields[0]), std::string(fields[1])});
    key_lines.push_back(line_number);
  }
  if (in.bad() || (!in.eof() && in.fail())) {
    int err = errno;
    throw Error(ErrorCode::kIo, "cannot read key file '" + path + "': " + std::strerror(err));
  }
  if (keys.empty()) invalid("key file '" + path + "' has no keys");
  return KeyRing(std::move(keys));
}

KeyRing KeyRing::from_keys(std::vector<std::pair<std::string, std::string>> keys) {
  if (keys.empty()) invalid("a key ring needs at least one key");
  std::vector<Key> ring;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::string where = "key #" + std::to_string(i + 1);
    check_key(keys[i].first, keys[i].second, where);
    for (const Key& existing : ring) {
      if (existing.name == keys[i].first) {
        invalid(where + ": duplicate key name '" + existing.name + "'");
      }
    }
    ring.push_back(Key{std::move(keys[i].first), std::move(keys[i].second)});
  }
  return KeyRing(std::move(ring));
}

const KeyRing::Key* KeyRing::find(std::string_view name) const {
  for (const Key& key : keys_) {
    if (key.name == name) return &key;
  }
  return nullptr;
}

std::string KeyRing::sign(const TokenClaims& claims) const {
  if (claims.subject.empty()) invalid("cannot sign a token without a subject");
  if (claims.ns.empty()) invalid("cannot sign a token without a namespace");
  if (claims.rights == 0) invalid("cannot sign a token without rights");
  std::string rights = format_rights(claims.rights);
  if (claims.expires_at <= claims.issued_at) {
    invalid("cannot sign a token that expires (" + iso_time(claims.expires_at) +
            ") no later than it is issued (" + iso_time(claims.issued_at) + ")");
  }
  const Key& key = keys_.front();
  std::string header = R"({"alg":"HS256","typ":"JWT","kid":)" + crdt::json_quote(key.name) + "}";
  std::string payload =
      "{\"sub\":" + crdt::json_quote(claims.subject) + ",\"ns\":" + crdt::json_quote(claims.ns) +
      ",\"rights\":" + crdt::json_quote(rights) + ",\"iat\":" + std::to_string(claims.issued_at) +
      ",\"exp\":" + std::to_string(claims.expires_at) + "}";
  // json_quote passes bytes through; reading the payload back catches text that is not
  // UTF-8, which verify() would refuse.
  try {
    detail::parse_json_object(payload);
  } catch (const Error& e) {
    invalid(std::string("cannot sign claims that are not UTF-8 text: ") + e.what());
  }
  std::string token = base64url_encode(header) + "." + base64url_encode(payload);
  token += "." + base64url_encode(hmac_sha256(key.secret, token));
  if (token.size() > kMaxTokenBytes) {
    invalid("claims too long: the token would be " + std::to_string(token.size()) +
            " bytes; at most " + std::to_string(kMaxTokenBytes) + " are accepted");
  }
  return token;
}

TokenClaims KeyRing::verify(std::string_view token, std::int64_t now_unix) const {
  if (token.empty()) unauthorized("token is empty");
  if (token.size() > kMaxTokenBytes) {
    unauthorized("token is " + std::to_string(token.size()) + " bytes; at most " +
                 std::to_string(kMaxTokenBytes) + " are accepted");
  }
  std::size_t first = token.find('.');
  std::size_t second = first == std::string_view::npos ? first : token.find('.', first + 1);
  if (second == std::string_view::npos || token.find('.', second + 1) != std::string_view::npos) {
    std::size_t parts = 1;
    for (char c : token) parts += c == '.' ? 1 : 0;
    unauthorized("token has " + std::to_string(parts) + (parts == 1 ? " part" : " parts") +
                 "; a JWT has 3 (header.payload.signature)");
  }
  std::string_view header_part = token.substr(0, first);
  std::string_view payload_part = token.substr(first + 1, second - first - 1);
  std::string_view signature_part = token.substr(second + 1);
  std::string_view signing_input = token.substr(0, second);

  // Header: only what is needed to pick the algorithm and the key is trusted before the
  // signature is checked.
  JsonObject header;
  try {
    header = detail::parse_json_object(base64url_decode(header_part, "token header"));
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kUnauthorized) throw;
    unauthorized(std::string("token header is not a JSON object: ") + e.what());
  }
  const JsonValue* alg = member(header, "alg");
  if (alg == nullptr) unauthorized("token header has no 'alg'");
  if (alg->kind != JsonValue::Kind::kString) {
    unauthorized(std::string("token header 'alg' must be a string, not ") +
                 detail::json_kind_name(alg->kind));
  }
  if (alg->string != "HS256") {
    if (alg->string == "none" || alg->string == "None" || alg->string == "NONE") {
      unauthorized("unsigned token (alg 'none') refused; only HS256 is accepted");
    }
    unauthorized("token algorithm " + quoted(alg->string) + " refused; only HS256 is accepted");
  }
  if (member(header, "crit") != nullptr) {
    unauthorized("token header has 'crit' extensions, which are not supported");
  }
  if (const JsonValue* typ = member(header, "typ")) {
    bool jwt = typ->kind == JsonValue::Kind::kString && typ->string.size() == 3 &&
               (typ->string[0] | 0x20) == 'j' && (typ->string[1] | 0x20) == 'w' &&
               (typ->string[2] | 0x20) == 't';
    if (!jwt) unauthorized("token header 'typ' must be \"JWT\"");
  }
  const JsonValue* kid = member(header, "kid");
  if (kid == nullptr) unauthorized("token header has no 'kid' (key name)");
  if (kid->kind != JsonValue::Kind::kString) {
    unauthorized(std::string("token header 'kid' must be a string, not ") +
                 detail::json_kind_name(kid->kind));
  }
  // An unknown key and a wrong signature get one answer, after the same work: whoever presents
  // a token learns nothing of the key names this relay has.
  const Key* key = find(kid->string);
  static const std::string kNoSecret(kMinSecretBytes, '\0');

  std::string signature = base64url_decode(signature_part, "token signature");
  if (signature.size() != kSignatureBytes) {
    unauthorized("token signature is " + std::to_string(signature.size()) +
                 " bytes; an HS256 signature is " + std::to_string(kSignatureBytes));
  }
  std::string expected = hmac_sha256(key ? key->secret : kNoSecret, signing_input);
  if (CRYPTO_memcmp(signature.data(), expected.data(), kSignatureBytes) != 0 || key == nullptr)
    unauthorized("token signature does not verify (wrong signature or unknown key)");

  JsonObject payload;
  try {
    payload = detail::parse_json_object(base64url_decode(payload_part, "token payload"));
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kUnauthorized) throw;
    unauthorized(std::string("token payload is not a JSON object: ") + e.what());
  }

  TokenClaims claims;
  claims.key_name = key->name;
  claims.subject = required_string_claim(payload, "sub");
  claims.ns = required_string_claim(payload, "ns");
  std::string rights = required_string_claim(payload, "rights");
  try {
    claims.rights = parse_rights(rights);
  } catch (const Error& e) {
    unauthorized(std::string("token claim 'rights' is invalid: ") + e.what());
  }
  std::optional<std::int64_t> exp = integer_claim(payload, "exp");
  if (!exp) unauthorized("token has no 'exp' claim (expiry time)");
  std::optional<std::int64_t> iat = integer_claim(payload, "iat");
  std::optional<std::int64_t> nbf = integer_claim(payload, "nbf");
  claims.expires_at = *exp;
  claims.issued_at = iat.value_or(0);

  if (*exp <= now_unix) unauthorized("token expired at " + iso_time(*exp));
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::int64_t latest = now_unix > kMax - kClockSkewSeconds ? kMax : now_unix + kClockSkewSeconds;
  if (nbf && *nbf > latest) unauthorized("token not valid before " + iso_time(*nbf));
  if (iat && *iat > latest) unauthorized("token issued in the future, at " + iso_time(*iat));
  return claims;
}

}  // namespace lattice::relay
