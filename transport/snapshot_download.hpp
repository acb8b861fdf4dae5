#pragma once
// A new device's first sync can start from a snapshot of its namespace instead of every change
// (docs/protocol.md, "Snapshots"): the relay serves it at GET /snapshot/NAMESPACE on the port of
// its WebSocket, over the same TLS, with the same bearer token. This downloads it into a file,
// resuming a download that an earlier call left unfinished.

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "crdt/error.hpp"
#include "transport/websocket_client.hpp"

namespace lattice::transport {

struct SnapshotDownloadOptions {
  // TLS, ws:// rules and the connection bound (resolve, TCP, TLS, the response's header) are
  // the WebSocket's; idle_timeout bounds each wait for more of the body.
  ClientOptions client;
  // Largest snapshot accepted; a relay that announces more is refused (kTooLarge).
  std::uint64_t max_bytes = std::uint64_t{64} << 30;
};

struct SnapshotDownloadResult {
  std::uint64_t file_bytes = 0;      // the size of the whole snapshot (once the relay said it)
  std::uint64_t received_bytes = 0;  // bytes of it this call wrote to the file
  bool resumed = false;              // the relay sent the rest of a file begun earlier
  bool answered = false;             // the relay's response arrived (its header at least)
  unsigned http_status = 0;          // its status (0 before it came)
  // A refusal's Retry-After (seconds; a relay sends it with 429, a token over its snapshot
  // budget), 0 when it gave none. At most kMaxRetryAfterSeconds.
  std::uint64_t retry_after_seconds = 0;
};
inline constexpr std::uint64_t kMaxRetryAfterSeconds = 3600;

// Called once, on the io_context's thread: with an error (the result says how far it got), or
// with the file complete.
using SnapshotHandler =
    std::function<void(std::optional<Error> error, SnapshotDownloadResult result)>;

// Downloads the snapshot of the namespace of `url` (a relay URL, wss://HOST:PORT/NAMESPACE,
// WebSocketUrl::parse; the same host and port serve https://HOST:PORT/snapshot/NAMESPACE) into
// `path`, authenticated by `token`.
//
// Resuming: the ETag of the file being received is kept in `path` + ".etag". When `path` holds
// part of a file and that ETag is there, only the rest is asked for (Range, If-Range); if the
// relay has made a newer snapshot since, it sends the new one whole and `path` is rewritten.
// After an error the partial file and its ETag stay for the next call, except when they cannot
// be resumed. On success both files stay; the caller removes them (remove_snapshot_files) once
// the snapshot is installed.
//
// Errors: kIo for a network failure, a timeout, a cancellation, a relay error (HTTP 5xx) or a
// token over its snapshot budget (429) (worth retrying later); kUnauthorized (401) and kForbidden
// (403) with the relay's reason; kState (404: a relay that offers no snapshots, or a namespace it
// has not opened); kTooLarge over options.max_bytes; kInvalidArgument for a refused URL, as
// connect_websocket. The returned function cancels the download (the handler then gets kIo); call
// it on the io_context's thread.
CancelConnect download_snapshot(boost::asio::io_context& io, std::string_view url,
                                std::string token, std::string path,
                                SnapshotDownloadOptions options, SnapshotHandler on_done);

// Removes `path` and `path` + ".etag" if they exist.
void remove_snapshot_files(const std::string& path);

}  // namespace lattice::transport
