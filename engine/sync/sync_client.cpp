#include "engine/sync/sync_client.hpp"

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "crdt/error.hpp"
#include "transport/snapshot_download.hpp"
#include "transport/websocket_client.hpp"

namespace lattice::engine {
namespace {

namespace net = boost::asio;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Errors after which reconnecting repeats the refusal (docs/protocol.md, "Errors and closing").
bool is_fatal(transport::WireError code) {
  switch (code) {
    case transport::WireError::kProtocolVersion:
    case transport::WireError::kUnauthorized:
    case transport::WireError::kForbidden:
    case transport::WireError::kSchemaMismatch:
      return true;
    default:
      return false;
  }
}

}  // namespace

struct SyncClient::Impl {
  Impl(std::string replica_path, std::string url, std::string token, SyncClientOptions options)
      : path(std::move(replica_path)),
        url(std::move(url)),
        token(std::move(token)),
        options(std::move(options)),
        rng(std::random_device{}()),
        backoff(this->options.min_backoff) {}

  transport::ClientOptions client_options() const {
    transport::ClientOptions out;
    out.ca_file = options.ca_file;
    out.allow_insecure_remote = options.allow_insecure_remote;
    out.max_frame_bytes = options.max_frame_bytes;
    out.connect_timeout = options.connect_timeout;
    return out;
  }

  // --- On the client's thread ------------------------------------------------------------

  void thread_main() {
    for (;;) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        // A failure in one handler must not end syncing; record it and keep running.
        record_error(std::string("internal: ") + e.what());
      }
    }
  }

  void connect() {
    if (stopping) return;
    set_state(SyncState::kConnecting);
    if (snapshot_wanted) return fetch_snapshot();
    cancel_connect = transport::connect_websocket(
        io, url, client_options(),
        [this](std::optional<Error> error, std::shared_ptr<transport::Connection> connection) {
          on_connected(std::move(error), std::move(connection));
        });
  }

  void on_connected(std::optional<Error> error, std::shared_ptr<transport::Connection> connection) {
    cancel_connect = nullptr;
    if (stopping) {
      if (connection) connection->close("client stopping");
      return mark_shut_down();
    }
    if (error) {
      record_error(error->what());
      set_state(SyncState::kOffline);
      return schedule_reconnect();
    }
    session_error = false;
    SyncSession::Events events;
    events.on_state = [this](SyncState state) {
      if (state == SyncState::kLive) backoff = options.min_backoff;
      // kOffline comes with on_closed, handled there once the session is gone.
      if (state != SyncState::kOffline) set_state(state);
    };
    events.on_error = [this](const transport::ErrorFrame& frame) { on_wire_error(frame); };
    events.on_closed = [this](const std::string& reason) {
      // Not from inside the session's own callback: the session is destroyed there.
      net::post(io, [this, reason] { on_session_closed(reason); });
    };
    auto observed = std::make_shared<transport::ObservedConnection>(std::move(connection),
                                                                    [this] { update_status(); });
    session = std::make_unique<SyncSession>(*replica, std::move(observed),
                                            SyncSession::Options{ns, token}, std::move(events));
    session->start();
  }

  // --- Starting from a snapshot (SyncClientOptions::bootstrap_from_snapshot) ------------------

  std::string snapshot_path() const { return path + "-snapshot"; }

  void fetch_snapshot() {
    try {
      // The application may have written since the last look: then there is nothing to gain.
      if (!replica->accepts_snapshot()) return give_up_snapshot("");
    } catch (const Error& e) {
      return give_up_snapshot(e.what());
    }
    set_state(SyncState::kSyncing);
    transport::SnapshotDownloadOptions download;
    download.client = client_options();
    download.max_bytes = options.max_snapshot_bytes;
    cancel_connect = transport::download_snapshot(
        io, url, token, snapshot_path(), std::move(download),
        [this](std::optional<Error> error, transport::SnapshotDownloadResult result) {
          on_snapshot_downloaded(std::move(error), result);
        });
  }

  void on_snapshot_downloaded(std::optional<Error> error,
                              const transport::SnapshotDownloadResult& result) {
    cancel_connect = nullptr;
    if (stopping) return mark_shut_down();
    if (error && error->code() == ErrorCode::kUnauthorized && renew(error->what())) {
      set_state(SyncState::kOffline);
      return schedule_reconnect();  // the download again, with the new token
    }
    if (error) {
      // A network failure is tried again after the usual backoff, from where it stopped. It
      // counts against snapshot_attempts only when the relay answered with an error and sent
      // nothing (a relay or proxy failing): a device offline at its first start must not give
      // up on the snapshot, nor one whose downloads progress, nor one told to wait for its
      // token's budget (429). A refusal would be repeated.
      const bool counts =
          result.answered && result.received_bytes == 0 && result.http_status != 429;
      if (error->code() == ErrorCode::kIo &&
          (!counts || ++snapshot_failures < options.snapshot_attempts)) {
        record_error(error->what());
        set_state(SyncState::kOffline);
        // Told when the budget will be there: asking sooner only earns another 429.
        if (result.http_status == 429 && result.retry_after_seconds > 0)
          return retry_in(seconds(result.retry_after_seconds));
        return schedule_reconnect();
      }
      give_up_snapshot(error->what());
      return connect();
    }
    try {
      replica->install_snapshot(snapshot_path());
      std::lock_guard lock(mutex);
      status.snapshot_installed_bytes = result.file_bytes;
    } catch (const Error& e) {
      // Not empty any more, or a schema this snapshot's rows do not fit: change by change.
      give_up_snapshot(e.what());
      return connect();
    }
    give_up_snapshot("");
    update_status();
    connect();
  }

  // Change by change from now on; `why`, if not empty, becomes the last error.
  void give_up_snapshot(const std::string& why) {
    snapshot_wanted = false;
    transport::remove_snapshot_files(snapshot_path());
    if (!why.empty()) record_error(why + "; syncing change by change");
  }

  void on_wire_error(const transport::ErrorFrame& frame) {
    session_error = true;
    bool fatal = is_fatal(frame.code);
    // A renewed token makes an expired one no reason to stop; the reconnect uses it.
    if (frame.code == transport::WireError::kUnauthorized && renew(frame.message)) fatal = false;
    // The relay lacks this device's schema version until an admin device or its operator
    // brings it: retrying often would not help, and the changes wait here meanwhile.
    if (frame.code == transport::WireError::kSchemaAhead) backoff = options.max_backoff;
    {
      std::lock_guard lock(mutex);
      status.last_error =
          std::string(transport::wire_error_name(frame.code)) + ": " + frame.message;
      status.last_wire_error = frame.code;
      if (fatal) status.fatal = true;
    }
    publish();
  }

  // Asks options.renew_token for a new token after the relay refused this one as unauthorized;
  // true when it gave one (the next connection or download uses it).
  bool renew(const std::string& reason) {
    if (!options.renew_token) return false;
    std::string renewed;
    try {
      renewed = options.renew_token(reason);
    } catch (const std::exception& e) {
      record_error(std::string("token renewal failed: ") + e.what());
    }
    if (renewed.empty()) return false;
    token = std::move(renewed);
    backoff = options.min_backoff;
    return true;
  }

  void on_session_closed(const std::string& reason) {
    if (session) {
      relay_held = session->relay_held();
      session.reset();
    }
    if (!session_error && !stopping) record_error(reason);
    set_state(SyncState::kOffline);
    if (stopping) return mark_shut_down();
    if (!status_snapshot().fatal) schedule_reconnect();
  }

  void schedule_reconnect() {
    if (stopping) return;
    const milliseconds delay = backoff;
    backoff = std::min(backoff * 2, options.max_backoff);
    // Between half the delay and the delay, so devices cut off together do not return together.
    std::uniform_int_distribution<std::int64_t> jitter(delay.count() / 2, delay.count());
    start_retry_timer(milliseconds(jitter(rng)));
  }

  // Connects again once `wait` has passed, and up to a tenth later (devices told together do
  // not return together); the backoff stays as it was.
  void retry_in(milliseconds wait) {
    if (stopping) return;
    std::uniform_int_distribution<std::int64_t> jitter(0, wait.count() / 10);
    start_retry_timer(wait + milliseconds(jitter(rng)));
  }

  void start_retry_timer(milliseconds delay) {
    retry_timer.expires_after(delay);
    retry_timer.async_wait([this](boost::system::error_code ec) {
      if (!ec) connect();
    });
  }

  void schedule_poll() {
    poll_timer.expires_after(options.poll_interval);
    poll_timer.async_wait([this](boost::system::error_code ec) {
      if (ec || stopping) return;
      poll();
      schedule_poll();
    });
  }

  // Notices commits by other connections (another process, or the application's own Replica)
  // and sends them.
  void poll() {
    try {
      const auto rows = replica->query("PRAGMA data_version").rows;
      const std::int64_t version = rows.empty() ? 0 : std::get<std::int64_t>(rows[0][0]);
      if (version == data_version) return;
      data_version = version;
      if (session) session->push_local_changes();
      update_status();
    } catch (const Error& e) {
      record_error(e.what());
    }
  }

  void set_state(SyncState next) {
    if (state == next) return;
    state = next;
    update_status();
  }

  // Recomputes the status from the replica and the session; publishes it if it changed.
  void update_status() {
    std::uint64_t pending = 0;
    bool in_sync = false;
    const crdt::VersionVector& held = session ? session->relay_held() : relay_held;
    try {
      pending = replica->local_changes_after(held);
      in_sync = session && session->in_sync();
    } catch (const Error& e) {
      record_error(e.what());
    }
    {
      std::lock_guard lock(mutex);
      // last_error, last_wire_error and fatal are written by the error paths only.
      status.state = state;
      status.pending = pending;
      status.in_sync = in_sync;
      status.relay_held = held;
    }
    publish();
  }

  void record_error(const std::string& message) {
    {
      std::lock_guard lock(mutex);
      status.last_error = message;
    }
    publish();
  }

  // Wakes waiters, and calls on_status when anything changed since the last call.
  void publish() {
    SyncStatus now = status_snapshot();
    cv.notify_all();
    const bool changed =
        !published || now.state != last_published.state || now.pending != last_published.pending ||
        now.last_error != last_published.last_error || now.fatal != last_published.fatal ||
        now.in_sync != last_published.in_sync || !(now.relay_held == last_published.relay_held) ||
        now.snapshot_installed_bytes != last_published.snapshot_installed_bytes;
    if (!changed) return;
    published = true;
    last_published = now;
    if (options.on_status) options.on_status(now);
  }

  void mark_shut_down() {
    {
      std::lock_guard lock(mutex);
      shut_down = true;
    }
    cv.notify_all();
  }

  SyncStatus status_snapshot() const {
    std::lock_guard lock(mutex);
    return status;
  }

  // --- Configuration (set before the thread starts) -----------------------------------------
  const std::string path;
  const std::string url;
  std::string token;  // replaced by options.renew_token, on the client's thread
  const SyncClientOptions options;
  std::string ns;

  // --- The client's thread owns these -------------------------------------------------------
  // Declared first so that it is destroyed last: sockets and timers must go before it.
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> work = net::make_work_guard(io);
  net::steady_timer poll_timer{io};
  net::steady_timer retry_timer{io};
  std::unique_ptr<storage::Replica> replica;
  std::unique_ptr<SyncSession> session;     // after replica: destroyed before it
  transport::CancelConnect cancel_connect;  // of a connection attempt or snapshot download
  bool snapshot_wanted = false;             // start from a snapshot (fetch_snapshot)
  std::uint32_t snapshot_failures = 0;      // downloads the relay answered with an error
  crdt::VersionVector relay_held;           // what the relay held when the last session ended
  std::int64_t data_version = -1;
  std::mt19937_64 rng;
  milliseconds backoff;
  SyncState state = SyncState::kOffline;
  bool stopping = false;
  bool session_error = false;  // the current session got an error frame
  bool published = false;
  SyncStatus last_published;

  // --- Shared, under `mutex` ---------------------------------------------------------------
  mutable std::mutex mutex;
  std::condition_variable cv;
  SyncStatus status;
  std::uint64_t checks_requested = 0;
  std::uint64_t checks_done = 0;
  bool started = false;
  bool stopped = false;
  bool running = false;
  bool shut_down = false;
  std::thread thread;
};

SyncClient::SyncClient(std::string replica_path, std::string url, std::string token,
                       SyncClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(replica_path), std::move(url), std::move(token),
                                   std::move(options))) {}

SyncClient::~SyncClient() { stop(); }

void SyncClient::start() {
  Impl& d = *impl_;
  {
    std::lock_guard lock(d.mutex);
    if (d.started) throw Error(ErrorCode::kState, "this SyncClient was already started");
  }
  d.ns = transport::check_url(d.url, d.client_options()).ns;
  d.replica = storage::Replica::open(d.path, d.options.replica_options);
  // Leftovers of a download are resumed only while the replica can still take the snapshot.
  d.snapshot_wanted = d.options.bootstrap_from_snapshot && d.replica->accepts_snapshot();
  if (!d.snapshot_wanted) transport::remove_snapshot_files(d.snapshot_path());
  {
    std::lock_guard lock(d.mutex);
    d.started = true;
    d.running = true;
  }
  d.thread = std::thread([&d] { d.thread_main(); });
  net::post(d.io, [&d] {
    // The first status: offline, with every local change pending until a relay says otherwise.
    d.update_status();
    d.poll();
    d.schedule_poll();
    d.connect();
  });
}

void SyncClient::stop() {
  Impl& d = *impl_;
  {
    std::lock_guard lock(d.mutex);
    if (d.stopped) return;
    d.stopped = true;
    if (!d.started) return;
  }
  if (std::this_thread::get_id() == d.thread.get_id())
    throw Error(ErrorCode::kState, "SyncClient::stop() called from the client's own thread");
  net::post(d.io, [&d] {
    d.stopping = true;
    d.poll_timer.cancel();
    d.retry_timer.cancel();
    if (d.cancel_connect) {
      d.cancel_connect();  // on_connected follows and marks the end
    } else if (d.session) {
      d.session->close("client stopping");  // on_session_closed follows
    } else {
      d.mark_shut_down();
    }
  });
  {
    // The close handshake is a courtesy to the relay; do not wait on a relay that is gone.
    std::unique_lock lock(d.mutex);
    d.cv.wait_for(lock, std::chrono::seconds(2), [&d] { return d.shut_down; });
  }
  d.work.reset();
  d.io.stop();
  d.thread.join();
  // The thread is gone: this thread may touch its objects now.
  if (d.session) d.relay_held = d.session->relay_held();
  d.session.reset();
  {
    std::lock_guard lock(d.mutex);
    d.running = false;
    d.status.state = SyncState::kOffline;
    d.status.in_sync = false;
  }
  d.cv.notify_all();
}

bool SyncClient::wait_until_in_sync(std::chrono::milliseconds timeout) {
  Impl& d = *impl_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::uint64_t check;
  {
    std::lock_guard lock(d.mutex);
    if (!d.running) return false;
    check = ++d.checks_requested;
  }
  // Reads data_version now, so a write committed before this call counts even if the poll
  // timer has not seen it yet.
  net::post(d.io, [&d, check] {
    d.poll();
    d.update_status();
    {
      std::lock_guard lock(d.mutex);
      d.checks_done = std::max(d.checks_done, check);
    }
    d.cv.notify_all();
  });
  std::unique_lock lock(d.mutex);
  d.cv.wait_until(lock, deadline, [&] {
    return !d.running || d.status.fatal || (d.checks_done >= check && d.status.in_sync);
  });
  return d.running && d.checks_done >= check && d.status.in_sync;
}

std::optional<SyncClient::Digests> SyncClient::digests(std::chrono::milliseconds timeout) {
  auto answer = std::make_shared<std::promise<std::optional<Digests>>>();
  std::future<std::optional<Digests>> future = answer->get_future();
  Impl& d = *impl_;
  net::post(d.io, [&d, answer] {
    if (!d.session || d.session->state() != SyncState::kLive)
      return answer->set_value(std::nullopt);
    std::string local = d.replica->digest();
    d.session->request_digest([answer, local](const std::string& relay) {
      answer->set_value(Digests{local, relay});
    });
  });
  if (future.wait_for(timeout) != std::future_status::ready) return std::nullopt;
  return future.get();
}

SyncStatus SyncClient::status() const { return impl_->status_snapshot(); }
SyncState SyncClient::state() const { return status().state; }
std::uint64_t SyncClient::pending() const { return status().pending; }
std::string SyncClient::last_error() const { return status().last_error; }

}  // namespace lattice::engine
