// The relay's decisions about a hello, without a relay: schema differences, schema adoption and
// the fork point of a copied replica's history.

#include "relay/namespace_rules.hpp"

#include <doctest/doctest.h>

#include "crdt/error.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice::relay {
namespace {

using crdt::TxnTag;

transport::Hello hello_with(std::uint64_t head, std::uint64_t acked, std::vector<TxnTag> log) {
  transport::Hello hello;
  hello.site.bytes[0] = 7;
  if (head) hello.held.advance(hello.site, head);
  hello.acked_seq = acked;
  hello.own_log = std::move(log);
  return hello;
}

TEST_CASE("a history the relay's log agrees with needs no rekey") {
  CHECK(!fork_point(hello_with(0, 0, {}), {}, 0));
  CHECK(!fork_point(hello_with(3, 1, {{1, 10}, {2, 20}, {3, 30}}), {{1, 10}, {2, 20}}, 2));
  // Entries at or before acked_seq are the relay's by its own acknowledgement.
  CHECK(!fork_point(hello_with(3, 2, {{2, 20}, {3, 30}}), {{1, 99}, {2, 20}}, 2));
  // A transaction the device wrote before it kept a log is no evidence either way.
  CHECK(!fork_point(hello_with(3, 0, {{3, 30}}), {{1, 10}, {2, 20}}, 2));
}

TEST_CASE("another copy's transactions at the same sequence numbers: keep the shared prefix") {
  // Both copies wrote 1 and 2 before the copy; then each its own 3 and 4.
  CHECK(fork_point(hello_with(4, 0, {{1, 10}, {2, 20}, {3, 31}, {4, 41}}),
                   {{1, 10}, {2, 20}, {3, 32}, {4, 42}}, 4) == 2u);
  // Disagreement at the first entry after acked_seq keeps acked_seq.
  CHECK(fork_point(hello_with(4, 2, {{2, 20}, {3, 31}, {4, 41}}), {{2, 20}, {3, 32}}, 3) == 2u);
}

TEST_CASE("the relay holding more of the site than the file wrote means a copy or a backup") {
  // The file's history is a prefix of the relay's: keep all of it, move nothing.
  CHECK(fork_point(hello_with(2, 0, {{1, 10}, {2, 20}}), {{1, 10}, {2, 20}, {3, 30}}, 3) == 2u);
  // The relay's vector says more without log entries: it counts transactions nobody tagged
  // (a forged claim), so the device keeps only what the logs agree on.
  CHECK(fork_point(hello_with(2, 0, {{1, 10}, {2, 20}}), {}, 5) == 0u);
  // A restored backup that wrote after the restore: keep what agrees.
  CHECK(fork_point(hello_with(3, 1, {{1, 10}, {2, 21}, {3, 31}}), {{1, 10}, {2, 20}, {3, 30}}, 3) ==
        1u);
}

TEST_CASE("a transaction the relay counts without its tag is not the device's") {
  // Another device claimed transactions 2 to 4 of this site id without listing them: the relay
  // counts them, but this device's own 2 and 3 were never merged. They move to a new site id
  // instead of being taken as held.
  CHECK(fork_point(hello_with(3, 0, {{1, 10}, {2, 20}, {3, 30}}), {{1, 10}}, 4) == 1u);
  // At or before acked_seq the relay's acknowledgement stands (a relay restored from a backup
  // may lack the tags).
  CHECK(!fork_point(hello_with(3, 2, {{2, 20}, {3, 30}}), {{3, 30}}, 3));
  // Transactions the relay does not count yet are simply not there yet.
  CHECK(!fork_point(hello_with(3, 0, {{1, 10}, {2, 20}, {3, 30}}), {{1, 10}}, 1));
}

TEST_CASE("first_difference names the first table or column that differs") {
  CHECK(first_difference("todo(id key,title lww)", "todo(id key,title counter)") ==
        "table 'todo' differs: relay has (id key,title lww), device has (id key,title counter)");
  CHECK(first_difference("a(id key);b(id key)", "a(id key)") ==
        "table 'b' is missing on the device");
  CHECK(first_difference("a(id key)", "a(id key);c(id key)") ==
        "table 'c' is not replicated by this namespace");
}

TEST_CASE("adopting a schema description recreates the same replicated schema") {
  auto device = test::open_todo_replica();
  device->exec(
      "CREATE TABLE \"odd \"\"name\"(k1 TEXT, k2 INTEGER, \"it's\" TEXT, n INTEGER NOT NULL "
      "DEFAULT 0, PRIMARY KEY (k2, k1));"
      "SELECT lattice_replicate('odd \"name', '{\"n\": \"counter\"}')");
  const std::string description = device->schema_description();
  auto relay = storage::Replica::open(":memory:");
  relay->exec(adoption_sql(description));
  CHECK(relay->schema_description() == description);

  // And the relay merges what the device writes.
  device->exec("INSERT INTO todo(id, title, votes) VALUES ('a', 'x', 3)");
  relay->apply(device->changes_since(relay->version_vector()));
  CHECK(relay->digest() == device->digest());
}

TEST_CASE("a schema description that does not parse is refused naming the part") {
  for (const char* bad :
       {"todo", "todo(", "todo(id key", "(id key)", "todo(id)", "todo(id key,title text)",
        "todo(title lww)", "todo(id text key,title lww)", "todo(id blobby key)"}) {
    INFO(bad);
    try {
      adoption_sql(bad);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kSchema);
      CHECK(std::string(e.what()).find("cannot adopt the schema") != std::string::npos);
    }
  }
}

std::unique_ptr<storage::Replica> at_version(int version) {
  const char* steps[] = {
      "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT, b INTEGER); SELECT lattice_replicate('t')",
      "ALTER TABLE t RENAME COLUMN a TO aa; ALTER TABLE t ADD COLUMN c REAL",
      ("ALTER TABLE t DROP COLUMN b; CREATE TABLE u(k INTEGER PRIMARY KEY);"
       "SELECT lattice_replicate('u')")};
  auto r = storage::Replica::open(":memory:");
  for (int v = 1; v <= version; ++v) r->migrate(v, steps[v - 1]);
  return r;
}

TEST_CASE("judge_schema tells same, behind, ahead and conflicting schemas apart") {
  using Kind = SchemaVerdict::Kind;
  auto v1 = at_version(1), v2 = at_version(2), v3 = at_version(3);
  const auto m1 = v1->schema_manifest(), m2 = v2->schema_manifest(), m3 = v3->schema_manifest();
  CHECK(judge_schema(m2, 2, "", m2, 2).kind == Kind::kSame);
  CHECK(judge_schema(m2, 0, "", m2, 7).kind == Kind::kSame);  // numbers alone do not matter
  // Behind: by the recorded version, or (none recorded) by ids, renames and drops included.
  CHECK(judge_schema(m3, 3, v3->schema_manifest_at(1), m1, 1).kind == Kind::kBehind);
  CHECK(judge_schema(m3, 3, "", m1, 1).kind == Kind::kBehind);
  CHECK(judge_schema(m3, 3, "", m2, 0).kind == Kind::kBehind);
  const auto ahead = judge_schema(m1, 1, "", m3, 3);
  CHECK(ahead.kind == Kind::kAhead);
  CHECK(ahead.why.find("namespace at version 1, device at version 3") != std::string::npos);

  // The same number with another schema; an older one that another version recorded.
  auto other = at_version(1);
  other->migrate(2, "ALTER TABLE t ADD COLUMN d TEXT");
  const auto same_number = judge_schema(m2, 2, "", other->schema_manifest(), 2);
  CHECK(same_number.kind == Kind::kMismatch);
  CHECK(same_number.why.find("version 2 differs") != std::string::npos);
  const auto recorded = judge_schema(m3, 3, v3->schema_manifest_at(2), other->schema_manifest(), 2);
  CHECK(recorded.kind == Kind::kMismatch);
  CHECK(recorded.why.find("version 2 of the namespace differs") != std::string::npos);
  // Unrecorded and unknown: a column the namespace never had, or another type.
  const auto unknown = judge_schema(m3, 3, "", other->schema_manifest(), 2);
  CHECK(unknown.kind == Kind::kMismatch);
  CHECK(unknown.why.find("column 't.d' is not in the namespace") != std::string::npos);
  auto typed = storage::Replica::open(":memory:");
  typed->migrate(1,
                 "CREATE TABLE t(id TEXT PRIMARY KEY, a INTEGER); SELECT lattice_replicate('t')");
  CHECK(judge_schema(m3, 3, "", typed->schema_manifest(), 1)
            .why.find("is integer lww on the device") != std::string::npos);
}

}  // namespace
}  // namespace lattice::relay
