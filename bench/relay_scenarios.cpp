#include "bench/relay_scenarios.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "crdt/error.hpp"
#include "engine/sync/sync_client.hpp"
#include "engine/sync/sync_session.hpp"
#include "storage/replica.hpp"
#include "transport/frame.hpp"
#include "transport/websocket_client.hpp"

namespace lattice::bench {

void progress(const std::string& line) { std::fprintf(stderr, "relay-bench: %s\n", line.c_str()); }

namespace {

// The client options of a device played by a scenario: trusts the relay's certificate, takes
// frames up to 64 MiB, and closes after `idle` without a frame.
transport::ClientOptions device_options(const Context& ctx, std::chrono::seconds idle) {
  transport::ClientOptions options;
  options.ca_file = ctx.setup.cert().string();
  options.max_frame_bytes = 64u << 20;
  options.idle_timeout = idle;
  return options;
}

}  // namespace

std::string fanout(Context& ctx, const std::string& name, int devices, int writers,
                   double writes_per_second) {
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
  Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
  const double connect_ms = fleet.connect_all(std::chrono::seconds(120));
  progress(name + ": " + std::to_string(devices) + " devices connected in " + fixed(connect_ms, 0) +
           " ms; writing " + fixed(writes_per_second, 0) + "/s for " + fixed(seconds, 0) + " s");
  Json json = fleet.run_load(Json().str("scenario", name), writes_per_second, seconds,
                             std::chrono::seconds(10), relay.pid());
  json.num("connect_ms", connect_ms, 0).integer("relay_rss_kib", relay.rss_kib());
  return json.text();
}

namespace {

// Runs `fleet`'s load at each rate of `steps` (writes per second in all), one after another,
// until `passed(fleet, step_json)` says one did not pass. Returns the last rate that passed
// (0 if none) and the steps' JSON objects, comma-separated.
std::pair<double, std::string> raise_rate(
    Context& ctx, Fleet& fleet, const std::vector<std::string>& server_pids,
    const std::string& name, const std::vector<double>& steps,
    const std::function<bool(const Fleet&, const std::string&)>& passed) {
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  std::string step_lines;
  double best = 0;
  for (double writes : steps) {
    progress(name + ": " + fixed(writes, 0) + " writes/s for " + fixed(seconds, 0) + " s");
    const std::string text =
        fleet.run_load(Json(), writes, seconds, std::chrono::seconds(10), server_pids).text();
    step_lines += (step_lines.empty() ? "" : ", ") + text;
    progress(name + ": " + text);
    if (!passed(fleet, text)) break;
    best = writes;
    // Let the relay's queues empty before the next step.
    std::this_thread::sleep_for(milliseconds(500));
  }
  return {best, step_lines};
}

}  // namespace

std::string capacity(Context& ctx, const std::string& name, int devices, int writers,
                     std::vector<double> steps) {
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
  Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
  fleet.connect_all(std::chrono::seconds(120));
  const auto [best_writes, step_lines] =
      raise_rate(ctx, fleet, {relay.pid()}, name, steps, [](const Fleet&, const std::string& text) {
        return text.find("\"p99_under_50ms\": true") != std::string::npos;
      });
  const double best = best_writes * (devices - 1);
  return Json()
      .str("scenario", name)
      .integer("devices", devices)
      .integer("writers", writers)
      .num("capacity_deliveries_per_s", best, 0)
      .num("capacity_writes_per_s", best_writes, 0)
      .num("goal_deliveries_per_s", 200000, 0)
      .boolean("goal_met", best >= 200000)
      .raw("steps", "[" + step_lines + "]")
      .text();
}

std::string acks(Context& ctx, const std::string& name, int devices, std::vector<double> steps) {
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
  // Every device a writer (writes go round robin over them); every device also receives what
  // the others write, as a device of a busy namespace would.
  Fleet fleet(ctx.setup, relay, devices, devices, ctx.options.writer_window);
  fleet.connect_all(std::chrono::seconds(180));
  const auto [best, step_lines] =
      raise_rate(ctx, fleet, {relay.pid()}, name, steps, [](const Fleet& f, const std::string&) {
        return f.last_unacked() == 0 && f.last_ack_p99() < kGoalP99Ms;
      });
  return Json()
      .str("scenario", name)
      .integer("devices", devices)
      .num("acked_writes_per_s", best, 0)
      .num("goal_acked_writes_per_s", 10000, 0)
      .boolean("goal_met", best >= 10000)
      .raw("steps", "[" + step_lines + "]")
      .text();
}

std::string cluster(Context& ctx) {
  const bool quick = ctx.options.quick;
  const double seconds = quick ? 2 : ctx.options.seconds;
  const int devices = quick ? 20 : 100, writers = 10;
  const double rate = quick ? 200 : 1000;
  const std::vector<double> steps =
      quick ? std::vector<double>{500} : std::vector<double>{1000, 2000, 4000, 8000, 16000};
  const auto acked = [](const Fleet& f, const std::string&) {
    return f.last_unacked() == 0 && f.last_ack_p99() < kGoalP99Ms;
  };
  std::string runs;
  const auto add = [&runs](const std::string& line) {
    runs += (runs.empty() ? "" : ", ") + line;
    progress("cluster: " + line);
  };
  // The same load on a relay alone and on 1, 2 and 3 relays of a cluster (each on a new
  // PostgreSQL): fan-out latency, acknowledgements, CPU per delivery summed over every server
  // process; then the highest write rate acknowledged within 50 ms, alone and on one relay of a
  // cluster.
  double embedded_max = 0, cluster_max = 0;
  std::string embedded_steps, cluster_steps;
  {
    RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
    Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
    fleet.connect_all(std::chrono::seconds(120));
    progress("cluster: a relay alone, " + fixed(rate, 0) + " writes/s");
    add(fleet
            .run_load(Json().str("mode", "embedded").integer("relays", 1), rate, seconds,
                      std::chrono::seconds(10), relay.pid())
            .text());
    std::tie(embedded_max, embedded_steps) =
        raise_rate(ctx, fleet, {relay.pid()}, "cluster", steps, acked);
  }
  for (int n = 1; n <= 3; ++n) {
    PostgresProcess postgres;
    std::vector<std::unique_ptr<RelayProcess>> relays;
    std::vector<const RelayProcess*> serving;
    for (int i = 0; i < n; ++i) {
      relays.push_back(std::make_unique<RelayProcess>(
          ctx.setup, ctx.fresh_data(),
          std::vector<std::string>{"--cluster-db", postgres.conninfo()}));
      serving.push_back(relays.back().get());
    }
    // With 2 relays, a third one of the cluster has the namespace open (a device came and went)
    // but no device in it while the others carry the load: what it costs (acceptance 6).
    std::optional<RelayProcess> idle;
    if (n == 2) {
      idle.emplace(ctx.setup, ctx.fresh_data(),
                   std::vector<std::string>{"--cluster-db", postgres.conninfo()});
      Fleet visitor(ctx.setup, *idle, 1, 0, ctx.options.writer_window);
      visitor.connect_all(std::chrono::seconds(30));
    }
    Fleet fleet(ctx.setup, serving, devices, writers, ctx.options.writer_window);
    fleet.connect_all(std::chrono::seconds(120));
    std::vector<std::string> pids = postgres.pids();
    for (const auto& relay : relays) pids.push_back(relay->pid());
    progress("cluster: " + std::to_string(n) + " relay(s) over PostgreSQL, " + fixed(rate, 0) +
             " writes/s");
    std::optional<CpuMeter> idle_cpu;
    if (idle) idle_cpu.emplace(idle->pid());
    Json run =
        fleet.run_load(Json()
                           .str("mode", "cluster")
                           .integer("relays", n)
                           .integer("server_processes", static_cast<std::int64_t>(pids.size())),
                       rate, seconds, std::chrono::seconds(10), pids);
    if (idle_cpu)
      run.num("idle_relay_cpu_pct", idle_cpu->percent(), 2)
          .num("changes_per_s", rate * kChangesPerRow, 0);
    add(run.text());
    if (n == 1)
      std::tie(cluster_max, cluster_steps) = raise_rate(ctx, fleet, pids, "cluster", steps, acked);
  }
  return Json()
      .str("scenario", "cluster")
      .integer("devices", devices)
      .integer("writers", writers)
      .num("embedded_max_acked_writes_per_s", embedded_max, 0)
      .num("cluster_max_acked_writes_per_s", cluster_max, 0)
      .raw("embedded_steps", "[" + embedded_steps + "]")
      .raw("cluster_steps", "[" + cluster_steps + "]")
      .raw("runs", "[" + runs + "]")
      .text();
}

std::string vector_cost(Context& ctx) {
  const int devices = ctx.options.quick ? 100 : 500;
  const double rate = 10;
  const double seconds = ctx.options.quick ? 2 : ctx.options.seconds;
  auto one = [&](int writers) {
    RelayProcess relay(ctx.setup, ctx.fresh_data(), {});
    Fleet fleet(ctx.setup, relay, devices, writers, ctx.options.writer_window);
    fleet.connect_all(std::chrono::seconds(180));
    if (writers > 10) {
      // Every writer writes once: the relay's vector gets an entry per device.
      const double warm_rate = 100;
      fleet.run_load(Json(), warm_rate, writers / warm_rate, std::chrono::seconds(120),
                     relay.pid());
      std::this_thread::sleep_for(milliseconds(1000));
    }
    progress("vector_cost: " + std::to_string(writers) + " writing sites, " + fixed(rate, 0) +
             " writes/s");
    return fleet
        .run_load(Json().integer("sites", writers), rate, seconds, std::chrono::seconds(15),
                  relay.pid())
        .text();
  };
  const std::string few = one(10);
  const std::string many = one(devices);
  return Json()
      .str("scenario", "vector_cost")
      .raw("sites_10", few)
      .raw("sites_" + std::to_string(devices), many)
      .text();
}

std::string merge(Context& ctx) {
  const int batches = ctx.options.quick ? 2 : 10;
  const int rows_per_batch = 50'000 / kChangesPerRow;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {"--max-changes-per-second", "1000000000000"});
  auto replica = storage::Replica::open(":memory:");
  replica->exec(kSchema);
  std::vector<std::string> frames;
  std::size_t changes = 0, bytes = 0;
  {
    sqlite3* db = replica->connection();
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO item(id, sent, writer, body) VALUES (?, ?, 0, ?)", -1, &s,
                       nullptr);
    const std::string body(32, 'x');
    crdt::VersionVector sent;
    for (int b = 0; b < batches; ++b) {
      sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
      for (int r = 0; r < rows_per_batch; ++r) {
        const std::string id = "m" + std::to_string(b) + "-" + std::to_string(r);
        sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 2, r);
        sqlite3_bind_text(s, 3, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
        sqlite3_step(s);
        sqlite3_reset(s);
      }
      sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      const crdt::Changeset cs = replica->changes_since(sent, 60'000);
      sent.merge(cs.until);
      changes += cs.change_count();
      frames.push_back(
          transport::encode_frame(changes_frame(*replica, static_cast<std::uint64_t>(b + 1), cs)));
      bytes += frames.back().size();
    }
    sqlite3_finalize(s);
  }
  progress("merge: " + std::to_string(batches) + " batches, " + std::to_string(changes) +
           " changes, " + std::to_string(bytes) + " bytes; sending");

  Lane lane;
  std::shared_ptr<transport::Connection> connection;
  std::promise<std::string> welcomed;
  std::promise<void> all_acked;
  std::vector<double> ack_at_ms(batches, NAN);
  Clock::time_point sent_at;
  int acks = 0;
  std::string failure;
  const transport::ClientOptions options = device_options(ctx, std::chrono::seconds(120));
  bool welcome_set = false, done_set = false;
  Lane::StopOnExit stop_lane{lane};
  lane.start();
  lane.call([&] {
    transport::connect_websocket(
        lane.io, relay.url(), options,
        [&](std::optional<Error> error, std::shared_ptr<transport::Connection> c) {
          if (error) {
            welcome_set = true;
            welcomed.set_value(error->what());
            return;
          }
          connection = c;
          connection->set_handlers(transport::Connection::Handlers{
              [&](std::string_view bytes_in) {
                const transport::Frame frame = transport::decode_frame(bytes_in, 64u << 20);
                if (std::holds_alternative<transport::Welcome>(frame) && !welcome_set) {
                  welcome_set = true;
                  welcomed.set_value("");
                } else if (auto* ack = std::get_if<transport::Ack>(&frame)) {
                  if (ack->batch >= 1 && ack->batch <= static_cast<std::uint64_t>(batches))
                    ack_at_ms[ack->batch - 1] = ms_since(sent_at);
                  if (++acks == batches && !done_set) {
                    done_set = true;
                    all_acked.set_value();
                  }
                } else if (auto* e = std::get_if<transport::ErrorFrame>(&frame)) {
                  failure = std::string(transport::wire_error_name(e->code)) + ": " + e->message;
                  if (!done_set) {
                    done_set = true;
                    all_acked.set_value();
                  }
                }
              },
              [&](const std::string& reason) {
                if (failure.empty()) failure = "closed: " + reason;
                if (!done_set) {
                  done_set = true;
                  all_acked.set_value();
                }
              },
              {}});
          transport::Hello hello;
          hello.site = replica->site_id();
          hello.ns = kNamespace;
          hello.token = ctx.setup.token;
          hello.schema_fingerprint = storage::format_manifest(replica->schema_manifest());
          connection->send(transport::encode_frame(hello));
        });
  });
  auto welcome_future = welcomed.get_future();
  if (welcome_future.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    throw std::runtime_error("merge: no welcome within 30 s");
  if (const std::string e = welcome_future.get(); !e.empty())
    throw std::runtime_error("merge: " + e);
  CpuMeter relay_cpu(relay.pid());
  lane.call([&] {
    sent_at = Clock::now();
    for (auto& frame : frames) connection->send(std::move(frame));
  });
  auto acked = all_acked.get_future();
  if (acked.wait_for(std::chrono::seconds(120)) != std::future_status::ready)
    failure = "not every batch acknowledged within 120 s";
  const double relay_pct = relay_cpu.percent(), relay_cpu_s = relay_cpu.seconds();
  const double relay_wait_pct = relay_cpu.wait_percent();
  const std::string failure_text = lane.call([&] { return failure; });  // written on the lane
  const double total_ms = ack_at_ms.empty() ? NAN : ack_at_ms.back();
  std::vector<double> per_batch;
  for (int i = 0; i < batches; ++i)
    per_batch.push_back(ack_at_ms[i] - (i ? ack_at_ms[i - 1] : 0.0));
  // The relay's own merge time (decode not included, commit included) from /metrics.
  const std::string merge_sum =
      command_output("curl -sk --max-time 10 https://127.0.0.1:" + std::to_string(relay.port()) +
                     "/metrics | grep '^lattice_relay_merge_seconds_sum' | awk '{print $2}'");
  lane.call([&] {
    if (connection) connection->close("done");
  });
  relay.stop();
  lane.stop();
  const double merge_s = merge_sum.empty() ? NAN : std::stod(merge_sum);
  const Percentiles batch_ms = percentiles(per_batch);
  Json json;
  json.str("scenario", "merge")
      .integer("batches", batches)
      .integer("changes", static_cast<std::int64_t>(changes))
      .integer("bytes", static_cast<std::int64_t>(bytes))
      .num("first_send_to_last_ack_ms", total_ms, 1)
      .num("changes_per_s", static_cast<double>(changes) / (total_ms / 1000), 0)
      .raw("ms_between_acks", percentiles_json(batch_ms))
      .num("relay_apply_seconds_sum", merge_s, 3)
      .num("relay_apply_changes_per_s", static_cast<double>(changes) / merge_s, 0)
      .num("relay_cpu_pct", relay_pct, 0)
      .num("relay_cpu_s", relay_cpu_s, 2)
      .num("relay_waiting_for_cpu_pct", relay_wait_pct, 0)
      .num("changes_per_relay_cpu_s", static_cast<double>(changes) / relay_cpu_s, 0)
      .num("goal_changes_per_s", 500000, 0)
      .boolean("goal_met", static_cast<double>(changes) / (total_ms / 1000) >= 500000)
      .str("loadavg", loadavg());
  if (!failure_text.empty()) json.str("failure", failure_text);
  return json.text();
}

namespace {

struct IdleFigures {
  int devices = 0;
  long long opened = 0, before = 0, after = 0, hwm = 0;
  double connect_ms = 0;
  double kib_per_connection() const { return static_cast<double>(after - before) / devices; }
};

// Relay RSS before and after `devices` connections that then stay idle: live devices (hello,
// welcome, catch-up) or, without `hello`, bare WebSockets; over TLS or plain.
IdleFigures idle_once(Context& ctx, int devices, bool tls, bool hello) {
  IdleFigures f;
  f.devices = devices;
  RelayProcess relay(ctx.setup, ctx.fresh_data(), {}, tls);
  // The namespace's replica is opened by the first hello; open it before the baseline.
  std::this_thread::sleep_for(milliseconds(300));
  {
    Fleet first(ctx.setup, relay, 1, 0, 0);
    first.connect_all(std::chrono::seconds(30));
    std::this_thread::sleep_for(milliseconds(500));
    f.opened = relay.rss_kib();
  }
  std::this_thread::sleep_for(milliseconds(500));
  f.before = relay.rss_kib();
  Fleet fleet(ctx.setup, relay, devices, 0, 0, hello);
  f.connect_ms = fleet.connect_all(std::chrono::seconds(180));
  std::this_thread::sleep_for(milliseconds(ctx.options.quick ? 500 : 2000));
  f.after = relay.rss_kib();
  f.hwm = relay.hwm_kib();
  return f;
}

}  // namespace

std::string idle_memory(Context& ctx) {
  const int devices = ctx.options.quick ? 100 : 1000;
  const IdleFigures live = idle_once(ctx, devices, true, true);
  const IdleFigures bare = idle_once(ctx, devices, true, false);
  const IdleFigures plain = idle_once(ctx, devices, false, true);
  // Ten times as many: what a connection costs must not grow with their number.
  std::optional<IdleFigures> many;
  if (!ctx.options.quick) many = idle_once(ctx, 10 * devices, true, true);
  const double per = std::max(live.kib_per_connection(), many ? many->kib_per_connection() : 0.0);
  Json json;
  json.str("scenario", "idle_memory")
      .integer("connections", devices)
      .num("connect_ms", live.connect_ms, 0)
      .integer("relay_rss_kib_namespace_open", live.opened)
      .integer("relay_rss_kib_before", live.before)
      .integer("relay_rss_kib_after", live.after)
      .integer("relay_hwm_kib", live.hwm)
      .num("kib_per_connection", per, 1)
      .num("kib_per_tls_websocket_without_hello", bare.kib_per_connection(), 1)
      .num("kib_per_device_without_tls", plain.kib_per_connection(), 1);
  if (many)
    json.integer("many_connections", many->devices)
        .num("many_connect_ms", many->connect_ms, 0)
        .integer("many_relay_rss_kib_after", many->after)
        .num("many_kib_per_connection", many->kib_per_connection(), 1);
  return json.num("goal_kib_per_connection", 32, 0).boolean("goal_met", per <= 32).text();
}

namespace {

// Builds DATA/bench.db offline as a relay holds a namespace: `rows` rows written by one device
// (WORK/writer.db, in transactions of 10,000 rows, as a busy namespace would have) and merged
// into the relay's replica, checkpointed into the main file. (Rows the relay's own site wrote
// would make each snapshot install move them to another site index first, work no relay's
// snapshot asks for: a relay writes nothing of its own.)
std::size_t build_namespace(const fs::path& data, const fs::path& work, int rows) {
  storage::ReplicaOptions options;
  options.synchronous = "OFF";
  const fs::path writer_file = work / "writer.db";
  const auto remove_writer = [&] {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::error_code ignored;
      fs::remove(writer_file.string() + suffix, ignored);
    }
  };
  remove_writer();
  auto writer = storage::Replica::open(writer_file.string(), options);
  writer->exec(kSchema);
  sqlite3* db = writer->connection();
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO item(id, sent, writer, body) VALUES (?, ?, 0, ?)", -1, &s,
                     nullptr);
  const std::string body(32, 'x');
  for (int r = 0; r < rows; ++r) {
    if (r % 10'000 == 0) sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    char id[32];
    std::snprintf(id, sizeof id, "c%08d", r);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, r);
    sqlite3_bind_text(s, 3, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
    sqlite3_step(s);
    sqlite3_reset(s);
    if (r % 10'000 == 9'999 || r == rows - 1) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  sqlite3_finalize(s);

  auto relay = storage::Replica::open((data / "bench.db").string(), options);
  relay->exec(kSchema);
  crdt::VersionVector held;
  for (;;) {
    const crdt::Changeset part = writer->changes_since(held, 100'000);
    if (held.dominates(part.until)) break;
    relay->apply(part);
    held.merge(part.until);
  }
  writer.reset();
  remove_writer();
  sqlite3_exec(relay->connection(), "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
  return static_cast<std::size_t>(rows);
}

struct CatchupRun {
  std::string failure;
  double welcome_ms = NAN, caught_up_ms = NAN;
  std::size_t frames = 0;
  long long relay_hwm_kib = 0;
  double relay_cpu_pct = 0, relay_cpu_s = 0, device_cpu_s = 0;
};

// A new device (a replica file, engine::SyncSession) connects and catches up.
CatchupRun catch_up_once(Context& ctx, const fs::path& data, std::vector<std::string> extra,
                         const fs::path& device_file, int rows, milliseconds timeout) {
  RelayProcess relay(ctx.setup, data, std::move(extra));
  CatchupRun run;
  std::error_code ignored;
  fs::remove(device_file, ignored);
  fs::remove(device_file.string() + "-wal", ignored);
  fs::remove(device_file.string() + "-shm", ignored);
  auto replica = storage::Replica::open(device_file.string());
  replica->exec(kSchema);
  Lane lane;
  std::unique_ptr<engine::SyncSession> session;
  std::promise<void> finished;
  bool finished_set = false;
  auto finish = [&](const std::string& failure) {
    if (finished_set) return;
    finished_set = true;
    run.failure = failure;
    finished.set_value();
  };
  CpuMeter relay_cpu(relay.pid()), device_cpu("self");
  const auto start = Clock::now();
  const transport::ClientOptions options = device_options(ctx, std::chrono::seconds(300));
  Lane::StopOnExit stop_lane{lane};
  lane.start();
  lane.call([&] {
    transport::connect_websocket(
        lane.io, relay.url(), options,
        [&](std::optional<Error> error, std::shared_ptr<transport::Connection> c) {
          if (error) return finish(error->what());
          auto tap = std::make_shared<transport::ObservedConnection>(std::move(c), [&] {
            ++run.frames;
            if (!session || finished_set) return;
            if (std::isnan(run.welcome_ms) && session->state() != engine::SyncState::kConnecting)
              run.welcome_ms = ms_since(start);
            if (session->state() == engine::SyncState::kLive &&
                replica->version_vector().dominates(session->relay_held())) {
              run.caught_up_ms = ms_since(start);
              finish("");
            }
          });
          engine::SyncSession::Events events;
          events.on_error = [&](const transport::ErrorFrame& e) {
            finish(std::string(transport::wire_error_name(e.code)) + ": " + e.message);
          };
          events.on_closed = [&](const std::string& reason) { finish("closed: " + reason); };
          session = std::make_unique<engine::SyncSession>(
              *replica, tap, engine::SyncSession::Options{kNamespace, ctx.setup.token, 50'000},
              std::move(events));
          session->start();
        });
  });
  auto done = finished.get_future();
  if (done.wait_for(timeout) != std::future_status::ready)
    lane.call([&] { finish("not caught up within " + std::to_string(timeout.count()) + " ms"); });
  run.relay_cpu_pct = relay_cpu.percent();
  run.relay_cpu_s = relay_cpu.seconds();
  run.device_cpu_s = device_cpu.seconds();
  run.relay_hwm_kib = relay.hwm_kib();
  lane.call([&] { session.reset(); });
  relay.stop();
  lane.stop();
  if (run.failure.empty()) {
    // Caught up means every row is in the device's table.
    const auto count = replica->query("SELECT count(*) FROM item");
    const auto* n = count.rows.empty() ? nullptr : std::get_if<std::int64_t>(&count.rows[0][0]);
    if (!n || *n != rows)
      run.failure = "the device holds " + (n ? std::to_string(*n) : std::string("?")) + " of " +
                    std::to_string(rows) + " rows";
  }
  return run;
}

// New devices (replica files, engine::SyncClient with its defaults) start from the relay's
// snapshot: the first makes the relay write it, the second gets the same file.
struct SnapshotRun {
  std::string failure;
  double first_ms = NAN, second_ms = NAN;
  std::uint64_t snapshot_bytes = 0;
  double relay_cpu_s = 0, device_cpu_s = 0;  // over both
};

SnapshotRun snapshot_bootstrap(Context& ctx, const fs::path& data, const fs::path& device_file,
                               int rows, milliseconds timeout) {
  RelayProcess relay(ctx.setup, data, {});
  SnapshotRun run;
  CpuMeter relay_cpu(relay.pid()), device_cpu("self");
  for (double* took : {&run.first_ms, &run.second_ms}) {
    for (const char* suffix : {"", "-wal", "-shm", "-snapshot", "-snapshot.etag"}) {
      std::error_code ignored;
      fs::remove(device_file.string() + suffix, ignored);
    }
    storage::Replica::open(device_file.string())->exec(kSchema);
    engine::SyncClientOptions options;
    options.ca_file = ctx.setup.cert().string();
    options.max_frame_bytes = 64u << 20;
    const auto start = Clock::now();
    engine::SyncClient client(device_file.string(), relay.url(), ctx.setup.token, options);
    client.start();
    const bool in_sync = client.wait_until_in_sync(timeout);
    *took = ms_since(start);
    const engine::SyncStatus status = client.status();
    client.stop();
    if (!in_sync) run.failure = "not in sync: " + status.last_error;
    if (status.snapshot_installed_bytes == 0) run.failure = "no snapshot: " + status.last_error;
    run.snapshot_bytes = status.snapshot_installed_bytes;
    if (!run.failure.empty()) break;
    const auto count =
        storage::Replica::open(device_file.string())->query("SELECT count(*) FROM item");
    if (std::get<std::int64_t>(count.rows[0][0]) != rows) run.failure = "rows missing";
  }
  run.relay_cpu_s = relay_cpu.seconds();
  run.device_cpu_s = device_cpu.seconds();
  relay.stop();
  return run;
}

}  // namespace

std::string catchup(Context& ctx) {
  const int rows = ctx.options.quick ? 20'000 : (1'000'000 + kChangesPerRow - 1) / kChangesPerRow;
  const fs::path data = ctx.fresh_data();
  const auto build_start = Clock::now();
  build_namespace(data, ctx.work, rows);
  const double build_ms = ms_since(build_start);
  const std::uintmax_t db_bytes = fs::file_size(data / "bench.db");
  // The reference: copying the relay's database file (page cache warm, no fsync).
  const fs::path copy = ctx.work / "copy.db";
  std::vector<double> copy_ms;
  for (int i = 0; i < 3; ++i) {
    std::error_code ignored;
    fs::remove(copy, ignored);
    const auto t = Clock::now();
    fs::copy_file(data / "bench.db", copy);
    copy_ms.push_back(ms_since(t));
  }
  std::sort(copy_ms.begin(), copy_ms.end());
  fs::remove(copy);
  progress("catchup: namespace of " + std::to_string(rows) + " rows (" +
           std::to_string(rows * kChangesPerRow) + " changes, " + std::to_string(db_bytes) +
           " bytes) built in " + fixed(build_ms, 0) + " ms; copy " + fixed(copy_ms[1], 1) + " ms");

  const fs::path device_file = ctx.work / "device.db";
  const milliseconds timeout(ctx.options.quick ? 30'000 : 180'000);
  // First with the relay's default limits, then with an outbound queue large enough to hold
  // the whole catch-up (the relay queues all of it at the hello).
  const CatchupRun with_defaults = catch_up_once(ctx, data, {}, device_file, rows, timeout);
  progress("catchup with default limits: " + (with_defaults.failure.empty()
                                                  ? fixed(with_defaults.caught_up_ms, 0) + " ms"
                                                  : with_defaults.failure));
  const CatchupRun raised =
      catch_up_once(ctx, data, {"--max-queue-bytes", "2147483648"}, device_file, rows, timeout);
  progress("catchup with --max-queue-bytes 2 GiB: " +
           (raised.failure.empty() ? fixed(raised.caught_up_ms, 0) + " ms" : raised.failure));
  const SnapshotRun snapshot = snapshot_bootstrap(ctx, data, device_file, rows, timeout);
  progress("catchup from a snapshot: " +
           (snapshot.failure.empty() ? fixed(snapshot.first_ms, 0) + " ms (snapshot written), " +
                                           fixed(snapshot.second_ms, 0) + " ms (reused)"
                                     : snapshot.failure));
  const double changes = static_cast<double>(rows) * kChangesPerRow;
  auto run_json = [&](const CatchupRun& run) {
    Json json;
    json.boolean("ok", run.failure.empty());
    if (!run.failure.empty()) json.str("reason", run.failure);
    json.num("welcome_ms", run.welcome_ms, 1)
        .num("caught_up_ms", run.caught_up_ms, 0)
        .num("changes_per_s", changes / (run.caught_up_ms / 1000), 0)
        .num("ratio_to_copy", run.caught_up_ms / copy_ms[1], 0)
        .integer("frames", static_cast<std::int64_t>(run.frames))
        .num("relay_cpu_pct", run.relay_cpu_pct, 0)
        .num("relay_cpu_s", run.relay_cpu_s, 2)
        .num("device_cpu_s", run.device_cpu_s, 2)
        .integer("relay_hwm_kib", run.relay_hwm_kib);
    return json.text();
  };
  return Json()
      .str("scenario", "catchup")
      .integer("rows", rows)
      .num("changes", changes, 0)
      .integer("db_bytes", static_cast<std::int64_t>(db_bytes))
      .num("build_ms", build_ms, 0)
      .num("copy_ms", copy_ms[1], 2)
      .raw("default_limits", run_json(with_defaults))
      .raw("max_queue_2gib", run_json(raised))
      .raw("snapshot",
           [&] {
             Json json;
             json.boolean("ok", snapshot.failure.empty());
             if (!snapshot.failure.empty()) json.str("reason", snapshot.failure);
             json.num("first_ms", snapshot.first_ms, 0)
                 .num("second_ms", snapshot.second_ms, 0)
                 .num("ratio_to_copy", snapshot.second_ms / copy_ms[1], 0)
                 .integer("snapshot_bytes", static_cast<std::int64_t>(snapshot.snapshot_bytes))
                 .num("relay_cpu_s", snapshot.relay_cpu_s, 2)
                 .num("device_cpu_s", snapshot.device_cpu_s, 2);
             return json.text();
           }())
      .str("loadavg", loadavg())
      .text();
}

}  // namespace lattice::bench
