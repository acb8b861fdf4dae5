// Writes the seed corpus of hello_fuzz into the folder named by the first argument (hellos with
// a token that verifies, an expired one, a forged one, a long own log, and a frame of another
// type), and creates any further folders named (libFuzzer's working corpus).

#include <string>
#include <vector>

#include "relay/token.hpp"
#include "tests/fuzz/hello_fuzz_key.hpp"
#include "tests/fuzz/seed_writer.hpp"
#include "transport/frame.hpp"

using namespace lattice;

namespace {

crdt::SiteId site(std::uint8_t n) {
  crdt::SiteId id;
  for (auto& b : id.bytes) b = n++;
  return id;
}

std::string token(std::int64_t issued, std::int64_t expires, const char* secret) {
  relay::TokenClaims claims;
  claims.subject = "seed";
  claims.ns = "board";
  claims.rights = relay::kRead | relay::kWrite;
  claims.issued_at = issued;
  claims.expires_at = expires;
  return relay::KeyRing::from_keys({{fuzz::kKeyName, secret}}).sign(claims);
}

std::vector<transport::Frame> seeds() {
  std::vector<transport::Frame> out;
  transport::Hello hello;
  hello.site = site(7);
  hello.ns = "board";
  hello.token = token(fuzz::kNow - 10, fuzz::kNow + 3600, fuzz::kSecret);
  hello.held.advance(hello.site, 5);
  hello.held.advance(site(40), 12);
  hello.schema_fingerprint =
      "todo#1(id#2 text key,title#3 text lww,votes#4 integer counter);"
      "n%20te#9(k#2 integer key,k2#5 none key,body#6 real lww)";
  hello.schema_version = 3;
  hello.acked_seq = 2;
  hello.own_log = {{2, 20}, {3, 30}, {4, 40}, {5, 50}};
  out.push_back(hello);
  transport::Hello expired = hello;
  expired.token = token(fuzz::kNow - 7200, fuzz::kNow - 3600, fuzz::kSecret);
  out.push_back(expired);
  transport::Hello forged = hello;
  forged.token = token(fuzz::kNow - 10, fuzz::kNow + 3600, "another-secret-of-32-characters!!");
  out.push_back(forged);
  transport::Hello long_log = hello;
  long_log.held.advance(long_log.site, 600);
  for (std::uint64_t seq = 6; seq <= 600; ++seq) long_log.own_log.push_back({seq, seq * 7});
  out.push_back(long_log);
  out.push_back(transport::Ping{1});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> bytes;
  for (const auto& seed : seeds()) bytes.push_back(transport::encode_frame(seed));
  return lattice::fuzz::write_seeds(argc, argv, bytes, "hello");
}
