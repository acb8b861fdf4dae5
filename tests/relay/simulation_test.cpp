// The deterministic simulation: the relay's hub and 8 devices in one process over loopback
// connections with seeded delays, reordering, duplicated frames, dropped connections, devices
// offline for long stretches, relay restarts from its file, replica files copied to new devices
// (which then write under the copied site id until the relay has them rekey), and new devices that
// join from the relay's snapshot of the namespace (Hub::snapshot, installed with
// Replica::install_snapshot). A joiner downloads the file in chunks on the virtual clock while the
// storm goes on, as over HTTP: the relay reads the file it opened even after a newer snapshot
// replaced it, a relay restart breaks the response off, and some responses break by themselves.
// Each prefix must be refused as corrupt with the replica left empty; the device then resumes
// (Range/If-Range: the rest of the same file, or a newer file whole if the relay replaced it) or
// gives up and syncs change by change. What it installs is mostly older than the relay by then,
// and the rest arrives in the hello's catch-up. One more device, with a write token, is hostile:
// it forges every claim a frame can make (hellos that present others' site ids, vectors, logs and
// acked_seq; changes whose until, since, origin log and stamps lie). After the storm, every honest
// device must hold exactly the relay's rows, and nothing an honest device wrote may be lost: every
// row of its ledger (rows only it inserts and votes on) is at the relay with all its votes, and no
// sequence counter left its sane range (docs/protocol.md, "What a peer may claim"). Odd seeds run
// on a schema with the constraints applications declare (CHECKs on a counter and a flag, a NOCASE
// two-column UNIQUE, a foreign key with ON DELETE CASCADE, an application trigger), on the devices
// and the relay alike: there the devices must also hold back the same rows for the same reasons as
// the relay, and sometimes resolve them (docs/data-quality.md). A failing seed is printed;
// LATTICE_SIM_SEED=<seed> replays it alone, exactly (site ids and clocks come from the seed and
// the virtual clock).

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "crdt/changeset_codec.hpp"
#include "crdt/error.hpp"
#include "engine/sync/sync_session.hpp"
#include "relay/hub.hpp"
#include "tests/relay/simulation_harness.hpp"
#include "tests/storage/test_support.hpp"
#include "transport/claims.hpp"
#include "transport/loopback.hpp"

namespace lattice {
namespace {

using sim::kNamespace;
using transport::LoopbackNetwork;

// The schema of odd seeds. Ledger writes (inserts, votes up) break none of its constraints.
constexpr const char* kConstrainedSchema = R"sql(
CREATE TABLE todo(id TEXT PRIMARY KEY, title TEXT,
                  done INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
                  votes INTEGER NOT NULL DEFAULT 0 CHECK (votes >= -3));
CREATE TABLE tag(id TEXT PRIMARY KEY, todo TEXT NOT NULL REFERENCES todo(id) ON DELETE CASCADE,
                 name TEXT NOT NULL COLLATE NOCASE, UNIQUE (todo, name));
CREATE TABLE tag_log(tag TEXT, name TEXT);
CREATE TRIGGER tag_logged AFTER INSERT ON tag BEGIN
  INSERT INTO tag_log VALUES (NEW.id, NEW.name);
END;
SELECT lattice_replicate('todo', '{"votes": "counter"}');
SELECT lattice_replicate('tag');
)sql";

struct Device : sim::SimDevice {
  std::vector<std::string> ledger;  // rows only this device inserted and votes on
  bool copied = false;              // a copy of its file exists, or it is one
};

// A new device downloading the relay's snapshot, and the response it is receiving.
struct Download {
  Device device;               // joins devices_ once it installed the file or gave up
  std::filesystem::path part;  // what it received so far, as the sync client's DB-snapshot
  std::string etag;            // of the file the part is a prefix of: If-Range on a resume
  std::uint64_t size = 0;      // that file's size
  std::uint64_t had = 0;       // bytes in the part
  // The response: the file the relay opened, the byte at which it stops (the size, or where the
  // connection breaks), the chunks it has left, and which start of the relay sends it.
  std::ifstream served;
  std::string served_path;
  std::uint64_t end = 0;
  int chunks_left = 0;
  int served_by = 0;
  bool outlived = false;  // the relay removed the file while the response was reading it
  int breaks = 0;
  bool done = false;
};

// A device with a valid write token that lies in every frame (see the file comment). It speaks
// raw frames over its loopback connection, with a replica of its own for real-looking content.
struct Hostile {
  std::unique_ptr<storage::Replica> replica;
  std::shared_ptr<transport::Connection> connection;
  crdt::SiteId presented;          // the site id of its current hello: its own or a victim's
  crdt::VersionVector relay_held;  // from the welcome
  bool live = false;
  bool connect_pending = false;
  std::uint64_t batch = 0;
  std::string incoming;     // pieces of the relay's next changes frame
  std::size_t frames = 0;   // forged changes frames sent
  std::size_t refused = 0;  // connections the relay closed on a refusal
};

// What a seed's storm did, summed over seeds and checked to have happened (see the test).
struct SeedStats {
  int clones = 0;
  int rekeys = 0;
  int joiners = 0;                   // new devices that downloaded the relay's snapshot
  int snapshot_installs = 0;         // of them: installed it
  int stale_installs = 0;            // of those: a snapshot older than the relay's state
  int cut_downloads = 0;             // responses broken off; each prefix refused
  int resumed_downloads = 0;         // resumes that got the rest of the same file
  int restarted_downloads = 0;       // resumes that got a newer file whole
  int restarts_during_download = 0;  // responses broken off by a relay restart
  int outlived_files = 0;            // responses that read a file the relay had removed
  int gave_up = 0;                   // joiners that synced change by change instead
  std::size_t hostile_frames = 0;
  std::size_t hostile_refused = 0;
  std::size_t refused_locally = 0;     // constrained seeds: writes SQLite refused on the device
  std::size_t held = 0;                // constrained seeds: rows held back at the end
  std::uint64_t pieced = 0;            // batches and changesets that travelled in pieces
  std::uint64_t shared_commits = 0;    // changes frames that shared a group commit
  std::uint64_t following_deltas = 0;  // deltas that carried only the vector entries that moved
  int restarts_mid_commit = 0;         // relay restarts with a group commit not yet acknowledged

  SeedStats& operator+=(const SeedStats& o) {
    clones += o.clones;
    rekeys += o.rekeys;
    joiners += o.joiners;
    snapshot_installs += o.snapshot_installs;
    stale_installs += o.stale_installs;
    cut_downloads += o.cut_downloads;
    resumed_downloads += o.resumed_downloads;
    restarted_downloads += o.restarted_downloads;
    restarts_during_download += o.restarts_during_download;
    outlived_files += o.outlived_files;
    gave_up += o.gave_up;
    hostile_frames += o.hostile_frames;
    hostile_refused += o.hostile_refused;
    refused_locally += o.refused_locally;
    held += o.held;
    pieced += o.pieced;
    shared_commits += o.shared_commits;
    following_deltas += o.following_deltas;
    restarts_mid_commit += o.restarts_mid_commit;
    return *this;
  }
};

class World : sim::Harness {
 public:
  World(std::uint64_t seed, const std::filesystem::path& dir)
      : Harness(seed), seed_(seed), constrained_(seed % 2 == 1), dir_(dir) {
    std::filesystem::remove_all(dir_);
    start_relay();
    for (int i = 0; i < 8; ++i) {
      Device d;
      d.name = "device" + std::to_string(i);
      d.replica = open_replica();
      devices_.push_back(std::move(d));
    }
    for (auto& d : devices_) connect(d);
    hostile_.replica = open_replica();
    hostile_connect();
  }

  ~World() override {
    if (hostile_.connection) hostile_.connection->set_handlers({});
    for (auto& d : devices_) d.session.reset();
    hub_.reset();
    std::filesystem::remove_all(dir_);
  }

  void storm(int steps) {
    for (int step = 0; step < steps; ++step) {
      const auto action = pick(100);
      if (action < 55) {
        Device& d = devices_[pick(devices_.size())];
        write(d);
      } else if (action < 62) {
        Device& d = devices_[pick(devices_.size())];
        if (d.session) d.session->close("dropped by the simulation");
      } else if (action < 65) {
        // A long stretch offline, with writes meanwhile.
        Device& d = devices_[pick(devices_.size())];
        d.wants_online = false;
        if (d.session) d.session->close("going offline");
        net_.post(200 + pick(3000), [this, &d] {
          d.wants_online = true;
          connect(d);
        });
      } else if (action < 66) {
        restart_relay();
      } else if (action < 67 && counts_.clones < 2) {
        clone(devices_[pick(devices_.size())]);
      } else if (action == 67 && counts_.joiners < 2) {
        join_from_snapshot();
      } else if (action < 75) {
        hostile_act();
      } else if (action < 82) {
        Device& d = devices_[pick(devices_.size())];
        write_ledger(d);
      }
      net_.run_until(net_.now() + pick(15));
    }
  }

  // Ends every fault, brings everyone online over clean connections and lets the traffic
  // settle.
  void heal() {
    faults_ = LoopbackNetwork::Faults{1, 1, 0};
    healing_ = true;  // the hostile device stops and stays away
    if (hostile_.connection) hostile_.connection->close("healing");
    if (!hub_) start_relay();
    // Downloads in progress end meanwhile: no response breaks any more and the relay stays up,
    // so a device resumes at most once more, or has given up already.
    net_.run_until(net_.now() + 5000);
    for (const auto& dl : downloads_) REQUIRE(dl.done);
    for (auto& d : devices_) {
      d.wants_online = true;
      if (d.session) d.session->close("healing");
    }
    net_.run_until(net_.now() + 100);
    for (auto& d : devices_)
      if (!d.session) connect(d);
    REQUIRE(net_.run_until_idle(5'000'000));
  }

  void check() {
    storage::Replica& relay = hub_->replica(kNamespace);
    const std::string expected = shown_and_held(relay);
    const crdt::VersionVector relay_held = relay.version_vector();
    for (auto& d : devices_) {
      INFO(d.name);
      REQUIRE(shown_and_held(*d.replica) == expected);
      REQUIRE(d.replica->version_vector().to_json() == relay_held.to_json());
      REQUIRE(d.session);
      REQUIRE(d.session->in_sync());
    }
    // Nothing an honest device wrote is lost: every ledger row with every vote. Rows of copied
    // files are left out: when three copies share unacknowledged transactions and a third
    // history got in first, two copies move the same transactions to two new site ids and a
    // counter counts them twice (a limit of rekey, not of what the relay believes).
    for (const auto& entry : ledger_votes_) {
      const auto& key = entry.first;
      const auto votes = entry.second;
      if (uncheckable_.count(key)) continue;
      INFO("ledger row " << key);
      const auto row = relay.query("SELECT votes FROM todo WHERE id = ?", {key});
      REQUIRE(row.rows.size() == 1);
      REQUIRE(std::get<std::int64_t>(row.rows[0][0]) == votes);
    }
    // No claim moved a sequence counter: every entry anywhere is at most the writes made.
    const std::uint64_t most = writes_ + ledger_writes_;
    for (const auto& [site, seq] : relay_held.entries())
      if (site != hostile_.replica->site_id()) REQUIRE(seq <= most);
    // The relay lost nothing a device installed from its snapshots, restarts included.
    for (const auto& installed : installed_) REQUIRE(relay_held.dominates(installed));
    // The digests agree too, asked of the relay over the protocol.
    const std::string relay_digest = relay.digest();
    for (auto& d : devices_) {
      std::string answer;
      d.session->request_digest([&](const std::string& digest) { answer = digest; });
      REQUIRE(net_.run_until_idle(100'000));
      REQUIRE(answer == relay_digest);
      REQUIRE(storage::compare_digests(d.replica->digest(), answer).empty());
    }
  }

  std::size_t writes() const { return writes_; }
  // What this seed did: the World's own counts, and what the hostile device and the relays
  // counted.
  SeedStats stats() {
    SeedStats s = counts_;
    s.hostile_frames = hostile_.frames;
    s.hostile_refused = hostile_.refused;
    s.held = held_at_end();
    s.pieced =
        pieced_ +
        (hub_ ? hub_->counters().pieced_batches_in + hub_->counters().pieced_changesets_out : 0);
    // Changes frames that shared a group commit with an earlier one.
    s.shared_commits =
        shared_commits_ +
        (hub_ ? hub_->counters().grouped_batches - hub_->counters().group_commits : 0);
    s.following_deltas = following_deltas_ + (hub_ ? hub_->counters().following_deltas : 0);
    return s;
  }
  std::size_t held_at_end() {
    return std::get<std::int64_t>(hub_->replica(kNamespace)
                                      .query("SELECT count(*) FROM lattice_conflicts WHERE "
                                             "kind = 'held'")
                                      .rows[0][0]);
  }

 private:
  std::unique_ptr<storage::Replica> open_replica() {
    auto replica = storage::Replica::open(":memory:", replica_options());
    replica->exec(constrained_ ? kConstrainedSchema : test::kTodoSchema);
    return replica;
  }

  // What a replica shows, and in the constrained schema what it holds back and why.
  std::string shown_and_held(storage::Replica& r) {
    std::string out = test::dump_table(r, "todo");
    if (!constrained_) return out;
    out += test::dump_table(r, "tag");
    for (const auto& row : r.query("SELECT \"table\", \"key\", reason, \"constraint\", \"row\" "
                                   "FROM lattice_conflicts WHERE kind = 'held' ORDER BY 1, 2")
                               .rows) {
      out += "held ";
      for (const auto& v : row) out += std::get<std::string>(v) + "|";
      out += "\n";
    }
    return out;
  }

  void start_relay() {
    relay::HubOptions options = hub_options(dir_);
    options.schema_sql = constrained_ ? kConstrainedSchema : test::kTodoSchema;
    options.authenticate = [](std::string_view token) {
      if (token != "device-token") throw Error(ErrorCode::kUnauthorized, "unknown token");
      return relay::Grant{"device", kNamespace, relay::kGrantRead | relay::kGrantWrite};
    };
    hub_ = std::make_unique<relay::Hub>(options);
    ++relay_starts_;
  }

  void restart_relay() {
    if (hub_) {
      pieced_ += hub_->counters().pieced_batches_in + hub_->counters().pieced_changesets_out;
      shared_commits_ += hub_->counters().grouped_batches - hub_->counters().group_commits;
      following_deltas_ += hub_->counters().following_deltas;
      if (hub_->commits_in_flight() > 0) ++counts_.restarts_mid_commit;
    }
    hub_.reset();
    net_.post(50 + pick(500), [this] {
      if (!hub_) start_relay();
    });
  }

  void on_rekey(sim::SimDevice&) override { ++counts_.rekeys; }

  // A copy of `d`'s replica file becomes a new device: same site id, same history so far.
  void clone(Device& d) {
    std::filesystem::create_directories(dir_);
    const auto path = dir_ / ("clone" + std::to_string(counts_.clones++) + ".db");
    sqlite3* file = nullptr;
    REQUIRE(sqlite3_open(path.string().c_str(), &file) == SQLITE_OK);
    sqlite3_backup* backup = sqlite3_backup_init(file, "main", d.replica->connection(), "main");
    REQUIRE(backup);
    REQUIRE(sqlite3_backup_step(backup, -1) == SQLITE_DONE);
    sqlite3_backup_finish(backup);
    sqlite3_close(file);
    d.copied = true;
    for (const std::string& key : d.ledger) uncheckable_.insert(key);
    Device copy;
    copy.copied = true;
    copy.name = d.name + "-copy" + std::to_string(counts_.clones);
    copy.replica = storage::Replica::open(path.string(), replica_options());
    REQUIRE(copy.replica->site_id() == d.replica->site_id());
    devices_.push_back(std::move(copy));
    connect(devices_.back());
  }

  // A new device joins from the relay's snapshot of the namespace instead of syncing change by
  // change, downloading it as the sync client does over HTTP (transport/snapshot_download.cpp),
  // in chunks on the virtual clock while the storm goes on. It is not among devices_ until it
  // connects: no storm action writes to or connects a device that has yet to install.
  void join_from_snapshot() {
    if (!hub_) return;  // nowhere to download from
    std::filesystem::create_directories(dir_);
    Download& dl = downloads_.emplace_back();
    dl.device.name = "joiner" + std::to_string(counts_.joiners++);
    dl.device.replica = open_replica();
    dl.part = dir_ / (dl.device.name + ".snapshot.part");
    request_snapshot(dl);
  }

  // GET /snapshot/NAMESPACE as transport/websocket_server.cpp answers it: the relay names its
  // current snapshot (Hub::snapshot) and opens it; a device holding part of a file asks for the
  // rest (Range) of that file only (If-Range, its ETag), which it gets (206) if the relay still
  // gives that file, or else the whole current one (200), which replaces the part.
  void request_snapshot(Download& dl) {
    if (!hub_) {
      // Connection refused: tried again later, as the sync client retries a network failure.
      net_.post(10 + pick(200), [this, &dl] { request_snapshot(dl); });
      return;
    }
    // Hub::snapshot gives its last file again while it is younger than the age asked, by the
    // steady clock, not the virtual one. Asked 0 s, it always writes a new one; asked 1e9 s,
    // it gives the one this relay wrote before, if any (a restarted relay has none): so the
    // run never depends on wall time.
    const double max_age = pick(2) == 0 ? 0 : 1e9;
    const relay::SnapshotFile file = hub_->snapshot(kNamespace, max_age);
    // The relay holds the file open for the whole response: a newer snapshot, or the next
    // relay's start, removes it from the directory, and the response still reads it to the end
    // (POSIX keeps an unlinked file readable while it is open), as Beast's file body does.
    dl.served.close();
    dl.served.clear();
    dl.served.open(file.path, std::ios::binary);
    REQUIRE(dl.served.is_open());
    const auto size = static_cast<std::uint64_t>(std::filesystem::file_size(file.path));
    if (dl.had > 0 && file.etag == dl.etag) {
      ++counts_.resumed_downloads;  // 206: the rest of the same file
      REQUIRE(dl.had < size);
      dl.served.seekg(static_cast<std::streamoff>(dl.had));
    } else {
      if (dl.had > 0)
        ++counts_.restarted_downloads;  // 200: the part was of a file the relay replaced
      std::ofstream(dl.part, std::ios::binary | std::ios::trunc);
      dl.had = 0;
    }
    dl.etag = file.etag;
    dl.size = size;
    dl.served_path = file.path;
    dl.served_by = relay_starts_;
    dl.end = size;
    if (!healing_ && pick(3) == 0) {
      // The connection breaks after a prefix: empty, inside the SQLite header or the first
      // page, anywhere, or inside the last page (which SQLite alone reads as if zeros followed);
      // for a resumed response, anywhere in the rest.
      std::uint64_t cut = 0;
      switch (pick(4)) {
        case 0:
          break;
        case 1:
          cut = pick(std::min<std::uint64_t>(size, 4096));
          break;
        case 2:
          cut = pick(size);
          break;
        default:
          cut = size - 1 - pick(std::min<std::uint64_t>(size, 4096));
          break;
      }
      if (cut < dl.had) cut = dl.had + pick(size - dl.had);
      dl.end = cut;
    }
    dl.chunks_left = 2 + static_cast<int>(pick(4));
    net_.post(10 + pick(80), [this, &dl] { receive_chunk(dl); });
  }

  // The next chunk of the response arrives and is appended to the part file.
  void receive_chunk(Download& dl) {
    if (!hub_ || relay_starts_ != dl.served_by) {
      // The relay that was sending stopped: the connection closed mid-way.
      ++counts_.restarts_during_download;
      return broken_off(dl);
    }
    if (!std::filesystem::exists(dl.served_path)) dl.outlived = true;
    const std::uint64_t n =
        dl.chunks_left > 1 ? (dl.end - dl.had) / dl.chunks_left : dl.end - dl.had;
    --dl.chunks_left;
    std::string bytes(n, '\0');
    dl.served.read(bytes.data(), static_cast<std::streamsize>(n));
    REQUIRE(static_cast<std::uint64_t>(dl.served.gcount()) == n);
    std::ofstream(dl.part, std::ios::binary | std::ios::app)
        .write(bytes.data(), static_cast<std::streamsize>(n));
    dl.had += n;
    if (dl.had == dl.size) return install(dl);
    if (dl.had == dl.end) return broken_off(dl);
    net_.post(10 + pick(80), [this, &dl] { receive_chunk(dl); });
  }

  // The download broke off: the device holds a prefix of the file, which must be refused and
  // leave it empty. It then resumes, or gives up and syncs change by change.
  void broken_off(Download& dl) {
    dl.served.close();
    if (dl.outlived) ++counts_.outlived_files;
    dl.outlived = false;
    ++counts_.cut_downloads;
    storage::Replica& r = *dl.device.replica;
    INFO(dl.device.name << " installs the first " << dl.had << " of " << dl.size << " bytes");
    const std::string before = test::dump_everything(r);
    const std::string digest_before = r.digest();
    try {
      r.install_snapshot(dl.part.string());
      FAIL("a snapshot cut short installed");
    } catch (const Error& e) {
      // Always kCorrupt: a file shorter than its header fails to attach, or SQLite finds it
      // malformed or not a database (re-thrown as "not a Lattice snapshot"); one cut inside
      // its last page, which SQLite would read with zeros for the missing bytes, fails
      // install_snapshot's size check ("cut short"). Not kIo: that would be a malformed page
      // met during the copy, which the size check now stops before.
      INFO(e.what());
      REQUIRE(e.code() == ErrorCode::kCorrupt);
    }
    // Exactly as it was: empty.
    REQUIRE(test::dump_everything(r) == before);
    REQUIRE(r.digest() == digest_before);
    REQUIRE(r.version_vector().empty());
    REQUIRE(test::dump_table(r, "todo").empty());
    if (constrained_) REQUIRE(test::dump_table(r, "tag").empty());
    // The part stays for a resume, which a device tries a few times at most; or it gives up on
    // the snapshot, as the sync client does on a refusal, and syncs change by change.
    if (++dl.breaks < 4 && pick(3) != 0) {
      net_.post(10 + pick(200), [this, &dl] { request_snapshot(dl); });
    } else {
      ++counts_.gave_up;
      std::filesystem::remove(dl.part);
      join(dl);
    }
  }

  void install(Download& dl) {
    dl.served.close();
    if (dl.outlived) ++counts_.outlived_files;
    storage::Replica& r = *dl.device.replica;
    const crdt::VersionVector installed = r.install_snapshot(dl.part.string());
    REQUIRE(installed == r.version_vector());
    // The relay that sent the last chunk is up: it holds all it wrote into the file, and more
    // if it merged since; its file survives a restart, so check() asks the last relay again.
    const crdt::VersionVector relay_now = hub_->replica(kNamespace).version_vector();
    REQUIRE(relay_now.dominates(installed));
    installed_.push_back(installed);
    ++counts_.snapshot_installs;
    if (installed != relay_now) ++counts_.stale_installs;  // the catch-up has work to do
    std::filesystem::remove(dl.part);
    join(dl);
  }

  // The joiner connects like the others; its hello's catch-up brings what the relay merged
  // after the snapshot it installed, or everything if it installed none.
  void join(Download& dl) {
    dl.done = true;
    devices_.push_back(std::move(dl.device));
    connect(devices_.back());
  }

  void write(Device& d) {
    const std::string key = "k" + std::to_string(pick(30));
    const std::string title = "t" + std::to_string(pick(1000));
    storage::Replica& r = *d.replica;
    try {
      if (constrained_ && pick(2) == 0) {
        write_constrained(r, key);
      } else {
        write_todo(r, key, title);
      }
    } catch (const Error& e) {
      // A write SQLite refuses locally (a CHECK, a UNIQUE, a missing parent) is not made, as in
      // an application.
      if (!constrained_ || e.code() != ErrorCode::kSql) throw;
      ++counts_.refused_locally;
    }
    ++writes_;
    if (d.session) d.session->push_local_changes();
  }

  void write_todo(storage::Replica& r, const std::string& key, const std::string& title) {
    switch (pick(7)) {
      case 0:
      case 1:
        r.query("INSERT INTO todo(id, title) VALUES (?, ?) ON CONFLICT DO NOTHING", {key, title});
        break;
      case 2:
        r.query("UPDATE todo SET title = ? WHERE id = ?", {title, key});
        break;
      case 3:
        r.query("UPDATE todo SET votes = votes + ? WHERE id = ?", {std::int64_t(pick(5)) - 1, key});
        break;
      case 4:
        r.query("DELETE FROM todo WHERE id = ?", {key});
        break;
      case 5:
        r.query(
            "INSERT INTO todo(id, title, done) VALUES (?, ?, 1) ON CONFLICT(id) DO UPDATE "
            "SET done = 1 - done",
            {key, title});
        break;
      case 6:
        // One transaction over every row: larger than a batch, it travels in pieces.
        if (pick(4) == 0) r.query("UPDATE todo SET title = ?", {title});
        break;
    }
  }

  // Tags (a NOCASE name unique per todo, a parent that may be deleted concurrently), flags and
  // votes pushed against their CHECKs, and held rows resolved.
  void write_constrained(storage::Replica& r, const std::string& key) {
    static const char* const names[] = {"red", "Red", "blue", "BLUE", "green"};
    const std::string tag = "g" + std::to_string(pick(20));
    switch (pick(7)) {
      case 0:
      case 1:
        r.query("INSERT INTO tag(id, todo, name) VALUES (?, ?, ?) ON CONFLICT(id) DO NOTHING",
                {tag, key, std::string(names[pick(5)])});
        break;
      case 2:
        r.query("UPDATE tag SET name = ? WHERE id = ?", {std::string(names[pick(5)]), tag});
        break;
      case 3:
        r.query("DELETE FROM tag WHERE id = ?", {tag});
        break;
      case 4:
        r.query("UPDATE todo SET votes = votes - 2 WHERE id = ?", {key});
        break;
      case 5:
        r.query("UPDATE todo SET done = ? WHERE id = ?", {std::int64_t(pick(3)), key});
        break;
      case 6: {
        // Resolve a held row: discard it, or write a todo again with its flag and votes reset.
        const auto held = r.query(
            "SELECT \"table\", json_extract(\"key\", '$[0]') FROM lattice_conflicts "
            "WHERE kind = 'held' ORDER BY at LIMIT 1");
        if (held.rows.empty()) break;
        const auto& [table, id] = std::pair{held.rows[0][0], held.rows[0][1]};
        if (pick(2) == 0 || table != crdt::Value{"todo"}) {
          r.query(
              "DELETE FROM lattice_conflicts WHERE kind = 'held' AND \"table\" = ? AND "
              "json_extract(\"key\", '$[0]') = ?",
              {table, id});
        } else {
          r.query(
              "INSERT OR REPLACE INTO todo(id, title, done, votes) SELECT ?, "
              "json_extract(\"row\", '$.title'), 0, 0 FROM lattice_conflicts WHERE kind = "
              "'held' AND \"table\" = 'todo' AND json_extract(\"key\", '$[0]') = ?",
              {id, id});
        }
        break;
      }
    }
  }

  // A row only `d` inserts, or a vote on one of its rows; the expected votes are kept.
  void write_ledger(Device& d) {
    if (d.ledger.empty() || pick(3) == 0) {
      const std::string key = "L-" + d.name + "-" + std::to_string(d.ledger.size());
      d.replica->query("INSERT INTO todo(id, title) VALUES (?, 'ledger')", {key});
      d.ledger.push_back(key);
      ledger_votes_[key] = 0;
      if (d.copied) uncheckable_.insert(key);
    } else {
      const std::string& key = d.ledger[pick(d.ledger.size())];
      d.replica->query("UPDATE todo SET votes = votes + 1 WHERE id = ?", {key});
      ++ledger_votes_[key];
    }
    ++ledger_writes_;
    if (d.session) d.session->push_local_changes();
  }

  // ---- The hostile device ----------------------------------------------------------------

  std::uint64_t wild_seq(std::uint64_t near) {
    switch (pick(6)) {
      case 0:
        return 0;
      case 1:
        return near + 1 + pick(3);
      case 2:
        return near + 1 + pick(100'000);
      case 3:
        return transport::kMaxSequence;
      case 4:
        return std::numeric_limits<std::uint64_t>::max() >> 1;  // 2^63 - 1
      default:
        return near > 0 ? pick(near) + 1 : 1;
    }
  }

  const crdt::SiteId& victim() { return devices_[pick(devices_.size())].replica->site_id(); }

  std::vector<crdt::TxnTag> wild_log(std::uint64_t after, std::uint64_t through) {
    std::vector<crdt::TxnTag> log;
    if (pick(2) == 0 && through > after && through - after <= 64) {
      for (std::uint64_t seq = after + 1; seq <= through; ++seq) log.push_back({seq, rng_()});
    } else {
      for (std::size_t i = pick(5); i > 0; --i) log.push_back({wild_seq(after), rng_()});
    }
    return log;
  }

  void hostile_connect() {
    if (hostile_.connection || healing_) return;
    if (!hub_) return hostile_reconnect_later();
    auto [client, server] = net_.connect("hostile", link_faults());
    hub_->accept(server, kNamespace);
    hostile_.connection = client;
    hostile_.live = false;
    hostile_.incoming.clear();
    std::weak_ptr<transport::Connection> weak = client;
    client->set_handlers(transport::Connection::Handlers{
        [this, weak](std::string_view bytes) {
          if (weak.lock() != hostile_.connection) return;
          const transport::Frame frame = transport::decode_frame(bytes);
          if (auto* welcome = std::get_if<transport::Welcome>(&frame)) {
            hostile_.relay_held = welcome->held;
            hostile_.live = true;
          } else if (auto* piece = std::get_if<transport::ChangesPiece>(&frame)) {
            hostile_.incoming += piece->piece;
          } else if (auto* delta = std::get_if<transport::Delta>(&frame)) {
            // A delta lists the entries that moved, or all of them.
            hostile_.relay_held.merge(crdt::decode_changeset(delta->changeset).until);
          } else if (auto* changes = std::get_if<transport::Changes>(&frame)) {
            // It learns what the relay holds, to aim its lies just past it.
            const std::string bytes = std::move(hostile_.incoming) + changes->changeset;
            hostile_.incoming.clear();
            try {
              hostile_.relay_held.merge(crdt::decode_changeset(bytes).until);
            } catch (const Error&) {
              // Pieces that came out of order: it learns nothing this time.
            }
          }
        },
        [this, weak](const std::string& reason) {
          // The loopback drops frames in flight at a close, error frames included: the hub's
          // close reason names the refusal instead.
          if (reason.rfind("bad_changeset", 0) == 0 || reason.rfind("malformed", 0) == 0)
            ++hostile_.refused;
          net_.post(0, [this, weak] {
            if (weak.lock() != hostile_.connection) return;
            hostile_.connection.reset();
            hostile_.live = false;
            hostile_reconnect_later();
          });
        },
        {}});
    // Its own site id or a victim's, with a vector, acked_seq and log that may all lie.
    transport::Hello hello;
    hello.site = pick(3) == 0 ? victim() : hostile_.replica->site_id();
    hostile_.presented = hello.site;
    hello.ns = kNamespace;
    hello.token = "device-token";
    hello.held = hostile_.replica->version_vector();
    if (pick(2) == 0) hello.held.advance(hello.site, wild_seq(hello.held.get(hello.site)));
    if (pick(3) == 0) hello.held.advance(victim(), wild_seq(0));
    hello.schema_fingerprint = storage::format_manifest(hostile_.replica->schema_manifest());
    hello.acked_seq = pick(2) == 0 ? 0 : wild_seq(hello.held.get(hello.site));
    hello.own_log = wild_log(hello.acked_seq, hello.held.get(hello.site));
    client->send(transport::encode_frame(hello));
  }

  void hostile_reconnect_later() {
    if (hostile_.connect_pending || healing_) return;
    hostile_.connect_pending = true;
    net_.post(10 + pick(100), [this] {
      hostile_.connect_pending = false;
      hostile_connect();
    });
  }

  // Writes something of its own, then sends a changes frame that lies in one or more ways.
  void hostile_act() {
    if (pick(2) == 0)
      hostile_.replica->query(
          "INSERT INTO todo(id, title) VALUES (?, 'x') ON CONFLICT(id) DO "
          "UPDATE SET votes = votes + 1",
          {"k" + std::to_string(pick(30))});
    if (!hostile_.live || !hostile_.connection) return;
    const crdt::VersionVector& held = hostile_.relay_held;
    crdt::Changeset c =
        hostile_.replica->changes_since(pick(2) == 0 ? held : crdt::VersionVector());
    const crdt::SiteId& own = hostile_.replica->site_id();
    const crdt::SiteId& site = hostile_.presented;
    // Its writes stamped as someone else's.
    if (site != own || pick(3) == 0) {
      const crdt::SiteId as = site != own ? site : victim();
      for (auto& id : c.sites)
        if (id == own) id = as;
    }
    if (pick(2) == 0) {
      const crdt::SiteId& v = victim();
      c.until.advance(v, wild_seq(held.get(v)));
    }
    if (pick(2) == 0) c.until.advance(site, wild_seq(held.get(site)));
    if (pick(3) == 0) c.rows.clear();  // claims without content
    switch (pick(4)) {
      case 0:
        c.since = crdt::VersionVector();
        break;
      case 1:
        c.since = held;
        break;
      case 2:
        c.since.advance(site, wild_seq(held.get(site)));
        break;
      default:
        break;
    }
    std::vector<crdt::TxnTag> log = wild_log(c.since.get(site), c.until.get(site));
    ++hostile_.frames;
    hostile_.connection->send(transport::encode_frame(
        transport::Changes{++hostile_.batch, crdt::encode_changeset(c), std::move(log)}));
  }

  std::uint64_t seed_;
  bool constrained_;  // odd seeds: kConstrainedSchema
  std::filesystem::path dir_;
  std::deque<Device> devices_;  // stable references: callbacks hold them
  std::size_t writes_ = 0;
  std::size_t ledger_writes_ = 0;
  std::map<std::string, std::int64_t> ledger_votes_;
  std::set<std::string> uncheckable_;  // ledger rows of copied files
  Hostile hostile_;
  bool healing_ = false;
  std::deque<Download> downloads_;              // stable references: events hold them
  std::vector<crdt::VersionVector> installed_;  // what each install gave
  int relay_starts_ = 0;
  SeedStats counts_;                  // what the World counts itself (stats() adds the rest)
  std::uint64_t pieced_ = 0;          // batches and changesets in pieces, by relays since restarted
  std::uint64_t shared_commits_ = 0;  // changes frames that shared a group commit, the same
  std::uint64_t following_deltas_ = 0;  // the same
};

SeedStats run_seed(std::uint64_t seed, int steps) {
  INFO("seed " << seed << " (replay with LATTICE_SIM_SEED=" << seed << ")");
  World world(seed, sim::seed_directory("lattice-sim", seed));
  world.storm(steps);
  world.heal();
  world.check();
  return world.stats();
}

std::string describe(const SeedStats& t) {
  std::ostringstream out;
  out << t.clones << " replica files copied, " << t.rekeys << " rekeys, " << t.joiners
      << " devices downloaded a snapshot (" << t.snapshot_installs << " installed it, "
      << t.stale_installs << " of them older than the relay; " << t.gave_up
      << " gave up and synced change by change; " << t.cut_downloads
      << " responses cut short and refused, " << t.restarts_during_download
      << " of them by a relay restart; " << t.resumed_downloads << " resumed on the same file, "
      << t.restarted_downloads << " started over on a newer one; " << t.outlived_files
      << " responses read a file the relay had removed), " << t.hostile_frames
      << " forged changes frames, " << t.hostile_refused << " refusals of the hostile device, "
      << t.refused_locally << " writes refused by a constraint, " << t.held
      << " rows held back at the end, " << t.pieced << " changesets in pieces, " << t.shared_commits
      << " changes frames that shared a group commit, " << t.following_deltas
      << " deltas that followed the last one, " << t.restarts_mid_commit
      << " relay restarts with a group commit unacknowledged";
  return out.str();
}

TEST_CASE("after a storm of faults every device holds exactly the relay's rows") {
  if (const auto replay = sim::replayed_seed()) {
    MESSAGE(describe(run_seed(*replay, 300)));
    return;
  }
  const std::vector<std::uint64_t> seeds = sim::seeds_to_run(1000, 50);
  SeedStats total;
  for (const std::uint64_t seed : seeds)
    total += run_seed(seed, 300);  // REQUIREs inside stop at the first failure
  MESSAGE(describe(total));
  // The storm did copy files, and some copies wrote before the relay told them apart; devices
  // downloaded snapshots while the storm went on, installed some older than the relay by then,
  // and some downloads broke off (some at a relay restart), some to resume and some to be given
  // up; some responses went on reading a file a newer snapshot had replaced.
  if (seeds.size() >= 50) {
    CHECK(total.clones > 0);
    CHECK(total.rekeys > 0);
    CHECK(total.snapshot_installs > 0);
    CHECK(total.stale_installs > 0);
    CHECK(total.cut_downloads > 0);
    CHECK(total.resumed_downloads > 0);
    CHECK(total.restarted_downloads > 0);
    CHECK(total.restarts_during_download > 0);
    CHECK(total.outlived_files > 0);
    CHECK(total.gave_up > 0);
    CHECK(total.hostile_frames > 0);
    CHECK(total.hostile_refused > 0);
    CHECK(total.refused_locally > 0);
    CHECK(total.held > 0);
    CHECK(total.pieced > 0);
    CHECK(total.shared_commits > 0);
    CHECK(total.following_deltas > 0);
    CHECK(total.restarts_mid_commit > 0);
  }
}

}  // namespace
}  // namespace lattice
