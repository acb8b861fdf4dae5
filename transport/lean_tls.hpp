#pragma once
// TLS over a beast::tcp_stream that holds no buffer while the connection is idle: the relay's
// side of every device connection (websocket_server.cpp).
//
// Asio's ssl::stream keeps four 17 KiB buffers per connection for its whole life, two of its
// own and two in the OpenSSL BIO pair it reads and writes through: 68 KiB of the 72 KiB an idle
// device cost the relay (docs/benchmarks.md). Here OpenSSL reads and writes through a BIO over
// two strings that are empty between operations; an idle connection waits for data with a read
// of a few bytes, then takes what the socket holds without blocking; and with
// SSL_MODE_RELEASE_BUFFERS (the context's) OpenSSL frees its own record buffers when idle.
//
// A model of Asio's AsyncStream for Beast's http and websocket: like a socket, at most one read
// and one write in flight, each on the stream's executor, which must be one thread at a time.
// A write never needs to read: the context must refuse renegotiation (SSL_OP_NO_RENEGOTIATION).
// Handshake and shutdown as ssl::stream's; shutdown sends close_notify and does not wait for
// the peer's. Errors are ssl::stream's: OpenSSL's in net::error::get_ssl_category(), a close
// without close_notify ssl::error::stream_truncated, a close_notify net::error::eof.

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <array>
#include <boost/asio/compose.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/teardown.hpp>
#include <cstddef>
#include <memory>
#include <string>

namespace lattice::transport {

namespace detail {
template <class MutableBuffers>
class ReadOp;
template <class ConstBuffers>
class WriteOp;
class HandshakeOp;
struct DeferredCompletion;
}  // namespace detail

class LeanTlsStream {
 public:
  using next_layer_type = boost::beast::tcp_stream;
  using executor_type = next_layer_type::executor_type;
  using error_code = boost::system::error_code;

  // Takes `socket` over; `context` must outlive the stream. Throws std::bad_alloc.
  LeanTlsStream(boost::asio::ip::tcp::socket&& socket, boost::asio::ssl::context& context);
  LeanTlsStream(LeanTlsStream&&) noexcept = default;
  LeanTlsStream& operator=(LeanTlsStream&&) = delete;
  ~LeanTlsStream() = default;

  executor_type get_executor() noexcept { return next_.get_executor(); }
  next_layer_type& next_layer() noexcept { return next_; }
  SSL* native_handle() noexcept { return state_->ssl; }
  // The heap memory the stream's own buffers hold: none between operations (OpenSSL's is not
  // counted). For tests.
  std::size_t buffered_bytes() const noexcept;

  // handler(error_code)
  template <class Handler>
  auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Handler&& handler);
  // handler(error_code): close_notify sent (not waiting for the peer's).
  template <class Handler>
  auto async_shutdown(Handler&& handler);
  // handler(error_code, std::size_t): plaintext read into `buffers`.
  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler);
  // handler(error_code, std::size_t): plaintext of `buffers` taken, at most 64 KiB.
  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler);

  // What OpenSSL and the socket share; on the heap, so that the BIO's pointer to it survives
  // moving the stream. (Public for the BIO's callbacks in lean_tls.cpp.)
  struct State {
    SSL* ssl = nullptr;
    std::string in;  // ciphertext received and not yet read by OpenSSL, from in_at
    std::size_t in_at = 0;
    std::string out;             // ciphertext OpenSSL wrote and not yet sent
    std::string sending;         // what the write in flight sends
    std::array<char, 5> peek{};  // an idle read waits on this: one record header
    bool eof = false;            // the peer closed the TCP connection
    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State();
  };

  // The operations' steps, below.
 private:
  template <class MutableBuffers>
  friend class detail::ReadOp;
  template <class ConstBuffers>
  friend class detail::WriteOp;
  friend class detail::HandshakeOp;
  friend struct detail::DeferredCompletion;

  // The read of State::peek completed with `n` bytes and `ec`; true if `ec` is an error (the
  // end of the stream is none: State::eof).
  bool received(std::size_t n, error_code& ec);
  // Reads what the socket holds, without blocking, into State::in; true if it got anything or
  // the end of the stream. A would_block is no error.
  bool drain(error_code& ec);
  // The error of a failed OpenSSL call.
  error_code ssl_error(int result);
  // Gives back the buffers' memory once they are empty.
  void release();
  // Moves what OpenSSL wrote into `sending` for one async_write; false if nothing.
  bool take_output();
  // The thread's 64 KiB into which a write gathers its buffers for one SSL_write.
  static boost::asio::mutable_buffer write_scratch();

  next_layer_type next_;
  std::unique_ptr<State> state_;
};

namespace detail {

// Runs `body` now; an operation that completes before waiting for anything completes through a
// post, never inside its initiating function (Asio's rule, which Beast's loops rely on).
struct DeferredCompletion {
  bool waited = false;
  bool posted = false;
  boost::system::error_code ec;
  std::size_t bytes = 0;

  // `n`: the bytes a read or write transferred; a handshake completes with the error alone.
  template <class Self, class... Bytes>
  void finish(Self& self, LeanTlsStream& stream, boost::system::error_code e, Bytes... n) {
    stream.release();
    if (waited || posted) return self.complete(e, n...);
    posted = true;
    ec = e;
    ((bytes = n), ...);
    boost::asio::post(stream.get_executor(), std::move(self));
  }
};

template <class MutableBuffers>
class ReadOp {
 public:
  ReadOp(LeanTlsStream& stream, const MutableBuffers& buffers)
      : stream_(stream), buffers_(buffers) {}

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
    if (done_.posted) return self.complete(done_.ec, done_.bytes);
    LeanTlsStream::State& s = *stream_.state_;
    if (reading_) {  // the few bytes an idle read waited for
      reading_ = false;
      if (stream_.received(n, ec)) return done_.finish(self, stream_, ec, 0);
    }
    boost::asio::mutable_buffer into;
    for (auto it = boost::asio::buffer_sequence_begin(buffers_);
         it != boost::asio::buffer_sequence_end(buffers_); ++it)
      if (boost::asio::mutable_buffer b(*it); b.size() > 0) {
        into = b;
        break;
      }
    if (into.size() == 0) return done_.finish(self, stream_, {}, 0);
    for (;;) {
      ERR_clear_error();
      std::size_t got = 0;
      const int result = SSL_read_ex(s.ssl, into.data(), into.size(), &got);
      if (result == 1) return done_.finish(self, stream_, {}, got);
      if (SSL_get_error(s.ssl, result) != SSL_ERROR_WANT_READ)
        return done_.finish(self, stream_, stream_.ssl_error(result), 0);
      if (stream_.drain(ec)) continue;
      if (ec) return done_.finish(self, stream_, ec, 0);
      reading_ = true;
      done_.waited = true;
      stream_.release();
      return stream_.next_.async_read_some(boost::asio::buffer(s.peek), std::move(self));
    }
  }

 private:
  LeanTlsStream& stream_;
  MutableBuffers buffers_;
  bool reading_ = false;
  DeferredCompletion done_;
};

template <class ConstBuffers>
class WriteOp {
 public:
  WriteOp(LeanTlsStream& stream, const ConstBuffers& buffers)
      : stream_(stream), buffers_(buffers) {}

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}, std::size_t = 0) {
    if (done_.posted) return self.complete(done_.ec, done_.bytes);
    LeanTlsStream::State& s = *stream_.state_;
    if (sent_) {  // the ciphertext went out
      s.sending.clear();
      return done_.finish(self, stream_, ec, ec ? 0 : taken_);
    }
    // One SSL_write of up to 64 KiB (records of 16 KiB), as Beast's flat_stream gives
    // ssl::stream: a websocket frame's header and payload in one record, not two.
    const boost::asio::mutable_buffer flat = LeanTlsStream::write_scratch();
    const std::size_t size = boost::asio::buffer_copy(flat, buffers_);
    if (size == 0) return done_.finish(self, stream_, {}, 0);
    ERR_clear_error();
    const int result = SSL_write_ex(s.ssl, flat.data(), size, &taken_);
    if (result != 1) return done_.finish(self, stream_, stream_.ssl_error(result), 0);
    sent_ = true;
    done_.waited = true;
    stream_.take_output();
    boost::asio::async_write(stream_.next_, boost::asio::buffer(s.sending), std::move(self));
  }

 private:
  LeanTlsStream& stream_;
  ConstBuffers buffers_;
  bool sent_ = false;
  std::size_t taken_ = 0;
  DeferredCompletion done_;
};

// A handshake or a shutdown: the OpenSSL call again until it succeeds, sending what it wrote
// and reading what it waits for.
class HandshakeOp {
 public:
  HandshakeOp(LeanTlsStream& stream, bool shutdown) : stream_(stream), shutdown_(shutdown) {}

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
    if (done_.posted) return self.complete(done_.ec);
    LeanTlsStream::State& s = *stream_.state_;
    if (stage_ == Stage::kSending) {
      s.sending.clear();
      if (ec) return finish(self, ec);
      if (succeeded_ || failure_) return finish(self, {});
    } else if (stage_ == Stage::kReading) {
      if (stream_.received(n, ec)) return finish(self, ec);
    }
    stage_ = Stage::kCalling;
    for (;;) {
      ERR_clear_error();
      const int result = shutdown_ ? SSL_shutdown(s.ssl) : SSL_do_handshake(s.ssl);
      // SSL_shutdown: 0 is close_notify sent (the peer's not awaited), 1 both.
      succeeded_ = shutdown_ ? result >= 0 : result == 1;
      const int error = succeeded_ ? SSL_ERROR_NONE : SSL_get_error(s.ssl, result);
      if (stream_.take_output()) {
        stage_ = Stage::kSending;
        done_.waited = true;
        if (!succeeded_ && error != SSL_ERROR_WANT_READ)
          failure_ = stream_.ssl_error(result);  // an alert to send, then the error
        return boost::asio::async_write(stream_.next_, boost::asio::buffer(s.sending),
                                        std::move(self));
      }
      if (succeeded_) return finish(self, {});
      if (error != SSL_ERROR_WANT_READ) return finish(self, stream_.ssl_error(result));
      if (stream_.drain(ec)) continue;
      if (ec) return finish(self, ec);
      stage_ = Stage::kReading;
      done_.waited = true;
      stream_.release();
      return stream_.next_.async_read_some(boost::asio::buffer(s.peek), std::move(self));
    }
  }

 private:
  enum class Stage { kCalling, kSending, kReading };

  template <class Self>
  void finish(Self& self, boost::system::error_code ec) {
    done_.finish(self, stream_, !ec && failure_ ? failure_ : ec);
  }

  LeanTlsStream& stream_;
  bool shutdown_;
  Stage stage_ = Stage::kCalling;
  bool succeeded_ = false;
  boost::system::error_code failure_;
  DeferredCompletion done_;
};

// Beast's websocket teardown: close_notify, then the TCP stream's own teardown.
class TeardownOp {
 public:
  TeardownOp(LeanTlsStream& stream, boost::beast::role_type role) : stream_(stream), role_(role) {}

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}) {
    if (!shut_) {
      shut_ = true;
      return stream_.async_shutdown(std::move(self));
    }
    if (!torn_) {
      torn_ = true;
      ec_ = ec;
      using boost::beast::websocket::async_teardown;
      return async_teardown(role_, stream_.next_layer(), std::move(self));
    }
    self.complete(ec_ ? ec_ : ec);
  }

 private:
  LeanTlsStream& stream_;
  boost::beast::role_type role_;
  bool shut_ = false, torn_ = false;
  boost::system::error_code ec_;
};

}  // namespace detail

template <class Handler>
auto LeanTlsStream::async_handshake(boost::asio::ssl::stream_base::handshake_type type,
                                    Handler&& handler) {
  if (type == boost::asio::ssl::stream_base::server)
    SSL_set_accept_state(state_->ssl);
  else
    SSL_set_connect_state(state_->ssl);
  return boost::asio::async_compose<Handler, void(error_code)>(detail::HandshakeOp(*this, false),
                                                               handler, next_);
}

template <class Handler>
auto LeanTlsStream::async_shutdown(Handler&& handler) {
  return boost::asio::async_compose<Handler, void(error_code)>(detail::HandshakeOp(*this, true),
                                                               handler, next_);
}

template <class MutableBuffers, class Handler>
auto LeanTlsStream::async_read_some(const MutableBuffers& buffers, Handler&& handler) {
  return boost::asio::async_compose<Handler, void(error_code, std::size_t)>(
      detail::ReadOp<MutableBuffers>(*this, buffers), handler, next_);
}

template <class ConstBuffers, class Handler>
auto LeanTlsStream::async_write_some(const ConstBuffers& buffers, Handler&& handler) {
  return boost::asio::async_compose<Handler, void(error_code, std::size_t)>(
      detail::WriteOp<ConstBuffers>(*this, buffers), handler, next_);
}

// Beast's websocket stream finds these by argument-dependent lookup.
void teardown(boost::beast::role_type role, LeanTlsStream& stream, boost::system::error_code& ec);

template <class Handler>
void async_teardown(boost::beast::role_type role, LeanTlsStream& stream, Handler&& handler) {
  boost::asio::async_compose<Handler, void(boost::system::error_code)>(
      detail::TeardownOp(stream, role), handler, stream);
}

}  // namespace lattice::transport
