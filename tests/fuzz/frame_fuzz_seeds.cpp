// Writes one encoded frame of each type, the seed corpus of frame_fuzz, into the folder named by
// the first argument, and creates any further folders named (libFuzzer's working corpus).

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tests/fuzz/seed_writer.hpp"
#include "transport/frame.hpp"

using namespace lattice::transport;
using lattice::crdt::SiteId;
using lattice::crdt::VersionVector;

namespace {

SiteId site(std::uint8_t n) {
  SiteId id;
  for (auto& b : id.bytes) b = n++;
  return id;
}

std::vector<Frame> seeds() {
  VersionVector held;
  held.advance(site(1), 3);
  held.advance(site(40), std::numeric_limits<std::uint64_t>::max());
  std::vector<Frame> out;
  out.push_back(Hello{kProtocolVersion, site(7), "team/notes", "header.payload.signature", held,
                      "sha256:0123abcd"});
  out.push_back(Welcome{kProtocolVersion, held});
  out.push_back(Changes{1, std::string("\x97\xaaLATTICE-CS\x01\x80\x80\x90\x90\x90", 18)});
  out.push_back(Ack{1, held});
  out.push_back(ErrorFrame{WireError::kSchemaMismatch, "table notes: column body is missing"});
  out.push_back(Ping{0x1234});
  out.push_back(Pong{0x1234});
  out.push_back(Rekey{"another device presents this site id"});
  out.push_back(DigestRequest{7});
  out.push_back(Digest{7, "todo 2 9f86d081884c7d65"});
  out.push_back(ChangesPiece{2, 0, "first bytes"});
  out.push_back(Ack{2, held, 5});
  out.push_back(Delta{6, 5, std::string("\x97\xaaLATTICE-CS\x01\x80\x80\x90\x90\x90", 18)});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> bytes;
  for (const auto& seed : seeds()) bytes.push_back(encode_frame(seed));
  return lattice::fuzz::write_seeds(argc, argv, bytes, "frame");
}
