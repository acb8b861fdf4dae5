// lattice-relay: the relay server's command line (docs/relay.md). Exit status: 0 done, 1 a
// runtime failure, 2 a usage error.

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "crdt/error.hpp"
#include "relay/server.hpp"

namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  lattice-relay serve --listen HOST:PORT --data DIR --key-file FILE\n"
    "                      (--tls-cert FILE --tls-key FILE | --insecure) [--schema FILE]\n"
    "                      [--schema-dir DIR] [--data-key-file FILE] [--cluster-db CONNINFO]\n"
    "                      [--cluster-snapshot-every N] [--cluster-prune-grace 10m]\n"
    "                      [--max-frame-bytes N] [--max-batch-changes N]\n"
    "                      [--max-transaction-bytes N]\n"
    "                      [--max-changes-per-second N] [--max-connections-per-token N]\n"
    "                      [--max-queue-bytes N] [--handshake-timeout 30s]\n"
    "                      [--shutdown-grace 10s] [--max-hello-bytes N] [--hello-timeout 10s]\n"
    "                      [--max-unauthenticated N] [--max-unauthenticated-per-source N]\n"
    "                      [--max-bytes-per-second N] [--max-digests-per-minute N]\n"
    "                      [--max-hellos-per-minute N] [--max-catch-up-bytes-per-second N]\n"
    "                      [--max-connects-per-source-per-second N] [--snapshot-max-age 60s]\n"
    "                      [--threads N] [--proxy-protocol-from ADDRESS[/BITS],...]\n"
    "  lattice-relay token --key-file FILE --ns NAME --rights read,write --ttl 1h\n"
    "                      [--subject NAME]\n"
    "  lattice-relay rotate-data-key --data DIR --data-key-file OLD --new-data-key-file NEW\n"
    "see docs/relay.md\n";

}  // namespace

int main(int argc, char** argv) {
  using lattice::Error;
  using lattice::ErrorCode;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    (args.empty() ? std::cerr : std::cout) << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());

  // Flag errors first (exit 2), then the command itself (exit 1).
  try {
    if (command == "serve") {
      const auto config = lattice::relay::parse_serve_args(args);
      try {
        return lattice::relay::serve(config, std::cout, std::cerr);
      } catch (const std::exception& e) {
        std::cerr << "lattice-relay: " << e.what() << "\n";
        return 1;
      }
    }
    if (command == "token") {
      const auto config = lattice::relay::parse_token_args(args);
      try {
        const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
        std::cout << lattice::relay::make_token(config, now) << "\n" << std::flush;
        return 0;
      } catch (const std::exception& e) {
        std::cerr << "lattice-relay: " << e.what() << "\n";
        return 1;
      }
    }
    if (command == "rotate-data-key") {
      const auto config = lattice::relay::parse_rotate_data_key_args(args);
      try {
        const int rotated = lattice::relay::rotate_data_key(config, std::cout);
        std::cout << rotated << " namespace file(s) re-encrypted under the key in '"
                  << config.new_data_key_file << "'\n";
        return 0;
      } catch (const std::exception& e) {
        std::cerr << "lattice-relay: " << e.what() << "\n";
        return 1;
      }
    }
    std::cerr << "lattice-relay: unknown command '" << command
              << "' (serve, token or rotate-data-key)\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << "lattice-relay: " << e.what() << "\n";
    return e.code() == ErrorCode::kInvalidArgument ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "lattice-relay: " << e.what() << "\n";
    return 1;
  }
}
