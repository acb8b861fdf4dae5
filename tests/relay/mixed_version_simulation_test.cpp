// The deterministic simulation of devices on several schema versions (docs/schema-evolution.md;
// protocol 4's schema versions): six devices and the relay's hub over loopback connections with
// seeded faults, on three versions of one schema:
//   v1  todo(id, title, note, prio), last-writer-wins;
//   v2  title renamed to summary, due and the counter votes added, a new table tag (with the
//       counter weight);
//   v3  note dropped, owner added.
// The namespace starts on version 1 or 2 (the operator's numbered migration files), devices on
// a version no newer. Devices upgrade at random times, mostly while offline (then write on the
// new version before they reconnect), sometimes while connected (the session closes and
// reconnects). One device's token has the admin right: when it comes back on a newer version
// it brings the relay's replica there (Replica::migrate_to); on some seeds the operator adds
// the next migration file at a relay restart instead. Other devices on a newer version are
// refused with schema_ahead and retry later, keeping their writes. Every write goes through the
// columns of the writing device's own version: inserts (some INSERT OR REPLACE over live rows),
// updates of random columns, counter increments, deletes, and rows of the new table.
//
// Checked:
//  1. at quiescent points (every connected device in sync with the relay), each connected
//     device's tables equal the relay's projected to the device's version: the tables and
//     columns the device has, matched by stable id through renames, less those the namespace
//     dropped;
//  2. no old device overwrites a cell of a column it does not know: rows p0..p9 are never
//     deleted, and every write of due, owner or votes to them is recorded with the writer's
//     (site, seq); the relay's cell must hold the last recorded write it has merged (writes are
//     at distinct virtual milliseconds, so the last in time is the last-writer-wins winner), and
//     its counter the sum of the increments it has merged, whatever older devices wrote meanwhile;
//  3. at the end, once every device has migrated to version 3 and synced, every replica holds
//     the relay's rows exactly (tables and digests), and check 2 holds for every write made.
// Seed 1 makes 20,000 writes; the other seeds 1,500 each, one for every 10 of LATTICE_SIM_SEEDS
// (1,000 by default). A failing seed is printed; LATTICE_SIM_SEED=<seed> replays it alone.

#include <doctest/doctest.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "crdt/error.hpp"
#include "storage/sqlite.hpp"
#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"

namespace lattice {
namespace {

using sim::kNamespace;

// The application's numbered migrations: kMigrations[v] brings version v-1 to v.
constexpr int kLastVersion = 3;
const char* const kMigrations[kLastVersion + 1] = {
    "",
    "CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT, note TEXT, prio INTEGER);"
    "SELECT lattice_replicate('todo');",
    "ALTER TABLE todo RENAME COLUMN title TO summary;"
    "ALTER TABLE todo ADD COLUMN due TEXT;"
    "ALTER TABLE todo ADD COLUMN votes INTEGER NOT NULL DEFAULT 0;"
    "SELECT lattice_replicate('todo', '{\"votes\": \"counter\"}');"
    "CREATE TABLE tag(id TEXT PRIMARY KEY, todo TEXT, name TEXT,"
    "                 weight INTEGER NOT NULL DEFAULT 0);"
    "SELECT lattice_replicate('tag', '{\"weight\": \"counter\"}');",
    "ALTER TABLE todo DROP COLUMN note;"
    "ALTER TABLE todo ADD COLUMN owner TEXT;",
};

// The last-writer-wins columns of todo a device on `version` writes.
std::vector<std::string> todo_columns(int version) {
  switch (version) {
    case 1:
      return {"title", "note", "prio"};
    case 2:
      return {"summary", "note", "prio", "due"};
    default:
      return {"summary", "prio", "due", "owner"};
  }
}

// The columns that older devices do not know, and the version that added them.
const std::map<std::string, int> kNewerColumns = {{"due", 2}, {"owner", 3}};

constexpr int kProtectedRows = 10;  // p0..p9, never deleted
constexpr int kOtherRows = 20;      // k0..k19

struct Device : sim::SimDevice {
  int version = 0;
  bool admin = false;
};

// A write of a newer column (or counter) of a protected row, by a device that knows it.
struct CellWrite {
  crdt::SiteId site;
  std::uint64_t seq = 0;
  crdt::Value value;  // the cell's value (LWW) or the counter's increment
};

struct SeedStats {
  std::size_t writes = 0;
  std::size_t quiescent_checks = 0;
  std::size_t upgrades_offline = 0;
  std::size_t upgrades_online = 0;
  std::size_t schema_ahead = 0;     // hellos refused until the namespace had the version
  std::size_t relay_upgrades = 0;   // by an admin device (migrate_to)
  std::size_t operator_files = 0;   // migration files added by the operator
  std::size_t protected_cells = 0;  // newer cells of protected rows checked (check 2)
};

class World : sim::Harness {
 public:
  World(std::uint64_t seed, const std::filesystem::path& dir)
      : Harness(seed), dir_(dir), operator_upgrades_(seed % 3 == 0) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "data");
    std::filesystem::create_directories(dir_ / "schema" / kNamespace);
    namespace_version_ = 1 + static_cast<int>(pick(2));
    for (int v = 1; v <= namespace_version_; ++v) add_operator_migration(v);
    stats_.operator_files = 0;
    start_relay();
    for (int i = 0; i < 6; ++i) {
      Device d;
      d.name = "device" + std::to_string(i);
      d.admin = i == 0;
      if (d.admin) d.token = "admin-token";
      d.replica = storage::Replica::open(":memory:", replica_options());
      migrate(d, 1 + static_cast<int>(pick(namespace_version_)));
      devices_.push_back(std::move(d));
    }
    for (auto& d : devices_) connect(d);
  }

  ~World() override {
    for (auto& d : devices_) d.session.reset();
    hub_.reset();
    std::filesystem::remove_all(dir_);
  }

  // `writes` writes, with connections dropped, devices offline, upgrades and relay restarts
  // between them, and a check at a quiescent point every few hundred steps.
  void storm(std::size_t writes) {
    std::size_t next_check = 300 + pick(400);
    for (std::size_t step = 0; stats_.writes < writes; ++step) {
      const auto action = pick(100);
      if (action < 70) {
        write(devices_[pick(devices_.size())]);
      } else if (action < 76) {
        Device& d = devices_[pick(devices_.size())];
        if (d.session) d.session->close("dropped by the simulation");
      } else if (action < 81) {
        go_offline(devices_[pick(devices_.size())]);
      } else if (action < 82) {
        // An upgrade while connected: the session notices at its next push, closes and
        // presents the new version.
        Device& d = devices_[pick(devices_.size())];
        if (d.version < kLastVersion) {
          migrate(d, d.version + 1);
          ++stats_.upgrades_online;
          if (d.session) d.session->push_local_changes();
        }
      } else if (action < 83) {
        restart_relay();
      }
      // Every write at its own virtual millisecond: the last in time is the last writer.
      net_.run_until(net_.now() + 1 + static_cast<double>(pick(15)));
      if (step == next_check) {
        quiesce_and_check();
        next_check = step + 300 + pick(400);
      }
    }
  }

  // Every device migrates to the last version, faults end, and everyone syncs.
  void finish() {
    faults_ = transport::LoopbackNetwork::Faults{1, 1, 0};
    if (!hub_) start_relay();
    for (auto& d : devices_) {
      d.wants_online = true;
      if (d.session) d.session->close("finishing");
    }
    net_.run_until(net_.now() + 100);
    for (auto& d : devices_) {
      if (d.version < kLastVersion) migrate(d, kLastVersion);
      if (!d.session) connect(d);
    }
    REQUIRE(net_.run_until_idle(5'000'000));
    check_refusals();
    storage::Replica& relay = hub_->replica(kNamespace);
    REQUIRE(relay.schema_version() == kLastVersion);
    // By column name: a relay that took a version from a manifest lays its columns out in
    // another order than the devices' migrations did.
    const storage::SchemaManifest relay_schema = relay.schema_manifest();
    const std::string expected = projected(relay, relay_schema, relay_schema, true);
    const std::string relay_digest = relay.digest();
    for (auto& d : devices_) {
      INFO(d.name);
      REQUIRE(d.session);
      REQUIRE(d.session->in_sync());
      REQUIRE(d.replica->version_vector().to_json() == relay.version_vector().to_json());
      REQUIRE(storage::format_manifest(d.replica->schema_manifest()) ==
              storage::format_manifest(relay_schema));
      REQUIRE(projected(*d.replica, relay_schema, relay_schema, false) == expected);
      REQUIRE(d.replica->digest() == relay_digest);
      REQUIRE(d.replica->check().problems.empty());
    }
    REQUIRE(relay.check().problems.empty());
    check_newer_cells(relay, /*everything=*/true);
  }

  SeedStats stats() const {
    SeedStats out = stats_;
    if (hub_) out.relay_upgrades += hub_->counters().schema_changes;
    return out;
  }

 private:
  void add_operator_migration(int version) {
    std::ofstream(dir_ / "schema" / kNamespace / (std::to_string(version) + ".sql"))
        << kMigrations[version];
    ++stats_.operator_files;
  }

  void start_relay() {
    relay::HubOptions options = hub_options(dir_ / "data");
    options.schema_dir = (dir_ / "schema").string();
    options.authenticate = [](std::string_view token) {
      unsigned rights = relay::kGrantRead | relay::kGrantWrite;
      if (token == "admin-token") {
        rights |= relay::kGrantAdmin;
      } else if (token != "device-token") {
        throw Error(ErrorCode::kUnauthorized, "unknown token");
      }
      return relay::Grant{std::string(token), kNamespace, rights};
    };
    hub_ = std::make_unique<relay::Hub>(options);
  }

  void restart_relay() {
    if (!hub_) return;
    stats_.relay_upgrades += hub_->counters().schema_changes;
    hub_.reset();
    // The operator ships the next version as a migration file, which the relay runs when it
    // opens the namespace again (unless an admin device brought that version first).
    if (operator_upgrades_ && namespace_version_ < kLastVersion && pick(3) == 0)
      add_operator_migration(++namespace_version_);
    net_.post(50 + static_cast<double>(pick(500)), [this] {
      if (!hub_) start_relay();
    });
  }

  void migrate(Device& d, int version) {
    for (int v = d.version + 1; v <= version; ++v) REQUIRE(d.replica->migrate(v, kMigrations[v]));
    d.version = version;
  }

  // A long stretch offline; some devices upgrade meanwhile and write on the new version.
  void go_offline(Device& d) {
    d.wants_online = false;
    if (d.session) d.session->close("going offline");
    if (d.version < kLastVersion && pick(2) == 0) {
      migrate(d, d.version + 1 + static_cast<int>(pick(kLastVersion - d.version)));
      ++stats_.upgrades_offline;
    }
    net_.post(200 + static_cast<double>(pick(3000)), [this, &d] {
      d.wants_online = true;
      connect(d);
    });
  }

  double reconnect_delay(sim::SimDevice& d) override {
    const std::string& why = d.closed_because;
    if (why.rfind("schema_ahead", 0) == 0) {
      ++stats_.schema_ahead;
      return 300 + static_cast<double>(pick(700));  // as SyncClient: wait longer
    }
    // A conflicting schema is a bug, and so is a changeset refused on a link that keeps frames
    // in order (on the others, the pieces of a changeset get mixed up).
    const bool bad_changeset =
        why.rfind("bad_changeset", 0) == 0 || why.rfind("bad changeset", 0) == 0;
    if (why.rfind("schema_mismatch", 0) == 0 || (bad_changeset && d.link_in_order))
      refusals_.push_back(d.name + ": " + why);
    return 10 + static_cast<double>(pick(200));
  }

  void check_refusals() {
    std::string all;
    for (const auto& r : refusals_) all += "\n  " + r;
    INFO(refusals_.size() << " refusals:" << all);
    REQUIRE(refusals_.empty());
  }

  std::string fresh(const Device& d) { return d.name + "." + std::to_string(++values_); }

  std::string random_key(bool deletable) {
    if (deletable || pick(2) == 0) return "k" + std::to_string(pick(kOtherRows));
    return "p" + std::to_string(pick(kProtectedRows));
  }

  crdt::Value random_value(const Device& d, const std::string& column) {
    if (column == "prio") return std::int64_t(pick(10));
    if (pick(8) == 0) return crdt::Value{};
    return fresh(d);
  }

  // One write through the device's own version's columns.
  void write(Device& d) {
    ++stats_.writes;
    if (d.version >= 2 && pick(5) == 0) {
      write_tag(d);
    } else {
      write_todo(d);
    }
    if (d.session) d.session->push_local_changes();
  }

  void write_todo(Device& d) {
    storage::Replica& r = *d.replica;
    const std::vector<std::string> columns = todo_columns(d.version);
    const auto op = pick(d.version >= 2 ? 8 : 6);
    const std::string key = random_key(op == 5);
    // A random non-empty subset of the columns, with fresh values.
    std::vector<std::string> names;
    std::vector<crdt::Value> values{key};
    for (const auto& c : columns)
      if (pick(2) == 0) names.push_back(c);
    if (names.empty()) names.push_back(columns[pick(columns.size())]);
    for (const auto& c : names) values.push_back(random_value(d, c));
    std::string list, marks, sets;
    for (const auto& c : names) {
      list += ", " + c;
      marks += ", ?";
      sets += std::string(sets.empty() ? "" : ", ") + c + " = ?";
    }
    const Before before = observe(d, key);
    bool insert = false;
    switch (op) {
      case 0:
      case 1:
        r.query("INSERT INTO todo(id" + list + ") VALUES (?" + marks + ") ON CONFLICT DO NOTHING",
                values);
        insert = true;
        break;
      case 2:
        // Over a live row: an insert of every column the device knows, the others untouched.
        r.query("INSERT OR REPLACE INTO todo(id" + list + ") VALUES (?" + marks + ")", values);
        insert = true;
        break;
      case 3:
      case 4: {
        values.erase(values.begin());
        values.push_back(key);
        r.query("UPDATE todo SET " + sets + " WHERE id = ?", values);
        break;
      }
      case 5:
        r.query("DELETE FROM todo WHERE id = ?", {key});
        break;
      default:  // version 2 on: the counter
        r.query("UPDATE todo SET votes = votes + ? WHERE id = ?", {std::int64_t(pick(7)) - 2, key});
        break;
    }
    record(d, key, before, insert);
  }

  void write_tag(Device& d) {
    storage::Replica& r = *d.replica;
    const std::string id = "g" + std::to_string(pick(10));
    switch (pick(5)) {
      case 0:
        r.query("INSERT INTO tag(id, todo, name) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                {id, random_key(false), fresh(d)});
        break;
      case 1:
        r.query("UPDATE tag SET name = ? WHERE id = ?", {fresh(d), id});
        break;
      case 2:
      case 3:
        r.query("UPDATE tag SET weight = weight + ? WHERE id = ?", {std::int64_t(pick(5)) - 1, id});
        break;
      case 4:
        r.query("DELETE FROM tag WHERE id = ?", {id});
        break;
    }
  }

  // ---- Check 2: the newer columns of protected rows --------------------------------------

  struct Before {
    std::uint64_t seq = 0;
    std::map<std::string, crdt::Value> row;  // empty: no row
  };

  std::map<std::string, crdt::Value> newer_cells(Device& d, const std::string& key) {
    std::map<std::string, crdt::Value> out;
    if (d.version < 2) return out;
    std::vector<std::string> names = {"votes"};
    for (const auto& [column, since] : kNewerColumns)
      if (d.version >= since) names.push_back(column);
    std::string list;
    for (const auto& c : names) list += std::string(list.empty() ? "" : ", ") + c;
    const auto rows = d.replica->query("SELECT " + list + " FROM todo WHERE id = ?", {key});
    if (rows.rows.empty()) return out;
    for (std::size_t i = 0; i < names.size(); ++i) out[names[i]] = rows.rows[0][i];
    return out;
  }

  Before observe(Device& d, const std::string& key) {
    return {d.replica->version_vector().get(d.replica->site_id()), newer_cells(d, key)};
  }

  // What the write just made did to the newer cells of a protected row, on a device that
  // knows them: an insert writes every column it knows, an update those whose value changed,
  // and a counter moves by the difference the device saw.
  void record(Device& d, const std::string& key, const Before& before, bool insert) {
    if (key[0] != 'p' || d.version < 2) return;
    const crdt::SiteId& site = d.replica->site_id();
    const std::uint64_t seq = d.replica->version_vector().get(site);
    if (seq == before.seq) return;  // nothing written
    const auto after = newer_cells(d, key);
    REQUIRE(!after.empty());
    for (const auto& [column, value] : after) {
      if (column == "votes") {
        const std::int64_t was =
            before.row.empty() ? 0 : std::get<std::int64_t>(before.row.at("votes"));
        const std::int64_t now = std::get<std::int64_t>(value);
        if (now != was) writes_[{key, column}].push_back({site, seq, now - was});
        continue;
      }
      auto old = before.row.find(column);
      if (insert || old == before.row.end() || test::typed(old->second) != test::typed(value))
        writes_[{key, column}].push_back({site, seq, value});
    }
  }

  // The relay's newer cells of protected rows hold what the writes it merged say: the last
  // write of each LWW cell (NULL without one), the sum of a counter's increments. With
  // `everything`, every write made must have been merged.
  //
  // A counter keeps one component per site, stamped with the site's last increment: a device
  // that incremented again before it pushed sends the sum of both at the later sequence. So the
  // relay holding a site's sequence q does not mean it has that site's increments up to q; it
  // has them up to the sequence of the component it holds.
  void check_newer_cells(storage::Replica& relay, bool everything) {
    const crdt::VersionVector held = relay.version_vector();
    const storage::SchemaManifest manifest = relay.schema_manifest();
    std::set<std::string> columns;
    std::string todo_id;
    for (const auto& t : manifest.tables)
      if (t.name == "todo") {
        for (const auto& c : t.columns) columns.insert(c.name);
        todo_id = std::to_string(t.id);
      }
    for (int i = 0; i < kProtectedRows; ++i) {
      const std::string key = "p" + std::to_string(i);
      for (const std::string column : {"due", "owner", "votes"}) {
        if (!columns.count(column)) continue;
        const auto row = relay.query("SELECT " + column + " FROM todo WHERE id = ?", {key});
        if (row.rows.empty()) continue;
        // The sequence of each site's component of the counter the relay holds.
        std::map<std::string, std::uint64_t> component;
        if (column == "votes") {
          const auto parts = relay.query(
              "SELECT lower(hex(s.site_id)), c.seq FROM lattice_counters_" + todo_id +
                  " c JOIN lattice_sites s ON s.idx = c.site WHERE c.pk = lattice_pk(?) AND "
                  "c.cl = (SELECT cl FROM lattice_rows_" +
                  todo_id + " WHERE pk = c.pk)",
              {key});
          for (const auto& p : parts.rows)
            component[std::get<std::string>(p[0])] =
                static_cast<std::uint64_t>(std::get<std::int64_t>(p[1]));
        }
        crdt::Value expected = column == "votes" ? crdt::Value{std::int64_t(0)} : crdt::Value{};
        // A cell a site wrote again in a transaction the relay does not hold yet: the earlier
        // write went to the relay only if it was pushed before the later one was made (a batch
        // carries a row as it is when extracted, and a later transaction's parts wait for their
        // own batch), so the relay may hold either value until then.
        bool uncertain = false;
        const auto& cell_writes = writes_[{key, column}];
        for (std::size_t i = 0; i < cell_writes.size(); ++i) {
          const CellWrite& w = cell_writes[i];
          if (held.get(w.site) < w.seq) {
            REQUIRE(!everything);
            continue;
          }
          if (column != "votes")
            for (std::size_t j = i + 1; j < cell_writes.size(); ++j)
              if (cell_writes[j].site == w.site && held.get(w.site) < cell_writes[j].seq)
                uncertain = true;
          if (column == "votes" && component[w.site.to_hex()] < w.seq) {
            REQUIRE(!everything);  // pushed later, with the site's next increments
            continue;
          }
          if (column == "votes") {
            expected = std::get<std::int64_t>(expected) + std::get<std::int64_t>(w.value);
          } else {
            expected = w.value;
          }
        }
        if (uncertain) continue;
        INFO("todo." << column << " of row " << key);
        REQUIRE(test::typed(row.rows[0][0]) == test::typed(expected));
        ++stats_.protected_cells;
      }
    }
  }

  // ---- Check 1: each device equals the relay projected to its version --------------------

  // The rows of the tables `device` has, with its columns the namespace has too (matched by
  // id), read from `r` under the names `r` gives them.
  static std::string projected(storage::Replica& r, const storage::SchemaManifest& device,
                               const storage::SchemaManifest& relay, bool on_relay) {
    std::string out;
    for (const auto& t : device.tables) {
      const storage::ManifestTable* mine = relay.table(t.id);
      if (!mine) continue;
      std::string list, keys;
      for (const auto& c : t.columns) {
        const storage::ManifestColumn* m = mine->column(c.id);
        if (!m) continue;
        const std::string name = storage::quote_identifier(on_relay ? m->name : c.name);
        list += (list.empty() ? "" : ", ") + name;
        if (c.kind == "key") keys += (keys.empty() ? "" : ", ") + name;
      }
      out += t.name + ":\n" +
             test::dump_query(r, "SELECT " + list + " FROM " +
                                     storage::quote_identifier(on_relay ? mine->name : t.name) +
                                     " ORDER BY " + keys);
    }
    return out;
  }

  // Runs the network until every connected device is in sync with the relay, then checks.
  // Links that reorder frames reconnect in order first: a changeset that overtook the one
  // before it is merged, but the device's vector cannot move past the gap (Replica::apply), so
  // the device would wait for its next connection, which no TCP stream needs.
  void quiesce_and_check() {
    const transport::LoopbackNetwork::Faults stormy = faults_;
    faults_.in_order = true;
    faults_.duplicate = 0;
    for (auto& d : devices_)
      if (d.session && !d.link_in_order) d.session->close("reconnecting in order to check");
    for (int round = 0;; ++round) {
      if (round == 20'000) {
        std::string why;
        for (auto& d : devices_)
          if (d.session)
            why += d.name + " (" + d.replica->site_id().to_hex() + ") v" +
                   std::to_string(d.version) + " in_sync=" + std::to_string(d.session->in_sync()) +
                   " state " + engine::sync_state_name(d.session->state()) + " vv " +
                   d.replica->version_vector().to_json() + "; ";
        INFO("not quiet: " << why << " relay "
                           << (hub_ ? hub_->replica(kNamespace).version_vector().to_json() : ""));
        REQUIRE(round < 20'000);  // 200 s of virtual time without a quiescent point
      }
      net_.run_until(net_.now() + 10);
      if (!hub_) continue;
      const std::string held = hub_->replica(kNamespace).version_vector().to_json();
      bool quiet = true;
      for (auto& d : devices_)
        if (d.session && (!d.session->in_sync() || d.replica->version_vector().to_json() != held))
          quiet = false;
      if (quiet) break;
    }
    check_refusals();
    storage::Replica& relay = hub_->replica(kNamespace);
    const storage::SchemaManifest relay_manifest = relay.schema_manifest();
    for (auto& d : devices_) {
      if (!d.session) continue;
      INFO(d.name << " on version " << d.version << ", the namespace on "
                  << relay.schema_version());
      const storage::SchemaManifest mine = d.replica->schema_manifest();
      REQUIRE(projected(*d.replica, mine, relay_manifest, false) ==
              projected(relay, mine, relay_manifest, true));
    }
    check_newer_cells(relay, /*everything=*/false);
    ++stats_.quiescent_checks;
    faults_ = stormy;
  }

  std::filesystem::path dir_;
  bool operator_upgrades_;      // seeds divisible by 3: the operator ships migration files too
  int namespace_version_ = 0;   // the operator's last migration file
  std::deque<Device> devices_;  // stable references: callbacks hold them
  std::size_t values_ = 0;
  std::map<std::pair<std::string, std::string>, std::vector<CellWrite>> writes_;
  std::vector<std::string> refusals_;  // closes that should never happen
  SeedStats stats_;
};

SeedStats run_seed(std::uint64_t seed) {
  INFO("seed " << seed << " (replay with LATTICE_SIM_SEED=" << seed << ")");
  World world(seed, sim::seed_directory("lattice-mixed", seed));
  world.storm(seed == 1 ? 20'000 : 1'500);
  world.finish();
  return world.stats();
}

TEST_CASE("devices on three schema versions sync through the relay and converge once migrated") {
  if (const auto replay = sim::replayed_seed()) {
    run_seed(*replay);
    return;
  }
  // Seed 1 is the long one; then one seed for every 10 of the storm simulation's.
  const std::uint64_t seeds = 1 + sim::seed_count(1000) / 10;
  SeedStats total;
  for (std::uint64_t seed = 1; seed <= seeds; ++seed) {
    const SeedStats s = run_seed(seed);  // REQUIREs inside stop at the first failure
    total.writes += s.writes;
    total.quiescent_checks += s.quiescent_checks;
    total.upgrades_offline += s.upgrades_offline;
    total.upgrades_online += s.upgrades_online;
    total.schema_ahead += s.schema_ahead;
    total.relay_upgrades += s.relay_upgrades;
    total.operator_files += s.operator_files;
    total.protected_cells += s.protected_cells;
  }
  MESSAGE(seeds << " seeds: " << total.writes << " writes, " << total.quiescent_checks
                << " quiescent checks, " << total.upgrades_offline << " upgrades offline, "
                << total.upgrades_online << " online, " << total.schema_ahead
                << " schema_ahead refusals, " << total.relay_upgrades
                << " relay upgrades by an admin device, " << total.operator_files
                << " migration files added by the operator, " << total.protected_cells
                << " newer cells of protected rows checked");
  CHECK(total.writes >= 20'000);
  CHECK(total.upgrades_offline > 0);
  CHECK(total.upgrades_online > 0);
  CHECK(total.schema_ahead > 0);
  CHECK(total.relay_upgrades > 0);
  CHECK(total.protected_cells > 0);
  if (seeds >= 4) CHECK(total.operator_files > 0);
}

}  // namespace
}  // namespace lattice
