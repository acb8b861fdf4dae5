#include "relay/token.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "crdt/json.hpp"
#include "relay/detail/json.hpp"

namespace {

using lattice::Error;
using lattice::ErrorCode;
using namespace lattice::relay;

// 2023-11-14T22:13:20Z.
constexpr std::int64_t kNow = 1700000000;

const std::string kSecretA = "secret-A-0123456789abcdefghijklmnopqrstuv";
const std::string kSecretB = "secret-B-0123456789abcdefghijklmnopqrstuv";

// Test vectors computed with Python 3's standard library (json, base64, hmac, hashlib):
//   def b64(b): return base64.urlsafe_b64encode(b).rstrip(b'=').decode()
//   h = b64(json.dumps(header, **kw).encode()); p = b64(json.dumps(payload, **kw).encode())
//   token = h + '.' + p + '.' + b64(hmac.new(secret.encode(), (h + '.' + p).encode(),
//                                            hashlib.sha256).digest())
const std::string kInteropSecret = "interop-secret-0123456789abcdefghij";
// kw = separators=(',', ':'); header {"alg":"HS256","typ":"JWT","kid":"interop"}, payload
// {"sub":"device-7","ns":"acme/notes","rights":"read,write","iat":1700000000,"exp":1700003600}.
const std::string kInteropCompact =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImludGVyb3AifQ."
    "eyJzdWIiOiJkZXZpY2UtNyIsIm5zIjoiYWNtZS9ub3RlcyIsInJpZ2h0cyI6InJlYWQsd3JpdGUiLCJpYXQiOjE3MDAw"
    "MDAwMDAsImV4cCI6MTcwMDAwMzYwMH0."
    "icnmzJWwADTdXvunI6iVOB8HavF9TydAQdSpuv1PCs4";
// Default json.dumps (spaces, \uXXXX escapes); header {"typ":"JWT","alg":"HS256","kid":"interop"},
// payload {"sub":"Zoë's phone 📱","ns":"acme/\"quoted\"","rights":"admin,read",
// "iat":1700000000,"nbf":1700000000,"exp":1700086400,"aud":["relay"],"extra":{"a":1.5}}.
const std::string kInteropEscaped =
    "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJIUzI1NiIsICJraWQiOiAiaW50ZXJvcCJ9."
    "eyJzdWIiOiAiWm9cdTAwZWIncyBwaG9uZSBcdWQ4M2RcdWRjZjEiLCAibnMiOiAiYWNtZS9cInF1b3RlZFwiIiwgInJp"
    "Z2h0cyI6ICJhZG1pbixyZWFkIiwgImlhdCI6IDE3MDAwMDAwMDAsICJuYmYiOiAxNzAwMDAwMDAwLCAiZXhwIjogMTcw"
    "MDA4NjQwMCwgImF1ZCI6IFsicmVsYXkiXSwgImV4dHJhIjogeyJhIjogMS41fX0."
    "YpNFEh2uU1uLrzjQPyxjV7Qlf6VAOyiJWWq2oAW5yc8";

// --- helpers ------------------------------------------------------------------------------

template <class F>
std::optional<Error> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  return std::nullopt;
}

// Checks that `expr` throws Error with `code` and a message containing `text`.
#define CHECK_ERROR(expr, expected_code, text)                                                \
  do {                                                                                        \
    std::optional<Error> caught_ = error_of([&] { (void)(expr); });                           \
    REQUIRE_MESSAGE(caught_.has_value(), "no error thrown by " #expr);                        \
    CHECK_MESSAGE(caught_->code() == (expected_code), std::string(caught_->what()));          \
    CHECK_MESSAGE(std::string(caught_->what()).find(text) != std::string::npos, "message \"", \
                  std::string(caught_->what()), "\" lacks \"", std::string(text), "\"");      \
  } while (0)

std::string b64url(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 63];
  return out;
}

std::string hmac(std::string_view secret, std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest, &length);
  return std::string(reinterpret_cast<const char*>(digest), length);
}

// A token with exactly this header and payload text, HS256-signed with `secret`.
std::string craft(std::string_view header, std::string_view payload,
                  std::string_view secret = kSecretA) {
  std::string input = b64url(header) + "." + b64url(payload);
  return input + "." + b64url(hmac(secret, input));
}

const std::string kHeaderA = R"({"alg":"HS256","typ":"JWT","kid":"a"})";
const std::string kPayload =
    R"({"sub":"dev","ns":"notes","rights":"read","iat":1700000000,"exp":1700003600})";

TokenClaims sample_claims() {
  TokenClaims claims;
  claims.subject = "device-42";
  claims.ns = "acme/notes";
  claims.rights = kRead | kWrite;
  claims.issued_at = kNow;
  claims.expires_at = kNow + 3600;
  return claims;
}

KeyRing ring_a() { return KeyRing::from_keys({{"a", kSecretA}}); }

// A file in the temp directory, removed when the object goes.
class TempFile {
 public:
  explicit TempFile(std::string_view contents) {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("lattice_token_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) +
              ".keys"))
                .string();
    {
      std::ofstream out(path_, std::ios::binary);
      out << contents;
    }
    // As a key file must be: its owner's alone.
    std::filesystem::permissions(
        path_, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string part(const std::string& token, int index) {
  std::size_t start = 0;
  for (int i = 0; i < index; ++i) start = token.find('.', start) + 1;
  std::size_t end = token.find('.', start);
  return token.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

}  // namespace

// --- sign and verify ----------------------------------------------------------------------

TEST_CASE("a signed token verifies and returns the claims it was signed with") {
  KeyRing ring = ring_a();
  std::string token = ring.sign(sample_claims());
  TokenClaims claims = ring.verify(token, kNow + 10);
  CHECK(claims.subject == "device-42");
  CHECK(claims.ns == "acme/notes");
  CHECK(claims.rights == (kRead | kWrite));
  CHECK(claims.issued_at == kNow);
  CHECK(claims.expires_at == kNow + 3600);
  CHECK(claims.key_name == "a");
}

TEST_CASE("sign() writes the documented header and payload") {
  KeyRing ring = KeyRing::from_keys({{"k-2024.1", kSecretA}});
  TokenClaims claims = sample_claims();
  claims.subject = "quote\" backslash\\ newline\n tab\t nul" + std::string(1, '\0') + " é";
  std::string token = ring.sign(claims);
  std::string header_b64 = part(token, 0);
  CHECK(header_b64 == b64url(R"({"alg":"HS256","typ":"JWT","kid":"k-2024.1"})"));
  CHECK(part(token, 1) ==
        b64url("{\"sub\":\"quote\\\" backslash\\\\ newline\\n tab\\t nul\\u0000 \xC3\xA9\","
               "\"ns\":\"acme/notes\",\"rights\":\"read,write\",\"iat\":1700000000,"
               "\"exp\":1700003600}"));
  CHECK(token.find('=') == std::string::npos);
  CHECK(ring.verify(token, kNow).subject == claims.subject);
}

TEST_CASE("sign() refuses claims that would not verify") {
  KeyRing ring = ring_a();
  TokenClaims claims = sample_claims();
  claims.subject.clear();
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "without a subject");
  claims = sample_claims();
  claims.ns.clear();
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "without a namespace");
  claims = sample_claims();
  claims.rights = 0;
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "without rights");
  claims.rights = 8;
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "unknown right bits 8");
  claims = sample_claims();
  claims.expires_at = claims.issued_at;
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "no later than it is issued");
  claims = sample_claims();
  claims.ns = "bad \xFF utf-8";
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "not UTF-8");
  claims = sample_claims();
  claims.subject.assign(kMaxTokenBytes, 'x');
  CHECK_ERROR(ring.sign(claims), ErrorCode::kInvalidArgument, "claims too long");
}

TEST_CASE("sign() matches an independent HS256 implementation byte for byte") {
  KeyRing ring = KeyRing::from_keys({{"interop", kInteropSecret}});
  TokenClaims claims;
  claims.subject = "device-7";
  claims.ns = "acme/notes";
  claims.rights = kRead | kWrite;
  claims.issued_at = 1700000000;
  claims.expires_at = 1700003600;
  CHECK(ring.sign(claims) == kInteropCompact);

  TokenClaims read = ring.verify(kInteropCompact, 1700000001);
  CHECK(read.subject == "device-7");
  CHECK(read.ns == "acme/notes");
  CHECK(read.rights == (kRead | kWrite));
  CHECK(read.key_name == "interop");
}

TEST_CASE("a token from Python's json module with escapes, spaces, nbf and extra claims verifies") {
  KeyRing ring = KeyRing::from_keys({{"interop", kInteropSecret}});
  TokenClaims claims = ring.verify(kInteropEscaped, 1700000100);
  CHECK(claims.subject == "Zo\xC3\xAB's phone \xF0\x9F\x93\xB1");  // Zoë's phone 📱
  CHECK(claims.ns == "acme/\"quoted\"");
  CHECK(claims.rights == (kAdmin | kRead));
  CHECK(claims.issued_at == 1700000000);
  CHECK(claims.expires_at == 1700086400);
  CHECK_ERROR(KeyRing::from_keys({{"interop", kSecretA}}).verify(kInteropEscaped, 1700000100),
              ErrorCode::kUnauthorized, "token signature does not verify");
}

TEST_CASE("after a rotation, tokens signed with the old key verify while it stays in the ring") {
  KeyRing old_ring = KeyRing::from_keys({{"old", kSecretA}});
  KeyRing rotated = KeyRing::from_keys({{"new", kSecretB}, {"old", kSecretA}});
  KeyRing new_only = KeyRing::from_keys({{"new", kSecretB}});

  std::string old_token = old_ring.sign(sample_claims());
  CHECK(rotated.verify(old_token, kNow).key_name == "old");
  CHECK_ERROR(new_only.verify(old_token, kNow), ErrorCode::kUnauthorized,
              "token signature does not verify");

  CHECK(rotated.signing_key_name() == "new");
  std::string new_token = rotated.sign(sample_claims());
  CHECK(new_only.verify(new_token, kNow).key_name == "new");
  CHECK_ERROR(old_ring.verify(new_token, kNow), ErrorCode::kUnauthorized,
              "token signature does not verify");
}

// --- time ---------------------------------------------------------------------------------

TEST_CASE("a token is refused from its expiry time on, with the time in the message") {
  KeyRing ring = ring_a();
  std::string token = ring.sign(sample_claims());  // expires at kNow + 3600
  CHECK(ring.verify(token, kNow + 3599).subject == "device-42");
  CHECK_ERROR(ring.verify(token, kNow + 3600), ErrorCode::kUnauthorized,
              "token expired at 2023-11-14T23:13:20Z");
  CHECK_ERROR(ring.verify(token, kNow + 86400 * 400), ErrorCode::kUnauthorized,
              "token expired at 2023-11-14T23:13:20Z");
}

TEST_CASE("expiry times far from now are formatted as UTC dates") {
  KeyRing ring = ring_a();
  auto expired_message = [&](std::int64_t exp) {
    std::string token = craft(
        kHeaderA, R"({"sub":"d","ns":"n","rights":"read","exp":)" + std::to_string(exp) + "}");
    std::optional<Error> e = error_of([&] { ring.verify(token, kNow); });
    REQUIRE(e);
    return std::string(e->what());
  };
  CHECK(expired_message(0) == "token expired at 1970-01-01T00:00:00Z");
  CHECK(expired_message(-1) == "token expired at 1969-12-31T23:59:59Z");
  CHECK(expired_message(951782400) == "token expired at 2000-02-29T00:00:00Z");
  CHECK(expired_message(std::numeric_limits<std::int64_t>::min()).find("token expired at") == 0);
}

TEST_CASE("a token issued or valid only in the future is refused beyond the clock skew") {
  KeyRing ring = ring_a();
  TokenClaims claims = sample_claims();
  claims.issued_at = kNow + kClockSkewSeconds;
  CHECK(ring.verify(ring.sign(claims), kNow).subject == "device-42");
  claims.issued_at = kNow + kClockSkewSeconds + 1;
  CHECK_ERROR(ring.verify(ring.sign(claims), kNow), ErrorCode::kUnauthorized,
              "token issued in the future, at 2023-11-14T22:14:21Z");

  std::string nbf_token =
      craft(kHeaderA, R"({"sub":"d","ns":"n","rights":"read","nbf":1700000600,"exp":1700003600})");
  CHECK_ERROR(ring.verify(nbf_token, kNow), ErrorCode::kUnauthorized,
              "token not valid before 2023-11-14T22:23:20Z");
  CHECK(ring.verify(nbf_token, 1700000600 - kClockSkewSeconds).subject == "d");
}

// --- forgeries and malformed tokens -------------------------------------------------------

TEST_CASE("a token whose signature or payload was altered is refused") {
  KeyRing ring = ring_a();
  std::string token = ring.sign(sample_claims());
  std::size_t signature_start = token.rfind('.') + 1;

  std::string flipped = token;
  flipped[signature_start] = flipped[signature_start] == 'A' ? 'B' : 'A';
  CHECK_ERROR(ring.verify(flipped, kNow), ErrorCode::kUnauthorized,
              "token signature does not verify");

  // More rights in the payload, the original signature kept.
  std::string payload = R"({"sub":"device-42","ns":"acme/notes","rights":"read,write,admin",)"
                        R"("iat":1700000000,"exp":1700003600})";
  std::string escalated =
      part(token, 0) + "." + b64url(payload) + "." + token.substr(signature_start);
  CHECK_ERROR(ring.verify(escalated, kNow), ErrorCode::kUnauthorized, "signature does not verify");

  // The same header (same kid) and payload signed with a secret the relay does not hold.
  KeyRing impostor = KeyRing::from_keys({{"a", kSecretB}});
  CHECK_ERROR(ring.verify(impostor.sign(sample_claims()), kNow), ErrorCode::kUnauthorized,
              "token signature does not verify");

  CHECK_ERROR(ring.verify(token.substr(0, signature_start), kNow), ErrorCode::kUnauthorized,
              "token signature is 0 bytes; an HS256 signature is 32");
  std::string truncated = token.substr(0, token.size() - 4);
  CHECK_ERROR(ring.verify(truncated, kNow), ErrorCode::kUnauthorized, "signature is 29 bytes");
}

TEST_CASE("unsigned tokens (alg none) are refused") {
  KeyRing ring = ring_a();
  for (std::string alg : {"none", "None", "NONE"}) {
    std::string header = R"({"alg":")" + alg + R"(","typ":"JWT","kid":"a"})";
    std::string unsigned_token = b64url(header) + "." + b64url(kPayload) + ".";
    CHECK_ERROR(ring.verify(unsigned_token, kNow), ErrorCode::kUnauthorized,
                "unsigned token (alg 'none') refused");
    // Even with a correct HMAC attached.
    CHECK_ERROR(ring.verify(craft(header, kPayload), kNow), ErrorCode::kUnauthorized, "alg 'none'");
  }
}

TEST_CASE("algorithms other than HS256 are refused, whatever the signature") {
  KeyRing ring = ring_a();
  for (std::string alg : {"HS512", "RS256", "ES256", "hs256", "HS256 "}) {
    std::string header = R"({"alg":")" + alg + R"(","typ":"JWT","kid":"a"})";
    CHECK_ERROR(ring.verify(craft(header, kPayload), kNow), ErrorCode::kUnauthorized,
                "token algorithm '" + alg + "' refused; only HS256 is accepted");
  }
  CHECK_ERROR(ring.verify(craft(R"({"typ":"JWT","kid":"a"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "token header has no 'alg'");
  CHECK_ERROR(ring.verify(craft(R"({"alg":256,"kid":"a"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "'alg' must be a string, not integer");
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","kid":"a","crit":["exp"]})", kPayload), kNow),
              ErrorCode::kUnauthorized, "'crit' extensions");
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","kid":"a","typ":"JWE"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "'typ' must be \"JWT\"");
  // typ is optional, and case-insensitive.
  CHECK(ring.verify(craft(R"({"alg":"HS256","kid":"a"})", kPayload), kNow).subject == "dev");
  CHECK(ring.verify(craft(R"({"alg":"HS256","kid":"a","typ":"jwt"})", kPayload), kNow).ns ==
        "notes");
}

TEST_CASE("a token without a kid, or with a kid the ring lacks, is refused") {
  KeyRing ring = ring_a();
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","typ":"JWT"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "token header has no 'kid'");
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","kid":null})", kPayload), kNow),
              ErrorCode::kUnauthorized, "'kid' must be a string, not null");
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","kid":"x"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "token signature does not verify");
  // Untrusted text is shown safely in messages.
  CHECK_ERROR(ring.verify(craft(R"({"alg":"HS256","kid":"\n\u00e9"})", kPayload), kNow),
              ErrorCode::kUnauthorized, "token signature does not verify");
}

TEST_CASE("token parts that are not strict unpadded base64url are refused") {
  KeyRing ring = ring_a();
  std::string token = ring.sign(sample_claims());
  std::string header = part(token, 0);
  std::string rest = token.substr(header.size());

  CHECK_ERROR(ring.verify(header + "=" + rest, kNow), ErrorCode::kUnauthorized,
              "token header is not base64url");
  CHECK_ERROR(ring.verify("eyJ+" + token.substr(4), kNow), ErrorCode::kUnauthorized,
              "token header is not base64url: '+' character at offset 3");
  CHECK_ERROR(ring.verify("eyJ\x01" + token.substr(4), kNow), ErrorCode::kUnauthorized,
              "a non-printable character at offset 3");
  std::string too_long = header;
  while (too_long.size() % 4 != 1) too_long += 'A';
  CHECK_ERROR(ring.verify(too_long + rest, kNow), ErrorCode::kUnauthorized,
              "is not a possible unpadded length");
  // "YR" decodes to "a" like "YQ", but with nonzero unused bits.
  CHECK_ERROR(ring.verify("YR" + rest, kNow), ErrorCode::kUnauthorized, "nonzero padding bits");

  std::string payload = part(token, 1);
  std::string bad_payload =
      header + "." + payload.substr(0, 5) + "*" + payload.substr(6) + "." + part(token, 2);
  CHECK_ERROR(ring.verify(bad_payload, kNow), ErrorCode::kUnauthorized,
              "signature does not verify");  // the signature covers the text as sent
  std::string signature = part(token, 2);
  CHECK_ERROR(ring.verify(header + "." + payload + "." + signature + "=", kNow),
              ErrorCode::kUnauthorized, "token signature is not base64url");
  CHECK_ERROR(ring.verify(header + "." + payload + "." + signature.substr(0, 42) + "/", kNow),
              ErrorCode::kUnauthorized, "token signature is not base64url: '/' character");
}

TEST_CASE("a token without exactly three parts is refused") {
  KeyRing ring = ring_a();
  std::string token = ring.sign(sample_claims());
  CHECK_ERROR(ring.verify("", kNow), ErrorCode::kUnauthorized, "token is empty");
  CHECK_ERROR(ring.verify("abc", kNow), ErrorCode::kUnauthorized,
              "token has 1 part; a JWT has 3 (header.payload.signature)");
  CHECK_ERROR(ring.verify(token.substr(0, token.rfind('.')), kNow), ErrorCode::kUnauthorized,
              "token has 2 parts");
  CHECK_ERROR(ring.verify(token + ".e30", kNow), ErrorCode::kUnauthorized, "token has 4 parts");
  CHECK_ERROR(ring.verify("..", kNow), ErrorCode::kUnauthorized,
              "token header is not a JSON object");
  CHECK_ERROR(ring.verify(std::string(kMaxTokenBytes + 1, 'a'), kNow), ErrorCode::kUnauthorized,
              "at most 8192 are accepted");
}

TEST_CASE("a correctly signed payload that is not a JSON object is refused") {
  KeyRing ring = ring_a();
  CHECK_ERROR(ring.verify(craft(kHeaderA, "not json"), kNow), ErrorCode::kUnauthorized,
              "token payload is not a JSON object: JSON: expected '{' at the start");
  CHECK_ERROR(ring.verify(craft(kHeaderA, R"(["sub","dev"])"), kNow), ErrorCode::kUnauthorized,
              "token payload is not a JSON object");
  CHECK_ERROR(ring.verify(craft(kHeaderA, kPayload + " x"), kNow), ErrorCode::kUnauthorized,
              "unexpected bytes after the end of the object");
  CHECK_ERROR(ring.verify(craft(kHeaderA, ""), kNow), ErrorCode::kUnauthorized,
              "token payload is not a JSON object");
  CHECK_ERROR(ring.verify(craft("{\"alg\":\"HS256\",", kPayload), kNow), ErrorCode::kUnauthorized,
              "token header is not a JSON object");
  // Two values for one claim: which one would a relay believe?
  CHECK_ERROR(ring.verify(craft(kHeaderA, R"({"sub":"d","ns":"n","ns":"other","rights":"read",)"
                                          R"("exp":1700003600})"),
                          kNow),
              ErrorCode::kUnauthorized, "duplicate member \"ns\"");
}

TEST_CASE("required claims must be present and well-typed") {
  KeyRing ring = ring_a();
  auto verify_payload = [&](const std::string& payload) {
    return ring.verify(craft(kHeaderA, payload), kNow);
  };
  CHECK_ERROR(verify_payload(R"({"ns":"n","rights":"read","exp":1700003600})"),
              ErrorCode::kUnauthorized, "token has no 'sub' claim");
  CHECK_ERROR(verify_payload(R"({"sub":"d","rights":"read","exp":1700003600})"),
              ErrorCode::kUnauthorized, "token has no 'ns' claim");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","exp":1700003600})"), ErrorCode::kUnauthorized,
              "token has no 'rights' claim");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read"})"), ErrorCode::kUnauthorized,
              "token has no 'exp' claim");
  CHECK_ERROR(verify_payload(R"({"sub":7,"ns":"n","rights":"read","exp":1700003600})"),
              ErrorCode::kUnauthorized, "token claim 'sub' must be a string, not integer");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"","rights":"read","exp":1700003600})"),
              ErrorCode::kUnauthorized, "token claim 'ns' is empty");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":["read"],"exp":1700003600})"),
              ErrorCode::kUnauthorized,
              "token claim 'rights' must be a string, not object or array");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read,root","exp":1700003600})"),
              ErrorCode::kUnauthorized, "token claim 'rights' is invalid: unknown right 'root'");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read","exp":"1700003600"})"),
              ErrorCode::kUnauthorized, "token claim 'exp' must be an integer number of seconds");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read","exp":1.7e9})"),
              ErrorCode::kUnauthorized,
              "'exp' must be an integer number of seconds, not a fraction");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read","exp":99999999999999999999})"),
              ErrorCode::kUnauthorized, "'exp' must be an integer");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read","exp":1700003600,"iat":true})"),
              ErrorCode::kUnauthorized,
              "token claim 'iat' must be an integer number of seconds, not boolean");
  CHECK_ERROR(verify_payload(R"({"sub":"d","ns":"n","rights":"read","exp":1700003600,"nbf":null})"),
              ErrorCode::kUnauthorized, "token claim 'nbf' must be an integer");
  // iat is optional; unknown claims, nested or not, are ignored.
  TokenClaims claims = verify_payload(
      R"({"sub":"d","ns":"n","rights":"write","exp":1700003600,"aud":["x",{"y":[]}],"v":null})");
  CHECK(claims.issued_at == 0);
  CHECK(claims.rights == kWrite);
}

// --- rights, durations, require() ---------------------------------------------------------

TEST_CASE("rights parse from and format to comma-separated names") {
  CHECK(parse_rights("read") == kRead);
  CHECK(parse_rights("read,write") == (kRead | kWrite));
  CHECK(parse_rights("admin, read ,write") == kAllRights);
  CHECK(parse_rights("write,write") == kWrite);
  CHECK_ERROR(parse_rights(""), ErrorCode::kInvalidArgument, "empty rights list");
  CHECK_ERROR(parse_rights("  "), ErrorCode::kInvalidArgument, "empty rights list");
  CHECK_ERROR(parse_rights("read,,write"), ErrorCode::kInvalidArgument,
              "empty item in rights list 'read,,write'");
  CHECK_ERROR(parse_rights("read,"), ErrorCode::kInvalidArgument, "empty item");
  CHECK_ERROR(parse_rights("read,delete"), ErrorCode::kInvalidArgument, "unknown right 'delete'");
  CHECK_ERROR(parse_rights("Read"), ErrorCode::kInvalidArgument, "unknown right 'Read'");

  CHECK(format_rights(0) == "");
  CHECK(format_rights(kWrite) == "write");
  CHECK(format_rights(kAdmin | kRead) == "read,admin");
  CHECK(format_rights(kAllRights) == "read,write,admin");
  CHECK_ERROR(format_rights(16), ErrorCode::kInvalidArgument, "unknown right bits 16");
  for (unsigned bits = 1; bits <= kAllRights; ++bits)
    CHECK(parse_rights(format_rights(bits)) == bits);
}

TEST_CASE("durations are a positive count and one unit") {
  CHECK(parse_duration("30s") == 30);
  CHECK(parse_duration("15m") == 900);
  CHECK(parse_duration("1h") == 3600);
  CHECK(parse_duration("7d") == 604800);
  for (const char* bad : {"", "s", "30", "0s", "-5m", "1.5h", "1w", "1H", " 1h", "1h ", "1hd"}) {
    CHECK_ERROR(parse_duration(bad), ErrorCode::kInvalidArgument, "bad duration");
  }
  CHECK_ERROR(parse_duration("99999999999999999999s"), ErrorCode::kInvalidArgument, "too large");
  CHECK_ERROR(parse_duration("999999999999999999d"), ErrorCode::kInvalidArgument, "too large");
}

TEST_CASE("require() refuses another namespace and missing rights") {
  TokenClaims claims = sample_claims();  // acme/notes, read+write
  require(claims, "acme/notes", kRead);
  require(claims, "acme/notes", kRead | kWrite);
  require(claims, "acme/notes", 0);
  CHECK_ERROR(require(claims, "acme/other", kRead), ErrorCode::kUnauthorized,
              "token is for namespace 'acme/notes', not 'acme/other'");
  CHECK_ERROR(require(claims, "acme/notes", kAdmin), ErrorCode::kForbidden,
              "token lacks the admin right");
  claims.rights = kRead;
  CHECK_ERROR(require(claims, "acme/notes", kRead | kWrite), ErrorCode::kForbidden,
              "token lacks the write right");
  claims.rights = kWrite;
  CHECK_ERROR(require(claims, "acme/notes", kRead), ErrorCode::kForbidden,
              "token lacks the read right");
}

// --- key rings ----------------------------------------------------------------------------

TEST_CASE("a key file lists keys, the first one signing") {
  TempFile file(
      "# relay keys\n"
      "\n"
      "k2025  " +
      kSecretB +
      "\r\n"
      "   # an old key, kept until its tokens expire\n"
      "\tk2024\t" +
      kSecretA + "   \n" + "k.old_1-x " + std::string(32, 'z'));
  KeyRing ring = KeyRing::load(file.path());
  CHECK(ring.size() == 3);
  CHECK(ring.signing_key_name() == "k2025");
  KeyRing old_ring = KeyRing::from_keys({{"k2024", kSecretA}});
  CHECK(ring.verify(old_ring.sign(sample_claims()), kNow).key_name == "k2024");
  // The CR of a CRLF line is not part of the secret.
  KeyRing same = KeyRing::from_keys({{"k2025", kSecretB}});
  CHECK(same.verify(ring.sign(sample_claims()), kNow).key_name == "k2025");
}

TEST_CASE("a key file other users may read is refused, naming its mode") {
  TempFile file("k1 0123456789abcdef0123456789abcdef\n");
  std::filesystem::permissions(file.path(), std::filesystem::perms::others_read,
                               std::filesystem::perm_options::add);
  CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kIo,
              "has mode 604: other users may read it, and with it mint any token; run chmod 600");
  // Group bits are the operator's choice (a service group); only "others" are refused.
  std::filesystem::permissions(file.path(), std::filesystem::perms::group_read,
                               std::filesystem::perm_options::replace);
  std::filesystem::permissions(file.path(), std::filesystem::perms::owner_read,
                               std::filesystem::perm_options::add);
  CHECK(KeyRing::load(file.path()).size() == 1);
}

TEST_CASE("key file errors name the file and the line, and never show a secret") {
  const std::string short_secret = "0123456789abcdefghijklmnopqrstu";  // 31
  {
    TempFile file("# keys\nk1 " + kSecretA + "\nk2 " + short_secret + "\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "key file '" + file.path() +
                    "' line 3: the secret of key 'k2' is 31 characters; at least 32 are required");
    std::optional<Error> e = error_of([&] { KeyRing::load(file.path()); });
    CHECK(std::string(e->what()).find(short_secret) == std::string::npos);
  }
  {
    TempFile file("k/1 " + kSecretA + "\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "line 1: key name 'k/1' is not [A-Za-z0-9_.-]+");
  }
  {
    TempFile file("k1 " + kSecretA + "\n\nk1 " + kSecretB + "\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "line 3: duplicate key name 'k1' (first on line 1)");
  }
  {
    TempFile file("k1 " + kSecretA + " trailing\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "line 1: expected 'NAME SECRET', found 3 fields");
    std::optional<Error> e = error_of([&] { KeyRing::load(file.path()); });
    CHECK(std::string(e->what()).find(kSecretA) == std::string::npos);
  }
  {
    TempFile file("# k1 " + kSecretA + "\n" + kSecretA + "\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "line 2: expected 'NAME SECRET', found 1 field");
  }
  {
    TempFile file("# nothing yet\n\n");
    CHECK_ERROR(KeyRing::load(file.path()), ErrorCode::kInvalidArgument,
                "key file '" + file.path() + "' has no keys");
  }
  CHECK_ERROR(KeyRing::load("/nonexistent/lattice/keys"), ErrorCode::kIo,
              "cannot open key file '/nonexistent/lattice/keys': No such file or directory");
}

TEST_CASE("from_keys() applies the key file's rules") {
  CHECK_ERROR(KeyRing::from_keys({}), ErrorCode::kInvalidArgument, "at least one key");
  CHECK_ERROR(KeyRing::from_keys({{"a", kSecretA}, {"", kSecretB}}), ErrorCode::kInvalidArgument,
              "key #2: key name '' is not");
  CHECK_ERROR(KeyRing::from_keys({{"a", kSecretA}, {"b", "short"}}), ErrorCode::kInvalidArgument,
              "key #2: the secret of key 'b' is 5 characters");
  CHECK_ERROR(KeyRing::from_keys({{"a", kSecretA}, {"a", kSecretB}}), ErrorCode::kInvalidArgument,
              "key #2: duplicate key name 'a'");
}

// --- the JSON reader (relay/detail/json.hpp) ----------------------------------------------

TEST_CASE("the JSON reader decodes escapes, surrogate pairs and integers") {
  using lattice::relay::detail::JsonValue;
  using lattice::relay::detail::parse_json_object;
  auto object = parse_json_object(
      " {\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\ud83d\\ude00\", "
      "\"raw\":\"\xE2\x82\xAC\", \"i\":-9223372036854775808, \"j\":9223372036854775807,"
      "\"big\":9223372036854775808, \"f\":0.5, \"e\":1e3, \"z\":-0, \"t\":true, \"n\":null,"
      "\"o\":{\"a\":[1,[2],{}]}, \"a\":[] }\n");
  CHECK(object.at("s").string == "a\"b\\c/d\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  CHECK(object.at("raw").string == "\xE2\x82\xAC");
  CHECK(object.at("i").integer == std::numeric_limits<std::int64_t>::min());
  CHECK(object.at("j").integer == std::numeric_limits<std::int64_t>::max());
  CHECK(object.at("big").kind == JsonValue::Kind::kNumber);
  CHECK(object.at("f").kind == JsonValue::Kind::kNumber);
  CHECK(object.at("e").kind == JsonValue::Kind::kNumber);
  CHECK(object.at("z").kind == JsonValue::Kind::kInteger);
  CHECK(object.at("t").boolean);
  CHECK(object.at("n").kind == JsonValue::Kind::kNull);
  CHECK(object.at("o").kind == JsonValue::Kind::kNested);
  CHECK(object.at("a").kind == JsonValue::Kind::kNested);
  CHECK(parse_json_object("{}").empty());
}

TEST_CASE("the JSON reader refuses malformed input with the byte offset") {
  using lattice::relay::detail::parse_json_object;
  struct Case {
    std::string text;
    std::string message;
  };
  const Case cases[] = {
      {"", "expected '{' at the start of the object at byte 0 of 0"},
      {"[]", "expected '{'"},
      // Grammar errors name the character where reading stopped, or the end of the text.
      {"{", "unexpected end of the text at byte 1 of 1"},
      {"{\"a\":1,}", "unexpected character '}' at byte 7 of 8"},
      {"{\"a\" 1}", "unexpected character '1' at byte 5"},
      {"{\"a\":1 \"b\":2}", "unexpected character '\"' at byte 7"},
      {"{a:1}", "unexpected character 'a' at byte 1"},
      {"{\"a\":'x'}", "unexpected character ''' at byte 5"},
      {"{\"a\":tru}", "unexpected character 't' at byte 5"},
      {"{\"a\":01}", "unexpected character '1' at byte 6"},
      {"{\"a\":-}", "unexpected character '}' at byte 6"},
      {"{\"a\":1.}", "unexpected character '}' at byte 7"},
      {"{\"a\":1e}", "unexpected character '}' at byte 7"},
      {"{\"a\":+1}", "unexpected character '+' at byte 5"},
      {"{\"a\":\"x}", "unexpected end of the text at byte 8 of 8"},
      {"{\"a\":\"\t\"}", "unescaped control character U+0009 at byte 6"},
      {"{\"a\":\"\\x\"}", "unknown escape '\\x' at byte 7"},
      {"{\"a\":\"\\u12\"}", "bad hex digit in a \\u escape at byte 10"},
      {"{\"a\":\"\\u12", "unexpected end of the text at byte 10 of 10"},
      {"{\"a\":\"\\udc00\"}",
       "lone UTF-16 surrogate \\udc00 (a low surrogate without a high one before it) in member "
       "\"a\" at byte 6"},
      {"{\"a\":\"\\ud800\"}",
       "lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) in member "
       "\"a\" at byte 6"},
      {"{\"a\":\"\\ud800\\u0041\"}",
       "lone UTF-16 surrogate \\ud800 (a high surrogate not followed by a low one) in member "
       "\"a\" at byte 6"},
      {"{\"a\":\"\xFF\"}", "invalid UTF-8 (byte 0xFF) at byte 6"},
      {"{\"a\":\"\xC0\xAF\"}", "invalid UTF-8 (byte 0xC0) at byte 6"},
      {"{\"a\":\"\xE0\x80\xAF\"}", "invalid UTF-8 (byte 0xE0) at byte 6"},
      {"{\"a\":\"\xED\xA0\x80\"}", "invalid UTF-8 (byte 0xED) at byte 6"},
      {"{\"a\":\"\xF4\x90\x80\x80\"}", "invalid UTF-8 (byte 0xF4) at byte 6"},
      {"{\"a\":\"\xE2\x82", "invalid UTF-8 (byte 0xE2) at byte 6"},
      {"{\"a\":[1,]}", "unexpected character ']' at byte 8"},
      {"{\"a\":[1 2]}", "unexpected character '2' at byte 8"},
      {"{\"a\":{\"b\"}}", "unexpected character '}' at byte 9"},
      {"{\"a\":1,\"a\":2}", "duplicate member \"a\" at byte 7"},
      {"{\"a\":{\"b\":1,\"b\":2}}", "duplicate member \"b\" at byte 12"},
      {"{} {}", "unexpected bytes after the end of the object at byte 3"},
      {"{\"a\":" + std::string(20, '[') + std::string(20, ']') + "}", "nesting deeper than 16"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    CHECK_ERROR(parse_json_object(c.text), ErrorCode::kInvalidArgument, c.message);
  }
}

TEST_CASE("json_quote() escapes what JSON requires and the reader reads it back") {
  using lattice::crdt::json_quote;
  using lattice::relay::detail::parse_json_object;
  std::string text = "q\" b\\ / \x01\x1F\x7F \n\r\t\b\f \xC3\xA9";
  CHECK(json_quote(text) == "\"q\\\" b\\\\ / \\u0001\\u001f\\u007f \\n\\r\\t\\b\\f \xC3\xA9\"");
  CHECK(parse_json_object("{\"k\":" + json_quote(text) + "}").at("k").string == text);
}
