#include "transport/lean_tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace lattice::transport {

namespace net = boost::asio;

namespace {

LeanTlsStream::State& state_of(BIO* bio) {
  return *static_cast<LeanTlsStream::State*>(BIO_get_data(bio));
}

// OpenSSL reads ciphertext from State::in: what is there, else "retry" (the operation then
// waits for the socket), or the end of the stream after the peer closed.
int bio_read(BIO* bio, char* data, int size) {
  LeanTlsStream::State& s = state_of(bio);
  BIO_clear_retry_flags(bio);
  const std::size_t available = s.in.size() - s.in_at;
  if (available == 0) {
    if (s.eof) return 0;
    BIO_set_retry_read(bio);
    return -1;
  }
  const std::size_t n = std::min(available, static_cast<std::size_t>(std::max(size, 0)));
  std::memcpy(data, s.in.data() + s.in_at, n);
  s.in_at += n;
  return static_cast<int>(n);
}

// OpenSSL writes ciphertext to State::out, which never refuses.
int bio_write(BIO* bio, const char* data, int size) {
  if (size <= 0) return 0;
  state_of(bio).out.append(data, static_cast<std::size_t>(size));
  return size;
}

long bio_ctrl(BIO* bio, int command, long, void*) {
  switch (command) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING: {
      const LeanTlsStream::State& s = state_of(bio);
      return static_cast<long>(s.in.size() - s.in_at);
    }
    case BIO_CTRL_WPENDING:
      return static_cast<long>(state_of(bio).out.size());
    default:
      return 0;
  }
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* bio_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lattice lean TLS");
    if (!m) throw std::bad_alloc();
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
  }();
  return method;
}

}  // namespace

LeanTlsStream::State::~State() { SSL_free(ssl); }

LeanTlsStream::LeanTlsStream(net::ip::tcp::socket&& socket, net::ssl::context& context)
    : next_(std::move(socket)), state_(std::make_unique<State>()) {
  state_->ssl = SSL_new(context.native_handle());
  if (!state_->ssl) throw std::bad_alloc();
  BIO* bio = BIO_new(bio_method());
  if (!bio) throw std::bad_alloc();
  BIO_set_data(bio, state_.get());
  SSL_set_bio(state_->ssl, bio, bio);  // the SSL owns it
  // drain() reads what the socket holds without waiting.
  error_code ignored;
  next_.socket().non_blocking(true, ignored);
}

bool LeanTlsStream::received(std::size_t n, error_code& ec) {
  state_->in.append(state_->peek.data(), n);
  if (ec != net::error::eof) return static_cast<bool>(ec);
  state_->eof = true;
  ec = {};
  return false;
}

bool LeanTlsStream::drain(error_code& ec) {
  ec = {};
  State& s = *state_;
  if (s.eof) return false;
  thread_local std::array<char, 64 * 1024> chunk;
  bool got = false;
  for (;;) {
    const std::size_t n = next_.socket().read_some(net::buffer(chunk), ec);
    if (ec == net::error::would_block || ec == net::error::try_again) {
      ec = {};
      return got;
    }
    if (ec == net::error::eof) {
      ec = {};
      s.eof = true;
      return true;
    }
    if (ec) return false;
    if (s.in_at == s.in.size()) {
      s.in.clear();
      s.in_at = 0;
    }
    s.in.append(chunk.data(), n);
    got = true;
    if (n < chunk.size()) return true;  // the socket is empty, most likely: no second call
  }
}

LeanTlsStream::error_code LeanTlsStream::ssl_error(int result) {
  const int kind = SSL_get_error(state_->ssl, result);
  const unsigned long error = ERR_get_error();
  ERR_clear_error();
  if (kind == SSL_ERROR_ZERO_RETURN) return net::error::eof;
  if (state_->eof && (error == 0 || ERR_GET_REASON(error) == SSL_R_UNEXPECTED_EOF_WHILE_READING))
    return net::ssl::error::stream_truncated;
  if (error == 0) return net::error::connection_reset;
  return {static_cast<int>(error), net::error::get_ssl_category()};
}

std::size_t LeanTlsStream::buffered_bytes() const noexcept {
  // A string's capacity within its own object (15 bytes in libstdc++) is no heap memory.
  auto heap = [](const std::string& b) { return b.capacity() > 15 ? b.capacity() : 0; };
  return heap(state_->in) + heap(state_->out) + heap(state_->sending);
}

void LeanTlsStream::release() {
  State& s = *state_;
  if (s.in_at == s.in.size()) {
    std::string().swap(s.in);
    s.in_at = 0;
  }
  if (s.out.empty()) std::string().swap(s.out);
  if (s.sending.empty()) std::string().swap(s.sending);
}

bool LeanTlsStream::take_output() {
  State& s = *state_;
  if (s.out.empty()) return false;
  s.sending = std::move(s.out);
  s.out = std::string();
  return true;
}

net::mutable_buffer LeanTlsStream::write_scratch() {
  thread_local std::array<char, 64 * 1024> scratch;
  return net::buffer(scratch);
}

void teardown(boost::beast::role_type, LeanTlsStream& stream, boost::system::error_code& ec) {
  stream.next_layer().socket().close(ec);
}

}  // namespace lattice::transport
