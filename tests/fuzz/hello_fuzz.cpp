// libFuzzer target for what a relay does with a connection's first frame, before the device is
// authenticated (relay/hub.cpp, on_first_frame, and docs/protocol.md, "The relay's limits"):
// the size limit, peek_hello (the version, namespace and token, read without decoding the
// rest), the token check, then the full decode and the hello's claims (check_vector, the fork
// point against an empty origin log, the schema manifest and its judgement). Any bytes must end in
// a lattice::Error or pass; peek_hello must agree with decode_frame on every frame both read. Built
// only with -DLATTICE_FUZZ=ON under clang; see tests/fuzz/CMakeLists.txt.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "relay/namespace_rules.hpp"
#include "relay/token.hpp"
#include "storage/schema_manifest.hpp"
#include "tests/fuzz/hello_fuzz_key.hpp"
#include "transport/claims.hpp"
#include "transport/frame.hpp"

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "hello_fuzz: %s\n", what);
  std::abort();
}

constexpr std::size_t kMaxHelloBytes = 64u << 10;  // HubLimits::max_hello_bytes

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace lattice;
  if (size > kMaxHelloBytes) return 0;  // refused before anything is read
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  static const relay::KeyRing ring =
      relay::KeyRing::from_keys({{lattice::fuzz::kKeyName, lattice::fuzz::kSecret}});

  std::optional<transport::HelloCredentials> peeked;
  bool peek_refused = false;
  try {
    peeked = transport::peek_hello(bytes);
  } catch (const Error&) {
    peek_refused = true;
  }
  if (peeked) {
    try {
      ring.verify(peeked->token, lattice::fuzz::kNow);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kUnauthorized) die("a token refusal that is not unauthorized");
    }
  }

  transport::Frame frame;
  try {
    frame = transport::decode_frame(bytes, kMaxHelloBytes);
  } catch (const Error&) {
    return 0;
  }
  // What decodes whole, peek_hello must have read the same way.
  auto* hello = std::get_if<transport::Hello>(&frame);
  if (peek_refused) die("peek_hello refused a frame that decode_frame reads");
  if (!hello) {
    if (peeked) die("peek_hello took a frame of another type for a hello");
    return 0;
  }
  if (!peeked) die("peek_hello missed a hello");
  if (peeked->protocol_version != hello->protocol_version || peeked->ns != hello->ns ||
      peeked->token != hello->token)
    die("peek_hello and decode_frame disagree on a hello's first fields");
  (void)transport::check_vector(hello->held, "hello.held");
  (void)relay::fork_point(*hello, {}, hello->acked_seq);
  // The schema manifest an authenticated device presents (protocol 4), judged against a
  // namespace's: it parses or is refused with an Error, and a parsed one reads back the same.
  try {
    const auto device = storage::parse_manifest(hello->schema_fingerprint);
    const std::string text = storage::format_manifest(device);
    if (storage::format_manifest(storage::parse_manifest(text)) != text)
      die("a schema manifest does not read back as written");
    static const auto namespace_schema =
        storage::parse_manifest("todo#1(id#2 text key,title#3 text lww,votes#4 integer counter)");
    (void)relay::judge_schema(namespace_schema, 2, "", device,
                              static_cast<std::int64_t>(hello->schema_version >> 1));
  } catch (const Error&) {
  }
  return 0;
}
