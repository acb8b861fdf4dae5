#include "transport/snapshot_download.hpp"

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <type_traits>

#include "transport/client_tls.hpp"

namespace lattice::transport {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using boost::system::error_code;

std::string etag_path(const std::string& path) { return path + ".etag"; }

std::uint64_t size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  return ec ? 0 : size;
}

std::string read_etag(const std::string& path) {
  std::ifstream in(etag_path(path), std::ios::binary);
  std::string etag;
  std::getline(in, etag);
  return etag;
}

// A Retry-After of delta-seconds (RFC 9110 10.2.3), at most kMaxRetryAfterSeconds; 0 for none,
// an HTTP date or anything else.
std::uint64_t retry_after(std::string_view value) {
  std::uint64_t seconds = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), seconds);
  if (value.empty() || error != std::errc() || end != value.data() + value.size()) return 0;
  return std::min(seconds, kMaxRetryAfterSeconds);
}

// Bodies of refusals are a line of text; longer is not worth keeping.
constexpr std::size_t kMaxRefusalBytes = 16 << 10;
constexpr std::size_t kBodyReadBytes = 64 << 10;  // see on_header

// One download. Every handler runs on its strand; it owns itself through pending operations.
template <bool kSecure>
class SnapshotDownloader : public std::enable_shared_from_this<SnapshotDownloader<kSecure>> {
  using Stream = std::conditional_t<kSecure, ssl::stream<beast::tcp_stream>, beast::tcp_stream>;

 public:
  template <class... StreamArgs>
  SnapshotDownloader(net::strand<net::io_context::executor_type> strand,
                     std::shared_ptr<ssl::context> tls, WebSocketUrl url, std::string token,
                     std::string path, SnapshotDownloadOptions options, SnapshotHandler on_done,
                     StreamArgs&&... stream_args)
      : strand_(strand),
        tls_(std::move(tls)),
        url_(std::move(url)),
        token_(std::move(token)),
        path_(std::move(path)),
        options_(std::move(options)),
        on_done_(std::move(on_done)),
        resolver_(strand_),
        stream_(std::forward<StreamArgs>(stream_args)...),
        timer_(strand_) {}

  void run() {
    // What an earlier call left: resumable only with the ETag that names its file.
    had_ = size_or_zero(path_);
    etag_ = had_ > 0 ? read_etag(path_) : std::string();
    if (etag_.empty()) {
      remove_snapshot_files(path_);
      had_ = 0;
    }
    timer_.expires_after(options_.client.connect_timeout);
    timer_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (!ec && !self->receiving_)
        self->abort("timed out after " +
                    std::to_string(self->options_.client.connect_timeout.count()) + " ms");
    });
    resolver_.async_resolve(
        url_.host, std::to_string(url_.port),
        beast::bind_front_handler(&SnapshotDownloader::on_resolve, this->shared_from_this()));
  }

  CancelConnect canceller() {
    std::weak_ptr<SnapshotDownloader> weak = this->shared_from_this();
    return [weak] {
      if (auto self = weak.lock())
        net::post(self->strand_, [self] { self->abort("download cancelled"); });
    };
  }

 private:
  std::string where() const { return "snapshot of '" + url_.ns + "' from " + url_.authority(); }

  void fail(error_code ec, const std::string& step) {
    if (!abort_reason_.empty())
      return finish(Error(ErrorCode::kIo, where() + ": " + abort_reason_));
    if (ec == http::error::body_limit)
      return finish(Error(ErrorCode::kTooLarge, where() + ": larger than " +
                                                    std::to_string(options_.max_bytes) + " bytes"));
    std::string reason = where() + ": " + step + ": " + ec.message();
    if constexpr (kSecure) {
      if (tls_started_ && !tls_done_) {
        const std::string detail =
            detail::verify_failure_detail(stream_.native_handle(), url_.host, host_mismatch_);
        if (!detail.empty()) reason += " " + detail;
      }
    }
    finish(Error(ErrorCode::kIo, reason));
  }

  void on_resolve(error_code ec, tcp::resolver::results_type results) {
    if (ec) return fail(ec, "resolve '" + url_.host + "'");
    if (!url_.secure && !options_.client.allow_insecure_remote) {
      for (const auto& entry : results)
        if (!detail::is_loopback_address(entry.endpoint().address()))
          return finish(Error(ErrorCode::kInvalidArgument,
                              where() + ": refusing http:// to '" + url_.host +
                                  "': it resolves to " + entry.endpoint().address().to_string() +
                                  ", which is not a loopback address"));
    }
    beast::get_lowest_layer(stream_).async_connect(
        results,
        beast::bind_front_handler(&SnapshotDownloader::on_connect, this->shared_from_this()));
  }

  void on_connect(error_code ec, const tcp::endpoint&) {
    if (ec) return fail(ec, "connect");
    if constexpr (kSecure) {
      if (auto problem = detail::prepare_client_tls(stream_, url_.host, &host_mismatch_))
        return finish(Error(ErrorCode::kIo, where() + ": TLS handshake: " + *problem));
      tls_started_ = true;
      stream_.async_handshake(
          ssl::stream_base::client,
          beast::bind_front_handler(&SnapshotDownloader::on_handshake, this->shared_from_this()));
    } else {
      send_request();
    }
  }

  void on_handshake(error_code ec) {
    if (ec) return fail(ec, "TLS handshake");
    tls_done_ = true;
    send_request();
  }

  void send_request() {
    request_.method(http::verb::get);
    request_.target("/snapshot/" + url_.ns);
    request_.version(11);
    request_.set(http::field::host, url_.authority());
    request_.set(http::field::user_agent, "lattice-sync/1");
    request_.set(http::field::authorization, "Bearer " + token_);
    if (had_ > 0) {
      request_.set(http::field::range, "bytes=" + std::to_string(had_) + "-");
      request_.set(http::field::if_range, etag_);
    }
    request_.keep_alive(false);
    http::async_write(
        stream_, request_,
        beast::bind_front_handler(&SnapshotDownloader::on_request_sent, this->shared_from_this()));
  }

  void on_request_sent(error_code ec, std::size_t) {
    if (ec) return fail(ec, "send the request");
    header_.emplace();
    header_->body_limit(options_.max_bytes);
    http::async_read_header(
        stream_, buffer_, *header_,
        beast::bind_front_handler(&SnapshotDownloader::on_header, this->shared_from_this()));
  }

  void on_header(error_code ec, std::size_t) {
    if (ec) return fail(ec, "read the response");
    receiving_ = true;
    result_.answered = true;
    result_.http_status = header_->get().result_int();
    result_.retry_after_seconds = retry_after(header_->get()[http::field::retry_after]);
    timer_.cancel();
    const auto& response = header_->get();
    const unsigned status = response.result_int();
    if (status != 200 && status != 206) return read_refusal(status);

    const std::string etag(response[http::field::etag]);
    const auto length = header_->content_length();
    if (!length)
      return finish(Error(ErrorCode::kIo, where() + ": the response has no Content-Length"));
    if (status == 206) {
      // The rest of the file begun earlier, and nothing else.
      const std::string expected = "bytes " + std::to_string(had_) + "-";
      if (etag != etag_ ||
          response[http::field::content_range].substr(0, expected.size()) != expected) {
        remove_snapshot_files(path_);
        return finish(Error(ErrorCode::kIo, where() + ": the relay resumed another range or "
                                                      "file; the next try starts over"));
      }
      result_.resumed = true;
    } else {
      had_ = 0;
      remove_snapshot_files(path_);
      // Written before any byte of the body, so that a file cut off can be resumed.
      if (!etag.empty()) {
        std::ofstream out(etag_path(path_), std::ios::binary | std::ios::trunc);
        out << etag << '\n';
        if (!out.flush())
          return finish(
              Error(ErrorCode::kIo, where() + ": cannot write '" + etag_path(path_) + "'"));
      }
    }
    result_.file_bytes = had_ + *length;
    if (result_.file_bytes > options_.max_bytes)
      return finish(
          Error(ErrorCode::kTooLarge, where() + ": " + std::to_string(result_.file_bytes) +
                                          " bytes, more than the " +
                                          std::to_string(options_.max_bytes) + " accepted"));
    body_.emplace(std::move(*header_));
    header_.reset();
    body_->body_limit(options_.max_bytes);
    // Beast reads as much as the buffer's free capacity, and at least 512 bytes: left as the
    // header made it, the body came 512 bytes per read and per write to the file (89,000 of
    // each for a 45 MB snapshot). One read takes up to a TLS record (16 KiB) this way.
    buffer_.reserve(kBodyReadBytes);
    body_->get().body().open(
        path_.c_str(), status == 206 ? beast::file_mode::append_existing : beast::file_mode::write,
        ec);
    if (ec)
      return finish(
          Error(ErrorCode::kIo, where() + ": cannot write '" + path_ + "': " + ec.message()));
    read_body();
  }

  void read_body() {
    beast::get_lowest_layer(stream_).expires_after(options_.client.idle_timeout);
    http::async_read_some(
        stream_, buffer_, *body_,
        beast::bind_front_handler(&SnapshotDownloader::on_body, this->shared_from_this()));
  }

  void on_body(error_code ec, std::size_t) {
    if (ec) return fail(ec, "read the snapshot");
    if (!body_->is_done()) return read_body();
    body_.reset();  // closes the file
    const std::uint64_t size = size_or_zero(path_);
    if (size != result_.file_bytes)
      return finish(Error(ErrorCode::kIo, where() + ": '" + path_ + "' holds " +
                                              std::to_string(size) + " bytes, not " +
                                              std::to_string(result_.file_bytes)));
    result_.received_bytes = size - had_;
    finish(std::nullopt);
  }

  void read_refusal(unsigned status) {
    refusal_.emplace(std::move(*header_));
    header_.reset();
    refusal_->body_limit(kMaxRefusalBytes);
    beast::get_lowest_layer(stream_).expires_after(options_.client.idle_timeout);
    http::async_read(stream_, buffer_, *refusal_,
                     [self = this->shared_from_this(), status](error_code, std::size_t) {
                       self->on_refusal(status);
                     });
  }

  void on_refusal(unsigned status) {
    std::string said = refusal_ ? refusal_->get().body() : std::string();
    while (!said.empty() && (said.back() == '\n' || said.back() == '\r')) said.pop_back();
    const std::string message =
        where() + ": HTTP " + std::to_string(status) + (said.empty() ? std::string() : ": " + said);
    switch (status) {
      case 401:
        return finish(Error(ErrorCode::kUnauthorized, message));
      case 403:
        return finish(Error(ErrorCode::kForbidden, message));
      case 404:
        return finish(Error(ErrorCode::kState, message));
      case 416:
        // The part kept is longer than the relay's file: it cannot be resumed.
        remove_snapshot_files(path_);
        return finish(Error(ErrorCode::kIo, message));
      default:
        return finish(Error(ErrorCode::kIo, message));
    }
  }

  void abort(const std::string& reason) {
    if (done_) return;
    abort_reason_ = reason;
    resolver_.cancel();
    error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
  }

  void finish(std::optional<Error> error) {
    if (done_) return;
    done_ = true;
    timer_.cancel();
    if (body_) {
      body_.reset();  // closes the file
      result_.received_bytes = size_or_zero(path_) - std::min(had_, size_or_zero(path_));
    }
    error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
    SnapshotHandler on_done = std::move(on_done_);
    on_done_ = nullptr;
    on_done(std::move(error), result_);
  }

  net::strand<net::io_context::executor_type> strand_;
  std::shared_ptr<ssl::context> tls_;  // before stream_, which refers to it
  WebSocketUrl url_;
  std::string token_;
  std::string path_;
  SnapshotDownloadOptions options_;
  SnapshotHandler on_done_;
  tcp::resolver resolver_;
  Stream stream_;
  net::steady_timer timer_;  // bounds everything before the response's header
  beast::flat_buffer buffer_;
  http::request<http::empty_body> request_;
  std::optional<http::response_parser<http::empty_body>> header_;
  std::optional<http::response_parser<http::file_body>> body_;
  std::optional<http::response_parser<http::string_body>> refusal_;
  std::uint64_t had_ = 0;  // bytes of the file an earlier call received
  std::string etag_;       // the ETag of that file
  SnapshotDownloadResult result_;
  std::string abort_reason_;
  bool tls_started_ = false;
  bool tls_done_ = false;
  bool host_mismatch_ = false;
  bool receiving_ = false;  // the response's header arrived
  bool done_ = false;
};

}  // namespace

void remove_snapshot_files(const std::string& path) {
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  std::filesystem::remove(etag_path(path), ignored);
}

CancelConnect download_snapshot(boost::asio::io_context& io, std::string_view url,
                                std::string token, std::string path,
                                SnapshotDownloadOptions options, SnapshotHandler on_done) {
  auto report = [&io, &on_done](Error error) -> CancelConnect {
    net::post(io, [handler = std::move(on_done), error = std::move(error)] {
      handler(error, SnapshotDownloadResult{});
    });
    return [] {};
  };
  WebSocketUrl parsed;
  try {
    parsed = check_url(url, options.client);
  } catch (const Error& e) {
    return report(e);
  }
  auto strand = net::make_strand(io);
  if (!parsed.secure) {
    auto download = std::make_shared<SnapshotDownloader<false>>(
        strand, nullptr, std::move(parsed), std::move(token), std::move(path), std::move(options),
        std::move(on_done), strand);
    download->run();
    return download->canceller();
  }
  std::shared_ptr<ssl::context> tls;
  try {
    tls = detail::client_tls_context(options.client.ca_file);
  } catch (const Error& e) {
    return report(e);
  }
  ssl::context& context = *tls;
  auto download = std::make_shared<SnapshotDownloader<true>>(
      strand, std::move(tls), std::move(parsed), std::move(token), std::move(path),
      std::move(options), std::move(on_done), strand, context);
  download->run();
  return download->canceller();
}

}  // namespace lattice::transport
