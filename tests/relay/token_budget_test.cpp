// The hub's budgets per token outlive the token's connections while the token owes them time,
// and no longer: a relay that runs for months sees every device's renewed tokens, and each
// snapshot download must not leave an entry behind for good. The clock is the hub's injected
// one (HubOptions::now_seconds), so that an hour of refill takes no time.

#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <variant>

#include "relay/hub.hpp"
#include "storage/schema_manifest.hpp"
#include "tests/storage/test_support.hpp"
#include "transport/frame.hpp"
#include "transport/loopback.hpp"

namespace lattice {
namespace {

constexpr std::uint64_t kMiB = 1u << 20;

struct Relay {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("lattice-token-budget-" + std::to_string(::getpid()));
  double now = 1000;
  std::unique_ptr<relay::Hub> hub;

  Relay() {
    std::filesystem::remove_all(dir);
    relay::HubOptions options;
    options.data_dir = dir.string();
    options.schema_sql = test::kTodoSchema;
    options.limits.max_catch_up_bytes_per_second = 1 * kMiB;
    options.now_seconds = [this] { return now; };
    options.authenticate = [](std::string_view token) {
      return relay::Grant{std::string(token), "board", relay::kGrantRead | relay::kGrantWrite};
    };
    hub = std::make_unique<relay::Hub>(options);
  }
  ~Relay() {
    hub.reset();
    std::filesystem::remove_all(dir);
  }

  // A device connects with `token`, says hello, is welcomed, and disconnects.
  void visit(transport::LoopbackNetwork& net, const std::string& token) {
    static const auto replica = test::open_todo_replica();
    auto [device, relay_end] = net.connect(token, {});
    bool welcomed = false;
    transport::Connection::Handlers handlers;
    handlers.on_frame = [&welcomed](std::string_view bytes) {
      if (std::holds_alternative<transport::Welcome>(transport::decode_frame(bytes, 1u << 20)))
        welcomed = true;
    };
    device->set_handlers(std::move(handlers));
    hub->accept(relay_end, "board");
    transport::Hello hello;
    hello.site = replica->site_id();
    hello.ns = "board";
    hello.token = token;
    hello.schema_fingerprint = storage::format_manifest(replica->schema_manifest());
    device->send(transport::encode_frame(hello));
    REQUIRE(net.run_until_idle(10'000));
    REQUIRE(welcomed);
    device->close("done");
    REQUIRE(net.run_until_idle(10'000));
  }
};

TEST_CASE("tokens that only downloaded snapshots are forgotten once their budgets refill") {
  Relay relay;
  // A thousand devices, each with its own token, download a 1 MiB snapshot.
  for (int i = 0; i < 1000; ++i)
    REQUIRE_FALSE(relay.hub->admit_snapshot("device-" + std::to_string(i), kMiB, kMiB));
  // They owe a second each: none is forgotten yet, or its next download would find a full
  // budget.
  CHECK(relay.hub->token_budget_count() == 1000);

  // One token spends its whole budget (16 MiB: four files, or a catch-up's burst if more) and
  // is refused.
  REQUIRE_FALSE(relay.hub->admit_snapshot("greedy", 16 * kMiB, 4 * kMiB));
  CHECK(relay.hub->admit_snapshot("greedy", kMiB, 4 * kMiB).has_value());

  // Two seconds on, the thousand owe nothing; the greedy one has 2 MiB back, and owes 14 s. New
  // tokens come and the settled ones go, while the greedy one is still refused a whole file
  // (forgotten, it would find 16 MiB).
  relay.now += 2;
  for (int i = 0; i < 100; ++i)
    REQUIRE_FALSE(relay.hub->admit_snapshot("renewed-" + std::to_string(i), kMiB, kMiB));
  // The hundred new ones and the greedy one: all that owe.
  CHECK(relay.hub->token_budget_count() == 101);
  const auto refused = relay.hub->admit_snapshot("greedy", 4 * kMiB, 4 * kMiB);
  REQUIRE(refused.has_value());
  // The wait, as the message says it and as the Retry-After header of the 429 carries it.
  CHECK(refused->retry_after_seconds >= 1);
  CHECK(refused->message.find("retry in " + std::to_string(refused->retry_after_seconds) + " s") !=
        std::string::npos);

  // Once it has waited, it downloads again.
  relay.now += 16;
  CHECK_FALSE(relay.hub->admit_snapshot("greedy", 4 * kMiB, 4 * kMiB).has_value());
}

TEST_CASE("tokens whose connections closed while they owed are forgotten once refilled") {
  Relay relay;
  transport::LoopbackNetwork net(1);
  // Each hello takes one of the token's 64 at once; closing within the refill (30 hellos a
  // minute by default: two seconds) leaves the token owing, so its entry stays past the close.
  for (int i = 0; i < 300; ++i) relay.visit(net, "device-" + std::to_string(i));
  CHECK(relay.hub->connection_count() == 0);
  CHECK(relay.hub->token_budget_count() == 300);
  // An hour on, the next devices' hellos find them settled, and they go once the table has
  // doubled since the last sweep (at 256 entries): the table stays within twice the tokens
  // that are connected or owe.
  relay.now += 3600;
  for (int i = 0; i < 250; ++i) relay.visit(net, "renewed-" + std::to_string(i));
  CHECK(relay.hub->token_budget_count() <= 250);
}

}  // namespace
}  // namespace lattice
