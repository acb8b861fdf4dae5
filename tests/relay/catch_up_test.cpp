// A device's catch-up through the hub over a clean loopback link: how often the relay extracts
// what the device lacks. Extraction runs on the relay's only thread, so extracting a large
// transaction more than once holds every device of the relay that much longer.

#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <utility>

#include "crdt/changeset_codec.hpp"
#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"
#include "transport/frame.hpp"

namespace lattice {
namespace {

// Between the hub and a device's session: every frame from the hub goes through `edit`, which
// may change it, before the session sees it.
class Tap : public transport::Connection {
 public:
  using Edit = std::function<void(transport::Frame&)>;
  Tap(std::shared_ptr<transport::Connection> inner, Edit edit)
      : inner_(std::move(inner)), edit_(std::move(edit)) {}
  void set_handlers(Handlers handlers) override {
    handlers.on_frame = [edit = edit_,
                         on_frame = std::move(handlers.on_frame)](std::string_view bytes) {
      transport::Frame frame = transport::decode_frame(bytes);
      edit(frame);
      on_frame(transport::encode_frame(frame));
    };
    inner_->set_handlers(std::move(handlers));
  }
  void send(std::string frame) override { inner_->send(std::move(frame)); }
  void close(const std::string& reason) override { inner_->close(reason); }
  std::string peer() const override { return inner_->peer(); }

 private:
  std::shared_ptr<transport::Connection> inner_;
  Edit edit_;
};

class CatchUp : sim::SmallWorld {
 public:
  CatchUp() : SmallWorld(7, "lattice-catch-up") {
    hub_ = std::make_unique<relay::Hub>(device_hub_options(dir_, test::kTodoSchema));
  }

  sim::SimDevice& device(const std::string& name) { return add_device(name, test::kTodoSchema); }
  void sync(sim::SimDevice& d) {
    if (d.session)
      d.session->push_local_changes();
    else
      connect(d);
    REQUIRE(net_.run_until_idle(1'000'000));
    REQUIRE(d.session);
    REQUIRE(d.session->in_sync());
  }
  // A session for `d` whose frames from the hub pass through `edit`; it does not reconnect
  // after a close, whose reason `d.closed_because` keeps.
  void connect_through(sim::SimDevice& d, Tap::Edit edit) {
    auto [client, server] = net_.connect(d.name, faults_);
    hub_->accept(server, sim::kNamespace);
    engine::SyncSession::Events events;
    events.on_closed = [this, &d](const std::string& reason) {
      d.closed_because = reason;
      net_.post(0, [&d] { d.session.reset(); });
    };
    engine::SyncSession::Options options{sim::kNamespace, d.token, 20};
    options.piece_bytes = 500;
    d.session = std::make_unique<engine::SyncSession>(
        *d.replica, std::make_shared<Tap>(client, std::move(edit)), options, events);
    d.session->start();
    REQUIRE(net_.run_until_idle(1'000'000));
  }
  const relay::HubCounters& counters() { return hub_->counters(); }
};

TEST_CASE("one transaction larger than a catch-up round is extracted once, then goes in pieces") {
  CatchUp world;
  sim::SimDevice& writer = world.device("writer");
  // 500 rows of 3 column changes each in one transaction: 60 times the relay's 25 changes per
  // outgoing frame, and many times its 4 KiB round.
  writer.replica->exec(
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
      "INSERT INTO todo(id, title, votes) SELECT 'row' || i, 'a title long enough', i FROM n");
  world.sync(writer);

  sim::SimDevice& newcomer = world.device("newcomer");
  const std::uint64_t extractions = world.counters().catch_up_extractions;
  const std::uint64_t pieced = world.counters().pieced_changesets_out;
  world.sync(newcomer);
  CHECK(world.counters().catch_up_extractions - extractions == 1);
  CHECK(world.counters().pieced_changesets_out - pieced == 1);
  CHECK(test::dump_table(*newcomer.replica, "todo") == test::dump_table(*writer.replica, "todo"));

  // Behind it, many small transactions: frames of several of them still shrink to fit a round.
  for (int i = 0; i < 40; ++i)
    writer.replica->exec("INSERT INTO todo(id, title) VALUES ('small" + std::to_string(i) +
                         "', 'x')");
  world.sync(writer);
  sim::SimDevice& third = world.device("third");
  world.sync(third);
  CHECK(test::dump_table(*third.replica, "todo") == test::dump_table(*writer.replica, "todo"));
}

// Frames of one connection never overtake each other, but a device does not rely on it to
// join pieces: joined to the pieces of another changeset, the last bytes of one can decode
// into rows that neither holds, stored under versions that then never change.
TEST_CASE("a changeset the relay sends in pieces is numbered, and a device joins only its own") {
  CatchUp world;
  sim::SimDevice& writer = world.device("writer");
  auto big_transaction = [&](const std::string& prefix) {
    writer.replica->exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO todo(id, title, votes) SELECT '" +
        prefix + "' || i, 'a title long enough', i FROM n");
    world.sync(writer);
  };
  big_transaction("first");
  sim::SimDevice& reader = world.device("reader");

  SUBCASE("each changeset in pieces has its own number, on its pieces and its last frame") {
    std::vector<std::pair<bool, std::uint64_t>> seen;  // (a piece, its number)
    world.connect_through(reader, [&](transport::Frame& frame) {
      if (auto* piece = std::get_if<transport::ChangesPiece>(&frame))
        seen.emplace_back(true, piece->batch);
      if (auto* changes = std::get_if<transport::Changes>(&frame))
        seen.emplace_back(false, changes->batch);
    });
    REQUIRE(reader.session);
    big_transaction("second");  // fanned out to the reader, in pieces too
    REQUIRE(reader.session->in_sync());
    CHECK(test::dump_table(*reader.replica, "todo") == test::dump_table(*writer.replica, "todo"));
    // Pieces of changeset 1 then its last frame, the same for changeset 2.
    std::vector<std::uint64_t> pieced;
    for (std::size_t i = 0; i < seen.size(); ++i)
      if (seen[i].first && (i == 0 || !seen[i - 1].first || seen[i - 1].second != seen[i].second))
        pieced.push_back(seen[i].second);
    CHECK(pieced == std::vector<std::uint64_t>{1, 2});
    for (std::size_t i = 0; i + 1 < seen.size(); ++i)
      if (seen[i].first) CHECK(seen[i + 1].second == seen[i].second);
  }

  SUBCASE("the last bytes of another changeset are refused, and nothing of either is merged") {
    bool in_pieces = false, edited = false;
    world.connect_through(reader, [&](transport::Frame& frame) {
      if (std::get_if<transport::ChangesPiece>(&frame)) in_pieces = true;
      auto* changes = std::get_if<transport::Changes>(&frame);
      if (changes && in_pieces && !edited) {
        changes->batch += 1;
        edited = true;
      }
    });
    REQUIRE(edited);
    CHECK_FALSE(reader.session);
    CHECK(reader.closed_because ==
          "malformed frame from relay: a changes frame of changeset 2 where changeset 1 was "
          "unfinished");
    CHECK(reader.replica->query("SELECT count(*) FROM todo").rows[0][0] ==
          crdt::Value{std::int64_t{0}});
    world.sync(reader);  // an honest connection then brings everything
    CHECK(test::dump_table(*reader.replica, "todo") == test::dump_table(*writer.replica, "todo"));
  }
}

// A delta that follows another carries only the vector entries that moved: a device rebuilds
// the whole from the last one it kept, and refuses one it cannot rebuild exactly.
TEST_CASE("a device follows the relay's deltas, and refuses one that does not follow its last") {
  CatchUp world;
  sim::SimDevice& writer = world.device("writer");
  sim::SimDevice& reader = world.device("reader");
  world.sync(writer);
  auto write = [&](int i) {
    writer.replica->exec("INSERT INTO todo(id, title) VALUES ('w" + std::to_string(i) + "', 'x')");
    world.sync(writer);
  };

  SUBCASE("deltas that follow each other bring every write") {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> deltas;  // (group, previous)
    world.connect_through(reader, [&](transport::Frame& frame) {
      if (auto* delta = std::get_if<transport::Delta>(&frame))
        deltas.emplace_back(delta->group, delta->previous);
    });
    for (int i = 0; i < 5; ++i) write(i);
    REQUIRE(reader.session);
    CHECK(reader.session->in_sync());
    CHECK(test::dump_table(*reader.replica, "todo") == test::dump_table(*writer.replica, "todo"));
    // The first whole (the reader had none), then each following the one before.
    REQUIRE(deltas.size() == 5);
    CHECK(deltas[0].second == 0);
    for (std::size_t i = 1; i < deltas.size(); ++i) CHECK(deltas[i].second == deltas[i - 1].first);
    CHECK(world.counters().following_deltas == 4);
  }

  SUBCASE("a delta following another group than the last is refused as malformed") {
    world.connect_through(reader, [&](transport::Frame& frame) {
      if (auto* delta = std::get_if<transport::Delta>(&frame); delta && delta->previous >= 2)
        delta->previous -= 1;  // as if the delta before had been lost on the way
    });
    write(0);
    write(1);
    REQUIRE(reader.session);
    write(2);
    CHECK_FALSE(reader.session);
    CHECK(reader.closed_because ==
          "malformed frame from relay: a delta following group 1 where the last delta was 2");
    CHECK(reader.replica->query("SELECT count(*) FROM todo WHERE id = 'w2'").rows[0][0] ==
          crdt::Value{std::int64_t{0}});
    world.sync(reader);
    CHECK(test::dump_table(*reader.replica, "todo") == test::dump_table(*writer.replica, "todo"));
  }

  SUBCASE("a following delta with a since is refused as a bad changeset, nothing of it merged") {
    world.connect_through(reader, [&](transport::Frame& frame) {
      auto* delta = std::get_if<transport::Delta>(&frame);
      if (!delta || delta->previous == 0) return;
      crdt::Changeset changeset = crdt::decode_changeset(delta->changeset);
      changeset.since = changeset.until;
      delta->changeset = crdt::encode_changeset(changeset);
    });
    write(0);
    write(1);
    CHECK_FALSE(reader.session);
    CHECK(reader.closed_because.find("a delta following another has no since") !=
          std::string::npos);
    CHECK(reader.replica->query("SELECT count(*) FROM todo WHERE id = 'w1'").rows[0][0] ==
          crdt::Value{std::int64_t{0}});
    world.sync(reader);
    CHECK(test::dump_table(*reader.replica, "todo") == test::dump_table(*writer.replica, "todo"));
  }
}

}  // namespace
}  // namespace lattice
