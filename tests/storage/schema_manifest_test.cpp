// The replicated schema with its ids (storage/schema_manifest.hpp), and migrate_to: how a relay
// follows the schema of a device that is a version ahead (docs/schema-evolution.md).

#include "storage/schema_manifest.hpp"

#include <doctest/doctest.h>

#include "crdt/error.hpp"
#include "storage/replica.hpp"

namespace lattice {
namespace {

using storage::Replica;
using storage::SchemaManifest;

constexpr const char* kV1 =
    "CREATE TABLE task(id TEXT PRIMARY KEY, title TEXT, note TEXT, done INTEGER);"
    "SELECT lattice_replicate('task');";
// Renames a column and the table, drops one, adds a counter and a table.
constexpr const char* kV2 =
    "ALTER TABLE task RENAME COLUMN title TO summary;"
    "ALTER TABLE task DROP COLUMN note;"
    "ALTER TABLE task ADD COLUMN votes INTEGER NOT NULL DEFAULT 0;"
    "SELECT lattice_replicate('task', '{\"votes\": \"counter\"}');"
    "ALTER TABLE task RENAME TO job;"
    "CREATE TABLE \"odd; (name)\"(\"k,1\" INTEGER, \"k 2\" TEXT, \"v#\" REAL,"
    " PRIMARY KEY (\"k 2\", \"k,1\"));"
    "SELECT lattice_replicate('odd; (name)');";

std::unique_ptr<Replica> device_at(int version) {
  auto r = Replica::open(":memory:");
  r->migrate(1, kV1);
  if (version >= 2) r->migrate(2, kV2);
  return r;
}

storage::ManifestTable& named(SchemaManifest& m, const std::string& name) {
  for (auto& t : m.tables)
    if (t.name == name) return t;
  FAIL("no table " << name);
  throw;
}

crdt::Value one(Replica& r, const std::string& sql) { return r.query(sql).rows.at(0).at(0); }

TEST_CASE("a manifest's text reads back to the same manifest, whatever the names hold") {
  auto device = device_at(2);
  const SchemaManifest m = device->schema_manifest();
  const std::string text = storage::format_manifest(m);
  CHECK(text.find("odd%3B%20%28name%29#") != std::string::npos);
  CHECK(text.find("k%2C1#") != std::string::npos);
  SchemaManifest back = storage::parse_manifest(text);
  CHECK(storage::format_manifest(back) == text);
  CHECK(back.tables == m.tables);
  // The renamed column keeps the id its first name gave it.
  SchemaManifest old = device_at(1)->schema_manifest();
  const auto& job = named(back, "job");
  CHECK(named(old, "task").id == job.id);
  crdt::ColumnId title = 0;
  for (const auto& c : named(old, "task").columns)
    if (c.name == "title") title = c.id;
  const auto* summary = job.column(title);
  REQUIRE(summary);
  CHECK(summary->name == "summary");
}

TEST_CASE("a malformed manifest is refused naming what is wrong") {
  auto refused = [](const std::string& text, const std::string& what) {
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(storage::parse_manifest(text), doctest::Contains(what.c_str()), Error);
  };
  refused("t#1(id#2 text key", "expected ')'");
  refused("t#1(id#2 text lww)", "has no key column");
  refused("t#1(a#3 text lww,id#2 text key)", "after other columns");
  refused("t#1(id#2 text key,a#2 text lww)", "appears twice");
  refused("t#1(id#2 text key);u#1(id#2 text key)", "table id 1 appears twice");
  refused("t#0(id#2 text key)", "an id from 1");
  refused("t#99999999999(id#2 text key)", "an id from 1");
  refused("t#1(id#2 blob key)", "unknown affinity");
  refused("t#1(id#2 text sum)", "unknown kind");
  refused("T#1(id#2 text key)", "expected a name");
  refused("t%4#1(id#2 text key)", "escape");
  refused("t%00#1(id#2 text key)", "NUL byte");
  refused("t#1(id#2 text key)x", "expected ';'");
  CHECK(storage::parse_manifest("").empty());
}

TEST_CASE("a replica follows a newer device's schema by ids, and older devices' writes land") {
  auto v1 = device_at(1), v2 = device_at(2);
  v1->exec("INSERT INTO task(id, title, note, done) VALUES ('a', 'old title', 'n', 0)");
  auto relay = Replica::open(":memory:");
  // Adopted straight at version 2: the renamed column gets its original id, not its name's.
  CHECK(relay->migrate_to(2, v2->schema_manifest()));
  CHECK(storage::format_manifest(relay->schema_manifest()) ==
        storage::format_manifest(v2->schema_manifest()));
  CHECK(relay->schema_version() == 2);
  CHECK(relay->schema_manifest_at(2) == storage::format_manifest(v2->schema_manifest()));
  CHECK_FALSE(relay->migrate_to(2, v2->schema_manifest()));

  // A version-1 device's write to `title` lands in `summary`; its dropped column goes nowhere.
  relay->apply(v1->changes_since(relay->version_vector()));
  CHECK(one(*relay, "SELECT summary FROM job WHERE id = 'a'") == crdt::Value{"old title"});
  v2->apply(relay->changes_since(v2->version_vector()));
  CHECK(one(*v2, "SELECT summary FROM job WHERE id = 'a'") == crdt::Value{"old title"});
  relay->exec("SELECT 1");
  v2->exec("UPDATE job SET votes = votes + 2, summary = 'new' WHERE id = 'a'");
  relay->apply(v2->changes_since(relay->version_vector()));
  v1->apply(relay->changes_since(v1->version_vector()));
  CHECK(one(*v1, "SELECT title FROM task WHERE id = 'a'") == crdt::Value{"new"});
  v1->migrate(2, kV2);
  CHECK(one(*v1, "SELECT votes FROM job WHERE id = 'a'") == crdt::Value{std::int64_t{2}});
}

TEST_CASE("a replica steps through versions with migrate_to, and refuses what cannot be") {
  auto v1 = device_at(1), v2 = device_at(2);
  auto relay = Replica::open(":memory:");
  relay->migrate_to(1, v1->schema_manifest());
  relay->exec("SELECT 1");
  v1->exec("INSERT INTO task(id, title, note) VALUES ('a', 'kept', 'gone')");
  relay->apply(v1->changes_since(relay->version_vector()));
  CHECK(relay->migrate_to(2, v2->schema_manifest()));
  CHECK(one(*relay, "SELECT summary FROM job WHERE id = 'a'") == crdt::Value{"kept"});
  CHECK(relay->schema_manifest_at(1) == storage::format_manifest(v1->schema_manifest()));

  // The same number with another result.
  auto other = Replica::open(":memory:");
  other->migrate(1, kV1);
  other->migrate(2, "ALTER TABLE task ADD COLUMN due TEXT");
  CHECK_THROWS_WITH_AS(relay->migrate_to(2, other->schema_manifest()),
                       doctest::Contains("ran here before with another result"), Error);
  // A dropped column's id stays reserved: `note` cannot come back under its old id.
  storage::SchemaManifest back = relay->schema_manifest();
  SchemaManifest old = v1->schema_manifest();
  for (const auto& c : named(old, "task").columns)
    if (c.name == "note") named(back, "job").columns.push_back(c);
  const std::string before = storage::format_manifest(relay->schema_manifest());
  CHECK_THROWS_WITH_AS(relay->migrate_to(3, back),
                       doctest::Contains("dropped here, which stays reserved"), Error);
  // Another key.
  storage::SchemaManifest rekeyed = relay->schema_manifest();
  named(rekeyed, "job").columns.front().affinity = "integer";
  CHECK_THROWS_WITH_AS(relay->migrate_to(3, rekeyed), doctest::Contains("another primary key"),
                       Error);
  CHECK(storage::format_manifest(relay->schema_manifest()) == before);
  CHECK(relay->schema_version() == 2);
}

TEST_CASE("a replica that merged before a migration merges after it, under the new names") {
  for (const bool by_manifest : {false, true}) {
    CAPTURE(by_manifest);
    auto v1 = device_at(1), v2 = device_at(2);
    auto relay = device_at(1);
    v1->exec("INSERT INTO task(id, title, note) VALUES ('a', 'before', 'n')");
    relay->apply(v1->changes_since(relay->version_vector()));  // statements prepared, cached
    if (by_manifest)
      relay->migrate_to(2, v2->schema_manifest());
    else
      relay->migrate(2, kV2);
    v2->exec("INSERT INTO job(id, summary, votes) VALUES ('b', 'after', 2)");
    relay->apply(v2->changes_since(relay->version_vector()));
    CHECK(one(*relay, "SELECT summary FROM job WHERE id = 'b'") == crdt::Value{"after"});
    v1->exec("UPDATE task SET title = 'old name' WHERE id = 'a'");
    relay->apply(v1->changes_since(relay->version_vector()));
    CHECK(one(*relay, "SELECT summary FROM job WHERE id = 'a'") == crdt::Value{"old name"});
  }
}

TEST_CASE("a replica that took a schema from a manifest has the digest of the device it follows") {
  auto device = Replica::open(":memory:");
  // Columns declared in an order other than their ids'.
  device->migrate(1,
                  "CREATE TABLE t(id TEXT PRIMARY KEY, zeta TEXT, alpha INTEGER, mid REAL);"
                  "SELECT lattice_replicate('t')");
  device->exec("INSERT INTO t VALUES ('a', 'z', 1, 0.5), ('b', NULL, 2, NULL)");
  auto relay = Replica::open(":memory:");
  relay->migrate_to(1, device->schema_manifest());
  relay->apply(device->changes_since(relay->version_vector()));
  CHECK(relay->query("SELECT group_concat(name) FROM pragma_table_info('t')").rows.at(0).at(0) !=
        device->query("SELECT group_concat(name) FROM pragma_table_info('t')").rows.at(0).at(0));
  CHECK(relay->digest() == device->digest());
}

TEST_CASE("manifest_difference names the first difference and the side") {
  auto v1 = device_at(1), v2 = device_at(2);
  auto a = v1->schema_manifest(), b = v2->schema_manifest();
  CHECK(storage::manifest_difference(a, a, "relay", "device") == "");
  CHECK(storage::manifest_difference(a, b, "relay", "device") ==
        "table 'task' on the relay is 'job' on the device");
  auto c = b;
  named(c, "job").name = "task";
  for (auto& col : named(c, "task").columns)
    if (col.name == "summary") col.name = "title";
  CHECK(storage::manifest_difference(a, c, "relay", "device") ==
        "table 'task' has column 'note' on the relay only");
}

}  // namespace
}  // namespace lattice
